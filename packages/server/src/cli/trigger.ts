import { EVENT_TYPES, type EventType, FAILURE_REASONS } from "@klen/webhooks/schemas";
import { InvalidArgumentError } from "commander";
import { type ApiClient, ApiRequestError, type CallObject, type EventObject, listAll } from "./api-client.js";
import { toneWav } from "./wav.js";

/** The agent `trigger` creates once and reuses afterwards. */
export const TRIGGER_AGENT_NAME = "klen-webhooks trigger";

type Step = "start" | "end" | "fail" | "transcript" | "summary" | "recording";

/**
 * The API transitions that make a call emit `type` (PRODUCT.md §4): the normal workflow up to that
 * event, in the seed's order; `call.failed` fails a queued call, as a call that never connected.
 */
export const STEPS: Record<EventType, Step[]> = {
  "call.started": ["start"],
  "call.ended": ["start", "end"],
  "call.failed": ["fail"],
  "call.transcript": ["start", "end", "transcript"],
  "call.summary": ["start", "end", "transcript", "summary"],
  "call.recording": ["start", "end", "transcript", "summary", "recording"],
};

export function checkEventType(raw: string): EventType {
  if (!(EVENT_TYPES as readonly string[]).includes(raw))
    throw new InvalidArgumentError(`unknown event type "${raw}"; use one of ${EVENT_TYPES.join(", ")}`);
  return raw as EventType;
}

export function checkFailureReason(raw: string): string {
  if (!(FAILURE_REASONS as readonly string[]).includes(raw))
    throw new InvalidArgumentError(
      `unknown failure reason "${raw}"; use one of ${FAILURE_REASONS.join(", ")}`,
    );
  return raw;
}

const SAMPLE_TRANSCRIPT = [
  "Agent: Thank you for calling Klen support, this is Ava. How can I help you today?",
  "Customer: Hi, I was charged twice for my subscription this month.",
  "Agent: I'm sorry about that. I can see two charges on the 3rd; one of them is a pending authorization.",
  "Customer: So I won't actually pay twice?",
  "Agent: Correct, the pending one drops off within three business days. I've added a note to your account.",
  "Customer: Great, thanks for your help.",
].join("\n");

/**
 * The agent to use: `--agent-id`, else the trigger agent, created the first time. The creation
 * carries a fixed Idempotency-Key, so runs that start at once on a fresh account get one agent
 * (the server replays the first creation to the others for 24 h). When the replayed agent was
 * deleted since, the next key is derived from its id, so concurrent runs still agree on one.
 */
export async function triggerAgent(client: ApiClient, agentId: number | undefined): Promise<number> {
  if (agentId !== undefined) return agentId;
  const agents = await listAll<{ id: number; name: string }>(client, "/v1/agents");
  const mine = agents.find((a) => a.name === TRIGGER_AGENT_NAME);
  if (mine) return mine.id;
  // "v1": the creation's body; a version that changes it must change the key too (the server
  // refuses a key reused with another body for 24 h).
  let key = "klen-webhooks-trigger-agent-v1";
  for (let tries = 0; tries < 5; tries++) {
    const created = await client.post<{ id: number }>(
      "/v1/agents",
      { name: TRIGGER_AGENT_NAME, assistant_id: "assistant_cli" },
      key,
    );
    try {
      await client.get(`/v1/agents/${created.id}`);
      return created.id;
    } catch (err) {
      if (!(err instanceof ApiRequestError) || err.status !== 404) throw err;
      key = `klen-webhooks-trigger-agent-v1-after-${created.id}`;
    }
  }
  throw new Error(
    `the "${TRIGGER_AGENT_NAME}" agent was deleted as often as it was made; pass --agent-id to use another`,
  );
}

export interface TriggerResult {
  call_id: number;
  agent_id: number;
  event_type: EventType;
  events: Array<{ id: string; event_type: string }>;
}

/**
 * `stripe trigger` for calls: creates a call and drives it through the transitions that emit an
 * event of `type`, then reads back the events the call produced (with auto-summary on, a
 * transcript is followed by a generated `call.summary`, which is then waited for instead of posted).
 */
export async function trigger(
  client: ApiClient,
  opts: {
    type: EventType;
    agentId?: number;
    reason: string;
    phoneNumber: string;
    progress?: (step: string) => void;
    timeoutMs?: number;
  },
): Promise<TriggerResult> {
  const agentId = await triggerAgent(client, opts.agentId);
  const call = await client.post<CallObject>("/v1/calls", {
    agent_id: agentId,
    type: "outbound",
    phone_number: opts.phoneNumber,
  });
  opts.progress?.(`created call ${call.id} (agent ${agentId})`);
  const steps = STEPS[opts.type];
  let autoSummary: boolean | undefined;
  for (const step of steps) {
    if (step === "summary") {
      autoSummary ??= (await client.get<{ auto_summary?: boolean }>("/v1/account")).auto_summary === true;
      if (autoSummary) {
        opts.progress?.("waiting for the generated summary (auto_summary is on)");
        await until(
          async () => (await client.get<CallObject>(`/v1/calls/${call.id}`)).has_summary === true,
          opts.timeoutMs ?? 30_000,
          "the generated call.summary",
        );
        continue;
      }
    }
    if (step === "recording") {
      await client.upload(`/v1/calls/${call.id}/recording`, toneWav(), "audio/wav");
    } else {
      const body: Record<string, Record<string, unknown>> = {
        start: {},
        end: { summary: "The customer asked about a double charge; it was a pending authorization." },
        fail: { failure_reason: opts.reason },
        transcript: { transcript: SAMPLE_TRANSCRIPT },
        summary: {
          summary:
            "The customer reported being charged twice. The agent explained that one charge was a pending authorization that drops off within three business days and noted the account.",
        },
      };
      await client.post(`/v1/calls/${call.id}/${step}`, body[step]);
    }
    opts.progress?.(`${step} → ok`);
  }
  // Events of the call, oldest first; the wanted one is there once its transition returned.
  const events = (await listAll<EventObject>(client, `/v1/events?call_id=${call.id}`)).reverse();
  return {
    call_id: call.id,
    agent_id: agentId,
    event_type: opts.type,
    events: events.map((e) => ({ id: e.id, event_type: e.event_type })),
  };
}

/** Polls `check` until true (observable state, not a fixed sleep), failing after `timeoutMs`. */
export async function until(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let delay = 100;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(1_000, delay * 2);
  }
}
