/** Schema fragments shared by route modules. */
export const idParam = {
  type: "object",
  required: ["id"],
  properties: { id: { type: "integer", minimum: 1, maximum: 9007199254740991 } },
} as const;

export const stringIdParam = (prefix: string) =>
  ({
    type: "object",
    required: ["id"],
    properties: { id: { type: "string", pattern: `^${prefix}_[0-9a-z]{26}$` } },
  }) as const;

export const e164 = { type: "string", pattern: "^\\+[0-9]{8,15}$" } as const;
/** A string with something besides white space in it (errors.ts words its refusal). */
export const NOT_BLANK = "\\S";
export const isoTimestamp = {
  type: "string",
  pattern: "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}(:\\d{2}(\\.\\d+)?)?(Z|[+-]\\d{2}:?\\d{2})$",
} as const;
