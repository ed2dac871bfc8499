import assert from "node:assert/strict";
import { after, describe, type TestContext, test } from "node:test";
import { sql } from "kysely";
import type { AppContext } from "../src/api/context.js";
import { claimDue, releaseOrphans } from "../src/delivery/claim.js";
import { runRecoverJobs } from "../src/delivery/recover.js";
import { purgeExpired } from "../src/retention/purge.js";
import { type ApiClient, setupAccount } from "./helpers/api.js";
import { type Backend, backends } from "./helpers/backends.js";
import { apiRoleServer } from "./helpers/jobs-server.js";
import { stopPostgres } from "./helpers/postgres.js";
import { startReceiver } from "./helpers/receiver.js";
import { spawnServer } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

// A recover larger than KLEN_RECOVER_BATCH is recorded with its request and carried out by worker
// processes a batch of calls at a time (delivery/recover.ts): each batch re-opens whole calls, so
// a call's events still go out in order, and a worker that dies mid-way leaves the rest to the next.

after(() => stopPostgres());

const STEPS = ["start", "end", "transcript"] as const;

/** Makes `calls` calls of three events each, for an endpoint. */
async function makeCalls(api: ApiClient, agentId: number, calls: number): Promise<number[]> {
  const ids: number[] = [];
  for (let i = 0; i < calls; i++) {
    const c = await api.post("/v1/calls", {
      agent_id: agentId,
      type: "inbound",
      phone_number: "+15550100009",
    });
    assert.equal(c.status, 201);
    for (const step of STEPS) {
      const body = step === "transcript" ? { transcript: "Agent: Hello." } : {};
      assert.equal((await api.post(`/v1/calls/${c.body.id}/${step}`, body)).status, 200);
    }
    ids.push(c.body.id);
  }
  return ids;
}

/**
 * An API-role server (no dispatcher and no recover worker of its own, so a test runs the recover's
 * batches itself, with its own clock) whose endpoint's deliveries of `calls` calls all failed,
 * and a recover of them asked: its answer, in the background past `batch`.
 */
async function failedAndRecovered(t: TestContext, backend: Backend, calls: number, batch: number) {
  const { api, store, at } = await apiRoleServer(t, backend, batch);
  const { agentId, endpoint } = await setupAccount(api, { endpointUrl: "http://127.0.0.1:9/never-sent" });
  const callIds = await makeCalls(api, agentId, calls);
  // Every delivery gave up (what a schedule run out leaves).
  await sql`UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, attempt_count = 8`.execute(
    store.db,
  );
  const rec = await api.post(`/v1/endpoints/${endpoint.id}/recover`, {
    since: new Date(Date.now() - 60_000).toISOString(),
  });
  assert.equal(rec.status, 202);
  return { api, endpoint, callIds, store, rec, at };
}

const LEASE_MS = 45_000;

/** A worker that dies after its first batch, mid-job: its lease stays set. */
async function dieAfterOneBatch(ctx: AppContext): Promise<void> {
  let asked = 0;
  await assert.rejects(
    runRecoverJobs(ctx, () => {
      // Asked before taking a job, before the first batch, before the second.
      if (++asked === 3) throw new Error("killed");
      return false;
    }),
    /killed/,
  );
}

for (const backend of backends()) {
  describe(`recover in batches: ${backend.name}`, () => {
    test("a worker that dies mid-way leaves the rest to the next once its lease runs out; each batch re-opens whole calls, first event due, the rest parked", async (t) => {
      const { api, callIds, store, rec, at } = await failedAndRecovered(t, backend, 5, 4);
      assert.equal(rec.body.queued, 15, "counted when asked");
      assert.match(rec.body.job_id, /^rcv_[0-9a-z]{26}$/);

      const rows = () =>
        store.db
          .selectFrom("deliveries")
          .select(["id", "call_id", "event_seq", "status", "next_attempt_at", "one_attempt"])
          .orderBy("call_id")
          .orderBy("event_seq")
          .execute();
      // The deliveries the recover is about (a later event's is not).
      const recovered = new Set((await rows()).map((r) => r.id));
      const pendingCalls = async () => {
        const byCall = new Map<number, string[]>();
        for (const r of await rows())
          if (recovered.has(r.id))
            byCall.set(Number(r.call_id), [...(byCall.get(Number(r.call_id)) ?? []), r.status]);
        for (const [call, statuses] of byCall)
          assert.equal(new Set(statuses).size, 1, `call ${call} re-opened whole or not at all: ${statuses}`);
        return callIds.filter((id) => byCall.get(id)?.[0] === "pending");
      };
      assert.deepEqual(await pendingCalls(), [], "nothing re-opened in the request");
      // A new event of a call the job has yet to reach waits behind its recovered ones, also
      // through the ordering sweep.
      const late = callIds[4]!;
      assert.equal((await api.post(`/v1/calls/${late}/summary`, { summary: "Later." })).status, 200);
      assert.equal(await releaseOrphans(store, Date.now()), 0, "the sweep leaves it parked");
      const lateRow = await store.db
        .selectFrom("deliveries")
        .select(["status", "next_attempt_at"])
        .where("call_id", "=", late)
        .where("status", "=", "pending")
        .executeTakeFirstOrThrow();
      assert.equal(lateRow.next_attempt_at, null, "parked behind the call's failed events");

      const now = Date.now();
      // A worker that dies after its first batch: it never hands the job back.
      await dieAfterOneBatch(at(now));
      const afterFirst = await pendingCalls();
      assert.ok(
        afterFirst.length > 0 && afterFirst.length < callIds.length,
        `one batch re-opened some calls: ${afterFirst}`,
      );
      assert.deepEqual(afterFirst, callIds.slice(0, afterFirst.length), "in call order");

      assert.equal(await runRecoverJobs(at(now + 1_000)), 0, "the lease is still held: nothing to do");
      assert.deepEqual(await pendingCalls(), afterFirst);

      assert.ok((await runRecoverJobs(at(now + LEASE_MS + 1))) > 0, "taken over after the lease");
      assert.deepEqual(await pendingCalls(), callIds, "every call re-opened");
      const all = await rows();
      for (const id of callIds) {
        const chain = all.filter((r) => Number(r.call_id) === id);
        assert.deepEqual(
          chain.map((r) => r.next_attempt_at !== null),
          id === late ? [true, false, false, false] : [true, false, false],
          `call ${id}: the first event due, the later ones parked behind it`,
        );
        assert.ok(chain.every((r) => Number(r.one_attempt) === 1 || !recovered.has(r.id)));
      }
      const job = await api.get(`/v1/recover-jobs/${rec.body.job_id}`);
      assert.equal(job.status, 200);
      assert.equal(job.body.status, "finished", "kept once done, for its job_id to be looked up");
      assert.equal(job.body.found, 15, "what the 202 said");
      assert.equal(job.body.queued, 15, "every one re-queued, over both workers");
      assert.ok(job.body.finished_at);
      assert.equal(await runRecoverJobs(at(now + 2 * LEASE_MS)), 0, "a finished job is not taken again");
      // Nor by a process of the version before migration 17 (no status): held for ever, and
      // past every call, so its sweep and fan-out do not park new events behind it either.
      const row = await store.db
        .selectFrom("recover_jobs")
        .select(["leased_until", "after_call_id"])
        .where("id", "=", rec.body.job_id)
        .executeTakeFirstOrThrow();
      assert.deepEqual(
        [Number(row.leased_until), Number(row.after_call_id)],
        [Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
      );
    });

    test("a background recover holds a later event waiting for its retry, so it does not overtake the recovered earlier one", async (t) => {
      const { api, store, at } = await apiRoleServer(t, backend, 1);
      const { agentId, endpoint } = await setupAccount(api, { endpointUrl: "http://127.0.0.1:9/never-sent" });
      const [c, other] = (await makeCalls(api, agentId, 2)) as [number, number];
      const retryAt = Date.now() + 10_000;
      // call.started given up on both calls; c's call.ended waits for its next retry.
      await sql`UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, attempt_count = 8
        WHERE event_seq IN (SELECT seq FROM events WHERE event_type = 'call.started')`.execute(store.db);
      await sql`UPDATE deliveries SET status = 'succeeded', next_attempt_at = NULL WHERE call_id = ${other}
        AND status = 'pending'`.execute(store.db);
      await sql`UPDATE deliveries SET next_attempt_at = ${retryAt}, attempt_count = 1
        WHERE call_id = ${c} AND event_seq = (
          SELECT MIN(event_seq) FROM deliveries WHERE call_id = ${c} AND status = 'pending')`.execute(
        store.db,
      );
      const rec = await api.post(`/v1/endpoints/${endpoint.id}/recover`, {
        since: new Date(Date.now() - 60_000).toISOString(),
      });
      assert.ok(rec.body.job_id, "two failed: in the background");
      assert.deepEqual(
        (await claimDue(store, { now: retryAt + 1, limit: 10, leaseMs: 1, exclude: [] })).map(
          (d) => d.callId,
        ),
        [],
        "not claimed at its retry time while the job has yet to reach its call",
      );
      await runRecoverJobs(at(Date.now()));
      const chain = await store.db
        .selectFrom("deliveries")
        .innerJoin("events", "events.id", "deliveries.event_id")
        .select(["events.event_type", "deliveries.next_attempt_at", "deliveries.resume_at"])
        .where("deliveries.call_id", "=", c)
        .where("deliveries.status", "=", "pending")
        .orderBy("deliveries.event_seq")
        .execute();
      assert.deepEqual(
        chain.map((d) => [
          d.event_type,
          d.next_attempt_at !== null,
          d.resume_at === null ? null : Number(d.resume_at),
        ]),
        [
          ["call.started", true, null],
          ["call.ended", false, retryAt],
          ["call.transcript", false, null],
        ],
      );
    });

    test("a background recover holds nothing for a failed event that comes after it: a first event retried by hand stays due", async (t) => {
      const { api, store } = await apiRoleServer(t, backend, 1);
      const { agentId, endpoint } = await setupAccount(api, { endpointUrl: "http://127.0.0.1:9/never-sent" });
      const [, second] = (await makeCalls(api, agentId, 2)) as [number, number];
      await sql`UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, attempt_count = 8`.execute(
        store.db,
      );
      const first = await store.db
        .selectFrom("deliveries")
        .select("id")
        .where("call_id", "=", second)
        .orderBy("event_seq")
        .executeTakeFirstOrThrow();
      assert.equal((await api.post(`/v1/deliveries/${first.id}/retry`)).status, 202);
      const rec = await api.post(`/v1/endpoints/${endpoint.id}/recover`, {
        since: new Date(Date.now() - 60_000).toISOString(),
      });
      assert.ok(rec.body.job_id, "in the background");
      const row = await store.db
        .selectFrom("deliveries")
        .select(["status", "next_attempt_at"])
        .where("id", "=", first.id)
        .executeTakeFirstOrThrow();
      assert.equal(row.status, "pending");
      assert.notEqual(row.next_attempt_at, null, "still due: nothing earlier in its call to wait for");
    });

    test("a job whose endpoint is disabled mid-way stops and leaves the rest failed", async (t) => {
      const { api, endpoint, callIds, store, rec, at } = await failedAndRecovered(t, backend, 3, 3);
      assert.ok(rec.body.job_id, "in the background");
      const now = Date.now();
      await dieAfterOneBatch(at(now));
      const count = async (status: string) =>
        Number(
          (
            await store.db
              .selectFrom("deliveries")
              .select((eb) => eb.fn.countAll().as("n"))
              .where("status", "=", status)
              .executeTakeFirstOrThrow()
          ).n,
        );
      assert.equal(await count("pending"), 3, "the first batch: one whole call");
      assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: true })).status, 200);
      await runRecoverJobs(at(now + LEASE_MS + 1));
      assert.equal(await count("failed"), 6, "the other calls stay failed");
      const job = await api.get(`/v1/recover-jobs/${rec.body.job_id}`);
      assert.equal(job.body.status, "stopped", "the job ended, and says why");
      assert.equal(job.body.queued, 3);
      assert.equal(job.body.found, 9);
      // Kept, but no longer in the way: a new event of a call it did not reach goes out at once.
      assert.equal((await api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: false })).status, 200);
      const last = callIds[callIds.length - 1]!;
      assert.equal((await api.post(`/v1/calls/${last}/summary`, { summary: "Later." })).status, 200);
      const fresh = await store.db
        .selectFrom("deliveries")
        .select("next_attempt_at")
        .where("call_id", "=", last)
        .where("status", "=", "pending")
        .executeTakeFirstOrThrow();
      assert.notEqual(fresh.next_attempt_at, null, "due, not parked behind the stopped job");
    });

    test("the retention period removes a job once done, never a running one", async (t) => {
      const { api, rec, at } = await failedAndRecovered(t, backend, 2, 1);
      const now = Date.now();
      const ctx = at(now);
      const later = now + ctx.config.retentionMs + 1;
      await purgeExpired(at(later), later, { pauseMs: 0 });
      assert.equal((await api.get(`/v1/recover-jobs/${rec.body.job_id}`)).body.status, "running");
      await runRecoverJobs(ctx);
      assert.equal((await api.get(`/v1/recover-jobs/${rec.body.job_id}`)).body.status, "finished");
      await purgeExpired(at(later), later - 2, { pauseMs: 0 });
      assert.equal((await api.get(`/v1/recover-jobs/${rec.body.job_id}`)).status, 200, "not yet");
      await purgeExpired(at(later), later, { pauseMs: 0 });
      const gone = await api.get(`/v1/recover-jobs/${rec.body.job_id}`);
      assert.equal(gone.status, 404);
      assert.equal(gone.body.error.code, "not_found");
    });

    test("a large recover through a running server: every recovered event arrives once, each call in order; its repeat is replayed", async (t) => {
      const db = await backend.fresh();
      let healthy = false;
      const rx = await startReceiver({ respond: () => (healthy ? 200 : 500) });
      const server = await spawnServer({
        dataDir: db.dataDir,
        env: { KLEN_DATABASE_URL: db.databaseUrl, KLEN_RETRY_SCHEDULE: "20ms", KLEN_RECOVER_BATCH: "4" },
      });
      t.after(async () => {
        await server.kill();
        await rx.close();
        await db.cleanup();
      });
      const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: rx.url });
      const callIds = await makeCalls(server.api, agentId, 4);
      await waitFor("every delivery failed", async () => {
        const list = await server.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&status=failed`);
        return list.body.data.length === 12;
      });
      const failedIds = new Set(rx.requests.map((r) => r.id));
      assert.equal(failedIds.size, 12);
      healthy = true;
      const sentBefore = rx.requests.length;
      const body = { since: new Date(Date.now() - 120_000).toISOString() };
      const key = { "idempotency-key": "recover-large-1" };
      const rec = await server.api.post(`/v1/endpoints/${endpoint.id}/recover`, body, key);
      assert.equal(rec.status, 202);
      assert.equal(rec.body.queued, 12);
      assert.ok(rec.body.job_id);
      const again = await server.api.post(`/v1/endpoints/${endpoint.id}/recover`, body, key);
      assert.equal(again.headers.get("idempotent-replayed"), "true");
      assert.deepEqual(again.body, rec.body);

      const running = await server.api.get(`/v1/recover-jobs/${rec.body.job_id}`);
      assert.equal(running.status, 200);
      assert.equal(running.body.endpoint_id, endpoint.id);
      assert.ok(["running", "finished"].includes(running.body.status), running.body.status);
      await waitFor("the job finished", async () => {
        const job = await server.api.get(`/v1/recover-jobs/${rec.body.job_id}`);
        return job.body.status === "finished" && job.body.queued === 12;
      });
      assert.equal((await server.api.get("/v1/recover-jobs/rcv_123")).status, 404);
      const listed = await server.api.get(`/v1/recover-jobs?endpoint_id=${endpoint.id}`);
      assert.deepEqual(
        listed.body.data.map((j: { id: string }) => j.id),
        [rec.body.job_id],
      );
      await waitFor("every recovered delivery succeeded", async () => {
        const list = await server.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&status=succeeded`);
        return list.body.data.length === 12;
      });
      const resent = rx.requests.slice(sentBefore);
      assert.deepEqual(
        resent.map((r) => r.id).sort(),
        [...failedIds].sort(),
        "each failed event once more, nothing else",
      );
      for (const id of callIds)
        assert.deepEqual(
          resent.filter((r) => r.json.call.id === id).map((r) => r.json.event_type),
          ["call.started", "call.ended", "call.transcript"],
          `call ${id} in order`,
        );
    });
  });
}
