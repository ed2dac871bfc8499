import type { Insertable, Selectable } from "kysely";
import { ApiError, notFound } from "../errors.js";
import { emitEvent } from "../events/emit.js";
import { prepared } from "../storage/prepared.js";
import type { Database } from "../storage/schema.js";
import type { DialectCaps } from "../storage/store.js";
import type { Db } from "../storage/types.js";
import { isoMillis, isoSeconds } from "../util/time.js";
import type { PayloadSource } from "./payload.js";
import { durationSeconds } from "./payload.js";
import { type Action, type TransitionInput, transition } from "./transitions.js";

export type CallRow = Selectable<Database["calls"]>;

/** A new call row: `queued`, nothing happened yet. */
export function newCallRow(f: {
  accountId: number;
  agentId: number;
  type: string;
  phoneNumber: string;
  contactId: number | null;
  klenCallId: string | null;
  onlyEndpointId?: string | null;
  now: number;
}): Insertable<Database["calls"]> {
  return {
    account_id: f.accountId,
    agent_id: f.agentId,
    type: f.type,
    phone_number: f.phoneNumber,
    contact_id: f.contactId,
    klen_call_id: f.klenCallId,
    status: "queued",
    assistant_id: null,
    started_at: null,
    ended_at: null,
    failure_reason: null,
    ended_reason: null,
    brief_summary: null,
    transcript_at: null,
    summary_at: null,
    recording_at: null,
    only_endpoint_id: f.onlyEndpointId ?? null,
    created_at: f.now,
    updated_at: f.now,
  };
}

const selectCall = prepared<"id" | "account", CallRow>((db, p, caps) => {
  const q = db.selectFrom("calls").selectAll().where("id", "=", p.id).where("account_id", "=", p.account);
  return caps.rowLocks ? q.forUpdate() : q;
});

/** Reads a call of the account, locking its row where the dialect has row locks. */
export async function lockCall(
  trx: Db,
  caps: DialectCaps,
  accountId: number,
  callId: number,
): Promise<CallRow> {
  const [call] = await selectCall(trx, caps, { id: callId, account: accountId });
  if (!call) throw notFound("call", callId);
  return normalizeCall(call);
}

/** PostgreSQL returns BIGINT columns as numbers through our type parser, SQLite as numbers; ids too. */
export function normalizeCall(c: CallRow): CallRow {
  return {
    ...c,
    id: Number(c.id),
    agent_id: Number(c.agent_id),
    contact_id: c.contact_id === null ? null : Number(c.contact_id),
  };
}

const selectAgent = prepared<"id", { id: number; name: string; assistant_id: string | null }>((db, p) =>
  db.selectFrom("agents").select(["id", "name", "assistant_id"]).where("id", "=", p.id),
);
const selectContact = prepared<"id", { id: number; name: string; email: string | null }>((db, p) =>
  db
    .selectFrom("contacts")
    .select(["id", "name", "email"])
    .where("id", "=", p.id)
    .where("deleted_at", "is", null),
);

/** The payload's inputs for a call: its agent (even if since deleted) and its contact, if any. */
export async function payloadSource(
  trx: Db,
  call: CallRow,
  content: PayloadSource["content"] | undefined,
  caps: DialectCaps,
): Promise<PayloadSource> {
  const [agent] = await selectAgent(trx, caps, { id: call.agent_id });
  if (!agent) throw new Error(`agent ${call.agent_id} of call ${call.id} is missing`);
  const [contact] = call.contact_id === null ? [] : await selectContact(trx, caps, { id: call.contact_id });
  return {
    call,
    agent: { id: Number(agent.id), name: agent.name },
    contact: contact ? { id: Number(contact.id), name: contact.name, email: contact.email } : null,
    ...(content ? { content } : {}),
  };
}

/**
 * Applies one lifecycle step to a call and emits its event, in the caller's transaction: the
 * event exists if and only if the transition happened (outbox).
 */
export async function applyTransition(
  trx: Db,
  caps: DialectCaps,
  accountId: number,
  callId: number,
  action: Action,
  input: TransitionInput,
  /** Event content (transcript, summary, recording URL), made only once the step is known valid. */
  contentFor?: () => Promise<PayloadSource["content"]>,
): Promise<{ call: CallRow; eventId: string }> {
  const call = await lockCall(trx, caps, accountId, callId);
  const result = transition(call, action, input);
  if (!result.ok) {
    throw new ApiError(
      result.status,
      result.code,
      result.message,
      result.field ? { field: result.field } : undefined,
    );
  }
  if (action === "start" && input.assistant_id === undefined) {
    const [agent] = await selectAgent(trx, caps, { id: call.agent_id });
    result.patch.assistant_id = agent?.assistant_id ?? null;
  }
  const updated = { ...call, ...result.patch, updated_at: input.now } as CallRow;
  await trx
    .updateTable("calls")
    .set({ ...result.patch, updated_at: input.now })
    .where("id", "=", callId)
    .execute();
  const source = await payloadSource(trx, updated, contentFor ? await contentFor() : undefined, caps);
  const event = await emitEvent(trx, {
    accountId,
    callId,
    agentId: updated.agent_id,
    type: result.event,
    source,
    now: input.now,
    onlyEndpointId: updated.only_endpoint_id,
    caps,
  });
  return { call: updated, eventId: event.id };
}

/** The call as the API shows it. */
export function callObject(c: CallRow) {
  const t = (ms: number | null) => (ms === null ? null : isoSeconds(Number(ms)));
  return {
    id: Number(c.id),
    klen_call_id: c.klen_call_id,
    agent_id: Number(c.agent_id),
    contact_id: c.contact_id === null ? null : Number(c.contact_id),
    type: c.type,
    status: c.status,
    phone_number: c.phone_number,
    assistant_id: c.assistant_id,
    started_at: t(c.started_at),
    ended_at: t(c.ended_at),
    duration_seconds: durationSeconds(
      c.started_at === null ? null : Math.floor(Number(c.started_at) / 1000) * 1000,
      c.ended_at === null ? null : Math.floor(Number(c.ended_at) / 1000) * 1000,
    ),
    failure_reason: c.failure_reason,
    ended_reason: c.ended_reason,
    summary: c.brief_summary,
    has_transcript: c.transcript_at !== null,
    has_summary: c.summary_at !== null,
    has_recording: c.recording_at !== null,
    created_at: isoMillis(Number(c.created_at)),
  };
}
