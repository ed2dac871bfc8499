import pg from "pg";
import { buildPayload } from "../../src/calls/payload.js";
import { openStore } from "../../src/storage/store.js";
import { newId } from "../../src/util/ids.js";
import type { ApiClient } from "./api.js";
import type { Receiver } from "./receiver.js";

// Load generation and the delivery ledger for the PostgreSQL scale-out and chaos tests: drive many
// calls through the real API, then check every receiver against what the database says was
// generated — every expected webhook-id arrived, nothing unexpected did, per-call order held.

export const WORKFLOW = ["call.started", "call.ended", "call.transcript", "call.summary"] as const;

const STEPS = [
  ["start", {}],
  ["end", { summary: "Customer asked about billing." }],
  ["transcript", { transcript: "Agent: Hello!\nCustomer: Hi, I have a billing question." }],
  ["summary", { summary: "The customer asked about a billing discrepancy; the agent explained it." }],
] as const;

/**
 * POSTs with an Idempotency-Key until a non-5xx answer: a 503 while the database restarts, or a
 * connection error, is retried with the same key, so a change is made once even when its first
 * answer was lost. Returns the final answer.
 */
async function postSurely(
  api: ApiClient,
  path: string,
  body: unknown,
  key: string,
  stats: { retries: number },
): Promise<{ status: number; body: any }> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const r = await api.post(path, body, { "idempotency-key": key }).catch((err: Error) => ({
      status: 0,
      body: err.message,
      headers: new Headers(),
    }));
    if (r.status !== 0 && r.status < 500) return r;
    if (Date.now() > deadline)
      throw new Error(`${path}: still ${r.status} after 60 s: ${JSON.stringify(r.body)}`);
    stats.retries++;
    await new Promise((res) => setTimeout(res, 50));
  }
}

/**
 * Runs `calls` calls through the seed's workflow (4 events each) with `concurrency` clients.
 * Agents alternate, so agent filters match half the calls.
 */
export async function driveCalls(
  api: ApiClient,
  opts: { calls: number; concurrency: number; agentIds: number[]; runId: string },
): Promise<{ callIds: number[]; retries: number }> {
  const callIds: number[] = [];
  const stats = { retries: 0 };
  let next = 0;
  const client = async () => {
    for (let i = next++; i < opts.calls; i = next++) {
      const key = `${opts.runId}-${i}`;
      const created = await postSurely(
        api,
        "/v1/calls",
        {
          agent_id: opts.agentIds[i % opts.agentIds.length],
          type: i % 2 ? "inbound" : "outbound",
          phone_number: `+1555${String(i).padStart(7, "0")}`,
        },
        `${key}-create`,
        stats,
      );
      if (created.status !== 201)
        throw new Error(`create: ${created.status} ${JSON.stringify(created.body)}`);
      const id = created.body.id as number;
      for (const [step, body] of STEPS) {
        const r = await postSurely(api, `/v1/calls/${id}/${step}`, body, `${key}-${step}`, stats);
        if (r.status !== 200) throw new Error(`${step}: ${r.status} ${JSON.stringify(r.body)}`);
      }
      callIds.push(id);
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, client));
  return { callIds, retries: stats.retries };
}

/**
 * The test-only bulk path: writes calls, their four events and the deliveries (the head of each
 * endpoint's chain due, the rest parked, exactly the rows the API's outbox writes) in batched
 * multi-row inserts, then NOTIFYs the workers. Measured on the 2-core CI machine, the real API
 * makes ~230 transitions/s on PostgreSQL (about a dozen round trips each, and a socket write costs
 * ~0.1 ms there), so 25,000 API requests alone would take ~2 minutes; the dispatching side under
 * test is the same either way. Payloads are built by the server's own payload builder.
 */
export async function bulkCalls(
  databaseUrl: string,
  opts: {
    calls: number;
    batch: number;
    accountId: number;
    agents: Array<{ id: number; name: string }>;
    endpoints: Array<Pick<EndpointUnderTest, "endpointId" | "eventTypes" | "agentIds">>;
  },
): Promise<void> {
  const store = await openStore(databaseUrl);
  try {
    for (let done = 0; done < opts.calls; done += opts.batch) {
      const n = Math.min(opts.batch, opts.calls - done);
      const now = Date.now();
      await store.db.transaction().execute(async (trx) => {
        const calls = await trx
          .insertInto("calls")
          .values(
            Array.from({ length: n }, (_, i) => ({
              account_id: opts.accountId,
              agent_id: opts.agents[(done + i) % opts.agents.length]!.id,
              type: "inbound",
              phone_number: `+1666${String(done + i).padStart(7, "0")}`,
              contact_id: null,
              klen_call_id: `bulk_${done + i}`,
              status: "completed",
              assistant_id: null,
              started_at: now - 60_000,
              ended_at: now,
              failure_reason: null,
              ended_reason: null,
              brief_summary: "Customer asked about billing.",
              transcript_at: now,
              summary_at: now,
              recording_at: null,
              only_endpoint_id: null,
              created_at: now - 60_000,
              updated_at: now,
            })),
          )
          .returning(["id", "agent_id"])
          .execute();
        const events: Array<{ id: string; callId: number; agentId: number; type: string; payload: string }> =
          [];
        for (const c of calls) {
          const agent = opts.agents.find((a) => a.id === c.agent_id)!;
          const base = {
            id: c.id,
            klen_call_id: null,
            type: "inbound",
            phone_number: "+15551234567",
            assistant_id: null,
            brief_summary: null,
            failure_reason: null,
            ended_reason: null,
          };
          const states = [
            { ...base, status: "in-progress", started_at: now - 60_000, ended_at: null },
            {
              ...base,
              status: "completed",
              started_at: now - 60_000,
              ended_at: now,
              brief_summary: "Billing.",
            },
            { ...base, status: "completed", started_at: now - 60_000, ended_at: now },
            { ...base, status: "completed", started_at: now - 60_000, ended_at: now },
          ];
          const contents = [
            undefined,
            undefined,
            { transcript: "Agent: Hello!" },
            { summary: "A billing question." },
          ];
          WORKFLOW.forEach((type, k) => {
            const body = buildPayload(
              type,
              { call: states[k]!, agent, contact: null, ...(contents[k] ? { content: contents[k] } : {}) },
              now,
            );
            events.push({
              id: newId("evt", now),
              callId: c.id,
              agentId: c.agent_id,
              type,
              payload: JSON.stringify(body),
            });
          });
        }
        const seqs = await trx
          .insertInto("events")
          .values(
            events.map((e) => ({
              id: e.id,
              account_id: opts.accountId,
              call_id: e.callId,
              event_type: e.type,
              payload: e.payload,
              created_at: now,
            })),
          )
          .returning(["id", "seq"])
          .execute();
        const seqOf = new Map(seqs.map((r) => [r.id, Number(r.seq)]));
        const deliveries = [];
        const headSeen = new Set<string>();
        for (const e of events) {
          for (const ep of opts.endpoints) {
            if (ep.eventTypes.length > 0 && !ep.eventTypes.includes(e.type)) continue;
            if (ep.agentIds.length > 0 && !ep.agentIds.includes(e.agentId)) continue;
            const chain = `${ep.endpointId}/${e.callId}`;
            const head = !headSeen.has(chain);
            headSeen.add(chain);
            deliveries.push({
              id: newId("dlv", now),
              account_id: opts.accountId,
              event_id: e.id,
              event_seq: seqOf.get(e.id)!,
              endpoint_id: ep.endpointId,
              call_id: e.callId,
              status: "pending",
              attempt_count: 0,
              next_attempt_at: head ? now : null,
              claim_token: 0,
              last_error: null,
              created_at: now,
              updated_at: now,
            });
          }
        }
        for (let i = 0; i < deliveries.length; i += 2_000) {
          await trx
            .insertInto("deliveries")
            .values(deliveries.slice(i, i + 2_000))
            .execute();
        }
      });
      await store.notifyWork();
    }
  } finally {
    await store.close();
  }
}

export interface EndpointUnderTest {
  name: string;
  endpointId: string;
  receiver: Receiver;
  /** Event types the endpoint subscribes to (empty: all). */
  eventTypes: readonly string[];
  /** Agents the endpoint subscribes to (empty: all). */
  agentIds: readonly number[];
}

/** Attempts that failed (timeouts, resets…): the only source of an at-least-once resend. */
export async function failedAttempts(databaseUrl: string): Promise<number> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const r = await client.query("SELECT count(*)::int AS n FROM attempts WHERE error IS NOT NULL");
    return Number(r.rows[0].n);
  } finally {
    await client.end();
  }
}

export interface LedgerLine {
  name: string;
  expected: number;
  received: number;
  missing: string[];
  unexpected: string[];
  /** Requests beyond the first for an id (at-least-once redeliveries, same webhook-id). */
  duplicates: number;
  /** Calls whose events arrived (first receipt) out of their generated order. */
  outOfOrder: number[];
}

/**
 * Balances the ledger: for each endpoint, the ids the database says it should get (every event
 * of the account whose type and agent match its filter) against the webhook-ids its receiver
 * recorded, and the per-call order of first receipts against the order of generation.
 */
export async function balance(databaseUrl: string, endpoints: EndpointUnderTest[]): Promise<LedgerLine[]> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  let events: Array<{ id: string; event_type: string; call_id: number; agent_id: number; seq: number }>;
  try {
    const r = await client.query(
      "SELECT e.id, e.event_type, e.call_id, c.agent_id, e.seq FROM events e JOIN calls c ON c.id = e.call_id ORDER BY e.seq",
    );
    events = r.rows.map((row) => ({ ...row, call_id: Number(row.call_id), agent_id: Number(row.agent_id) }));
  } finally {
    await client.end();
  }
  return endpoints.map((ep) => {
    const expected = events.filter(
      (e) =>
        (ep.eventTypes.length === 0 || ep.eventTypes.includes(e.event_type)) &&
        (ep.agentIds.length === 0 || ep.agentIds.includes(e.agent_id)),
    );
    const counts = new Map<string, number>();
    const firstOrder = new Map<number, string[]>();
    for (const req of ep.receiver.requests) {
      const n = counts.get(req.id) ?? 0;
      counts.set(req.id, n + 1);
      if (n === 0 && req.json?.call) {
        const list = firstOrder.get(req.json.call.id) ?? [];
        list.push(req.id);
        firstOrder.set(req.json.call.id, list);
      }
    }
    const expectedIds = new Set(expected.map((e) => e.id));
    const byCall = new Map<number, string[]>();
    for (const e of expected) {
      const list = byCall.get(e.call_id) ?? [];
      list.push(e.id);
      byCall.set(e.call_id, list);
    }
    const outOfOrder: number[] = [];
    for (const [callId, ids] of byCall) {
      if ((firstOrder.get(callId) ?? []).join() !== ids.join()) outOfOrder.push(callId);
    }
    let duplicates = 0;
    for (const n of counts.values()) duplicates += n - 1;
    return {
      name: ep.name,
      expected: expected.length,
      received: counts.size,
      missing: [...expectedIds].filter((id) => !counts.has(id)),
      unexpected: [...counts.keys()].filter((id) => !expectedIds.has(id)),
      duplicates,
      outOfOrder,
    };
  });
}
