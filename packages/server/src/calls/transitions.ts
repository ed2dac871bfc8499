import type { EventType, FailureReason } from "@klen/webhooks/schemas";

/** The parts of a call the state machine reads. */
export interface CallState {
  id: number;
  status: string;
  started_at: number | null;
  ended_at: number | null;
  transcript_at: number | null;
  summary_at: number | null;
  recording_at: number | null;
}

export type Action = "start" | "end" | "fail" | "transcript" | "summary" | "recording";

export const EVENT_OF: Record<Action, EventType> = {
  start: "call.started",
  end: "call.ended",
  fail: "call.failed",
  transcript: "call.transcript",
  summary: "call.summary",
  recording: "call.recording",
};

export interface TransitionInput {
  now: number;
  started_at?: number;
  ended_at?: number;
  assistant_id?: string | null;
  summary?: string;
  failure_reason?: FailureReason;
  ended_reason?: string;
}

/** Column changes a transition makes, or the reason it may not happen. */
export type TransitionResult =
  | { ok: true; patch: Record<string, unknown>; event: EventType }
  | { ok: false; status: 400 | 409; code: string; message: string; field?: string };

const conflict = (call: CallState, action: Action, need: string): TransitionResult => ({
  ok: false,
  status: 409,
  code: "invalid_transition",
  message: `call ${call.id} is ${call.status}; ${action} needs ${need}`,
});

/**
 * When an ending step ends the call: as given (not before it started), or now. Compared in whole
 * seconds, as the API and the events show both times: an `ended_at` equal to the `started_at` a
 * client was shown is a call of 0 seconds, even when the start's own clock had milliseconds.
 */
function endTime(call: CallState, input: TransitionInput): number | TransitionResult {
  const endedAt = input.ended_at ?? Math.max(input.now, call.started_at ?? input.now);
  if (call.started_at !== null && wholeSeconds(endedAt) < wholeSeconds(call.started_at)) {
    return {
      ok: false,
      status: 400,
      code: "invalid_request",
      message: "ended_at is before started_at",
      field: "ended_at",
    };
  }
  return endedAt;
}

const wholeSeconds = (ms: number) => Math.floor(ms / 1000);

/**
 * The call lifecycle (PRODUCT.md §4): queued → in-progress → completed, or → failed from either
 * earlier state; transcript, summary and recording follow a completed call or a failed call that
 * had started, once each. Pure: the caller supplies the time and persists the patch.
 */
export function transition(call: CallState, action: Action, input: TransitionInput): TransitionResult {
  const { now } = input;
  switch (action) {
    case "start": {
      if (call.status !== "queued") return conflict(call, action, "a queued call");
      return {
        ok: true,
        event: "call.started",
        patch: {
          status: "in-progress",
          started_at: input.started_at ?? now,
          assistant_id: input.assistant_id ?? null,
        },
      };
    }
    case "end": {
      if (call.status !== "in-progress") return conflict(call, action, "a call in-progress");
      const endedAt = endTime(call, input);
      if (typeof endedAt !== "number") return endedAt;
      return {
        ok: true,
        event: "call.ended",
        patch: { status: "completed", ended_at: endedAt, brief_summary: input.summary ?? null },
      };
    }
    case "fail": {
      if (call.status !== "queued" && call.status !== "in-progress") {
        return conflict(call, action, "a queued call or a call in-progress");
      }
      const endedAt = endTime(call, input);
      if (typeof endedAt !== "number") return endedAt;
      const reason = input.failure_reason ?? "failed";
      return {
        ok: true,
        event: "call.failed",
        patch: {
          status: "failed",
          ended_at: endedAt,
          failure_reason: reason,
          ended_reason: input.ended_reason ?? reason,
        },
      };
    }
    case "transcript":
    case "summary":
    case "recording": {
      const finished = call.status === "completed" || (call.status === "failed" && call.started_at !== null);
      if (!finished) return conflict(call, action, "a completed call or a failed call that had started");
      const column = `${action}_at` as const;
      if (call[column] !== null) {
        return {
          ok: false,
          status: 409,
          code: "invalid_transition",
          message: `call ${call.id} already has a ${action}`,
        };
      }
      return { ok: true, event: EVENT_OF[action], patch: { [column]: now } };
    }
  }
}
