import assert from "node:assert/strict";
import { after, describe, type TestContext, test } from "node:test";
import { sql } from "kysely";
import { claimDue, releaseOrphans } from "../src/delivery/claim.js";
import { completeBatch } from "../src/delivery/complete.js";
import { queueRecoverJob, runRecoverJobs } from "../src/delivery/recover.js";
import { type ApiClient, setupAccount } from "./helpers/api.js";
import { type Backend, backends, postgresBackend } from "./helpers/backends.js";
import { apiRoleServer } from "./helpers/jobs-server.js";
import { failed, ok, outcome } from "./helpers/outcomes.js";
import { stopPostgres } from "./helpers/postgres.js";
import { startReceiver } from "./helpers/receiver.js";
import { spawnServer } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

// POST /v1/endpoints/{id}/replay sends an endpoint the events it never had a delivery for (made
// while it was disabled, before it existed, or outside its filter then): once each, each call's in
// order, in the request up to KLEN_RECOVER_BATCH events and by worker processes beyond.

after(() => stopPostgres());

const STEPS = ["start", "end", "transcript"] as const;
const TYPES = ["call.started", "call.ended", "call.transcript"];
const NOWHERE = "http://127.0.0.1:9/never-sent";

async function makeCall(api: ApiClient, agentId: number, steps: readonly string[] = STEPS): Promise<number> {
  const c = await api.post("/v1/calls", { agent_id: agentId, type: "inbound", phone_number: "+15550100009" });
  assert.equal(c.status, 201);
  for (const step of steps) {
    const body = step === "transcript" ? { transcript: "Agent: Hello." } : {};
    assert.equal((await api.post(`/v1/calls/${c.body.id}/${step}`, body)).status, 200);
  }
  return c.body.id;
}

/** An API-role server (no dispatcher, no job worker: a test runs a background replay's batches). */
async function apiServer(t: TestContext, backend: Backend, batch = 2000) {
  const { api, store, at } = await apiRoleServer(t, backend, batch);
  /** An endpoint's deliveries, each call's in event order. */
  const deliveriesOf = (endpointId: string) =>
    store.db
      .selectFrom("deliveries")
      .innerJoin("events", "events.id", "deliveries.event_id")
      .select([
        "deliveries.id",
        "deliveries.event_id",
        "deliveries.call_id",
        "deliveries.status",
        "deliveries.next_attempt_at",
        "deliveries.resume_at",
        "events.event_type",
      ])
      .where("deliveries.endpoint_id", "=", endpointId)
      .orderBy("deliveries.call_id")
      .orderBy("deliveries.event_seq")
      .execute();
  return { api, store, at, deliveriesOf };
}

const since = (msAgo = 120_000) => ({ since: new Date(Date.now() - msAgo).toISOString() });

/** `[event type, due?]` of a call's deliveries. */
const chainOf = (
  rows: ReadonlyArray<{ call_id: number; event_type: string; next_attempt_at: number | null }>,
  callId: number,
) => rows.filter((r) => Number(r.call_id) === callId).map((r) => [r.event_type, r.next_attempt_at !== null]);

for (const backend of backends()) {
  describe(`replay: ${backend.name}`, () => {
    test("queues the events an endpoint never had a delivery for, once, each call's first due and the rest behind it; keeps to its filter, its range and test calls aimed elsewhere", async (t) => {
      const { api, store, deliveriesOf } = await apiServer(t, backend);
      const { agentId, endpoint: first } = await setupAccount(api, { endpointUrl: NOWHERE });
      const aimedAtFirst = await makeCall(api, agentId);
      await sql`UPDATE calls SET only_endpoint_id = ${first.id} WHERE id = ${aimedAtFirst}`.execute(store.db);
      const before = await makeCall(api, agentId);
      // Made after those calls, taking two of their three types.
      const later = await api.post("/v1/endpoints", {
        url: NOWHERE,
        event_types: ["call.started", "call.ended"],
      });
      assert.equal(later.status, 201);
      const ongoing = await makeCall(api, agentId, ["start"]);
      assert.deepEqual(
        (await deliveriesOf(later.body.id)).map((r) => Number(r.call_id)),
        [ongoing],
        "only what happened after it was made",
      );

      const r = await api.post(`/v1/endpoints/${later.body.id}/replay`, since());
      assert.equal(r.status, 202);
      assert.deepEqual(
        r.body,
        { queued: 2 },
        "the two of its types of the call before it; not the test call",
      );
      const rows = await deliveriesOf(later.body.id);
      assert.deepEqual(chainOf(rows, before), [
        ["call.started", true],
        ["call.ended", false],
      ]);
      assert.deepEqual(chainOf(rows, ongoing), [["call.started", true]], "not made twice");
      assert.deepEqual(chainOf(rows, aimedAtFirst), [], "a test call aimed at another endpoint");

      const again = await api.post(`/v1/endpoints/${later.body.id}/replay`, since());
      assert.deepEqual(again.body, { queued: 0 }, "nothing is missing any more");
      const all = await api.post(`/v1/endpoints/${first.id}/replay`, since());
      assert.deepEqual(all.body, { queued: 0 }, "the first endpoint had every event");
      assert.equal((await deliveriesOf(first.id)).length, 7, "three calls, the last one started only");

      // The range: until before the calls, nothing.
      const third = await api.post("/v1/endpoints", { url: NOWHERE });
      const none = await api.post(`/v1/endpoints/${third.body.id}/replay`, {
        ...since(),
        until: new Date(Date.now() - 60_000).toISOString(),
      });
      assert.deepEqual(none.body, { queued: 0 });
      const everything = await api.post(`/v1/endpoints/${third.body.id}/replay`, since());
      assert.deepEqual(
        everything.body,
        { queued: 4 },
        "the whole call before, the ongoing one's start; not the test call",
      );
    });

    test("a later event waiting for its retry waits behind the replayed earlier one, and keeps its retry time", async (t) => {
      const { api, store, deliveriesOf } = await apiServer(t, backend);
      const { agentId, endpoint } = await setupAccount(api, { endpointUrl: NOWHERE });
      assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: true })).status, 200);
      const c = await makeCall(api, agentId, ["start"]);
      assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: false })).status, 200);
      assert.equal((await api.post(`/v1/calls/${c}/end`, {})).status, 200);
      const retryAt = Date.now() + 3_600_000;
      await sql`UPDATE deliveries SET next_attempt_at = ${retryAt}, attempt_count = 1`.execute(store.db);

      const r = await api.post(`/v1/endpoints/${endpoint.id}/replay`, since());
      assert.deepEqual(r.body, { queued: 1 });
      const rows = await deliveriesOf(endpoint.id);
      assert.deepEqual(chainOf(rows, c), [
        ["call.started", true],
        ["call.ended", false],
      ]);
      assert.equal(Number(rows[1]!.resume_at), retryAt, "released at its retry time if call.started fails");
    });

    test("two replays at once make each missing delivery once", async (t) => {
      const { api, deliveriesOf } = await apiServer(t, backend);
      const { agentId } = await setupAccount(api);
      for (let i = 0; i < 4; i++) await makeCall(api, agentId);
      const ep = await api.post("/v1/endpoints", { url: NOWHERE });
      const [a, b] = await Promise.all([
        api.post(`/v1/endpoints/${ep.body.id}/replay`, since()),
        api.post(`/v1/endpoints/${ep.body.id}/replay`, since()),
      ]);
      assert.deepEqual([a.status, b.status], [202, 202]);
      assert.equal(a.body.queued + b.body.queued, 12, `${a.body.queued} + ${b.body.queued}`);
      const rows = await deliveriesOf(ep.body.id);
      assert.equal(new Set(rows.map((r) => r.event_id)).size, 12);
      assert.equal(rows.length, 12, "no event twice");
    });

    test("in the background past KLEN_RECOVER_BATCH: whole calls a batch, a new event of a call not yet reached waits for it, a worker that dies leaves the rest to the next", async (t) => {
      const { api, store, at, deliveriesOf } = await apiServer(t, backend, 4);
      const { agentId } = await setupAccount(api);
      const callIds: number[] = [];
      for (let i = 0; i < 5; i++) callIds.push(await makeCall(api, agentId));
      const ep = await api.post("/v1/endpoints", { url: NOWHERE });
      const r = await api.post(`/v1/endpoints/${ep.body.id}/replay`, since());
      assert.equal(r.status, 202);
      assert.equal(r.body.queued, null, "not counted in advance");
      assert.match(r.body.job_id, /^rcv_[0-9a-z]{26}$/);
      const job = await api.get(`/v1/recover-jobs/${r.body.job_id}`);
      assert.equal(job.status, 200);
      assert.equal(job.body.kind, "replay");
      assert.equal(job.body.status, "running");
      assert.equal(job.body.found, null);
      assert.deepEqual(await deliveriesOf(ep.body.id), [], "nothing made in the request");

      // A new event of the last call (the job reaches it last) waits behind its missing ones,
      // also through the ordering sweep; so does one whose earlier events are all missing.
      const late = callIds[4]!;
      assert.equal((await api.post(`/v1/calls/${late}/summary`, { summary: "Later." })).status, 200);
      assert.equal(await releaseOrphans(store, Date.now()), 0, "the sweep leaves it parked");
      assert.deepEqual(chainOf(await deliveriesOf(ep.body.id), late), [["call.summary", false]]);

      const now = Date.now();
      let asked = 0;
      await assert.rejects(
        runRecoverJobs(at(now), () => {
          if (++asked === 3) throw new Error("killed");
          return false;
        }),
        /killed/,
      );
      const afterOne = new Set((await deliveriesOf(ep.body.id)).map((d) => Number(d.call_id)));
      afterOne.delete(late);
      assert.ok(afterOne.size > 0 && afterOne.size < 4, `one batch made some calls: ${[...afterOne]}`);
      for (const id of afterOne)
        assert.equal(chainOf(await deliveriesOf(ep.body.id), id).length, 3, "whole calls");
      assert.equal(await runRecoverJobs(at(now + 1_000)), 0, "its lease is still held");
      assert.ok((await runRecoverJobs(at(now + 45_001))) > 0, "taken over after the lease");

      const rows = await deliveriesOf(ep.body.id);
      assert.equal(rows.length, 16);
      assert.equal(new Set(rows.map((d) => d.event_id)).size, 16, "each event once");
      for (const id of callIds)
        assert.deepEqual(
          chainOf(rows, id),
          [...TYPES, ...(id === late ? ["call.summary"] : [])].map((type, i) => [type, i === 0]),
          `call ${id}: its first event due, the rest behind it`,
        );
      const done = await api.get(`/v1/recover-jobs/${r.body.job_id}`);
      assert.deepEqual([done.body.status, done.body.queued, done.body.found], ["finished", 15, null]);
    });

    test("a new event held for a background replay stays held when an earlier delivery of its call finishes; it is stored apart from recovers while it runs", async (t) => {
      const { api, store, at, deliveriesOf } = await apiServer(t, backend, 1);
      const { agentId, endpoint } = await setupAccount(api, { endpointUrl: NOWHERE });
      assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: true })).status, 200);
      const c = await makeCall(api, agentId, ["start"]);
      assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: false })).status, 200);
      assert.equal((await api.post(`/v1/calls/${c}/end`, {})).status, 200);
      // call.ended, made before the replay, is on its way when the replay is asked.
      const now = Date.now();
      const claimed = await claimDue(store, { now, limit: 10, leaseMs: 60_000, exclude: [] });
      assert.deepEqual(
        claimed.map((d) => d.callId),
        [c],
      );
      const r = await api.post(`/v1/endpoints/${endpoint.id}/replay`, since());
      assert.ok(r.body.job_id, "two events in the range: in the background");
      // A process of the version before migration 19 takes `running` jobs for recovers.
      const row = await store.db
        .selectFrom("recover_jobs")
        .select(["status", "kind"])
        .where("id", "=", r.body.job_id)
        .executeTakeFirstOrThrow();
      assert.deepEqual(row, { status: "replaying", kind: "replay" });
      assert.equal((await api.get(`/v1/recover-jobs/${r.body.job_id}`)).body.status, "running");
      assert.equal((await api.post(`/v1/calls/${c}/transcript`, { transcript: "Agent: Hi." })).status, 200);

      // It succeeds.
      const policy = { schedule: [5_000], disableAfterMs: 86_400_000, random: () => 0.5 };
      await completeBatch(store, [outcome(claimed[0]!, ok(), now)], policy, now);
      assert.deepEqual(
        chainOf(await deliveriesOf(endpoint.id), c),
        [
          ["call.ended", false],
          ["call.transcript", false],
        ],
        "call.transcript still waits for the replay's call.started",
      );
      assert.equal(await releaseOrphans(store, now), 0);

      await runRecoverJobs(at(now));
      const rows = await deliveriesOf(endpoint.id);
      assert.deepEqual(
        rows.map((d) => [d.event_type, d.status, d.next_attempt_at !== null]),
        [
          ["call.started", "pending", true],
          ["call.ended", "succeeded", false],
          ["call.transcript", "pending", false],
        ],
        "the replayed call.started first, call.transcript behind it",
      );
    });

    test("a background replay holds what would overtake a replayed event: a later event waiting for its retry (parked when asked) or in flight (parked when it fails)", async (t) => {
      const { api, store, at, deliveriesOf } = await apiServer(t, backend, 1);
      const { agentId, endpoint } = await setupAccount(api, { endpointUrl: NOWHERE });
      assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: true })).status, 200);
      const waiting = await makeCall(api, agentId, ["start"]);
      const inFlight = await makeCall(api, agentId, ["start"]);
      assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: false })).status, 200);
      for (const c of [waiting, inFlight])
        assert.equal((await api.post(`/v1/calls/${c}/end`, {})).status, 200);
      const now = Date.now();
      // One call.ended claimed (its attempt in flight), the other waiting for its next retry.
      const claimed = await claimDue(store, { now, limit: 1, leaseMs: 60_000, exclude: [] });
      assert.equal(claimed.length, 1);
      const flying = claimed[0]!;
      const other = flying.callId === waiting ? inFlight : waiting;
      // Before the in-flight attempt's lease (60 s) runs out.
      const retryAt = now + 10_000;
      await sql`UPDATE deliveries SET next_attempt_at = ${retryAt}, attempt_count = 1
        WHERE call_id = ${other} AND status = 'pending'`.execute(store.db);

      const r = await api.post(`/v1/endpoints/${endpoint.id}/replay`, since());
      assert.ok(r.body.job_id, "in the background");
      const held = (await deliveriesOf(endpoint.id)).find((d) => Number(d.call_id) === other)!;
      assert.deepEqual(
        [held.next_attempt_at, Number(held.resume_at)],
        [null, retryAt],
        "parked, its retry time kept",
      );
      assert.deepEqual(
        (await claimDue(store, { now: retryAt + 1, limit: 10, leaseMs: 1, exclude: [] })).map((d) => d.id),
        [],
        "not claimed at its retry time while the job has yet to reach its call",
      );
      const policy = { schedule: [5_000], disableAfterMs: 86_400_000, random: () => 0.5 };
      await completeBatch(store, [outcome(flying, failed(), now)], policy, now);
      const retried = (await deliveriesOf(endpoint.id)).find((d) => d.id === flying.id)!;
      assert.deepEqual(
        [retried.next_attempt_at, Number(retried.resume_at)],
        [null, now + 5_000],
        "its retry parked behind the replay",
      );

      await runRecoverJobs(at(now));
      const rows = await deliveriesOf(endpoint.id);
      for (const c of [waiting, inFlight])
        assert.deepEqual(
          chainOf(rows, c),
          [
            ["call.started", true],
            ["call.ended", false],
          ],
          `call ${c}: the replayed call.started first`,
        );
    });

    test("a manual retry during a background replay leaves a later event behind the replayed earlier one; a held delivery's retry names the job", async (t) => {
      const { api, store, at, deliveriesOf } = await apiServer(t, backend, 1);
      const { agentId, endpoint } = await setupAccount(api, { endpointUrl: NOWHERE });
      assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: true })).status, 200);
      const c = await makeCall(api, agentId, ["start"]);
      assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: false })).status, 200);
      for (const step of ["end", "transcript"]) {
        const body = step === "transcript" ? { transcript: "Agent: Hello." } : {};
        assert.equal((await api.post(`/v1/calls/${c}/${step}`, body)).status, 200);
      }
      // Both gave up before the replay.
      await sql`UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, attempt_count = 8`.execute(
        store.db,
      );
      const r = await api.post(`/v1/endpoints/${endpoint.id}/replay`, since());
      assert.ok(r.body.job_id, "in the background");
      const [ended] = await deliveriesOf(endpoint.id);
      assert.equal((await api.post(`/v1/deliveries/${ended!.id}/retry`)).status, 202);
      assert.deepEqual(
        chainOf(await deliveriesOf(endpoint.id), c),
        [
          ["call.ended", false],
          ["call.transcript", false],
        ],
        "re-opened, but held for the replay's call.started",
      );
      const again = await api.post(`/v1/deliveries/${ended!.id}/retry`);
      assert.equal(again.status, 409);
      assert.equal(again.body.error.code, "delivery_waiting");
      assert.match(again.body.error.message, new RegExp(`replay ${r.body.job_id} has yet to`));
      assert.equal(again.body.error.details.job_id, r.body.job_id);

      await runRecoverJobs(at(Date.now()));
      assert.deepEqual(chainOf(await deliveriesOf(endpoint.id), c), [
        ["call.started", true],
        ["call.ended", false],
        ["call.transcript", false],
      ]);
    });

    test("a delivery held for a background replay that then makes nothing before it goes at the retry time it was waiting for", async (t) => {
      const { api, store, at, deliveriesOf } = await apiServer(t, backend, 1);
      const { agentId, endpoint } = await setupAccount(api, { endpointUrl: NOWHERE });
      assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: true })).status, 200);
      const c = await makeCall(api, agentId, ["start"]);
      await makeCall(api, agentId, ["start"]);
      assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: false })).status, 200);
      assert.equal((await api.post(`/v1/calls/${c}/end`, {})).status, 200);
      const retryAt = Date.now() + 3_600_000;
      await sql`UPDATE deliveries SET next_attempt_at = ${retryAt}, attempt_count = 1`.execute(store.db);
      const r = await api.post(`/v1/endpoints/${endpoint.id}/replay`, since());
      assert.ok(r.body.job_id, "in the background");
      assert.deepEqual(chainOf(await deliveriesOf(endpoint.id), c), [["call.ended", false]], "held");
      // Its filter no longer takes call.started: the replay has nothing to make before it.
      const patched = await api.patch(`/v1/endpoints/${endpoint.id}`, { event_types: ["call.ended"] });
      assert.equal(patched.status, 200);
      await runRecoverJobs(at(Date.now()));
      const [ended] = await deliveriesOf(endpoint.id);
      assert.equal((await api.get(`/v1/recover-jobs/${r.body.job_id}`)).body.queued, 0);
      assert.deepEqual([Number(ended!.next_attempt_at), ended!.resume_at], [retryAt, null]);
    });

    test("a background replay holds a new event only for an earlier event its filter takes", async (t) => {
      const { api, deliveriesOf } = await apiServer(t, backend, 1);
      const { agentId } = await setupAccount(api);
      const onlyEnded = await api.post("/v1/endpoints", {
        url: NOWHERE,
        event_types: ["call.ended"],
        agent_ids: [agentId],
      });
      const agentOnly = await api.post("/v1/endpoints", { url: NOWHERE, agent_ids: [agentId] });
      for (const ep of [onlyEnded, agentOnly])
        assert.equal((await api.patch(`/v1/endpoints/${ep.body.id}`, { disabled: true })).status, 200);
      const c = await makeCall(api, agentId, ["start"]);
      // Another call, so that the range holds more events than KLEN_RECOVER_BATCH.
      await makeCall(api, agentId, ["start"]);
      for (const ep of [onlyEnded, agentOnly]) {
        assert.equal((await api.patch(`/v1/endpoints/${ep.body.id}`, { disabled: false })).status, 200);
        const r = await api.post(`/v1/endpoints/${ep.body.id}/replay`, since());
        assert.ok(r.body.job_id, "in the background");
      }
      assert.equal((await api.post(`/v1/calls/${c}/end`, {})).status, 200);
      assert.deepEqual(
        chainOf(await deliveriesOf(onlyEnded.body.id), c),
        [["call.ended", true]],
        "the call.started it does not take is no reason to wait",
      );
      assert.deepEqual(
        chainOf(await deliveriesOf(agentOnly.body.id), c),
        [["call.ended", false]],
        "waits for the call.started its agent filter takes",
      );
    });

    test("a background replay carried on after the retention period has passed over its range replays nothing older", async (t) => {
      const { api, at, deliveriesOf } = await apiServer(t, backend, 1);
      const { agentId } = await setupAccount(api);
      await makeCall(api, agentId);
      const ep = await api.post("/v1/endpoints", { url: NOWHERE });
      const r = await api.post(`/v1/endpoints/${ep.body.id}/replay`, since());
      assert.ok(r.body.job_id);
      const ctx = at(Date.now());
      await runRecoverJobs(at(Date.now() + ctx.config.retentionMs + 60_000));
      const done = await api.get(`/v1/recover-jobs/${r.body.job_id}`);
      assert.deepEqual([done.body.status, done.body.queued], ["finished", 0]);
      assert.deepEqual(await deliveriesOf(ep.body.id), []);
    });
  });

  test(`replay through a running server (${backend.name}): events made while the endpoint was disabled arrive once each, signed, each call in order; its repeat is replayed`, async (t) => {
    const db = await backend.fresh();
    const server = await spawnServer({
      dataDir: db.dataDir,
      env: { KLEN_DATABASE_URL: db.databaseUrl, KLEN_RECOVER_BATCH: "4" },
    });
    const rx = await startReceiver();
    t.after(async () => {
      await server.kill();
      await rx.close();
      await db.cleanup();
    });
    const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: rx.url });
    rx.setSecret(endpoint.secret);
    assert.equal((await server.api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: true })).status, 200);
    const callIds: number[] = [];
    for (let i = 0; i < 3; i++) callIds.push(await makeCall(server.api, agentId));
    assert.equal((await server.api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: false })).status, 200);

    const key = { "idempotency-key": "replay-1" };
    const body = since();
    const r = await server.api.post(`/v1/endpoints/${endpoint.id}/replay`, body, key);
    assert.equal(r.status, 202);
    assert.ok(r.body.job_id, "9 events: past the batch of 4, in the background");
    const again = await server.api.post(`/v1/endpoints/${endpoint.id}/replay`, body, key);
    assert.equal(again.headers.get("idempotent-replayed"), "true");
    assert.deepEqual(again.body, r.body);
    await waitFor("the replay finished", async () => {
      const job = await server.api.get(`/v1/recover-jobs/${r.body.job_id}`);
      return job.body.status === "finished";
    });
    await waitFor("every replayed event arrived", async () => rx.requests.length >= 9);
    const events = await server.api.get("/v1/events?limit=100");
    assert.deepEqual(
      rx.requests.map((q) => q.id).sort(),
      events.body.data.map((e: { id: string }) => e.id).sort(),
      "each event once, nothing else",
    );
    assert.deepEqual(rx.verifyFailures, []);
    for (const id of callIds)
      assert.deepEqual(
        rx.requests.filter((q) => q.json.call.id === id).map((q) => q.json.event_type),
        TYPES,
        `call ${id} in order`,
      );
    const job = await server.api.get(`/v1/recover-jobs/${r.body.job_id}`);
    assert.equal(job.body.queued, 9);
  });
}

test("postgres: a transition while a background replay is being recorded waits for it, and its new event then waits for the replay", async (t) => {
  const { api, store, deliveriesOf } = await apiServer(t, postgresBackend, 1);
  const { agentId, endpoint } = await setupAccount(api, { endpointUrl: NOWHERE });
  assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: true })).status, 200);
  const c = await makeCall(api, agentId, ["start"]);
  assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: false })).status, 200);
  const account = await store.db.selectFrom("endpoints").select("account_id").executeTakeFirstOrThrow();
  const waiters = async () =>
    Number(
      (
        await sql<{ n: string }>`SELECT count(*) AS n FROM pg_locks
          WHERE locktype = 'advisory' AND NOT granted
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`.execute(store.db)
      ).rows[0]!.n,
    );
  let ended: Promise<{ status: number }> | undefined;
  let endedFirst = false;
  await store.db.transaction().execute(async (trx) => {
    const now = Date.now();
    await queueRecoverJob(
      trx,
      store.caps,
      {
        accountId: Number(account.account_id),
        endpointId: endpoint.id,
        since: now - 60_000,
        until: now,
        found: 0,
        kind: "replay",
      },
      now,
    );
    let done = false;
    ended = api.post(`/v1/calls/${c}/end`, {}).finally(() => {
      done = true;
    });
    // Either the transition waits for this transaction (then it sees the job), or it is done
    // first, before the job exists for it: what the lock is there to prevent.
    for (let i = 0; ; i++) {
      if (done) {
        endedFirst = true;
        break;
      }
      if ((await waiters()) === 1) break;
      assert.ok(i < 1_500, "the transition neither finished nor waited");
      await new Promise((r) => setTimeout(r, 20));
    }
  });
  assert.equal((await ended!).status, 200);
  assert.equal(endedFirst, false, "the transition waited for the replay's recording");
  assert.deepEqual(
    chainOf(await deliveriesOf(endpoint.id), c),
    [["call.ended", false]],
    "held for the replay",
  );
});

describe("replay: refusals", () => {
  test("an unknown or disabled endpoint, a bad or empty range", async (t) => {
    const { api } = await apiServer(t, backends()[0]!);
    const { endpoint } = await setupAccount(api, { endpointUrl: NOWHERE });
    const unknown = await api.post("/v1/endpoints/ep_01jz000000000000000000000a/replay", since());
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.error.code, "not_found");
    const noSince = await api.post(`/v1/endpoints/${endpoint.id}/replay`, {});
    assert.equal(noSince.status, 400);
    assert.equal(noSince.body.error.details.field, "since");
    const backwards = await api.post(`/v1/endpoints/${endpoint.id}/replay`, {
      since: "2026-11-02T00:00:00Z",
      until: "2026-11-01T00:00:00Z",
    });
    assert.equal(backwards.status, 400);
    assert.equal(backwards.body.error.details.field, "until");
    assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: true })).status, 200);
    const disabled = await api.post(`/v1/endpoints/${endpoint.id}/replay`, since());
    assert.equal(disabled.status, 409);
    assert.equal(disabled.body.error.code, "endpoint_disabled");
  });
});
