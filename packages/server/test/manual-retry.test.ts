import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, type TestContext, test } from "node:test";
import { sql } from "kysely";
import { type Claimed, claimDue, releaseLeases } from "../src/delivery/claim.js";
import { type CompletionPolicy, completeBatch } from "../src/delivery/complete.js";
import type { SendResult } from "../src/delivery/send.js";
import { openStore } from "../src/storage/store.js";
import { runCall, setupAccount } from "./helpers/api.js";
import { type Backend, backends, postgresBackend } from "./helpers/backends.js";
import { failed, ok, outcome } from "./helpers/outcomes.js";
import { stopPostgres } from "./helpers/postgres.js";
import { startReceiver } from "./helpers/receiver.js";
import { spawnServer } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

// Manual retry and recover against what the dispatcher is doing at the same time: a re-opened
// earlier event holds back the later events of its call again, and retries raced on one delivery
// never send it twice at once nor log two attempts under one number.

test.after(() => stopPostgres());

interface Delivery {
  id: string;
  endpoint_id: string;
  event_type: string;
  status: string;
  next_attempt_at: string | null;
  attempt_count: number;
  attempts: Array<{ number: number }>;
}

for (const backend of backends()) {
  for (const how of ["retry", "recover"] as const) {
    test(`${backend.name}: ${how} of a given-up call.started parks the call.ended that waits for its next retry, and started goes first`, async () => {
      const db = await backend.fresh();
      const rx = await startReceiver();
      const env = { KLEN_DATABASE_URL: db.databaseUrl };
      const api = await spawnServer({ dataDir: db.dataDir, env, role: "api" });
      const store = await openStore(db.databaseUrl);
      let worker: Awaited<ReturnType<typeof spawnServer>> | undefined;
      try {
        const { agentId } = await setupAccount(api.api, { endpointUrl: rx.url });
        const callId = await runCall(api.api, agentId);
        const list = (await api.api.get(`/v1/deliveries?call_id=${callId}`)).body.data as Delivery[];
        const started = list.find((d) => d.event_type === "call.started")!;
        const ended = list.find((d) => d.event_type === "call.ended")!;
        // What the dispatcher leaves when started has spent its schedule while the endpoint was
        // down: started failed, which released ended, now waiting an hour for its next retry.
        const now = Date.now();
        await store.db
          .updateTable("deliveries")
          .set({ status: "failed", next_attempt_at: null, attempt_count: 4 })
          .where("id", "=", started.id)
          .execute();
        await store.db
          .updateTable("deliveries")
          .set({ status: "pending", next_attempt_at: now + 3_600_000, attempt_count: 1 })
          .where("id", "=", ended.id)
          .execute();

        const r =
          how === "retry"
            ? await api.api.post(`/v1/deliveries/${started.id}/retry`)
            : await api.api.post(`/v1/endpoints/${list[0]!.endpoint_id}/recover`, {
                since: new Date(now - 60_000).toISOString(),
              });
        assert.equal(r.status, 202, JSON.stringify(r.body));
        const after = async (id: string) => (await api.api.get(`/v1/deliveries/${id}`)).body as Delivery;
        assert.equal(
          (await after(ended.id)).next_attempt_at,
          null,
          "call.ended waits for call.started again",
        );
        assert.ok((await after(started.id)).next_attempt_at, "call.started is due");

        worker = await spawnServer({ dataDir: db.dataDir, env, role: "worker" });
        await waitFor("call.ended delivered", async () =>
          (await after(ended.id)).status === "succeeded" ? true : undefined,
        );
        const order = rx.requests
          .filter((q) => q.json?.call?.id === callId)
          .map((q) => q.json.event_type as string);
        const firstEnded = order.indexOf("call.ended");
        assert.ok(order.lastIndexOf("call.started") < firstEnded, order.join(", "));
        assert.equal((await after(started.id)).status, "succeeded");
      } finally {
        await worker?.kill();
        await api.kill();
        await store.close();
        await rx.close();
        await db.cleanup();
      }
    });
  }
}

/**
 * An API-only process (no dispatcher: the test claims and completes attempts itself) on a fresh
 * database of `backend`, a store on it, and one call whose call.started and call.ended deliveries
 * go to a receiver; all stopped when the test ends.
 */
async function oneCall(t: TestContext, backend: Backend) {
  const db = await backend.fresh();
  const rx = await startReceiver();
  const api = await spawnServer({
    dataDir: db.dataDir,
    env: { KLEN_DATABASE_URL: db.databaseUrl },
    role: "api",
  });
  const store = await openStore(db.databaseUrl);
  t.after(async () => {
    await api.kill();
    await store.close();
    await rx.close();
    await db.cleanup();
  });
  const { agentId } = await setupAccount(api.api, { endpointUrl: rx.url });
  const callId = await runCall(api.api, agentId);
  const list = (await api.api.get(`/v1/deliveries?call_id=${callId}`)).body.data as Delivery[];
  const of = (type: string) => list.find((d) => d.event_type === type)!.id;
  return {
    store,
    started: of("call.started"),
    ended: of("call.ended"),
    /** Puts a delivery in the state a test starts from. */
    set: (id: string, values: { status: string; next_attempt_at: number | null; attempt_count?: number }) =>
      store.db.updateTable("deliveries").set(values).where("id", "=", id).execute(),
    get: async (id: string) => (await api.api.get(`/v1/deliveries/${id}`)).body as Delivery,
    retry: async (id: string) => (await api.api.post(`/v1/deliveries/${id}/retry`)).status,
    /** The ids a claim at `now` takes, and the claims. */
    claim: async (now = Date.now()) => {
      const claimed = await claimDue(store, { now, limit: 10, leaseMs: 60_000, exclude: [] });
      return { ids: claimed.map((c) => c.id), claimed };
    },
    /** Records `result` as the attempt of `claimed`, at `at`. */
    complete: (claimed: Claimed, result: SendResult, policy: CompletionPolicy, at = Date.now()) =>
      completeBatch(store, [outcome(claimed, result, at, rx.url)], policy, at),
  };
}

/** No jitter (random 0.5): each delay is the schedule's own. */
const policyOf = (schedule: number[]): CompletionPolicy => ({
  schedule,
  disableAfterMs: 86_400_000,
  random: () => 0.5,
});

for (const backend of backends()) {
  test(`${backend.name}: a retried call.started that fails again releases the parked call.ended at its own next retry, not at once; one that succeeds releases it at once`, async (t) => {
    const c = await oneCall(t, backend);
    const policy = policyOf([5_000, 300_000]);
    // The endpoint has been down: started given up, ended waiting an hour for its next retry.
    const hourLater = Date.now() + 3_600_000;
    await c.set(c.started, { status: "failed", next_attempt_at: null, attempt_count: 3 });
    await c.set(c.ended, { status: "pending", next_attempt_at: hourLater, attempt_count: 1 });
    const retryStartedOnce = async (result: SendResult) => {
      assert.equal(await c.retry(c.started), 202);
      assert.equal((await c.get(c.ended)).next_attempt_at, null, "call.ended waits behind call.started");
      const { ids, claimed } = await c.claim();
      assert.deepEqual(ids, [c.started], "only call.started is claimed");
      await c.complete(claimed[0]!, result, policy);
    };
    // Still down: the retry fails, and ended keeps its hour instead of an attempt now.
    await retryStartedOnce(failed());
    assert.equal((await c.get(c.started)).status, "failed");
    const waiting = await c.get(c.ended);
    assert.equal(waiting.next_attempt_at, new Date(hourLater).toISOString());
    assert.equal(waiting.attempt_count, 1, "no attempt of call.ended was spent");
    // Up again: the retry succeeds, and ended goes at once.
    await retryStartedOnce(ok());
    assert.equal((await c.get(c.started)).status, "succeeded");
    const released = await c.get(c.ended);
    assert.ok(released.next_attempt_at !== null && Date.parse(released.next_attempt_at) < hourLater);
    assert.deepEqual((await c.claim()).ids, [c.ended]);
  });

  test(`${backend.name}: a manual retry of a delivery waiting for its next retry leaves its schedule alone: a failure goes back to that retry, whose failure takes the schedule's next step`, async (t) => {
    const c = await oneCall(t, backend);
    const policy = policyOf([5_000, 300_000, 1_800_000]);
    // started went through; ended failed twice and waits 5 minutes for its third attempt.
    const retryAt = Date.now() + 300_000;
    await c.set(c.started, { status: "succeeded", next_attempt_at: null });
    await c.set(c.ended, { status: "pending", next_attempt_at: retryAt, attempt_count: 2 });
    const attemptOnce = async (result: SendResult, at = Date.now()) => {
      const { ids, claimed } = await c.claim(at);
      assert.deepEqual(ids, [c.ended]);
      await c.complete(claimed[0]!, result, policy, at);
    };
    // Retried by hand twice before its attempt (the second keeps the first's retry time): due now.
    for (let i = 0; i < 2; i++) assert.equal(await c.retry(c.ended), 202);
    assert.ok(Date.parse((await c.get(c.ended)).next_attempt_at!) < retryAt);
    await attemptOnce(failed());
    let d = await c.get(c.ended);
    assert.equal(d.status, "pending");
    assert.equal(d.next_attempt_at, new Date(retryAt).toISOString(), "back to the retry it was waiting for");
    assert.equal(d.attempt_count, 3, "the manual attempt is logged and counted");
    // Once more by hand, failing again: still the same retry time.
    assert.equal(await c.retry(c.ended), 202);
    await attemptOnce(failed());
    d = await c.get(c.ended);
    assert.equal(d.next_attempt_at, new Date(retryAt).toISOString());
    assert.equal(d.attempt_count, 4);
    // The retry itself, at its time, fails: the next delay is the schedule's third (30 min), as
    // if no manual attempt had been made; counting them would have spent the schedule.
    await attemptOnce(failed(), retryAt);
    d = await c.get(c.ended);
    assert.equal(d.status, "pending");
    assert.equal(d.next_attempt_at, new Date(retryAt + 1_800_000).toISOString());
    assert.equal(d.attempt_count, 5);
    // A manual retry that succeeds ends it, as before.
    assert.equal(await c.retry(c.ended), 202);
    await attemptOnce(ok());
    assert.equal((await c.get(c.ended)).status, "succeeded");
  });

  test(`${backend.name}: a manual attempt keeps to a Retry-After, and one lost with its process is still a manual one`, async (t) => {
    const c = await oneCall(t, backend);
    const policy = policyOf([5_000, 300_000, 1_800_000]);
    await c.set(c.started, { status: "succeeded", next_attempt_at: null });
    await c.set(c.ended, { status: "pending", next_attempt_at: Date.now() + 60_000, attempt_count: 2 });
    // A manual attempt answered 429 with Retry-After 10 min: not back in 1 min, but in 10.
    assert.equal(await c.retry(c.ended), 202);
    const first = await c.claim();
    const at = Date.now();
    await completeBatch(
      c.store,
      [{ ...outcome(first.claimed[0]!, failed(429), at), retryAfterMs: 600_000 }],
      policy,
      at,
    );
    const resumeAt = at + 600_000;
    assert.equal((await c.get(c.ended)).next_attempt_at, new Date(resumeAt).toISOString());
    // Another, whose process dies: its lease runs out and the next claim counts it (lease_expired).
    assert.equal(await c.retry(c.ended), 202);
    await claimDue(c.store, { now: Date.now(), limit: 10, leaseMs: 1, exclude: [] });
    const takeover = await c.claim(Date.now() + 10);
    assert.deepEqual(takeover.ids, [c.ended]);
    await c.complete(takeover.claimed[0]!, failed(), policy);
    const d = await c.get(c.ended);
    assert.equal(d.next_attempt_at, new Date(resumeAt).toISOString(), "back to the kept time");
    assert.equal(d.attempt_count, 5, "2 scheduled, the 429, the lost one, the takeover");
    // The retry at its time fails: the schedule's third step, as if no manual attempt had been made.
    const due = await c.claim(resumeAt);
    await c.complete(due.claimed[0]!, failed(), policy, resumeAt);
    const after = await c.get(c.ended);
    assert.equal(after.status, "pending");
    assert.equal(after.next_attempt_at, new Date(resumeAt + 1_800_000).toISOString());
  });

  test(`${backend.name}: a delivery retried by hand, then held back behind a re-opened earlier event that fails again, goes back to its own retry time`, async (t) => {
    const c = await oneCall(t, backend);
    const hourLater = Date.now() + 3_600_000;
    await c.set(c.started, { status: "failed", next_attempt_at: null, attempt_count: 3 });
    await c.set(c.ended, { status: "pending", next_attempt_at: hourLater, attempt_count: 1 });
    // ended retried by hand (due now, its hour kept), then started re-opened: ended parked.
    assert.equal(await c.retry(c.ended), 202);
    assert.equal(await c.retry(c.started), 202);
    assert.equal((await c.get(c.ended)).next_attempt_at, null);
    const { ids, claimed } = await c.claim();
    assert.deepEqual(ids, [c.started]);
    await c.complete(claimed[0]!, failed(), policyOf([5_000]));
    // started failed again: ended is due at its hour, not at the moment of its manual retry.
    assert.equal((await c.get(c.ended)).next_attempt_at, new Date(hourLater).toISOString());
  });

  test(`${backend.name}: a later event claimed and handed back unattempted while an earlier one was re-opened waits behind that one`, async (t) => {
    const c = await oneCall(t, backend);
    // started given up; ended (released by that) due now.
    await c.set(c.started, { status: "failed", next_attempt_at: null, attempt_count: 4 });
    await c.set(c.ended, { status: "pending", next_attempt_at: Date.now() });
    // A worker claims ended; before it sends it (a rate limit, a full group, a shutdown), started
    // is retried by hand, which leaves the claimed ended alone, as in flight.
    const { ids, claimed } = await c.claim();
    assert.deepEqual(ids, [c.ended]);
    assert.equal(await c.retry(c.started), 202);
    // Handed back unattempted: it waits behind started, which goes first.
    await releaseLeases(c.store, claimed, Date.now());
    const row = await c.get(c.ended);
    assert.equal(row.status, "pending");
    assert.equal(row.next_attempt_at, null, "parked behind call.started");
    const due = await c.claim();
    assert.deepEqual(due.ids, [c.started]);
    // started succeeds: ended goes.
    await c.complete(due.claimed[0]!, ok(), policyOf([1_000]));
    assert.deepEqual((await c.claim()).ids, [c.ended]);
  });
}

describe("retries raced on PostgreSQL", () => {
  // A retry locks the delivery's call before the delivery, as completions, recovers and
  // transitions do. It used to lock the delivery first: a worker writing its outcomes again after
  // a commit whose answer was lost (it locks the call, then the delivery) deadlocked with it.
  test("a retry and a completion written again after a lost answer, on one delivery, do not deadlock", async () => {
    const db = await postgresBackend.fresh();
    const rx = await startReceiver();
    const api = await spawnServer({
      dataDir: db.dataDir,
      env: { KLEN_DATABASE_URL: db.databaseUrl },
      role: "api",
    });
    const worker = await openStore(db.databaseUrl);
    const holder = await openStore(db.databaseUrl);
    try {
      const { agentId } = await setupAccount(api.api, { endpointUrl: rx.url });
      const c = await api.api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: "+15550100077",
      });
      assert.equal((await api.api.post(`/v1/calls/${c.body.id}/start`, {})).status, 200);
      const now = Date.now();
      const [claimed] = await claimDue(worker, { now, limit: 1, leaseMs: 60_000, exclude: [] });
      assert.ok(claimed);
      const sent = outcome(claimed, ok(), now, rx.url);
      const policy = { schedule: [1_000], disableAfterMs: 86_400_000, random: () => 0.5 };
      // It committed; the worker did not hear back.
      await completeBatch(worker, [sent], policy, now);
      const waiters = async () =>
        (
          await sql`SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`.execute(
            worker.db,
          )
        ).rows.length;
      // The delivery's row held, so that both wait on it in turn.
      let release!: () => void;
      const held = new Promise<void>((r) => {
        release = r;
      });
      let holding = false;
      const holdingTx = holder.db.transaction().execute(async (trx) => {
        await trx.selectFrom("deliveries").select("id").where("id", "=", claimed.id).forUpdate().execute();
        holding = true;
        await held;
      });
      await waitFor("the delivery held", () => holding);
      const retry = api.api.post(`/v1/deliveries/${claimed.id}/retry`);
      await waitFor("the retry waiting", async () => (await waiters()) >= 1);
      const again = completeBatch(worker, [sent], policy, now + 500, { mayBeRecorded: true });
      await waitFor("the rewrite waiting too", async () => (await waiters()) >= 2);
      release();
      await holdingTx;
      const [answer] = await Promise.all([retry, again]);
      assert.equal(answer.status, 202, JSON.stringify(answer.body));
      const logged = await worker.db
        .selectFrom("attempts")
        .select("number")
        .where("delivery_id", "=", claimed.id)
        .execute();
      assert.deepEqual(
        logged.map((a) => Number(a.number)),
        [1],
        "the rewrite added nothing",
      );
    } finally {
      await holder.close();
      await worker.close();
      await api.kill();
      await rx.close();
      await db.cleanup();
    }
  });

  test("ten retries at once of each delivery: never two attempts of one delivery at once, one number each", async () => {
    const db = await postgresBackend.fresh();
    // Each answer takes a while, so a second attempt that overlapped would be seen.
    let open = 0;
    let overlaps = 0;
    const openById = new Map<string, number>();
    const rx = createServer((req, res) => {
      req.resume();
      const id = String(req.headers["webhook-id"]);
      const n = (openById.get(id) ?? 0) + 1;
      openById.set(id, n);
      if (n > 1) overlaps++;
      open++;
      setTimeout(() => {
        openById.set(id, (openById.get(id) ?? 1) - 1);
        open--;
        res.end("ok");
      }, 150);
    });
    await new Promise<void>((r) => rx.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(rx.address() as AddressInfo).port}/`;
    const server = await spawnServer({ dataDir: db.dataDir, env: { KLEN_DATABASE_URL: db.databaseUrl } });
    try {
      const { agentId } = await setupAccount(server.api, { endpointUrl: url });
      for (let i = 0; i < 12; i++) {
        const c = await server.api.post("/v1/calls", {
          agent_id: agentId,
          type: "outbound",
          phone_number: `+155506000${String(i).padStart(2, "0")}`,
        });
        await server.api.post(`/v1/calls/${c.body.id}/start`, {});
      }
      const all = async () => (await server.api.get("/v1/deliveries?limit=100")).body.data as Delivery[];
      await waitFor("the first attempts", async () =>
        (await all()).every((d) => d.status === "succeeded") ? true : undefined,
      );
      const answers = await Promise.all(
        (await all()).flatMap((d) =>
          Array.from({ length: 10 }, () => server.api.post(`/v1/deliveries/${d.id}/retry`)),
        ),
      );
      for (const a of answers) assert.ok(a.status === 202 || a.status === 409, JSON.stringify(a.body));
      await waitFor("every retry settled", async () =>
        open === 0 && (await all()).every((d) => d.status === "succeeded") ? true : undefined,
      );
      assert.equal(overlaps, 0, "a delivery was sent again while an attempt of it was open");
      for (const d of await all()) {
        const numbers = d.attempts.map((a) => a.number);
        assert.deepEqual(
          numbers,
          numbers.map((_, i) => i + 1),
          `${d.id}: attempts ${numbers.join(",")}`,
        );
        assert.equal(d.attempt_count, numbers.length);
        assert.ok(numbers.length >= 2, "at least one retry went out");
      }
    } finally {
      await server.kill();
      await new Promise<void>((r) => rx.close(() => r()));
      await db.cleanup();
    }
  });
});
