import { EVENT_TYPES, type EventType, eventSchemas } from "@klen/webhooks/schemas";
import { Ajv } from "ajv";

const ajv = new Ajv({ allErrors: false, strict: false });
const validators = Object.fromEntries(EVENT_TYPES.map((t) => [t, ajv.compile(eventSchemas[t])])) as Record<
  EventType,
  ReturnType<typeof ajv.compile>
>;

/**
 * Checks a body the server is about to emit against its event's schema. A failure here is a bug
 * in the server, never bad input, so it throws and the transition's transaction rolls back.
 */
export function assertValidEvent(type: EventType, body: unknown): void {
  const v = validators[type];
  if (!v(body)) {
    throw new Error(`generated ${type} body does not match its schema: ${ajv.errorsText(v.errors)}`);
  }
}
