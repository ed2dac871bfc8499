import { EVENT_TYPES } from "@klen/webhooks/schemas";
import type { ResponseSchemaName } from "./response-schemas.js";
import { MAX_STREAMS_PER_ACCOUNT } from "./routes/stream.js";

/**
 * What the routes' schemas cannot say, added to the generated OpenAPI document (docs/api.md is the
 * reference for each): the success status and body of each operation, the error answers and their
 * shape, the `Idempotency-Key` header, whether a body is required, the recording's raw body, the
 * pre-signed blob URL's and the stream's own inputs, and the webhooks the server sends.
 * Documentation only: nothing here validates or serialises a request or an answer.
 */

/**
 * Each operation's success: its status and the `components.schemas` entry (response-schemas.ts)
 * of its JSON body. test/openapi.test.ts checks that every `/v1` operation is here, and real
 * answers against the schema named.
 */
const SUCCESS: Record<string, { status: string; description: string; schema: ResponseSchemaName }> = {
  "get /v1/account": { status: "200", description: "the account", schema: "account" },
  "patch /v1/account": { status: "200", description: "the account, changed", schema: "account" },
  "get /v1/api-keys": { status: "200", description: "the account's API keys", schema: "api_key_page" },
  "post /v1/api-keys": { status: "201", description: "the key, shown this once", schema: "api_key_created" },
  "delete /v1/api-keys/{id}": { status: "200", description: "the revoked key", schema: "api_key_deleted" },
  "post /v1/agents": { status: "201", description: "the agent", schema: "agent" },
  "get /v1/agents": { status: "200", description: "agents", schema: "agent_page" },
  "get /v1/agents/{id}": { status: "200", description: "the agent", schema: "agent" },
  "patch /v1/agents/{id}": { status: "200", description: "the agent, changed", schema: "agent" },
  "delete /v1/agents/{id}": { status: "200", description: "the deleted agent", schema: "agent_deleted" },
  "post /v1/contacts": { status: "201", description: "the contact", schema: "contact" },
  "get /v1/contacts": { status: "200", description: "contacts", schema: "contact_page" },
  "get /v1/contacts/{id}": { status: "200", description: "the contact", schema: "contact" },
  "patch /v1/contacts/{id}": { status: "200", description: "the contact, changed", schema: "contact" },
  "delete /v1/contacts/{id}": {
    status: "200",
    description: "the deleted contact",
    schema: "contact_deleted",
  },
  "post /v1/calls": { status: "201", description: "the call, `queued`", schema: "call" },
  "get /v1/calls": { status: "200", description: "calls", schema: "call_page" },
  "get /v1/calls/{id}": { status: "200", description: "the call", schema: "call" },
  "get /v1/calls/{id}/media": {
    status: "200",
    description: "the call's stored content, each with a fresh pre-signed URL",
    schema: "call_media",
  },
  "post /v1/calls/{id}/start": { status: "200", description: "the call; emits call.started", schema: "call" },
  "post /v1/calls/{id}/end": { status: "200", description: "the call; emits call.ended", schema: "call" },
  "post /v1/calls/{id}/fail": { status: "200", description: "the call; emits call.failed", schema: "call" },
  "post /v1/calls/{id}/transcript": {
    status: "200",
    description: "the call; emits call.transcript",
    schema: "call",
  },
  "post /v1/calls/{id}/summary": {
    status: "200",
    description: "the call; emits call.summary",
    schema: "call",
  },
  "post /v1/calls/{id}/recording": {
    status: "200",
    description: "the call; emits call.recording",
    schema: "call",
  },
  "post /v1/test-calls": { status: "202", description: "the test call runs", schema: "test_call" },
  "post /v1/endpoints": {
    status: "201",
    description: "the endpoint, with its secret",
    schema: "endpoint_with_secret",
  },
  "get /v1/endpoints": { status: "200", description: "endpoints", schema: "endpoint_page" },
  "get /v1/endpoints/{id}": { status: "200", description: "the endpoint", schema: "endpoint" },
  "patch /v1/endpoints/{id}": { status: "200", description: "the endpoint, changed", schema: "endpoint" },
  "delete /v1/endpoints/{id}": {
    status: "200",
    description: "the deleted endpoint",
    schema: "endpoint_deleted",
  },
  "get /v1/endpoints/{id}/secret": { status: "200", description: "the secret", schema: "endpoint_secret" },
  "post /v1/endpoints/{id}/rotate-secret": {
    status: "200",
    description: "the new secret",
    schema: "endpoint_secret",
  },
  "post /v1/endpoints/{id}/recover": {
    status: "202",
    description: "failed deliveries re-queued",
    schema: "recovery",
  },
  "post /v1/endpoints/{id}/replay": {
    status: "202",
    description: "events the endpoint never had a delivery for, queued to it",
    schema: "replay",
  },
  "get /v1/recover-jobs": {
    status: "200",
    description: "background recovers and replays",
    schema: "recover_job_page",
  },
  "get /v1/recover-jobs/{id}": {
    status: "200",
    description: "the background recover or replay",
    schema: "recover_job",
  },
  "get /v1/events": { status: "200", description: "events", schema: "event_page" },
  "get /v1/events/{id}": { status: "200", description: "the event", schema: "event" },
  "get /v1/deliveries": {
    status: "200",
    description: "deliveries, with their attempts",
    schema: "delivery_page",
  },
  "get /v1/deliveries/{id}": {
    status: "200",
    description: "the delivery, with its attempts",
    schema: "delivery",
  },
  "post /v1/deliveries/{id}/retry": {
    status: "202",
    description: "the delivery, set to pending",
    schema: "delivery",
  },
  "get /v1/stats/deliveries": { status: "200", description: "delivery statistics", schema: "delivery_stats" },
};

const ERRORS: Record<string, string> = {
  "400": "invalid input; `details.field` names it",
  "401": "no or unknown API key",
  "404": "unknown resource, or another account's",
  "409": "the resource's state does not allow it (e.g. `invalid_transition`, `endpoint_disabled`)",
  "413": "body too large",
  "415": "unsupported media type",
  "422": "`idempotency_key_reused`",
  "429": "rate limited (`Retry-After`)",
  "503": "database unavailable (`Retry-After`); safe to retry",
};
const READ_ERRORS = ["400", "401", "404", "429", "503"];
const WRITE_ERRORS = ["400", "401", "404", "409", "413", "415", "422", "429", "503"];

const ERROR_SCHEMA = {
  type: "object",
  required: ["error"],
  properties: {
    error: {
      type: "object",
      required: ["code", "message"],
      properties: {
        code: { type: "string", description: "stable error code (docs/api.md)" },
        message: { type: "string" },
        details: { type: "object", additionalProperties: true },
      },
    },
  },
};

const IDEMPOTENCY_KEY = {
  name: "Idempotency-Key",
  in: "header",
  required: false,
  description: "the stored answer is replayed for 24 h to a repeat of the same request (docs/api.md)",
  schema: { type: "string", minLength: 1, maxLength: 255 },
};

type Parameter = { in?: string; description?: string; schema?: Record<string, unknown> };
type Operation = {
  responses?: Record<string, unknown>;
  parameters?: Array<Record<string, unknown>>;
  requestBody?: {
    required?: boolean;
    content?: Record<string, { schema?: { required?: string[]; [k: string]: unknown } }>;
  };
};
type Doc = {
  paths?: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, unknown> };
  [k: string]: unknown;
};

const errorResponse = (status: string) => errorResponseOf(ERRORS[status]!);

const BLOB_BYTES = {
  "text/plain": { schema: { type: "string" } },
  "audio/*": { schema: { type: "string", format: "binary" } },
};

/** Routes that answer other than JSON, or without an API key: described whole here. */
const OWN: Record<
  string,
  { responses: Record<string, unknown>; parameters?: Array<Record<string, unknown>> }
> = {
  "get /v1/blobs/{id}": {
    // The handler checks the query itself (a bad one is a 403, not a 400), so no route schema names it.
    parameters: [
      {
        name: "expires",
        in: "query",
        required: true,
        description: "when the URL expires, Unix seconds (as in the event's URL); missing or past: 403",
        schema: { type: "integer" },
      },
      {
        name: "signature",
        in: "query",
        required: true,
        description: "the URL's signature (as in the event's URL); missing or wrong: 403",
        schema: { type: "string" },
      },
    ],
    responses: {
      "200": {
        description:
          "the blob: a transcript or summary (`text/plain; charset=utf-8`) or a recording (its audio type)",
        content: BLOB_BYTES,
      },
      "206": { description: "the requested byte range (`Range`)", content: BLOB_BYTES },
      "403": errorResponseOf("malformed, tampered or expired signature (`details.reason`)"),
      "404": errorResponseOf("unknown or purged blob"),
      "416": errorResponseOf("range past the end"),
      "503": errorResponse("503"),
    },
  },
  "get /v1/events/stream": {
    parameters: [
      {
        name: "Last-Event-ID",
        in: "header",
        required: false,
        description: "resume after this event, as `after` does (`after` wins); not an event id: 400",
        schema: { type: "string", pattern: "^evt_[0-9a-z]{26}$" },
      },
    ],
    responses: {
      "200": {
        description: "the account's events as Server-Sent Events (heartbeats; resumes after `Last-Event-ID`)",
        content: { "text/event-stream": { schema: { type: "string" } } },
      },
      "400": errorResponse("400"),
      "401": errorResponse("401"),
      "429": errorResponseOf(
        `\`too_many_streams\`: the account has ${MAX_STREAMS_PER_ACCOUNT} streams open on this server process (\`Retry-After\`), or \`rate_limited\``,
      ),
      "503": errorResponse("503"),
    },
  },
};

/**
 * A bodiless POST or PATCH to a route with a body schema means `{}` (app.ts), so a body is
 * required only where its schema names a required field.
 */
function bodyRequired(body: NonNullable<Operation["requestBody"]>): boolean {
  return (body.content?.["application/json"]?.schema?.required?.length ?? 0) > 0;
}

/**
 * A prefixed path id (`ep_…`) is validated against its pattern, but one that does not match is
 * answered 404 like an unknown id (routes/common.ts): the pattern is said in words, not declared,
 * so that the document does not promise a 400 the server never gives.
 */
function pathIdParam(p: Record<string, unknown>): Record<string, unknown> {
  const param = p as Parameter;
  const pattern = param.schema?.pattern;
  if (param.in !== "path" || typeof pattern !== "string") return p;
  const { pattern: _, ...schema } = param.schema!;
  const prefix = /^\^([a-z]+)_/.exec(pattern)?.[1];
  return {
    ...p,
    schema,
    description: `\`${prefix}_\` and 26 characters; an id of any other form is answered 404, as an unknown one is`,
  };
}

function errorResponseOf(description: string) {
  return { description, content: { "application/json": { schema: { $ref: "#/components/schemas/error" } } } };
}

export function completeOpenApi(doc: Doc): Doc {
  for (const [path, ops] of Object.entries(doc.paths ?? {})) {
    if (!path.startsWith("/v1/")) continue;
    for (const [method, op] of Object.entries(ops)) {
      op.parameters = op.parameters?.map(pathIdParam);
      const own = OWN[`${method} ${path}`];
      if (own) {
        op.responses = own.responses;
        if (own.parameters) op.parameters = [...(op.parameters ?? []), ...own.parameters];
        continue;
      }
      const writes = method !== "get";
      const ok = SUCCESS[`${method} ${path}`];
      const responses: Record<string, unknown> = ok
        ? {
            [ok.status]: {
              description: ok.description,
              content: { "application/json": { schema: { $ref: `#/components/schemas/${ok.schema}` } } },
            },
          }
        : { "200": { description: "OK" } };
      for (const s of writes ? WRITE_ERRORS : READ_ERRORS) responses[s] = errorResponse(s);
      op.responses = responses;
      if (writes) op.parameters = [...(op.parameters ?? []), IDEMPOTENCY_KEY];
      if (path === "/v1/calls/{id}/recording" && method === "post")
        op.requestBody = {
          required: true,
          content: { "audio/*": { schema: { type: "string", format: "binary" } } },
        };
      else if (op.requestBody) op.requestBody.required = bodyRequired(op.requestBody);
    }
  }
  doc.components = {
    ...doc.components,
    schemas: { ...doc.components?.schemas, error: ERROR_SCHEMA },
  };
  // OpenAPI 3.0 has no webhooks object; `x-webhooks` is the extension documentation tools read.
  doc["x-webhooks"] = Object.fromEntries(
    EVENT_TYPES.map((t) => [
      t,
      {
        post: {
          summary: `${t}, signed per Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature)`,
          requestBody: {
            content: {
              "application/json": { schema: { $ref: `#/components/schemas/${t.replace(".", "_")}` } },
            },
          },
          responses: { "2XX": { description: "received; any other answer is retried" } },
        },
      },
    ]),
  );
  return doc;
}
