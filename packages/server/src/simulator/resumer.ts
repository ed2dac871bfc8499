import type { AppContext } from "../api/context.js";
import { resumeDueTestCalls } from "./run.js";

/** How often worker processes look for interrupted test calls. */
const POLL_MS = 1_000;

/**
 * Carries on test calls whose run was interrupted (the process running it died): in worker
 * processes (roles `all` and `worker`), a look every second for runs whose lease has run out.
 * A failed round is logged; the next one tries again.
 */
export class TestCallResumer {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;

  constructor(private readonly ctx: AppContext) {}

  start(): void {
    const tick = () => {
      this.running = resumeDueTestCalls(this.ctx, 5, () => this.timer === undefined)
        .catch((err: unknown) =>
          this.ctx.log.error({ component: "simulator", err }, "looking for interrupted test calls failed"),
        )
        .finally(() => {
          if (this.timer !== undefined) this.timer = setTimeout(tick, POLL_MS).unref();
        });
    };
    this.timer = setTimeout(tick, POLL_MS).unref();
  }

  /** Stops after the run in hand (one interrupted by exit is handed over: `handOverTestCalls`). */
  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }
}
