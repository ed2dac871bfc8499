import { sql } from "kysely";
import { type ColumnType, inListOf, listValue } from "../storage/lists.js";
import { LEASE_EXPIRED_LIKE } from "../storage/migrations.js";
import { prepared, preparedResult, rowListArgs, rowListSlot } from "../storage/prepared.js";
import type { DialectCaps, Store } from "../storage/store.js";
import type { Db } from "../storage/types.js";
import { formatDuration } from "../util/units.js";
import { awaitedJob, parkBehindEarlier, resumeOrNow } from "./chains.js";
import { type Claimed, PAIR_TYPES } from "./claim.js";
import { honourRetryAfter, nextAttempt } from "./schedule.js";
import type { SendResult } from "./send.js";

/** One finished attempt, or a delivery settled without an attempt (its endpoint is gone or disabled). */
export interface Outcome {
  claimed: Claimed;
  startedAt: number;
  url: string;
  requestHeaders: Record<string, string>;
  result: SendResult | null;
  /** Why a delivery was settled without an attempt. */
  skipped?: "endpoint_disabled" | "endpoint_deleted";
  retryAfterMs?: number;
}

/**
 * Why a delivery was given up (the `reason` of `klen_deliveries_finished_total`): its schedule was
 * spent, the one attempt of a manual retry or recover failed, the endpoint answered 410 Gone, or it
 * was settled without an attempt because its endpoint was disabled or deleted.
 */
/** Why a delivery was given up (the `reason` of `klen_deliveries_finished_total`). */
export const FAIL_REASONS = [
  "retries_exhausted",
  "one_attempt",
  "gone",
  "endpoint_disabled",
  "endpoint_deleted",
] as const;
export type FailReason = (typeof FAIL_REASONS)[number];

/**
 * What one completed batch finished and disabled. The counts leave out outcomes fenced out by a
 * lease that ran out and was taken over; a fenced-out 410 still disables its endpoint (it said so).
 */
export interface Completion {
  released: number;
  disabled: Array<{ id: string; reason: string; cause: "gone" | "failing" }>;
  succeeded: number;
  failed: Partial<Record<FailReason, number>>;
  /** The retries this batch scheduled: when each comes due, and its endpoint. */
  retries: Array<{ at: number; endpointId: string }>;
}

export interface CompletionPolicy {
  schedule: readonly number[];
  disableAfterMs: number;
  random: () => number;
}

/** Column types of an attempt row, in the INSERT's column order. */
const ATTEMPT_TYPES: ColumnType[] = [
  "text",
  "integer",
  "bigint",
  "text",
  "text",
  "integer",
  "text",
  "integer",
  "text",
];

/**
 * The outcomes of `outcomes` whose attempt is not in the log yet (`delivery_id`, number and start
 * time), and those settled without an attempt. For a batch written again after a write whose
 * commit may have happened (the connection broke while it was answered): without this, its
 * attempts would be logged twice and their deliveries' `attempt_count` raised twice — a retry
 * step skipped — since the claim token that fences the update is still the same.
 */
async function notYetRecorded(trx: Db, caps: DialectCaps, outcomes: Outcome[]): Promise<Outcome[]> {
  const attempted = outcomes.filter((o) => o.result !== null);
  if (attempted.length === 0) return outcomes;
  const ids = [...new Set(attempted.map((o) => o.claimed.id))];
  // PostgreSQL: the earlier write may still be committing (its answer was lost, not its commit).
  // It holds the rows of the deliveries it updated until it ends; waiting for them here makes the
  // read below see its attempts. (SQLite has one writer: the earlier write has ended.)
  if (caps.rowLocks)
    await trx
      .selectFrom("deliveries")
      .select("id")
      .where("id", "in", ids)
      .orderBy("id")
      .forUpdate()
      .execute();
  // Not the `lease_expired` rows a takeover logged (migration 14): they may share a late
  // finisher's number and start time.
  const logged = await trx
    .selectFrom("attempts")
    .select(["delivery_id", "number", "started_at"])
    .where("delivery_id", "in", ids)
    .where((eb) => eb.or([eb("error", "is", null), eb("error", "not like", LEASE_EXPIRED_LIKE)]))
    .execute();
  const seen = new Set(logged.map((a) => `${a.delivery_id} ${Number(a.number)} ${Number(a.started_at)}`));
  return outcomes.filter(
    (o) => o.result === null || !seen.has(`${o.claimed.id} ${o.claimed.attemptCount + 1} ${o.startedAt}`),
  );
}

/**
 * Records a batch of outcomes in one transaction: the attempt log rows, each delivery's new state
 * (fenced on its claim token, so a lease that ran out and was re-claimed is not overwritten), the
 * release of the next delivery of each finished chain, and the endpoints' failure clocks
 * (automatic disable after `disableAfterMs` of continuous failure, at once on 410 Gone).
 * Batching is what keeps the database from being the limit: one commit per batch, not per attempt.
 * `mayBeRecorded`: the batch is written again after a failed write that may have committed
 * (see notYetRecorded).
 */
export async function completeBatch(
  store: Store,
  batch: Outcome[],
  policy: CompletionPolicy,
  now: number,
  opts: { mayBeRecorded?: boolean } = {},
): Promise<Completion> {
  if (batch.length === 0) return { released: 0, disabled: [], succeeded: 0, failed: {}, retries: [] };
  return store.db.transaction().execute(async (trx) => {
    // On PostgreSQL the batch's calls are locked first, before any delivery row, in id order: a
    // transition fanning out a new delivery, a manual retry or a recover re-opening an earlier one
    // lock the call and then its deliveries, so a completion that took a delivery row first and
    // then waited for the call deadlocked with them. Shared when every outcome is a success or
    // final of an ordinary attempt, so completions run side by side; exclusive when one may be
    // retried, which parks it behind an earlier pending event (a completion releasing that event
    // at the same time must see the park, or the park its release: each alone left the later
    // event parked with nothing before it, until the ordering sweep), or is a re-opened one.
    if (store.caps.rowLocks) {
      const callIds = [...new Set(batch.map((o) => o.claimed.callId))].sort((a, b) => a - b);
      // Two events of one chain are in flight at once only after a retry or recover re-opened the
      // earlier one (one_attempt): two successes sharing the lock each saw the other's event still
      // pending, and neither released the next.
      const mayRetry = batch.some(
        (o) => (o.result !== null && o.result.error !== null) || o.claimed.oneAttempt,
      );
      await (mayRetry ? lockCallsExclusive : lockCalls)(trx, store.caps, {
        ids: listValue(store.caps, callIds),
      });
    }
    // Written again after a write that may have committed: only what is not in the log yet.
    const outcomes = opts.mayBeRecorded ? await notYetRecorded(trx, store.caps, batch) : batch;
    const attempts = outcomes.filter((o) => o.result !== null);
    if (attempts.length > 0) {
      const rows = attempts.map((o) => {
        const r = o.result!;
        return [
          o.claimed.id,
          o.claimed.attemptCount + 1,
          o.startedAt,
          o.url,
          JSON.stringify(o.requestHeaders),
          r.statusCode,
          r.responseBody,
          r.durationMs,
          r.error === null ? null : r.errorMessage ? `${r.error}: ${r.errorMessage}` : r.error,
        ];
      });
      await insertAttempts(trx, store.caps, rowListArgs(store.caps, "rows", rows, ATTEMPT_TYPES));
    }

    const succeeded = attempts.filter((o) => o.result!.error === null);
    const finished: Array<{ claimed: Claimed; succeeded: boolean }> = [];
    let succeededCount = 0;
    const failed: Completion["failed"] = {};
    /** Attempts whose lease another worker took over meanwhile (fenced out below). */
    const lateAttempts: Outcome[] = [];
    if (succeeded.length > 0) {
      succeededCount = await fencedUpdate(
        trx,
        store,
        succeeded,
        { status: "succeeded", next_attempt_at: null, last_error: null },
        now,
      );
      finished.push(...succeeded.map((o) => ({ claimed: o.claimed, succeeded: true })));
      // Which ones is not known from the count; the rest match no lease_expired row (below).
      if (succeededCount < succeeded.length) lateAttempts.push(...succeeded);
    }

    const failingEndpoints = new Set<string>();
    const goneEndpoints = new Set<string>();
    /** Failed attempts given a retry: parked below if an earlier event of their chain is pending. */
    const retried: Claimed[] = [];
    const retries: Completion["retries"] = [];
    for (const o of outcomes) {
      if (o.result?.error === null) continue;
      const error =
        o.skipped ?? `${o.result!.error}${o.result!.statusCode ? ` ${o.result!.statusCode}` : ""}`;
      // The schedule's position: manual attempts made while it waited for a retry left out.
      const made = o.claimed.attemptCount + (o.result ? 1 : 0) - o.claimed.manualAttempts;
      const final = o.skipped || o.claimed.oneAttempt || o.result?.statusCode === 410;
      // A manual retry made it due before the retry it was waiting for: a failure goes back to that
      // retry, the schedule where it was. (One whose time has passed counts as that retry.)
      const backToKept =
        o.result !== null && !final && o.claimed.resumeAt !== null && o.claimed.resumeAt > now;
      // 410 Gone is the receiver saying no retry will do: the endpoint is disabled below.
      const next = final
        ? ({ final: true } as const)
        : backToKept
          ? // Its Retry-After still counts, as on any attempt.
            ({
              final: false,
              delayMs: honourRetryAfter(o.claimed.resumeAt! - now, policy.schedule, o.retryAfterMs),
            } as const)
          : nextAttempt(policy.schedule, made, policy.random, o.retryAfterMs);
      // The delay runs from the end of the failed attempt, not from when this batch records it
      // (up to a flush interval later, which pushed retries past the top of their jitter band).
      const ended = o.result ? Math.min(now, o.startedAt + o.result.durationMs) : now;
      const at = next.final ? null : (backToKept ? now : ended) + next.delayMs;
      const changed = await fencedUpdate(
        trx,
        store,
        [o],
        at === null
          ? { status: "failed", next_attempt_at: null, last_error: error }
          : { status: "pending", next_attempt_at: at, last_error: error },
        now,
        backToKept,
      );
      if (next.final) finished.push({ claimed: o.claimed, succeeded: false });
      else if (changed > 0) {
        retried.push(o.claimed);
        if (at !== null) retries.push({ at, endpointId: o.claimed.endpointId });
      }
      if (o.result && changed === 0) lateAttempts.push(o);
      if (next.final && changed > 0) {
        const reason: FailReason =
          o.skipped ??
          (o.result?.statusCode === 410
            ? "gone"
            : o.claimed.oneAttempt
              ? "one_attempt"
              : "retries_exhausted");
        failed[reason] = (failed[reason] ?? 0) + 1;
      }
      if (o.result) failingEndpoints.add(o.claimed.endpointId);
      if (o.result?.statusCode === 410) goneEndpoints.add(o.claimed.endpointId);
    }

    if (lateAttempts.length > 0) await replaceLeaseExpired(trx, lateAttempts);
    const released = finished.length > 0 ? await releaseNext(trx, store, finished, now) : 0;
    // A retry or recover re-opened an earlier event of the chain while this attempt was in flight
    // (reorderChains leaves leased rows alone): its retries wait behind that event, not beside it.
    if (retried.length > 0)
      await parkBehindEarlier(
        trx,
        retried.map((c) => c.id),
        now,
      );

    // The endpoints this batch disables, for the log.
    const disabled: Completion["disabled"] = [];
    if (failingEndpoints.size > 0 && store.caps.rowLocks) {
      // Every endpoint row this batch may write, locked once and in id order before the first
      // write: two workers' batches with the same endpoints failing in one and succeeding in the
      // other would otherwise lock them in opposite orders and deadlock (clearFailing's own lock
      // is in id order too). A succeeding endpoint whose clock is not running is not written.
      const failing = [...failingEndpoints];
      const succeeding = [...new Set(succeeded.map((o) => o.claimed.endpointId))];
      await trx
        .selectFrom("endpoints")
        .select("id")
        .where((eb) =>
          eb.or([
            eb("id", "in", failing),
            ...(succeeding.length > 0
              ? [eb.and([eb("id", "in", succeeding), eb("failing_since", "is not", null)])]
              : []),
          ]),
        )
        .orderBy("id")
        .forNoKeyUpdate()
        .execute();
    }
    if (failingEndpoints.size > 0) {
      const ids = [...failingEndpoints];
      await trx
        .updateTable("endpoints")
        .set({ failing_since: sql`COALESCE(failing_since, ${now})` })
        .where("id", "in", ids)
        .execute();
      const reason = `every attempt failed for ${formatDuration(policy.disableAfterMs)}`;
      const rows = await trx
        .updateTable("endpoints")
        .set({ disabled: 1, disabled_reason: reason, updated_at: now })
        .where("id", "in", ids)
        .where("disabled", "=", 0)
        .where("failing_since", "<=", now - policy.disableAfterMs)
        .returning("id")
        .execute();
      for (const r of rows) disabled.push({ id: r.id, reason, cause: "failing" });
    }
    if (goneEndpoints.size > 0) {
      const reason = "endpoint answered 410 Gone";
      const rows = await trx
        .updateTable("endpoints")
        .set({ disabled: 1, disabled_reason: reason, updated_at: now })
        .where("id", "in", [...goneEndpoints])
        .where("disabled", "=", 0)
        .returning("id")
        .execute();
      for (const r of rows) disabled.push({ id: r.id, reason, cause: "gone" });
    }
    // A success clears the failure clock (after the failures above, so a batch with both ends healthy).
    if (succeeded.length > 0) {
      const ids = [...new Set(succeeded.map((o) => o.claimed.endpointId))];
      await clearFailing(trx, store.caps, { ids: listValue(store.caps, ids) });
    }
    return { released, disabled, succeeded: succeededCount, failed, retries };
  });
}

// The statements of every completion, prepared (storage/prepared.ts): at one attempt per batch
// (an event at a time through the API) building them through Kysely cost more than running them.
const insertAttempts = prepared(
  (_db, p: Record<string, never>, caps) =>
    sql`
    INSERT INTO attempts (delivery_id, number, started_at, url, request_headers, status_code,
                          response_body, duration_ms, error)
    SELECT * FROM ${rowListSlot(p, "rows", caps, ATTEMPT_TYPES)} AS a`,
);

const clearFailing = prepared((db, p: Record<"ids", never>, caps) => {
  const update = db.updateTable("endpoints").set({ failing_since: null });
  if (!caps.rowLocks)
    return update.where(inListOf(caps, "id", p.ids, "text")).where("failing_since", "is not", null);
  // The rows locked in id order, as the failures' lock above takes them (no deadlock between the two).
  return update.where("id", "in", (eb) =>
    eb
      .selectFrom("endpoints")
      .select("id")
      .where(inListOf(caps, "id", p.ids, "text"))
      .where("failing_since", "is not", null)
      .orderBy("id")
      .forNoKeyUpdate(),
  );
});

type FenceSlots = Record<"status" | "next" | "error" | "now", never>;
/** `manual`: the attempt was a manual one made while it waited for a retry (counted apart). */
function fenced(db: Db, p: FenceSlots, caps: DialectCaps, attempted: boolean, manual = false) {
  return db
    .updateTable("deliveries")
    .set({
      status: p.status,
      next_attempt_at: p.next,
      last_error: p.error,
      leased_until: null,
      resume_at: null,
      updated_at: p.now,
      ...(attempted ? { attempt_count: sql`attempt_count + 1` } : {}),
      ...(manual ? { manual_attempts: sql`manual_attempts + 1` } : {}),
    })
    .where(sql<boolean>`(id, claim_token) IN ${rowListSlot(p, "pairs", caps, PAIR_TYPES)}`);
}
const fencedAttempted = preparedResult((db, p: FenceSlots, caps) => fenced(db, p, caps, true));
const fencedManual = preparedResult((db, p: FenceSlots, caps) => fenced(db, p, caps, true, true));
const fencedSkipped = preparedResult((db, p: FenceSlots, caps) => fenced(db, p, caps, false));

async function fencedUpdate(
  trx: Db,
  store: Store,
  outcomes: Outcome[],
  set: { status: string; next_attempt_at: number | null; last_error: string | null },
  now: number,
  manual = false,
): Promise<number> {
  const attempted = outcomes.some((o) => o.result !== null);
  const pairs = outcomes.map((o) => [o.claimed.id, o.claimed.claimToken]);
  const res = await (manual ? fencedManual : attempted ? fencedAttempted : fencedSkipped)(trx, store.caps, {
    status: set.status,
    next: set.next_attempt_at,
    error: set.last_error,
    now,
    ...rowListArgs(store.caps, "pairs", pairs, PAIR_TYPES),
  } as Record<keyof FenceSlots, unknown>);
  // The rows still on the outcomes' claim tokens: a lease that ran out and was taken over is not.
  return Number(res.numAffectedRows ?? 0);
}

/** Locks the calls' rows in id order, shared or (`FOR NO KEY UPDATE`) against each other. */
const callsLock = (exclusive: boolean) =>
  prepared((db, p: Record<"ids", never>, caps) => {
    const q = db
      .selectFrom("calls")
      .select("id")
      .where(inListOf(caps, "id", p.ids, "bigint"))
      .orderBy("id");
    return exclusive ? q.forNoKeyUpdate() : q.forShare();
  });
const lockCalls = callsLock(false);
const lockCallsExclusive = callsLock(true);
/** Column types of a chain, `(endpoint_id, call_id)`. */
const CHAIN_TYPES: ColumnType[] = ["text", "bigint"];
// The chains come from the claims in memory, so finding each one's next delivery is one descent of
// the chain index, without first reading the finished delivery back through the primary key.
// `+next_attempt_at`: SQLite would otherwise walk the due index over every parked row.
// After an earlier event that failed, a delivery parked while waiting for its next retry (by a
// manual retry or a recover of that earlier one) goes at that retry's time, not at once: the
// endpoint is still failing (migration 18). After one that succeeded, everything goes at once.
// Not while a background recover or replay has yet to make an earlier event of its call pending
// (events/emit.ts parked it for that): the job's batch for the call releases it.
const releaseChainsStatement = (afterFailure: boolean) =>
  prepared(
    (_db, p: Record<"now", never>, caps) =>
      sql`
    UPDATE deliveries SET next_attempt_at = ${afterFailure ? resumeOrNow(p.now) : p.now}, resume_at = NULL
    WHERE status = 'pending' AND +next_attempt_at IS NULL AND id IN (
      SELECT (
        SELECT n.id FROM deliveries n
        WHERE n.endpoint_id = c.endpoint_id AND n.call_id = c.call_id AND n.status = 'pending'
        ORDER BY n.event_seq LIMIT 1)
      FROM ${rowListSlot(p, "chains", caps, CHAIN_TYPES, ["endpoint_id", "call_id"])} AS c)
      AND NOT EXISTS (${awaitedJob})
    RETURNING id`,
  );
const releaseChains = releaseChainsStatement(false);
const releaseChainsAfterFailure = releaseChainsStatement(true);

/**
 * A process that stalled past its lease (rather than died) records its attempt after all: the
 * worker that took the delivery over logged that attempt as `lease_expired` (outcome unknown),
 * under the same number. The real outcome replaces it, so each number is one row and says what
 * happened. Current lease holders in the list match nothing: the lease_expired rows of a delivery
 * are numbered below its holder's attempt.
 */
async function replaceLeaseExpired(trx: Db, late: Outcome[]): Promise<void> {
  await trx
    .deleteFrom("attempts")
    .where("error", "like", LEASE_EXPIRED_LIKE)
    .where((eb) =>
      eb.or(
        late.map((o) =>
          eb.and([eb("delivery_id", "=", o.claimed.id), eb("number", "=", o.claimed.attemptCount + 1)]),
        ),
      ),
    )
    .execute();
}

/**
 * Releases the next parked delivery of every chain (endpoint, call) that just finished, and says
 * how many it released (the calls' rows already locked on PostgreSQL).
 */
async function releaseNext(
  trx: Db,
  store: Store,
  finished: Array<{ claimed: Claimed; succeeded: boolean }>,
  now: number,
): Promise<number> {
  const chains = new Map<string, { chain: [string, number]; succeeded: boolean }>();
  for (const { claimed: c, succeeded } of finished) {
    const key = `${c.endpointId} ${c.callId}`;
    const seen = chains.get(key);
    chains.set(key, { chain: [c.endpointId, c.callId], succeeded: succeeded || (seen?.succeeded ?? false) });
  }
  let released = 0;
  for (const [statement, succeeded] of [
    [releaseChains, true],
    [releaseChainsAfterFailure, false],
  ] as const) {
    const list = [...chains.values()].filter((c) => c.succeeded === succeeded).map((c) => c.chain);
    if (list.length === 0) continue;
    const args = rowListArgs(store.caps, "chains", list, CHAIN_TYPES);
    released += (await statement(trx, store.caps, { now, ...args } as Record<"now", unknown>)).length;
  }
  return released;
}
