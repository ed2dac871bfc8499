/**
 * The CLI against servers and receivers that misbehave: a hostile error text, a rate limit, a
 * server that never answers, a stream that sends more than was asked for, a slow or stuck local
 * receiver. Real loopback servers written here; `listen` and the API client run in-process.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { once } from "node:events";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, test } from "node:test";
import { promisify } from "node:util";
import { ApiRequestError, apiClient } from "../src/cli/api-client.js";
import { type ListenOptions, listen, newLocalSecret } from "../src/cli/listen.js";
import { createOutput } from "../src/cli/output.js";
import { CLI } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

const exec = promisify(execFile);

async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void) {
  const server: Server = createServer(handler);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, "close");
    },
  };
}

/** Runs the compiled CLI; never throws on a non-zero exit. */
async function cli(args: string[], env: Record<string, string>) {
  const clean: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env))
    if (!k.startsWith("KLEN_") && v !== undefined) clean[k] = v;
  try {
    const r = await exec(process.execPath, [CLI, ...args], {
      env: { ...clean, NO_COLOR: "1", ...env },
      timeout: 30_000,
    });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

const sse = (id: string, type: string) => `id: ${id}\nevent: ${type}\ndata: {"event_type":"${type}"}\n\n`;

/** A server whose event stream sends `text` and stays open (`then` runs on each stream's response). */
function streamServer(text: string, then: (res: ServerResponse) => void = () => {}) {
  return serve((_req, res) => {
    res.writeHead(200, { "content-type": "text/event-stream" });
    res.write(text);
    then(res);
  });
}

/** Runs `listen` in-process with `--json` output kept in `lines`; `stop` is its Ctrl-C. */
function startListening(apiUrl: string, forwardTo: string, extra: Partial<ListenOptions> = {}) {
  const lines: Array<Record<string, unknown>> = [];
  const ctrlC = new AbortController();
  const done = listen({
    client: apiClient({ apiUrl, apiKey: "k" }),
    forwardTo,
    events: undefined,
    secret: newLocalSecret(),
    out: { ...createOutput({ json: true }), data: (v: unknown) => lines.push(v as never) },
    signal: ctrlC.signal,
    ...extra,
  });
  return { lines, done, stop: () => ctrlC.abort() };
}

describe("the CLI's API client and errors", () => {
  test("a server's error text reaches the terminal escaped, on one line", async () => {
    const evil = await serve((_req, res) => {
      res.writeHead(404, { "content-type": "text/plain" });
      res.end("\x1b[2J\x1b]52;c;aGVsbG8=\x07gotcha\nfake: second line");
    });
    try {
      const r = await cli(["endpoints", "list"], { KLEN_API_URL: evil.url, KLEN_API_KEY: "k" });
      assert.equal(r.code, 1);
      assert.equal(r.stderr.split("\n").length, 2, JSON.stringify(r.stderr)); // one line and its end
      assert.doesNotMatch(r.stderr, new RegExp(`[${String.fromCharCode(0x1b)}${String.fromCharCode(7)}]`));
      assert.match(r.stderr, /\\u001b\[2J\\u001b\]52;c;aGVsbG8=\\u0007gotcha\\u000afake: second line/);
    } finally {
      await evil.close();
    }
  });

  test("with --json every failure is JSON on stdout, one found before any request too", async () => {
    const r = await cli(["endpoints", "list", "--json"], {});
    assert.equal(r.code, 1);
    assert.deepEqual(JSON.parse(r.stdout), {
      error: { code: "cli_error", message: "no API key: pass --api-key or set KLEN_API_KEY", status: 0 },
    });
  });

  test("429 is waited out as Retry-After says, the POST keeping its Idempotency-Key; past the bound it is the error", async () => {
    const keys: string[] = [];
    let answered = 0;
    const limited = await serve((req, res) => {
      keys.push(String(req.headers["idempotency-key"]));
      if (answered++ === 0) {
        res.writeHead(429, { "content-type": "application/json", "retry-after": "1" });
        res.end('{"error":{"code":"rate_limited","message":"too many requests for this API key"}}');
        return;
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"ok":true}');
    });
    try {
      const client = apiClient({ apiUrl: limited.url, apiKey: "k" });
      assert.deepEqual(await client.post("/v1/test-calls", {}), { ok: true });
      assert.equal(keys.length, 2);
      assert.equal(keys[0], keys[1], "the retry is the same request");
      answered = 0;
      const impatient = apiClient({ apiUrl: limited.url, apiKey: "k", maxRateLimitWaitMs: 0 });
      await assert.rejects(
        impatient.get("/v1/endpoints"),
        (err: unknown) => err instanceof ApiRequestError && err.status === 429 && err.code === "rate_limited",
      );
    } finally {
      await limited.close();
    }
  });

  test("a server that takes the connection and never answers is a timeout error, not a hang", async () => {
    const silent = await serve((req, res) => {
      // /half: the status and the start of a body, then nothing.
      if (req.url === "/half") {
        res.writeHead(200, { "content-type": "application/json" });
        res.write('{"data":[');
      }
    });
    try {
      const client = apiClient({ apiUrl: silent.url, apiKey: "k", timeoutMs: 200 });
      await assert.rejects(
        client.get("/half"),
        (err: unknown) => err instanceof ApiRequestError && err.code === "timeout",
      );
      await assert.rejects(
        client.get("/v1/endpoints"),
        (err: unknown) =>
          err instanceof ApiRequestError &&
          err.code === "timeout" &&
          /no answer from .* within 0\.2 s/.test(err.message),
      );
    } finally {
      await silent.close();
    }
  });
});

describe("listen against odd streams and receivers", () => {
  test("--events is checked locally too: a stream that sends more forwards only what was asked", async () => {
    const stream = await streamServer(
      sse("evt_1", "call.started") + sse("evt_2", "call.ended") + sse("evt_3", "call.started"),
    );
    const got: string[] = [];
    const receiver = await serve((req, res) => {
      got.push(String(req.headers["webhook-id"]));
      res.end();
    });
    const l = startListening(stream.url, `${receiver.url}/hook`, { events: ["call.ended"] });
    try {
      await waitFor("the forward of evt_2", () => l.lines.some((x) => x.type === "forwarded"));
      l.stop();
      await l.done;
      assert.deepEqual(got, ["evt_2"]);
    } finally {
      l.stop();
      await stream.close();
      await receiver.close();
    }
  });

  test("a receiver slower than the idle timeout is not taken for a silent server", async () => {
    const stream = await streamServer(sse("evt_1", "call.started") + sse("evt_2", "call.ended"), (res) => {
      const beat = setInterval(() => res.write(": ping\n\n"), 20);
      res.on("close", () => clearInterval(beat));
    });
    const receiver = await serve((_req, res) => {
      setTimeout(() => res.end(), 300); // each forward takes three idle timeouts
    });
    const l = startListening(stream.url, `${receiver.url}/hook`, { idleTimeoutMs: 100 });
    try {
      await waitFor("both forwards", () => l.lines.filter((x) => x.type === "forwarded").length === 2);
      l.stop();
      await l.done;
      assert.deepEqual(
        l.lines.map((x) => x.type),
        ["ready", "forwarded", "forwarded"],
      );
    } finally {
      l.stop();
      await stream.close();
      await receiver.close();
    }
  });

  test("Ctrl-C while a forward waits on a stuck receiver stops listen at once, printing nothing more", async () => {
    const stream = await streamServer(sse("evt_1", "call.started"));
    let reached = false;
    const receiver = await serve(() => {
      reached = true; // and never answers
    });
    const l = startListening(stream.url, `${receiver.url}/hook`, { forwardTimeoutMs: 600_000 });
    try {
      await waitFor("the forward to reach the receiver", () => reached);
      l.stop();
      let ended = false;
      void l.done.then(() => {
        ended = true;
      });
      await waitFor("listen to end", () => ended);
      assert.deepEqual(
        l.lines.map((x) => x.type),
        ["ready"],
      );
    } finally {
      l.stop();
      await stream.close();
      await receiver.close();
    }
  });

  test("a server that takes the stream's connection and never answers is reported, not waited on silently", async () => {
    const silent = await serve(() => {});
    const l = startListening(silent.url, "http://127.0.0.1:9/hook", { connectTimeoutMs: 100 });
    try {
      await waitFor("a disconnected line", () => l.lines.some((x) => x.type === "disconnected"));
      l.stop();
      await l.done;
      assert.equal(l.lines[0]?.reason, "no answer within 0.1 s");
    } finally {
      l.stop();
      await silent.close();
    }
  });
});
