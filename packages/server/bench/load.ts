import { createHmac, randomBytes } from "node:crypto";
import { Agent, Pool } from "undici";
import type { ReceiverProcess } from "./receiver-client.js";

/** The clock shared with the receiver process (see receiver.ts). */
export const now = () => performance.timeOrigin + performance.now();

/** One ~1 KB call.transcript body, the size of a typical call event. */
export const RAW_BODY = JSON.stringify({
  event_type: "call.transcript",
  call: {
    id: 123,
    klen_call_id: "call_abc123",
    agent_id: 1,
    agent_name: "Customer Support",
    status: "completed",
    type: "inbound",
    phone_number: "+15551234567",
    started_at: "2026-01-01T10:00:00Z",
    ended_at: "2026-01-01T10:01:30Z",
    duration_seconds: 90,
    transcript:
      "Agent: Hello, thank you for calling Acme Support. How can I help you today?\nCustomer: Hi, I was charged twice for my subscription this month and I would like a refund.\nAgent: I am sorry about that. I can see two charges on the third; I have refunded the duplicate.\nCustomer: Great, thanks. How long will it take to show up?\nAgent: Three to five business days. Is there anything else I can help with?\nCustomer: No, that is all. Thank you!",
    contact: { id: 1, name: "Jane Doe", email: "jane@example.com" },
  },
  timestamp: "2026-01-01T10:01:31Z",
});

/**
 * The raw limit: signed POSTs of RAW_BODY from this process to the receiver as fast as `lanes`
 * concurrent requests over keep-alive undici pools allow, for `ms`. Each request does what the
 * dispatcher's does per attempt: a fresh webhook-id, an HMAC signature, Standard Webhooks headers.
 */
export async function rawLimit(
  receiver: ReceiverProcess,
  secret: string,
  lanes: number,
  ms: number,
): Promise<{ sent: number; failed: number; rps: number }> {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const agent = new Agent({
    connections: Math.ceil(lanes / receiver.ports.length),
    keepAliveTimeout: 30_000,
  });
  const origins = receiver.ports.map((p) => `http://127.0.0.1:${p}`);
  const prefix = `msg_${randomBytes(6).toString("hex")}_`;
  let seq = 0;
  let sent = 0;
  let failed = 0;
  const started = now();
  const end = started + ms;
  const lane = async (i: number) => {
    const origin = origins[i % origins.length]!;
    while (now() < end) {
      const id = `${prefix}${seq++}`;
      const ts = Math.floor(Date.now() / 1000);
      const sig = createHmac("sha256", key).update(`${id}.${ts}.`).update(RAW_BODY).digest("base64");
      const res = await agent.request({
        origin,
        path: "/raw",
        method: "POST",
        headers: {
          "content-type": "application/json",
          "user-agent": "Klen-Webhooks/bench",
          "webhook-id": id,
          "webhook-timestamp": String(ts),
          "webhook-signature": `v1,${sig}`,
        },
        body: RAW_BODY,
      });
      await res.body.text();
      if (res.statusCode >= 200 && res.statusCode < 300) sent++;
      else failed++;
    }
  };
  await Promise.all(Array.from({ length: lanes }, (_, i) => lane(i)));
  const elapsed = now() - started;
  await agent.close();
  return { sent, failed, rps: (sent / elapsed) * 1000 };
}

/** A keep-alive client for the server's API. */
export class Api {
  private pool: Pool;
  constructor(
    readonly baseUrl: string,
    private readonly key: string,
    connections = 64,
  ) {
    this.pool = new Pool(baseUrl, { connections, keepAliveTimeout: 30_000 });
  }

  async post(path: string, body: unknown): Promise<{ status: number; json: any }> {
    const res = await this.pool.request({
      path,
      method: "POST",
      headers: { authorization: `Bearer ${this.key}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await res.body.text();
    return { status: res.statusCode, json: text ? JSON.parse(text) : undefined };
  }

  /** GET of a path outside the API (no key): the body as text. */
  async text(path: string): Promise<string> {
    const res = await this.pool.request({ path, method: "GET" });
    return res.body.text();
  }

  async close(): Promise<void> {
    if (this.pool.closed || this.pool.destroyed) return;
    await this.pool.close();
  }
}

/** The seed's normal workflow after creation: each step emits one event. */
export const STEPS = [
  { path: "start", type: "call.started", body: {} },
  { path: "end", type: "call.ended", body: { summary: "Customer asked about a double charge; refunded." } },
  {
    path: "transcript",
    type: "call.transcript",
    body: {
      transcript:
        "Agent: Hello, thank you for calling Acme Support. How can I help you today?\nCustomer: Hi, I was charged twice for my subscription this month and I would like a refund.\nAgent: I am sorry about that. I have refunded the duplicate charge.\nCustomer: Thank you!",
    },
  },
  {
    path: "summary",
    type: "call.summary",
    body: { summary: "The customer reported a duplicate subscription charge; the agent refunded it." },
  },
] as const;

/** Creates `n` calls through the API (not timed: creation emits no event). */
export async function createCalls(api: Api, agentId: number, n: number, lanes = 16): Promise<number[]> {
  const ids: number[] = [];
  let next = 0;
  const lane = async () => {
    while (next < n) {
      next++;
      const r = await api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: "+15551234567",
      });
      if (r.status !== 201) throw new Error(`create call: ${r.status} ${JSON.stringify(r.json)}`);
      ids.push(r.json.id as number);
    }
  };
  await Promise.all(Array.from({ length: lanes }, lane));
  return ids;
}

export interface LoadResult {
  /** Transitions answered 2xx (= events emitted). */
  events: number;
  errors: number;
  firstPostAt: number;
  lastAckAt: number;
  /** `callId:type` → time the 2xx arrived at the client. */
  acks: Map<string, number>;
  /** Events the schedule wanted but could not send because every call was busy (open loop). */
  behind: number;
  /** Open loop: the longest gap between two turns of the schedule (ms), i.e. how long this process stalled. */
  maxGapMs: number;
}

async function step(api: Api, r: LoadResult, callId: number, s: (typeof STEPS)[number]): Promise<boolean> {
  const res = await api.post(`/v1/calls/${callId}/${s.path}`, s.body);
  const at = now();
  if (res.status >= 200 && res.status < 300) {
    r.events++;
    r.acks.set(`${callId}:${s.type}`, at);
    r.lastAckAt = at;
    return true;
  }
  r.errors++;
  return false;
}

/**
 * Closed loop at the highest rate the API sustains: `lanes` concurrent clients, each walking calls
 * through the workflow (a call's steps in order), until `ms` have passed or the calls run out.
 */
export async function closedLoop(api: Api, calls: number[], lanes: number, ms: number): Promise<LoadResult> {
  const r: LoadResult = {
    events: 0,
    errors: 0,
    firstPostAt: now(),
    lastAckAt: 0,
    acks: new Map(),
    behind: 0,
    maxGapMs: 0,
  };
  const end = r.firstPostAt + ms;
  const pool = [...calls];
  const lane = async () => {
    while (now() < end) {
      const id = pool.pop();
      if (id === undefined) return;
      for (const s of STEPS) if (!(await step(api, r, id, s))) break;
    }
  };
  await Promise.all(Array.from({ length: lanes }, lane));
  return r;
}

/**
 * Open loop at a fixed offered rate: every millisecond, sends as many transitions as the schedule
 * says are due, each to a call whose previous step has been answered (steps of one call stay in
 * order). What could not be sent on time is counted in `behind`. `mark` runs once `atMs` into the
 * loop (the end of a warm-up), and `maxGapMs` counts from there.
 */
export async function openLoop(
  api: Api,
  calls: number[],
  rate: number,
  ms: number,
  mark?: { atMs: number; fn: () => void },
): Promise<LoadResult> {
  const r: LoadResult = {
    events: 0,
    errors: 0,
    firstPostAt: now(),
    lastAckAt: 0,
    acks: new Map(),
    behind: 0,
    maxGapMs: 0,
  };
  const ready: Array<[number, number]> = calls.map((id) => [id, 0]);
  let head = 0;
  let sent = 0;
  const inflight = new Set<Promise<void>>();
  const start = r.firstPostAt;
  let last = start;
  let marked = mark === undefined;
  for (;;) {
    const t = now();
    r.maxGapMs = Math.max(r.maxGapMs, t - last);
    last = t;
    if (t - start >= ms) break;
    if (!marked && t - start >= mark!.atMs) {
      marked = true;
      r.maxGapMs = 0;
      mark!.fn();
    }
    const due = Math.floor(((t - start) * rate) / 1000);
    while (sent < due) {
      const item = ready[head];
      if (item === undefined) {
        r.behind += due - sent;
        sent = due;
        break;
      }
      head++;
      sent++;
      const [id, i] = item;
      const p: Promise<void> = step(api, r, id, STEPS[i]!).then((ok) => {
        inflight.delete(p);
        if (ok && i + 1 < STEPS.length) ready.push([id, i + 1]);
      });
      inflight.add(p);
    }
    await new Promise((res) => setTimeout(res, 1));
  }
  await Promise.all(inflight);
  return r;
}

/** Percentile (nearest rank) of a sorted list. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/**
 * Latencies (ms) from each 2xx to its arrival at the receiver, for the given endpoint paths, of the
 * transitions answered from `from` on (the warm-up before it is not measured).
 */
export function latencies(
  acks: Map<string, number>,
  arrivals: Map<string, number>,
  paths: string[],
  from = 0,
): number[] {
  const out: number[] = [];
  for (const [k, ackAt] of acks) {
    if (ackAt < from) continue;
    for (const p of paths) {
      const at = arrivals.get(`${k}:${p}`);
      if (at !== undefined) out.push(at - ackAt);
    }
  }
  return out.sort((a, b) => a - b);
}
