import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { previousSecrets } from "../src/endpoints/secrets.js";
import { openStore } from "../src/storage/store.js";
import { setupAccount } from "./helpers/api.js";
import { type Backend, backends } from "./helpers/backends.js";
import { type ServerProcess, spawnServer } from "./helpers/server.js";

/**
 * Adversarial review: concurrent requests racing through two API processes on one database. One
 * Idempotency-Key creates one thing and every racer gets the same answer; two transitions of one
 * call never both win; a call emits exactly one event per transition.
 */
for (const backend of backends()) {
  describe(`review: races through two processes (${backend.name})`, () => {
    let db: Awaited<ReturnType<Backend["fresh"]>>;
    let a: ServerProcess;
    let b: ServerProcess;
    let agentId: number;
    before(async () => {
      db = await backend.fresh();
      const env = { KLEN_DATABASE_URL: db.databaseUrl };
      a = await spawnServer({ dataDir: db.dataDir, env, role: "api" });
      b = await spawnServer({ dataDir: db.dataDir, env, role: "api" });
      ({ agentId } = await setupAccount(a.api));
    });
    after(async () => {
      if (process.env.REVIEW_DEBUG) console.log(a.output(), b.output());
      await a.kill();
      await b.kill();
      await db.cleanup();
    });

    const both = <T>(n: number, f: (s: ServerProcess, i: number) => Promise<T>) =>
      Promise.all(Array.from({ length: n }, (_, i) => f(i % 2 === 0 ? a : b, i)));

    test("one Idempotency-Key raced from both processes creates one call", async () => {
      const body = { agent_id: agentId, type: "outbound", phone_number: "+15557654321" };
      const rs = await both(24, (s) => s.api.post("/v1/calls", body, { "idempotency-key": "race-create" }));
      assert.deepEqual(
        new Set(rs.map((r) => r.status)),
        new Set([201]),
        JSON.stringify(rs.map((r) => r.body)),
      );
      const ids = new Set(rs.map((r) => r.body.id));
      assert.equal(ids.size, 1, `one call for one key, got ${[...ids]}`);
      assert.equal(rs.filter((r) => r.headers.get("idempotent-replayed") === null).length, 1);
      const list = await a.api.get("/v1/calls?limit=100");
      assert.equal(list.body.data.filter((c: any) => c.phone_number === "+15557654321").length, 1);
      // The same key with a different body is refused from either process.
      const reused = await b.api.post(
        "/v1/calls",
        { ...body, type: "inbound" },
        { "idempotency-key": "race-create" },
      );
      assert.equal(reused.status, 422);
      assert.equal(reused.body.error.code, "idempotency_key_reused");
    });

    test("rotations raced from both processes: every secret handed out keeps signing", async () => {
      const ep = await a.api.post("/v1/endpoints", { url: "http://127.0.0.1:9/rotations" });
      assert.equal(ep.status, 201);
      const rs = await both(4, (s) =>
        s.api.post(`/v1/endpoints/${ep.body.id}/rotate-secret`, { grace_seconds: 3600 }),
      );
      assert.deepEqual(
        rs.map((r) => r.status),
        [200, 200, 200, 200],
      );
      const store = await openStore(db.databaseUrl);
      try {
        const row = await store.db
          .selectFrom("endpoints")
          .selectAll()
          .where("id", "=", ep.body.id)
          .executeTakeFirstOrThrow();
        const signing = new Set([row.secret, ...previousSecrets(row, Date.now()).map((p) => p.secret)]);
        for (const secret of [ep.body.secret, ...rs.map((r) => r.body.secret)]) {
          assert.ok(signing.has(secret), "a secret handed out by a rotation was lost");
        }
        assert.equal(signing.size, 5);
      } finally {
        await store.close();
      }
    });

    test("racing transitions of one call: exactly one wins, one event each", async () => {
      const call = await a.api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: "+15551234567",
      });
      const id = call.body.id as number;
      const starts = await both(16, (s) => s.api.post(`/v1/calls/${id}/start`, {}));
      assert.equal(
        starts.filter((r) => r.status === 200).length,
        1,
        JSON.stringify(starts.map((r) => r.status)),
      );
      assert.ok(
        starts.every((r) => r.status === 200 || r.status === 409),
        JSON.stringify(starts.map((r) => [r.status, r.body])),
      );
      const finishes = await both(16, (s, i) =>
        i % 4 < 2
          ? s.api.post(`/v1/calls/${id}/end`, { summary: `ending ${i}` })
          : s.api.post(`/v1/calls/${id}/fail`, { failure_reason: "no-answer" }),
      );
      const winners = finishes.filter((r) => r.status === 200);
      assert.equal(winners.length, 1, JSON.stringify(finishes.map((r) => r.status)));
      assert.ok(
        finishes.every((r) => r.status === 200 || r.status === 409),
        JSON.stringify(finishes.map((r) => [r.status, r.body])),
      );
      const transcripts = await both(8, (s, i) =>
        s.api.post(`/v1/calls/${id}/transcript`, { transcript: `t${i}` }),
      );
      assert.equal(transcripts.filter((r) => r.status === 200).length, 1);
      const events = (await b.api.get(`/v1/events?call_id=${id}&limit=100`)).body.data as Array<{
        event_type: string;
        payload: any;
      }>;
      const types = events.map((e) => e.event_type).sort();
      const finished = winners[0]!.body.status === "completed" ? "call.ended" : "call.failed";
      assert.deepEqual(types, ["call.started", "call.transcript", finished].sort());
      // The stored event agrees with the call that won.
      const final = (await a.api.get(`/v1/calls/${id}`)).body;
      const ev = events.find((e) => e.event_type === finished)!;
      assert.equal(ev.payload.call.status, final.status);
      assert.equal(ev.payload.call.ended_at, final.ended_at.replace(/\.\d+Z$/, "Z"));
    });

    test("distinct keys racing on one transition: one 200, the others a stored 409", async () => {
      const call = await a.api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: "+15551234567",
      });
      const id = call.body.id as number;
      const rs = await both(10, (s, i) =>
        s.api.post(`/v1/calls/${id}/start`, {}, { "idempotency-key": `start-${i}` }),
      );
      assert.equal(rs.filter((r) => r.status === 200).length, 1);
      // Each key replays its own first answer, from either process.
      for (let i = 0; i < rs.length; i++) {
        const again = await (i % 2 === 0 ? b : a).api.post(
          `/v1/calls/${id}/start`,
          {},
          { "idempotency-key": `start-${i}` },
        );
        assert.equal(again.status, rs[i]!.status);
        assert.equal(again.headers.get("idempotent-replayed"), "true");
      }
      assert.equal((await a.api.get(`/v1/events?call_id=${id}`)).body.data.length, 1);
    });

    test('first test calls raced from both processes create one "Test Agent"', async () => {
      const rs = await both(8, (s) => s.api.post("/v1/test-calls", { outcome: "busy" }));
      assert.deepEqual(
        rs.map((r) => r.status),
        rs.map(() => 202),
        JSON.stringify(rs.map((r) => r.body)),
      );
      const agents = (await a.api.get("/v1/agents?limit=100")).body.data as Array<{ name: string }>;
      assert.equal(agents.filter((x) => x.name === "Test Agent").length, 1);
    });
  });
}
