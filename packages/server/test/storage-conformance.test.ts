import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { sql } from "kysely";
import { createAccount } from "../src/accounts/accounts.js";
import { canonicalJson, digest, runIdempotent } from "../src/api/idempotency.js";
import { applyTransition, newCallRow } from "../src/calls/service.js";
import type { Action } from "../src/calls/transitions.js";
import { type Claimed, claimDue, dueHead, releaseLeases, releaseOrphans } from "../src/delivery/claim.js";
import { completeBatch, type Outcome } from "../src/delivery/complete.js";
import { recoverBatch } from "../src/delivery/recover.js";
import { migrate } from "../src/storage/migrate.js";
import { migrations } from "../src/storage/migrations.js";
import { openStore, type Store } from "../src/storage/store.js";
import type { Db } from "../src/storage/types.js";
import { newEndpointSecret, newId } from "../src/util/ids.js";
import { backends } from "./helpers/backends.js";
import { failed, ok, outcome } from "./helpers/outcomes.js";
import { stopPostgres } from "./helpers/postgres.js";
import { waitFor } from "./helpers/wait.js";

// One contract, every backend (Kysely's way): the queries the dispatcher and the API rely on must
// behave the same on SQLite and PostgreSQL, including under concurrency where PostgreSQL has it.

after(() => stopPostgres());

const LEASE = 60_000;
const policy = { schedule: [1_000, 2_000], disableAfterMs: 5 * 86_400_000, random: () => 0.5 };

interface Fixture {
  store: Store;
  url: string;
  accountId: number;
  agentId: number;
  endpointIds: string[];
  /** Another store on the same database: a separate pool, as another process would have. */
  other(): Promise<Store>;
  /**
   * Where a concurrent request comes from: another pool on PostgreSQL (another process), the same
   * store on SQLite, whose deployment is one process with one writer connection.
   */
  peer(): Promise<Store>;
  newCall(): Promise<number>;
  step(callId: number, action: Action, db?: Store): Promise<string>;
  delivery(id: string): Promise<{ status: string; next_attempt_at: number | null; claim_token: number }>;
}

/**
 * A call's first delivery claimed twice: by a worker whose 1 s lease then runs out (`stale`), and
 * by the one that takes it over a second later (`fresh`).
 */
async function staleAndFresh(f: Fixture) {
  await f.step(await f.newCall(), "start");
  const t0 = Date.now() + 1_000;
  const [stale] = await claimDue(f.store, { now: t0, limit: 1, leaseMs: 1_000, exclude: [] });
  const [fresh] = await claimDue(f.store, { now: t0 + 1_000, limit: 1, leaseMs: LEASE, exclude: [] });
  assert.ok(stale && fresh && stale.id === fresh.id);
  return { t0, stale, fresh };
}

for (const backend of backends()) {
  describe(`storage conformance: ${backend.name}`, () => {
    const cleanups: Array<() => Promise<void>> = [];
    after(async () => {
      for (const c of cleanups.reverse()) await c();
    });

    async function fixture(endpoints = 1): Promise<Fixture> {
      const fresh = await backend.fresh();
      const store = await openStore(fresh.databaseUrl);
      const stores = [store];
      cleanups.push(async () => {
        for (const s of stores) await s.close();
        await fresh.cleanup();
      });
      await migrate(store);
      const now = Date.now();
      const { account } = await store.db.transaction().execute((trx) => createAccount(trx, "conformance"));
      const agent = await store.db
        .insertInto("agents")
        .values({
          account_id: account.id,
          name: "Agent",
          assistant_id: null,
          created_at: now,
          deleted_at: null,
        })
        .returning("id")
        .executeTakeFirstOrThrow();
      const endpointIds: string[] = [];
      for (let i = 0; i < endpoints; i++) {
        const id = newId("ep", now);
        await store.db
          .insertInto("endpoints")
          .values({
            id,
            account_id: account.id,
            url: `http://127.0.0.1:9/${i}`,
            secret: newEndpointSecret(),
            created_at: now,
            updated_at: now,
          } as never)
          .execute();
        endpointIds.push(id);
      }
      const f: Fixture = {
        store,
        url: fresh.databaseUrl,
        accountId: account.id,
        agentId: agent.id,
        endpointIds,
        async other() {
          const s = await openStore(fresh.databaseUrl);
          stores.push(s);
          return s;
        },
        async peer() {
          return store.caps.crossProcessNotify ? f.other() : store;
        },
        async newCall() {
          const t = Date.now();
          const row = await store.db
            .insertInto("calls")
            .values(
              newCallRow({
                accountId: account.id,
                agentId: agent.id,
                type: "inbound",
                phoneNumber: "+15551234567",
                contactId: null,
                klenCallId: null,
                now: t,
              }),
            )
            .returning("id")
            .executeTakeFirstOrThrow();
          return row.id;
        },
        async step(callId, action, db = store) {
          const r = await db.db
            .transaction()
            .execute((trx) =>
              applyTransition(
                trx,
                db.caps,
                account.id,
                callId,
                action,
                { now: Date.now() },
                action === "transcript" ? async () => ({ transcript: "Agent: Hello." }) : undefined,
              ),
            );
          return r.eventId;
        },
        async delivery(id) {
          return store.db
            .selectFrom("deliveries")
            .select(["status", "next_attempt_at", "claim_token"])
            .where("id", "=", id)
            .executeTakeFirstOrThrow();
        },
      };
      return f;
    }

    test("migrations are idempotent and integer columns come back as numbers", async () => {
      const f = await fixture();
      assert.deepEqual(await migrate(f.store), [], "a second migrate applies nothing");
      const applied = await f.store.db
        .selectFrom("klen_migrations" as never)
        .select("id" as never)
        .execute();
      assert.equal(applied.length, migrations.length);
      assert.equal(typeof f.accountId, "number");
      assert.equal(typeof f.agentId, "number");
      const callId = await f.newCall();
      assert.equal(typeof callId, "number");
      await f.step(callId, "start");
      const d = await f.store.db.selectFrom("deliveries").selectAll().executeTakeFirstOrThrow();
      for (const k of ["event_seq", "call_id", "next_attempt_at", "claim_token", "created_at"] as const) {
        assert.equal(typeof d[k], "number", `deliveries.${k} is a number`);
      }
      const count = await f.store.db
        .selectFrom("deliveries")
        .select((eb) => eb.fn.countAll<number>().as("n"))
        .executeTakeFirstOrThrow();
      assert.equal(count.n, 1, "count(*) (BIGINT on PostgreSQL) is a number");
    });

    // SQLite is one process's file (its migration lock is a no-op); PostgreSQL is shared by
    // processes that may all start at the same moment.
    if (backend.name === "postgres")
      test("concurrent first starts migrate exactly once", async () => {
        const fresh = await backend.fresh();
        const stores = await Promise.all([1, 2, 3].map(() => openStore(fresh.databaseUrl)));
        try {
          const ran = await Promise.all(stores.map((s) => migrate(s)));
          assert.deepEqual(
            ran.flat().sort((a, b) => a - b),
            migrations.map((m) => m.id),
            "each migration ran once in all",
          );
        } finally {
          for (const s of stores) await s.close();
          await fresh.cleanup();
        }
      });

    test("concurrent claimers get every due delivery exactly once", async () => {
      const f = await fixture(2);
      for (let i = 0; i < 60; i++) await f.step(await f.newCall(), "start");
      const total = 120;
      const claimers = await Promise.all([f.store, await f.other(), await f.other(), await f.other()]);
      const now = Date.now() + 1_000;
      const got: string[] = [];
      await Promise.all(
        claimers.map(async (s) => {
          for (;;) {
            const batch = await claimDue(s, { now, limit: 7, leaseMs: LEASE, exclude: [] });
            if (batch.length === 0) return;
            got.push(...batch.map((c) => c.id));
          }
        }),
      );
      assert.equal(got.length, total, "every due delivery claimed");
      assert.equal(new Set(got).size, total, "no delivery claimed twice");
      const again = await claimDue(f.store, { now, limit: 500, leaseMs: LEASE, exclude: [] });
      assert.equal(again.length, 0, "claimed deliveries are not due until their lease ends");
    });

    test("claims carry payload and endpoint, and skip saturated endpoints", async () => {
      const f = await fixture(2);
      await f.step(await f.newCall(), "start");
      const now = Date.now() + 1_000;
      const first = await claimDue(f.store, { now, limit: 10, leaseMs: LEASE, exclude: [f.endpointIds[0]!] });
      assert.equal(first.length, 1);
      assert.equal(first[0]!.endpointId, f.endpointIds[1]);
      assert.equal(first[0]!.endpoint?.id, f.endpointIds[1]);
      assert.equal(JSON.parse(first[0]!.payload).event_type, "call.started");
      assert.equal(first[0]!.claimToken, 1);
      const rest = await claimDue(f.store, { now, limit: 10, leaseMs: LEASE, exclude: [] });
      assert.deepEqual(
        rest.map((c) => c.endpointId),
        [f.endpointIds[0]],
      );
    });

    test("a claim that leaves endpoints out can start at the first due delivery of the others", async () => {
      const f = await fixture(2);
      const [a, b] = f.endpointIds as [string, string];
      for (let i = 0; i < 2; i++) await f.step(await f.newCall(), "start");
      // Endpoint a's deliveries due at 1,000 and 2,000; b's at 1,500 and 2,500.
      const rows = await f.store.db
        .selectFrom("deliveries")
        .select(["id", "endpoint_id"])
        .orderBy("id")
        .execute();
      const due = { [a]: [1_000, 2_000], [b]: [1_500, 2_500] };
      for (const r of rows) {
        await f.store.db
          .updateTable("deliveries")
          .set({ next_attempt_at: due[r.endpoint_id]!.shift()! })
          .where("id", "=", r.id)
          .execute();
      }
      assert.equal(await dueHead(f.store, { now: 3_000, exclude: [a] }), 1_500);
      assert.equal(await dueHead(f.store, { now: 3_000, exclude: [b] }), 1_000);
      assert.equal(await dueHead(f.store, { now: 1_400, exclude: [a] }), undefined, "b has nothing due yet");
      assert.equal(await dueHead(f.store, { now: 3_000, exclude: [a, b] }), undefined);
      // From a time on: what lies before it is not looked at.
      assert.equal(await dueHead(f.store, { now: 3_000, exclude: [a], from: 1_600 }), 2_500);
      assert.equal(
        await dueHead(f.store, { now: 3_000, exclude: [b], from: 1_000 }),
        1_000,
        "from is inclusive",
      );
      const from = await claimDue(f.store, {
        now: 3_000,
        limit: 10,
        leaseMs: LEASE,
        exclude: [a],
        from: 2_000,
      });
      assert.deepEqual(
        from.map((c) => c.endpointId),
        [b],
        "only b's delivery due at 2,500: the floor is the caller's promise, 1,500 is not looked at",
      );
      const rest = await claimDue(f.store, { now: 3_000, limit: 10, leaseMs: LEASE, exclude: [a] });
      assert.equal(rest.length, 1, "without a floor b's delivery due at 1,500 is found");
      assert.notEqual(rest[0]!.id, from[0]!.id);
      assert.equal(await dueHead(f.store, { now: 3_000, exclude: [a] }), undefined, "b has nothing left due");
    });

    test("an expired lease makes a claimed delivery due again, with a new fence", async () => {
      const f = await fixture();
      await f.step(await f.newCall(), "start");
      const t0 = Date.now() + 1_000;
      const [a] = await claimDue(f.store, { now: t0, limit: 10, leaseMs: 5_000, exclude: [] });
      assert.ok(a);
      assert.equal(
        (await claimDue(f.store, { now: t0 + 4_999, limit: 10, leaseMs: 5_000, exclude: [] })).length,
        0,
        "not due while the lease runs",
      );
      const [b] = await claimDue(f.store, { now: t0 + 5_000, limit: 10, leaseMs: 5_000, exclude: [] });
      assert.equal(b?.id, a.id, "due again when the lease ends");
      assert.equal(b.claimToken, a.claimToken + 1);
    });

    test("taking over a lease that ran out logs the lost attempt; a handed-back lease logs none", async () => {
      const f = await fixture();
      const callId = await f.newCall();
      const eventId = await f.step(callId, "start");
      const t0 = Date.now() + 1_000;
      const attempts = (id: string) =>
        f.store.db.selectFrom("attempts").selectAll().where("delivery_id", "=", id).orderBy("id").execute();
      const [a] = await claimDue(f.store, { now: t0, limit: 10, leaseMs: 5_000, exclude: [] });
      assert.ok(a);
      assert.equal(a.attemptCount, 0);
      // Handed back (a stopping worker, a rate limit): nothing was sent, nothing is logged.
      await releaseLeases(f.store, [a], t0 + 10);
      const [again] = await claimDue(f.store, { now: t0 + 20, limit: 10, leaseMs: 5_000, exclude: [] });
      assert.equal(again?.attemptCount, 0, "a handed-back lease is not an attempt");
      assert.deepEqual(await attempts(a.id), []);

      // Its process dies. Once the lease has run out, a manual retry makes it due (and moves
      // updated_at); the next claim counts the attempt and logs it.
      await f.store.db
        .updateTable("deliveries")
        .set({ next_attempt_at: t0 + 5_020, updated_at: t0 + 5_020 })
        .where("id", "=", a.id)
        .execute();
      const [b] = await claimDue(f.store, { now: t0 + 5_020, limit: 10, leaseMs: 5_000, exclude: [] });
      assert.equal(b?.id, a.id);
      assert.equal(b.attemptCount, 1, "the lost attempt counts");
      const [lost, ...more] = await attempts(a.id);
      assert.equal(more.length, 0);
      assert.equal(Number(lost!.number), 1);
      assert.equal(Number(lost!.started_at), t0 + 20, "started when the lost lease was taken");
      assert.equal(Number(lost!.duration_ms), 5_000, "the lease's length");
      assert.equal(
        lost!.url,
        (
          await f.store.db
            .selectFrom("endpoints")
            .select("url")
            .where("id", "=", a.endpointId)
            .executeTakeFirstOrThrow()
        ).url,
      );
      assert.deepEqual(JSON.parse(lost!.request_headers), { "webhook-id": eventId });
      assert.equal(lost!.status_code, null);
      assert.match(
        lost!.error ?? "",
        /^lease_expired: .*may have reached the endpoint, or may not have been sent$/,
      );

      // The new attempt is the next number; a late finisher of the lost one (it stalled rather
      // than died) replaces the lease_expired row with what really happened: one row a number.
      await completeBatch(f.store, [outcome(b, ok(), t0 + 5_030)], policy, t0 + 5_030);
      await completeBatch(f.store, [outcome(again, failed(), t0 + 5_040)], policy, t0 + 5_040);
      const log = (await attempts(a.id))
        .map((r) => [Number(r.number), r.error?.split(":")[0] ?? null])
        .sort((x, y) => Number(x[0]) - Number(y[0]));
      assert.deepEqual(log, [
        [1, "http_status"],
        [2, null],
      ]);
      const d = await f.store.db
        .selectFrom("deliveries")
        .select(["status", "attempt_count", "leased_until"])
        .where("id", "=", a.id)
        .executeTakeFirstOrThrow();
      assert.deepEqual(
        { ...d, attempt_count: Number(d.attempt_count) },
        { status: "succeeded", attempt_count: 2, leased_until: null },
      );
    });

    test("a stalled worker's late success replaces the lease_expired row its takeover logged", async () => {
      const f = await fixture();
      const { t0, stale, fresh } = await staleAndFresh(f);
      const log = async () =>
        (
          await f.store.db
            .selectFrom("attempts")
            .select(["number", "error", "status_code"])
            .where("delivery_id", "=", stale.id)
            .orderBy("number")
            .execute()
        ).map((r) => [Number(r.number), r.error?.split(":")[0] ?? null, r.status_code]);
      assert.deepEqual(await log(), [[1, "lease_expired", null]], "the takeover logged the lost attempt");
      // The stalled worker's answer comes in after all, then the new holder's.
      await completeBatch(f.store, [outcome(stale, ok(), t0 + 1_500)], policy, t0 + 1_500);
      assert.deepEqual(await log(), [[1, null, 200]], "what attempt 1 really did");
      await completeBatch(f.store, [outcome(fresh, ok(), t0 + 2_000)], policy, t0 + 2_000);
      assert.deepEqual(await log(), [
        [1, null, 200],
        [2, null, 200],
      ]);
    });

    test("fencing: a stale completion does not overwrite the newer attempt", async () => {
      const f = await fixture();
      const { t0, stale, fresh } = await staleAndFresh(f);
      // The first worker finishes late with a failure: it must not reschedule the delivery.
      await completeBatch(f.store, [outcome(stale, failed(), t0 + 2_000)], policy, t0 + 2_000);
      let d = await f.delivery(fresh.id);
      assert.equal(d.status, "pending");
      assert.equal(d.next_attempt_at, t0 + 1_000 + LEASE, "the newer lease is untouched");
      await completeBatch(f.store, [outcome(fresh, ok(), t0 + 3_000)], policy, t0 + 3_000);
      d = await f.delivery(fresh.id);
      assert.equal(d.status, "succeeded");
      // A stale failure arriving after the success changes nothing either.
      await completeBatch(f.store, [outcome(stale, failed(), t0 + 4_000)], policy, t0 + 4_000);
      assert.equal((await f.delivery(fresh.id)).status, "succeeded");
    });

    test("a batch written again after a commit whose answer was lost is recorded once", async () => {
      const f = await fixture();
      const callId = await f.newCall();
      await f.step(callId, "start");
      await f.step(callId, "end");
      const t0 = Date.now() + 1_000;
      const claimed = await claimDue(f.store, { now: t0, limit: 10, leaseMs: LEASE, exclude: [] });
      assert.equal(claimed.length, 1, "call.ended waits behind call.started");
      const [first] = claimed;
      const batch = [outcome(first!, failed(), t0 + 10)];
      await completeBatch(f.store, batch, policy, t0 + 20);
      const after = await f.delivery(first!.id);
      // The dispatcher did not hear back from that commit and writes the same batch again.
      await completeBatch(f.store, batch, policy, t0 + 520, { mayBeRecorded: true });
      const logged = await f.store.db
        .selectFrom("attempts")
        .select("number")
        .where("delivery_id", "=", first!.id)
        .execute();
      assert.deepEqual(
        logged.map((a) => Number(a.number)),
        [1],
        "one attempt in the log",
      );
      const again = await f.store.db
        .selectFrom("deliveries")
        .select(["attempt_count", "next_attempt_at", "status"])
        .where("id", "=", first!.id)
        .executeTakeFirstOrThrow();
      assert.equal(Number(again.attempt_count), 1, "no retry step skipped");
      assert.equal(
        Number(again.next_attempt_at),
        Number(after.next_attempt_at),
        "the schedule as first written",
      );
      assert.equal(again.status, "pending");

      // A new attempt of the same delivery in a batch written again is still recorded.
      const [retry] = await claimDue(f.store, {
        now: Number(after.next_attempt_at),
        limit: 10,
        leaseMs: LEASE,
        exclude: [],
      });
      assert.equal(retry?.id, first!.id);
      await completeBatch(
        f.store,
        [outcome(retry!, ok(), Number(after.next_attempt_at) + 5)],
        policy,
        t0 + 9_000,
        {
          mayBeRecorded: true,
        },
      );
      assert.equal((await f.delivery(first!.id)).status, "succeeded");
      assert.equal(
        (await f.store.db.selectFrom("attempts").select("id").where("delivery_id", "=", first!.id).execute())
          .length,
        2,
      );
    });

    test("a retry's delay runs from the end of the failed attempt, and the completion names when it comes due", async () => {
      const f = await fixture();
      const callId = await f.newCall();
      await f.step(callId, "start");
      const t0 = Date.now() + 1_000;
      const [claimed] = await claimDue(f.store, { now: t0, limit: 1, leaseMs: LEASE, exclude: [] });
      assert.ok(claimed);
      // Started at t0, failed after 3 ms, recorded 400 ms later (a batch waiting to be written).
      const recordedAt = t0 + 400;
      const done = await completeBatch(f.store, [outcome(claimed, failed(), t0)], policy, recordedAt);
      const at = t0 + 3 + policy.schedule[0]!;
      assert.deepEqual(done.retries, [{ at, endpointId: claimed.endpointId }]);
      const row = await f.delivery(claimed.id);
      assert.equal(row.status, "pending");
      assert.equal(Number(row.next_attempt_at), at);
    });

    test("a parked delivery is released when its predecessor succeeds or is given up", async () => {
      const f = await fixture();
      const callId = await f.newCall();
      await f.step(callId, "start");
      await f.step(callId, "end");
      await f.step(callId, "transcript");
      const rows = await f.store.db
        .selectFrom("deliveries")
        .select(["id", "next_attempt_at"])
        .orderBy("event_seq")
        .execute();
      assert.equal(rows.length, 3);
      assert.ok(rows[0]!.next_attempt_at !== null);
      assert.equal(rows[1]!.next_attempt_at, null, "second event waits behind the first");
      assert.equal(rows[2]!.next_attempt_at, null, "third event waits too");
      const now = Date.now() + 1_000;
      const [first] = await claimDue(f.store, { now, limit: 10, leaseMs: LEASE, exclude: [] });
      assert.equal(first?.id, rows[0]!.id, "only the head of the chain is due");
      const done = await completeBatch(f.store, [outcome(first, ok(), now)], policy, now);
      assert.deepEqual(
        done,
        { released: 1, disabled: [], succeeded: 1, failed: {}, retries: [] },
        "the completion says it released one",
      );
      const [second, ...none] = await claimDue(f.store, { now, limit: 10, leaseMs: LEASE, exclude: [] });
      assert.equal(second?.id, rows[1]!.id, "released by the predecessor's success");
      assert.equal(none.length, 0);
      // Given up (the last attempt of a one-step schedule fails): the next one is released too.
      const giveUp = { ...policy, schedule: [] };
      const gaveUp = await completeBatch(f.store, [outcome(second, failed(), now)], giveUp, now);
      assert.deepEqual(gaveUp.failed, { retries_exhausted: 1 }, "counted for the metric, with its reason");
      assert.equal((await f.delivery(second.id)).status, "failed");
      const [third] = await claimDue(f.store, { now, limit: 10, leaseMs: LEASE, exclude: [] });
      assert.equal(third?.id, rows[2]!.id, "released when the predecessor was given up");
      const last = await completeBatch(f.store, [outcome(third, ok(), now)], policy, now);
      assert.deepEqual(
        last,
        { released: 0, disabled: [], succeeded: 1, failed: {}, retries: [] },
        "nothing was waiting behind the last one",
      );
    });

    test("a completion racing a new event of the same call never strands it parked", async () => {
      const f = await fixture();
      const other = await f.peer();
      let stranded = 0;
      for (let i = 0; i < 15; i++) {
        const callId = await f.newCall();
        await f.step(callId, "start");
        const now = Date.now() + 1_000;
        const [head] = await claimDue(f.store, { now, limit: 1, leaseMs: LEASE, exclude: [] });
        assert.ok(head);
        // The next event is emitted while the head's success is being recorded.
        await Promise.all([
          completeBatch(f.store, [outcome(head, ok(), now)], policy, now),
          f.step(callId, "end", other),
        ]);
        const next = await f.store.db
          .selectFrom("deliveries")
          .select(["next_attempt_at"])
          .where("call_id", "=", callId)
          .where("status", "=", "pending")
          .executeTakeFirstOrThrow();
        if (next.next_attempt_at === null) stranded++;
      }
      assert.equal(stranded, 0, "the next delivery is due, whichever transaction went first");
    });

    test("releaseOrphans releases parked deliveries with no earlier pending one", async () => {
      const f = await fixture();
      const callId = await f.newCall();
      await f.step(callId, "start");
      await f.step(callId, "end");
      const [head, parked] = await f.store.db
        .selectFrom("deliveries")
        .select(["id"])
        .orderBy("event_seq")
        .execute();
      assert.ok(head && parked);
      const now = Date.now();
      assert.equal(await releaseOrphans(f.store, now), 0, "nothing to release while the head is pending");
      // A crash left the head settled without releasing its successor.
      await f.store.db
        .updateTable("deliveries")
        .set({ status: "succeeded" })
        .where("id", "=", head.id)
        .execute();
      assert.equal(await releaseOrphans(f.store, now), 1);
      const d = await f.delivery(parked.id);
      assert.equal(d.next_attempt_at, now);
    });

    test("releaseLeases hands held deliveries back at once, fenced", async () => {
      const f = await fixture(2);
      await f.step(await f.newCall(), "start");
      const now = Date.now() + 1_000;
      const held = await claimDue(f.store, { now, limit: 10, leaseMs: LEASE, exclude: [] });
      assert.equal(held.length, 2);
      // One of them was meanwhile re-claimed by someone else (its lease ran out): not released.
      const [h0, h1] = held as [Claimed, Claimed];
      await f.store.db
        .updateTable("deliveries")
        .set({ claim_token: h1.claimToken + 1, next_attempt_at: now + LEASE })
        .where("id", "=", h1.id)
        .execute();
      await releaseLeases(f.store, held, now);
      assert.equal((await f.delivery(h0.id)).next_attempt_at, now);
      assert.equal((await f.delivery(h1.id)).next_attempt_at, now + LEASE);
    });

    test("batched completion records many outcomes in one go", async () => {
      const f = await fixture(3);
      for (let i = 0; i < 40; i++) await f.step(await f.newCall(), "start");
      const now = Date.now() + 1_000;
      const claimed = await claimDue(f.store, { now, limit: 500, leaseMs: LEASE, exclude: [] });
      assert.equal(claimed.length, 120);
      const outcomes = claimed.map((c, i) => outcome(c, i % 3 === 0 ? failed(503) : ok(), now));
      await completeBatch(f.store, outcomes, policy, now);
      const byStatus = await f.store.db
        .selectFrom("deliveries")
        .select(["status", (eb) => eb.fn.countAll<number>().as("n")])
        .groupBy("status")
        .execute();
      const counts = Object.fromEntries(byStatus.map((r) => [r.status, Number(r.n)]));
      assert.deepEqual(counts, { pending: 40, succeeded: 80 });
      const attempts = await f.store.db
        .selectFrom("attempts")
        .select((eb) => eb.fn.countAll<number>().as("n"))
        .executeTakeFirstOrThrow();
      assert.equal(Number(attempts.n), 120);
      const retry = await f.store.db
        .selectFrom("deliveries")
        .select(["next_attempt_at", "attempt_count"])
        .where("status", "=", "pending")
        .execute();
      for (const r of retry) {
        assert.equal(r.attempt_count, 1);
        assert.equal(r.next_attempt_at, now + 1_000, "scheduled by the retry schedule, not the lease");
      }
    });

    // The later event's attempt was in flight when the recover re-opened the earlier one, so the
    // recover could not park it; when that attempt fails, its retry must wait behind the earlier
    // event rather than go out beside it (an audit saw call.ended retried, and given up, while the
    // re-opened call.started was still being sent).
    test("a later event whose in-flight attempt fails after a recover re-opened an earlier one waits behind it", async () => {
      const f = await fixture();
      const callId = await f.newCall();
      await f.step(callId, "start");
      await f.step(callId, "end");
      const now = Date.now() + 1_000;
      const [c0] = await claimDue(f.store, { now, limit: 1, leaseMs: LEASE, exclude: [] });
      await completeBatch(f.store, [outcome(c0!, failed(), now)], { ...policy, schedule: [] }, now);
      const [c1] = await claimDue(f.store, { now, limit: 1, leaseMs: LEASE, exclude: [] });
      assert.ok(c1 && c1.id !== c0!.id, "the second event is in flight after the first was given up");
      await f.store.db.transaction().execute(async (trx) => {
        const scope = { endpointId: f.endpointIds[0]!, since: 0, until: now + 60_000 };
        assert.equal((await recoverBatch(trx, f.store.caps, scope, -1, 100, now)).queued, 1);
      });
      await completeBatch(f.store, [outcome(c1!, failed(), now + 100)], policy, now + 100);
      const second = await f.delivery(c1!.id);
      assert.equal(second.status, "pending", "it has retries left");
      assert.equal(second.next_attempt_at, null, "its retry waits behind the re-opened first event");
      assert.notEqual((await f.delivery(c0!.id)).next_attempt_at, null, "the first event is due");
      // The first one's success releases it.
      const [again] = await claimDue(f.store, { now: now + 200, limit: 5, leaseMs: LEASE, exclude: [] });
      assert.equal(again?.id, c0!.id);
      await completeBatch(f.store, [outcome(again!, ok(), now + 300)], policy, now + 300);
      assert.equal((await f.delivery(c1!.id)).next_attempt_at, now + 300, "due once the first is delivered");
    });

    /** How many sessions of this database wait for a lock. */
    const lockWaiters = async (f: Fixture) =>
      (
        await sql`SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`.execute(
          f.store.db,
        )
      ).rows.length;

    /**
     * A call with these events to the endpoint, its first given up and its second then in flight
     * (claimed with `leaseMs`).
     */
    async function firstGivenUp(f: Fixture, steps: readonly Action[], leaseMs = LEASE) {
      const callId = await f.newCall();
      for (const step of steps) await f.step(callId, step);
      const ids = (await f.store.db.selectFrom("deliveries").select("id").orderBy("event_seq").execute()).map(
        (r) => r.id,
      );
      const now = Date.now() + 1_000;
      const [c0] = await claimDue(f.store, { now, limit: 1, leaseMs: LEASE, exclude: [] });
      await completeBatch(f.store, [outcome(c0!, failed(), now)], { ...policy, schedule: [] }, now);
      const [c1] = await claimDue(f.store, { now, limit: 1, leaseMs, exclude: [] });
      assert.equal(c1?.id, ids[1], "the second event is in flight after the first was given up");
      return { callId, ids, now, c0: c0!, c1: c1! };
    }

    /** Recovers the given-up first event and claims it: both events are then in flight. */
    async function reopenedInFlight(f: Fixture, now: number, firstId: string) {
      await f.store.db.transaction().execute(async (trx) => {
        const scope = { endpointId: f.endpointIds[0]!, since: 0, until: now + 60_000 };
        assert.equal((await recoverBatch(trx, f.store.caps, scope, -1, 100, now)).queued, 1);
      });
      const [again] = await claimDue(f.store, { now, limit: 5, leaseMs: LEASE, exclude: [] });
      assert.equal(again?.id, firstId, "the re-opened earlier event is in flight too");
      return again!;
    }

    /** Holds the endpoint rows from another session, so completions that write them stop there. */
    async function holdEndpoints(f: Fixture) {
      const holder = await f.other();
      let release!: () => void;
      const held = new Promise<void>((r) => {
        release = r;
      });
      let holding = false;
      const done = holder.db.transaction().execute(async (trx) => {
        await trx.selectFrom("endpoints").select("id").forUpdate().execute();
        holding = true;
        await held;
      });
      await waitFor("the endpoint rows held", () => holding);
      return { release, done };
    }

    /** A transaction of `f` that runs `first`, then waits for `open()` before `rest`. */
    async function gated(f: Fixture, first: (trx: Db) => Promise<void>, rest: (trx: Db) => Promise<void>) {
      let open!: () => void;
      const gate = new Promise<void>((r) => {
        open = r;
      });
      let started = false;
      const done = f.store.db.transaction().execute(async (trx) => {
        await first(trx);
        started = true;
        await gate;
        await rest(trx);
      });
      await waitFor("the gated transaction past its first step", () => started);
      return { open, done };
    }

    /** A completion in `store`, and whether it is done, for waiting until it waits or is done. */
    function completing(store: Store, batch: Outcome[], now: number) {
      const c = { finished: false, done: Promise.resolve() };
      c.done = completeBatch(store, batch, policy, now).then(() => {
        c.finished = true;
      });
      return c;
    }

    // A recover (or retry) re-opening a call's given-up first event while another worker records
    // the success of its second: whichever commits first, the third event must wait behind the
    // re-opened first. Both used to share-lock the call, which did not keep them apart.
    if (backend.name === "postgres")
      test("a recover racing a completion of the same call leaves the later event parked behind the re-opened one", async () => {
        const f = await fixture();
        const other = await f.other();
        const { now, c1 } = await firstGivenUp(f, ["start", "end", "transcript"]);
        const scope = { endpointId: f.endpointIds[0]!, since: 0, until: now + 60_000 };
        const recovering = await gated(
          f,
          async (trx) => {
            assert.equal((await recoverBatch(trx, f.store.caps, scope, -1, 100, now)).queued, 1);
          },
          async () => {},
        );
        const c = completing(other, [outcome(c1, ok(), now)], now);
        // Until the completion waits for the recover's lock (or, unfixed, has gone past it).
        await waitFor("the completion waiting or done", async () => c.finished || (await lockWaiters(f)) > 0);
        recovering.open();
        await Promise.all([recovering.done, c.done]);
        const rows = await f.store.db
          .selectFrom("deliveries")
          .select(["id", "status", "next_attempt_at"])
          .orderBy("event_seq")
          .execute();
        assert.deepEqual(
          rows.map((r) => r.status),
          ["pending", "succeeded", "pending"],
        );
        assert.notEqual(rows[0]!.next_attempt_at, null, "the re-opened first event is due");
        assert.equal(rows[2]!.next_attempt_at, null, "the third event waits behind the re-opened first");
      });

    // Two workers completing two events of one call at once: one records the later event's failed
    // attempt (retries left) and parks it behind the re-opened earlier one, the other the earlier
    // one's success, which releases what waits behind it. Each must see the other's change.
    if (backend.name === "postgres")
      test("a later event parked by one worker while another completes the earlier one is released, not left parked", async () => {
        const f = await fixture();
        const other = await f.other();
        const { now, c0, c1 } = await firstGivenUp(f, ["start", "end"]);
        const again = await reopenedInFlight(f, now, c0.id);
        // So that only the failing batch writes the endpoint row (its failure clock).
        await f.store.db.updateTable("endpoints").set({ failing_since: null }).execute();
        // The endpoint row held: the failing batch stops there, after its park, before its commit.
        const held = await holdEndpoints(f);
        const failing = completing(other, [outcome(c1, failed(), now + 100)], now + 100);
        await waitFor("the failing batch waiting", async () => (await lockWaiters(f)) > 0);
        const succeeding = completing(f.store, [outcome(again, ok(), now + 200)], now + 200);
        // Until the success waits for the failing batch's lock on the call (or, unfixed, is done).
        await waitFor(
          "the success waiting or done",
          async () => succeeding.finished || (await lockWaiters(f)) > 1,
        );
        held.release();
        await Promise.all([held.done, failing.done, succeeding.done]);
        const later = await f.delivery(c1.id);
        assert.equal((await f.delivery(c0.id)).status, "succeeded");
        assert.equal(later.status, "pending");
        assert.notEqual(later.next_attempt_at, null, "released by the earlier event's success");
      });

    // The same with two successes: the re-opened earlier event and the later one, both in flight
    // after the recover, succeed at once in two workers; the third event must then go out.
    if (backend.name === "postgres")
      test("two events of one chain succeeding at once in two workers release the next", async () => {
        const f = await fixture();
        const other = await f.other();
        const { now, c0, c1 } = await firstGivenUp(f, ["start", "end", "transcript"]);
        const again = await reopenedInFlight(f, now, c0.id);
        // The endpoint row held (both write its failure clock, which the given-up attempt started):
        // each batch stops there, past its release, before its commit.
        const held = await holdEndpoints(f);
        const second = completing(other, [outcome(c1, ok(), now + 100)], now + 100);
        await waitFor("the later event's batch waiting", async () => (await lockWaiters(f)) >= 1);
        const first = completing(f.store, [outcome(again, ok(), now + 200)], now + 200);
        await waitFor("the earlier event's batch waiting too", async () => (await lockWaiters(f)) >= 2);
        held.release();
        await Promise.all([held.done, second.done, first.done]);
        const rows = await f.store.db
          .selectFrom("deliveries")
          .select(["status", "next_attempt_at"])
          .orderBy("event_seq")
          .execute();
        assert.deepEqual(
          rows.map((r) => r.status),
          ["succeeded", "succeeded", "pending"],
        );
        assert.notEqual(rows[2]!.next_attempt_at, null, "the third event is due");
      });

    // A recover holding the call while a completion records a failure of an attempt whose lease
    // ran out: the completion used to lock that delivery's row first and then wait for the call,
    // while the recover, holding the call, waited for that row (deadlock detected, batch lost).
    if (backend.name === "postgres")
      test("a completion and a recover of the same call, a lease run out between them, do not deadlock", async () => {
        const f = await fixture();
        const other = await f.other();
        const { callId, now, c0, c1 } = await firstGivenUp(f, ["start", "end"], 5);
        const later = now + 1_000; // the lease of c1 has run out
        const recovering = await gated(
          f,
          async (trx) => {
            await trx.selectFrom("calls").select("id").where("id", "=", callId).forNoKeyUpdate().execute();
          },
          async (trx) => {
            const scope = { endpointId: f.endpointIds[0]!, since: 0, until: later };
            await recoverBatch(trx, f.store.caps, scope, -1, 100, later);
          },
        );
        const c = completing(other, [outcome(c1, failed(), later)], later);
        await waitFor("the completion waiting or done", async () => c.finished || (await lockWaiters(f)) > 0);
        recovering.open();
        await Promise.all([recovering.done, c.done]);
        const first = await f.delivery(c0.id);
        const second = await f.delivery(c1.id);
        assert.equal(first.status, "pending", "re-opened");
        assert.notEqual(first.next_attempt_at, null, "the re-opened earlier event is due");
        assert.equal(second.status, "pending");
        assert.equal(second.next_attempt_at, null, "its retry waits behind it");
      });

    // Row locks exist on PostgreSQL only (SQLite has one writer): two workers' batches, one with
    // endpoint A failing and B succeeding, the other the opposite, both endpoints already failing.
    if (backend.name === "postgres")
      test("two workers' completions with the same endpoints failing and succeeding do not deadlock", async () => {
        const f = await fixture(2);
        const [e1, e2] = f.endpointIds as [string, string];
        const now = Date.now() + 1_000;
        await f.store.db
          .updateTable("endpoints")
          .set({ failing_since: now - 60_000 })
          .execute();
        await f.step(await f.newCall(), "start");
        await f.step(await f.newCall(), "start");
        const claimed = await claimDue(f.store, { now, limit: 10, leaseMs: LEASE, exclude: [] });
        assert.equal(claimed.length, 4);
        const callIds = [...new Set(claimed.map((c) => c.callId))].sort((a, b) => a - b);
        const of = (call: number, ep: string) =>
          claimed.find((c) => c.callId === callIds[call] && c.endpointId === ep)!;
        const batchA = [outcome(of(0, e1), failed(), now), outcome(of(0, e2), ok(), now)];
        const batchB = [outcome(of(1, e2), failed(), now), outcome(of(1, e1), ok(), now)];
        // A third session holds e1 so that both batches are under way before either can finish.
        const holder = await f.other();
        const held = holder.db.transaction().execute(async (trx) => {
          await trx.selectFrom("endpoints").select("id").where("id", "=", e1).forUpdate().execute();
          const waiting = async () =>
            Number(
              (
                await sql<{ n: number }>`SELECT count(*) AS n FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'`.execute(f.store.db)
              ).rows[0]!.n,
            );
          const [a, b] = [f.store, await f.other()];
          const runA = completeBatch(a, batchA, policy, now);
          await waitFor("the first batch waits", async () => (await waiting()) >= 1);
          const runB = completeBatch(b, batchB, policy, now);
          await waitFor("both batches wait", async () => (await waiting()) >= 2);
          return { runA, runB };
        });
        const { runA, runB } = await held; // the holder commits: both go on
        const results = await Promise.allSettled([runA, runB]);
        assert.deepEqual(
          results.map((r) => (r.status === "rejected" ? String((r.reason as Error).message) : "ok")),
          ["ok", "ok"],
        );
        const statuses = await f.store.db.selectFrom("deliveries").select(["id", "status"]).execute();
        const byId = new Map(statuses.map((r) => [r.id, r.status]));
        assert.equal(byId.get(of(0, e2).id), "succeeded");
        assert.equal(byId.get(of(1, e1).id), "succeeded");
        assert.equal(byId.get(of(0, e1).id), "pending");
        assert.equal(byId.get(of(1, e2).id), "pending");
      });

    test("idempotency key race: two identical requests, one transition, one replay", async () => {
      const f = await fixture();
      const callId = await f.newCall();
      const second = await f.peer();
      const request = {
        accountId: f.accountId,
        key: "same-key",
        method: "POST",
        path: `/v1/calls/${callId}/start`,
        bodyDigest: "{}",
      };
      const handler = (s: Store) => async (trx: Parameters<Parameters<typeof runIdempotent>[2]>[0]) => {
        const r = await applyTransition(trx, s.caps, f.accountId, callId, "start", { now: Date.now() });
        return { status: 200, body: { event: r.eventId } };
      };
      const results = await Promise.all([
        runIdempotent(f.store, request, handler(f.store)),
        runIdempotent(second, request, handler(second)),
      ]);
      assert.deepEqual(results.map((r) => r.replayed).sort(), [false, true]);
      assert.equal(results[0].status, 200);
      assert.equal(results[1].status, 200);
      assert.deepEqual(results[0].body, results[1].body, "the replay is the stored response");
      const events = await f.store.db
        .selectFrom("events")
        .select("id")
        .where("call_id", "=", callId)
        .execute();
      assert.equal(events.length, 1, "one transition, one event");
    });

    test("idempotency: a key stored with the body in sent order still replays; another body is a 422", async () => {
      const f = await fixture();
      const base = { accountId: f.accountId, key: "order-key", method: "POST", path: "/v1/agents" };
      let made = 0;
      const handler = async () => ({ status: 201, body: { made: ++made } });
      // As an earlier version stored it: the digest of the body as sent.
      const first = await runIdempotent(
        f.store,
        { ...base, bodyDigest: digest('{"name":"A","assistant_id":"x"}') },
        handler,
      );
      assert.equal(first.replayed, false);
      const repeat = await runIdempotent(
        f.store,
        {
          ...base,
          bodyDigest: digest(canonicalJson({ name: "A", assistant_id: "x" })),
          bodyDigestAsSent: digest('{"name":"A","assistant_id":"x"}'),
        },
        handler,
      );
      assert.equal(repeat.replayed, true);
      assert.deepEqual(repeat.body, { made: 1 });
      const other = await runIdempotent(
        f.store,
        { ...base, bodyDigest: digest(canonicalJson({ name: "B", assistant_id: "x" })) },
        handler,
      ).catch((e: unknown) => e);
      assert.equal((other as { code?: string }).code, "idempotency_key_reused");
      assert.equal(made, 1);
    });

    test("unique violations are told apart from other errors", async () => {
      const f = await fixture();
      const row = { account_id: f.accountId, key_hash: "h", prefix: "p", created_at: 1 };
      await f.store.db.insertInto("api_keys").values(row).execute();
      const dup = await f.store.db
        .insertInto("api_keys")
        .values(row)
        .execute()
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      assert.ok(dup, "duplicate insert fails");
      assert.equal(f.store.isUniqueViolation(dup), true);
      const other = await f.store.db
        .insertInto("api_keys")
        .values({ ...row, key_hash: null as never })
        .execute()
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      assert.ok(other, "NOT NULL violation fails");
      assert.equal(f.store.isUniqueViolation(other), false);
    });
  });
}
