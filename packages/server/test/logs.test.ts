import assert from "node:assert/strict";
import { test } from "node:test";
import Fastify, { type FastifyBaseLogger } from "fastify";
import { pino } from "pino";
import { httpLogLevel } from "../src/api/app.js";
import { installErrorHandler } from "../src/api/errors.js";
import { loadConfig } from "../src/config.js";
import { ApiError } from "../src/errors.js";
import { createLogger, type Logger, logBackgroundFailure } from "../src/log.js";
import { type Running, startServer } from "../src/server.js";
import { checkSharedConfig } from "../src/shared-config.js";
import { migrate } from "../src/storage/migrate.js";
import { openStore } from "../src/storage/store.js";
import { runCall, setupAccount } from "./helpers/api.js";
import { startReceiver } from "./helpers/receiver.js";
import { spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

/** A logger at info level whose lines, parsed, land in `lines`. */
function collectingLog<T>(): { lines: T[]; log: Logger } {
  const lines: T[] = [];
  const log = pino({ level: "info" }, { write: (l: string) => lines.push(JSON.parse(l)) });
  return { lines, log: log as unknown as Logger };
}

test("logs are JSON and never contain the API key or an endpoint secret, even at trace level", async () => {
  const dir = tempDir();
  const apiKey = "klen_sk_log_test_0123456789abcdef";
  const server = await spawnServer({
    dataDir: dir.path,
    apiKey,
    env: { LOG_LEVEL: "trace", KLEN_RETRY_SCHEDULE: "20ms" },
  });
  const failing = await startReceiver({ respond: () => 500 });
  const ok = await startReceiver();
  try {
    const { agentId, endpoint } = await setupAccount(server.api, {
      endpointUrl: ok.url,
      endpoint: {
        headers: { authorization: "Bearer receiver-token-xyz", "X-Auth": "shared-pass-1", "X-Team": "voice" },
      },
    });
    const bad = await server.api.post("/v1/endpoints", { url: failing.url });
    const rotated = await server.api.post(`/v1/endpoints/${endpoint.id}/rotate-secret`, {});
    await runCall(server.api, agentId);
    await ok.waitForCount(4);
    await waitFor("failed attempts", () => failing.requests.length >= 8);
    await server.api.get("/v1/nothing");
    await server.kill("SIGTERM");
    const out = server.output();
    assert.ok(out.length > 0, "the server logged something");
    for (const secret of [
      apiKey,
      endpoint.secret,
      bad.body.secret,
      rotated.body.secret,
      "receiver-token-xyz",
    ]) {
      assert.equal(out.includes(secret), false, "a secret appeared in the logs");
    }
    const jsonLines = out.split("\n").filter((l) => l.startsWith("{"));
    assert.ok(jsonLines.length > 0);
    for (const l of jsonLines) {
      const line = JSON.parse(l);
      // Which process of a deployment wrote it.
      assert.equal(typeof line.pid, "number", l);
      assert.equal(line.role, "all", l);
    }
    // The stored attempt log keeps the signature but redacts every custom header's value.
    const d = (await (async () => {
      const s2 = await spawnServer({ dataDir: dir.path, apiKey });
      try {
        return (await s2.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&limit=1`)).body.data[0];
      } finally {
        await s2.kill();
      }
    })()) as { attempts: Array<{ request_headers: Record<string, string> }> };
    assert.equal(d.attempts[0]!.request_headers.authorization, "[redacted]");
    assert.equal(d.attempts[0]!.request_headers["x-auth"], "[redacted]");
    assert.equal(d.attempts[0]!.request_headers["x-team"], "[redacted]", "whatever its name");
    assert.match(d.attempts[0]!.request_headers["webhook-signature"]!, /^v1,/);
  } finally {
    await failing.close();
    await ok.close();
    dir.remove();
  }
});

test("at LOG_LEVEL=debug each attempt is one line; an endpoint disabled by the dispatcher is a warning at the default level", async () => {
  const dir = tempDir();
  const gone = await startReceiver({ respond: () => 410 });
  const ok = await startReceiver();
  try {
    const debug = await spawnServer({ dataDir: dir.path, env: { LOG_LEVEL: "debug" } });
    let okEndpoint: string;
    try {
      const { agentId, endpoint } = await setupAccount(debug.api, { endpointUrl: ok.url });
      okEndpoint = endpoint.id;
      await runCall(debug.api, agentId);
      await ok.waitForCount(4);
    } finally {
      await debug.kill("SIGTERM");
    }
    const attempts = debug
      .output()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l))
      .filter((l) => l.msg === "attempt");
    assert.equal(attempts.length, 4);
    for (const a of attempts) {
      assert.equal(a.level, 20);
      assert.equal(a.endpoint_id, okEndpoint);
      assert.equal(a.status_code, 200);
      assert.equal(a.error, null);
      assert.match(a.delivery_id, /^dlv_/);
    }

    const info = await spawnServer({ dataDir: dir.path });
    try {
      const { agentId } = await setupAccount(info.api);
      const ep = await info.api.post("/v1/endpoints", { url: gone.url });
      await runCall(info.api, agentId);
      await gone.waitForCount(1);
      await waitFor("the endpoint disabled", async () =>
        (await info.api.get(`/v1/endpoints/${ep.body.id}`)).body.disabled ? true : undefined,
      );
      await info.kill("SIGTERM");
      const lines = info
        .output()
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l));
      const warned = lines.filter((l) => l.msg === "endpoint disabled");
      assert.deepEqual(
        warned.map((l) => [l.level, l.endpoint_id, l.reason]),
        [[40, ep.body.id, "endpoint answered 410 Gone"]],
      );
      assert.equal(lines.filter((l) => l.msg === "attempt").length, 0, "no attempt lines at info");
    } finally {
      await info.kill();
    }
  } finally {
    await gone.close();
    await ok.close();
    dir.remove();
  }
});

test("background work that fails while the database is down logs one short warning per 30 s; other failures every time", () => {
  const { lines, log } = collectingLog<Record<string, unknown>>();
  const down = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED" });
  for (let i = 0; i < 50; i++) logBackgroundFailure(log, { component: "t" }, "test round A failed", down);
  assert.equal(lines.length, 1, "one line for fifty failures in the same outage");
  assert.equal(lines[0]!.level, 40);
  assert.equal(lines[0]!.error, down.message);
  assert.equal("err" in lines[0]!, false, "no stack");
  const bug = new TypeError("x is not a function");
  logBackgroundFailure(log, { component: "t" }, "test round B failed", bug);
  logBackgroundFailure(log, { component: "t" }, "test round B failed", bug);
  assert.equal(lines.length, 3, "a failure that is not an outage is logged every time");
  assert.equal(lines[2]!.level, 50);
  assert.match(String((lines[2]!.err as { stack: string }).stack), /TypeError/);
});

test("requests failing for the same server-side reason log one line per 30 s, not one each", async () => {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: "info" }, { write: (l: string) => lines.push(JSON.parse(l)) });
  const app = Fastify({ loggerInstance: log as unknown as FastifyBaseLogger });
  installErrorHandler(app);
  app.get("/down", async () => {
    throw Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED" });
  });
  app.get("/sick", async () => {
    throw new ApiError(503, "unhealthy_test", "the dispatcher has failed every try for 12 s");
  });
  try {
    for (let i = 0; i < 5; i++) {
      assert.equal((await app.inject({ url: "/down" })).statusCode, 503);
      assert.equal((await app.inject({ url: "/sick" })).statusCode, 503);
    }
    const logged = lines.filter((l) => l.level !== 30).map((l) => [l.level, l.msg]);
    assert.deepEqual(logged, [
      [40, "database unavailable"],
      [50, "the dispatcher has failed every try for 12 s"],
    ]);
  } finally {
    await app.close();
  }
  // And the HTTP layer logs no more than LOG_LEVEL lets through.
  assert.equal(httpLogLevel(createLogger({ level: "info" })), "warn");
  assert.equal(httpLogLevel(createLogger({ level: "error" })), "error");
  assert.equal(httpLogLevel(createLogger({ level: "silent" })), "silent");
});

test("a process whose shared settings differ from any process running on the database warns, naming each variable and both values; one that stopped is not compared with, one killed is until its record ages", async () => {
  const dir = tempDir();
  const start = (schedule: string) =>
    spawnServer({
      dataDir: dir.path,
      env: {
        KLEN_RETRY_SCHEDULE: schedule,
        KLEN_PUBLIC_URL: "https://hooks.example.test",
        KLEN_RETENTION: "1d",
      },
    });
  // Started and stopped gracefully while the others run; its output once stopped.
  const run = async (schedule: string) => {
    const p = await start(schedule);
    await p.kill();
    return p.output();
  };
  const differing = (output: string) =>
    output
      .split("\n")
      .filter((l) => l.includes("differs from a process running"))
      .map((l) => JSON.parse(l) as { variable: string; here: string; there: string; level: number })
      .map((w) => [w.variable, w.here, w.there, w.level])
      .sort();
  // A process restarted alone with new settings is not warned about itself.
  assert.deepEqual(differing(await run("1s,1s")), []);
  const first = await start("1s,2s");
  try {
    assert.deepEqual(differing(first.output()), []);
    // A retention shorter than the URLs' lifetime is said too (default KLEN_URL_TTL 7d).
    assert.match(
      first.output(),
      /"retention":"1d","url_ttl":"7d".*KLEN_RETENTION is shorter than KLEN_URL_TTL/,
    );
    assert.deepEqual(differing(await run("1s,3s")), [["KLEN_RETRY_SCHEDULE", "1s,3s", "1s,2s", 40]]);
    // Stopped gracefully, it took its own record with it; the first one still runs, and is named.
    assert.deepEqual(differing(await run("1s,4s")), [["KLEN_RETRY_SCHEDULE", "1s,4s", "1s,2s", 40]]);
    // Killed, a process leaves its record: compared with beside the one still running.
    const killed = await start("1s,5s");
    await killed.kill("SIGKILL");
    assert.deepEqual(differing(await run("1s,6s")), [
      ["KLEN_RETRY_SCHEDULE", "1s,6s", "1s,2s", 40],
      ["KLEN_RETRY_SCHEDULE", "1s,6s", "1s,5s", 40],
    ]);
    await first.kill();
    // Until its record ages (90 s unwritten: the unit test below), the killed one still is.
    assert.deepEqual(differing(await run("1s,2s")), [["KLEN_RETRY_SCHEDULE", "1s,2s", "1s,5s", 40]]);
  } finally {
    await first.kill();
    dir.remove();
  }
});

test("shared settings: a record not written again for 90 s is a process gone; an older version's single record is compared with once; a worker following the API's URL is not compared on it", async () => {
  const dir = tempDir();
  const { lines, log } = collectingLog<{ msg: string; variable?: string; there?: string }>();
  const config = (env: Record<string, string>) => loadConfig({ KLEN_DATA_DIR: dir.path, ...env });
  const store = await openStore(config({}).databaseUrl);
  const warned = () => {
    const w = lines
      .filter((l) => l.msg.includes("differs from a process running"))
      .map((l) => [l.variable, l.there]);
    lines.length = 0;
    return w;
  };
  try {
    await migrate(store);
    const t0 = 1_800_000_000_000;
    const a = await checkSharedConfig(store.db, config({ KLEN_RETRY_SCHEDULE: "1s,2s" }), log, { now: t0 });
    const other = config({ KLEN_RETRY_SCHEDULE: "5s" });
    await checkSharedConfig(store.db, other, log, { now: t0 + 60_000 });
    assert.deepEqual(warned(), [["KLEN_RETRY_SCHEDULE", "1s,2s"]]);
    // A's record unwritten for more than 90 s: A is taken for gone.
    await checkSharedConfig(store.db, other, log, { now: t0 + 100_000 });
    assert.deepEqual(warned(), []);
    // Written again (its beat), A is compared with again.
    await a.beat(t0 + 110_000);
    await checkSharedConfig(store.db, other, log, { now: t0 + 120_000 });
    assert.deepEqual(warned(), [["KLEN_RETRY_SCHEDULE", "1s,2s"]]);
    // Removed (a graceful stop), it is not.
    await a.remove();
    await checkSharedConfig(store.db, other, log, { now: t0 + 130_000 });
    assert.deepEqual(warned(), []);
    // The single record of a version before: compared with once, then gone.
    const legacy = JSON.stringify({ KLEN_RETRY_SCHEDULE: "9s", KLEN_DEV: "off" });
    await store.db
      .insertInto("settings")
      .values({ name: "shared_config", value: legacy, created_at: t0 })
      .execute();
    await checkSharedConfig(store.db, other, log, { now: t0 + 140_000 });
    assert.deepEqual(warned(), [["KLEN_RETRY_SCHEDULE", "9s"]]);
    await checkSharedConfig(store.db, other, log, { now: t0 + 150_000 });
    assert.deepEqual(warned(), []);
    // An API process with its own public URL, and a worker without one (it follows the API's).
    const api = config({ KLEN_RETRY_SCHEDULE: "5s", KLEN_PUBLIC_URL: "https://hooks.example.test" });
    await checkSharedConfig(store.db, api, log, { role: "api", now: t0 + 160_000 });
    lines.length = 0;
    await checkSharedConfig(store.db, other, log, { role: "worker", now: t0 + 170_000 });
    assert.deepEqual(warned(), []);
    // Records of processes gone a day are deleted at the next start.
    const count = async () =>
      (
        await store.db
          .selectFrom("settings")
          .select("name")
          .where("name", "like", "shared_config:%")
          .execute()
      ).length;
    assert.ok((await count()) > 1);
    await checkSharedConfig(store.db, other, log, { now: t0 + 2 * 86_400_000 });
    assert.equal(await count(), 1);
  } finally {
    await store.close();
    dir.remove();
  }
});

test("an API process on PORT=0 without KLEN_PUBLIC_URL records no public URL to compare with; a given one still is", async () => {
  const dir = tempDir();
  const { lines, log } = collectingLog<{ msg: string; variable?: string }>();
  const config = (env: Record<string, string>) => loadConfig({ KLEN_DATA_DIR: dir.path, ...env });
  const store = await openStore(config({}).databaseUrl);
  try {
    await migrate(store);
    const warned = () =>
      lines.filter((l) => l.msg.includes("differs from a process running")).map((l) => l.variable);
    // The API process (its URL becomes http://localhost:<picked> once it listens), then a worker
    // that adopted that URL: nothing to warn about.
    await checkSharedConfig(store.db, config({ PORT: "0" }), log);
    const worker = config({ PORT: "8080" });
    worker.publicUrl = "http://localhost:41234";
    await checkSharedConfig(store.db, worker, log);
    assert.deepEqual(warned(), []);
    // Named by the variable, a different URL is still a difference, whatever the port.
    await checkSharedConfig(
      store.db,
      config({ PORT: "0", KLEN_PUBLIC_URL: "https://hooks.example.test" }),
      log,
    );
    assert.deepEqual(warned(), ["KLEN_PUBLIC_URL"]);
  } finally {
    await store.close();
    dir.remove();
  }
});

test("a worker started before any API process says its URLs use its own default, then takes up the API's URL once one starts", async () => {
  const dir = tempDir();
  const { lines, log } = collectingLog<{ msg: string; public_url?: string }>();
  const env = { KLEN_DATA_DIR: dir.path, KLEN_DEV: "1" };
  const worker = await startServer(loadConfig(env), log, { role: "worker", sharedBeatMs: 20 });
  let api: Running | undefined;
  try {
    const alone = lines.find((l) => l.msg.includes("no API process has started on this database yet"));
    assert.equal(alone?.public_url, "http://localhost:8080");
    api = await startServer(
      loadConfig({ ...env, PORT: "0", KLEN_API_KEY: "klen_test_key_follow" }),
      createLogger({ level: "silent" }),
      { role: "api" },
    );
    const url = `http://localhost:${new URL(api.address!).port}`;
    await waitFor("the worker to take up the API's URL", () => worker.ctx.config.publicUrl === url);
    const taken = lines.find((l) => l.msg.includes("using the one the API processes serve at"));
    assert.equal(taken?.public_url, url);
    // A worker whose own default is the API's URL (the same PORT on one machine) has nothing to say.
    const { lines: twinLines, log: twinLog } = collectingLog<{ msg: string }>();
    const twin = await startServer(loadConfig({ ...env, PORT: new URL(api.address!).port }), twinLog, {
      role: "worker",
    });
    await twin.stop(1000);
    assert.equal(twin.ctx.config.publicUrl, url);
    assert.deepEqual(
      twinLines.filter((l) => /no API process has started|KLEN_PUBLIC_URL is not set/.test(l.msg)),
      [],
    );
  } finally {
    await api?.stop(1000);
    await worker.stop(1000);
    dir.remove();
  }
});
