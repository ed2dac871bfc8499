import {
  CALL_STATUSES,
  CALL_TYPES,
  E164_PATTERN,
  EVENT_TYPES,
  FAILURE_REASONS,
} from "@klen/webhooks/schemas";

/**
 * The JSON bodies the API answers with, one JSON Schema each, for the OpenAPI document's
 * `components.schemas` (openapi.ts says which operation answers with which). Written in the
 * dialect of the route schemas (`type: [..., "null"]`); @fastify/swagger turns that into
 * OpenAPI 3.0's `nullable`.
 *
 * Documentation only: they are not Fastify `response` schemas, because fast-json-stringify would
 * drop any field missing here and coerce types, so a mistake here would change the wire format.
 * Every object is closed (`additionalProperties: false`) and test/openapi.test.ts checks real
 * answers of every operation against them: a field added to a route without being added here
 * fails that test.
 */

/** `isoMillis`: record times (`created_at`, attempt times…). */
const millis = {
  type: "string",
  format: "date-time",
  pattern: "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}\\.\\d{3}Z$",
};
/** `isoSeconds`: call times, whole seconds like the event bodies. */
const seconds = {
  type: "string",
  format: "date-time",
  pattern: "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}Z$",
};
const nullable = (s: Record<string, unknown>) => ({ ...s, type: [s.type as string, "null"] });
const int = { type: "integer" };
const id = { type: "integer", minimum: 1 };
const str = { type: "string" };
const bool = { type: "boolean" };
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const prefixedId = (prefix: string) => ({ type: "string", pattern: `^${prefix}_[0-9a-z]{26}$` });

/** A closed object: every property listed is always present (absent ones are `null`). */
function object(properties: Record<string, unknown>, description?: string, optional: string[] = []) {
  return {
    type: "object",
    ...(description ? { description } : {}),
    additionalProperties: false,
    required: Object.keys(properties).filter((k) => !optional.includes(k)),
    properties,
  };
}

/** What a DELETE answers: the resource as it was, and `deleted: true`. */
const deleted = (o: ReturnType<typeof object>, description: string) =>
  object({ ...o.properties, deleted: { type: "boolean", enum: [true] } }, description);

/** `{data, next_cursor}` of a list (pagination.ts). */
const page = (item: string) =>
  object(
    {
      data: { type: "array", items: ref(item) },
      next_cursor: {
        type: ["string", "null"],
        description: "pass as `cursor` for the next page; null on the last",
      },
    },
    `one page of ${item} objects, newest first`,
  );

const account = object({ id, name: str, auto_summary: bool }, "the account (GET/PATCH /v1/account)");
const agent = object({ id, name: str, assistant_id: nullable(str), created_at: millis }, "an agent");
const contact = object(
  {
    id,
    name: str,
    email: nullable(str),
    phone_number: { type: ["string", "null"], pattern: E164_PATTERN },
    created_at: millis,
  },
  "a contact",
);
const call = object(
  {
    id,
    klen_call_id: nullable(str),
    agent_id: id,
    contact_id: nullable(id),
    type: { type: "string", enum: CALL_TYPES },
    status: { type: "string", enum: CALL_STATUSES },
    phone_number: { type: "string", pattern: E164_PATTERN },
    assistant_id: nullable(str),
    started_at: nullable(seconds),
    ended_at: nullable(seconds),
    duration_seconds: { type: ["integer", "null"], minimum: 0 },
    failure_reason: { type: ["string", "null"], enum: [...FAILURE_REASONS, null] },
    ended_reason: nullable(str),
    summary: { type: ["string", "null"], description: "the brief summary given to `end`" },
    has_transcript: bool,
    has_summary: bool,
    has_recording: bool,
    created_at: millis,
  },
  "a call",
);

const media = object(
  {
    id: { type: "string", pattern: "^blb_[A-Za-z0-9_-]{32}$" },
    kind: { type: "string", enum: ["recording", "transcript", "summary"] },
    event_id: {
      ...nullable(prefixedId("evt")),
      description: "the event whose body carried this content's URL",
    },
    event_type: {
      type: ["string", "null"],
      enum: ["call.ended", "call.transcript", "call.summary", "call.recording", null],
      description: "its type: a brief summary too long to go inline rides `call.ended`",
    },
    content_type: str,
    size: { type: "integer", minimum: 0, description: "bytes" },
    created_at: millis,
    url: {
      type: "string",
      format: "uri",
      description: "pre-signed, made by this request; no API key needed",
    },
    expires_at: { ...seconds, description: "when `url` stops working: KLEN_URL_TTL from this request" },
  },
  "a call's stored content with a fresh pre-signed URL",
);

const endpoint = object(
  {
    id: prefixedId("ep"),
    url: str,
    description: str,
    event_types: {
      type: "array",
      items: { type: "string", enum: EVENT_TYPES },
      description: "empty: every type",
    },
    agent_ids: { type: "array", items: id, description: "empty: every agent" },
    headers: { type: "object", additionalProperties: str },
    disabled: bool,
    disabled_reason: nullable(str),
    rate_limit: { type: ["integer", "null"], minimum: 1, description: "attempts per second at most" },
    failing_since: nullable(millis),
    created_at: millis,
    updated_at: millis,
  },
  "a webhook endpoint",
);
const secret = { type: "string", pattern: "^whsec_" };
const endpointSecret = object(
  {
    secret,
    previous_secret_expires_at: {
      ...millis,
      description: "present while a rotated-out secret still signs: when the last one stops",
    },
  },
  "the endpoint's signing secret",
  ["previous_secret_expires_at"],
);

const attempt = object(
  {
    number: { type: "integer", minimum: 1 },
    started_at: millis,
    url: str,
    request_headers: { type: "object", additionalProperties: str },
    status_code: nullable(int),
    duration_ms: { type: "integer", minimum: 0 },
    error: {
      type: ["string", "null"],
      description: "the failure's stable class (`timeout`, `http_status`, `lease_expired`…)",
    },
    error_message: nullable(str),
    response_body: { type: ["string", "null"], description: "the start of the receiver's answer" },
  },
  "one attempt to deliver an event",
);
const delivery = object(
  {
    id: prefixedId("dlv"),
    event_id: prefixedId("evt"),
    event_type: { type: ["string", "null"], enum: [...EVENT_TYPES, null] },
    endpoint_id: prefixedId("ep"),
    call_id: id,
    status: { type: "string", enum: ["pending", "succeeded", "failed"] },
    attempt_count: { type: "integer", minimum: 0 },
    next_attempt_at: nullable(millis),
    sending_since: nullable(millis),
    last_error: nullable(str),
    created_at: millis,
    updated_at: millis,
    attempts: { type: "array", items: ref("attempt"), description: "in ascending `number` order" },
  },
  "the delivery of one event to one endpoint",
);
const event = object(
  {
    id: prefixedId("evt"),
    event_type: { type: "string", enum: EVENT_TYPES },
    call_id: id,
    payload: {
      description: "the body delivered to endpoints, parsed",
      oneOf: EVENT_TYPES.map((t) => ref(t.replace(".", "_"))),
    },
    created_at: millis,
  },
  "an event",
);

const apiKey = object({ id, prefix: str, created_at: millis, current: bool }, "an API key (its prefix only)");
const apiKeyCreated = object(
  {
    id,
    prefix: str,
    created_at: millis,
    key: {
      type: ["string", "null"],
      description: "the key, shown this once; null in an Idempotency-Key replay (keys are kept hashed)",
    },
  },
  "a new API key",
);

const recoverJob = object(
  {
    id: prefixedId("rcv"),
    kind: { type: "string", enum: ["recover", "replay"] },
    endpoint_id: prefixedId("ep"),
    status: { type: "string", enum: ["running", "finished", "stopped"] },
    since: millis,
    until: millis,
    found: { type: ["integer", "null"], minimum: 0 },
    queued: { type: "integer", minimum: 0 },
    created_at: millis,
    finished_at: nullable(millis),
  },
  "a recover or replay carried out in the background: `running`, then `finished`, or `stopped` because its endpoint was disabled or deleted; a recover's `found` failed deliveries when asked (a replay's is null: it does not count in advance), `queued` re-queued (recover) or sent anew (replay) so far",
);

const statsRow = {
  succeeded: { type: "integer", minimum: 0 },
  failed: { type: "integer", minimum: 0 },
  p50_ms: { type: ["integer", "null"], minimum: 0 },
  p95_ms: { type: ["integer", "null"], minimum: 0 },
};
const deliveryStats = object(
  {
    since: millis,
    until: millis,
    bucket_seconds: { type: "integer", minimum: 1 },
    totals: object(statsRow),
    buckets: { type: "array", items: object({ start: millis, ...statsRow }) },
  },
  "attempt counts and latency percentiles, overall and per bucket",
);

export const RESPONSE_SCHEMAS = {
  account,
  api_key: apiKey,
  api_key_page: page("api_key"),
  api_key_created: apiKeyCreated,
  api_key_deleted: object({ id, prefix: str, deleted: { type: "boolean", enum: [true] } }, "a revoked key"),
  agent,
  agent_page: page("agent"),
  agent_deleted: deleted(agent, "the deleted agent"),
  contact,
  contact_page: page("contact"),
  contact_deleted: deleted(contact, "the deleted contact"),
  call,
  call_page: page("call"),
  media,
  call_media: object(
    { data: { type: "array", items: ref("media"), description: "oldest first" } },
    "the call's recording and the transcript and summaries stored behind URLs, each with a URL made now",
  ),
  test_call: object({ call_id: id }, "the test call that now runs"),
  endpoint,
  endpoint_page: page("endpoint"),
  endpoint_with_secret: object({ ...endpoint.properties, secret }, "a new endpoint, with its secret"),
  endpoint_deleted: deleted(endpoint, "the deleted endpoint"),
  endpoint_secret: endpointSecret,
  recovery: object(
    { queued: { type: "integer", minimum: 0 }, job_id: prefixedId("rcv") },
    "how many failed deliveries were re-queued; with `job_id`, how many were found failed, re-queued in the background a batch of calls at a time (more than KLEN_RECOVER_BATCH)",
    ["job_id"],
  ),
  replay: object(
    { queued: { type: ["integer", "null"], minimum: 0 }, job_id: prefixedId("rcv") },
    "how many events the endpoint never had a delivery for are now queued to it; with `job_id`, a range of more than KLEN_RECOVER_BATCH events: `queued` is null and the job makes them in the background (GET /v1/recover-jobs/{id})",
    ["job_id"],
  ),
  recover_job: recoverJob,
  recover_job_page: page("recover_job"),
  attempt,
  delivery,
  delivery_page: page("delivery"),
  event,
  event_page: page("event"),
  delivery_stats: deliveryStats,
} as const;

export type ResponseSchemaName = keyof typeof RESPONSE_SCHEMAS;
