/**
 * Retry timing (PRODUCT.md §3). Pure: randomness and the clock are passed in.
 *
 * The first attempt is immediate; `schedule[i]` is the delay after failed attempt i+1. Each delay
 * gets ±20 % jitter so that an endpoint's backlog does not come back as one synchronized wave.
 */
export const JITTER = 0.2;

export type NextAttempt = { final: true } | { final: false; delayMs: number };

/**
 * When to try again after `attemptsMade` failed attempts, or `final` when the schedule is spent.
 * `retryAfterMs` (from a 429/503 `Retry-After`) can only push the next attempt later, up to the
 * schedule's longest delay: a receiver may slow us down without parking a delivery forever, but
 * its `Retry-After: 1` (a common default of load balancers in maintenance) cannot shrink a 2-hour
 * delay to a second, which spent the whole schedule in about 35 s and failed the delivery
 * (delivery audit).
 */
export function nextAttempt(
  schedule: readonly number[],
  attemptsMade: number,
  random: () => number,
  retryAfterMs?: number,
): NextAttempt {
  const base = schedule[attemptsMade - 1];
  if (base === undefined) return { final: true };
  const factor = 1 + (random() * 2 - 1) * JITTER;
  const scheduled = Math.max(0, Math.round(base * factor));
  return { final: false, delayMs: honourRetryAfter(scheduled, schedule, retryAfterMs) };
}

/**
 * `delayMs`, pushed later by a `Retry-After` (`retryAfterMs`) up to the schedule's longest delay,
 * never made sooner.
 */
export function honourRetryAfter(
  delayMs: number,
  schedule: readonly number[],
  retryAfterMs?: number,
): number {
  if (retryAfterMs === undefined) return delayMs;
  return Math.max(delayMs, Math.round(Math.min(Math.max(...schedule), retryAfterMs)));
}

/**
 * `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3), in ms from `now`; undefined
 * when absent or neither. `Date.parse` alone is lenient: it read "-5", "5.5" and "5, 7" as dates
 * in 2001, that is as "now".
 */
export function parseRetryAfter(value: string | string[] | undefined, now: number): number | undefined {
  const v = (Array.isArray(value) ? value[0] : value)?.trim();
  if (v === undefined || v === "") return undefined;
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  if (!HTTP_DATE.test(v)) return undefined;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** The three HTTP-date forms (IMF-fixdate, RFC 850, asctime): a month name and a time of day. */
const HTTP_DATE = /\b(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\b.*\b\d{2}:\d{2}:\d{2}\b/;
