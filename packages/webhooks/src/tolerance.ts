import { WebhookVerificationError } from "./errors.js";

/** Options of `verify` and `verifySignature`. */
export interface VerifyOptions {
  /** The current time, as Unix seconds or a `Date`. `0` is a valid time. Default: the clock. */
  readonly now?: number | Date;
  /**
   * How far `webhook-timestamp` may be from `now`, either way, inclusive. Default 300 (5 min). A
   * string of digits is read as its number (an environment variable's value).
   */
  readonly toleranceSeconds?: number | string;
}

/**
 * Five minutes, as in the Standard Webhooks spec and every reference library.
 *
 * @example
 * ```ts
 * wh.verify(body, headers, { toleranceSeconds: DEFAULT_TOLERANCE_SECONDS * 2 });
 * ```
 */
export const DEFAULT_TOLERANCE_SECONDS = 300;

/** `now` as whole Unix seconds. Whole seconds, because the header has whole seconds: comparing
 * against a fractional clock makes the inclusive bound flaky (the Go/Python divergence in the
 * conformance vectors). */
export function nowSeconds(now: number | Date | undefined): number {
  const value = now === undefined ? Date.now() / 1000 : now instanceof Date ? now.getTime() / 1000 : now;
  if (typeof value !== "number" || !Number.isFinite(value))
    throw new TypeError("`now` must be Unix seconds or a valid Date");
  assertSeconds(value, "`now`");
  return Math.floor(value);
}

/**
 * Past this, a number given as Unix seconds is milliseconds by mistake (`Date.now()`): as seconds
 * it would be the year 5138. Caught here, it is a TypeError naming the mistake instead of every
 * signature "too old" or "too new".
 */
const MAX_UNIX_SECONDS = 1e11;

export function assertSeconds(value: number, what: string): void {
  if (Math.abs(value) >= MAX_UNIX_SECONDS)
    throw new TypeError(`${what} must be Unix seconds; ${value} looks like milliseconds (Date.now())`);
}

/**
 * `toleranceSeconds` as a number: the default when absent, a non-negative number as it is, a
 * string of digits as its number (`"600"` from an environment variable). Anything else is a
 * TypeError: JavaScript would have read `"1e3"`, `true`, `[600]` or `""` as some number.
 */
export function toleranceOf(value: unknown): number {
  if (value === undefined || value === null) return DEFAULT_TOLERANCE_SECONDS;
  if (typeof value === "number" && value >= 0) return value;
  if (typeof value === "string" && /^\s*\d+\s*$/.test(value)) return Number(value);
  throw new TypeError("`toleranceSeconds` must be a non-negative number of seconds (or a string of digits)");
}

/**
 * Rejects a timestamp outside `now ± tolerance` (bounds included). Runs before the signature
 * check, as in the reference libraries, so a replayed old delivery is reported as too old.
 */
export function checkTimestamp(timestamp: number, opts: VerifyOptions | undefined): void {
  const now = nowSeconds(opts?.now);
  const tolerance = toleranceOf(opts?.toleranceSeconds);
  if (now - timestamp > tolerance) {
    throw new WebhookVerificationError("timestamp_too_old", "webhook-timestamp is too old");
  }
  if (timestamp - now > tolerance) {
    throw new WebhookVerificationError("timestamp_too_new", "webhook-timestamp is too far in the future");
  }
}
