import type { AppContext } from "../api/context.js";
import { logBackgroundFailure } from "../log.js";
import { runDueSummaries } from "./jobs.js";
import { type Summarizer, summarizerFor } from "./summarizer.js";

/** The safety-net poll; a transcript in this process or a NOTIFY from another wakes it sooner. */
const POLL_MS = 1_000;
/**
 * Rounds start at most this often. Every committed event wakes the worker (the wake-up is shared
 * with the dispatcher, and other processes' NOTIFYs carry no detail), so at API rates an
 * unthrottled worker ran one empty query per transition.
 */
const MIN_GAP_MS = 50;

/**
 * Runs queued summary jobs in worker processes (roles `all` and `worker`). It sleeps until woken
 * by new work or the poll, runs what is due, and never lets an error escape the loop: a failed
 * round is logged and the next round tries again.
 */
export class SummaryWorker {
  private stopped = true;
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private readonly summarize: Summarizer;
  private readonly poke = () => this.wake?.();

  constructor(
    private readonly ctx: AppContext,
    summarize?: Summarizer,
  ) {
    this.summarize = summarize ?? summarizerFor(ctx.config, ctx.log);
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.ctx.work.on("work", this.poke);
    this.ctx.store.onWork(this.poke);
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const roundStarted = Date.now();
      try {
        // Keep going while there is a backlog; sleep when a round found nothing.
        if ((await runDueSummaries(this.ctx, this.summarize)) > 0) continue;
      } catch (err) {
        logBackgroundFailure(this.ctx.log, { component: "summaries" }, "summary worker round failed", err);
      }
      if (this.stopped) break;
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, POLL_MS);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = undefined;
      const gap = MIN_GAP_MS - (Date.now() - roundStarted);
      if (gap > 0 && !this.stopped) await new Promise((r) => setTimeout(r, gap));
    }
  }

  /**
   * Stops after the job in hand, waiting for it at most `graceMs`: a summarizer that hangs (an
   * OpenAI-compatible one can take three tries of 30 s) must not hold the process's shutdown. A
   * job left unfinished is run again by a worker once its lease (KLEN_LEASE) runs out.
   */
  async stop(graceMs = 10_000): Promise<void> {
    this.stopped = true;
    this.ctx.work.off("work", this.poke);
    this.wake?.();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.loop, new Promise((r) => (timer = setTimeout(r, graceMs)))]);
    clearTimeout(timer);
  }
}
