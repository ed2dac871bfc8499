import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { type EventType, eventSchemas } from "@klen/webhooks/schemas";
import { Ajv } from "ajv";
import { Webhook } from "standardwebhooks";
import { runCall, setupAccount, startedCall } from "./helpers/api.js";
import { backends } from "./helpers/backends.js";
import { seriesValue } from "./helpers/metrics.js";
import { stopPostgres } from "./helpers/postgres.js";
import { startReceiver } from "./helpers/receiver.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

const ajv = new Ajv({ strict: false });
const validators = new Map<string, ReturnType<typeof ajv.compile>>();
const validate = (body: { event_type: EventType }) => {
  let v = validators.get(body.event_type);
  if (!v) {
    v = ajv.compile(eventSchemas[body.event_type]);
    validators.set(body.event_type, v);
  }
  return v(body) ? "" : ajv.errorsText(v.errors);
};

async function deliveryOf(server: ServerProcess, eventId: string, endpointId: string) {
  const r = await server.api.get(`/v1/deliveries?event_id=${eventId}&endpoint_id=${endpointId}`);
  return r.body.data[0];
}

/** Waits until the delivery of an event to an endpoint reaches `status`, and returns it. */
function deliveryWithStatus(server: ServerProcess, eventId: string, endpointId: string, status: string) {
  return waitFor(`delivery ${status}`, async () => {
    const x = await deliveryOf(server, eventId, endpointId);
    return x?.status === status ? x : undefined;
  });
}

after(() => stopPostgres());

// Both ways of sending (KLEN_SENDER_THREAD): from a thread of its own on SQLite, from the event
// loop on PostgreSQL.
for (const backend of backends()) {
  const sendsFromThread = backend.name === "sqlite";
  describe(`end to end on a real server process (${backend.name}, ${sendsFromThread ? "sender thread" : "sending on the event loop"})`, () => {
    let server: ServerProcess;
    let db: Awaited<ReturnType<typeof backend.fresh>>;
    before(async () => {
      db = await backend.fresh();
      server = await spawnServer({
        dataDir: db.dataDir,
        env: { KLEN_DATABASE_URL: db.databaseUrl, KLEN_SENDER_THREAD: sendsFromThread ? "1" : "0" },
      });
    });
    after(async () => {
      await server.kill();
      await db.cleanup();
    });

    test("a call's workflow arrives in order, signed and in the seed's format; a filtered endpoint gets only call.ended", async () => {
      const all = await startReceiver();
      const endedOnly = await startReceiver();
      const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: `${all.url}/hooks` });
      all.setSecret(endpoint.secret);
      const filtered = await server.api.post("/v1/endpoints", {
        url: endedOnly.url,
        event_types: ["call.ended"],
      });
      assert.equal(filtered.status, 201);
      endedOnly.setSecret(filtered.body.secret);
      const contact = await server.api.post("/v1/contacts", {
        name: "John Doe",
        email: "john@example.com",
        phone_number: "+15559876543",
      });
      assert.equal(contact.status, 201);

      const callId = await runCall(server.api, agentId, "+15559876543");
      await all.waitForCount(4);
      await endedOnly.waitForCount(1);

      assert.deepEqual(all.verifyFailures, [], "every request verifies with the standardwebhooks package");
      assert.deepEqual(endedOnly.verifyFailures, []);
      assert.deepEqual(
        all.requests.map((r) => r.json.event_type),
        ["call.started", "call.ended", "call.transcript", "call.summary"],
      );
      assert.deepEqual(
        endedOnly.requests.map((r) => r.json.event_type),
        ["call.ended"],
      );

      const events = (await server.api.get(`/v1/events?call_id=${callId}`)).body.data as Array<{
        id: string;
        event_type: string;
        payload: unknown;
      }>;
      assert.equal(events.length, 4);
      // The call's deliveries: four to the all-events endpoint, one to the filtered one; no other call's.
      const ofCall = (await server.api.get(`/v1/deliveries?call_id=${callId}`)).body.data as Array<{
        call_id: number;
        event_id: string;
        event_type: string;
      }>;
      assert.equal(ofCall.length, 5);
      assert.ok(
        ofCall.every(
          (d) =>
            d.call_id === callId && events.some((e) => e.id === d.event_id && e.event_type === d.event_type),
        ),
        "each delivery names its event and the event's type",
      );
      assert.equal((await server.api.get(`/v1/deliveries?call_id=${callId + 1000}`)).body.data.length, 0);
      const call = (await server.api.get(`/v1/calls/${callId}`)).body;
      for (const req of all.requests) {
        assert.equal(validate(req.json), "", `${req.json.event_type} validates against its schema`);
        assert.equal(req.path, "/hooks");
        assert.equal(req.headers["content-type"], "application/json");
        assert.match(String(req.headers["user-agent"]), /^Klen-Webhooks\/\d+\.\d+\.\d+/);
        assert.match(String(req.headers["webhook-timestamp"]), /^\d+$/);
        const ev = events.find((e) => e.id === req.id);
        assert.ok(ev, `webhook-id ${req.id} is the event's id`);
        assert.equal(req.body, JSON.stringify(ev.payload), "the body is the stored event, byte for byte");
        const c = req.json.call;
        assert.deepEqual(Object.keys(c).slice(0, 10), [
          "id",
          "klen_call_id",
          "agent_id",
          "agent_name",
          "status",
          "type",
          "phone_number",
          "started_at",
          "ended_at",
          "duration_seconds",
        ]);
        assert.equal(c.id, callId);
        assert.equal(c.klen_call_id, "call_abc123");
        assert.equal(c.agent_id, agentId);
        assert.equal(c.agent_name, "Customer Support");
        assert.equal(c.type, "inbound");
        assert.equal(c.phone_number, "+15559876543");
        assert.equal(c.started_at, call.started_at);
        assert.deepEqual(c.contact, { id: contact.body.id, name: "John Doe", email: "john@example.com" });
        assert.match(req.json.timestamp, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/);
      }
      const [started, ended, transcript, summary] = all.requests.map((r) => r.json.call);
      assert.equal(started.status, "in-progress");
      assert.equal(started.assistant_id, "assistant_abc123");
      assert.equal(started.ended_at, null);
      assert.equal(ended.status, "completed");
      assert.equal(ended.duration, ended.duration_seconds);
      assert.equal(ended.summary, "Customer asked about billing.");
      assert.equal(transcript.transcript, "Agent: Hello!\nCustomer: Hi, I have a billing question.");
      assert.match(summary.summary, /billing discrepancy/);
      // One body, every endpoint: the filtered endpoint's call.ended is the same bytes and id.
      const endedAtAll = all.requests[1]!;
      assert.equal(endedOnly.requests[0]!.body, endedAtAll.body);
      assert.equal(endedOnly.requests[0]!.id, endedAtAll.id);
      await all.close();
      await endedOnly.close();
    });

    test("an endpoint that answers 500 twice then 200 ends succeeded after 3 logged attempts", async () => {
      const flaky = await startReceiver({
        respond: (r) => (r.n <= 2 ? { status: 500, body: `failure ${r.n}` } : 200),
      });
      const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: flaky.url });
      await startedCall(server.api, agentId, "+15551112222", "outbound");
      await flaky.waitForCount(3);
      const eventId = flaky.requests[0]!.id;
      const d = await deliveryWithStatus(server, eventId, endpoint.id, "succeeded");
      assert.equal(d.attempts.length, 3);
      assert.deepEqual(
        d.attempts.map((a: { number: number }) => a.number),
        [1, 2, 3],
      );
      assert.deepEqual(
        d.attempts.map((a: { status_code: number }) => a.status_code),
        [500, 500, 200],
      );
      assert.equal(d.attempts[0].error, "http_status");
      assert.equal(d.attempts[0].error_message, "HTTP 500");
      assert.equal(d.attempts[0].response_body, "failure 1");
      assert.equal(d.attempts[2].error, null);
      assert.equal(d.attempts[0].request_headers["webhook-id"], eventId);
      assert.ok(
        d.attempts.every(
          (a: { duration_ms: number }) => Number.isInteger(a.duration_ms) && a.duration_ms >= 0,
        ),
      );
      assert.deepEqual(
        new Set(flaky.requests.map((r) => r.id)).size,
        1,
        "every retry carries the same webhook-id",
      );
      await flaky.close();
    });

    test("a receiver answering NUL bytes is logged with U+FFFD in their place, and holds up nobody's outcomes", async () => {
      // PostgreSQL's text cannot hold NUL: stored as it came, it failed every outcome batch it was in.
      const binary = await startReceiver({ respond: () => ({ status: 200, body: "ok\0bin\0" }) });
      const healthy = await startReceiver();
      const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: binary.url });
      const other = await server.api.post("/v1/endpoints", { url: healthy.url });
      await startedCall(server.api, agentId, "+15551113333");
      await binary.waitForCount(1);
      const eventId = binary.requests[0]!.id;
      const d = await deliveryWithStatus(server, eventId, endpoint.id, "succeeded");
      assert.equal(d.attempts[0].response_body, "ok\uFFFDbin\uFFFD");
      await deliveryWithStatus(server, eventId, other.body.id, "succeeded");
      assert.equal(binary.requests.length, 1, "recorded at once, not re-sent when a lease ran out");
      await server.api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: true });
      await server.api.patch(`/v1/endpoints/${other.body.id}`, { disabled: true });
      await binary.close();
      await healthy.close();
    });

    test("Idempotency-Key replays the first response and emits nothing new; reuse with another body is a 422", async () => {
      const rx = await startReceiver();
      const { agentId } = await setupAccount(server.api, { endpointUrl: rx.url });
      const call = await server.api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: "+15553334444",
      });
      const key = { "idempotency-key": `start-${call.body.id}` };
      const first = await server.api.post(`/v1/calls/${call.body.id}/start`, {}, key);
      const again = await server.api.post(`/v1/calls/${call.body.id}/start`, {}, key);
      assert.equal(first.status, 200);
      assert.equal(again.status, 200);
      assert.deepEqual(again.body, first.body);
      assert.equal(again.headers.get("idempotent-replayed"), "true");
      const other = await server.api.post(`/v1/calls/${call.body.id}/start`, { assistant_id: "other" }, key);
      assert.equal(other.status, 422);
      assert.equal(other.body.error.code, "idempotency_key_reused");
      // Without the key, a second start is an invalid transition.
      const second = await server.api.post(`/v1/calls/${call.body.id}/start`, {});
      assert.equal(second.status, 409);
      const events = await server.api.get(`/v1/events?call_id=${call.body.id}`);
      assert.equal(events.body.data.length, 1, "exactly one call.started");
      // Concurrent duplicates: many identical requests at once still make one transition.
      const endKey = { "idempotency-key": `end-${call.body.id}` };
      const burst = await Promise.all(
        Array.from({ length: 8 }, () => server.api.post(`/v1/calls/${call.body.id}/end`, {}, endKey)),
      );
      assert.ok(burst.every((r) => r.status === 200));
      const after2 = await server.api.get(`/v1/events?call_id=${call.body.id}`);
      assert.equal(after2.body.data.length, 2, "one call.ended for eight identical requests");
      await rx.close();
    });

    test("Idempotency-Key: the same fields in another order are the same request; another value is a 422", async () => {
      const key = { "idempotency-key": `endpoint-order-${backend.name}` };
      const url = "http://127.0.0.1:9/klen-order";
      const first = await server.api.raw(
        "POST",
        "/v1/endpoints",
        `{"url":"${url}","description":"order","headers":{"X-A":"1","X-B":"2"},"event_types":["call.started","call.ended"]}`,
        key,
      );
      assert.equal(first.status, 201);
      const reordered = await server.api.raw(
        "POST",
        "/v1/endpoints",
        `{"event_types":["call.started","call.ended"], "headers":{"X-B":"2","X-A":"1"},"description":"order","url":"${url}"}`,
        key,
      );
      assert.equal(reordered.status, 201);
      assert.equal(reordered.headers.get("idempotent-replayed"), "true");
      assert.equal(reordered.body.id, first.body.id, "the stored answer, not a second endpoint");
      const changed = await server.api.raw(
        "POST",
        "/v1/endpoints",
        `{"event_types":["call.started","call.ended"],"headers":{"X-B":"2","X-A":"3"},"description":"order","url":"${url}"}`,
        key,
      );
      assert.equal(changed.status, 422);
      assert.equal(changed.body.error.code, "idempotency_key_reused");
      const listed = (await server.api.get("/v1/endpoints?limit=100")).body.data as Array<{ url: string }>;
      assert.equal(listed.filter((e) => e.url === url).length, 1);
      await server.api.del(`/v1/endpoints/${first.body.id}`);
    });

    test("Idempotency-Key: a refused request's 400 is its first answer too; the key with a corrected body is a 422", async () => {
      const agents = async () => (await server.api.get("/v1/agents?limit=100")).body.data.length as number;
      const before = await agents();
      // Fails the schema.
      const key = { "idempotency-key": `bad-agent-${backend.name}` };
      const refused = await server.api.post("/v1/agents", { assistant_id: "x" }, key);
      assert.equal(refused.status, 400);
      assert.equal(refused.body.error.details.field, "name");
      const repeat = await server.api.post("/v1/agents", { assistant_id: "x" }, key);
      assert.equal(repeat.status, 400);
      assert.deepEqual(repeat.body, refused.body);
      assert.equal(repeat.headers.get("idempotent-replayed"), "true");
      const corrected = await server.api.post("/v1/agents", { name: "Fixed", assistant_id: "x" }, key);
      assert.equal(corrected.status, 422);
      assert.equal(corrected.body.error.code, "idempotency_key_reused");
      // Not JSON: compared by its text.
      const textKey = { "idempotency-key": `not-json-${backend.name}` };
      const broken = await server.api.raw("POST", "/v1/agents", '{"name": "Half', textKey);
      assert.equal(broken.status, 400);
      const brokenAgain = await server.api.raw("POST", "/v1/agents", '{"name": "Half', textKey);
      assert.equal(brokenAgain.headers.get("idempotent-replayed"), "true");
      assert.deepEqual(brokenAgain.body, broken.body);
      assert.equal((await server.api.post("/v1/agents", { name: "Half" }, textKey)).status, 422);
      assert.equal(await agents(), before, "no agent was made");
      // With a new key the corrected request goes through.
      const fresh = { "idempotency-key": `good-agent-${backend.name}` };
      assert.equal((await server.api.post("/v1/agents", { name: "Fixed" }, fresh)).status, 201);
    });

    test("during a secret rotation both signatures are sent, so old and new secrets verify", async () => {
      const rx = await startReceiver();
      const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: rx.url });
      const rotated = await server.api.post(`/v1/endpoints/${endpoint.id}/rotate-secret`, {
        grace_seconds: 3600,
      });
      assert.equal(rotated.status, 200);
      assert.notEqual(rotated.body.secret, endpoint.secret);
      assert.match(rotated.body.secret, /^whsec_[A-Za-z0-9+/]{40,}={0,2}$/);
      const revealed = await server.api.get(`/v1/endpoints/${endpoint.id}/secret`);
      assert.equal(revealed.body.secret, rotated.body.secret);
      const callId = await startedCall(server.api, agentId, "+15555556666");
      await rx.waitForCount(1);
      const req = rx.requests[0]!;
      assert.equal(String(req.headers["webhook-signature"]).split(" ").length, 2);
      const headers = req.headers as Record<string, string>;
      assert.ok(new Webhook(endpoint.secret).verify(req.body, headers));
      assert.ok(new Webhook(rotated.body.secret).verify(req.body, headers));
      // A second rotation keeps the first one's grace: three secrets sign.
      const again = await server.api.post(`/v1/endpoints/${endpoint.id}/rotate-secret`, {
        grace_seconds: 60,
      });
      assert.equal(again.status, 200);
      assert.equal(
        again.body.previous_secret_expires_at,
        revealed.body.previous_secret_expires_at,
        "the first rotated-out secret signs longest",
      );
      await server.api.post(`/v1/calls/${callId}/end`, {});
      await rx.waitForCount(2);
      const third = rx.requests[1]!;
      assert.equal(String(third.headers["webhook-signature"]).split(" ").length, 3);
      for (const s of [endpoint.secret, rotated.body.secret, again.body.secret]) {
        assert.ok(new Webhook(s).verify(third.body, third.headers as Record<string, string>));
      }
      // Without a grace period only the new secret signs.
      const rotatedNow = await server.api.post(`/v1/endpoints/${endpoint.id}/rotate-secret`, {
        grace_seconds: 0,
      });
      assert.equal(rotatedNow.body.previous_secret_expires_at, undefined);
      await server.api.post(`/v1/calls/${callId}/transcript`, { transcript: "Agent: hello" });
      await rx.waitForCount(3);
      const second = rx.requests[2]!;
      assert.equal(String(second.headers["webhook-signature"]).split(" ").length, 1);
      assert.ok(
        new Webhook(rotatedNow.body.secret).verify(second.body, second.headers as Record<string, string>),
      );
      assert.throws(() =>
        new Webhook(rotated.body.secret).verify(second.body, second.headers as Record<string, string>),
      );
      await rx.close();
    });

    test("410 Gone disables the endpoint at once, with the reason recorded; later events are not attempted", async (t) => {
      const gone = await startReceiver({ respond: () => 410 });
      t.after(() => gone.close());
      const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: gone.url });
      const callId = await startedCall(server.api, agentId, "+15557778888");
      const ep = await waitFor("endpoint disabled", async () => {
        const e = (await server.api.get(`/v1/endpoints/${endpoint.id}`)).body;
        return e.disabled ? e : undefined;
      });
      assert.match(ep.disabled_reason, /410/);
      const d = await deliveryWithStatus(server, gone.requests[0]!.id, endpoint.id, "failed");
      assert.equal(d.last_error, "http_status 410", "the delivery itself is given up with its cause");
      assert.equal(d.attempt_count, 1);
      await server.api.post(`/v1/calls/${callId}/end`, {});
      const events = (await server.api.get(`/v1/events?call_id=${callId}`)).body.data;
      assert.equal(events.length, 2);
      const endedEvent = events.find((e: { event_type: string }) => e.event_type === "call.ended");
      assert.equal(
        await deliveryOf(server, endedEvent.id, endpoint.id),
        undefined,
        "a disabled endpoint gets no new deliveries",
      );
      assert.equal(gone.requests.length, 1);
      // Re-enabling clears the reason.
      const enabled = await server.api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: false });
      assert.equal(enabled.body.disabled, false);
      assert.equal(enabled.body.disabled_reason, null);
    });

    test("/metrics counts finished deliveries by status and reason, automatic disables by cause, attempts by status class", async (t) => {
      // A server of its own: the counters are this process's, and nothing else runs in it.
      const own = await backend.fresh();
      t.after(() => own.cleanup());
      const metered = await spawnServer({
        dataDir: own.dataDir,
        env: {
          KLEN_DATABASE_URL: own.databaseUrl,
          KLEN_RETRY_SCHEDULE: "2s,2s,2s",
          KLEN_DELIVERY_TIMEOUT: "10s",
        },
      });
      t.after(() => metered.kill());
      const fine = await startReceiver();
      const broken = await startReceiver({ respond: () => 500 });
      const gone = await startReceiver({ respond: () => 410 });
      // Its answer is held until the test has disabled it (its retry is then never sent).
      const paused = await startReceiver({ respond: () => ({ status: 503, delayMs: 3_000 }) });
      t.after(() => Promise.all([fine, broken, gone, paused].map((r) => r.close())));
      const { agentId, endpoint } = await setupAccount(metered.api, { endpointUrl: fine.url });
      const ids = [endpoint.id];
      for (const r of [broken, gone, paused])
        ids.push((await metered.api.post("/v1/endpoints", { url: r.url })).body.id);
      const pausedId = ids[3]!;
      await startedCall(metered.api, agentId, "+15550002222");
      // The paused endpoint is disabled by hand while its first attempt waits for the answer.
      await paused.waitForCount(1);
      assert.equal((await metered.api.patch(`/v1/endpoints/${pausedId}`, { disabled: true })).status, 200);
      await waitFor(
        "every delivery finished",
        async () => {
          const r = await metered.api.get("/v1/deliveries?status=pending");
          return r.body.data.length === 0;
        },
        30_000,
      );
      const text = await (await fetch(`${metered.url}/metrics`)).text();
      const v = (name: string, labels: Record<string, string>) => seriesValue(text, name, labels);
      const finished = "klen_deliveries_finished_total";
      // A series nothing has counted yet is there at 0, for increase() to see its first count.
      assert.match(text, /^klen_deliveries_finished_total\{[^}]*reason="one_attempt"[^}]*\} 0$/m);
      assert.match(text, /^klen_endpoints_disabled_total\{reason="failing"\} 0$/m);
      assert.deepEqual(
        {
          succeeded: v(finished, { status: "succeeded", reason: "" }),
          exhausted: v(finished, { status: "failed", reason: "retries_exhausted" }),
          gone: v(finished, { status: "failed", reason: "gone" }),
          disabled: v(finished, { status: "failed", reason: "endpoint_disabled" }),
          disabledGone: v("klen_endpoints_disabled_total", { reason: "gone" }),
          attempts2xx: v("klen_delivery_attempts_total", { outcome: "success", status_class: "2xx" }),
          attempts4xx: v("klen_delivery_attempts_total", { outcome: "http_status", status_class: "4xx" }),
          attempts5xx: v("klen_delivery_attempts_total", { outcome: "http_status", status_class: "5xx" }),
        },
        {
          succeeded: 1,
          exhausted: 1,
          gone: 1,
          disabled: 1,
          disabledGone: 1,
          attempts2xx: 1,
          attempts4xx: 1,
          // The broken endpoint's four attempts and the paused one's first.
          attempts5xx: 5,
        },
      );
      assert.deepEqual(
        [broken.requests.length, gone.requests.length, paused.requests.length],
        [4, 1, 1],
        "what the receivers saw",
      );
    });

    test("429 with Retry-After sets the next attempt by the header, within the schedule's bounds", async () => {
      const busy = await startReceiver({
        respond: (r) => (r.n === 1 ? { status: 429, headers: { "retry-after": "0" } } : 200),
      });
      const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: busy.url });
      await startedCall(server.api, agentId, "+15550001111");
      await busy.waitForCount(2);
      const d = await deliveryWithStatus(server, busy.requests[0]!.id, endpoint.id, "succeeded");
      assert.deepEqual(
        d.attempts.map((a: { status_code: number }) => a.status_code),
        [429, 200],
      );
      await busy.close();
    });

    test("manual retry makes one new attempt now, with the same webhook-id", async () => {
      const rx = await startReceiver();
      const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: rx.url });
      await startedCall(server.api, agentId, "+15550002222");
      await rx.waitForCount(1);
      const d = await deliveryWithStatus(server, rx.requests[0]!.id, endpoint.id, "succeeded");
      const retry = await server.api.post(`/v1/deliveries/${d.id}/retry`);
      assert.equal(retry.status, 202);
      await rx.waitForCount(2);
      assert.equal(rx.requests[1]!.id, rx.requests[0]!.id);
      const again = await waitFor("second attempt logged", async () => {
        const x = (await server.api.get(`/v1/deliveries/${d.id}`)).body;
        return x.attempts.length === 2 && x.status === "succeeded" ? x : undefined;
      });
      assert.deepEqual(
        again.attempts.map((a: { number: number }) => a.number),
        [1, 2],
      );
      await rx.close();
    });

    test("a manual retry of a delivery that had succeeded is one attempt: when it fails, the delivery is failed, not back on its schedule", async () => {
      const rx = await startReceiver({
        respond: (r) => (r.n === 1 ? 200 : { status: 500, body: "down now" }),
      });
      const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: rx.url });
      await startedCall(server.api, agentId, "+15550003434");
      await rx.waitForCount(1);
      const d = await deliveryWithStatus(server, rx.requests[0]!.id, endpoint.id, "succeeded");
      assert.equal((await server.api.post(`/v1/deliveries/${d.id}/retry`)).status, 202);
      const failed = await deliveryWithStatus(server, d.event_id, endpoint.id, "failed");
      assert.deepEqual(
        failed.attempts.map((a: { status_code: number }) => a.status_code),
        [200, 500],
      );
      assert.equal(rx.requests.length, 2);
      await server.api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: true });
      await rx.close();
    });

    test("retry and recover refuse a disabled or deleted endpoint (409) and queue nothing; the retry's answer lists the attempts", async () => {
      const rx = await startReceiver();
      const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: rx.url });
      await startedCall(server.api, agentId, "+15550002323");
      await rx.waitForCount(1);
      const d = await deliveryWithStatus(server, rx.requests[0]!.id, endpoint.id, "succeeded");
      await server.api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: true });
      const refused = await server.api.post(`/v1/deliveries/${d.id}/retry`);
      assert.equal(refused.status, 409);
      assert.equal(refused.body.error.code, "endpoint_disabled");
      assert.match(refused.body.error.message, /disabled by user/);
      const recover = await server.api.post(`/v1/endpoints/${endpoint.id}/recover`, {
        since: new Date(Date.now() - 3_600_000).toISOString(),
      });
      assert.equal(recover.status, 409);
      assert.equal(recover.body.error.code, "endpoint_disabled");
      const unchanged = (await server.api.get(`/v1/deliveries/${d.id}`)).body;
      assert.equal(unchanged.status, "succeeded");
      assert.equal(unchanged.attempts.length, 1);
      // recover has something to re-queue here: a delivery that failed its whole schedule.
      const down = await startReceiver({ respond: () => 500 });
      const failing = await server.api.post("/v1/endpoints", { url: down.url });
      await startedCall(server.api, agentId, "+15550002424");
      await down.waitForCount(1);
      const lost = await deliveryWithStatus(server, down.requests[0]!.id, failing.body.id, "failed");
      await server.api.patch(`/v1/endpoints/${failing.body.id}`, { disabled: true });
      const refusedRecover = await server.api.post(`/v1/endpoints/${failing.body.id}/recover`, {
        since: new Date(Date.now() - 3_600_000).toISOString(),
      });
      assert.equal(refusedRecover.status, 409);
      assert.equal(refusedRecover.body.error.code, "endpoint_disabled");
      const stillLost = (await server.api.get(`/v1/deliveries/${lost.id}`)).body;
      assert.equal(stillLost.status, "failed");
      assert.equal(stillLost.attempts.length, lost.attempts.length);
      await down.close();

      await server.api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: false });
      const retry = await server.api.post(`/v1/deliveries/${d.id}/retry`);
      assert.equal(retry.status, 202);
      assert.equal(retry.body.status, "pending");
      assert.deepEqual(
        retry.body.attempts.map((a: { number: number; status_code: number }) => [a.number, a.status_code]),
        [[1, 200]],
      );
      await rx.waitForCount(2);
      await deliveryWithStatus(server, rx.requests[0]!.id, endpoint.id, "succeeded");

      assert.equal((await server.api.del(`/v1/endpoints/${endpoint.id}`)).status, 200);
      const gone = await server.api.post(`/v1/deliveries/${d.id}/retry`);
      assert.equal(gone.status, 409);
      assert.equal(gone.body.error.code, "endpoint_deleted");
      await rx.close();
    });
  });
}

describe("failure settings (separate server: short timeout, short schedule)", () => {
  const dir = tempDir();
  let server: ServerProcess;
  before(async () => {
    server = await spawnServer({
      dataDir: dir.path,
      env: { KLEN_DELIVERY_TIMEOUT: "300ms", KLEN_RETRY_SCHEDULE: "50ms,50ms", KLEN_DISABLE_AFTER: "1h" },
    });
  });
  after(async () => {
    await server.kill();
    dir.remove();
  });

  test("an endpoint that never answers ends failed after the whole schedule, each attempt a timeout", async () => {
    const silent = await startReceiver({ respond: () => ({ status: 200, hang: true }) });
    const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: silent.url });
    const callId = await startedCall(server.api, agentId, "+15550003333");
    const eventId = (await server.api.get(`/v1/events?call_id=${callId}`)).body.data[0].id;
    const d = await deliveryWithStatus(server, eventId, endpoint.id, "failed");
    assert.equal(d.attempts.length, 3, "1 immediate attempt + 2 retries");
    assert.ok(
      d.attempts.every(
        (a: { error: string; error_message: string; status_code: null }) =>
          a.error === "timeout" && /no response within/.test(a.error_message) && a.status_code === null,
      ),
    );
    assert.equal(d.next_attempt_at, null);
    assert.equal(silent.requests.length, 3);
    const ep = (await server.api.get(`/v1/endpoints/${endpoint.id}`)).body;
    assert.equal(ep.disabled, false, "one failed delivery does not disable before KLEN_DISABLE_AFTER");
    assert.notEqual(ep.failing_since, null);
    // recover re-queues the failed delivery; now the endpoint answers.
    await silent.close();
    const healthy = await startReceiver();
    await server.api.patch(`/v1/endpoints/${endpoint.id}`, { url: healthy.url });
    const rec = await server.api.post(`/v1/endpoints/${endpoint.id}/recover`, {
      since: new Date(Date.now() - 3_600_000).toISOString(),
    });
    assert.equal(rec.status, 202);
    assert.equal(rec.body.queued, 1);
    await healthy.waitForCount(1);
    assert.equal(healthy.requests[0]!.id, eventId);
    const fixed = await deliveryWithStatus(server, eventId, endpoint.id, "succeeded");
    assert.equal(fixed.attempts.length, 4);
    const epAfter = (await server.api.get(`/v1/endpoints/${endpoint.id}`)).body;
    assert.equal(epAfter.failing_since, null, "a success clears the failure clock");
    await healthy.close();
  });
});

describe("automatic disable after continuous failure", () => {
  const dir = tempDir();
  let server: ServerProcess;
  before(async () => {
    server = await spawnServer({
      dataDir: dir.path,
      env: { KLEN_RETRY_SCHEDULE: "50ms,50ms,50ms,50ms", KLEN_DISABLE_AFTER: "100ms" },
    });
  });
  after(async () => {
    await server.kill();
    dir.remove();
  });

  test("an endpoint failing every attempt for KLEN_DISABLE_AFTER is disabled with the reason", async () => {
    const down = await startReceiver({ respond: () => 503 });
    const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: down.url });
    await startedCall(server.api, agentId, "+15550004444");
    const ep = await waitFor("endpoint auto-disabled", async () => {
      const e = (await server.api.get(`/v1/endpoints/${endpoint.id}`)).body;
      return e.disabled ? e : undefined;
    });
    assert.equal(ep.disabled_reason, "every attempt failed for 100ms");
    await down.close();
  });
});

describe("manual retry beside an attempt in flight", () => {
  const dir = tempDir();
  let server: ServerProcess;
  before(async () => {
    server = await spawnServer({ dataDir: dir.path, env: { KLEN_DELIVERY_TIMEOUT: "60s" } });
  });
  after(async () => {
    await server.kill();
    dir.remove();
  });

  test("is refused with 409 delivery_in_flight, so no second copy is sent beside the running one", async () => {
    const { createServer } = await import("node:http");
    const held: Array<import("node:http").ServerResponse> = [];
    let received = 0;
    const srv = createServer((req, res) => {
      req.resume();
      req.on("end", () => {
        received++;
        held.push(res);
      });
    });
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(srv.address() as import("node:net").AddressInfo).port}`;
    try {
      const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: url });
      await startedCall(server.api, agentId, "+15550005555");
      await waitFor("the attempt to arrive", () => received === 1);
      const d = (await server.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}`)).body.data[0];
      // It says so: being sent since the worker took it, sent again when the lease ends if lost.
      assert.equal(d.status, "pending");
      assert.equal(d.attempts.length, 0);
      assert.ok(d.sending_since && Date.parse(d.sending_since) <= Date.now(), JSON.stringify(d));
      assert.ok(Date.parse(d.next_attempt_at) > Date.parse(d.sending_since) + 60_000, "the lease's end");
      const retry = await server.api.post(`/v1/deliveries/${d.id}/retry`);
      assert.equal(retry.status, 409);
      assert.equal(retry.body.error.code, "delivery_in_flight");
      for (const res of held.splice(0)) res.writeHead(200).end();
      const done = await waitFor("succeeded", async () => {
        const x = (await server.api.get(`/v1/deliveries/${d.id}`)).body;
        return x.status === "succeeded" ? x : undefined;
      });
      assert.equal(done.attempts.length, 1);
      assert.equal(done.sending_since, null);
      // Once finished, a retry goes through: one more attempt, numbered 2.
      assert.equal((await server.api.post(`/v1/deliveries/${d.id}/retry`)).status, 202);
      await waitFor("second attempt", () => received === 2);
      for (const res of held.splice(0)) res.writeHead(200).end();
      const again = await waitFor("second attempt logged", async () => {
        const x = (await server.api.get(`/v1/deliveries/${d.id}`)).body;
        return x.attempts.length === 2 && x.status === "succeeded" ? x : undefined;
      });
      assert.deepEqual(
        again.attempts.map((a: { number: number }) => a.number),
        [1, 2],
      );
    } finally {
      for (const res of held.splice(0)) res.writeHead(200).end();
      await new Promise<void>((r) => srv.close(() => r()));
    }
  });
});
