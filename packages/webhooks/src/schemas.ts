/**
 * JSON Schemas (draft-07) of the six `call.*` webhook bodies: the one source of truth.
 *
 * The server validates every body it generates against these before storing it, the OpenAPI
 * document embeds them, the SDK's event types are generated from them and the SDK validates
 * received bodies with them. The shapes follow Klen's "Call Events" page to the letter.
 *
 * @example
 * ```ts
 * import { eventSchemas } from "@klen/webhooks/schemas";
 * const schema = eventSchemas["call.ended"];
 * ```
 */

/** The six event types, in the order of the normal call workflow's first appearance. */
export const EVENT_TYPES = [
  "call.started",
  "call.ended",
  "call.failed",
  "call.transcript",
  "call.recording",
  "call.summary",
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/** The eight failure reasons of `call.failed`. */
export const FAILURE_REASONS = [
  "twilio-failed-to-connect-call",
  "no-answer",
  "busy",
  "disconnected",
  "invalid-number",
  "rejected",
  "canceled",
  "failed",
] as const;
export type FailureReason = (typeof FAILURE_REASONS)[number];

export const CALL_STATUSES = ["queued", "in-progress", "completed", "failed"] as const;
export const CALL_TYPES = ["inbound", "outbound"] as const;

/** ISO-8601 UTC with a `Z`; fractional seconds allowed when a producer has them. */
export const UTC_TIMESTAMP_PATTERN = "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d{1,9})?Z$";
/** E.164: a `+` and 8–15 digits; the format is checked, not the numbering plan. */
export const E164_PATTERN = "^\\+[0-9]{8,15}$";

export type JsonSchema = { readonly [key: string]: unknown };

const timestamp = { type: "string", pattern: UTC_TIMESTAMP_PATTERN } as const;
const nullableTimestamp = { type: ["string", "null"], pattern: UTC_TIMESTAMP_PATTERN } as const;
const url = { type: "string", minLength: 1, pattern: "^https?://" } as const;

export const contactSchema = {
  type: "object",
  description: "The contact of the account the call is linked to.",
  required: ["id", "name", "email"],
  additionalProperties: false,
  properties: {
    id: { type: "integer" },
    name: { type: "string" },
    email: { type: ["string", "null"] },
  },
} as const;

/** Fields every event's `call` object carries. */
export const commonCallProperties = {
  id: { type: "integer", description: "Database id of the call" },
  klen_call_id: { type: ["string", "null"], description: "Call id from the provider" },
  agent_id: { type: "integer" },
  agent_name: { type: "string" },
  status: { type: "string", enum: CALL_STATUSES },
  type: { type: "string", enum: CALL_TYPES },
  phone_number: { type: "string", pattern: E164_PATTERN },
  started_at: nullableTimestamp,
  ended_at: nullableTimestamp,
  duration_seconds: { type: ["integer", "null"], minimum: 0 },
  contact: contactSchema,
} as const;

const commonRequired = [
  "id",
  "klen_call_id",
  "agent_id",
  "agent_name",
  "status",
  "type",
  "phone_number",
  "started_at",
  "ended_at",
  "duration_seconds",
] as const;

/** Event-specific fields of each event's `call` object, and which of them are required. */
const specific = {
  "call.started": {
    properties: { assistant_id: { type: ["string", "null"] } },
    required: ["assistant_id"],
  },
  "call.ended": {
    properties: {
      duration: { type: ["integer", "null"], minimum: 0, description: "Equals duration_seconds" },
      summary: { type: "string", description: "Brief summary, when one exists" },
      summary_url: {
        ...url,
        description:
          "Pre-signed URL of the brief summary, instead of summary, when it is too large to send inline",
      },
    },
    required: ["duration"],
    not: { required: ["summary", "summary_url"] },
  },
  "call.failed": {
    properties: {
      failure_reason: { type: "string", enum: FAILURE_REASONS },
      ended_reason: { type: "string", description: "The provider's raw reason" },
    },
    required: ["failure_reason", "ended_reason"],
  },
  "call.transcript": {
    properties: { transcript: { type: "string" }, transcript_url: url },
    required: [],
    oneOf: [{ required: ["transcript"] }, { required: ["transcript_url"] }],
  },
  "call.recording": {
    properties: { recording_url: url },
    required: ["recording_url"],
  },
  "call.summary": {
    properties: { summary: { type: "string" }, summary_url: url },
    required: [],
    oneOf: [{ required: ["summary"] }, { required: ["summary_url"] }],
  },
} as const;

function eventSchema<T extends EventType>(type: T) {
  const s = specific[type];
  return {
    $id: `https://klen.ai/schemas/${type}.json`,
    title: type,
    type: "object",
    required: ["event_type", "call", "timestamp"],
    additionalProperties: false,
    properties: {
      event_type: { type: "string", const: type },
      call: {
        type: "object",
        required: [...commonRequired, ...s.required],
        additionalProperties: false,
        properties: { ...commonCallProperties, ...s.properties },
        ...("oneOf" in s ? { oneOf: s.oneOf } : {}),
        ...("not" in s ? { not: s.not } : {}),
      },
      timestamp: { ...timestamp, description: "When this event was generated" },
    },
  } as const;
}

/** One JSON Schema per event type. */
export const eventSchemas = {
  "call.started": eventSchema("call.started"),
  "call.ended": eventSchema("call.ended"),
  "call.failed": eventSchema("call.failed"),
  "call.transcript": eventSchema("call.transcript"),
  "call.recording": eventSchema("call.recording"),
  "call.summary": eventSchema("call.summary"),
} as const;

/** Any call event: discriminated by `event_type`. */
export const callEventSchema = {
  $id: "https://klen.ai/schemas/call-event.json",
  title: "CallEvent",
  oneOf: EVENT_TYPES.map((t) => eventSchemas[t]),
} as const;
