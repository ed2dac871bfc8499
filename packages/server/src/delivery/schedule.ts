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
 * `retryAfterMs` (from a 429/503 `Retry-After`) replaces the scheduled delay but is held within
 * the schedule's own bounds: never sooner than its shortest delay, never later than its longest,
 * so a receiver can slow us down without parking a delivery forever.
 */
export function nextAttempt(
  schedule: readonly number[],
  attemptsMade: number,
  random: () => number,
  retryAfterMs?: number,
): NextAttempt {
  const base = schedule[attemptsMade - 1];
  if (base === undefined) return { final: true };
  if (retryAfterMs !== undefined && schedule.length > 0) {
    const lo = Math.min(...schedule);
    const hi = Math.max(...schedule);
    return { final: false, delayMs: Math.round(Math.min(hi, Math.max(lo, retryAfterMs))) };
  }
  const factor = 1 + (random() * 2 - 1) * JITTER;
  return { final: false, delayMs: Math.max(0, Math.round(base * factor)) };
}

/** `Retry-After` as delta-seconds or an HTTP date, in ms from `now`; undefined when absent or unreadable. */
export function parseRetryAfter(value: string | string[] | undefined, now: number): number | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  if (v === undefined || v.trim() === "") return undefined;
  if (/^\s*\d+\s*$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}
