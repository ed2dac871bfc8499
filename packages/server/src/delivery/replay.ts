import type { Database } from "../storage/schema.js";
import type { DialectCaps } from "../storage/store.js";
import type { Db } from "../storage/types.js";
import { idFloor, newId } from "../util/ids.js";
import { lockCallsOfEndpoint, reorderChains } from "./chains.js";

/**
 * What a replay sends: the account's events made in `[since, until]` that the endpoint's filter
 * takes now and that it has no delivery for, whatever became of other endpoints' deliveries — made
 * while it was disabled, before it existed, or before its filter took their type or agent (Svix's
 * "replay missing"). A test call aimed at another endpoint is not replayed to this one.
 */
export interface ReplayScope {
  accountId: number;
  endpointId: string;
  since: number;
  until: number;
  /** The endpoint's filter (empty: every type, every agent), as `endpoints.event_types`/`agent_ids`. */
  eventTypes: readonly string[];
  agentIds: readonly number[];
}

/**
 * The account's events made in the scope's range. An event's id starts with its `created_at`
 * (util/ids.ts), so the time range is a range of the primary key: no index on `created_at` is
 * needed, and a batch goes on from the last id it read.
 */
function eventsInRange(db: Db, s: ReplayScope) {
  return db
    .selectFrom("events as ev")
    .where("ev.id", ">=", idFloor("evt", s.since))
    .where("ev.id", "<", idFloor("evt", s.until + 1))
    .where("ev.account_id", "=", s.accountId);
}

/** Those of them a replay sends: taken by the filter, not aimed elsewhere, with no delivery to it. */
function missingEvents(db: Db, s: ReplayScope) {
  return eventsInRange(db, s)
    .innerJoin("calls as c", "c.id", "ev.call_id")
    .$if(s.eventTypes.length > 0, (q) => q.where("ev.event_type", "in", [...s.eventTypes]))
    .$if(s.agentIds.length > 0, (q) => q.where("c.agent_id", "in", [...s.agentIds]))
    .where((eb) => eb.or([eb("c.only_endpoint_id", "is", null), eb("c.only_endpoint_id", "=", s.endpointId)]))
    .where(({ not, exists, selectFrom }) =>
      not(
        exists(
          selectFrom("deliveries as d")
            .select("d.id")
            .whereRef("d.event_id", "=", "ev.id")
            .where("d.endpoint_id", "=", s.endpointId),
        ),
      ),
    );
}

/**
 * Whether the range holds at most `limit` of the account's events, read no further than that:
 * then the request replays it; a larger one is a background job, whose batches each read `limit`
 * events. What bounds the work is the events read, not the ones missing: finding that a healthy
 * endpoint misses none of a month's events reads the month.
 */
export async function fitsInRequest(db: Db, s: ReplayScope, limit: number): Promise<boolean> {
  const rows = await eventsInRange(db, s)
    .select("ev.id")
    .orderBy("ev.id")
    .limit(limit + 1)
    .execute();
  return rows.length <= limit;
}

/** Rows per INSERT: 13 parameters each, well under SQLite's and PostgreSQL's limits. */
const INSERT_ROWS = 500;

/**
 * Makes the deliveries of every missing event in scope of these calls, parked, then puts each
 * call's chain in order (chains.ts): the first pending delivery of a chain is due, the rest wait
 * for it, and a later event still waiting for its retry waits behind the replayed earlier ones.
 * On PostgreSQL the calls are locked first and the events read again under the lock, so two
 * replays at once (or a replay beside a transition) never make one event's delivery twice.
 */
async function replayCalls(
  trx: Db,
  caps: DialectCaps,
  s: ReplayScope,
  callIds: readonly number[],
  now: number,
): Promise<number> {
  await lockCallsOfEndpoint(trx, caps, { endpointId: s.endpointId, callIds });
  const events = await missingEvents(trx, s)
    .select(["ev.id", "ev.seq", "ev.call_id"])
    .where("ev.call_id", "in", [...callIds])
    .orderBy("ev.seq")
    .execute();
  if (events.length === 0) return 0;
  const rows = events.map((e) => ({
    id: newId("dlv", now),
    account_id: s.accountId,
    event_id: e.id,
    event_seq: Number(e.seq),
    endpoint_id: s.endpointId,
    call_id: Number(e.call_id),
    next_attempt_at: null,
    created_at: now,
    updated_at: now,
    status: "pending",
    attempt_count: 0,
    claim_token: 0,
    last_error: null,
  }));
  for (let i = 0; i < rows.length; i += INSERT_ROWS)
    await trx
      .insertInto("deliveries")
      .values(rows.slice(i, i + INSERT_ROWS) as never)
      .execute();
  await reorderChains(trx, { endpointId: s.endpointId, callIds }, now);
  return rows.length;
}

const callsOf = (rows: ReadonlyArray<{ call_id: number }>) =>
  [...new Set(rows.map((r) => Number(r.call_id)))].sort((a, b) => a - b);

/** Replays everything in scope in the caller's transaction (the request's): for a few thousand events. */
export async function replayAll(trx: Db, caps: DialectCaps, s: ReplayScope, now: number): Promise<number> {
  const calls = callsOf(await missingEvents(trx, s).select("ev.call_id").distinct().execute());
  if (calls.length === 0) return 0;
  return replayCalls(trx, caps, s, calls, now);
}

/**
 * One batch of a background replay: the next `rows` events of the range after the event
 * `afterEventId`, in id order; for the calls of those that are missing, each call's missing events
 * in scope all at once (never half a call, which could release a later event before its earlier
 * one is made). Returns how many deliveries it made and the last event it read (undefined: the
 * range is done).
 */
export async function replayBatch(
  trx: Db,
  caps: DialectCaps,
  s: ReplayScope,
  afterEventId: string | null,
  rows: number,
  now: number,
): Promise<{ queued: number; lastEventId: string | undefined }> {
  const read = await eventsInRange(trx, s)
    .select("ev.id")
    .$if(afterEventId !== null, (q) => q.where("ev.id", ">", afterEventId!))
    .orderBy("ev.id")
    .limit(rows)
    .execute();
  if (read.length === 0) return { queued: 0, lastEventId: undefined };
  const last = read[read.length - 1]!.id;
  const found = await missingEvents(trx, s)
    .select("ev.call_id")
    .distinct()
    .$if(afterEventId !== null, (q) => q.where("ev.id", ">", afterEventId!))
    .where("ev.id", "<=", last)
    .execute();
  const queued = found.length === 0 ? 0 : await replayCalls(trx, caps, s, callsOf(found), now);
  return { queued, lastEventId: last };
}

/** An endpoint's filter columns, read as a replay's. */
export function replayFilter(e: Pick<Database["endpoints"], "event_types" | "agent_ids">) {
  return {
    eventTypes: JSON.parse(e.event_types) as string[],
    agentIds: JSON.parse(e.agent_ids) as number[],
  };
}
