import {
  type ApiClient,
  attemptDetail,
  type CallObject,
  type DeliveryObject,
  type EventObject,
  listAll,
  pollUntil,
} from "./api-client.js";
import { type Output, statusText } from "./output.js";

export interface TestCallRequest {
  agent_id?: number;
  outcome?: string;
  endpoint_id?: string;
  transcript_bytes?: number;
}

export interface FollowedEvent {
  id: string;
  event_type: string;
  deliveries: Array<Pick<DeliveryObject, "id" | "endpoint_id" | "status" | "attempts">>;
}

export interface FollowResult {
  call_id: number;
  status: string;
  done: boolean;
  events: FollowedEvent[];
}

/**
 * The simulated workflow is over at its last step (src/simulator/run.ts): the recording, for a
 * completed call or one that failed mid-call; `call.failed`, for one that failed before connecting.
 */
export function workflowDone(call: CallObject, events: Array<{ event_type: string }>): boolean {
  if (call.status === "failed" && call.started_at === null)
    return events.some((e) => e.event_type === "call.failed");
  if (call.status === "completed" || call.status === "failed") return call.has_recording === true;
  return false;
}

/**
 * Follows a call until its workflow is done and every delivery of its events has left `pending`
 * (or `timeoutMs` passes), printing each event as it appears and each delivery attempt's outcome.
 */
export async function followCall(
  client: ApiClient,
  out: Output,
  callId: number,
  timeoutMs: number,
): Promise<FollowResult> {
  const seen = new Map<string, FollowedEvent>();
  const printedAttempts = new Map<string, number>();
  let lastNote = "";
  // A server restarting (or briefly overloaded) is waited out until --timeout, as listen does.
  const { done, value: call } = await pollUntil(out, "test-call", timeoutMs, async () => {
    const call = await client.get<CallObject>(`/v1/calls/${callId}`);
    const events = (await listAll<EventObject>(client, `/v1/events?call_id=${callId}`)).reverse();
    for (const e of events) {
      let f = seen.get(e.id);
      if (!f) {
        f = { id: e.id, event_type: e.event_type, deliveries: [] };
        seen.set(e.id, f);
        out.line(`${out.bold(e.event_type.padEnd(15))} ${out.dim(e.id)}`);
      }
      if (f.deliveries.length > 0 && f.deliveries.every((d) => d.status !== "pending")) continue;
      const ds = (await listAll<DeliveryObject>(client, `/v1/deliveries?event_id=${e.id}`)).reverse();
      f.deliveries = ds.map((d) => ({
        id: d.id,
        endpoint_id: d.endpoint_id,
        status: d.status,
        attempts: d.attempts,
      }));
      for (const d of ds) {
        const shown = printedAttempts.get(d.id) ?? 0;
        d.attempts.slice(shown).forEach((a, i) => {
          const last = shown + i === d.attempts.length - 1;
          const final = last && d.status !== "pending";
          const mark = !final ? out.yellow("↻") : d.status === "succeeded" ? out.green("✓") : out.red("✗");
          const tail = final ? d.status : "will retry";
          // Why it failed, as the receiver answered (a wrong secret: no_matching_signature).
          const detail = a.status_code !== null && a.status_code < 300 ? "" : attemptDetail(a);
          out.line(
            `  ${mark} ${e.event_type.padEnd(15)} → ${d.endpoint_id} attempt ${a.number}: ${statusText(out, a.status_code, a.error)} ${out.dim(`(${a.duration_ms} ms)`)} ${tail}${detail ? ` ${out.dim(detail)}` : ""}`,
          );
        });
        printedAttempts.set(d.id, d.attempts.length);
      }
    }
    const all = [...seen.values()];
    const settled = all.every((f) => f.deliveries.every((d) => d.status !== "pending"));
    const finished = workflowDone(call, all) && settled;
    const note = `call ${callId} ${call.status}: ${all.length} events so far…`;
    if (!finished && note !== lastNote) out.progress(note);
    lastNote = note;
    return { done: finished, value: call };
  });
  return { call_id: callId, status: call.status, done, events: [...seen.values()] };
}

/**
 * Exit status of `test-call --wait`: 0 when everything was delivered, 1 otherwise, and 1 when no
 * endpoint got any of the events (nothing was delivered, though nothing failed).
 */
export function followExitCode(r: FollowResult): number {
  if (!r.done) return 1;
  const deliveries = r.events.flatMap((e) => e.deliveries);
  return deliveries.length > 0 && deliveries.every((d) => d.status === "succeeded") ? 0 : 1;
}

/** Starts a simulated call (POST /v1/test-calls → 202 {call_id}). */
export async function startTestCall(client: ApiClient, body: TestCallRequest): Promise<number> {
  const r = await client.post<{ call_id: number }>("/v1/test-calls", body);
  return r.call_id;
}
