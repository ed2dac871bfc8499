/** Schema fragments shared by route modules. */

/**
 * The largest id an INTEGER column holds on PostgreSQL (an agent's, and a call's where events and
 * deliveries keep it): a list filter above it is a 400 on both databases, not PostgreSQL's
 * out-of-range error.
 */
export const INT32_MAX = 2_147_483_647;
export const idParam = {
  type: "object",
  required: ["id"],
  properties: { id: { type: "integer", minimum: 1, maximum: 9007199254740991 } },
} as const;

/** What each prefixed id names, for the 404 of an id that cannot exist (errors.ts). */
export const ID_NOUNS: Readonly<Record<string, string>> = {
  ep: "endpoint",
  dlv: "delivery",
  evt: "event",
  rcv: "recover job",
};

/**
 * A prefixed id in a path (`dlv_…`, `ep_…`, `evt_…`). One that does not have the form of an id is
 * answered 404, as an unknown one is (errors.ts), the way Stripe and Svix answer: a 400 quoting
 * the pattern told a client that made up `dlv_123` something other than "no such delivery". It
 * never reaches a query (PostgreSQL's text cannot hold the NUL of `ep_%00`).
 */
export const stringIdParam = (prefix: keyof typeof ID_NOUNS & string) =>
  ({
    type: "object",
    required: ["id"],
    properties: { id: { type: "string", pattern: `^${prefix}_[0-9a-z]{26}$` } },
  }) as const;

/**
 * A list's filter by a prefixed id (`?endpoint_id=ep_…`). Empty means no filter, as it always did
 * (`?endpoint_id=` from an unset variable).
 */
export const idFilter = (prefix: keyof typeof ID_NOUNS & string) =>
  ({ type: "string", pattern: `^(${prefix}_[0-9a-z]{26})?$` }) as const;

export const e164 = { type: "string", pattern: "^\\+[0-9]{8,15}$" } as const;
/** A string with something besides white space in it (errors.ts words its refusal). */
export const NOT_BLANK = "\\S";
export const isoTimestamp = {
  type: "string",
  pattern: "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}(:\\d{2}(\\.\\d+)?)?(Z|[+-]\\d{2}:?\\d{2})$",
} as const;
