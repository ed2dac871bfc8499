/** Interop both ways with the `standardwebhooks` and `svix` npm packages. */
import * as assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Webhook as StandardWebhook } from "standardwebhooks";
import { Webhook as SvixWebhook } from "svix";
import { Webhook } from "../src/index.js";
import { SECRET, seedBody, seedEvent } from "./helpers.js";

const body = seedBody(); // non-ASCII, pretty-printed: a realistic Klen body
const id = "evt_2Kc0w9SxQ7";
const now = new Date();
const ts = Math.floor(now.getTime() / 1000);

describe("interop", () => {
  const ours = new Webhook(SECRET);

  test("standardwebhooks signs, we verify", () => {
    const signature = new StandardWebhook(SECRET).sign(id, now, body);
    const event = ours.verify(body, {
      "webhook-id": id,
      "webhook-timestamp": String(ts),
      "webhook-signature": signature,
    });
    assert.deepEqual(event, seedEvent());
  });

  test("svix signs, we verify", () => {
    const signature = new SvixWebhook(SECRET).sign(id, now, body);
    ours.verify(Buffer.from(body), {
      "webhook-id": id,
      "webhook-timestamp": String(ts),
      "webhook-signature": signature,
    });
  });

  test("we sign, standardwebhooks verifies", () => {
    const headers = {
      "webhook-id": id,
      "webhook-timestamp": String(ts),
      "webhook-signature": ours.sign(id, ts, body),
    };
    assert.deepEqual(new StandardWebhook(SECRET).verify(body, headers), seedEvent());
  });

  test("we sign, svix verifies (webhook-* and svix-* headers)", () => {
    const signature = ours.sign(id, ts, body);
    const svix = new SvixWebhook(SECRET);
    assert.deepEqual(
      svix.verify(body, {
        "webhook-id": id,
        "webhook-timestamp": String(ts),
        "webhook-signature": signature,
      }),
      seedEvent(),
    );
    assert.deepEqual(
      svix.verify(body, { "svix-id": id, "svix-timestamp": String(ts), "svix-signature": signature }),
      seedEvent(),
    );
  });

  test("rotation header from us verifies with either library holding either secret", () => {
    const old = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const signature = new Webhook([old, SECRET]).sign(id, ts, body);
    const headers = { "webhook-id": id, "webhook-timestamp": String(ts), "webhook-signature": signature };
    for (const secret of [old, SECRET]) {
      new StandardWebhook(secret).verify(body, headers);
      new SvixWebhook(secret).verify(body, headers);
    }
  });

  test("a tampered body fails in all three", () => {
    const signature = ours.sign(id, ts, body);
    const headers = { "webhook-id": id, "webhook-timestamp": String(ts), "webhook-signature": signature };
    const tampered = JSON.stringify(JSON.parse(body));
    assert.throws(() => ours.verify(tampered, headers));
    assert.throws(() => new StandardWebhook(SECRET).verify(tampered, headers));
    assert.throws(() => new SvixWebhook(SECRET).verify(tampered, headers));
  });
});
