import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { getEventListeners } from "node:events";
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import Database from "better-sqlite3";
import { Webhook } from "standardwebhooks";
import { apiClient as cliApiClient } from "../src/cli/api-client.js";
import { checkSecret, forwardEvent, listen, newLocalSecret, parseEventList } from "../src/cli/listen.js";
import { createOutput, printable } from "../src/cli/output.js";
import { type SseMessage, SseParser } from "../src/cli/sse.js";
import { followExitCode, workflowDone } from "../src/cli/test-call.js";
import { toneWav } from "../src/cli/wav.js";
import { hashApiKey } from "../src/util/ids.js";
import { apiClient, runCall, setupAccount } from "./helpers/api.js";
import { startReceiver } from "./helpers/receiver.js";
import { CLI, freePort, type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

const exec = promisify(execFile);

/** The environment of a CLI child: no inherited KLEN_* so only what a test passes applies. */
function cliEnv(extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("KLEN_") && v !== undefined) env[k] = v;
  return { ...env, NO_COLOR: "1", ...extra };
}

/** Runs the compiled CLI to completion; never throws on a non-zero exit. */
async function cli(args: string[], env: Record<string, string> = {}) {
  try {
    const r = await exec(process.execPath, [CLI, ...args], { env: cliEnv(env), timeout: 30_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

/** A long-running CLI child (listen) whose stdout JSON lines are collected as they arrive. */
function spawnCli(args: string[], env: Record<string, string>) {
  const proc: ChildProcess = spawn(process.execPath, [CLI, ...args], {
    env: cliEnv(env),
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: any[] = [];
  let out = "";
  let all = "";
  let err = "";
  const json = args.includes("--json");
  proc.stdout!.on("data", (d: Buffer) => {
    all += d.toString();
    if (!json) return;
    out += d.toString();
    let nl = out.indexOf("\n");
    while (nl >= 0) {
      lines.push(JSON.parse(out.slice(0, nl)));
      out = out.slice(nl + 1);
      nl = out.indexOf("\n");
    }
  });
  proc.stderr!.on("data", (d: Buffer) => {
    err += d.toString();
  });
  const exited = new Promise<number | null>((r) => proc.once("exit", (code) => r(code)));
  return {
    proc,
    lines,
    stderr: () => err,
    stdoutText: () => all,
    forwarded: () => lines.filter((l) => l.type === "forwarded"),
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGINT");
      return exited;
    },
  };
}

/** `klen-webhooks serve` on a given port (a restart must come back where the listener looks). */
async function serveOnPort(port: number, dataDir: string, apiKey: string) {
  const proc = spawn(process.execPath, [CLI, "serve"], {
    env: {
      ...cliEnv({}),
      PORT: String(port),
      KLEN_HOST: "127.0.0.1",
      KLEN_DATA_DIR: dataDir,
      KLEN_API_KEY: apiKey,
      KLEN_DEV: "1",
      KLEN_RETRY_SCHEDULE: "100ms,200ms,300ms",
      LOG_LEVEL: "warn",
      // The start-up banner names the address this process bound (printed unless CI is "true").
      CI: "false",
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let out = "";
  proc.stderr!.on("data", (d: Buffer) => {
    out += d.toString();
  });
  const exited = new Promise<void>((r) => proc.once("exit", () => r()));
  const url = `http://127.0.0.1:${port}`;
  await waitFor(
    `server on ${url}`,
    async () => {
      if (proc.exitCode !== null) throw new Error(`server exited: ${out}`);
      // This process's banner, not only some server answering on the port.
      if (!out.includes(` on ${url}\n`)) return false;
      const r = await fetch(`${url}/healthz`).catch(() => undefined);
      await r?.arrayBuffer();
      return r?.ok;
    },
    // As spawnServer: a start takes 1-2 s, but a disk saturated by another test file's writes
    // has stretched it past 20 s.
    60_000,
    50,
  );
  return {
    url,
    api: apiClient(url, apiKey),
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
      await exited;
    },
  };
}

/** The control characters of `text` but tab and newline. */
const controls = (text: string) =>
  [...text].filter((c) => {
    const n = c.charCodeAt(0);
    return (n < 0x20 && n !== 0x09 && n !== 0x0a) || (n >= 0x7f && n <= 0x9f);
  });

describe("CLI helpers (pure)", () => {
  test("--secret and --events are checked before anything is sent", () => {
    assert.equal(checkSecret(`whsec_${Buffer.alloc(24).toString("base64")}`).length, 38);
    assert.throws(() => checkSecret(`whsec_${Buffer.alloc(16).toString("base64")}`), /at least 24 bytes/);
    assert.throws(() => checkSecret("not-a-secret"), /whsec_/);
    assert.deepEqual(parseEventList("call.ended, call.failed"), ["call.ended", "call.failed"]);
    assert.equal(parseEventList(undefined), undefined);
    assert.equal(parseEventList("*"), undefined);
    assert.throws(() => parseEventList("call.ended,call.nope"), /unknown event type "call\.nope"/);
  });

  test("a forward's refusal body is cut at 300 characters, never inside one", async () => {
    const refusing = await startReceiver({
      respond: () => ({ status: 400, body: `a${"\u{1F600}".repeat(400)}` }),
    });
    try {
      const f = await forwardEvent(
        { forwardTo: refusing.url, secret: newLocalSecret() },
        { id: "evt_1", type: "call.started", body: "{}" },
      );
      assert.equal(f.status, 400);
      assert.equal([...f.response_body!].length, 300);
      // No half of a surrogate pair: UTF-8 and back gives the same text.
      assert.equal(Buffer.from(f.response_body!, "utf8").toString("utf8"), f.response_body);
      assert.ok(f.response_body!.endsWith("\u{1F600}"));
    } finally {
      await refusing.close();
    }
  });

  test("colour only on a terminal, each stream by its own, and never with NO_COLOR or --json", () => {
    const tty = { isTTY: true, write: () => true } as unknown as NodeJS.WriteStream;
    const pipe = { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream;
    assert.equal(createOutput({ stdout: tty, stderr: tty, env: {} }).color, true);
    assert.equal(createOutput({ stdout: tty, stderr: tty, env: { NO_COLOR: "1" } }).color, false);
    // no-color.org: an empty NO_COLOR does not count.
    assert.equal(createOutput({ stdout: tty, stderr: tty, env: { NO_COLOR: "" } }).color, true);
    assert.equal(createOutput({ stdout: tty, stderr: tty, env: {}, json: true }).color, false);
    assert.equal(createOutput({ stdout: pipe, stderr: pipe, env: {} }).color, false);
    assert.equal(createOutput({ stdout: pipe, stderr: pipe, env: {} }).green("ok"), "ok");
    // stdout on a terminal, stderr redirected to a file: the warning there carries no escape code.
    const errs: string[] = [];
    const file = { isTTY: false, write: (t: string) => errs.push(t) } as unknown as NodeJS.WriteStream;
    const out = createOutput({ stdout: tty, stderr: file, env: {} });
    out.warn(out.yellow("gave up"));
    assert.deepEqual(errs, ["gave up\n"]);
  });

  test("a usage error is one line on stderr, and with --json also a JSON document on stdout", async () => {
    for (const args of [
      ["trigger", "call.bogus"],
      ["test-call", "--outcome", "nope"],
      ["endpoints", "list", "--bogus"],
      // Values found wrong once the command runs are usage errors as well.
      ["endpoints", "create", "--url", "http://127.0.0.1:9/", "--event-types", "call.nope"],
      ["trigger", "call.started", "--reason", "busy"],
      ["listen", "--events", "call.nope"],
    ]) {
      const plain = await cli(args);
      assert.equal(plain.code, 1, args.join(" "));
      assert.equal(plain.stdout, "");
      assert.match(plain.stderr, /^error: /);
      const json = await cli([...args, "--json"]);
      assert.equal(json.code, 1);
      const doc = JSON.parse(json.stdout) as { error: { code: string; message: string; status: number } };
      assert.equal(doc.error.code, "usage");
      assert.equal(doc.error.status, 0);
      assert.equal(`error: ${doc.error.message}\n`, json.stderr);
    }
  });

  test("progress only on a terminal and never with --json", () => {
    const written: string[] = [];
    const tty = { isTTY: true, write: (t: string) => written.push(t) } as unknown as NodeJS.WriteStream;
    createOutput({ stdout: tty, stderr: tty, env: {}, json: true }).progress("call 1 queued…");
    assert.deepEqual(written, []);
    createOutput({ stdout: tty, stderr: tty, env: {} }).progress("call 1 queued…");
    assert.equal(written.length, 1);
  });

  test("control characters from API data reach the terminal escaped, colour codes too; only the CLI's own colours pass", () => {
    const evil =
      "\x1b]52;c;cHduZWQ=\x07\x1b[2J\x1b[31mFAKE: all delivered\r\x9b\x1b[8mhidden\nforged line\u202eevil";
    const escaped =
      "\\u001b]52;c;cHduZWQ=\\u0007\\u001b[2J\\u001b[31mFAKE: all delivered\\u000d\\u009b\\u001b[8mhidden\\u000aforged line\\u202eevil";
    assert.equal(printable(evil, false), escaped);
    assert.equal(printable(evil, true), escaped);
    assert.equal(printable("a\tb", false), "a\tb");
    // API text cannot forge the CLI's own colour marks: their characters are escaped too.
    assert.equal(printable("\uE00031\uE001ALL OK", true), "\\ue00031\\ue001ALL OK");
    const written: string[] = [];
    const tty = { isTTY: true, write: (t: string) => written.push(t) } as unknown as NodeJS.WriteStream;
    const out = createOutput({ stdout: tty, stderr: tty, env: {} });
    out.line(`${out.green("200")} ${evil}`);
    assert.deepEqual(written, [`\x1b[32m200\x1b[39m ${escaped}\n`]);
    // Without colour the CLI's own marks vanish and nothing else changes.
    const plain: string[] = [];
    const pipe = { isTTY: false, write: (t: string) => plain.push(t) } as unknown as NodeJS.WriteStream;
    const piped = createOutput({ stdout: pipe, stderr: tty, env: {} });
    piped.line(`${piped.green("200")} ${evil}`);
    assert.deepEqual(plain, [`200 ${escaped}\n`]);
  });

  test("the uploaded recording is a well-formed PCM WAV", () => {
    const wav = toneWav(0.25);
    assert.equal(wav.toString("ascii", 0, 4), "RIFF");
    assert.equal(wav.readUInt32LE(4), wav.length - 8);
    assert.equal(wav.toString("ascii", 8, 16), "WAVEfmt ");
    assert.equal(wav.readUInt16LE(20), 1, "PCM");
    assert.equal(wav.readUInt32LE(24), 8000, "sample rate");
    assert.equal(wav.toString("ascii", 36, 40), "data");
    assert.equal(wav.readUInt32LE(40), 2000 * 2, "0.25 s of 16-bit mono");
  });

  test("test-call --wait knows the simulator's last step", () => {
    const call = (o: Record<string, unknown>) => ({ id: 1, status: "queued", started_at: null, ...o });
    const failed = [{ event_type: "call.failed" }];
    assert.equal(workflowDone(call({ status: "failed" }), failed), true, "failed before connecting");
    assert.equal(
      workflowDone(call({ status: "failed", started_at: "x" }), failed),
      false,
      "mid-call: more follows",
    );
    assert.equal(
      workflowDone(call({ status: "failed", started_at: "x", has_recording: true }), failed),
      true,
    );
    assert.equal(
      workflowDone(call({ status: "completed", started_at: "x", has_transcript: true }), []),
      false,
    );
    assert.equal(workflowDone(call({ status: "completed", started_at: "x", has_recording: true }), []), true);
    assert.equal(workflowDone(call({ status: "in-progress", started_at: "x" }), []), false);
  });

  test("test-call --wait succeeds only when every delivery succeeded, and there was one", () => {
    const result = (statuses: string[][], done = true) => ({
      call_id: 1,
      status: "completed",
      done,
      events: statuses.map((ds, i) => ({
        id: `evt_${i}`,
        event_type: "call.started",
        deliveries: ds.map((status, j) => ({
          id: `dlv_${i}_${j}`,
          endpoint_id: "ep_1",
          status,
          attempts: [],
        })),
      })),
    });
    assert.equal(followExitCode(result([["succeeded"], ["succeeded", "succeeded"]])), 0);
    assert.equal(followExitCode(result([["succeeded"], ["failed"]])), 1);
    assert.equal(followExitCode(result([["succeeded"]], false)), 1, "timed out");
    assert.equal(followExitCode(result([[], [], []])), 1, "no endpoint got the events");
  });
});

describe("SSE parser (pure)", () => {
  test("messages split across chunks, CRLF across chunks, comments and multi-line data", () => {
    const got: SseMessage[] = [];
    const p = new SseParser((m) => got.push(m));
    const text =
      'retry: 1000\r\n: ping\r\n\r\nid: evt_1\r\nevent: call.started\r\ndata: {"a":1}\r\n\r\ndata: x\ndata: y\n\n';
    for (let i = 0; i < text.length; i += 3) p.push(text.slice(i, i + 3));
    assert.deepEqual(got, [
      { id: "evt_1", event: "call.started", data: '{"a":1}' },
      { id: undefined, event: "message", data: "x\ny" },
    ]);
  });
});

// Each case is a separate CLI start (~0.5 s on a busy runner): they run concurrently.
describe("klen-webhooks --help", { concurrency: true }, () => {
  for (const [args, mentions] of [
    [
      ["--help"],
      [
        "serve",
        "migrate",
        "accounts",
        "endpoints",
        "deliveries",
        "test-call",
        "trigger",
        "listen",
        "Examples:",
      ],
    ],
    [
      ["serve", "--help"],
      ["--dev", "--role", "Examples:"],
    ],
    [
      ["migrate", "--help"],
      ["migrations", "--json", "Examples:"],
    ],
    [
      ["accounts", "create", "--help"],
      ["--name", "--json", "Examples:"],
    ],
    [
      ["test-call", "--help"],
      [
        "--agent-id",
        "--outcome",
        "--endpoint-id",
        "--transcript-bytes",
        "--wait",
        "--api-url",
        "--api-key",
        "--json",
        "Examples:",
      ],
    ],
    [
      ["trigger", "--help"],
      ["<event_type>", "--reason", "call.recording", "--api-url", "--json", "Examples:"],
    ],
    [
      ["endpoints", "update", "--help"],
      [
        "<endpoint_id>",
        "--url",
        "--event-types",
        "--agent-ids",
        "--header",
        "--clear-headers",
        "--json",
        "Examples:",
      ],
    ],
    [
      ["endpoints", "rotate-secret", "--help"],
      ["<endpoint_id>", "--grace", "--json", "Examples:"],
    ],
    [
      ["events", "list", "--help"],
      ["--event-type", "--call-id", "--before", "--after", "--limit", "--cursor", "--json", "Examples:"],
    ],
    [
      ["events", "get", "--help"],
      ["<event_id>", "--api-key", "--json", "Examples:"],
    ],
    [
      ["calls", "media", "--help"],
      ["<call_id>", "--output", "KLEN_URL_TTL", "--api-key", "--json", "Examples:"],
    ],
    [
      ["endpoints", "create", "--help"],
      ["--url", "--event-types", "--description", "--api-key", "--json", "Examples:"],
    ],
    [
      ["endpoints", "recover", "--help"],
      ["<endpoint_id>", "--since", "--until", "--wait", "--timeout", "KLEN_RECOVER_BATCH", "Examples:"],
    ],
    [
      ["deliveries", "list", "--help"],
      ["--status", "--endpoint-id", "--event-id", "--call-id", "--limit", "--json", "Examples:"],
    ],
    [
      ["deliveries", "retry", "--help"],
      ["<delivery_id>", "--api-url", "Examples:"],
    ],
    [
      ["listen", "--help"],
      ["--forward-to", "--events", "--secret", "KLEN_API_KEY", "--json", "Examples:"],
    ],
  ] as const) {
    test(args.join(" "), async () => {
      const r = await cli([...args]);
      assert.equal(r.code, 0, r.stderr);
      for (const m of mentions)
        assert.ok(r.stdout.includes(m), `${args.join(" ")} mentions ${m}:\n${r.stdout}`);
    });
  }

  test("usage errors exit non-zero with a clear message", async () => {
    const [bad, reason, misplaced, nokey, forward] = await Promise.all([
      cli(["trigger", "call.nope", "--api-key", "x"]),
      cli(["trigger", "call.failed", "--reason", "bored", "--api-key", "x"]),
      cli(["trigger", "call.ended", "--reason", "busy", "--api-key", "x", "--api-url", "http://127.0.0.1:9"]),
      cli(["trigger", "call.ended", "--api-url", "http://127.0.0.1:9"]),
      cli(["listen", "--forward-to", "not a url", "--api-key", "x"]),
    ]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /unknown event type "call\.nope"/);
    assert.notEqual(reason.code, 0);
    assert.match(reason.stderr, /unknown failure reason "bored"/);
    assert.equal(misplaced.code, 1, "refused before any request (none could reach 127.0.0.1:9)");
    assert.match(misplaced.stderr, /--reason applies to call\.failed only/);
    assert.equal(nokey.code, 1);
    assert.match(nokey.stderr, /no API key/);
    assert.equal(forward.code, 1);
    assert.match(forward.stderr, /--forward-to/);
  });

  test("serve on a port already in use fails naming PORT", async () => {
    const { createServer } = await import("node:net");
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, "127.0.0.1", r));
    const dir = tempDir();
    try {
      const port = (taken.address() as { port: number }).port;
      const r = await cli(["serve"], { KLEN_DATA_DIR: dir.path, PORT: String(port) });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, new RegExp(`PORT: port ${port} is already in use on 127\\.0\\.0\\.1`));
      // It never ran: it leaves no record of its settings for the next start to be compared with,
      // and closed its database (SQLite removes the write-ahead log with the last connection).
      assert.equal(existsSync(`${dir.path}/klen.db-wal`), false);
      const db = new Database(`${dir.path}/klen.db`, { readonly: true });
      const record = db.prepare("SELECT value FROM settings WHERE name LIKE 'shared_config%'").get();
      // Nor an account whose key it never printed: the next start makes one and prints its key.
      const accounts = db
        .prepare("SELECT (SELECT count(*) FROM accounts) AS a, (SELECT count(*) FROM api_keys) AS k")
        .get();
      db.close();
      assert.equal(record, undefined);
      assert.deepEqual(accounts, { a: 0, k: 0 });
    } finally {
      taken.close();
      dir.remove();
    }
  });

  test("a KLEN_DATA_DIR that is a file, or under one, stops serve and migrate naming it, exit 2", async () => {
    const dir = tempDir();
    try {
      const file = `${dir.path}/not-a-folder`;
      writeFileSync(file, "x");
      for (const [value, why] of [
        [file, /is not a folder/],
        [`${file}/data`, /cannot be made: .*not-a-folder is not a folder/],
      ] as const) {
        for (const args of [["serve"], ["migrate"]]) {
          const port = await freePort();
          const r = await cli(args, { KLEN_DATA_DIR: value, PORT: String(port) });
          assert.equal(r.code, 2, `${args[0]} ${value}: ${r.stderr}`);
          assert.match(r.stderr, /invalid configuration: KLEN_DATA_DIR: /);
          assert.match(r.stderr, why);
        }
      }
    } finally {
      dir.remove();
    }
  });
});

describe("accounts create", () => {
  const dir = tempDir();
  let server: ServerProcess | undefined;
  after(async () => {
    await server?.kill();
    dir.remove();
  });

  test("migrate --json lists what it applied, then nothing", async () => {
    const other = tempDir();
    try {
      const env = { KLEN_DATABASE_URL: `sqlite:${other.path}/klen.db` };
      const first = await cli(["migrate", "--json"], env);
      assert.equal(first.code, 0, first.stderr);
      const applied = (JSON.parse(first.stdout) as { applied: number[] }).applied;
      assert.deepEqual(
        applied,
        applied.map((_, i) => i + 1),
        "every migration, in order",
      );
      assert.ok(applied.length >= 7);
      const again = await cli(["migrate", "--json"], env);
      assert.deepEqual(JSON.parse(again.stdout), { applied: [] });
    } finally {
      other.remove();
    }
  });

  test("migrate and accounts create make private files, and warn of a data folder open to others", async () => {
    const other = tempDir();
    try {
      chmodSync(other.path, 0o755);
      const env = { KLEN_DATA_DIR: other.path };
      const migrated = await cli(["migrate"], env);
      assert.equal(migrated.code, 0, migrated.stderr);
      assert.match(migrated.stderr, /warning: .* readable by other users of this machine/);
      assert.equal(statSync(`${other.path}/klen.db`).mode & 0o077, 0, "the database is the user's alone");
      const made = await cli(["accounts", "create", "--name", "Ops"], env);
      assert.equal(made.code, 0, made.stderr);
      assert.match(made.stderr, /warning: .* readable by other users of this machine/);
      chmodSync(other.path, 0o700);
      const quiet = await cli(["migrate"], env);
      assert.equal(quiet.stderr, "", "nothing to warn of once the folder is private");
    } finally {
      other.remove();
    }
  });

  test("a bad setting is a JSON document on stdout too with --json; an account's name is printed escaped", async () => {
    const other = tempDir();
    try {
      for (const args of [
        ["migrate", "--json"],
        ["accounts", "create", "--name", "X", "--json"],
      ]) {
        const r = await cli(args, { KLEN_DATA_DIR: other.path, KLEN_RETRY_SCHEDULE: "5q" });
        assert.equal(r.code, 2, r.stderr);
        const doc = JSON.parse(r.stdout) as { error: { code: string; field: string } };
        assert.equal(doc.error.code, "invalid_configuration");
        assert.equal(doc.error.field, "KLEN_RETRY_SCHEDULE");
      }
      const evil = await cli(["accounts", "create", "--name", "Evil\x1b[2J\nname"], {
        KLEN_DATA_DIR: other.path,
      });
      assert.equal(evil.code, 0, evil.stderr);
      assert.ok(
        !evil.stdout.includes("\x1b") && evil.stdout.includes("Evil\\u001b[2J\\u000aname"),
        evil.stdout,
      );
    } finally {
      other.remove();
    }
  });

  test("migrate and accounts create that cannot reach the database say which one, with --json on stdout too", async () => {
    // Loopback, a port nothing listens on; the password must not be printed.
    const env = { KLEN_DATABASE_URL: "postgres://klen:S3cretPw@127.0.0.1:1/klen" };
    for (const args of [["migrate"], ["accounts", "create", "--name", "Acme"]]) {
      const r = await cli([...args, "--json"], env);
      assert.equal(r.code, 1, args.join(" "));
      const doc = JSON.parse(r.stdout) as { error: { code: string; message: string } };
      assert.equal(doc.error.code, "cli_error");
      assert.match(
        doc.error.message,
        /^cannot open the database postgres:\/\/klen:\*\*\*@127\.0\.0\.1:1\/klen \(KLEN_DATABASE_URL\): /,
      );
      assert.match(r.stderr, /cannot open the database/);
      assert.doesNotMatch(r.stdout + r.stderr, /S3cretPw/);
    }
  });

  test("--json prints a key that works against the API", async () => {
    const db = `sqlite:${dir.path}/klen.db`;
    const r = await cli(["accounts", "create", "--name", "Acme Voice", "--json"], { KLEN_DATABASE_URL: db });
    assert.equal(r.code, 0, r.stderr);
    const created = JSON.parse(r.stdout) as { id: number; name: string; api_key: string };
    assert.equal(created.name, "Acme Voice");
    assert.match(created.api_key, /^klen_sk_/);
    server = await spawnServer({ dataDir: dir.path, env: { KLEN_DATABASE_URL: db } });
    const me = await apiClient(server.url, created.api_key).get("/v1/account");
    assert.equal(me.status, 200, JSON.stringify(me.body));
    assert.equal(me.body.name, "Acme Voice");
    assert.equal(me.body.id, created.id);
    assert.equal((await apiClient(server.url, `${created.api_key}x`).get("/v1/account")).status, 401);
  });
});

describe("client commands against a running server", () => {
  const dir = tempDir();
  let server: ServerProcess;
  let env: Record<string, string>;
  before(async () => {
    server = await spawnServer({ dataDir: dir.path });
    env = { KLEN_API_URL: server.url, KLEN_API_KEY: server.apiKey };
  });
  after(async () => {
    await server.kill();
    dir.remove();
  });

  test("trigger runs started at once on a fresh account share one agent; a deleted one is replaced", async () => {
    const triggerAgents = async () =>
      (
        (await server.api.get("/v1/agents?limit=100")).body.data as Array<{ id: number; name: string }>
      ).filter((a) => a.name === "klen-webhooks trigger");
    assert.deepEqual(await triggerAgents(), [], "a fresh account");
    const runs = await Promise.all([1, 2, 3, 4].map(() => cli(["trigger", "call.started", "--json"], env)));
    for (const r of runs) assert.equal(r.code, 0, r.stderr);
    const ids = new Set(runs.map((r) => JSON.parse(r.stdout).agent_id as number));
    assert.equal(ids.size, 1, `one agent for all four runs, got ${[...ids].join(", ")}`);
    assert.deepEqual(
      (await triggerAgents()).map((a) => a.id),
      [...ids],
    );

    // Deleted within the 24 h the first creation is replayed for: the next run makes a new one.
    const [first] = ids;
    assert.equal((await server.api.del(`/v1/agents/${first}`)).status, 200);
    const next = await Promise.all([1, 2].map(() => cli(["trigger", "call.started", "--json"], env)));
    for (const r of next) assert.equal(r.code, 0, r.stderr);
    const nextIds = new Set(next.map((r) => JSON.parse(r.stdout).agent_id as number));
    assert.equal(nextIds.size, 1);
    assert.notEqual([...nextIds][0], first);
    assert.deepEqual(
      (await triggerAgents()).map((a) => a.id),
      [...nextIds],
    );
  });

  test("trigger call.ended --json emits call.started and call.ended", async () => {
    const r = await cli(["trigger", "call.ended", "--json"], env);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.deepEqual(
      out.events.map((e: any) => e.event_type),
      ["call.started", "call.ended"],
    );
    const listed = await server.api.get(`/v1/events?call_id=${out.call_id}`);
    assert.deepEqual(
      listed.body.data.map((e: any) => e.id).reverse(),
      out.events.map((e: any) => e.id),
    );
    assert.equal(listed.body.data[0].payload.call.status, "completed");
    // The agent is created once and reused.
    const again = JSON.parse((await cli(["trigger", "call.started", "--json"], env)).stdout);
    assert.equal(again.agent_id, out.agent_id);
  });

  test("trigger call.failed --reason and call.recording drive the matching transitions", async () => {
    const failed = await cli(["trigger", "call.failed", "--reason", "busy", "--json"], env);
    assert.equal(failed.code, 0, failed.stderr);
    const f = JSON.parse(failed.stdout);
    assert.deepEqual(
      f.events.map((e: any) => e.event_type),
      ["call.failed"],
    );
    const ev = await server.api.get(`/v1/events/${f.events[0].id}`);
    assert.equal(ev.body.payload.call.failure_reason, "busy");

    const rec = await cli(["trigger", "call.recording", "--json"], env);
    assert.equal(rec.code, 0, rec.stderr);
    const r = JSON.parse(rec.stdout);
    assert.deepEqual(
      r.events.map((e: any) => e.event_type),
      ["call.started", "call.ended", "call.transcript", "call.summary", "call.recording"],
    );
    const recording = await server.api.get(`/v1/events/${r.events[4].id}`);
    const audio = await fetch(recording.body.payload.call.recording_url);
    assert.equal(audio.status, 200);
    assert.match(audio.headers.get("content-type") ?? "", /^audio\/wav/);
    const bytes = Buffer.from(await audio.arrayBuffer());
    assert.equal(bytes.subarray(0, 4).toString("ascii"), "RIFF");
    assert.equal(bytes.subarray(8, 12).toString("ascii"), "WAVE");
  });

  test("delete and revoke ask first on a terminal; --yes, --json or no terminal go ahead", async () => {
    /** The CLI on a terminal of its own (util-linux `script`), `typed` on its keyboard. */
    const onTerminal = (args: string[], typed: string) =>
      new Promise<{ code: number | null; output: string }>((resolve) => {
        const p = spawn("script", ["-qec", [process.execPath, CLI, ...args].join(" "), "/dev/null"], {
          env: cliEnv(env),
          stdio: ["pipe", "pipe", "pipe"],
        });
        let output = "";
        p.stdout!.on("data", (d: Buffer) => {
          output += d.toString();
        });
        p.stdin!.end(typed);
        p.on("exit", (code) => resolve({ code, output }));
      });
    const ep = (await server.api.post("/v1/endpoints", { url: "http://127.0.0.1:9/asked" })).body;
    const kept = await onTerminal(["endpoints", "delete", ep.id], "n\n");
    assert.equal(kept.code, 1, kept.output);
    assert.match(
      kept.output,
      new RegExp(
        `Delete endpoint ${ep.id} \\(http://127\\.0\\.0\\.1:9/asked\\)\\? It cannot be enabled again\\. \\[y/N\\]`,
      ),
    );
    assert.match(kept.output, /cancelled: nothing changed/);
    assert.equal((await server.api.get(`/v1/endpoints/${ep.id}`)).status, 200, "not deleted");
    const gone = await onTerminal(["endpoints", "delete", ep.id], "yes\n");
    assert.equal(gone.code, 0, gone.output);
    assert.match(gone.output, new RegExp(`deleted ${ep.id}`));
    assert.equal((await server.api.get(`/v1/endpoints/${ep.id}`)).status, 404);
    const other = (await server.api.post("/v1/endpoints", { url: "http://127.0.0.1:9/other" })).body;
    const yes = await onTerminal(["endpoints", "delete", other.id, "--yes"], "");
    assert.equal(yes.code, 0, yes.output);
    assert.doesNotMatch(yes.output, /\[y\/N\]/);
    // A key asked about and kept still works.
    const key = (await server.api.post("/v1/api-keys", {})).body;
    const notRevoked = await onTerminal(["api-keys", "revoke", String(key.id)], "\n");
    assert.equal(notRevoked.code, 1, notRevoked.output);
    assert.match(
      notRevoked.output,
      new RegExp(`Revoke API key ${key.id} \\(${key.prefix}…\\)\\? It stops working for good\\.`),
    );
    assert.equal((await apiClient(server.url, key.key).get("/v1/account")).status, 200);
    // Ctrl-D at the question is a no; a key that is not there fails before anything is asked.
    const eof = await onTerminal(["api-keys", "revoke", String(key.id)], "\x04");
    assert.equal(eof.code, 1, eof.output);
    assert.match(eof.output, /cancelled: nothing changed/);
    assert.equal((await apiClient(server.url, key.key).get("/v1/account")).status, 200);
    const unknown = await onTerminal(["api-keys", "revoke", "999999"], "y\n");
    assert.equal(unknown.code, 1, unknown.output);
    assert.match(unknown.output, /api key 999999 not found/);
    assert.doesNotMatch(unknown.output, /\[y\/N\]/);
    // Rotating with no grace period asks too: every receiver on the old secret would fail.
    const before = (await server.api.get(`/v1/endpoints/${other.id}/secret`)).status;
    assert.equal(before, 404, "deleted above");
    const live = (await server.api.post("/v1/endpoints", { url: "http://127.0.0.1:9/live" })).body;
    const noGrace = await onTerminal(["endpoints", "rotate-secret", live.id, "--grace", "0"], "n\n");
    assert.equal(noGrace.code, 1, noGrace.output);
    assert.match(
      noGrace.output,
      /Stop the old secrets of ep_\w+ now, before receivers have the new one\? \[y\/N\]/,
    );
    assert.equal((await server.api.get(`/v1/endpoints/${live.id}/secret`)).body.secret, live.secret);
  });

  test("events list and get show the account's events and the body one was delivered with", async () => {
    const made = JSON.parse((await cli(["trigger", "call.ended", "--json"], env)).stdout);
    const [started, ended] = made.events as Array<{ id: string }>;
    const listed = await cli(["events", "list", "--call-id", String(made.call_id)], env);
    assert.equal(listed.code, 0, listed.stderr);
    const lines = listed.stdout.trim().split("\n");
    assert.equal(lines.length, 2, listed.stdout);
    assert.match(lines[0]!, new RegExp(`^${ended!.id}  call\\.ended {7}call ${made.call_id}  \\d{4}-`));
    assert.match(lines[1]!, new RegExp(`^${started!.id}  call\\.started {5}call ${made.call_id}  `));
    const page = JSON.parse(
      (
        await cli(
          ["events", "list", "--call-id", String(made.call_id), "--event-type", "call.started", "--json"],
          env,
        )
      ).stdout,
    );
    assert.deepEqual(
      page.data.map((e: { id: string }) => e.id),
      [started!.id],
    );
    assert.equal(page.next_cursor, null);
    const one = await cli(["events", "list", "--limit", "1"], env);
    assert.match(one.stdout, /\nmore: --cursor \S+\n$/);

    const shown = await cli(["events", "get", ended!.id], env);
    assert.equal(shown.code, 0, shown.stderr);
    const [head, ...body] = shown.stdout.trimEnd().split("\n");
    assert.match(head!, new RegExp(`^${ended!.id}  call\\.ended  call ${made.call_id}  `));
    const stored = (await server.api.get(`/v1/events/${ended!.id}`)).body.payload;
    assert.deepEqual(JSON.parse(body.join("\n")), stored);
    assert.equal(body[1], '  "event_type": "call.ended",', "indented for reading");

    const unknown = await cli(["events", "get", "evt_00000000000000000000000000", "--json"], env);
    assert.equal(unknown.code, 1);
    assert.equal(JSON.parse(unknown.stdout).error.code, "not_found");
    const bad = await cli(["events", "list", "--event-type", "call.exploded"], env);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /argument 'call\.exploded' is invalid\. Allowed choices are call\.started/);
  });

  test("calls media lists a call's recording with a URL made now; --output saves it", async () => {
    const made = JSON.parse((await cli(["trigger", "call.recording", "--json"], env)).stdout);
    const callId = made.call_id as number;
    const event = await server.api.get(`/v1/events/${made.events[4].id}`);
    const original = Buffer.from(await (await fetch(event.body.payload.call.recording_url)).arrayBuffer());

    const listed = await cli(["calls", "media", String(callId), "--json"], env);
    assert.equal(listed.code, 0, listed.stderr);
    const [item, ...rest] = JSON.parse(listed.stdout).data;
    assert.deepEqual(rest, [], "the trigger's texts are short: inline, not stored");
    assert.equal(item.kind, "recording");
    assert.equal(item.event_id, made.events[4].id);
    const text = await cli(["calls", "media", String(callId)], env);
    assert.equal(text.code, 0, text.stderr);
    // Each run makes its URLs anew: the expiry (whole seconds) and signature may differ from the
    // --json run's.
    assert.match(
      text.stdout,
      new RegExp(
        `^recording  audio/wav  ${original.length} bytes \\(call\\.recording ${item.event_id}\\)  until \\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ\n  http://localhost:${server.port}/v1/blobs/${item.id}\\?expires=\\d+&signature=[\\w-]{43}\n$`,
      ),
    );

    const folder = join(dir.path, "media", String(callId));
    const saved = await cli(["calls", "media", String(callId), "--output", folder], env);
    assert.equal(saved.code, 0, saved.stderr);
    const file = join(folder, `call-${callId}-recording.wav`);
    assert.equal(saved.stdout, `recording  ${original.length} bytes  → ${file}\n`);
    assert.ok(readFileSync(file).equals(original));

    const none = await cli(["calls", "media", "999999"], env);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /calls media: GET \/v1\/calls\/999999\/media: 404 call 999999 not found/);
    const bad = await cli(["calls", "media", "abc"], env);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /call_id must be a positive integer/);
  });

  test("listen forwards each event signed with its printed secret, body byte-identical to the stored one", async () => {
    const receiver = await startReceiver();
    const listener = spawnCli(["listen", "--forward-to", `${receiver.url}/hooks`, "--json"], env);
    try {
      await waitFor("ready line", () => listener.lines.find((l) => l.type === "ready"));
      const ready = listener.lines.find((l) => l.type === "ready");
      assert.match(ready.secret, /^whsec_/);
      assert.equal(Buffer.from(ready.secret.slice(6), "base64").length, 32);
      receiver.setSecret(ready.secret);
      const { agentId } = await setupAccount(server.api);
      const callId = await runCall(server.api, agentId);
      await receiver.waitForCount(4);
      assert.deepEqual(receiver.verifyFailures, []);
      const sqlite = new Database(`${dir.path}/klen.db`, { readonly: true });
      try {
        const stored = sqlite
          .prepare("SELECT id, event_type, payload FROM events WHERE call_id = ? ORDER BY seq")
          .all(callId) as Array<{ id: string; event_type: string; payload: string }>;
        assert.equal(stored.length, 4);
        assert.deepEqual(
          receiver.requests.map((q) => q.id),
          stored.map((s) => s.id),
          "in order, once each",
        );
        for (const [i, q] of receiver.requests.entries()) {
          assert.equal(q.body, stored[i]!.payload, "same body bytes as stored");
          assert.equal(q.path, "/hooks");
          assert.equal(q.headers["content-type"], "application/json");
          assert.match(String(q.headers["user-agent"]), /^klen-webhooks-cli\//);
          // An independent verifier with the printed secret, and a wrong one fails.
          new Webhook(ready.secret).verify(q.body, q.headers as Record<string, string>);
          assert.throws(() =>
            new Webhook(`whsec_${Buffer.alloc(32, 1).toString("base64")}`).verify(
              q.body,
              q.headers as Record<string, string>,
            ),
          );
        }
      } finally {
        sqlite.close();
      }
      await waitFor("4 forwarded lines", () => listener.forwarded().length >= 4);
      for (const f of listener.forwarded()) assert.equal(f.status, 200);
    } finally {
      assert.equal(await listener.stop(), 0, listener.stderr());
      await receiver.close();
    }
  });

  test("listen --events filters, uses a given --secret and survives a local target that is down", async () => {
    const port = await freePort(); // nothing listens here
    const secret = `whsec_${Buffer.alloc(24, 7).toString("base64")}`;
    const listener = spawnCli(
      [
        "listen",
        "--forward-to",
        `http://127.0.0.1:${port}/down`,
        "--events",
        "call.ended,call.failed",
        "--secret",
        secret,
        "--json",
      ],
      env,
    );
    try {
      await waitFor("ready line", () => listener.lines.find((l) => l.type === "ready"));
      // Given: the JSON line still carries it for scripts, and says where it came from.
      assert.deepEqual(listener.lines[0], {
        type: "ready",
        secret,
        secret_from: "--secret",
        forward_to: `http://127.0.0.1:${port}/down`,
      });
      const { agentId } = await setupAccount(server.api);
      await runCall(server.api, agentId);
      const failed = await server.api.post("/v1/calls", {
        agent_id: agentId,
        type: "outbound",
        phone_number: "+15550001111",
      });
      await server.api.post(`/v1/calls/${failed.body.id}/fail`, { failure_reason: "no-answer" });
      await waitFor("2 forwarding attempts", () => listener.forwarded().length >= 2);
      const f = listener.forwarded();
      assert.deepEqual(
        f.map((l) => l.event_type),
        ["call.ended", "call.failed"],
      );
      for (const l of f) {
        assert.equal(l.status, null);
        assert.equal(l.error, "ECONNREFUSED");
      }
      assert.equal(listener.proc.exitCode, null, "still running");
    } finally {
      assert.equal(await listener.stop(), 0, listener.stderr());
    }
  });

  test("listen shows why the local receiver refused a forward", async () => {
    const refusing = await startReceiver({
      respond: () => ({ status: 400, body: '{"error":"no_matching_signature"}' }),
    });
    const listener = spawnCli(["listen", "--forward-to", `${refusing.url}/hook`, "--json"], env);
    const human = spawnCli(["listen", "--forward-to", `${refusing.url}/hook`], env);
    try {
      await waitFor("ready line", () => listener.lines.find((l) => l.type === "ready"));
      await waitFor("the ready text", () => /Ready!/.test(human.stdoutText()));
      const { agentId } = await setupAccount(server.api);
      const created = await server.api.post("/v1/calls", {
        agent_id: agentId,
        type: "outbound",
        phone_number: "+15550002222",
      });
      await server.api.post(`/v1/calls/${created.body.id}/start`, {});
      const [f] = await waitFor("a forwarded line", () => {
        const l = listener.forwarded();
        return l.length > 0 ? l : undefined;
      });
      assert.equal(f.status, 400);
      assert.equal(f.response_body, '{"error":"no_matching_signature"}');
      await waitFor("the text line", () =>
        /call\.started .* 400 .*POST .*\{"error":"no_matching_signature"\}$/m.test(human.stdoutText()),
      );
    } finally {
      assert.equal(await listener.stop(), 0, listener.stderr());
      assert.equal(await human.stop(), 0, human.stderr());
      await refusing.close();
    }
  });

  test("listen takes its secret from KLEN_WEBHOOK_SECRET, out of ps", async () => {
    const secret = `whsec_${Buffer.alloc(32, 9).toString("base64")}`;
    const listener = spawnCli(["listen", "--forward-to", "http://127.0.0.1:9/x", "--json"], {
      ...env,
      KLEN_WEBHOOK_SECRET: secret,
    });
    try {
      await waitFor("ready line", () => listener.lines.find((l) => l.type === "ready"));
      assert.equal(listener.lines[0].secret, secret);
      assert.equal(listener.lines[0].secret_from, "KLEN_WEBHOOK_SECRET");
    } finally {
      assert.equal(await listener.stop(), 0, listener.stderr());
    }
    const human = spawnCli(["listen", "--forward-to", "http://127.0.0.1:9/x"], {
      ...env,
      KLEN_WEBHOOK_SECRET: secret,
    });
    try {
      await waitFor("the ready text", () =>
        /Signing with the secret from KLEN_WEBHOOK_SECRET/.test(human.stdoutText()),
      );
      assert.doesNotMatch(human.stdoutText() + human.stderr(), new RegExp(secret.slice(6, 20)));
    } finally {
      assert.equal(await human.stop(), 0, human.stderr());
    }
    const bad = await cli(["listen", "--forward-to", "http://127.0.0.1:9/x"], {
      ...env,
      KLEN_WEBHOOK_SECRET: "short",
    });
    assert.equal(bad.code, 1);
    // The variable that holds it is named, not a flag the user never passed.
    assert.match(bad.stderr, /KLEN_WEBHOOK_SECRET must be whsec_/);
    assert.doesNotMatch(bad.stderr, /--secret must/);
  });

  test("listen prints each forward at the terminal's local time (TZ), not UTC", async () => {
    const human = spawnCli(["listen", "--forward-to", "http://127.0.0.1:9/x"], {
      ...env,
      TZ: "Asia/Kathmandu", // UTC+05:45 all year
    });
    try {
      await waitFor("the ready text", () => /Ready!/.test(human.stdoutText()));
      const { agentId } = await setupAccount(server.api);
      await runCall(server.api, agentId);
      const line = await waitFor(
        "a forwarded line",
        () => human.stdoutText().match(/^(\d\d):(\d\d):\d\d {2}call\.started/m) ?? undefined,
      );
      const shown = Number(line[1]) * 60 + Number(line[2]);
      const now = new Date();
      const kathmandu = (now.getUTCHours() * 60 + now.getUTCMinutes() + 345) % 1440;
      const apart = Math.abs(shown - kathmandu);
      assert.ok(Math.min(apart, 1440 - apart) <= 1, `shown ${line[0]}, local ${kathmandu} min of the day`);
    } finally {
      assert.equal(await human.stop(), 0, human.stderr());
    }
  });

  test("listen --after forwards the events after that one first, in order, then new ones", async () => {
    const { agentId } = await setupAccount(server.api);
    const callId = await runCall(server.api, agentId);
    const events = (await server.api.get(`/v1/events?call_id=${callId}`)).body.data as Array<{ id: string }>;
    const ids = events.map((e) => e.id).sort();
    assert.ok(ids.length >= 3);
    const listener = spawnCli(
      ["listen", "--forward-to", "http://127.0.0.1:9/x", "--after", ids[0]!, "--json"],
      env,
    );
    try {
      await waitFor("the events after it", () => listener.forwarded().length >= ids.length - 1);
      const later = await server.api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: "+15550002222",
      });
      await server.api.post(`/v1/calls/${later.body.id}/start`, {});
      await waitFor("the new one", () => listener.forwarded().length >= ids.length);
      const newest = (await server.api.get(`/v1/events?call_id=${later.body.id}`)).body.data[0].id;
      assert.deepEqual(
        listener.forwarded().map((l) => l.event_id),
        [...ids.slice(1), newest],
      );
    } finally {
      assert.equal(await listener.stop(), 0, listener.stderr());
    }
    const bad = await cli(["listen", "--forward-to", "http://127.0.0.1:9/x", "--after", "42", "--json"], env);
    assert.equal(bad.code, 1);
    assert.equal(JSON.parse(bad.stdout).error.code, "usage");
  });

  test("listen over the account's limit of open streams says the server's reason and waits its Retry-After", async () => {
    // Each stream is held and read until the end: a response nobody holds can be collected, and
    // its connection closed, which frees a slot for the listener (seen once on a loaded machine).
    const open: Array<{ c: AbortController; read: Promise<unknown> }> = [];
    try {
      for (let i = 0; i < 10; i++) {
        const c = new AbortController();
        const r = await fetch(`${server.url}/v1/events/stream`, {
          headers: { authorization: `Bearer ${server.apiKey}` },
          signal: c.signal,
        });
        assert.equal(r.status, 200);
        open.push({ c, read: r.text().catch(() => undefined) });
      }
      const listener = spawnCli(["listen", "--forward-to", "http://127.0.0.1:9/x", "--json"], env);
      try {
        const refused = await waitFor("the refusal", () =>
          listener.lines.find((l) => l.type === "disconnected"),
        );
        assert.match(refused.reason, /answered 429: 10 event streams of this account are open/);
        assert.ok(refused.retry_in_ms >= 5_000, `waits the server's Retry-After: ${refused.retry_in_ms} ms`);
      } finally {
        assert.equal(await listener.stop(), 0, listener.stderr());
      }
    } finally {
      for (const o of open) o.c.abort();
      await Promise.all(open.map((o) => o.read));
    }
  });

  test("test-call --wait follows the simulated workflow to its deliveries", async () => {
    const receiver = await startReceiver();
    try {
      const ep = await server.api.post("/v1/endpoints", { url: `${receiver.url}/tc` });
      assert.equal(ep.status, 201);
      receiver.setSecret(ep.body.secret);
      const r = await cli(["test-call", "--endpoint-id", ep.body.id, "--wait", "--json"], env);
      assert.equal(r.code, 0, r.stderr + r.stdout);
      const out = JSON.parse(r.stdout);
      assert.equal(out.done, true);
      assert.equal(out.status, "completed");
      assert.deepEqual(
        out.events.map((e: any) => e.event_type),
        ["call.started", "call.ended", "call.transcript", "call.summary", "call.recording"],
      );
      for (const e of out.events) {
        assert.equal(e.deliveries.length, 1);
        assert.equal(e.deliveries[0].endpoint_id, ep.body.id);
        assert.equal(e.deliveries[0].status, "succeeded");
      }
      assert.deepEqual(
        receiver.requests.map((q) => q.id),
        out.events.map((e: any) => e.id),
      );
      assert.deepEqual(receiver.verifyFailures, []);

      const busy = await cli(["test-call", "--outcome", "busy", "--endpoint-id", ep.body.id, "--wait"], env);
      assert.equal(busy.code, 0, busy.stderr);
      assert.match(busy.stdout, /call\.failed/);
      assert.match(busy.stdout, /✓ call\.failed\s+→ ep_\S+ attempt 1: 200/);
      assert.doesNotMatch(busy.stdout, /call\.started/);
    } finally {
      await receiver.close();
    }
    // A receiver that refuses the signature (a wrong secret): the attempt's line says why.
    const refusing = await startReceiver({
      respond: () => ({ status: 400, body: '{"error":{"code":"no_matching_signature"}}' }),
    });
    try {
      const ep = await server.api.post("/v1/endpoints", { url: `${refusing.url}/tc` });
      const r = await cli(
        ["test-call", "--outcome", "busy", "--endpoint-id", ep.body.id, "--wait", "--timeout", "2"],
        env,
      );
      assert.equal(r.code, 1, "gave up with the delivery pending");
      assert.match(
        r.stdout,
        /↻ call\.failed\s+→ ep_\S+ attempt 1: 400 \(\d+ ms\) will retry \{"error":\{"code":"no_matching_signature"\}\}/,
      );
    } finally {
      await refusing.close();
    }
  });

  test("test-call --wait --json on an account with no endpoint fails saying so in the document", async () => {
    const made = await cli(["accounts", "create", "--name", "No endpoints", "--json"], {
      KLEN_DATA_DIR: dir.path,
    });
    assert.equal(made.code, 0, made.stderr);
    const key = JSON.parse(made.stdout).api_key as string;
    const r = await cli(["test-call", "--wait", "--json"], { ...env, KLEN_API_KEY: key });
    assert.equal(r.code, 1, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.equal(out.done, true);
    assert.equal(out.error, "no endpoint got these events");
  });
});

describe("listen across a server restart", () => {
  const dir = tempDir();
  const apiKey = "klen_test_restart_0123456789";
  let server: Awaited<ReturnType<typeof serveOnPort>> | undefined;
  after(async () => {
    await server?.kill();
    dir.remove();
  });

  test("test-call --wait waits out a server restart mid-call and follows the call to its end", async () => {
    const port = await freePort();
    const dataDir = `${dir.path}/test-call`;
    server = await serveOnPort(port, dataDir, apiKey);
    const receiver = await startReceiver();
    try {
      assert.equal((await server.api.post("/v1/endpoints", { url: `${receiver.url}/tc` })).status, 201);
      const env = { KLEN_API_URL: server.url, KLEN_API_KEY: apiKey };
      const following = cli(["test-call", "--wait", "--json", "--timeout", "90"], env);
      await waitFor("the call started", () => receiver.requests.length >= 1);
      // A graceful stop hands the test call's run over; the next start carries it on.
      await server.kill();
      server = await serveOnPort(port, dataDir, apiKey);
      const r = await following;
      assert.equal(r.code, 0, r.stderr + r.stdout);
      const out = JSON.parse(r.stdout);
      assert.equal(out.done, true);
      assert.equal(out.events.length, 5);
    } finally {
      // The next test starts its own server in `server`: this one must not outlive the test.
      await server.kill();
      server = undefined;
      await receiver.close();
    }
  });

  test("reconnects, resumes after the last event and forwards what was emitted meanwhile", async () => {
    const port = await freePort();
    server = await serveOnPort(port, dir.path, apiKey);
    const receiver = await startReceiver();
    const listener = spawnCli(["listen", "--forward-to", receiver.url, "--json"], {
      KLEN_API_URL: server.url,
      KLEN_API_KEY: apiKey,
    });
    try {
      await waitFor("ready line", () => listener.lines.find((l) => l.type === "ready"));
      receiver.setSecret(listener.lines[0].secret);
      const { agentId } = await setupAccount(server.api);
      await runCall(server.api, agentId);
      await receiver.waitForCount(4);

      await server.kill();
      await waitFor("the listener to notice", () => listener.lines.some((l) => l.type === "disconnected"));
      server = await serveOnPort(port, dir.path, apiKey);
      const second = await runCall(server.api, agentId);
      await receiver.waitForCount(8, 20_000);
      await waitFor("a reconnected line", () => listener.lines.some((l) => l.type === "reconnected"));
      const ids = (await server.api.get(`/v1/events?call_id=${second}`)).body.data
        .map((e: any) => e.id)
        .reverse();
      assert.deepEqual(
        receiver.requests.slice(4).map((q) => q.id),
        ids,
        "the second call's events, once each, in order",
      );
      assert.equal(new Set(receiver.requests.map((q) => q.id)).size, 8, "nothing forwarded twice");
      assert.deepEqual(receiver.verifyFailures, []);
    } finally {
      assert.equal(await listener.stop(), 0, listener.stderr());
      await receiver.close();
    }
  });
});

test("endpoints create/list and deliveries list/retry show and drive what the API has", async () => {
  const dir = tempDir();
  // Retries an hour apart: the second attempt below can only be the manual one.
  const server = await spawnServer({ dataDir: dir.path, env: { KLEN_RETRY_SCHEDULE: "1h" } });
  const rx = await startReceiver({ respond: () => 500 });
  const env = { KLEN_API_URL: server.url, KLEN_API_KEY: server.apiKey };
  try {
    const created = await cli(
      [
        "endpoints",
        "create",
        "--url",
        rx.url,
        "--event-types",
        "call.ended",
        "--description",
        "from the CLI",
        "--json",
      ],
      env,
    );
    assert.equal(created.code, 0, created.stderr);
    const ep = JSON.parse(created.stdout);
    assert.match(ep.secret, /^whsec_/);
    assert.deepEqual(ep.event_types, ["call.ended"]);
    // A description that would clear the terminal is listed escaped.
    const human = await cli(
      ["endpoints", "create", "--url", `${rx.url}/other`, "--description", "\x1b[2Jwiped"],
      env,
    );
    assert.match(human.stdout, /signing secret: whsec_/);
    const listed = await cli(["endpoints", "list"], env);
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual(controls(listed.stdout), []);
    assert.ok(listed.stdout.includes("  \\u001b[2Jwiped\n"), listed.stdout);
    assert.ok(
      listed.stdout.includes(`${ep.id}  enabled  ${ep.url}  call.ended  from the CLI\n`),
      listed.stdout,
    );
    assert.equal(listed.stdout.trim().split("\n").length, 2);
    const badType = await cli(["endpoints", "create", "--url", rx.url, "--event-types", "call.nope"], env);
    assert.equal(badType.code, 1);
    assert.match(badType.stderr, /^error: --event-types: unknown event type "call\.nope"/);

    const trig = JSON.parse((await cli(["trigger", "call.ended", "--json"], env)).stdout);
    // The receiver also gets the second endpoint's (`/other`) requests.
    const toFirst = () => rx.requests.filter((r) => r.path === "/");
    const one = await waitFor("the first attempt recorded", async () => {
      const r = await cli(
        ["deliveries", "list", "--call-id", String(trig.call_id), "--endpoint-id", ep.id, "--json"],
        env,
      );
      const ds = JSON.parse(r.stdout).data;
      return ds.length === 1 && ds[0].attempt_count === 1 ? ds[0] : undefined;
    });
    assert.equal(one.status, "pending");
    assert.equal(one.attempts[0].status_code, 500);
    const shown = await cli(
      ["deliveries", "list", "--call-id", String(trig.call_id), "--endpoint-id", ep.id],
      env,
    );
    assert.match(
      shown.stdout,
      new RegExp(
        `^${one.id}  pending  call\\.ended ${one.event_id} \\(call ${trig.call_id}\\) → ${ep.id}  1 attempt, next attempt `,
        "m",
      ),
    );
    assert.match(shown.stdout, /^ {2}#1 \S+ 500 \(\d+ ms\)/m);
    // A time range: the delivery is created at or after its own created_at, and not before it.
    const inRange = (flag: string) =>
      cli(
        [
          "deliveries",
          "list",
          "--call-id",
          String(trig.call_id),
          "--endpoint-id",
          ep.id,
          flag,
          one.created_at,
          "--json",
        ],
        env,
      );
    assert.deepEqual(
      JSON.parse((await inRange("--after")).stdout).data.map((d: { id: string }) => d.id),
      [one.id],
    );
    assert.deepEqual(JSON.parse((await inRange("--before")).stdout).data, []);
    // An id of the wrong form is refused before asking, naming the option (not the API's pattern).
    for (const [option, value] of [
      ["--endpoint-id", "ep_nope"],
      ["--event-id", "evt_nope"],
    ] as const) {
      const r = await cli(["deliveries", "list", option, value, "--json"], env);
      assert.equal(r.code, 1);
      const error = JSON.parse(r.stdout).error as { code: string; message: string };
      assert.equal(error.code, "usage");
      assert.match(error.message, new RegExp(`${option} must be an id like`));
    }
    const badKey = await cli(["api-keys", "revoke", "abc", "--json"], env);
    assert.equal(badKey.code, 1);
    assert.deepEqual(
      [JSON.parse(badKey.stdout).error.code, JSON.parse(badKey.stdout).error.message],
      ["usage", "key_id must be a positive integer"],
    );
    const badTime = await cli(["deliveries", "list", "--before", "2026-11-31T00:00:00Z"], env);
    assert.equal(badTime.code, 1);
    assert.match(badTime.stderr, /400 .*"before" is not an ISO-8601 timestamp/);

    const retried = await cli(["deliveries", "retry", one.id], env);
    assert.equal(retried.code, 0, retried.stderr);
    assert.match(retried.stdout, new RegExp(`^${one.id} queued for one more attempt \\(pending\\)`));
    await waitFor("the manual attempt", () => (toFirst().length >= 2 ? true : undefined));
    assert.equal(toFirst().length, 2);
    assert.equal(toFirst()[1]!.id, toFirst()[0]!.id, "the same webhook-id");

    // Disabled, the retry is refused with the reason; enabled again, it goes; the secret is shown.
    const disabled = await cli(["endpoints", "disable", ep.id], env);
    assert.match(disabled.stdout, new RegExp(`^${ep.id}  disabled \\(disabled by user\\)`));
    const refused = await cli(["deliveries", "retry", one.id], env);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /409 endpoint .* is disabled \(disabled by user\); enable it first/);
    assert.match((await cli(["endpoints", "enable", ep.id], env)).stdout, new RegExp(`^${ep.id}  enabled`));
    assert.equal((await cli(["endpoints", "secret", ep.id], env)).stdout.trim(), ep.secret);
    // A rate limit: set, shown in the line, removed; out-of-range values are refused before asking.
    assert.match(
      (await cli(["endpoints", "rate-limit", ep.id, "20"], env)).stdout,
      new RegExp(`^${ep.id}  enabled  .*  at most 20/s  from the CLI`),
    );
    assert.equal((await server.api.get(`/v1/endpoints/${ep.id}`)).body.rate_limit, 20);
    const unlimited = JSON.parse(
      (await cli(["endpoints", "rate-limit", ep.id, "none", "--json"], env)).stdout,
    );
    assert.equal(unlimited.rate_limit, null);
    for (const bad of ["0", "1.5", "100001", "fast"]) {
      const r = await cli(["endpoints", "rate-limit", ep.id, bad], env);
      assert.equal(r.code, 1, bad);
      assert.match(r.stderr, /rate limit must be a whole number from 1 to 100000 a second, or none/, bad);
    }
    const limitedEp = JSON.parse(
      (await cli(["endpoints", "create", "--url", `${rx.url}/slow`, "--rate-limit", "5", "--json"], env))
        .stdout,
    );
    assert.equal(limitedEp.rate_limit, 5);
    // Filters and headers at creation, changed later; only what is given changes.
    const agents: number[] = [];
    for (const name of ["Sales", "Support"])
      agents.push((await server.api.post("/v1/agents", { name })).body.id);
    const filtered = JSON.parse(
      (
        await cli(
          [
            "endpoints",
            "create",
            "--url",
            `${rx.url}/f`,
            "--agent-ids",
            `${agents[0]}, ${agents[1]}`,
            "--header",
            "x-team: voice",
            "--header",
            "x-env:prod",
            "--json",
          ],
          env,
        )
      ).stdout,
    );
    assert.deepEqual(
      [filtered.agent_ids, filtered.headers],
      [agents, { "x-team": "voice", "x-env": "prod" }],
    );
    const updated = await cli(
      [
        "endpoints",
        "update",
        filtered.id,
        "--url",
        `${rx.url}/g`,
        "--event-types",
        "call.ended",
        "--agent-ids",
        "all",
        "--header",
        "authorization: Bearer abc",
      ],
      env,
    );
    assert.equal(updated.code, 0, updated.stderr);
    assert.match(
      updated.stdout,
      new RegExp(`^${filtered.id}  enabled  ${rx.url}/g  call\\.ended  1 header\n$`),
    );
    const now = (await server.api.get(`/v1/endpoints/${filtered.id}`)).body;
    assert.deepEqual(
      [now.url, now.event_types, now.agent_ids, now.headers, now.description],
      [`${rx.url}/g`, ["call.ended"], [], { authorization: "Bearer abc" }, filtered.description],
    );
    const cleared = JSON.parse(
      (
        await cli(
          ["endpoints", "update", filtered.id, "--clear-headers", "--event-types", "all", "--json"],
          env,
        )
      ).stdout,
    );
    assert.deepEqual([cleared.headers, cleared.event_types, cleared.url], [{}, [], `${rx.url}/g`]);
    await cli(["endpoints", "update", filtered.id, "--event-types", "call.ended"], env);
    const star = JSON.parse(
      (await cli(["endpoints", "update", filtered.id, "--event-types", "*", "--json"], env)).stdout,
    );
    assert.deepEqual(star.event_types, [], "* is all, as listen --events takes it");
    for (const [args, message] of [
      [[], /nothing to change: give --url/],
      [["--header", "no colon"], /--header must be "name: value", not "no colon"/],
      [["--agent-ids", "1,x"], /--agent-ids: "x" must be a positive integer/],
      [["--header", "a: b", "--clear-headers"], /--clear-headers and --header: give one of them/],
      [["--event-types", "call.nope"], /--event-types: unknown event type "call\.nope"/],
      [["--header", "X-Team: a", "--header", "x-team: b"], /--header: "x-team" is given twice/],
      [["--agent-ids", "0x2"], /--agent-ids: "0x2" must be a positive integer/],
    ] as const) {
      const r = await cli(["endpoints", "update", filtered.id, ...args], env);
      assert.equal(r.code, 1, args.join(" "));
      assert.match(r.stderr, message, args.join(" "));
    }
    const badHeader = await cli(
      ["endpoints", "update", filtered.id, "--header", "content-type: x", "--json"],
      env,
    );
    assert.equal(badHeader.code, 1);
    assert.equal(JSON.parse(badHeader.stdout).error.field, "headers.content-type");

    // A new secret; the old one keeps signing for the grace period, or stops at once with 0.
    const rotated = JSON.parse(
      (await cli(["endpoints", "rotate-secret", filtered.id, "--grace", "60", "--json"], env)).stdout,
    );
    assert.notEqual(rotated.secret, filtered.secret);
    assert.match(rotated.secret, /^whsec_/);
    const until = Date.parse(rotated.previous_secret_expires_at) - Date.now();
    assert.ok(until > 0 && until <= 60_000, rotated.previous_secret_expires_at);
    assert.equal((await cli(["endpoints", "secret", filtered.id], env)).stdout.trim(), rotated.secret);
    const dropped = await cli(["endpoints", "rotate-secret", filtered.id, "--grace", "0"], env);
    assert.match(dropped.stdout, /^new signing secret: whsec_\S+\nno other secret signs any more\n$/);
    for (const bad of ["", " ", "0x10", "1e3", "-1"]) {
      const r = await cli(["endpoints", "rotate-secret", filtered.id, "--grace", bad], env);
      assert.equal(r.code, 1, JSON.stringify(bad));
      assert.match(r.stderr, /--grace must be whole seconds from 0 to 2592000/, JSON.stringify(bad));
    }
    const longGrace = await cli(["endpoints", "rotate-secret", filtered.id, "--grace", "2592001"], env);
    assert.equal(longGrace.code, 1);
    assert.match(longGrace.stderr, /--grace must be whole seconds from 0 to 2592000/);

    // Deleted: its line says so, the list leaves it out, a second delete is the API's 404.
    const deleted = await cli(["endpoints", "delete", limitedEp.id], env);
    assert.equal(deleted.code, 0, deleted.stderr);
    assert.equal(deleted.stdout, `deleted ${limitedEp.id}  ${rx.url}/slow\n`);
    assert.equal((await server.api.get(`/v1/endpoints/${limitedEp.id}`)).status, 404);
    assert.ok(!(await cli(["endpoints", "list"], env)).stdout.includes(limitedEp.id));
    const again = await cli(["endpoints", "delete", limitedEp.id, "--json"], env);
    assert.equal(again.code, 1);
    assert.equal(JSON.parse(again.stdout).error.code, "not_found");
    const tooMany = await cli(["deliveries", "list", "--limit", "101"], env);
    assert.equal(tooMany.code, 1);
    assert.match(tooMany.stderr, /--limit must be at most 100/);
    const empty = await cli(["endpoints", "create", "--url", rx.url, "--event-types", ""], env);
    assert.equal(empty.code, 1);
    assert.match(empty.stderr, /--event-types: give at least one event type/);

    const unknown = await cli(["deliveries", "retry", "dlv_00000000000000000000000000", "--json"], env);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /^klen-webhooks deliveries retry: POST .*: 404 /m);
    assert.equal(JSON.parse(unknown.stdout).error.code, "not_found");
  } finally {
    await rx.close();
    await server.kill();
    dir.remove();
  }
});

test("endpoints recover: a small one at once; a large one in the background, followed to its end with --wait", async (t) => {
  const dir = tempDir();
  const server = await spawnServer({
    dataDir: dir.path,
    env: { KLEN_RETRY_SCHEDULE: "20ms", KLEN_RECOVER_BATCH: "2" },
  });
  let healthy = false;
  const rx = await startReceiver({ respond: () => (healthy ? 200 : 500) });
  t.after(async () => {
    await server.kill();
    await rx.close();
    dir.remove();
  });
  const env = { KLEN_API_URL: server.url, KLEN_API_KEY: server.apiKey };
  const { endpoint } = await setupAccount(server.api, { endpointUrl: rx.url });
  for (let i = 0; i < 2; i++) assert.equal((await cli(["trigger", "call.ended", "--json"], env)).code, 0);
  await waitFor("four failed deliveries", async () => {
    const list = await server.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&status=failed`);
    return list.body.data.length === 4;
  });
  const since = new Date(Date.now() - 600_000).toISOString();

  const bad = await cli(["endpoints", "recover", endpoint.id, "--since", "yesterday"], env);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /\(field: since\)/);
  const none = await cli(["endpoints", "recover", endpoint.id, "--since", since, "--until", since], env);
  assert.equal(none.code, 0, none.stderr);
  assert.match(
    none.stdout,
    new RegExp(
      `^re-queued 0 failed deliveries of ${endpoint.id}: none failed in that time, and none is pending`,
    ),
  );
  // One back on its retry schedule, due in an hour: recover does not touch it, and says so.
  const dueAt = new Date(Date.now() + 3_600_000);
  const setStatus = (status: string, next: number | null) => {
    const db = new Database(`${dir.path}/klen.db`);
    try {
      db.prepare(
        "UPDATE deliveries SET status = ?, next_attempt_at = ? WHERE id = (SELECT MIN(id) FROM deliveries WHERE endpoint_id = ?)",
      ).run(status, next, endpoint.id);
    } finally {
      db.close();
    }
  };
  setStatus("pending", dueAt.getTime());
  const waiting = await cli(["endpoints", "recover", endpoint.id, "--since", since, "--until", since], {
    ...env,
    TZ: "UTC",
  });
  assert.equal(waiting.code, 0, waiting.stderr);
  assert.match(
    waiting.stdout,
    new RegExp(
      `none failed in that time; 1 is still pending on the retry schedule \\(the next due at ${dueAt.toISOString().slice(11, 19)}, in (59m\\d+s|1h)\\): send one now with klen-webhooks deliveries retry`,
    ),
  );
  setStatus("failed", null);

  healthy = true;
  const r = await cli(["endpoints", "recover", endpoint.id, "--since", since, "--wait", "--json"], env);
  assert.equal(r.code, 0, r.stderr);
  const job = JSON.parse(r.stdout);
  assert.match(job.id, /^rcv_/);
  assert.equal(job.status, "finished");
  assert.equal(job.done, true);
  assert.equal(job.found, 4);
  assert.equal(job.queued, 4);
  await waitFor("every recovered delivery succeeded", async () => {
    const list = await server.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&status=succeeded`);
    return list.body.data.length === 4;
  });
});

test("endpoints replay: the events an endpoint never had, at once and in the background with --wait; nothing missing says so", async (t) => {
  const dir = tempDir();
  const server = await spawnServer({ dataDir: dir.path, env: { KLEN_RECOVER_BATCH: "2" } });
  const rx = await startReceiver();
  t.after(async () => {
    await server.kill();
    await rx.close();
    dir.remove();
  });
  const env = { KLEN_API_URL: server.url, KLEN_API_KEY: server.apiKey };
  const since = new Date(Date.now() - 600_000).toISOString();
  for (let i = 0; i < 2; i++) assert.equal((await cli(["trigger", "call.ended", "--json"], env)).code, 0);
  // Made after the calls: it never had their events.
  const { endpoint } = await setupAccount(server.api, { endpointUrl: rx.url });
  const events = (await server.api.get("/v1/events?limit=100")).body.data.length;
  assert.ok(events > 2, `more than KLEN_RECOVER_BATCH events: ${events}`);

  const bad = await cli(["endpoints", "replay", endpoint.id, "--since", "yesterday"], env);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /\(field: since\)/);
  const r = await cli(["endpoints", "replay", endpoint.id, "--since", since, "--wait"], env);
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stdout,
    new RegExp(`^replaying the events ${endpoint.id} never had in the background as rcv_`),
  );
  assert.match(
    r.stdout,
    new RegExp(`rcv_\\w+ finished: queued ${events} events of ${endpoint.id}; see them with`),
  );
  await waitFor("every event arrived", async () => rx.requests.length === events);

  // Again: a range of more events than KLEN_RECOVER_BATCH is read in the background, missing or not.
  const none = await cli(["endpoints", "replay", endpoint.id, "--since", since, "--wait"], env);
  assert.equal(none.code, 0, none.stderr);
  assert.match(
    none.stdout,
    new RegExp(
      `rcv_\\w+ finished: queued nothing: ${endpoint.id} has a delivery for every event since ${since} that its filter takes\n$`,
    ),
  );
  // One more event, then its delivery removed: a range small enough to be replayed in the request.
  const justBefore = new Date().toISOString();
  assert.equal((await cli(["trigger", "call.started", "--json"], env)).code, 0);
  await waitFor("it arrived", async () => rx.requests.length === events + 1);
  const db = new Database(`${dir.path}/klen.db`);
  try {
    db.prepare(
      "DELETE FROM deliveries WHERE id = (SELECT MAX(id) FROM deliveries WHERE endpoint_id = ?)",
    ).run(endpoint.id);
  } finally {
    db.close();
  }
  const one = await cli(["endpoints", "replay", endpoint.id, "--since", justBefore, "--json"], env);
  assert.equal(one.code, 0, one.stderr);
  assert.deepEqual(JSON.parse(one.stdout), { queued: 1 });
  await waitFor("it arrived again", async () => rx.requests.length === events + 2);
});

/** `serve` on a fresh data dir without KLEN_API_KEY (so it makes the default account), its stderr kept. */
async function firstStart(env: Record<string, string>) {
  const dir = tempDir();
  const port = await freePort();
  const proc = spawn(process.execPath, [CLI, "serve"], {
    env: {
      ...cliEnv({}),
      PORT: String(port),
      KLEN_HOST: "127.0.0.1",
      KLEN_DATA_DIR: dir.path,
      LOG_LEVEL: "warn",
      ...env,
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  proc.stderr!.on("data", (d: Buffer) => {
    err += d.toString();
  });
  const exited = new Promise<number | null>((r) => proc.once("exit", (code) => r(code)));
  return { dir, port, proc, exited, stderr: () => err };
}
/** The generated key as `serve` shows it. */
const KEY_SHOWN = /shown once, store it now\):\n\n {2}(\S+)\n/;

test("the first start prints the default account's key even in CI, where the banner is left out", async () => {
  const { dir, port, proc, exited, stderr } = await firstStart({ KLEN_DEV: "1", CI: "true" });
  try {
    const key = await waitFor(
      "the key on stderr",
      () => {
        if (proc.exitCode !== null) throw new Error(`server exited: ${stderr()}`);
        return KEY_SHOWN.exec(stderr())?.[1];
      },
      60_000,
    );
    assert.match(stderr(), /DEV MODE: http:\/\/ and loopback/);
    assert.doesNotMatch(stderr(), /Klen call webhooks .* on http/, "no banner in CI");
    await waitFor(
      "healthz",
      async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => undefined))?.ok,
    );
    const account = await apiClient(`http://127.0.0.1:${port}`, key).get("/v1/account");
    assert.equal(account.status, 200, "the printed key is the account's");
  } finally {
    proc.kill("SIGTERM");
    await exited;
    dir.remove();
  }
});

test("a first start stopped by Ctrl-C once its account exists still shows the account's key", async () => {
  const { dir, proc, exited, stderr } = await firstStart({});
  try {
    // The moment the account's key is committed, before the server listens (a reader beside the
    // starting server, as the auditor's loop did).
    const stored = await waitFor(
      "the account's key stored",
      () => {
        if (proc.exitCode !== null) throw new Error(`server exited: ${stderr()}`);
        if (!existsSync(`${dir.path}/klen.db`)) return undefined;
        // Never waiting for a lock: a busy database is looked at again 2 ms later.
        const db = new Database(`${dir.path}/klen.db`, { readonly: true, fileMustExist: true, timeout: 0 });
        try {
          return db.prepare("SELECT key_hash FROM api_keys").get() as { key_hash: string } | undefined;
        } catch {
          return undefined; // the table not made yet
        } finally {
          db.close();
        }
      },
      60_000,
      2,
    );
    proc.kill("SIGINT");
    // Bounded: a signal the server lost would otherwise hold the suite for ever.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      exited,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`the server ran on after SIGINT: ${stderr()}`)), 30_000);
      }),
    ]).finally(() => clearTimeout(timer));
    const key = KEY_SHOWN.exec(stderr())?.[1];
    assert.ok(key, `the key was shown: ${stderr()}`);
    assert.equal(hashApiKey(key), stored.key_hash, "the one stored");
  } finally {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    await exited;
    dir.remove();
  }
});

test("api-keys: create prints the new key once, list marks the key in use, revoke rolls the old one out, the last one stays", async () => {
  const dir = tempDir();
  const server = await spawnServer({ dataDir: dir.path });
  try {
    const old = { KLEN_API_URL: server.url, KLEN_API_KEY: server.apiKey };
    const created = await cli(["api-keys", "create"], old);
    assert.equal(created.code, 0, created.stderr);
    const key = /API key \(shown once, store it now\): (klen_sk_\S+)/.exec(created.stdout)?.[1];
    assert.ok(key, created.stdout);
    const rolled = { ...old, KLEN_API_KEY: key };
    const listed = JSON.parse((await cli(["api-keys", "list", "--json"], rolled)).stdout);
    assert.equal(listed.length, 2);
    assert.equal(listed[0].current, true);
    assert.equal(listed[0].prefix, key.slice(0, 12));
    assert.ok(!JSON.stringify(listed).includes(key), "never the key itself");
    const human = await cli(["api-keys", "list"], rolled);
    assert.match(
      human.stdout,
      new RegExp(`^${listed[0].id} {2}${key.slice(0, 12)}… {2}created \\S+ {2}\\(this key\\)$`, "m"),
    );

    const revoked = await cli(["api-keys", "revoke", String(listed[1].id)], rolled);
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.match(revoked.stdout, new RegExp(`^revoked key ${listed[1].id} `));
    const refused = await cli(["endpoints", "list"], old);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /401 invalid API key \(the key comes from --api-key or KLEN_API_KEY\)/);
    const last = await cli(["api-keys", "revoke", String(listed[0].id), "--json"], rolled);
    assert.equal(last.code, 1);
    assert.equal(JSON.parse(last.stdout).error.code, "last_api_key");
  } finally {
    await server.kill();
    dir.remove();
  }
});

describe("the CLI pointed at the wrong thing", () => {
  test("another server at --api-url is named as such, for requests and for listen, instead of a TypeError or a reconnect loop", async () => {
    const other = await startReceiver(); // answers every request 200 text/plain "ok"
    try {
      const env = { KLEN_API_URL: other.url, KLEN_API_KEY: "k" };
      const listed = await cli(["endpoints", "list", "--json"], env);
      assert.equal(listed.code, 1);
      assert.match(
        listed.stderr,
        /answered 200 text\/plain, not the Klen API's JSON; is --api-url the Klen server\?/,
      );
      assert.equal(JSON.parse(listed.stdout).error.code, "not_klen_api");
      const trig = await cli(["trigger", "call.started"], env);
      assert.equal(trig.code, 1);
      assert.doesNotMatch(trig.stderr, /Cannot read properties/);
      const listen = await cli(["listen", "--forward-to", "http://127.0.0.1:9/hook"], env);
      assert.equal(listen.code, 1);
      assert.match(listen.stderr, /not text\/event-stream; is --api-url the Klen server\?/);
      assert.doesNotMatch(listen.stdout, /Ready!/);
    } finally {
      await other.close();
    }
    // One that refuses the request (400, 404) without the API's error shape is named too; so is a
    // webhook receiver made with the SDK's adapters (its URL taken for the API's), whose 405 has an
    // error shape like the API's, and to which listen does not keep reconnecting.
    await namedAsOther({ status: 400, body: "Bad Request" }, "400 text/plain", "400 Bad Request");
    await namedAsOther(
      {
        status: 405,
        headers: { "content-type": "application/json", allow: "POST" },
        body: '{"error":{"code":"method_not_allowed","message":"use POST"}}',
      },
      "405 application/json",
      "405 Method Not Allowed",
    );
  });

  /** `endpoints list` and `listen` against a server that answers every request `answer`. */
  async function namedAsOther(
    answer: { status: number; headers?: Record<string, string>; body: string },
    listedAs: string,
    listenedAs: string,
  ) {
    const other = await startReceiver({ respond: () => answer });
    try {
      const env = { KLEN_API_URL: other.url, KLEN_API_KEY: "k" };
      const listed = await cli(["endpoints", "list", "--json"], env);
      assert.equal(listed.code, 1);
      assert.ok(
        listed.stderr.includes(
          `answered ${listedAs}, not the Klen API's JSON; is --api-url the Klen server?`,
        ),
        listed.stderr,
      );
      assert.equal(JSON.parse(listed.stdout).error.code, "not_klen_api");
      const listen = await cli(["listen", "--forward-to", "http://127.0.0.1:9/hook", "--json"], env);
      assert.equal(listen.code, 1);
      assert.ok(
        listen.stderr.includes(
          `answered ${listenedAs} without the Klen API's error; is --api-url the Klen server?`,
        ),
        listen.stderr,
      );
      assert.equal(JSON.parse(listen.stdout).error.code, "not_klen_api");
    } finally {
      await other.close();
    }
  }

  test("URLs with a user name, password or query, and a blank account name, are usage errors", async () => {
    const env = { KLEN_API_KEY: "k" };
    const cred = await cli(["endpoints", "list", "--api-url", "http://user:pw@127.0.0.1:9"], env);
    assert.equal(cred.code, 1);
    assert.match(cred.stderr, /--api-url must not hold a user name or password/);
    assert.doesNotMatch(cred.stderr, /pw/);
    const query = await cli(["endpoints", "list", "--api-url", "http://127.0.0.1:9?x=1"], env);
    assert.equal(query.code, 1);
    assert.match(query.stderr, /without \?query or #fragment/);
    const fwd = await cli(
      ["listen", "--forward-to", "http://user:secretpw@127.0.0.1:9/x", "--api-url", "http://127.0.0.1:9"],
      env,
    );
    assert.equal(fwd.code, 1);
    assert.match(fwd.stderr, /--forward-to must not hold a user name or password/);
    // Bad option values, found once the command runs: usage errors, as docs/cli.md says.
    for (const args of [
      ["endpoints", "list", "--api-url", "localhost:8080"],
      ["listen", "--forward-to", "ftp://127.0.0.1/x", "--api-url", "http://127.0.0.1:9"],
      ["listen", "--forward-to", "not a url", "--api-url", "http://127.0.0.1:9"],
    ]) {
      const r = await cli([...args, "--json"], env);
      assert.equal(r.code, 1, args.join(" "));
      assert.equal(JSON.parse(r.stdout).error.code, "usage", args.join(" "));
      assert.match(r.stderr, /^error: --(api-url|forward-to)/);
    }
    const dir = tempDir();
    try {
      const blank = await cli(["accounts", "create", "--name", "   "], {
        KLEN_DATABASE_URL: `sqlite:${dir.path}/klen.db`,
      });
      assert.equal(blank.code, 1);
      assert.match(blank.stderr, /--name must be 1 to 200 characters, not blank/);
      const made = await cli(["accounts", "create", "--name", " Acme "], {
        KLEN_DATABASE_URL: `sqlite:${dir.path}/klen.db`,
      });
      assert.equal(made.code, 0, made.stderr);
      assert.match(made.stdout, new RegExp(`^account \\d+ "Acme" in sqlite:${dir.path}/klen\\.db$`, "m"));
    } finally {
      dir.remove();
    }
  });

  test("listen's reconnect waits leave no listener behind on its stop signal", async () => {
    const port = await freePort(); // nothing listens: every connect is refused
    const stop = new AbortController();
    let disconnects = 0;
    let mostListeners = 0;
    const out = {
      ...createOutput({ json: true }),
      data(value: unknown) {
        if ((value as { type?: string }).type !== "disconnected") return;
        disconnects++;
        mostListeners = Math.max(mostListeners, getEventListeners(stop.signal, "abort").length);
        if (disconnects === 25) stop.abort();
      },
    };
    await listen({
      client: cliApiClient({ apiUrl: `http://127.0.0.1:${port}`, apiKey: "k" }),
      forwardTo: "http://127.0.0.1:9/hook",
      events: undefined,
      secret: newLocalSecret(),
      out,
      signal: stop.signal,
      minBackoffMs: 1,
      maxBackoffMs: 2,
    });
    assert.equal(disconnects, 25);
    assert.equal(mostListeners, 0, "between two connections nothing waits on the signal");
  });
});
