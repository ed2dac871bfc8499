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
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$/.test(text)) return undefined;
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? undefined : ms;
}

/** The clock, injectable so that backoff and expiry are testable without waiting. */
export interface Clock {
  now(): number;
}
export const systemClock: Clock = { now: () => Date.now() };
