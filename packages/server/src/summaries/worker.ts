import type { AppContext } from "../api/context.js";
import { logBackgroundFailure } from "../log.js";
import { claimJob, runJob } from "./jobs.js";
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
 * Jobs a process runs at once. A summarizer that hangs holds its job for three tries of 30 s: one
 * at a time, every other call's summary (whatever its account) waited behind it.
 */
export const SUMMARY_CONCURRENCY = 8;

/**
 * Runs queued summary jobs in worker processes (roles `all` and `worker`), up to
 * SUMMARY_CONCURRENCY at once. It sleeps until woken by new work, a finished job or the poll,
 * claims what is due while it has room, and never lets an error escape the loop: a failed round
 * is logged and the next round tries again.
 */
export class SummaryWorker {
  private stopped = true;
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private readonly summarize: Summarizer;
  /** Woken while it was not asleep: the next sleep is skipped. */
  private poked = false;
  private readonly poke = () => {
    this.poked = true;
    this.wake?.();
  };

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

  /** The jobs in progress. */
  private readonly running = new Set<Promise<unknown>>();

  private async run(): Promise<void> {
    while (!this.stopped) {
      const roundStarted = Date.now();
      try {
        while (this.running.size < SUMMARY_CONCURRENCY && !this.stopped) {
          const job = await claimJob(this.ctx, this.ctx.clock.now());
          if (!job) break;
          const ran: Promise<unknown> = runJob(this.ctx, this.summarize, job)
            .catch((err: unknown) =>
              logBackgroundFailure(
                this.ctx.log,
                { component: "summaries", call_id: job.callId },
                "summary job failed",
                err,
              ),
            )
            .finally(() => {
              this.running.delete(ran);
              this.poke(); // room for the next
            });
          this.running.add(ran);
        }
      } catch (err) {
        logBackgroundFailure(this.ctx.log, { component: "summaries" }, "summary worker round failed", err);
      }
      if (this.stopped) break;
      if (!this.poked)
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, POLL_MS);
          this.wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
      this.wake = undefined;
      this.poked = false;
      const gap = MIN_GAP_MS - (Date.now() - roundStarted);
      if (gap > 0 && !this.stopped) await new Promise((r) => setTimeout(r, gap));
    }
  }

  /**
   * Stops after the jobs in hand, waiting for them at most `graceMs`: a summarizer that hangs (an
   * OpenAI-compatible one can take three tries of 30 s) must not hold the process's shutdown. A
   * job left unfinished is run again by a worker once its lease (KLEN_LEASE) runs out.
   */
  async stop(graceMs = 10_000): Promise<void> {
    this.stopped = true;
    this.ctx.work.off("work", this.poke);
    this.wake?.();
    let timer: NodeJS.Timeout | undefined;
    const done = (async () => {
      await this.loop;
      await Promise.all(this.running);
    })();
    await Promise.race([done, new Promise((r) => (timer = setTimeout(r, graceMs)))]);
    clearTimeout(timer);
  }
}
