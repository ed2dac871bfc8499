import type { EventType } from "@klen/webhooks/schemas";
import { isoSeconds } from "../util/time.js";

/** Everything a payload is built from, read inside the transition's transaction. */
export interface PayloadSource {
  call: {
    id: number;
    klen_call_id: string | null;
    status: string;
    type: string;
    phone_number: string;
    started_at: number | null;
    ended_at: number | null;
    assistant_id: string | null;
    brief_summary: string | null;
    failure_reason: string | null;
    ended_reason: string | null;
  };
  agent: { id: number; name: string };
  contact: { id: number; name: string; email: string | null } | null;
  /** Event-specific content: transcript or its URL, summary or its URL, recording URL. */
  content?: {
    transcript?: string;
    transcript_url?: string;
    summary?: string;
    summary_url?: string;
    recording_url?: string;
  };
}

/** Whole seconds between two instants, rounded down; null unless both exist. */
export function durationSeconds(startedAt: number | null, endedAt: number | null): number | null {
  if (startedAt === null || endedAt === null) return null;
  return Math.max(0, Math.floor((endedAt - startedAt) / 1000));
}

/**
 * Builds the body of one event exactly as Klen's "Call Events" page shows it: the common call
 * fields, then the event's own, then `contact` when the call has one. Key order is fixed so the
 * serialised body reads like the documentation.
 */
export function buildPayload(type: EventType, src: PayloadSource, now: number): Record<string, unknown> {
  const c = src.call;
  // Timestamps are whole seconds in the body, so the duration is computed from what the receiver sees.
  const startedAt = c.started_at === null ? null : Math.floor(c.started_at / 1000) * 1000;
  const endedAt = c.ended_at === null ? null : Math.floor(c.ended_at / 1000) * 1000;
  const duration = durationSeconds(startedAt, endedAt);
  const call: Record<string, unknown> = {
    id: c.id,
    klen_call_id: c.klen_call_id,
    agent_id: src.agent.id,
    agent_name: src.agent.name,
    status: c.status,
    type: c.type,
    phone_number: c.phone_number,
    started_at: startedAt === null ? null : isoSeconds(startedAt),
    ended_at: endedAt === null ? null : isoSeconds(endedAt),
    duration_seconds: duration,
  };
  const content = src.content ?? {};
  switch (type) {
    case "call.started":
      call.assistant_id = c.assistant_id;
      break;
    case "call.ended":
      // The brief summary, or its URL when it would take the body past the inline limit.
      if (content.summary_url !== undefined) call.summary_url = content.summary_url;
      else if (c.brief_summary !== null) call.summary = c.brief_summary;
      call.duration = duration;
      break;
    case "call.failed":
      call.failure_reason = c.failure_reason ?? "failed";
      call.ended_reason = c.ended_reason ?? call.failure_reason;
      break;
    case "call.transcript":
      if (content.transcript_url !== undefined) call.transcript_url = content.transcript_url;
      else call.transcript = content.transcript ?? "";
      break;
    case "call.summary":
      if (content.summary_url !== undefined) call.summary_url = content.summary_url;
      else call.summary = content.summary ?? "";
      break;
    case "call.recording":
      call.recording_url = content.recording_url ?? "";
      break;
  }
  if (src.contact) call.contact = { id: src.contact.id, name: src.contact.name, email: src.contact.email };
  return { event_type: type, call, timestamp: isoSeconds(now) };
}
