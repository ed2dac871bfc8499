import assert from "node:assert/strict";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import pg from "pg";
import { loadConfig } from "../src/config.js";
import { createLogger } from "../src/log.js";
import { startServer } from "../src/server.js";
import { runCall, setupAccount } from "./helpers/api.js";
import { postgresBackend } from "./helpers/backends.js";
import { attemptsIn } from "./helpers/metrics.js";
import { stopPostgres } from "./helpers/postgres.js";
import { startReceiver } from "./helpers/receiver.js";
import { freePort, type ServerProcess, spawnServer } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

// Split roles on PostgreSQL (PRODUCT.md §10): `--role api` serves and never dispatches,
// `--role worker` dispatches and serves nothing (or only /healthz and /metrics with
// KLEN_WORKER_PORT), and a worker stopped with SIGTERM finishes or hands back its work.

const ORDER = ["call.started", "call.ended", "call.transcript", "call.summary"];

/** TCP ports the process is listening on, from its socket inodes and /proc/net/tcp{,6}. */
function listeningPorts(pid: number): number[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      /* closed meanwhile */
    }
  }
  const ports: number[] = [];
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of readFileSync(table, "utf8").split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      // cols: sl local remote st … inode; st 0A is LISTEN
      if (cols[3] === "0A" && inodes.has(cols[9] ?? ""))
        ports.push(Number.parseInt(cols[1]!.split(":")[1]!, 16));
    }
  }
  return ports;
}

describe("split roles on PostgreSQL", () => {
  let databaseUrl = "";
  let cleanup: () => Promise<void> = async () => {};
  let dataDir = "";
  const procs: ServerProcess[] = [];
  before(async () => {
    const fresh = await postgresBackend.fresh();
    databaseUrl = fresh.databaseUrl;
    dataDir = fresh.dataDir;
    cleanup = fresh.cleanup;
  });
  after(async () => {
    await endAll();
    await cleanup();
    await stopPostgres();
  });
  const spawn = async (role: "api" | "worker", env: Record<string, string> = {}) => {
    const p = await spawnServer({ dataDir, role, env: { KLEN_DATABASE_URL: databaseUrl, ...env } });
    procs.push(p);
    return p;
  };
  // Each test's processes end with it, so a failure cannot leave workers that serve the next one.
  const endAll = async () => {
    for (const p of procs.splice(0)) await p.kill("SIGKILL");
  };

  test("the api role only serves, workers only dispatch, every event arrives in order", async (t) => {
    t.after(endAll);
    const api = await spawn("api");
    const rx = await startReceiver();
    after(() => rx.close());
    const { agentId, endpoint } = await setupAccount(api.api, { endpointUrl: rx.url });
    rx.setSecret(endpoint.secret);
    const workerPort = await freePort();
    const w1 = await spawn("worker", { KLEN_WORKER_PORT: String(workerPort) });
    const w2 = await spawn("worker");

    const calls = await Promise.all(Array.from({ length: 12 }, () => runCall(api.api, agentId)));
    await rx.waitForCount(calls.length * 4, 20_000);
    assert.deepEqual(rx.verifyFailures, []);
    for (const id of calls) {
      const types = rx.requests.filter((r) => r.json?.call?.id === id).map((r) => r.json.event_type);
      assert.deepEqual(types, ORDER, `call ${id} in order`);
    }

    // The worker's port has health and metrics and nothing else; the other worker binds nothing.
    const wurl = `http://127.0.0.1:${workerPort}`;
    // (The other worker may have done all the work while this one was still starting.)
    await waitFor(
      "the worker's port",
      async () => (await fetch(`${wurl}/healthz`).catch(() => undefined))?.ok,
    );
    const wm = await (await fetch(`${wurl}/metrics`)).text();
    const apiOnWorker = await fetch(`${wurl}/v1/account`, {
      headers: { authorization: `Bearer ${api.apiKey}` },
    });
    assert.equal(apiOnWorker.status, 404, "no API on a worker");
    assert.equal((await fetch(`${wurl}/v1/calls`)).status, 404, "not a 401 without a key either");
    assert.deepEqual(listeningPorts(w1.proc.pid!), [workerPort]);
    assert.deepEqual(
      listeningPorts(w2.proc.pid!),
      [],
      "a worker without KLEN_WORKER_PORT listens on nothing",
    );

    // Every attempt was made by a worker: the api process counted none.
    const am = await (await fetch(`${api.url}/metrics`)).text();
    assert.match(am, /# TYPE klen_delivery_attempts_total counter/, "the api would count attempts");
    assert.equal(attemptsIn(am), 0, "the api role made no delivery attempt");
    assert.match(wm, /# TYPE klen_delivery_attempts_total counter/);
  });

  test("an api process opens a LISTEN session only once an event stream is open on it", async (t) => {
    t.after(endAll);
    const api = await spawn("api");
    const db = new pg.Client({ connectionString: databaseUrl });
    await db.connect();
    t.after(() => db.end());
    const listening = async () =>
      Number(
        (
          await db.query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
          )
        ).rows[0].n,
      );
    await setupAccount(api.api);
    assert.equal(await listening(), 0, "serving requests needs no LISTEN session");
    const ctl = new AbortController();
    const stream = await fetch(`${api.url}/v1/events/stream`, {
      headers: { authorization: `Bearer ${api.apiKey}` },
      signal: ctl.signal,
    });
    assert.equal(stream.status, 200);
    await waitFor("the stream's LISTEN session", async () => (await listening()) === 1);
    ctl.abort();
  });

  test("/metrics shows the due backlog until a worker drains it", async (t) => {
    t.after(endAll);
    const api = await spawn("api");
    const rx = await startReceiver();
    t.after(() => rx.close());
    // The database is shared with the tests before: their endpoints must not take deliveries here.
    for (const e of (await api.api.get("/v1/endpoints?limit=100")).body.data)
      assert.equal((await api.api.patch(`/v1/endpoints/${e.id}`, { disabled: true })).status, 200);
    const { agentId } = await setupAccount(api.api, { endpointUrl: rx.url });
    const gauge = async (name: string) => {
      const text = await (await fetch(`${api.url}/metrics`)).text();
      const line = text.split("\n").find((l) => l.startsWith(`${name} `));
      assert.ok(line, `${name} in /metrics`);
      return Number(line.split(" ")[1]);
    };
    await Promise.all(Array.from({ length: 3 }, () => runCall(api.api, agentId)));
    // No worker yet: each call's first delivery is due (its later three wait behind it, in order),
    // and the oldest has been waiting.
    assert.equal(await gauge("klen_deliveries_due"), 3);
    await waitFor(
      "the oldest due delivery to age",
      async () => (await gauge("klen_delivery_oldest_due_seconds")) > 0,
    );
    await spawn("worker");
    await rx.waitForCount(12);
    await waitFor("the backlog drained", async () => (await gauge("klen_deliveries_due")) === 0);
    assert.equal(await gauge("klen_delivery_oldest_due_seconds"), 0);
  });

  test("/metrics answers while the database stalls, saying so in klen_database_up", async (t) => {
    t.after(endAll);
    // A database timeout far beyond the scrape's wait, so only the scrape's own bound can answer.
    const api = await spawn("api", { KLEN_DATABASE_TIMEOUT: "120s" });
    const scrape = async () => {
      let timer: NodeJS.Timeout | undefined;
      const text = await Promise.race([
        fetch(`${api.url}/metrics`).then((r) => r.text()),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error("/metrics did not answer within 30 s")), 30_000);
        }),
      ]).finally(() => clearTimeout(timer));
      const line = text.split("\n").find((l) => l.startsWith("klen_database_up "));
      assert.ok(line, "klen_database_up in /metrics");
      return Number(line.split(" ")[1]);
    };
    assert.equal(await scrape(), 1);
    const holder = new pg.Client({ connectionString: databaseUrl });
    await holder.connect();
    t.after(() => holder.end());
    await holder.query("BEGIN");
    await holder.query("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE");
    // A second later: the backlog is read at most once a second.
    await new Promise((r) => setTimeout(r, 1_100));
    try {
      assert.equal(await scrape(), 0, "answered without the database, and says so");
    } finally {
      await holder.query("ROLLBACK");
    }
    await waitFor("the database back in the metrics", async () => (await scrape()) === 1);
  });

  test("SIGTERM: a worker finishes its in-flight attempts, records them, and exits 0", async (t) => {
    t.after(endAll);
    const api = await spawn("api");
    const rx = await startReceiver({ respond: () => ({ status: 200, delayMs: 1_500 }) });
    after(() => rx.close());
    const { agentId, endpoint } = await setupAccount(api.api, { endpointUrl: rx.url });
    rx.setSecret(endpoint.secret);
    const worker = await spawn("worker", { LOG_LEVEL: "info" });
    const ids: number[] = [];
    for (let i = 0; i < 3; i++) {
      const c = await api.api.post("/v1/calls", {
        agent_id: agentId,
        type: "outbound",
        phone_number: "+15551230000",
      });
      await api.api.post(`/v1/calls/${c.body.id}/start`, {});
      ids.push(c.body.id);
    }
    await rx.waitForCount(3); // all three are now waiting for the slow receiver
    await worker.kill("SIGTERM");
    assert.equal(
      worker.proc.exitCode,
      0,
      `exit ${worker.proc.exitCode} signal ${worker.proc.signalCode}: ${worker.output().slice(-2000)}`,
    );
    // Its log ends saying the stop completed, as the process that wrote it.
    const logLines = worker
      .output()
      .split("\n")
      .filter((l) => l.startsWith("{"));
    const last = JSON.parse(logLines.at(-1)!);
    assert.deepEqual([last.msg, last.role, last.exit_code], ["stopped", "worker", 0]);
    const list = await api.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}`);
    assert.equal(list.body.data.length, 3);
    for (const d of list.body.data) {
      assert.equal(d.status, "succeeded", "the stopping worker recorded the outcome before exiting");
      assert.equal(d.attempts.length, 1);
    }
  });

  test("graceful stop past the grace period hands in-flight deliveries to another worker at once", async (t) => {
    t.after(endAll);
    const api = await spawn("api");
    // The first request never gets an answer; later ones are answered at once.
    const rx = await startReceiver({ respond: (r) => (r.n === 1 ? { status: 200, hang: true } : 200) });
    after(() => rx.close());
    const { agentId, endpoint } = await setupAccount(api.api, { endpointUrl: rx.url });
    rx.setSecret(endpoint.secret);
    // An in-process worker, so its dispatcher can be stopped with a short grace period.
    const config = loadConfig({
      KLEN_DATABASE_URL: databaseUrl,
      KLEN_DATA_DIR: dataDir,
      KLEN_DEV: "1",
      KLEN_DELIVERY_TIMEOUT: "5s",
      KLEN_API_KEY: api.apiKey,
    });
    const inproc = await startServer(config, createLogger({ level: "silent" }), { role: "worker" });
    const c = await api.api.post("/v1/calls", {
      agent_id: agentId,
      type: "outbound",
      phone_number: "+15551230001",
    });
    await api.api.post(`/v1/calls/${c.body.id}/start`, {});
    await rx.waitForCount(1);
    // Another worker is up, but the lease (timeout + 30 s) keeps it off the held delivery...
    await spawn("worker");
    // ...until the stopping worker gives the lease back.
    const stopping = inproc.stop(100);
    // Well before the lease (35 s) would have run out, even on a loaded machine (10 s was missed
    // once while another PostgreSQL load ran beside the suite).
    await rx.waitForCount(2, 25_000);
    assert.equal(rx.requests[1]!.id, rx.requests[0]!.id, "the same event, the same webhook-id");
    await waitFor("delivery succeeded", async () => {
      const d = await api.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}`);
      return d.body.data[0]?.status === "succeeded";
    });
    await rx.close(); // lets the hung attempt end so the in-process stop completes
    await stopping;
    const d = await api.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}`);
    assert.equal(d.body.data[0].status, "succeeded", "the released attempt's late outcome is fenced out");
  });
});
