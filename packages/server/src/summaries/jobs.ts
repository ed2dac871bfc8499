import type { AppContext } from "../api/context.js";
import { announceWork } from "../api/context.js";
import { textContent } from "../calls/content.js";
import { applyTransition } from "../calls/service.js";
import { ApiError } from "../errors.js";
import { logBackgroundFailure } from "../log.js";
import { type Db, PENDING } from "../storage/types.js";
import { whileRenewing } from "../util/lease.js";
import { summarizeExtractive } from "./extractive.js";
import { DETAILED, type Summarizer } from "./summarizer.js";

/**
 * Delays between job runs after a failed one; after the last the call gets the built-in extractive
 * summary instead (logged as an error), so `call.summary` still follows its transcript.
 */
export const JOB_BACKOFF_MS = [5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000, 7_200_000];

/**
 * Queues a generated summary for a call, in the transcript's transaction: the job exists if and
 * only if the transcript does, so a crash between `call.transcript` and `call.summary` loses
 * nothing. The transcript text rides along (the event may carry only a URL to it).
 */
export async function enqueueSummary(
  trx: Db,
  job: { accountId: number; callId: number; transcript: string; now: number },
): Promise<void> {
  await trx
    .insertInto("summary_jobs")
    .values({
      call_id: job.callId,
      account_id: job.accountId,
      transcript: job.transcript,
      status: "pending",
      attempts: 0,
      next_attempt_at: job.now,
      last_error: null,
      created_at: job.now,
      updated_at: job.now,
    })
    .onConflict((oc) => oc.column("call_id").doNothing())
    .execute();
}

/** Queues a summary when the account has `auto_summary` on; returns whether it did. */
export async function enqueueIfAutoSummary(
  trx: Db,
  job: { accountId: number; callId: number; transcript: string; now: number },
): Promise<boolean> {
  const acc = await trx
    .selectFrom("accounts")
    .select("auto_summary")
    .where("id", "=", job.accountId)
    .executeTakeFirst();
  if (Number(acc?.auto_summary) !== 1) return false;
  await enqueueSummary(trx, job);
  return true;
}

interface Claimed {
  callId: number;
  accountId: number;
  transcript: string;
  attempts: number;
  /** The lease end written by the claim: the fence every later write checks. */
  lease: number;
}

/** Claims one due job (optionally of one call) with a lease; undefined if none or lost the race. */
export async function claimJob(ctx: AppContext, now: number, callId?: number): Promise<Claimed | undefined> {
  let q = ctx.store.db
    .selectFrom("summary_jobs")
    .select(["call_id", "account_id", "transcript", "attempts", "next_attempt_at"])
    .where("status", "=", PENDING)
    .where("next_attempt_at", "<=", now);
  if (callId !== undefined) q = q.where("call_id", "=", callId);
  const job = await q.orderBy("next_attempt_at").limit(1).executeTakeFirst();
  if (!job) return undefined;
  // KLEN_LEASE, as for deliveries and test-call runs; renewed while the summarizer runs (run()).
  const lease = now + ctx.config.leaseMs;
  // Compare-and-set on next_attempt_at: of two workers seeing the same row, one wins.
  const res = await ctx.store.db
    .updateTable("summary_jobs")
    .set({ next_attempt_at: lease, attempts: Number(job.attempts) + 1, updated_at: now })
    .where("call_id", "=", job.call_id)
    .where("status", "=", PENDING)
    .where("next_attempt_at", "=", job.next_attempt_at)
    .executeTakeFirst();
  if (Number(res.numUpdatedRows) !== 1) return undefined;
  return {
    callId: Number(job.call_id),
    accountId: Number(job.account_id),
    transcript: job.transcript,
    attempts: Number(job.attempts) + 1,
    lease,
  };
}

/**
 * Runs one claimed job: asks the summarizer (outside any transaction: it may take seconds), then
 * applies the `summary` step, which emits `call.summary`, and deletes the job in one transaction.
 * A failure schedules the next run; after the last, the built-in extractive summary is sent instead
 * and the failure logged as an error (PRODUCT.md §5: `call.summary` follows the transcript either
 * way). Only when that has nothing to say either (no sentence in the transcript) is the job marked
 * failed. A call that got a summary meanwhile (posted by the client) just drops the job.
 */
export async function runJob(
  ctx: AppContext,
  summarize: Summarizer,
  job: Claimed,
): Promise<"done" | "retry" | "failed"> {
  const log = ctx.log.child({ component: "summaries", call_id: job.callId });
  let summary: string;
  // The summarizer may take longer than the lease (an OpenAI-compatible one: up to three tries of
  // 30 s): the lease is renewed every third of its length meanwhile, so a live worker keeps the
  // job and one that died gives it up within a lease. Each renewal is fenced on the last one.
  const summarizeHeld = () =>
    whileRenewing(
      ctx.config.leaseMs,
      async () => {
        const next = ctx.clock.now() + ctx.config.leaseMs;
        const res = await ctx.store.db
          .updateTable("summary_jobs")
          .set({ next_attempt_at: next })
          .where("call_id", "=", job.callId)
          .where("status", "=", PENDING)
          .where("next_attempt_at", "=", job.lease)
          .executeTakeFirst();
        if (Number(res.numUpdatedRows) !== 1) return false; // taken over: the writes below find the fence moved
        job.lease = next;
        return true;
      },
      () => summarize(job.transcript, { callId: job.callId }),
    );
  try {
    summary = (await summarizeHeld()).trim();
    if (!summary) throw new Error("the summarizer returned an empty summary");
  } catch (err) {
    const now = ctx.clock.now();
    const delay = JOB_BACKOFF_MS[job.attempts - 1];
    const message = failureMessage(err);
    const fallback = delay === undefined ? summarizeExtractive(job.transcript, DETAILED).trim() : "";
    if (fallback) {
      log.error(
        { attempts: job.attempts, err: message },
        "summary generation failed on every try; sending the built-in extractive summary instead",
      );
      return emitSummary(ctx, job, fallback, log);
    }
    await ctx.store.db
      .updateTable("summary_jobs")
      .set(
        delay === undefined
          ? { status: "failed", last_error: message, updated_at: now }
          : { next_attempt_at: now + delay, last_error: message, updated_at: now },
      )
      .where("call_id", "=", job.callId)
      .where("next_attempt_at", "=", job.lease)
      .execute();
    if (delay === undefined) {
      log.error(
        { attempts: job.attempts, err: message },
        "summary generation failed; giving up on this call",
      );
      return "failed";
    }
    log.warn(
      { attempts: job.attempts, retry_in_ms: delay, err: message },
      "summary generation failed; will retry",
    );
    return "retry";
  }
  return emitSummary(ctx, job, summary, log);
}

/** Applies the `summary` step with `summary` and deletes the job, in one transaction (fenced). */
async function emitSummary(
  ctx: AppContext,
  job: Claimed,
  summary: string,
  log: AppContext["log"],
): Promise<"done"> {
  let emitted = false;
  await ctx.store.db.transaction().execute(async (trx) => {
    const mine = await trx
      .deleteFrom("summary_jobs")
      .where("call_id", "=", job.callId)
      .where("next_attempt_at", "=", job.lease)
      .executeTakeFirst();
    // Lease lost (this worker was too slow and another took over): the other one finishes it.
    if (Number(mine.numDeletedRows) !== 1) return;
    const now = ctx.clock.now();
    try {
      await applyTransition(trx, ctx.store.caps, job.accountId, job.callId, "summary", { now }, () =>
        textContent(ctx, trx, {
          accountId: job.accountId,
          callId: job.callId,
          kind: "summary",
          text: summary,
          now,
        }),
      );
      emitted = true;
    } catch (err) {
      if (!(err instanceof ApiError) || err.status >= 500) throw err;
      log.info({ err: err.message }, "summary not applied (the call has one already, or is gone)");
    }
  });
  if (emitted) await announceWork(ctx);
  return "done";
}

/**
 * What a summarizer's failure says, for the job's `last_error` and the log, at most 500
 * characters. A custom summarizer may reject with anything, not only an Error: reading
 * `.message` of `undefined` threw inside the failure handling, so the job was never rescheduled
 * nor failed, only taken again at every lease, for ever. Pure; never throws.
 *
 * @example failureMessage("quota exceeded") // "quota exceeded"
 */
export function failureMessage(err: unknown): string {
  let text = "";
  try {
    const message = (err as { message?: unknown } | null | undefined)?.message;
    if (typeof message === "string") text = message;
    else if (typeof err === "string") text = err;
    else if (err !== undefined && err !== null) text = JSON.stringify(err) ?? String(err);
  } catch {
    // A value that cannot be shown (a BigInt, a cycle, a throwing getter) says nothing.
  }
  return (text || "the summarizer failed without saying why").slice(0, 500);
}

/** Runs up to `limit` due jobs; returns how many it ran. */
export async function runDueSummaries(ctx: AppContext, summarize: Summarizer, limit = 10): Promise<number> {
  let n = 0;
  while (n < limit) {
    const job = await claimJob(ctx, ctx.clock.now());
    if (!job) break;
    n++;
    await runJob(ctx, summarize, job);
  }
  return n;
}

/**
 * Runs the summary job of one call now, for a caller that needs `call.summary` before its next
 * step (the test-call simulator): claims it itself, or, when a worker holds it, waits until the
 * call has its summary or the job has failed, at most `timeoutMs`, or until `stopped()` (the
 * process is shutting down). A run here that fails ends the wait at once: the job's next run is
 * its backoff away. Returns whether the call got a summary.
 */
export async function summarizeCallNow(
  ctx: AppContext,
  summarize: Summarizer,
  callId: number,
  timeoutMs = 60_000,
  stopped: () => boolean = () => false,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const job = await claimJob(ctx, ctx.clock.now(), callId);
    if (job) {
      // Run here, but wait for it no longer than the deadline or the process's stop (a summarizer
      // that hangs takes three tries of 30 s): the caller then goes on, and the job, still leased
      // to this process, finishes (or is retried) on its own.
      const ran = runJob(ctx, summarize, job).catch((err: unknown) => {
        logBackgroundFailure(ctx.log, { component: "summaries", call_id: callId }, "summary job failed", err);
        return "retry" as const;
      });
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        ran,
        new Promise<"late">((resolve) => {
          timer = setInterval(() => {
            if (Date.now() > deadline || stopped()) resolve("late");
          }, 100);
        }),
      ]);
      clearInterval(timer);
      // Failed here ("retry": its next run is seconds or minutes away): the caller goes on now.
      if (outcome !== "done") return false;
    }
    const call = await ctx.store.db
      .selectFrom("calls")
      .select("summary_at")
      .where("id", "=", callId)
      .executeTakeFirst();
    if (call?.summary_at != null) return true;
    const left = await ctx.store.db
      .selectFrom("summary_jobs")
      .select("status")
      .where("call_id", "=", callId)
      .executeTakeFirst();
    if (!left || left.status === "failed" || Date.now() > deadline || stopped()) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}
