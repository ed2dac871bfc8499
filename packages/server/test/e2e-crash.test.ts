import assert from "node:assert/strict";
import { after, test } from "node:test";
import { setupAccount, startedCall } from "./helpers/api.js";
import { startReceiver } from "./helpers/receiver.js";
import { spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

const dir = tempDir();
after(() => dir.remove());

// Short lease so that deliveries held by the killed process come due again quickly after restart.
const env = {
  KLEN_DELIVERY_TIMEOUT: "500ms",
  KLEN_LEASE: "1s",
  KLEN_RETRY_SCHEDULE: "50ms,100ms,200ms,400ms",
};

test("kill -9 during deliveries and API calls: after restart every event is delivered, duplicates share the webhook-id", async (t) => {
  // A slow receiver keeps many attempts in flight at the moment of the kill.
  const rx = await startReceiver({ respond: () => ({ status: 200, delayMs: 15 }) });
  const apiKey = "klen_crash_test_key";
  let server = await spawnServer({ dataDir: dir.path, env, apiKey });
  const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: rx.url });
  rx.setSecret(endpoint.secret);

  // Drive calls concurrently; the kill lands in the middle of this.
  const api = server.api;
  let stop = false;
  const driver = async (i: number) => {
    for (let n = 0; !stop && n < 200; n++) {
      const c = await api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: `+1555${i}${String(n).padStart(6, "0")}`,
      });
      if (c.status !== 201) return;
      for (const step of ["start", "end", "transcript"] as const) {
        const r = await api.post(
          `/v1/calls/${c.body.id}/${step}`,
          step === "transcript" ? { transcript: "hello" } : {},
        );
        if (r.status !== 200) return;
      }
    }
  };
  const drivers = Promise.all([1, 2, 3, 4].map((i) => driver(i).catch(() => undefined)));
  await rx.waitForCount(60, 30_000);
  server.proc.kill("SIGKILL");
  await server.kill("SIGKILL");
  stop = true;
  await drivers;
  const receivedBeforeRestart = rx.requests.length;

  server = await spawnServer({ dataDir: dir.path, env, apiKey });
  // The ledger: every event the database holds must reach the receiver.
  const events: string[] = [];
  let cursor = "";
  for (;;) {
    const page = await server.api.get(`/v1/events?limit=100${cursor ? `&cursor=${cursor}` : ""}`);
    events.push(...page.body.data.map((e: { id: string }) => e.id));
    if (!page.body.next_cursor) break;
    cursor = page.body.next_cursor;
  }
  assert.ok(events.length >= 60, `events before the kill: ${events.length}`);
  await waitFor(
    "every event received",
    () => {
      const got = new Set(rx.requests.map((r) => r.id));
      return events.every((id) => got.has(id));
    },
    60_000,
  );
  const ids = rx.requests.map((r) => r.id);
  const duplicates = ids.length - new Set(ids).size;
  t.diagnostic(
    `events=${events.length} received=${ids.length} before-restart=${receivedBeforeRestart} duplicates=${duplicates}`,
  );
  const known = new Set(events);
  assert.ok(
    ids.every((id) => known.has(id)),
    "nothing arrives that the database does not hold",
  );
  assert.deepEqual(rx.verifyFailures, []);
  // Every delivery ends succeeded.
  await waitFor("no pending deliveries", async () => {
    const p = await server.api.get(`/v1/deliveries?status=pending&limit=1`);
    return p.body.data.length === 0;
  });
  await server.kill();
  await rx.close();
});

test("kill -9 while an attempt is on the wire: the attempt is logged as lease_expired and the resend is the next one", async (t) => {
  const data = tempDir();
  t.after(() => data.remove());
  // The first request is held unanswered; the process making it is killed while it waits.
  const rx = await startReceiver({ respond: (r) => (r.n === 1 ? { status: 200, hang: true } : 200) });
  t.after(() => rx.close());
  const lease = { KLEN_DELIVERY_TIMEOUT: "10s", KLEN_LEASE: "11s" };
  let server = await spawnServer({ dataDir: data.path, env: lease });
  t.after(() => server.kill("SIGKILL"));
  const { endpoint, agentId } = await setupAccount(server.api, { endpointUrl: rx.url });
  rx.setSecret(endpoint.secret);
  await startedCall(server.api, agentId, "+15550001111");
  await rx.waitForCount(1, 10_000);
  await server.kill("SIGKILL");

  server = await spawnServer({ dataDir: data.path, env: lease });
  await rx.waitForCount(2, 30_000);
  assert.equal(rx.requests[1]!.id, rx.requests[0]!.id, "the resend carries the same webhook-id");
  const [delivery] = await waitFor("the resend recorded", async () => {
    const r = await server.api.get("/v1/deliveries?status=succeeded");
    return r.body.data.length === 1 ? r.body.data : undefined;
  });
  assert.equal(delivery.attempt_count, 2);
  const [lost, sent, ...none] = delivery.attempts;
  assert.equal(none.length, 0);
  assert.equal(lost.number, 1);
  assert.equal(lost.error, "lease_expired");
  assert.match(lost.error_message, /may have reached the endpoint/);
  assert.equal(lost.status_code, null);
  assert.equal(lost.url, sent.url, "the URL the attempt went to");
  assert.deepEqual(lost.request_headers, { "webhook-id": rx.requests[0]!.id });
  assert.deepEqual([sent.number, sent.status_code, sent.error], [2, 200, null]);
  assert.deepEqual(rx.verifyFailures, []);
});
