import { type RawBuilder, sql } from "kysely";
import type { DialectCaps } from "../storage/store.js";
import type { Db } from "../storage/types.js";

/**
 * On PostgreSQL, locks the rows of the calls whose deliveries are about to be re-opened, against
 * both a transition of one of these calls (which holds its row for update while it fans out) and
 * a completion releasing the next event of one (which share-locks it): each then either sees the
 * re-opened delivery and leaves its own parked behind it, or has committed before and is seen
 * here. A share lock, as this was, let a completion run beside it: neither saw the other's
 * uncommitted change, and the completion released a later event next to the re-opened earlier one.
 */
export async function lockCallsOfEndpoint(
  trx: Db,
  caps: DialectCaps,
  scope: { endpointId: string; callIds?: readonly number[]; status?: string },
): Promise<void> {
  if (!caps.rowLocks) return;
  // Given the calls, they are locked as they are: looking for them among the endpoint's
  // deliveries would read every delivery it ever had.
  const calls =
    scope.callIds ??
    trx
      .selectFrom("deliveries")
      .select("call_id")
      .where("endpoint_id", "=", scope.endpointId)
      .$if(scope.status !== undefined, (q) => q.where("status", "=", scope.status!));
  await trx
    .selectFrom("calls")
    .select("id")
    .where("id", "in", calls)
    .orderBy("id")
    .forNoKeyUpdate()
    .execute();
}

/** A parked delivery's release time: the retry time it kept (`resume_at`) if still ahead, else `now`. */
export const resumeOrNow = (now: unknown) => sql`CASE WHEN resume_at > ${now} THEN resume_at ELSE ${now} END`;

/**
 * SQL condition, beside `recover_jobs j` (a replay's, `replaying`): j has yet to make the delivery
 * of an event of this call before `seq` that it will replay: in its range, past where it got to,
 * taken by the endpoint's filter (as its batches read it: the JSON text of `event_types` and
 * `agent_ids`, written by JSON.stringify), not a test call aimed at another endpoint, and with no
 * delivery to the endpoint yet (delivery/replay.ts).
 */
function awaitingReplay(endpointId: RawBuilder<unknown>, callId: unknown, seq: unknown) {
  return sql<boolean>`EXISTS (
    SELECT 1 FROM events ev
    JOIN calls c ON c.id = ev.call_id
    JOIN endpoints ep ON ep.id = ${endpointId}
    WHERE ev.call_id = ${callId} AND ev.seq < ${seq}
      AND ev.created_at >= j.since AND ev.created_at <= j.until
      AND ev.id > COALESCE(j.after_event_id, '')
      AND (ep.event_types = '[]' OR ep.event_types LIKE ('%"' || ev.event_type || '"%'))
      AND (ep.agent_ids = '[]'
        OR REPLACE(REPLACE(ep.agent_ids, '[', ','), ']', ',') LIKE ('%,' || CAST(c.agent_id AS TEXT) || ',%'))
      AND (c.only_endpoint_id IS NULL OR c.only_endpoint_id = ${endpointId})
      AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = ev.id AND d.endpoint_id = ${endpointId}))`;
}

/**
 * SQL condition, beside `recover_jobs j`: job j is running and has yet to make pending an earlier
 * delivery of this call to this endpoint: a recover, a failed one in its range of a call it has
 * yet to reach, which it will re-open (delivery/recover.ts); a replay, the delivery of an event
 * before `seq` (above). A delivery of that call waits behind it as it would behind a pending one:
 * a new one (events/emit.ts) is made parked, one pending when the job was asked is parked then
 * (`holdForJobs`), one in flight is parked when handed back or given its next retry, and neither a
 * completion nor the ordering sweep (claim.ts `releaseOrphans`) releases it until then.
 * The status test comes first, alone, so that SQLite uses the whole (endpoint_id, status) index.
 */
export function awaitingJob(endpointId: RawBuilder<unknown>, callId: unknown, seq: unknown) {
  return sql<boolean>`j.status IN ('running', 'replaying') AND (
    j.status = 'replaying' AND ${awaitingReplay(endpointId, callId, seq)}
    OR j.status = 'running' AND j.after_call_id < ${callId} AND EXISTS (
      SELECT 1 FROM deliveries f
      WHERE f.endpoint_id = ${endpointId} AND f.call_id = ${callId} AND f.status = 'failed'
        AND f.event_seq < ${seq} AND f.created_at >= j.since AND f.created_at <= j.until))`;
}

/** `EXISTS (…)` of this condition: a job of its endpoint awaits this delivery (`deliveries`), as above. */
export const awaitedJob = sql`
  SELECT 1 FROM recover_jobs j
  WHERE j.endpoint_id = deliveries.endpoint_id
    AND ${awaitingJob(sql`deliveries.endpoint_id`, sql`deliveries.call_id`, sql`deliveries.event_seq`)}`;

/**
 * PostgreSQL: the first of the two keys of the transaction-scoped advisory lock that orders an
 * account's fan-outs (shared) against the recording of a background recover or replay (exclusive),
 * whose `holdForJobs` must see every delivery committed before it and every fan-out after it must
 * see the job. Row locks cannot do it: the calls a job will hold need not have a row to lock yet.
 */
const JOB_LOCK = sql.lit(0x6b6c);

/** Taken by each fan-out (events/emit.ts) on PostgreSQL, shared: see `JOB_LOCK`. */
export const fanOutLock = (account: unknown) =>
  sql`SELECT pg_advisory_xact_lock_shared(${JOB_LOCK}, ${account})`;

/** Taken by the recording of a background job on PostgreSQL, exclusive: see `JOB_LOCK`. */
export async function lockFanOuts(trx: Db, caps: DialectCaps, accountId: number): Promise<void> {
  if (caps.rowLocks) await sql`SELECT pg_advisory_xact_lock(${JOB_LOCK}, ${accountId})`.execute(trx);
}

/**
 * Parks the endpoint's pending deliveries, not in flight, that a job just recorded awaits (an
 * earlier event of their call it will re-open or replay), keeping their retry time (`resume_at`),
 * as `reorderChains` parks those behind an earlier pending one: a delivery waiting for its next
 * retry went out at that time, before the job had reached its call.
 */
export async function holdForJobs(trx: Db, endpointId: string, now: number): Promise<void> {
  await sql`
    UPDATE deliveries SET resume_at = COALESCE(resume_at, next_attempt_at), next_attempt_at = NULL, updated_at = ${now}
    WHERE endpoint_id = ${endpointId}
      AND status = 'pending' AND next_attempt_at IS NOT NULL
      AND (leased_until IS NULL OR leased_until <= ${now})
      AND EXISTS (${awaitedJob})`.execute(trx);
}

/** `EXISTS (…)` of this condition: a pending delivery of the same chain comes before this one. */
export const earlierPending = sql`
  SELECT 1 FROM deliveries e
  WHERE e.endpoint_id = deliveries.endpoint_id AND e.call_id = deliveries.call_id
    AND e.status = 'pending' AND e.event_seq < deliveries.event_seq`;

/**
 * Puts the (endpoint, call) chains in scope back in order after deliveries were re-opened by hand
 * (retry, recover), so that re-opened events still go out one at a time, in their call's order:
 * - parks again the pending deliveries that wait for their next retry, are not in flight, and now
 *   have an earlier pending delivery: a re-opened earlier event that had been given up released
 *   them, and they must not overtake it (an attempt already in flight cannot be called back). The
 *   retry's time is kept (`resume_at`) for a release after the earlier one fails again;
 * - makes due the first pending delivery of each chain that is parked and has no earlier pending
 *   one (and no job awaits: see `awaitingJob`), at the retry time it kept if that is still ahead.
 *   The rest follow as the deliveries before them finish.
 */
export async function reorderChains(
  trx: Db,
  scope: { endpointId: string; callIds?: readonly number[] },
  now: number,
): Promise<void> {
  const call =
    scope.callIds === undefined
      ? sql``
      : sql`AND call_id IN (${sql.join(scope.callIds.map((id) => sql`${id}`))})`;
  // Given the calls, the chain index finds their rows; SQLite otherwise chose the due index's
  // parked entries (next_attempt_at NULL) of every endpoint and call, which grow with a recover's
  // batches (32 ms a batch at 100,000 parked). The unary plus keeps it off that index.
  const parked = scope.callIds === undefined ? sql`next_attempt_at IS NULL` : sql`+next_attempt_at IS NULL`;
  await sql`
    UPDATE deliveries SET resume_at = COALESCE(resume_at, next_attempt_at), next_attempt_at = NULL, updated_at = ${now}
    WHERE endpoint_id = ${scope.endpointId} ${call}
      AND status = 'pending' AND next_attempt_at IS NOT NULL
      AND (leased_until IS NULL OR leased_until <= ${now})
      AND EXISTS (${earlierPending})`.execute(trx);
  await sql`
    UPDATE deliveries SET next_attempt_at = ${resumeOrNow(now)}, resume_at = NULL, updated_at = ${now}
    WHERE endpoint_id = ${scope.endpointId} ${call}
      AND status = 'pending' AND ${parked}
      AND NOT EXISTS (${earlierPending}) AND NOT EXISTS (${awaitedJob})`.execute(trx);
}

/**
 * Parks these pending deliveries (just given their next retry) where an earlier delivery of their
 * chain is pending: a manual retry or recover re-opened it while their attempt was in flight, so
 * `reorderChains` could not park them then. The earlier one's completion releases them.
 */
export async function parkBehindEarlier(trx: Db, ids: readonly string[], now: number): Promise<void> {
  await sql`
    UPDATE deliveries SET resume_at = next_attempt_at, next_attempt_at = NULL, updated_at = ${now}
    WHERE id IN (${sql.join(ids.map((id) => sql`${id}`))})
      AND status = 'pending' AND next_attempt_at IS NOT NULL
      AND (EXISTS (${earlierPending}) OR EXISTS (${awaitedJob}))`.execute(trx);
}
