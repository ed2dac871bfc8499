import { EVENT_TYPES } from "@klen/webhooks/schemas";

/**
 * What the routes' schemas cannot say, added to the generated OpenAPI document (docs/api.md is the
 * reference for each): the success status of each operation, the error answers and their shape,
 * the `Idempotency-Key` header, the recording's raw body, and the webhooks the server sends.
 * Documentation only: nothing here validates or serialises a request.
 */

/** Operations whose success is not `200`. */
const SUCCESS: Record<string, { status: string; description: string }> = {
  "post /v1/agents": { status: "201", description: "the agent" },
  "post /v1/api-keys": { status: "201", description: "the key, shown this once" },
  "post /v1/contacts": { status: "201", description: "the contact" },
  "post /v1/calls": { status: "201", description: "the call" },
  "post /v1/endpoints": { status: "201", description: "the endpoint, with its secret" },
  "post /v1/test-calls": { status: "202", description: "the test call runs; `{call_id}`" },
  "post /v1/deliveries/{id}/retry": { status: "202", description: "the delivery, set to pending" },
  "post /v1/endpoints/{id}/recover": { status: "202", description: "`{queued}`" },
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

type Operation = {
  responses?: Record<string, unknown>;
  parameters?: Array<Record<string, unknown>>;
  requestBody?: unknown;
};
type Doc = {
  paths?: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, unknown> };
  [k: string]: unknown;
};

const errorResponse = (status: string) => errorResponseOf(ERRORS[status]!);

/** Routes that answer other than JSON, or without an API key: described whole here. */
const OWN: Record<string, Record<string, unknown>> = {
  "get /v1/blobs/{id}": {
    "200": { description: "the blob (a transcript, summary or recording)" },
    "206": { description: "the requested byte range (`Range`)" },
    "403": errorResponseOf("malformed, tampered or expired signature (`details.reason`)"),
    "404": errorResponseOf("unknown or purged blob"),
    "416": errorResponseOf("range past the end"),
  },
  "get /v1/events/stream": {
    "200": {
      description: "the account's events as Server-Sent Events (heartbeats; resumes after `Last-Event-ID`)",
      content: { "text/event-stream": { schema: { type: "string" } } },
    },
    "400": errorResponse("400"),
    "401": errorResponse("401"),
  },
};

function errorResponseOf(description: string) {
  return { description, content: { "application/json": { schema: { $ref: "#/components/schemas/error" } } } };
}

export function completeOpenApi(doc: Doc): Doc {
  for (const [path, ops] of Object.entries(doc.paths ?? {})) {
    if (!path.startsWith("/v1/")) continue;
    for (const [method, op] of Object.entries(ops)) {
      const own = OWN[`${method} ${path}`];
      if (own) {
        op.responses = own;
        continue;
      }
      const writes = method !== "get";
      const ok = SUCCESS[`${method} ${path}`] ?? { status: "200", description: "OK" };
      const responses: Record<string, unknown> = {
        [ok.status]: { description: ok.description },
      };
      for (const s of writes ? WRITE_ERRORS : READ_ERRORS) responses[s] = errorResponse(s);
      op.responses = responses;
      if (writes) op.parameters = [...(op.parameters ?? []), IDEMPOTENCY_KEY];
      if (path === "/v1/calls/{id}/recording" && method === "post")
        op.requestBody = {
          required: true,
          content: { "audio/*": { schema: { type: "string", format: "binary" } } },
        };
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
