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
