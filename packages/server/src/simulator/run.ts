import type { FailureReason } from "@klen/webhooks/schemas";
import { type AppContext, announceWork } from "../api/context.js";
import { blobStoreFor, insertBlob, newBlobId, presignedUrl } from "../blobs/blobs.js";
import { textContent } from "../calls/content.js";
import type { PayloadSource } from "../calls/payload.js";
import { applyTransition } from "../calls/service.js";
import type { Action, TransitionInput } from "../calls/transitions.js";
import type { Db } from "../storage/types.js";
import { enqueueSummary, summarizeCallNow } from "../summaries/jobs.js";
import { type Summarizer, summarizerFor } from "../summaries/summarizer.js";
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
 * Drives a created (queued) test call through the seed's workflow, each step a real transition
 * with its real event: started → ended (brief summary) → transcript → summary (generated, as
 * with auto-summary) → recording (a synthesized WAV); or a failure — before connecting
 * (queued → failed), or mid-call (started → failed, then transcript, summary and recording of
 * the part that happened). The content is a pure function of the call id (see
 * generateConversation), so it can be reproduced.
 */
export async function runTestCall(
  ctx: AppContext,
  plan: TestCallPlan,
  summarize?: Summarizer,
): Promise<void> {
  const { accountId, callId } = plan;
  const step = async (
    action: Action,
    input: Omit<TransitionInput, "now">,
    content?: (trx: Db, now: number) => Promise<PayloadSource["content"]>,
    after?: (trx: Db, now: number) => Promise<void>,
  ) => {
    await ctx.store.db.transaction().execute(async (trx) => {
      const now = ctx.clock.now();
      await applyTransition(
        trx,
        ctx.store.caps,
        accountId,
        callId,
        action,
        { ...input, now },
        content && (() => content(trx, now)),
      );
      await after?.(trx, now);
    });
    await announceWork(ctx);
  };

  if (BEFORE_CONNECT.has(plan.outcome)) {
    const reason = plan.outcome as FailureReason;
    await step("fail", { failure_reason: reason, ended_reason: PROVIDER_REASON[reason] });
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
  await step("start", { started_at: ctx.clock.now() - durationMs });
  if (cutOff) {
    const reason = plan.outcome as FailureReason;
    await step("fail", { failure_reason: reason, ended_reason: PROVIDER_REASON[reason] });
  } else {
    await step("end", { summary: convo.brief });
  }
  // Test calls always use auto-summary: the job is queued with the transcript, as for real calls.
  await step(
    "transcript",
    {},
    (trx, now) =>
      textContent(ctx, trx, { accountId, callId, kind: "transcript", text: convo.transcript, now }),
    (trx, now) => enqueueSummary(trx, { accountId, callId, transcript: convo.transcript, now }),
  );
  const summarized = await summarizeCallNow(ctx, summarize ?? summarizerFor(ctx.config, ctx.log), callId);
  if (!summarized)
    ctx.log.warn(
      { component: "simulator", call_id: callId },
      "test call has no summary; recording follows anyway",
    );

  const store = blobStoreFor(ctx.config);
  const blobId = newBlobId();
  const wav = synthesizeWav({ seconds: 3, sampleRate: 8000, seed: callId });
  await store.writeBuffer(blobId, wav);
  try {
    await step("recording", {}, async (trx, now) => {
      await insertBlob(trx, {
        id: blobId,
        accountId,
        callId,
        kind: "recording",
        contentType: "audio/wav",
        size: wav.length,
        now,
      });
      return { recording_url: await presignedUrl(ctx, trx, blobId, now) };
    });
  } catch (err) {
    await store.remove(blobId).catch(() => undefined);
    throw err;
  }
}
