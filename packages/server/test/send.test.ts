import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { Worker } from "node:worker_threads";
import {
  type AttemptSender,
  RESPONSE_BODY_LIMIT,
  Sender,
  type SenderOptions,
  type SendResult,
} from "../src/delivery/send.js";
import { ThreadSender } from "../src/delivery/send-thread.js";
import { waitFor } from "./helpers/wait.js";

const senders: Array<[string, (o: SenderOptions) => AttemptSender]> = [
  ["Sender", (o) => new Sender(o)],
  ["ThreadSender", (o) => new ThreadSender(o)],
];

/**
 * A loopback server for one suite, up before its tests and closed after them: `answer` gets each
 * request once its body is read, except those to /never, which are held (`held`) until the end.
 */
/** An attempt that got no HTTP answer: its error class and message. */
function failedWith(r: SendResult, error: string, message: string): void {
  assert.equal(r.error, error);
  assert.equal(r.errorMessage, message);
}

function suiteServer(answer: (req: IncomingMessage, res: ServerResponse) => void) {
  const srv = { base: "", held: [] as ServerResponse[] };
  let server: Server;
  before(async () => {
    server = createServer((req, res) => {
      req.resume();
      req.on("end", () => (req.url === "/never" ? srv.held.push(res) : answer(req, res)));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    srv.base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    for (const r of srv.held) r.destroy();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });
  return srv;
}

/**
 * The attempt sender against real loopback servers: what it keeps of a response, what it does
 * with answers it must not follow or cannot read, and its one timeout for the whole attempt. The
 * same on the event loop (`Sender`) and on a thread of its own (`ThreadSender`, KLEN_SENDER_THREAD).
 */
for (const [name, makeSender] of senders)
  describe(name, () => {
    const seen: string[] = [];
    const srv = suiteServer((req, res) => {
      seen.push(req.url ?? "");
      switch (req.url) {
        case "/big":
          res.end("x".repeat(20 * 1024));
          return;
        case "/huge":
          // Far past what is drained: the sender drops the connection, the 200 stands.
          res.end("y".repeat(1024 * 1024));
          return;
        case "/reset-after-200":
          res.writeHead(200);
          res.write("partial");
          setTimeout(() => res.socket?.destroy(), 20);
          return;
        case "/hang":
          return; // never answers
        case "/dribble":
        case "/dribble-500":
          // The status in time, the body never finished.
          res.writeHead(req.url === "/dribble" ? 200 : 500);
          res.write("partial");
          return;
        case "/split":
          // "é" is two bytes; the 8 KiB cut falls between them.
          res.end(`${"x".repeat(RESPONSE_BODY_LIMIT - 1)}é and more`);
          return;
        case "/binary":
          res.end(Buffer.from([0x6f, 0x6b, 0x00, 0xff, 0x21]));
          return;
        case "/redirect":
          res.writeHead(302, { location: `${srv.base}/elsewhere` }).end();
          return;
        case "/busy":
          res.writeHead(429, { "retry-after": "7" }).end("slow down");
          return;
        case "/processing":
          res.writeProcessing();
          res.end("done");
          return;
        case "/slow":
          setTimeout(() => res.end("late"), 50);
          return;
        default:
          res.end("ok");
      }
    });

    const post = (sender: AttemptSender, path: string) =>
      sender.send(`${srv.base}${path}`, { "content-type": "application/json" }, '{"type":"call.started"}');

    /** A sender for one test, closed after it whatever happens. */
    async function withSender(
      opts: SenderOptions,
      fn: (sender: AttemptSender) => Promise<void>,
    ): Promise<void> {
      const sender = makeSender(opts);
      try {
        await fn(sender);
      } finally {
        await sender.close();
      }
    }

    test("keeps the first 8 KiB of a body, and a body too large to drain leaves the answer standing", async () => {
      await withSender({ dev: true, timeoutMs: 5_000 }, async (sender) => {
        const big = await post(sender, "/big");
        assert.equal(big.statusCode, 200);
        assert.equal(big.error, null);
        assert.equal(big.responseBody, "x".repeat(RESPONSE_BODY_LIMIT));
        const huge = await post(sender, "/huge");
        assert.equal(huge.statusCode, 200);
        assert.equal(huge.error, null);
        assert.equal(huge.responseBody?.length, RESPONSE_BODY_LIMIT);
        // The dropped connection is replaced: the next attempt goes through.
        const next = await post(sender, "/ok");
        assert.equal(next.statusCode, 200);
        assert.equal(next.responseBody, "ok");
      });
    });

    test("a body is logged as text: NUL and invalid bytes as U+FFFD, a character the 8 KiB cut splits left out", async () => {
      await withSender({ dev: true, timeoutMs: 5_000 }, async (sender) => {
        assert.equal((await post(sender, "/binary")).responseBody, "ok\uFFFD\uFFFD!");
        assert.equal((await post(sender, "/split")).responseBody, "x".repeat(RESPONSE_BODY_LIMIT - 1));
      });
    });

    test("a status that came in time stands when its body never finishes or its connection breaks; no status in time is a timeout", async () => {
      // 2 s: a loaded CI machine once took longer than 300 ms to bring the status of /dribble.
      await withSender({ dev: true, timeoutMs: 2_000 }, async (sender) => {
        const ok = await post(sender, "/dribble");
        assert.deepEqual([ok.statusCode, ok.error, ok.responseBody], [200, null, "partial"]);
        const bad = await post(sender, "/dribble-500");
        assert.deepEqual([bad.statusCode, bad.error, bad.responseBody], [500, "http_status", "partial"]);
        const reset = await post(sender, "/reset-after-200");
        assert.deepEqual([reset.statusCode, reset.error], [200, null]);
        const none = await post(sender, "/hang");
        assert.deepEqual([none.statusCode, none.error], [null, "timeout"]);
      });
    });

    test("a redirect is a failed attempt and is not followed", async () => {
      await withSender({ dev: true, timeoutMs: 5_000 }, async (sender) => {
        const before = seen.length;
        const r = await post(sender, "/redirect");
        assert.equal(r.statusCode, 302);
        assert.equal(r.error, "redirect");
        assert.equal(r.errorMessage, "HTTP 302");
        assert.deepEqual(seen.slice(before), ["/redirect"]);
      });
    });

    test("response headers reach the caller (Retry-After), and a 1xx is not the answer", async () => {
      await withSender({ dev: true, timeoutMs: 5_000 }, async (sender) => {
        const busy = await post(sender, "/busy");
        assert.equal(busy.statusCode, 429);
        assert.equal(busy.error, "http_status");
        assert.equal(busy.responseHeaders["retry-after"], "7");
        assert.equal(busy.responseBody, "slow down");
        const processing = await post(sender, "/processing");
        assert.equal(processing.statusCode, 200);
        assert.equal(processing.responseBody, "done");
      });
    });

    test("one timeout covers the attempt, including the wait for a free connection", async () => {
      // One connection per origin: the second attempt waits behind the first, which never ends.
      await withSender({ dev: true, timeoutMs: 300, connectionsPerOrigin: 1 }, async (sender) => {
        const [first, second] = await Promise.all([post(sender, "/never"), post(sender, "/never")]);
        for (const r of [first, second]) {
          assert.equal(r.error, "timeout");
          assert.equal(r.statusCode, null);
          assert.equal(r.errorMessage, "no response within 300 ms");
        }
        // The connection the first one held is gone; a healthy path answers again.
        const ok = await post(sender, "/ok");
        assert.equal(ok.error, null);
      });
    });

    test("a closed port is connection_refused; a malformed URL is a network error", async () => {
      await withSender({ dev: true, timeoutMs: 2_000 }, async (sender) => {
        const closed = createServer();
        await new Promise<void>((r) => closed.listen(0, "127.0.0.1", r));
        const port = (closed.address() as AddressInfo).port;
        await new Promise((r) => closed.close(r));
        const refused = await sender.send(`http://127.0.0.1:${port}/x`, {}, "{}");
        assert.equal(refused.error, "connection_refused");
        failedWith(await sender.send("not a url", {}, "{}"), "network", "invalid URL");
      });
    });

    test("an https:// URL whose port speaks plain HTTP is a tls error that says so", async () => {
      await withSender({ dev: true, timeoutMs: 2_000 }, async (sender) => {
        const plain = createServer((_req, res) => res.end("ok"));
        await new Promise<void>((r) => plain.listen(0, "127.0.0.1", r));
        try {
          const r = await sender.send(
            `https://127.0.0.1:${(plain.address() as AddressInfo).port}/x`,
            {},
            "{}",
          );
          assert.equal(r.error, "tls");
          assert.match(
            r.errorMessage ?? "",
            /^the endpoint's port does not speak TLS \(plain HTTP there\?\): point the URL at its TLS port/,
          );
        } finally {
          plain.closeAllConnections();
          await new Promise((r) => plain.close(r));
        }
      });
    });

    test("outside dev mode a loopback target is refused without connecting, and plain http too", async () => {
      await withSender({ dev: false, timeoutMs: 2_000 }, async (sender) => {
        const loopback = await sender.send("https://127.0.0.1:9/x", {}, "{}");
        failedWith(loopback, "blocked_address", "127.0.0.1 is a loopback address");
        failedWith(
          await sender.send("http://example.com/x", {}, "{}"),
          "blocked_address",
          "https is required",
        );
      });
    });

    test("many attempts at once: each gets its own answer", async () => {
      await withSender({ dev: true, timeoutMs: 30_000 }, async (sender) => {
        const paths = Array.from({ length: 300 }, (_, i) =>
          i % 3 === 0 ? "/busy" : i % 3 === 1 ? "/slow" : `/p${i}`,
        );
        const results = await Promise.all(paths.map((p) => post(sender, p)));
        results.forEach((r, i) => {
          const p = paths[i];
          assert.equal(r.statusCode, p === "/busy" ? 429 : 200, p);
          assert.equal(r.responseBody, p === "/busy" ? "slow down" : p === "/slow" ? "late" : "ok", p);
        });
      });
    });
  });

/** What only the thread adds: its death, and not keeping an idle process alive. */
// A bound for a hang, not for speed: the four tests take 15-30 s on a loaded 2-core machine.
describe("ThreadSender's thread", { timeout: 120_000 }, () => {
  const srv = suiteServer((_req, res) => res.end("ok"));
  const held = srv.held;

  test("a thread that stops fails the attempts it held; the next attempt starts a new thread", async () => {
    const sender = new ThreadSender({ dev: true, timeoutMs: 30_000 });
    try {
      const first = await sender.send(`${srv.base}/ok`, {}, "{}");
      assert.equal(first.statusCode, 200);
      const stuck = [sender.send(`${srv.base}/never`, {}, "{}"), sender.send(`${srv.base}/never`, {}, "{}")];
      await waitFor("both attempts at the receiver", () => held.length === 2);
      // Reaching in: nothing outside stops the thread but a crash of it.
      await (sender as unknown as { worker?: Worker }).worker?.terminate();
      for (const p of stuck) await assert.rejects(p, /sender thread stopped/);
      const next = await sender.send(`${srv.base}/ok`, {}, "{}");
      assert.equal(next.statusCode, 200);
      assert.equal(next.responseBody, "ok");
    } finally {
      await sender.close();
    }
  });

  test("attempts of one rate-limited endpoint start at least its interval apart however they reach the thread; others are not held", async () => {
    const arrivals: Record<string, number[]> = { "/a": [], "/b": [] };
    const rx = createServer((req, res) => {
      arrivals[req.url ?? ""]?.push(performance.now());
      res.end("ok");
    });
    rx.listen(0, "127.0.0.1");
    await once(rx, "listening");
    const base = `http://127.0.0.1:${(rx.address() as AddressInfo).port}`;
    const sender = new ThreadSender({ dev: true, timeoutMs: 30_000 });
    try {
      // Sent in one tick, as a thread that got no CPU for a while takes launches spaced apart.
      // The thread starts them a second apart; measured at the receiver, a loaded machine can
      // delay one arrival more than the next, so the check allows half of that.
      const spacing = { key: "ep_a", intervalMs: 1_000 };
      const results = await Promise.all([
        sender.send(`${base}/a`, {}, "{}", spacing),
        sender.send(`${base}/a`, {}, "{}", spacing),
        sender.send(`${base}/a`, {}, "{}", spacing),
        sender.send(`${base}/b`, {}, "{}", { key: "ep_b", intervalMs: 1_000 }),
      ]);
      assert.deepEqual(
        results.map((r) => r.statusCode),
        [200, 200, 200, 200],
      );
      const a = arrivals["/a"]!;
      assert.equal(a.length, 3);
      for (let i = 1; i < a.length; i++)
        assert.ok(a[i]! - a[i - 1]! >= 500, `arrivals ${Math.round(a[i]! - a[i - 1]!)} ms apart`);
      // Another endpoint's first attempt is not held behind the first one's.
      assert.ok(arrivals["/b"]![0]! < a[1]!, "ep_b went out before ep_a's second attempt");
    } finally {
      await sender.close();
      rx.closeAllConnections();
      rx.close();
    }
  });

  test("close lets the attempts in flight finish, and later attempts are refused", async () => {
    const sender = new ThreadSender({ dev: true, timeoutMs: 30_000 });
    const heldBefore = held.length;
    const inFlight = sender.send(`${srv.base}/never`, {}, "{}");
    await waitFor("the attempt at the receiver", () => held.length === heldBefore + 1);
    const closed = sender.close();
    held[heldBefore]?.end("finally");
    const r = await inFlight;
    assert.equal(r.statusCode, 200);
    assert.equal(r.responseBody, "finally");
    await closed;
    await assert.rejects(sender.send(`${srv.base}/ok`, {}, "{}"), /sender closed/);
  });

  /** Runs `script` (ThreadSender and `url` in scope) in a process of its own: its exit code and output. */
  async function inProcess(script: string): Promise<{ code: number | null; out: string }> {
    const module = new URL("../src/delivery/send-thread.js", import.meta.url).href;
    const dir = mkdtempSync(join(tmpdir(), "klen-sender-"));
    const file = join(dir, "script.mjs");
    writeFileSync(
      file,
      `const { ThreadSender } = await import(${JSON.stringify(module)});\nconst url = ${JSON.stringify(`${srv.base}/ok`)};\n${script}`,
    );
    // Killed if it is still up after 20 s: a thread holding it open would keep it forever.
    const child = spawn(process.execPath, [file], { stdio: ["ignore", "pipe", "inherit"], timeout: 20_000 });
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    const code = await new Promise<number | null>((r) => child.on("exit", r));
    rmSync(dir, { recursive: true, force: true });
    return { code, out: out.trim() };
  }

  test("an idle thread does not hold the process open", async () => {
    // A process whose only work was one attempt ends without closing the sender.
    const r =
      await inProcess(`const r = await new ThreadSender({ dev: true, timeoutMs: 5000 }).send(url, {}, "{}");
      console.log(r.statusCode);`);
    assert.equal(r.code, 0, "the process ended on its own");
    assert.equal(r.out, "200");
  });

  test("an attempt sent in the tick the sender closes goes out, and the process ends", async () => {
    const r = await inProcess(`const s = new ThreadSender({ dev: true, timeoutMs: 5000 });
      const p = s.send(url, {}, "{}");
      await s.close();
      const a = await p;
      console.log(a.statusCode, a.error);`);
    assert.equal(r.code, 0, "the process ended on its own");
    assert.equal(r.out, "200 null");
  });
});
