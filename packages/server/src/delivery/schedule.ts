/**
 * Retry timing (PRODUCT.md §3). Pure: randomness and the clock are passed in.
 *
 * The first attempt is immediate; `schedule[i]` is the delay after failed attempt i+1. Each delay
 * gets ±20 % jitter so that an endpoint's backlog does not come back as one synchronized wave.
 */
export const JITTER = 0.2;
/**
 * Kept off the top of the band: the time a retry that came due takes to be claimed and sent (the
 * dispatcher wakes for it, a claim, the request), so that the retry as the receiver sees it stays
 * within ±20 % of the delay. At most half the band's upper half, for very short schedules.
 */
export const PICKUP_MS = 50;

/** The allowance `nextAttempt` keeps off the top of `base`'s band. */
export const pickupAllowance = (base: number): number => Math.min(PICKUP_MS, (base * JITTER) / 2);

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
  // From base − 20 % to base + 20 % less the pick-up allowance; half of the draws on each side of
  // the schedule's own delay (`random` 0.5 gives exactly it).
  const r = random() * 2 - 1;
  const spread = r <= 0 ? base * JITTER : base * JITTER - pickupAllowance(base);
  const scheduled = Math.max(0, Math.round(base + r * spread));
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
