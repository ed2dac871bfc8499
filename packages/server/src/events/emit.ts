import type { EventType } from "@klen/webhooks/schemas";
import { buildPayload, type PayloadSource } from "../calls/payload.js";
import { matches } from "../endpoints/filter.js";
import { type Db, PENDING } from "../storage/types.js";
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
}

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

  let q = trx
    .selectFrom("endpoints")
    .select(["id", "event_types", "agent_ids"])
    .where("account_id", "=", input.accountId)
    .where("deleted_at", "is", null)
    .where("disabled", "=", 0);
  if (input.onlyEndpointId !== null) q = q.where("id", "=", input.onlyEndpointId);
  const endpoints = (await q.execute()).filter((e) =>
    matches(
      { id: e.id, event_types: JSON.parse(e.event_types), agent_ids: JSON.parse(e.agent_ids) },
      input.type,
      input.agentId,
    ),
  );
  if (endpoints.length === 0) return { id, deliveries: 0 };

  const busy = await trx
    .selectFrom("deliveries")
    .select("endpoint_id")
    .distinct()
    .where("call_id", "=", input.callId)
    .where("status", "=", PENDING)
    .where(
      "endpoint_id",
      "in",
      endpoints.map((e) => e.id),
    )
    .execute();
  const parked = new Set(busy.map((b) => b.endpoint_id));
  await trx
    .insertInto("deliveries")
    .values(
      endpoints.map((e) => ({
        id: newId("dlv", input.now),
        account_id: input.accountId,
        event_id: id,
        event_seq: Number(inserted.seq),
        endpoint_id: e.id,
        call_id: input.callId,
        status: "pending",
        attempt_count: 0,
        next_attempt_at: parked.has(e.id) ? null : input.now,
        claim_token: 0,
        last_error: null,
        created_at: input.now,
        updated_at: input.now,
      })),
    )
    .execute();
  return { id, deliveries: endpoints.length };
}
