import { sql } from "kysely";
import { ensureAccountForKey } from "../src/accounts/accounts.js";
import type { PayloadSource } from "../src/calls/payload.js";
import { emitEvent } from "../src/events/emit.js";
import { migrate } from "../src/storage/migrate.js";
import { openStore, type Store } from "../src/storage/store.js";
import { newEndpointSecret, newId } from "../src/util/ids.js";
import { BENCH_API_KEY } from "./server-proc.js";

/** A transcript that makes each queued body about 1 KB, the size the raw limit posts. */
const TRANSCRIPT =
  "Agent: Hello, thank you for calling Acme Support. How can I help you today?\n" +
  "Customer: Hi, I was charged twice for my subscription this month and I would like a refund.\n" +
  "Agent: I am sorry about that. I can see two charges on the third; I have refunded the duplicate.\n" +
  "Customer: Great, thanks. How long will it take to show up?\n" +
  "Agent: Three to five business days. Is there anything else I can help with?\n" +
  "Customer: No, that is all. Thank you!";

/** The payload source of a completed call, for queueing bodies without going through the API. */
export function sampleSource(callId: number, agentId: number, now: number): PayloadSource {
  return {
    call: {
      id: callId,
      klen_call_id: `call_${callId.toString(36)}`,
      status: "completed",
      type: "inbound",
      phone_number: "+15551234567",
      started_at: now - 95_000,
      ended_at: now - 5_000,
      assistant_id: "assistant_abc123",
      brief_summary: null,
      failure_reason: null,
      ended_reason: null,
    },
    agent: { id: agentId, name: "Customer Support" },
    contact: { id: 1, name: "Jane Doe", email: "jane@example.com" },
    content: { transcript: TRANSCRIPT },
  };
}

export interface Backlog {
  /** Endpoint path → secret (for the receiver). */
  secrets: Record<string, string>;
  deliveries: number;
  queueSeconds: number;
}

/**
 * Queues `events` call.transcript events, each fanned out to `endpoints` endpoints, straight
 * through the server's own outbox function (emitEvent) in transactions of `perTx` events, with
 * no dispatcher running: the backlog the drain scenarios then hand to a freshly started server.
 * Every event is a different call, so no delivery is parked behind another (ordering is per call).
 */
export async function queueBacklog(opts: {
  databaseUrl: string;
  events: number;
  endpointUrls: string[];
  perTx?: number;
  onProgress?: (done: number) => void;
}): Promise<Backlog> {
  const started = performance.now();
  const store = await openStore(opts.databaseUrl);
  try {
    await migrate(store);
    const account = await ensureAccountForKey(store, BENCH_API_KEY);
    const now = Date.now();
    const agent = await store.db
      .insertInto("agents")
      .values({
        account_id: account.id,
        name: "Customer Support",
        assistant_id: null,
        created_at: now,
        deleted_at: null,
      })
      .returning("id")
      .executeTakeFirstOrThrow();
    const secrets: Record<string, string> = {};
    for (const url of opts.endpointUrls) {
      const secret = newEndpointSecret();
      secrets[new URL(url).pathname] = secret;
      await store.db
        .insertInto("endpoints")
        .values({
          id: newId("ep", now),
          account_id: account.id,
          url,
          description: "bench",
          event_types: "[]",
          agent_ids: "[]",
          headers: "{}",
          secret,
          previous_secret: null,
          previous_secret_expires_at: null,
          disabled: 0,
          disabled_reason: null,
          failing_since: null,
          created_at: now,
          updated_at: now,
          deleted_at: null,
        })
        .execute();
    }
    const perTx = opts.perTx ?? 1000;
    let deliveries = 0;
    for (let first = 0; first < opts.events; first += perTx) {
      const last = Math.min(opts.events, first + perTx);
      deliveries += await store.db.transaction().execute(async (trx) => {
        let n = 0;
        for (let i = first; i < last; i++) {
          const t = Date.now();
          const r = await emitEvent(trx, {
            accountId: account.id,
            callId: i + 1,
            agentId: Number(agent.id),
            type: "call.transcript",
            source: sampleSource(i + 1, Number(agent.id), t),
            now: t,
            onlyEndpointId: null,
            caps: store.caps,
          });
          n += r.deliveries;
        }
        return n;
      });
      opts.onProgress?.(last);
    }
    // A backlog built up over time has statistics (autovacuum analyzes a table after about a tenth
    // of it changed, within a minute); one queued in seconds into a fresh database has none, and
    // PostgreSQL then plans the claim as a bitmap scan and sort of every pending row (35 ms per
    // claim of 100 on 50,000 rows, against 4 ms with statistics). Give it what time would have.
    if (store.caps.name === "postgres") {
      await sql`ANALYZE deliveries`.execute(store.db);
      // The pages the queueing dirtied are written now, not by PostgreSQL's background writer while
      // the raw limit is measured just before the drain, or during the drain. Needs superuser or
      // pg_checkpoint (the throwaway server's role has it); without, the queue is left as it is.
      await sql`CHECKPOINT`.execute(store.db).catch(() => {});
    }
    return { secrets, deliveries, queueSeconds: (performance.now() - started) / 1000 };
  } finally {
    await store.close();
  }
}

/** Opens a store, runs `fn`, closes it. */
export async function withStore<T>(databaseUrl: string, fn: (store: Store) => Promise<T>): Promise<T> {
  const store = await openStore(databaseUrl);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}
