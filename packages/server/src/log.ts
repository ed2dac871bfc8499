import { pino } from "pino";

/**
 * Structured logs. Secrets never reach them: the paths below are censored wherever they appear,
 * and code logs ids and counts, not bodies or headers.
 */
export function createLogger(opts: { level?: string; pretty?: boolean } = {}) {
  return pino({
    level: opts.level ?? process.env.LOG_LEVEL ?? "info",
    base: { service: "klen-webhooks" },
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
