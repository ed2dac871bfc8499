import type { SchemaIssue } from "./validate.js";

/** The package's errors carry this, valued with their class's name, in both of its builds. */
const BRAND = Symbol.for("@klen/webhooks.error");

/**
 * Marks `error` as an instance of the package's class `name`, for `isBranded`. The package ships an
 * ES and a CommonJS build, two module instances with classes of their own: a receiver that imports
 * one part and requires another would otherwise see `instanceof` fail across them (and an adapter
 * answer 500 instead of 400 to a bad signature).
 */
export function brand(error: Error, name: string): void {
  Object.defineProperty(error, BRAND, { value: name });
}

/** `instanceof` for the package's error classes, true across its two builds (their `Symbol.hasInstance`). */
export function isBranded(value: unknown, name: string): boolean {
  return typeof value === "object" && value !== null && (value as Record<symbol, unknown>)[BRAND] === name;
}

/**
 * Why a webhook was rejected. Stable strings: match on them, log them, return them to the
 * sender; the human-readable `message` may change between versions.
 */
export type WebhookVerificationErrorCode =
  /** `webhook-id`, `webhook-timestamp` or `webhook-signature` is absent or blank. */
  | "missing_header"
  /** `webhook-timestamp` is not a plain integer of Unix seconds. */
  | "invalid_timestamp"
  /** The timestamp is older than the tolerance allows (a replay, or a clock far behind). */
  | "timestamp_too_old"
  /** The timestamp is further in the future than the tolerance allows. */
  | "timestamp_too_new"
  /** No signature in the header matches any of the keys, or the body was changed. */
  | "no_matching_signature"
  /** The signature is valid but the body is not a Klen call event. */
  | "invalid_body";

/**
 * The one error `verify`, `verifySignature` and their async forms throw when a delivery must
 * be rejected. Adapters answer it with `400 {"error":{"code":<code>}}` and nothing more, so a
 * probing sender learns nothing about which check failed beyond the code.
 *
 * @example
 * ```ts
 * try {
 *   event = wh.verify(rawBody, req.headers);
 * } catch (err) {
 *   if (err instanceof WebhookVerificationError) return res.status(400).json({ error: { code: err.code } });
 *   throw err;
 * }
 * ```
 */
export class WebhookVerificationError extends Error {
  override readonly name = "WebhookVerificationError";
  readonly code: WebhookVerificationErrorCode;
  /** For `invalid_body`: where the body departs from the event schema. */
  readonly issues: readonly SchemaIssue[];

  constructor(
    code: WebhookVerificationErrorCode,
    message: string,
    options?: { cause?: unknown; issues?: readonly SchemaIssue[] },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.issues = options?.issues ?? [];
    brand(this, "WebhookVerificationError");
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return isBranded(value, "WebhookVerificationError");
  }
}

/**
 * Thrown by `new Webhook(key)` for a key that cannot be used: a configuration error, raised at
 * start-up rather than on the first delivery.
 *
 * @example
 * ```ts
 * new Webhook("whsec_!!!!"); // throws WebhookKeyError
 * ```
 */
export class WebhookKeyError extends Error {
  override readonly name = "WebhookKeyError";
  constructor(message: string) {
    super(message);
    brand(this, "WebhookKeyError");
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return isBranded(value, "WebhookKeyError");
  }
}
