import type { EventType } from "@klen/webhooks/schemas";
import { sql } from "kysely";
import { buildPayload, type PayloadSource } from "../calls/payload.js";
import { awaitingJob, fanOutLock } from "../delivery/chains.js";
import { matches } from "../endpoints/filter.js";
import { type ColumnType, inListOf, listValue } from "../storage/lists.js";
import { prepared, rowListArgs, rowListSlot } from "../storage/prepared.js";
import type { DialectCaps } from "../storage/store.js";
import type { Db } from "../storage/types.js";
import { newId } from "../util/ids.js";
import { assertValidEvent } from "../validate.js";

export interface EmitInput {
  accountId: number;
  callId: number;
  agentId: number;
  type: EventType;
  source: PayloadSource;
  now: number;
  /** A test call aimed at one endpoint delivers there only. */
  onlyEndpointId: string | null;
  caps: DialectCaps;
}

/** Column types of a new delivery row, in the INSERT's column order (the rest are constants). */
const DELIVERY_TYPES: ColumnType[] = [
  "text",
  "integer",
  "text",
  "bigint",
  "text",
  "integer",
  "bigint",
  "bigint",
  "bigint",
];

/** The account's enabled endpoints with their filters (prepared: storage/prepared.ts). */
const enabledEndpoints = (db: Db, account: never) =>
  db
    .selectFrom("endpoints")
    .select(["id", "event_types", "agent_ids"])
    .where("account_id", "=", account)
    .where("deleted_at", "is", null)
    .where("disabled", "=", 0);
const allEnabled = prepared((db, p: Record<"account", never>) => enabledEndpoints(db, p.account));
const oneEnabled = prepared((db, p: Record<"account" | "id", never>) =>
  enabledEndpoints(db, p.account).where("id", "=", p.id),
);

// Fixed SQL text whatever the number of endpoints (storage/lists.ts), prepared once. A chain is
// busy with a pending delivery, or with an earlier one that a recover or replay running in the
// background (delivery/recover.ts) has yet to make pending: the new event must not overtake it.
const busyChains = prepared<"call" | "seq" | "ids", { endpoint_id: string }>(
  (_db, p, caps) => sql<{ endpoint_id: string }>`
    SELECT DISTINCT endpoint_id FROM deliveries
    WHERE call_id = ${p.call} AND status = 'pending' AND ${inListOf(caps, "endpoint_id", p.ids, "text")}
    UNION
    SELECT j.endpoint_id FROM recover_jobs j
    WHERE ${inListOf(caps, "j.endpoint_id", p.ids, "text")} AND ${awaitingJob(sql`j.endpoint_id`, p.call, p.seq)}`,
);
const fanOutLocked = prepared((_db, p: Record<"account", never>) => fanOutLock(p.account));
const insertDeliveries = prepared(
  (_db, p: Record<string, never>, caps) => sql`
    INSERT INTO deliveries (id, account_id, event_id, event_seq, endpoint_id, call_id, next_attempt_at,
                            created_at, updated_at, status, attempt_count, claim_token, last_error)
    SELECT d.*, 'pending', 0, 0, NULL
    FROM ${rowListSlot(p, "rows", caps, DELIVERY_TYPES)} AS d`,
);

/**
 * The outbox step of a transition: inside the caller's transaction, builds the event body once
 * (byte-identical for every endpoint and attempt), stores it, and creates one delivery per
 * enabled endpoint whose filter matches. A delivery behind an earlier pending delivery of the same
 * call to the same endpoint starts parked (next_attempt_at NULL) and is released when that one
 * finishes, which is what keeps each endpoint's per-call order.
 */
export async function emitEvent(trx: Db, input: EmitInput): Promise<{ id: string; deliveries: number }> {
  const body = buildPayload(input.type, input.source, input.now);
  assertValidEvent(input.type, body);
  const payload = JSON.stringify(body);
  const id = newId("evt", input.now);
  const inserted = await trx
    .insertInto("events")
    .values({
      id,
      account_id: input.accountId,
      call_id: input.callId,
      event_type: input.type,
      payload,
      created_at: input.now,
    })
    .returning("seq")
    .executeTakeFirstOrThrow();

  const candidates =
    input.onlyEndpointId === null
      ? await allEnabled(trx, input.caps, { account: input.accountId })
      : await oneEnabled(trx, input.caps, { account: input.accountId, id: input.onlyEndpointId });
  const endpoints = candidates.filter((e) =>
    matches(
      { id: e.id, event_types: JSON.parse(e.event_types), agent_ids: JSON.parse(e.agent_ids) },
      input.type,
      input.agentId,
    ),
  );
  if (endpoints.length === 0) return { id, deliveries: 0 };

  // PostgreSQL, only when there is a delivery to make: before the busy chains are read, so that a
  // background recover or replay being recorded is either committed and seen there, or sees this
  // fan-out's deliveries (delivery/chains.ts).
  if (input.caps.rowLocks) await fanOutLocked(trx, input.caps, { account: input.accountId });

  const busy = await busyChains(trx, input.caps, {
    call: input.callId,
    seq: Number(inserted.seq),
    ids: listValue(
      input.caps,
      endpoints.map((e) => e.id),
    ),
  });
  const parked = new Set(busy.map((b) => b.endpoint_id));
  const rows = endpoints.map((e) => [
    newId("dlv", input.now),
    input.accountId,
    id,
    Number(inserted.seq),
    e.id,
    input.callId,
    parked.has(e.id) ? null : input.now,
    input.now,
    input.now,
  ]);
  await insertDeliveries(trx, input.caps, rowListArgs(input.caps, "rows", rows, DELIVERY_TYPES));
  return { id, deliveries: endpoints.length };
}
