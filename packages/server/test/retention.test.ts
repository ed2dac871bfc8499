import assert from "node:assert/strict";
import { readdirSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { CompiledQuery, type KyselyPlugin } from "kysely";
import pg from "pg";
import { newBlobId } from "../src/blobs/blobs.js";
import { loadConfig } from "../src/config.js";
import { createLogger } from "../src/log.js";
import { expiredBriefSummaries, purgeExpired } from "../src/retention/purge.js";
import { type Running, startServer } from "../src/server.js";
import { type ApiClient, apiClient, startedCall } from "./helpers/api.js";
import { onServer } from "./helpers/content.js";
import { startPostgres, stopPostgres } from "./helpers/postgres.js";
import { type Receiver, startReceiver } from "./helpers/receiver.js";
import { tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

const DAY = 86_400_000;

describe("retention: payloads and media older than KLEN_RETENTION are purged", () => {
  const dir = tempDir();
  let running: Running;
  let api: ApiClient;
  let base: string;
  let rx: Receiver;

  before(async () => {
    // In-process, so the purge can be run with an injected "now" instead of waiting days.
    const config = loadConfig({
      PORT: "0",
      KLEN_DATA_DIR: dir.path,
      KLEN_API_KEY: "klen_test_key_retention",
      KLEN_DEV: "1",
      KLEN_RETENTION: "30d",
      KLEN_RETRY_SCHEDULE: "100ms",
    });
    running = await startServer(config, createLogger({ level: "silent" }));
    base = running.address!.replace("[::1]", "127.0.0.1");
    api = apiClient(base, "klen_test_key_retention");
    rx = await startReceiver();
    assert.equal((await api.post("/v1/endpoints", { url: rx.url })).status, 201);
  });
  after(async () => {
    await running.stop(1000);
    await rx.close();
    dir.remove();
  });

  test("nothing younger than the retention period is touched; older blobs, events and logs go", async () => {
    const tc = await api.post("/v1/test-calls", { transcript_bytes: 100_000 });
    const callId = tc.body.call_id as number;
    await waitFor(
      "five deliveries",
      () => rx.requests.filter((q) => q.json?.call?.id === callId).length === 5,
    );
    await waitFor("deliveries finished", async () => {
      const d = await api.get("/v1/deliveries?status=pending");
      return d.body.data.length === 0;
    });
    const events = (await api.get(`/v1/events?call_id=${callId}`)).body.data;
    const byType = Object.fromEntries(events.map((e: any) => [e.event_type, e.payload.call]));
    const urls = [byType["call.transcript"].transcript_url, byType["call.recording"].recording_url].map(
      (u: string) => onServer(base, u),
    );
    for (const u of urls) assert.equal((await fetch(u)).status, 200);

    // An orphaned file (a rolled-back upload) older than an hour is swept; a fresh one is not.
    const blobsDir = join(dir.path, "blobs");
    const oldOrphan = newBlobId();
    const newOrphan = newBlobId();
    writeFileSync(join(blobsDir, oldOrphan), "orphan");
    writeFileSync(join(blobsDir, newOrphan), "in flight");
    const twoHoursAgo = new Date(Date.now() - 2 * 3_600_000);
    utimesSync(join(blobsDir, oldOrphan), twoHoursAgo, twoHoursAgo);

    const now = Date.now();
    const early = await purgeExpired(running.ctx, now + 29 * DAY);
    assert.deepEqual(
      { ...early, orphans: 0 },
      { blobs: 0, orphans: 0, attempts: 0, deliveries: 0, events: 0, summaries: 0, jobs: 0, idempotency: 0 },
    );
    assert.equal(early.orphans, 1);
    for (const u of urls) assert.equal((await fetch(u)).status, 200);
    assert.equal((await api.get(`/v1/events?call_id=${callId}`)).body.data.length, 5);

    // In batches of two here, so that every loop takes several; the process's other work runs
    // between them (SQLite runs each statement on the event loop: one go froze it for seconds).
    // Timers seen at each DELETE of deliveries or events: they must have run between batches.
    let turns = 0;
    const tick = setInterval(() => turns++, 1);
    const seen: Record<string, number[]> = { deliveries: [], events: [] };
    const spy: KyselyPlugin = {
      transformQuery(args) {
        const node = args.node as {
          kind: string;
          from?: { froms: Array<{ table?: { identifier?: { name: string } } }> };
        };
        const table = node.from?.froms[0]?.table?.identifier?.name;
        if (node.kind === "DeleteQueryNode" && table && table in seen) seen[table]!.push(turns);
        return args.node;
      },
      transformResult: async (args) => args.result,
    };
    const store = { ...running.ctx.store, db: running.ctx.store.db.withPlugin(spy) };
    const counts = await purgeExpired({ ...running.ctx, store }, now + 31 * DAY, { batch: 2 });
    clearInterval(tick);
    for (const [table, at] of Object.entries(seen)) {
      assert.ok(at.length >= 3, `${table} deleted in several batches`);
      assert.ok(at[at.length - 1]! > at[0]!, `timers ran between the batches of ${table}`);
    }
    assert.equal(counts.blobs, 2, "transcript and recording");
    assert.equal(counts.events, 5);
    assert.equal(counts.deliveries, 5);
    assert.ok(counts.attempts >= 5);
    assert.equal(counts.summaries, 1, "the brief summary kept on the call");
    for (const u of urls) {
      const res = await fetch(u);
      assert.equal(res.status, 404);
      assert.doesNotMatch(await res.text(), /Agent:|RIFF/);
    }
    assert.equal((await api.get(`/v1/events?call_id=${callId}`)).body.data.length, 0);
    assert.equal((await api.get(`/v1/deliveries?event_id=${events[0].id}`)).body.data.length, 0);
    const call = (await api.get(`/v1/calls/${callId}`)).body;
    assert.equal(call.status, "completed", "the call itself stays");
    assert.equal(call.summary, null);
    assert.deepEqual(
      readdirSync(blobsDir).filter((f) => f.startsWith("blb_")),
      [newOrphan],
    );
    // A second run finds nothing left to do.
    const again = await purgeExpired(running.ctx, now + 31 * DAY);
    assert.equal(
      Object.values(again).reduce((a, b) => a + b, 0),
      0,
    );
  });

  test("a response kept for Idempotency-Key replays goes once no repeat can get it (24 h)", async () => {
    const key = { "idempotency-key": `endpoint-${Date.now()}` };
    const body = { url: `${rx.url}/replayed` };
    const made = await api.post("/v1/endpoints", body, key);
    assert.equal(made.status, 201);
    const db = running.ctx.store.db;
    const kept = () =>
      db.selectFrom("idempotency_keys").select("key").where("key", "=", key["idempotency-key"]).execute();
    const now = Date.now();
    assert.equal((await purgeExpired(running.ctx, now + 23 * 3_600_000)).idempotency, 0);
    assert.equal((await kept()).length, 1);
    const replay = await api.post("/v1/endpoints", body, key);
    assert.equal(replay.headers.get("idempotent-replayed"), "true");
    assert.equal(replay.body.secret, made.body.secret);

    const counts = await purgeExpired(running.ctx, now + 25 * 3_600_000);
    assert.ok(counts.idempotency >= 1);
    assert.deepEqual(await kept(), [], "the new endpoint's secret is no longer kept beside it");
    assert.equal((await api.del(`/v1/endpoints/${made.body.id}`)).status, 200);
  });

  test("a summary job still pending and a test-call run still worked on are kept, however old", async () => {
    const db = running.ctx.store.db;
    const account = (await api.get("/v1/account")).body.id as number;
    const agent = await api.post("/v1/agents", { name: "Kept" });
    const call = async () =>
      (
        await api.post("/v1/calls", {
          agent_id: agent.body.id,
          type: "outbound",
          phone_number: "+15551234567",
        })
      ).body.id as number;
    const [pending, failed, live, abandoned] = [await call(), await call(), await call(), await call()];
    const now = Date.now();
    const later = now + 31 * DAY;
    const job = (callId: number, status: string) => ({
      call_id: callId,
      account_id: account,
      transcript: "Agent: Hello.",
      status,
      attempts: 1,
      next_attempt_at: later, // retried later on: it is still in progress
      last_error: null,
      created_at: now,
      updated_at: now,
    });
    await db
      .insertInto("summary_jobs")
      .values([job(pending, "pending"), job(failed, "failed")])
      .execute();
    const run = (callId: number, leasedUntil: number) => ({
      call_id: callId,
      account_id: account,
      agent_name: "Kept",
      outcome: "busy",
      transcript_bytes: null,
      attempts: 0,
      takeovers: 0,
      leased_until: leasedUntil,
      created_at: now,
    });
    // One renewed its lease just now (at "later"); the other's ran out 30 days before "later" and
    // nobody carried it on (in real time it is still leased, so this server's resumer leaves it be).
    await db
      .insertInto("test_call_runs")
      .values([run(live, later + 60_000), run(abandoned, now + 12 * 3_600_000)])
      .execute();

    const counts = await purgeExpired(running.ctx, later);
    assert.equal(counts.jobs, 2, "the failed job and the abandoned run");
    const jobs = await db.selectFrom("summary_jobs").select("call_id").execute();
    assert.deepEqual(
      jobs.map((j) => Number(j.call_id)),
      [pending],
    );
    const runs = await db.selectFrom("test_call_runs").select("call_id").execute();
    assert.deepEqual(
      runs.map((r) => Number(r.call_id)),
      [live],
    );
    await db.deleteFrom("summary_jobs").execute();
    await db.deleteFrom("test_call_runs").execute();
  });

  test("a delivery still pending keeps its event, however old", async () => {
    // A receiver that never answers holds the delivery in flight (timeout 15 s by default).
    const slow = await startReceiver({ respond: () => ({ status: 200, hang: true }) });
    try {
      for (const e of (await api.get("/v1/endpoints")).body.data) await api.del(`/v1/endpoints/${e.id}`);
      const ep = await api.post("/v1/endpoints", { url: slow.url });
      const agent = await api.post("/v1/agents", { name: "Old" });
      const c = await api.post("/v1/calls", {
        agent_id: agent.body.id,
        type: "inbound",
        phone_number: "+15551234567",
      });
      await api.post(`/v1/calls/${c.body.id}/start`, {});
      await slow.waitForCount(1);
      const pending = (await api.get(`/v1/deliveries?endpoint_id=${ep.body.id}&status=pending`)).body.data[0];
      assert.ok(pending, "the delivery is pending while its attempt hangs");
      await purgeExpired(running.ctx, Date.now() + 365 * DAY);
      assert.equal((await api.get(`/v1/deliveries/${pending.id}`)).body.status, "pending");
      assert.equal((await api.get(`/v1/events/${pending.event_id}`)).status, 200);
    } finally {
      await slow.close();
    }
  });

  test("a delivery still pending keeps the blobs of its call, which go once it is over", async () => {
    const slow = await startReceiver({ respond: () => ({ status: 200, hang: true }) });
    let closed = false;
    try {
      for (const e of (await api.get("/v1/endpoints")).body.data) await api.del(`/v1/endpoints/${e.id}`);
      assert.equal((await api.post("/v1/endpoints", { url: slow.url })).status, 201);
      const agent = await api.post("/v1/agents", { name: "Late receiver" });
      const c = await api.post("/v1/calls", {
        agent_id: agent.body.id,
        type: "inbound",
        phone_number: "+15551234567",
      });
      await api.post(`/v1/calls/${c.body.id}/start`, {});
      await api.post(`/v1/calls/${c.body.id}/end`, {});
      const audio = Buffer.from("RIFF kept-for-a-late-retry ".repeat(100));
      const up = await fetch(`${base}/v1/calls/${c.body.id}/recording`, {
        method: "POST",
        headers: { authorization: "Bearer klen_test_key_retention", "content-type": "audio/wav" },
        body: new Uint8Array(audio),
      });
      assert.equal(up.status, 200);
      await slow.waitForCount(1);
      const ev = (await api.get(`/v1/events?call_id=${c.body.id}&event_type=call.recording`)).body.data[0];
      const url = onServer(base, ev.payload.call.recording_url);
      const deliveries = async () => (await api.get(`/v1/deliveries?event_id=${ev.id}`)).body.data;
      assert.equal((await deliveries())[0].status, "pending");

      // Long past the retention period, the event and its recording are both kept.
      const later = Date.now() + 365 * DAY;
      await purgeExpired(running.ctx, later);
      assert.equal((await api.get(`/v1/events/${ev.id}`)).status, 200);
      const kept = await fetch(url);
      assert.equal(kept.status, 200);
      assert.ok(Buffer.from(await kept.arrayBuffer()).equals(audio));

      // Once the receiver is gone for good the deliveries fail, and nothing holds the blob.
      await slow.close();
      closed = true;
      await waitFor("the call's deliveries are over", async () => {
        const r = await api.get(`/v1/deliveries?call_id=${c.body.id}&status=pending`);
        return r.body.data.length === 0;
      });
      assert.equal((await purgeExpired(running.ctx, later)).blobs, 1);
      assert.equal((await fetch(url)).status, 404);
    } finally {
      if (!closed) await slow.close();
    }
  });

  test("brief summaries are cleared in batches, all of them", async () => {
    const agent = await api.post("/v1/agents", { name: "Brief" });
    const ids: number[] = [];
    for (let i = 0; i < 5; i++) {
      const id = await startedCall(api, agent.body.id, "+15551234567");
      assert.equal((await api.post(`/v1/calls/${id}/end`, { summary: `Brief ${i}.` })).status, 200);
      ids.push(id);
    }
    const counts = await purgeExpired(running.ctx, Date.now() + 31 * DAY, { batch: 2 });
    assert.ok(counts.summaries >= 5, `counted: ${counts.summaries}`);
    const left = await running.ctx.store.db
      .selectFrom("calls")
      .select("id")
      .where("id", "in", ids)
      .where("brief_summary", "is not", null)
      .execute();
    assert.deepEqual(left, []);
  });

  test("the brief-summary purge reads only the calls that still hold one, not every call ever made", async () => {
    const db = running.ctx.store.db;
    const q = expiredBriefSummaries(db, Date.now() - 30 * DAY, 500).compile();
    const plan = await db.executeQuery<{ detail: string }>(
      CompiledQuery.raw(`EXPLAIN QUERY PLAN ${q.sql}`, [...q.parameters]),
    );
    const details = plan.rows.map((r) => r.detail).join("; ");
    assert.match(details, /USING INDEX calls_brief_summary_age/, details);
    assert.doesNotMatch(details, /^SCAN calls\b/, details);
  });
});

// PostgreSQL, where a manual retry and the purge run in separate transactions at once: the purge
// picked a finished delivery, then a retry re-opened it before the purge's delete got to it.
describe("retention on PostgreSQL: a delivery re-opened while the purge runs", () => {
  const dir = tempDir();
  let running: Running;
  let api: ApiClient;
  let rx: Receiver;
  let holder: pg.Client;
  let dropDb: () => Promise<void>;

  before(async () => {
    const db = await (await startPostgres()).freshDatabase();
    dropDb = db.drop;
    const config = loadConfig({
      PORT: "0",
      KLEN_DATA_DIR: dir.path,
      KLEN_DATABASE_URL: db.url,
      KLEN_API_KEY: "klen_test_key_retention_pg",
      KLEN_DEV: "1",
      KLEN_RETRY_SCHEDULE: "100ms",
    });
    running = await startServer(config, createLogger({ level: "silent" }));
    api = apiClient(running.address!.replace("[::1]", "127.0.0.1"), "klen_test_key_retention_pg");
    rx = await startReceiver({ respond: () => ({ status: 500, body: "down" }) });
    holder = new pg.Client({ connectionString: db.url });
    await holder.connect();
  });
  after(async () => {
    await holder.end().catch(() => {});
    await running.stop(1000);
    await rx.close();
    await dropDb();
    await stopPostgres();
    dir.remove();
  });

  test("keeps the delivery and its attempt log", async () => {
    assert.equal((await api.post("/v1/endpoints", { url: rx.url })).status, 201);
    const agent = await api.post("/v1/agents", { name: "Old" });
    await startedCall(api, agent.body.id, "+15551234567");
    const failed = await waitFor("the delivery fails", async () => {
      const r = await api.get("/v1/deliveries?status=failed");
      return r.body.data[0] as { id: string } | undefined;
    });
    const logged = (await api.get(`/v1/deliveries/${failed.id}`)).body.attempts.length;
    assert.equal(logged, 2);
    // The retry's transaction, not yet committed when the purge picks the delivery.
    await holder.query("BEGIN");
    await holder.query("UPDATE deliveries SET status = 'pending', next_attempt_at = $2 WHERE id = $1", [
      failed.id,
      Date.now() + DAY,
    ]);
    const purge = purgeExpired(running.ctx, Date.now() + 365 * DAY);
    await waitFor("the purge waits for the retry's row", async () => {
      const r = await holder.query(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
      );
      return Number(r.rows[0].n) > 0;
    });
    await holder.query("COMMIT");
    await purge;
    const after = await api.get(`/v1/deliveries/${failed.id}`);
    assert.equal(after.body.status, "pending");
    assert.equal(after.body.attempts.length, logged, "its attempt log is kept");
  });
});
