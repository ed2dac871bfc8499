import type { AppContext } from "../api/context.js";
import { purgeExpired } from "./purge.js";

/**
 * Runs the retention purge periodically in worker processes: every tenth of the retention
 * period, between once a second (tiny retentions in tests) and once an hour. Several workers
 * may purge at once; every step is an idempotent delete, so they only share the work.
 */
export class RetentionJob {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;

  constructor(private readonly ctx: AppContext) {}

  get intervalMs(): number {
    return Math.min(3_600_000, Math.max(1_000, Math.floor(this.ctx.config.retentionMs / 10)));
  }

  start(): void {
    const tick = () => {
      this.running = purgeExpired(this.ctx)
        .then((c) => {
          const total = Object.values(c).reduce((a, b) => a + b, 0);
          if (total > 0)
            this.ctx.log.info({ component: "retention", ...c }, "purged expired payloads and media");
        })
        .catch((err: unknown) =>
          this.ctx.log.error({ component: "retention", err }, "retention purge failed"),
        )
        .finally(() => {
          if (this.timer !== undefined) this.timer = setTimeout(tick, this.intervalMs).unref();
        });
    };
    this.timer = setTimeout(tick, Math.min(this.intervalMs, 10_000)).unref();
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }
}
