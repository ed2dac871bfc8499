import type { FailureReason } from "@klen/webhooks/schemas";
import { sql } from "kysely";
import { type AppContext, announceWork } from "../api/context.js";
import { blobStoreFor, insertBlob, newBlobId, presignedUrl, sealedNow } from "../blobs/blobs.js";
import { textContent } from "../calls/content.js";
import type { PayloadSource } from "../calls/payload.js";
import { applyTransition } from "../calls/service.js";
import type { Action, TransitionInput } from "../calls/transitions.js";
import { ApiError } from "../errors.js";
import type { Db } from "../storage/types.js";
import { enqueueSummary, summarizeCallNow } from "../summaries/jobs.js";
import { type Summarizer, summarizerFor } from "../summaries/summarizer.js";
import { whileRenewing } from "../util/lease.js";
import { generateConversation } from "./conversation.js";
import { seededRandom } from "./random.js";
import { synthesizeWav } from "./wav.js";

export type Outcome = "completed" | FailureReason;

/** Failures that happen before the call connects: the call goes queued → failed. */
export const BEFORE_CONNECT: ReadonlySet<Outcome> = new Set([
  "no-answer",
  "busy",
  "invalid-number",
  "rejected",
  "twilio-failed-to-connect-call",
  "canceled",
]);

/** What a telephony provider would report for each failure (`ended_reason`). */
const PROVIDER_REASON: Record<FailureReason, string> = {
  "twilio-failed-to-connect-call": "twilio-failed-to-connect-call",
  "no-answer": "customer-did-not-answer",
  busy: "customer-busy",
  disconnected: "customer-ended-call-unexpectedly",
  "invalid-number": "twilio-reported-invalid-number",
  rejected: "customer-rejected-call",
  canceled: "call-canceled-before-connect",
  failed: "pipeline-error-during-call",
};

export interface TestCallPlan {
  accountId: number;
  callId: number;
  agentName: string;
  outcome: Outcome;
  transcriptBytes?: number;
}

/**
 * A run that failed this many times (a bug) is given up and logged. Only failures count: a run
 * carried on because its process died (`kill -9`, however often) is not a failure of the run.
 */
export const MAX_RUN_ATTEMPTS = 5;
/**
 * A run carried on this many times after its process died is given up too: one that kills every
 * process that runs it (out of memory, say) would otherwise take the workers down one after
 * another for ever.
 */
export const MAX_RUN_TAKEOVERS = 20;

/** Another process took the run over (this one's lease ran out): it carries the run on. */
class LeaseLost extends Error {}

/**
 * Compare-and-set on a run's lease: moves it from `held` to `next` (null: deletes the run), with
 * `takeovers` when given. False when the lease is not `held` any more (another process took it).
 */
async function swapLease(
  db: Db,
  callId: number,
  held: number,
  next: number | null,
  takeovers?: number,
): Promise<boolean> {
  const res =
    next === null
      ? await db
          .deleteFrom("test_call_runs")
          .where("call_id", "=", callId)
          .where("leased_until", "=", held)
          .executeTakeFirst()
      : await db
          .updateTable("test_call_runs")
          .set({ leased_until: next, ...(takeovers !== undefined ? { takeovers } : {}) })
          .where("call_id", "=", callId)
          .where("leased_until", "=", held)
          .executeTakeFirst();
  return Number("numDeletedRows" in res ? res.numDeletedRows : res.numUpdatedRows) === 1;
}

/** What a failed step sends for a failure reason. */
const failure = (reason: FailureReason) => ({
  failure_reason: reason,
  ended_reason: PROVIDER_REASON[reason],
});

/** The runs in progress in a process, and whether it is shutting down (`handOverTestCalls`). */
interface Runs {
  active: Set<{ callId: number; held(): number }>;
  stopping: boolean;
}
const runsOf = new WeakMap<AppContext, Runs>();
function runs(ctx: AppContext): Runs {
  let r = runsOf.get(ctx);
  if (!r) {
    r = { active: new Set(), stopping: false };
    runsOf.set(ctx, r);
  }
  return r;
}

/**
 * At shutdown, first: runs in progress stop waiting for a summary (and give their lease back
 * themselves), and no run is started from here on.
 */
export function stopTestCalls(ctx: AppContext): void {
  runs(ctx).stopping = true;
}

/**
 * At shutdown, before the store closes: gives back the leases of the runs still in progress, so a
 * worker process carries them on at once instead of after the lease; their steps after this fail
 * (the lease is no longer theirs) and are not logged as errors.
 */
export async function handOverTestCalls(ctx: AppContext): Promise<void> {
  const r = runs(ctx);
  r.stopping = true;
  for (const run of r.active) await swapLease(ctx.store.db, run.callId, run.held(), 0).catch(() => false);
}

/**
 * Drives a test call through the seed's workflow, each step a real transition with its real
 * event: started → ended (brief summary) → transcript → summary (generated, as with auto-summary)
 * → recording (a synthesized WAV); or a failure — before connecting (queued → failed), or mid-call
 * (started → failed, then transcript, summary and recording of the part that happened). The
 * content is a pure function of the call id (see generateConversation), so it can be reproduced.
 *
 * Resumable: steps the call already has are skipped, so a run carried on after a crash
 * (`resumeDueTestCalls`) emits each event once. The caller holds the run's lease (`lease`, the
 * `leased_until` it wrote); each step renews it in its own transaction, which fails on a lease
 * another process has taken since, and the last step deletes the run; while the run waits for its
 * summary the lease is renewed every third of its length. `summaryWaitMs` bounds the wait for the
 * summary: for a new run KLEN_TEST_CALL_SUMMARY_WAIT (8 s), so that a test call completes within
 * seconds even when the summarizer is slow; for a run carried on after its process stopped
 * (`resumed`), long enough to outlast the summary job's own lease (KLEN_LEASE), so that a job the
 * stopped process held is taken over and run here, and the summary still precedes the recording.
 * A summarizer that fails, or is slower than that, lets the recording go first; the summary job
 * carries on and `call.summary` follows.
 */
export async function runTestCall(
  ctx: AppContext,
  plan: TestCallPlan,
  lease: number,
  opts: { summarize?: Summarizer; summaryWaitMs?: number; resumed?: boolean } = {},
): Promise<void> {
  const { accountId, callId } = plan;
  let held = lease;
  const mine = runs(ctx);
  const handle = { callId, held: () => held };
  mine.active.add(handle);
  /** The run's lease renewed (or, last, the run deleted) in `db`; LeaseLost if taken over. */
  const renew = async (db: Db, now: number, last: boolean): Promise<number> => {
    const next = now + ctx.config.leaseMs;
    if (!(await swapLease(db, callId, held, last ? null : next))) throw new LeaseLost();
    return next;
  };
  const step = async (
    action: Action,
    input: Omit<TransitionInput, "now">,
    o: {
      content?: (trx: Db, now: number) => Promise<PayloadSource["content"]>;
      after?: (trx: Db, now: number) => Promise<void>;
      last?: boolean;
    } = {},
  ) => {
    held = await ctx.store.db.transaction().execute(async (trx) => {
      const now = ctx.clock.now();
      const next = await renew(trx, now, o.last ?? false);
      await applyTransition(
        trx,
        ctx.store.caps,
        accountId,
        callId,
        action,
        { ...input, now },
        o.content && (() => o.content!(trx, now)),
      );
      await o.after?.(trx, now);
      return next;
    });
    await announceWork(ctx);
  };
  /** Nothing left to do: the run is deleted. */
  const finish = () => renew(ctx.store.db, ctx.clock.now(), true);

  try {
    const call = await ctx.store.db
      .selectFrom("calls")
      .select(["status", "transcript_at", "summary_at", "recording_at"])
      .where("id", "=", callId)
      .executeTakeFirst();
    if (!call) return void (await finish());
    let status = call.status;

    if (BEFORE_CONNECT.has(plan.outcome)) {
      if (status !== "queued") return void (await finish());
      await step("fail", failure(plan.outcome as FailureReason), { last: true });
      return;
    }
    const rnd = seededRandom(callId * 7919);
    const durationMs = (45 + Math.floor(rnd() * 240)) * 1000;
    const cutOff = plan.outcome !== "completed";
    const convo = generateConversation({
      seed: callId,
      agentName: plan.agentName,
      cutOff,
      ...(plan.transcriptBytes !== undefined ? { minBytes: plan.transcriptBytes } : {}),
    });
    // The call "happened" over the last few minutes: it connected `durationMs` ago and ends now.
    if (status === "queued") {
      await step("start", { started_at: ctx.clock.now() - durationMs });
      status = "in-progress";
    }
    if (status === "in-progress") {
      if (cutOff) await step("fail", failure(plan.outcome as FailureReason));
      else await step("end", { summary: convo.brief });
    }
    // Test calls always use auto-summary: the job is queued with the transcript, as for real calls.
    if (call.transcript_at === null)
      await step(
        "transcript",
        {},
        {
          content: (trx, now) =>
            textContent(ctx, trx, { accountId, callId, kind: "transcript", text: convo.transcript, now }),
          after: (trx, now) => enqueueSummary(trx, { accountId, callId, transcript: convo.transcript, now }),
        },
      );
    if (call.summary_at === null) {
      // The summarizer may take longer than the lease: renewed meanwhile, so that a live run is
      // not taken for an interrupted one (a lost lease shows at the next step).
      const summarized = await whileRenewing(
        ctx.config.leaseMs,
        async () => {
          held = await renew(ctx.store.db, ctx.clock.now(), false);
          return true;
        },
        () =>
          summarizeCallNow(
            ctx,
            opts.summarize ?? summarizerFor(ctx.config, ctx.log),
            callId,
            opts.summaryWaitMs ??
              (opts.resumed
                ? Math.max(60_000, ctx.config.leaseMs + 15_000)
                : ctx.config.testCallSummaryWaitMs),
            () => mine.stopping,
          ),
      );
      // Shutting down: the run is handed over (below) rather than carried on without its summary.
      if (mine.stopping) throw new LeaseLost();
      if (!summarized)
        ctx.log.warn(
          { component: "simulator", call_id: callId },
          "test call has no summary yet; recording follows anyway",
        );
    }
    if (call.recording_at !== null) return void (await finish());

    const store = blobStoreFor(ctx);
    const blobId = newBlobId();
    const wav = synthesizeWav({ seconds: 3, sampleRate: 8000, seed: callId });
    // A file before the step's transaction (an orphan if it rolls back, swept later); bytes kept in
    // the database inside it, so they exist exactly when the row does.
    if (!store.transactional) await store.writeBuffer(blobId, wav);
    try {
      await step(
        "recording",
        {},
        {
          content: async (trx, now) => {
            if (store.transactional) await store.writeBuffer(blobId, wav, trx);
            await insertBlob(trx, {
              id: blobId,
              accountId,
              callId,
              kind: "recording",
              contentType: "audio/wav",
              size: wav.length,
              now,
              sealed: sealedNow(ctx.config),
              store: store.kind,
            });
            return { recording_url: await presignedUrl(ctx, trx, blobId, now) };
          },
          last: true,
        },
      );
    } catch (err) {
      await store.remove(blobId).catch(() => undefined);
      throw err;
    }
  } catch (err) {
    if (err instanceof LeaseLost || mine.stopping) {
      // At shutdown the lease is given back, so a worker carries the run on at once (a no-op when
      // handOverTestCalls did it already, or another process holds it).
      if (mine.stopping) await swapLease(ctx.store.db, callId, held, 0).catch(() => false);
      ctx.log.info(
        { component: "simulator", call_id: callId },
        mine.stopping ? "test call handed over at shutdown" : "test call carried on by another process",
      );
      return;
    }
    if (err instanceof ApiError && err.status < 500) {
      // The call went its own way (someone posted its steps through the API): nothing to carry on.
      ctx.log.warn({ component: "simulator", call_id: callId, err: err.message }, "test call stopped");
      await finish().catch(() => undefined);
      return;
    }
    // Counted towards MAX_RUN_ATTEMPTS; the run is carried on when its lease runs out. (With the
    // database gone this write fails too, and the run is simply tried again.)
    await ctx.store.db
      .updateTable("test_call_runs")
      .set({ attempts: sql`attempts + 1` })
      .where("call_id", "=", callId)
      .where("leased_until", "=", held)
      .execute()
      .catch(() => undefined);
    throw err;
  } finally {
    mine.active.delete(handle);
  }
}

/**
 * Carries on test-call runs whose lease ran out (the process running them died, or failed): up to
 * `limit` of them, one after another, until `stopped()`. A run that failed `MAX_RUN_ATTEMPTS` times
 * is given up. Returns how many it ran.
 */
export async function resumeDueTestCalls(
  ctx: AppContext,
  limit = 5,
  stopped: () => boolean = () => false,
): Promise<number> {
  const due = await ctx.store.db
    .selectFrom("test_call_runs")
    .selectAll()
    .where("leased_until", "<", ctx.clock.now())
    .orderBy("leased_until")
    .limit(limit)
    .execute();
  let ran = 0;
  for (const r of due) {
    if (stopped() || runs(ctx).stopping) break;
    const log = ctx.log.child({ component: "simulator", call_id: Number(r.call_id) });
    const given = Number(r.attempts) >= MAX_RUN_ATTEMPTS || Number(r.takeovers) >= MAX_RUN_TAKEOVERS;
    // The time now, not when the list was read: the runs before this one may have taken a while.
    const lease = ctx.clock.now() + ctx.config.leaseMs;
    // Compare-and-set on the lease: of two processes seeing the same run, one takes it. A lease
    // given back at shutdown (0) is a hand-over, not a takeover after a crash.
    const handedOver = Number(r.leased_until) === 0;
    const won = await swapLease(
      ctx.store.db,
      Number(r.call_id),
      Number(r.leased_until),
      given ? null : lease,
      handedOver ? undefined : Number(r.takeovers) + 1,
    );
    if (!won) continue;
    if (given) {
      log.error(
        { failures: Number(r.attempts), takeovers: Number(r.takeovers) },
        "test call failed too often; given up",
      );
      continue;
    }
    ran++;
    log.warn(
      { failures: Number(r.attempts), takeovers: Number(r.takeovers) + (handedOver ? 0 : 1) },
      "carrying on an interrupted test call",
    );
    await runTestCall(
      ctx,
      {
        accountId: Number(r.account_id),
        callId: Number(r.call_id),
        agentName: r.agent_name,
        outcome: r.outcome as Outcome,
        ...(r.transcript_bytes !== null ? { transcriptBytes: Number(r.transcript_bytes) } : {}),
      },
      lease,
      { resumed: true },
    ).catch((err: unknown) =>
      log.error({ err }, "test call failed; it is tried again when its lease runs out"),
    );
  }
  return ran;
}
