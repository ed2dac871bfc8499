/**
 * The verified body as a call event: decoded, parsed and checked against the event schemas.
 */
import { WebhookVerificationError } from "./errors.js";
import type { CallEvent } from "./events.js";
import { EVENT_TYPES, type EventType, eventSchemas } from "./schemas.js";
import { type SchemaIssue, validate } from "./validate.js";

const decoder = new TextDecoder("utf-8", { fatal: true });

function invalid(message: string, options?: { cause?: unknown; issues?: readonly SchemaIssue[] }) {
  return new WebhookVerificationError("invalid_body", message, options);
}

/**
 * Issues of a parsed JSON value as a call event; empty when it is one. Picks the schema by
 * `event_type` so the issues name the real problem, not six failed `oneOf` branches.
 * Fields the schema does not know are ignored, so a receiver on this SDK keeps accepting events
 * from a newer server that adds fields; every field it does know must be as the schema says.
 * (An event type it does not know is an issue: there is no schema to check it against.)
 *
 * @example
 * ```ts
 * validateCallEvent(JSON.parse(body)); // [] when valid
 * ```
 */
export function validateCallEvent(value: unknown): SchemaIssue[] {
  const type = (value as { event_type?: unknown } | null)?.event_type;
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return [{ path: "$", message: "must be an object", keyword: "type" }];
  }
  if (!EVENT_TYPES.includes(type as EventType)) {
    return [{ path: "$.event_type", message: `must be one of ${EVENT_TYPES.join(", ")}`, keyword: "enum" }];
  }
  return validate(eventSchemas[type as EventType], value, "$", { unknownProperties: "ignore" });
}

/**
 * Whether a parsed JSON value is a valid call event.
 *
 * @example
 * ```ts
 * if (isCallEvent(payload) && payload.event_type === "call.failed") console.log(payload.call.failure_reason);
 * ```
 */
export function isCallEvent(value: unknown): value is CallEvent {
  return validateCallEvent(value).length === 0;
}

/**
 * Decodes (UTF-8, strictly), parses and validates a body. Throws `invalid_body` with the JSON
 * error as `cause` or the schema issues in `issues`.
 *
 * @example
 * ```ts
 * const event = parseCallEvent('{"event_type":"call.started",…}');
 * ```
 */
export function parseCallEvent(body: string | Uint8Array): CallEvent {
  let value: unknown;
  try {
    value = JSON.parse(typeof body === "string" ? body : decoder.decode(body));
  } catch (cause) {
    throw invalid("Body is not valid UTF-8 JSON", { cause });
  }
  const issues = validateCallEvent(value);
  if (issues.length > 0) {
    const first = issues[0]!;
    throw invalid(`Body is not a valid call event: ${first.path} ${first.message}`, { issues });
  }
  return value as CallEvent;
}
