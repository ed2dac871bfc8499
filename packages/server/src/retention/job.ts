import type { AppContext } from "../api/context.js";
import { logBackgroundFailure } from "../log.js";
import { Periodic } from "../util/periodic.js";
import { purgeExpired } from "./purge.js";

/**
 * Runs the retention purge periodically in worker processes: every tenth of the retention
 * period, between once a second (tiny retentions in tests) and once an hour. Several workers
 * may purge at once; every step is an idempotent delete, so they only share the work.
 */
export function retentionJob(ctx: AppContext): Periodic {
  const intervalMs = Math.min(3_600_000, Math.max(1_000, Math.floor(ctx.config.retentionMs / 10)));
  return new Periodic(
    () =>
      purgeExpired(ctx)
        .then((c) => {
          const total = Object.values(c).reduce((a, b) => a + b, 0);
          if (total > 0) ctx.log.info({ component: "retention", ...c }, "purged expired payloads and media");
        })
        .catch((err: unknown) =>
          logBackgroundFailure(ctx.log, { component: "retention" }, "retention purge failed", err),
        ),
    () => intervalMs,
    Math.min(intervalMs, 10_000),
  );
}
