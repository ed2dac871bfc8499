/**
 * One contract every adapter passes, each against a real server of its framework on loopback:
 * a valid Klen event with non-ASCII text goes through, re-serialised JSON and other failures get
 * 400 with only the error code, duplicates run the handler once, a failing handler gets 500 and
 * can be retried, an oversized body gets 413.
 */
import * as assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  type CallEvent,
  createIdempotency,
  type HandlerOptions,
  type WebhookDelivery,
  WebhookVerificationError,
} from "../src/index.js";
import { seedBody, seedEvent, signedHeaders, webhook } from "./helpers.js";

/** What the handler saw. */
export interface Recorder {
  readonly calls: { id: string; event: CallEvent }[];
}

/** Starts a server running `opts` on the route at `url`; `close` stops it. */
export type StartServer = (
  opts: HandlerOptions<unknown>,
) => Promise<{ url: string; close: () => Promise<void> }>;

export const MAX_BODY = 64 * 1024;

export function adapterContract(name: string, start: StartServer): void {
  describe(`${name} adapter on a real server`, () => {
    const recorder: Recorder = { calls: [] };
    const failOnce = new Set(["evt_fail_once"]);
    const errors: unknown[] = [];
    /** What onRejected was told: each refused request's code. */
    const rejected: string[] = [];
    let server: { url: string; close: () => Promise<void> };

    before(async () => {
      server = await start({
        idempotency: createIdempotency(),
        maxBodyBytes: MAX_BODY,
        onError: (err) => errors.push(err),
        onRejected: (err) =>
          void rejected.push(
            err instanceof WebhookVerificationError ? err.code : `${err.name} ${err.maxBytes}`,
          ),
        onEvent: async (event: CallEvent, delivery: WebhookDelivery) => {
          if (failOnce.delete(delivery.id)) throw new Error("database unavailable");
          recorder.calls.push({ id: delivery.id, event });
        },
      });
    });
    after(() => server.close());

    const post = (body: string | Uint8Array<ArrayBuffer>, headers: Record<string, string>) =>
      fetch(server.url, { method: "POST", body, headers });
    const callsFor = (id: string) => recorder.calls.filter((c) => c.id === id);

    test("a valid call event with non-ASCII text is accepted and typed", async () => {
      const body = seedBody();
      const res = await post(body, signedHeaders(body, "evt_valid"));
      assert.equal(res.status, 200, await res.clone().text());
      assert.deepEqual(await res.json(), { received: true });
      const [call] = callsFor("evt_valid");
      assert.deepEqual(call?.event, seedEvent());
      assert.equal(call?.event.call.agent_name, "Customer Support — Zoë");
    });

    test("the same body sent as raw UTF-8 bytes is accepted", async () => {
      const bytes = new TextEncoder().encode(seedBody());
      const res = await post(bytes, signedHeaders(bytes, "evt_bytes"));
      assert.equal(res.status, 200);
      assert.equal(callsFor("evt_bytes").length, 1);
    });

    test("re-serialised JSON fails with 400 and only the code", async () => {
      const body = seedBody();
      const headers = signedHeaders(body, "evt_reserialised");
      const res = await post(JSON.stringify(JSON.parse(body)), headers);
      assert.equal(res.status, 400);
      assert.deepEqual(await res.json(), { error: { code: "no_matching_signature" } });
      assert.equal(callsFor("evt_reserialised").length, 0);
      assert.equal(rejected.at(-1), "no_matching_signature", "the receiver is told why");
    });

    test("missing headers, stale timestamps and non-events are 400 with their code", async () => {
      const body = seedBody();
      const { "webhook-signature": _, ...unsigned } = signedHeaders(body, "evt_unsigned");
      let res = await post(body, unsigned);
      assert.equal(res.status, 400);
      assert.deepEqual(await res.json(), { error: { code: "missing_header" } });

      const stale = Math.floor(Date.now() / 1000) - 3600;
      res = await post(body, {
        "content-type": "application/json",
        "webhook-id": "evt_stale",
        "webhook-timestamp": String(stale),
        "webhook-signature": webhook.sign("evt_stale", stale, body),
      });
      assert.equal(res.status, 400);
      assert.deepEqual(await res.json(), { error: { code: "timestamp_too_old" } });

      const notEvent = '{"hello":"world"}';
      res = await post(notEvent, signedHeaders(notEvent, "evt_not_event"));
      assert.equal(res.status, 400);
      assert.deepEqual(await res.json(), { error: { code: "invalid_body" } });
    });

    test("a duplicate delivery runs the handler once", async () => {
      const body = seedBody();
      const first = await post(body, signedHeaders(body, "evt_dup"));
      const second = await post(body, signedHeaders(body, "evt_dup"));
      assert.equal(first.status, 200);
      assert.equal(second.status, 200);
      assert.deepEqual(await second.json(), { received: true, duplicate: true });
      assert.equal(callsFor("evt_dup").length, 1);
    });

    test("a failing handler gets 500 without details, and the retry runs it", async () => {
      const body = seedBody();
      const failed = await post(body, signedHeaders(body, "evt_fail_once"));
      assert.equal(failed.status, 500);
      assert.deepEqual(await failed.json(), { error: { code: "handler_failed" } });
      assert.ok(errors.some((e) => e instanceof Error && e.message === "database unavailable"));
      const retried = await post(body, signedHeaders(body, "evt_fail_once"));
      assert.equal(retried.status, 200);
      assert.equal(callsFor("evt_fail_once").length, 1);
    });

    test("unknownEvents: a signed event of a type (or with a value) this SDK does not know is 400 by default, 200 when acknowledged", async () => {
      const newer = JSON.stringify({ ...JSON.parse(seedBody()), event_type: "call.transferred" });
      const res = await post(newer, signedHeaders(newer, "evt_newer_default"));
      assert.equal(res.status, 400);
      assert.deepEqual(await res.json(), { error: { code: "invalid_body" } });
      const event = JSON.parse(seedBody());
      const newValue = JSON.stringify({ ...event, call: { ...event.call, type: "web" } });
      const refused = await post(newValue, signedHeaders(newValue, "evt_new_value_default"));
      assert.equal(refused.status, 400, "a value this SDK does not know is refused by default");

      const seen: unknown[] = [];
      const acking = await start({
        unknownEvents: "acknowledge",
        onError: (err) => errors.push(err),
        onEvent: (event) => {
          seen.push(event);
        },
      });
      try {
        const to = (body: string, headers: Record<string, string>) =>
          fetch(acking.url, { method: "POST", body, headers });
        const acked = await to(newer, signedHeaders(newer, "evt_newer"));
        assert.equal(acked.status, 200);
        assert.deepEqual(await acked.json(), { received: true, ignored: "unknown_event_type" });
        assert.deepEqual(seen, [], "the handler does not run for it");
        // Everything else is refused as before: a forged one, a known type with a bad field, not JSON.
        const forged = await to(newer, {
          ...signedHeaders(newer, "evt_forged"),
          "webhook-signature": "v1,AAAA",
        });
        assert.equal(forged.status, 400);
        assert.deepEqual(await forged.json(), { error: { code: "no_matching_signature" } });
        const broken = JSON.stringify({ ...JSON.parse(seedBody()), call: "nope" });
        const bad = await to(broken, signedHeaders(broken, "evt_broken"));
        assert.equal(bad.status, 400);
        for (const body of ["not json", '{"event_type":42}', '{"event_type":""}']) {
          const r = await to(body, signedHeaders(body, "evt_odd"));
          assert.equal(r.status, 400, body);
        }
        const body = seedBody();
        const known = await to(body, signedHeaders(body, "evt_known"));
        assert.equal(known.status, 200);
        assert.equal(seen.length, 1);

        // A known type with a value this SDK does not know in a field of fixed values (a newer
        // server's call type): acknowledged, not handled; with a field missing besides, refused.
        const event = JSON.parse(seedBody());
        const newValue = JSON.stringify({ ...event, call: { ...event.call, type: "web" } });
        const ackedValue = await to(newValue, signedHeaders(newValue, "evt_new_value"));
        assert.equal(ackedValue.status, 200);
        assert.deepEqual(await ackedValue.json(), { received: true, ignored: "unknown_value" });
        assert.equal(seen.length, 1, "the handler does not run for it");
        const { agent_id: _, ...noAgent } = event.call;
        const worse = JSON.stringify({ ...event, call: { ...noAgent, type: "web" } });
        assert.equal((await to(worse, signedHeaders(worse, "evt_worse"))).status, 400);
      } finally {
        await acking.close();
      }
    });

    test("an oversized body is refused with 413", async () => {
      const body = JSON.stringify({ pad: "x".repeat(MAX_BODY) });
      const res = await post(body, signedHeaders(body, "evt_big"));
      assert.equal(res.status, 413);
      assert.deepEqual(await res.json(), { error: { code: "payload_too_large" } });
      assert.equal(callsFor("evt_big").length, 0);
      assert.equal(rejected.at(-1), `BodyTooLargeError ${MAX_BODY}`, "the receiver is told why");
    });
  });
}
