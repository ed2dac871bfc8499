import assert from "node:assert/strict";
import { after, test } from "node:test";
import { postgresBackend } from "./helpers/backends.js";
import { balance, bulkCalls, driveCalls, type EndpointUnderTest, failedAttempts } from "./helpers/ledger.js";
import { attemptsAt } from "./helpers/metrics.js";
import { stopPostgres } from "./helpers/postgres.js";
import { startReceiver } from "./helpers/receiver.js";
import { type ServerProcess, spawnServer, spawnWorkers } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

// Scale-out (PRODUCT.md §10): one API process and three worker processes share one PostgreSQL.
// 5,000 calls × 4 events = 20,000 events, fanned out to three receivers with different filters
// (40,000 deliveries). Every event must reach every matching endpoint, in per-call order; a resend
// is only allowed behind a failed attempt (a timeout on this loaded machine), never from a double
// claim. 500 calls go through the real HTTP API while the other 4,500 arrive through the test-only
// bulk path at the same time (see bulkCalls: the API alone would need ~2 min for 25,000 requests).

const CALLS = 5_000;
const API_CALLS = 500;

test("one API and three workers on one PostgreSQL deliver 20,000 events, ledger balanced", async (t) => {
  const fresh = await postgresBackend.fresh();
  const procs: ServerProcess[] = [];
  const receivers = await Promise.all([startReceiver(), startReceiver(), startReceiver()]);
  after(async () => {
    for (const p of procs) await p.kill("SIGKILL");
    for (const r of receivers) await r.close();
    await fresh.cleanup();
    await stopPostgres();
  });
  // A generous timeout: the receivers share two cores with four servers, PostgreSQL and the load
  // generator, and answer late at times (measured: ~6 % of attempts past 10 s at the peak).
  const env = { KLEN_DATABASE_URL: fresh.databaseUrl, KLEN_DELIVERY_TIMEOUT: "30s" };
  const api = await spawnServer({ dataDir: fresh.dataDir, role: "api", env });
  procs.push(api);
  const workers = await spawnWorkers(3, { dataDir: fresh.dataDir, env });
  procs.push(...workers);

  const agents: number[] = [];
  for (const name of ["Sales", "Support"]) agents.push((await api.api.post("/v1/agents", { name })).body.id);
  const accountId = (await api.api.get("/v1/account")).body.id as number;
  const specs = [
    { name: "all events", eventTypes: [], agentIds: [] },
    { name: "ended+summary", eventTypes: ["call.ended", "call.summary"], agentIds: [] },
    { name: "agent Sales", eventTypes: [], agentIds: [agents[0]!] },
  ];
  const endpoints: EndpointUnderTest[] = [];
  for (const [i, spec] of specs.entries()) {
    const rx = receivers[i]!;
    const r = await api.api.post("/v1/endpoints", {
      url: rx.url,
      event_types: spec.eventTypes,
      agent_ids: spec.agentIds,
    });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    rx.setSecret(r.body.secret);
    endpoints.push({ ...spec, endpointId: r.body.id, receiver: rx });
  }

  const started = Date.now();
  const [{ callIds }] = await Promise.all([
    driveCalls(api.api, { calls: API_CALLS, concurrency: 16, agentIds: agents, runId: "scale" }),
    bulkCalls(fresh.databaseUrl, {
      calls: CALLS - API_CALLS,
      batch: 250,
      accountId,
      agents: agents.map((id, i) => ({ id, name: i === 0 ? "Sales" : "Support" })),
      endpoints,
    }),
  ]);
  const generated = Date.now();
  assert.equal(callIds.length, API_CALLS);
  const expectedDeliveries = CALLS * 4 + CALLS * 2 + (CALLS / 2) * 4;
  await waitFor(
    `${expectedDeliveries} deliveries`,
    () => receivers.reduce((n, r) => n + new Set(r.requests.map((q) => q.id)).size, 0) >= expectedDeliveries,
    180_000,
    200,
  );
  const done = Date.now();

  const ledger = await balance(fresh.databaseUrl, endpoints);
  const failed = await failedAttempts(fresh.databaseUrl);
  for (const line of ledger) {
    t.diagnostic(
      `${line.name}: expected ${line.expected}, received ${line.received}, missing ${line.missing.length}, ` +
        `unexpected ${line.unexpected.length}, duplicates ${line.duplicates}, out of order ${line.outOfOrder.length}`,
    );
    assert.deepEqual(line.missing, [], `${line.name}: nothing missing`);
    assert.deepEqual(line.unexpected, [], `${line.name}: nothing unexpected`);
    assert.deepEqual(line.outOfOrder, [], `${line.name}: per-call order held`);
  }
  const duplicates = ledger.reduce((n, l) => n + l.duplicates, 0);
  t.diagnostic(`duplicates ${duplicates} (same webhook-id), failed attempts ${failed}`);
  assert.ok(duplicates <= failed, "every resend follows a failed attempt: no delivery was claimed twice");
  assert.deepEqual(
    ledger.map((l) => l.expected),
    [CALLS * 4, CALLS * 2, (CALLS / 2) * 4],
  );
  for (const rx of receivers) assert.deepEqual(rx.verifyFailures.slice(0, 3), [], "every request verified");

  // All three workers took part.
  const shares = await Promise.all(workers.map((w) => attemptsAt(w.workerPort)));
  t.diagnostic(`attempts per worker: ${shares.join(", ")}`);
  t.diagnostic(
    `20,000 events generated in ${((generated - started) / 1000).toFixed(1)} s; ` +
      `${expectedDeliveries} deliveries done ${((done - started) / 1000).toFixed(1)} s after the first call`,
  );
  assert.equal(
    shares.reduce((a, b) => a + b, 0),
    expectedDeliveries + failed,
    "one attempt per delivery, plus one per failure",
  );
  for (const s of shares) assert.ok(s > 0, "every worker made attempts");
});
