import { type Selectable, sql } from "kysely";
import { type ColumnType, inListOf, listValue, rowList } from "../storage/lists.js";
import { prepared } from "../storage/prepared.js";
import type { Database } from "../storage/schema.js";
import type { DialectCaps, Store } from "../storage/store.js";
import { type Db, PENDING } from "../storage/types.js";
import { awaitedJob, earlierPending, resumeOrNow } from "./chains.js";

/** A delivery this worker holds a lease on, with what it needs to make the attempt. */
export interface Claimed {
  id: string;
  eventId: string;
  endpointId: string;
  callId: number;
  attemptCount: number;
  /** Re-opened by a manual retry or a recover: a failed attempt ends it (no schedule left to follow). */
  oneAttempt: boolean;
  /**
   * Made due by a manual retry while it waited for this retry time: a failed attempt goes back to
   * it (migration 18). Null otherwise.
   */
  resumeAt: number | null;
  /** Manual attempts among `attemptCount`, left out of the schedule's position. */
  manualAttempts: number;
  claimToken: number;
  payload: string;
  endpoint: Selectable<Database["endpoints"]> | undefined;
  /** When `endpoint` was read (the claim's `now`): a change announced since means reading it again. */
  readAt: number;
}

/**
 * Claims up to `limit` due deliveries as short leases, in one statement, and commits at once: no
 * transaction stays open across the HTTP request. Claiming moves `next_attempt_at` to the lease's
 * end, so a delivery whose worker dies becomes due again when the lease runs out, and bumps
 * `claim_token`, the fence that stops a late finisher from overwriting a newer attempt. Taking over
 * a lease that ran out logs the lost attempt (`lease_expired`, migration 14).
 * Deliveries of endpoints this worker is already saturating are left for later (isolation).
 */
export async function claimDue(
  store: Store,
  opts: {
    now: number;
    limit: number;
    leaseMs: number;
    exclude: readonly string[];
    /**
     * With `exclude`: only deliveries due at or after this time (`dueHead`). The caller promises
     * that every due delivery before it belongs to an excluded endpoint.
     */
    from?: number;
  },
): Promise<Claimed[]> {
  const { db, caps } = store;
  const leaseEnd = opts.now + opts.leaseMs;
  const rows = await (opts.exclude.length > 0 ? claimExcluding : claimAny)(db, caps, {
    now: opts.now,
    leaseEnd,
    limit: opts.limit,
    exclude: listValue(caps, opts.exclude),
    from: opts.from ?? 0,
  });
  if (rows.length === 0) return [];

  const eventIds = [...new Set(rows.map((r) => r.event_id))];
  const endpointIds = [...new Set(rows.map((r) => r.endpoint_id))];
  const [events, endpoints] = await Promise.all([
    selectPayloads(db, caps, { ids: listValue(caps, eventIds) }),
    selectEndpoints(db, caps, { ids: listValue(caps, endpointIds) }),
  ]);
  const payloadOf = new Map(events.map((e) => [e.id, e.payload]));
  const endpointOf = new Map(endpoints.map((e) => [e.id, e]));
  return rows.map((r) => ({
    id: r.id,
    eventId: r.event_id,
    endpointId: r.endpoint_id,
    callId: Number(r.call_id),
    attemptCount: Number(r.attempt_count),
    oneAttempt: Number(r.one_attempt) === 1,
    resumeAt: r.resume_at === null ? null : Number(r.resume_at),
    manualAttempts: Number(r.manual_attempts),
    claimToken: Number(r.claim_token),
    payload: payloadOf.get(r.event_id) ?? "",
    endpoint: endpointOf.get(r.endpoint_id),
    readAt: opts.now,
  }));
}

/**
 * When the earliest due delivery of an endpoint not in `exclude` is due (undefined: none is).
 * A claim that leaves endpoints out steps over their due rows to find the others; when those rows
 * are the oldest (a dead endpoint's backlog), every claim steps over all of them. The dispatcher
 * asks this once and claims from there while the same endpoints stay left out (dispatcher.ts).
 */
export async function dueHead(
  store: Store,
  opts: {
    now: number;
    exclude: readonly string[];
    /** Only deliveries due at or after this time: the caller knows the earlier ones are excluded. */
    from?: number;
  },
): Promise<number | undefined> {
  const [row] = await selectDueHead(store.db, store.caps, {
    now: opts.now,
    exclude: listValue(store.caps, opts.exclude),
    from: opts.from ?? 0,
  });
  return row === undefined ? undefined : Number(row.next_attempt_at);
}

const selectDueHead = prepared((db, p: Record<"now" | "exclude" | "from", never>, caps) =>
  db
    .selectFrom("deliveries")
    .select("next_attempt_at")
    .where("status", "=", PENDING)
    .where("next_attempt_at", "<=", p.now)
    .where("next_attempt_at", ">=", p.from)
    .where(sql<boolean>`NOT ${inListOf(caps, "endpoint_id", p.exclude, "text")}`)
    .orderBy("next_attempt_at")
    .limit(1),
);

type ClaimSlots = Record<"now" | "leaseEnd" | "limit" | "exclude" | "from", never>;

// The claim, prepared (storage/prepared.ts): building and compiling it through Kysely cost more
// than running it when a claim takes one or two deliveries (an API event at a time).
function claimQuery(db: Db, p: ClaimSlots, caps: DialectCaps, excluding: boolean) {
  // The rows are found again by their physical address, not through the text primary key's index:
  // SQLite's rowid (the due index holds it, so the subquery needs no table lookup at all), and
  // PostgreSQL's ctid (a TID scan; the rows are locked FOR UPDATE by the subquery, so their ctid
  // cannot change before this statement updates them). pgbench, claims of 100 on 80,000 due
  // rows: 6.7–6.9 ms by id, 5.8–5.9 ms by ctid.
  const key = caps.name === "sqlite" ? sql<string>`rowid` : sql<string>`ctid`;
  let due = db
    .selectFrom("deliveries")
    .select(key.as("k"))
    .where("status", "=", PENDING)
    .where("next_attempt_at", "<=", p.now);
  if (excluding)
    due = due
      .where("next_attempt_at", ">=", p.from)
      .where(sql<boolean>`NOT ${inListOf(caps, "endpoint_id", p.exclude, "text")}`);
  due = due.orderBy("next_attempt_at").limit(p.limit);
  if (caps.skipLocked) due = due.forUpdate().skipLocked();
  return db
    .updateTable("deliveries")
    .set({
      next_attempt_at: p.leaseEnd,
      leased_until: p.leaseEnd,
      leased_at: p.now,
      claim_token: sql`claim_token + 1`,
      // A lease still set is an attempt whose outcome was never recorded (its process died or
      // stalled): it counts, and migration 14's trigger logs it as `lease_expired`.
      attempt_count: sql`attempt_count + CASE WHEN leased_until IS NULL THEN 0 ELSE 1 END`,
      // A lost manual attempt (its kept retry time still ahead) is one, as a recorded one would
      // be: left out of the schedule's position.
      manual_attempts: sql`manual_attempts + CASE WHEN leased_until IS NOT NULL AND resume_at > ${p.now} THEN 1 ELSE 0 END`,
      updated_at: p.now,
    })
    .where(key, "in", due)
    .returning([
      "id",
      "event_id",
      "endpoint_id",
      "call_id",
      "attempt_count",
      "one_attempt",
      "claim_token",
      "resume_at",
      "manual_attempts",
    ]);
}
const claimAny = prepared((db, p: ClaimSlots, caps) => claimQuery(db, p, caps, false));
const claimExcluding = prepared((db, p: ClaimSlots, caps) => claimQuery(db, p, caps, true));

const selectPayloads = prepared((db, p: Record<"ids", never>, caps) =>
  db
    .selectFrom("events")
    .select(["id", "payload"])
    .where(inListOf(caps, "id", p.ids, "text")),
);
export const selectEndpoints = prepared((db, p: Record<"ids", never>, caps) =>
  db
    .selectFrom("endpoints")
    .selectAll()
    .where(inListOf(caps, "id", p.ids, "text")),
);

/**
 * Safety net for ordering: releases parked deliveries whose chain has no earlier pending delivery
 * and no earlier one a background recover or replay has yet to make pending (events.emit parks
 * behind those).
 * The completion path releases the next delivery itself; this catches anything a crash between
 * processes left parked (one that was waiting for its next retry when parked, at that retry's time).
 */
export async function releaseOrphans(store: Store, now: number): Promise<number> {
  const res = await sql`
    UPDATE deliveries SET next_attempt_at = ${resumeOrNow(now)},
      resume_at = NULL
    WHERE status = 'pending' AND next_attempt_at IS NULL
      AND NOT EXISTS (${earlierPending})
      AND NOT EXISTS (${awaitedJob})`.execute(store.db);
  return Number(res.numAffectedRows ?? 0);
}

/**
 * Gives leases back unattempted (graceful shutdown, excess claims, rate limits), so another worker
 * can take them at once, or at `dueAt` (a rate-limited endpoint's next start time). One whose call
 * had an earlier event to the same endpoint re-opened meanwhile (a manual retry or recover, which
 * left it alone as in flight) is parked behind that one instead: made due, it overtook it.
 */
export async function releaseLeases(
  store: Store,
  held: ReadonlyArray<Pick<Claimed, "id" | "claimToken" | "callId">>,
  now: number,
  dueAt = now,
): Promise<void> {
  if (held.length === 0) return;
  // One statement, fenced per delivery on its claim token.
  const release = (db: Db) =>
    db
      .updateTable("deliveries")
      .set({
        // Cast: beside the NULL, PostgreSQL would take the parameter for text.
        // Parked too while a recover or replay has yet to make an earlier event of its call pending.
        next_attempt_at: sql`CASE WHEN EXISTS (${earlierPending}) OR EXISTS (${awaitedJob}) THEN NULL ELSE CAST(${dueAt} AS BIGINT) END`,
        leased_until: null,
        updated_at: now,
      })
      .where(
        sql<boolean>`(id, claim_token) IN ${rowList(
          store.caps,
          held.map((h) => [h.id, h.claimToken]),
          PAIR_TYPES,
        )}`,
      )
      .where("status", "=", PENDING)
      .execute();
  if (!store.caps.rowLocks) {
    await release(store.db);
    return;
  }
  // On PostgreSQL the calls are share-locked first, in id order, as a completion does: a retry or
  // recover re-opening an earlier event (which locks the call for update) then either commits
  // before this looks for it, or comes after and parks the row this made due.
  await store.db.transaction().execute(async (trx) => {
    const calls = [...new Set(held.map((h) => h.callId))].sort((a, b) => a - b);
    await trx.selectFrom("calls").select("id").where("id", "in", calls).orderBy("id").forShare().execute();
    await release(trx);
  });
}

/** Column types of `(id, claim_token)`, the fence of every write after a claim. */
export const PAIR_TYPES: ColumnType[] = ["text", "bigint"];
