import assert from "node:assert/strict";
import { after, test } from "node:test";
import pg from "pg";
import { balance, bulkCalls, driveCalls, type EndpointUnderTest, failedAttempts } from "./helpers/ledger.js";
import { startPostgres } from "./helpers/postgres.js";
import { startReceiver } from "./helpers/receiver.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

// Chaos (PRODUCT.md §3, §10): 5,000 events on one PostgreSQL with one API process and three
// workers, while workers are killed with SIGKILL at random moments (and restarted) and PostgreSQL
// itself is restarted once with `pg_ctl restart -m immediate`. Nothing may be lost; a resend is
// allowed only with the same webhook-id, and the count is reported. Clients retry 503s with the
// same Idempotency-Key, as a real client would.

const BULK_CALLS = 750; // 3,000 events waiting when the chaos starts
const API_CALLS = 500; // 2,000 events made through the API during it

/** Small seeded PRNG (mulberry32), so a failing run can be replayed with its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test("workers killed with SIGKILL and PostgreSQL restarted mid-run: nothing lost", async (t) => {
  const seed = Number(process.env.KLEN_CHAOS_SEED ?? Date.now() % 1_000_000);
  const random = prng(seed);
  t.diagnostic(`seed ${seed} (KLEN_CHAOS_SEED to replay)`);

  // Its own server: this test restarts it.
  const server = await startPostgres({ own: true });
  const db = await server.freshDatabase();
  const dir = tempDir();
  const receivers = await Promise.all([startReceiver(), startReceiver()]);
  const workers: ServerProcess[] = [];
  let api: ServerProcess | undefined;
  after(async () => {
    for (const p of [...workers, ...(api ? [api] : [])]) await p.kill("SIGKILL");
    for (const r of receivers) await r.close();
    await server.stop();
    dir.remove();
  });

  // Short lease so the deliveries a killed worker held come due again quickly.
  const env = {
    KLEN_DATABASE_URL: db.url,
    KLEN_DELIVERY_TIMEOUT: "3s",
    KLEN_LEASE: "6s",
    KLEN_RETRY_SCHEDULE: "100ms,200ms,500ms,1s,1s,1s,1s,1s,1s,1s",
  };
  api = await spawnServer({ dataDir: dir.path, role: "api", env });
  const spawnWorker = async () => workers.push(await spawnServer({ dataDir: dir.path, role: "worker", env }));
  for (let i = 0; i < 3; i++) await spawnWorker();

  const agents: number[] = [];
  for (const name of ["Sales", "Support"]) agents.push((await api.api.post("/v1/agents", { name })).body.id);
  const accountId = (await api.api.get("/v1/account")).body.id as number;
  const specs = [
    { name: "all events", eventTypes: [], agentIds: [] },
    { name: "ended+summary", eventTypes: ["call.ended", "call.summary"], agentIds: [] },
  ];
  const endpoints: EndpointUnderTest[] = [];
  for (const [i, spec] of specs.entries()) {
    const r = await api.api.post("/v1/endpoints", { url: receivers[i]!.url, event_types: spec.eventTypes });
    receivers[i]!.setSecret(r.body.secret);
    endpoints.push({ ...spec, endpointId: r.body.id, receiver: receivers[i]! });
  }
  await bulkCalls(db.url, {
    calls: BULK_CALLS,
    batch: 250,
    accountId,
    agents: agents.map((id, i) => ({ id, name: i === 0 ? "Sales" : "Support" })),
    endpoints,
  });

  // The chaos: a worker killed every 0.5–2 s and replaced; PostgreSQL restarted once, mid-run.
  let driving = true;
  let kills = 0;
  let restarted = false;
  const chaos = (async () => {
    const started = Date.now();
    while (driving) {
      await new Promise((r) => setTimeout(r, 500 + random() * 1_500));
      if (!driving) break;
      if (!restarted && Date.now() - started > 6_000) {
        restarted = true;
        await server.restart("immediate");
        t.diagnostic(
          `PostgreSQL restarted (immediate) ${((Date.now() - started) / 1000).toFixed(1)} s into the chaos`,
        );
        continue;
      }
      const victim = workers[Math.floor(random() * workers.length)]!;
      workers.splice(workers.indexOf(victim), 1);
      await victim.kill("SIGKILL");
      kills++;
      await spawnWorker();
    }
  })();
  const driven = await driveCalls(api.api, {
    calls: API_CALLS,
    concurrency: 12,
    agentIds: agents,
    runId: "chaos",
  });
  // Keep the chaos going until the restart has happened, then stop it.
  await waitFor("the PostgreSQL restart", () => restarted, 60_000, 100);
  driving = false;
  await chaos;
  t.diagnostic(
    `${kills} workers killed with SIGKILL; ${driven.retries} API requests retried (503 or no answer)`,
  );

  const expected = (BULK_CALLS + API_CALLS) * (4 + 2);
  await waitFor(
    "every event at every matching endpoint",
    () => receivers.reduce((n, r) => n + new Set(r.requests.map((q) => q.id)).size, 0) >= expected,
    120_000,
    200,
  );

  const ledger = await balance(db.url, endpoints);
  let duplicates = 0;
  for (const line of ledger) {
    t.diagnostic(
      `${line.name}: expected ${line.expected}, received ${line.received}, missing ${line.missing.length}, ` +
        `unexpected ${line.unexpected.length}, duplicates ${line.duplicates}, out of order ${line.outOfOrder.length}`,
    );
    assert.deepEqual(line.missing, [], `${line.name}: nothing lost`);
    assert.deepEqual(line.unexpected, [], `${line.name}: nothing unexpected`);
    assert.deepEqual(line.outOfOrder, [], `${line.name}: per-call order of first receipt held`);
    duplicates += line.duplicates;
  }
  assert.deepEqual(
    ledger.map((l) => l.expected),
    [(BULK_CALLS + API_CALLS) * 4, (BULK_CALLS + API_CALLS) * 2],
  );
  assert.equal(ledger[0]!.expected + ledger[1]!.expected, expected);
  t.diagnostic(
    `duplicates (same webhook-id, counted per endpoint): ${duplicates}; failed attempts logged: ${await failedAttempts(db.url)}`,
  );
  for (const r of receivers) assert.deepEqual(r.verifyFailures.slice(0, 3), []);

  // Every delivery is settled as succeeded, and the processes we did not kill are still running.
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  try {
    await waitFor("every delivery recorded as succeeded", async () => {
      const r = await c.query("SELECT status, count(*)::int AS n FROM deliveries GROUP BY status");
      return r.rows.length === 1 && r.rows[0].status === "succeeded" && r.rows[0].n === expected;
    });
  } finally {
    await c.end();
  }
  assert.equal(api.proc.exitCode, null, "the API process survived the database restart");
  for (const w of workers) assert.equal(w.proc.exitCode, null, "the surviving workers are running");
  assert.ok(kills > 0);
});
