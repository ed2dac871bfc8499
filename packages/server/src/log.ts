import { pino } from "pino";
import { isDatabaseUnavailable } from "./storage/store.js";

/**
 * Structured logs. Secrets never reach them: the paths below are censored wherever they appear,
 * and code logs ids and counts, not bodies or headers.
 */
export function createLogger(opts: { level?: string; pretty?: boolean } = {}) {
  return pino({
    // An empty LOG_LEVEL is the default, as config.ts reads it (pino refused "").
    level: opts.level ?? (process.env.LOG_LEVEL || "info"),
    base: { service: "klen-webhooks", pid: process.pid },
    redact: {
      paths: [
        "secret",
        "*.secret",
        "apiKey",
        "*.apiKey",
        "api_key",
        "*.api_key",
        "authorization",
        "*.authorization",
        "req.headers.authorization",
        "headers.authorization",
        "headers['webhook-signature']",
        "encryptionKey",
        "*.encryptionKey",
      ],
      censor: "[redacted]",
    },
  });
}
export type Logger = ReturnType<typeof createLogger>;

const QUIET_MS = 30_000;
const quiet = new Map<string, { until: number; suppressed: number }>();

/**
 * Logs a failed round of background work (claims, summaries, the retention purge…). While the
 * database is unavailable that is one warning per 30 s for each kind of work, without a stack —
 * an outage would otherwise log several stack traces a second per process — with the number of
 * failures left out since the last one; any other failure is an error with its stack, every time.
 */
export function logBackgroundFailure(
  log: Logger,
  fields: Record<string, unknown>,
  message: string,
  err: unknown,
): void {
  if (!isDatabaseUnavailable(err)) {
    log.error({ ...fields, err }, message);
    return;
  }
  const q = quietly(message);
  if (!q) return;
  log.warn(
    { ...fields, error: (err as Error).message, ...(q.suppressed ? { suppressed: q.suppressed } : {}) },
    `${message}: the database is unavailable; retrying`,
  );
}

/**
 * One line per 30 s for `key`: `undefined` while it is quiet, else how many were left out since
 * the last line (`suppressed`, for the line to say).
 */
export function quietly(key: string): { suppressed: number } | undefined {
  const now = Date.now();
  const q = quiet.get(key);
  if (q && now < q.until) {
    q.suppressed++;
    return undefined;
  }
  quiet.set(key, { until: now + QUIET_MS, suppressed: 0 });
  return { suppressed: q?.suppressed ?? 0 };
}
