import { setTimeout as sleep } from "node:timers/promises";

/**
 * Background work run again and again: `work` starts `firstMs` after `start()`, and each next run
 * `delayMs()` after the previous one ended, so runs never overlap. `work` handles its own errors.
 * `stop()` cancels the next run and waits for the one in hand, which can ask `stopped()` to end early.
 */
export class Periodic {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;

  constructor(
    private readonly work: (stopped: () => boolean) => Promise<unknown>,
    private readonly delayMs: () => number,
    private readonly firstMs = delayMs(),
  ) {}

  start(): void {
    const stopped = () => this.timer === undefined;
    const tick = () => {
      this.running = this.work(stopped).finally(() => {
        if (!stopped()) this.timer = setTimeout(tick, this.delayMs()).unref();
      });
    };
    this.timer = setTimeout(tick, this.firstMs).unref();
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }
}

/**
 * What a walk through a large table waits between its batches (the retention purge, the sealing of
 * values stored in clear): SQLite runs every statement on the event loop, so without it requests
 * and attempts waited for the whole walk (200,000 expired events: 21 s of nothing answered).
 */
export const BATCH_PAUSE_MS = 5;

/** Lets the process serve everything else before the next batch of a walk. */
export function pauseBetweenBatches(ms = BATCH_PAUSE_MS): Promise<void> {
  return sleep(ms);
}
