/** ISO-8601 UTC with `Z` and whole seconds, as in Klen's payloads (`2025-04-23T14:30:45Z`). */
export function isoSeconds(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(".000Z", "Z");
}

/** ISO-8601 UTC with milliseconds, for API objects where precision helps (`created_at`). */
export function isoMillis(ms: number): string {
  return new Date(ms).toISOString();
}

/** Parses an ISO-8601 timestamp given by a client; `undefined` when it is not one. */
export function parseIso(text: string): number | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(?:Z|[+-](\d{2}):?(\d{2}))$/.exec(
    text,
  );
  if (!m) return undefined;
  // Date.parse rolls impossible fields over (Feb 30 → Mar 1, hour 24 → next day): refuse them.
  const [y, mo, d, h, mi, s, oh, om] = m.slice(1).map((v) => (v === undefined ? 0 : Number(v))) as number[];
  const daysInMonth = new Date(Date.UTC(y!, mo!, 0)).getUTCDate();
  if (mo! < 1 || mo! > 12 || d! < 1 || d! > daysInMonth || h! > 23 || mi! > 59 || s! > 59) return undefined;
  if (oh! > 23 || om! > 59) return undefined;
  const ms = Date.parse(text);
  // Payloads carry `YYYY-MM-DDTHH:MM:SSZ` in UTC, so an instant must have a four-digit UTC year;
  // before the Unix epoch is refused too (no call happened then).
  if (Number.isNaN(ms) || ms < 0 || ms > MAX_ISO_MS) return undefined;
  return ms;
}

/** 9999-12-31T23:59:59.999Z, the last instant with a four-digit year. */
const MAX_ISO_MS = 253_402_300_799_999;

/** The clock, injectable so that backoff and expiry are testable without waiting. */
export interface Clock {
  now(): number;
}
export const systemClock: Clock = { now: () => Date.now() };
