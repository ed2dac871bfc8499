/** Schema fragments shared by route modules. */
export const idParam = {
  type: "object",
  required: ["id"],
  properties: { id: { type: "integer", minimum: 1, maximum: 9007199254740991 } },
} as const;

/**
 * A prefixed id in a path (`dlv_…`, `ep_…`, `evt_…`). Any text is looked up, so an id that cannot
 * exist is a 404 like one that does not, as Stripe and Svix answer (a 400 "does not match
 * pattern" told a client that made up `dlv_123` something other than "no such delivery"). The
 * prefix names the resource in the OpenAPI document; over 100 characters is a 414 (maxParamLength).
 */
export const stringIdParam = (prefix: string) =>
  ({
    type: "object",
    required: ["id"],
    properties: { id: { type: "string", minLength: 1, description: `${prefix}_…` } },
  }) as const;

export const e164 = { type: "string", pattern: "^\\+[0-9]{8,15}$" } as const;
/** A string with something besides white space in it (errors.ts words its refusal). */
export const NOT_BLANK = "\\S";
export const isoTimestamp = {
  type: "string",
  pattern: "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}(:\\d{2}(\\.\\d+)?)?(Z|[+-]\\d{2}:?\\d{2})$",
} as const;
