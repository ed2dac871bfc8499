import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { runCall, setupAccount } from "./helpers/api.js";
import { backends } from "./helpers/backends.js";
import { stopPostgres } from "./helpers/postgres.js";
import { startReceiver } from "./helpers/receiver.js";
import { type ServerProcess, spawnServer } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

after(() => stopPostgres());

for (const backend of backends())
  describe(`per-call ordering (${backend.name})`, () => {
    let db: Awaited<ReturnType<typeof backend.fresh>>;
    let server: ServerProcess;
    before(async () => {
      db = await backend.fresh();
      // A long schedule of short delays: call A's first event keeps failing for as long as the test
      // wants (400 × 50 ms: 60 of them, 3 s, ran out once on a loaded machine before call B's four
      // events had arrived, and released A's later events).
      server = await spawnServer({
        dataDir: db.dataDir,
        env: { KLEN_DATABASE_URL: db.databaseUrl, KLEN_RETRY_SCHEDULE: Array(400).fill("50ms").join(",") },
      });
    });
    after(async () => {
      await server.kill();
      await db.cleanup();
    });

    test("while one call's first event keeps failing, its later events wait and another call's events flow", async () => {
      let callA = -1;
      let release = false;
      const rx = await startReceiver({
        respond: (r) =>
          r.json?.call?.id === callA && r.json.event_type === "call.started" && !release ? 500 : 200,
      });
      const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: rx.url });
      rx.setSecret(endpoint.secret);
      const a = await server.api.post("/v1/calls", {
        agent_id: agentId,
        type: "outbound",
        phone_number: "+15550100001",
      });
      callA = a.body.id;
      for (const step of ["start", "end", "transcript"] as const) {
        const body = step === "transcript" ? { transcript: "Agent: hi" } : {};
        assert.equal((await server.api.post(`/v1/calls/${callA}/${step}`, body)).status, 200);
      }
      await waitFor(
        "call A's started to fail twice",
        () => rx.requests.filter((r) => r.json.call.id === callA).length >= 2,
      );

      const callB = await runCall(server.api, agentId, "+15550100002");
      await waitFor(
        "call B's four events",
        () => rx.requests.filter((r) => r.json.call.id === callB).length >= 4,
      );
      const seenA = rx.requests.filter((r) => r.json.call.id === callA).map((r) => r.json.event_type);
      assert.ok(
        seenA.every((t) => t === "call.started"),
        `only A's call.started was attempted while it failed (saw ${seenA.join(", ")})`,
      );
      assert.deepEqual(
        rx.requests.filter((r) => r.json.call.id === callB).map((r) => r.json.event_type),
        ["call.started", "call.ended", "call.transcript", "call.summary"],
      );

      release = true;
      await waitFor(
        "call A's events after release",
        () =>
          rx.requests.filter((r) => r.json.call.id === callA && r.json.event_type !== "call.started")
            .length >= 2,
      );
      const aTypes = rx.requests.filter((r) => r.json.call.id === callA).map((r) => r.json.event_type);
      const firstLater = aTypes.findIndex((t) => t !== "call.started");
      assert.deepEqual(
        aTypes.slice(firstLater),
        ["call.ended", "call.transcript"],
        "A's later events arrive in order after its first",
      );
      assert.ok(aTypes.slice(0, firstLater).length >= 3, "A's call.started was retried until it succeeded");
      assert.deepEqual(rx.verifyFailures, []);
      await rx.close();
    });

    test("a given-up event releases the next one: the chain moves on after the last attempt", async () => {
      const db2 = await backend.fresh();
      const s2 = await spawnServer({
        dataDir: db2.dataDir,
        env: { KLEN_DATABASE_URL: db2.databaseUrl, KLEN_RETRY_SCHEDULE: "20ms,20ms" },
      });
      try {
        const rx = await startReceiver({
          respond: (r) => (r.json?.event_type === "call.started" ? 500 : 200),
        });
        const { agentId, endpoint } = await setupAccount(s2.api, { endpointUrl: rx.url });
        const call = await s2.api.post("/v1/calls", {
          agent_id: agentId,
          type: "inbound",
          phone_number: "+15550100003",
        });
        await s2.api.post(`/v1/calls/${call.body.id}/start`, {});
        await s2.api.post(`/v1/calls/${call.body.id}/end`, {});
        await waitFor("call.ended delivered", () =>
          rx.requests.some((r) => r.json.event_type === "call.ended"),
        );
        const types = rx.requests.map((r) => r.json.event_type);
        assert.deepEqual(types, ["call.started", "call.started", "call.started", "call.ended"]);
        const failed = await s2.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&status=failed`);
        assert.equal(failed.body.data.length, 1);
        await rx.close();
      } finally {
        await s2.kill();
        await db2.cleanup();
      }
    });

    test("calls do not wait on each other: many calls interleave at one endpoint, each in order", async () => {
      const rx = await startReceiver();
      const { agentId } = await setupAccount(server.api, { endpointUrl: rx.url });
      const ids = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          runCall(server.api, agentId, `+1555020${String(i).padStart(4, "0")}`),
        ),
      );
      await rx.waitForCount(80);
      for (const id of ids) {
        assert.deepEqual(
          rx.requests.filter((r) => r.json.call.id === id).map((r) => r.json.event_type),
          ["call.started", "call.ended", "call.transcript", "call.summary"],
          `call ${id} in order`,
        );
      }
      await rx.close();
    });

    test("retry and recover keep a call's order: a waiting delivery is not sent early, recovered events go one at a time", async () => {
      const db3 = await backend.fresh();
      const s3 = await spawnServer({
        dataDir: db3.dataDir,
        // A long timeout: the attempt the receiver holds below stays in flight until it is let go.
        env: {
          KLEN_DATABASE_URL: db3.databaseUrl,
          KLEN_RETRY_SCHEDULE: "20ms,20ms",
          KLEN_DELIVERY_TIMEOUT: "60s",
        },
      });
      let healthy = false;
      let open = 0;
      // The first answers wait for this: call.started's attempt stays in flight, so call.ended
      // stays parked behind it for as long as the test needs.
      let openGate!: () => void;
      const gate = new Promise<void>((r) => {
        openGate = r;
      });
      const arrivals: Array<{ type: string; overlapped: boolean }> = [];
      const { createServer } = await import("node:http");
      // A receiver that notes whether a request arrives while another is still unanswered.
      const srv = createServer((req, res) => {
        let body = "";
        req.on("data", (c) => {
          body += c;
        });
        req.on("end", () => {
          arrivals.push({ type: JSON.parse(body).event_type, overlapped: open > 0 });
          open++;
          void gate.then(() =>
            setTimeout(() => {
              open--;
              res.writeHead(healthy ? 200 : 500).end();
            }, 30),
          );
        });
      });
      await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
      const url = `http://127.0.0.1:${(srv.address() as import("node:net").AddressInfo).port}`;
      try {
        const { agentId, endpoint } = await setupAccount(s3.api, { endpointUrl: url });
        const call = await s3.api.post("/v1/calls", {
          agent_id: agentId,
          type: "inbound",
          phone_number: "+15550100004",
        });
        for (const step of ["start", "end"] as const)
          await s3.api.post(`/v1/calls/${call.body.id}/${step}`, {});
        await s3.api.post(`/v1/calls/${call.body.id}/transcript`, { transcript: "hi" });
        // While call.started is being retried, call.ended waits; retrying it by hand is refused.
        const waiting = await waitFor("a parked delivery", async () => {
          const list = (await s3.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&status=pending`)).body
            .data;
          return list.find(
            (d: { attempt_count: number; next_attempt_at: string | null }) =>
              d.attempt_count === 0 && d.next_attempt_at === null,
          );
        });
        // call.started's first attempt has reached the receiver, which holds it: in flight.
        await waitFor("call.started's attempt held", () => arrivals.length >= 1);
        const refused = await s3.api.post(`/v1/deliveries/${waiting.id}/retry`);
        assert.equal(refused.status, 409);
        assert.equal(refused.body.error.code, "delivery_waiting");
        // It names the delivery to retry instead: call.started's, still in flight.
        const first = (
          await s3.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&status=pending`)
        ).body.data.find((d: { event_type: string }) => d.event_type === "call.started");
        assert.equal(refused.body.error.details.waiting_for, first.id);
        assert.match(refused.body.error.message, new RegExp(`${first.id} is being sent, or about to be`));
        openGate();
        await waitFor("all three failed", async () => {
          const list = (await s3.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&status=failed`)).body
            .data;
          return list.length === 3;
        });
        assert.deepEqual(
          [...new Set(arrivals.map((a) => a.type))],
          ["call.started", "call.ended", "call.transcript"],
        );
        healthy = true;
        arrivals.length = 0;
        const rec = await s3.api.post(`/v1/endpoints/${endpoint.id}/recover`, {
          since: new Date(Date.now() - 60_000).toISOString(),
        });
        assert.equal(rec.body.queued, 3);
        await waitFor("three recovered deliveries", () => arrivals.length >= 3);
        assert.deepEqual(
          arrivals.map((a) => a.type),
          ["call.started", "call.ended", "call.transcript"],
        );
        assert.ok(
          arrivals.every((a) => !a.overlapped),
          "each recovered event was sent only after the previous one was answered",
        );
      } finally {
        openGate();
        await new Promise<void>((r) => srv.close(() => r()));
        await s3.kill();
        await db3.cleanup();
      }
    });
  });
