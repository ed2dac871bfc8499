import assert from "node:assert/strict";
import { createServer, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { Dispatcher } from "../src/delivery/dispatcher.js";
import { apiOnlyServer } from "./helpers/api-only.js";
import { startReceiver } from "./helpers/receiver.js";
import { waitFor } from "./helpers/wait.js";

test("a dead endpoint never holds more than its share of the slots, even when one claim batch is all its own", async () => {
  // The dead endpoint: accepts requests and never answers (the delivery timeout is long).
  let open = 0;
  let maxOpen = 0;
  const held: ServerResponse[] = [];
  const dead = createServer((req, res) => {
    req.resume();
    open++;
    maxOpen = Math.max(maxOpen, open);
    held.push(res);
    res.on("close", () => open--);
  });
  await new Promise<void>((r) => dead.listen(0, "127.0.0.1", r));
  const healthy = await startReceiver();
  // An API-only process queues the work first, so the dispatcher's first batch is all the dead
  // endpoint's: 4 claimed, cap 2 per endpoint.
  const r = await apiOnlyServer(`http://127.0.0.1:${(dead.address() as AddressInfo).port}/`);
  let dispatcher: Dispatcher | undefined;
  try {
    const calls: number[] = [];
    for (let i = 0; i < 6; i++) {
      const id = await r.newCall(`+1555030000${i}`);
      await r.client.post(`/v1/calls/${id}/start`, {});
      calls.push(id);
    }
    await r.client.post("/v1/endpoints", { url: healthy.url });
    for (const id of calls) await r.client.post(`/v1/calls/${id}/end`, {});

    dispatcher = new Dispatcher(r.api.ctx, { concurrency: 4, perEndpoint: 2, batchSize: 4, pollMs: 50 });
    dispatcher.start();
    await healthy.waitForCount(6);
    assert.deepEqual(
      healthy.requests.map((r) => r.json.event_type),
      Array(6).fill("call.ended"),
    );
    assert.ok(maxOpen <= 2, `the dead endpoint held ${maxOpen} slots at once (cap 2)`);
    assert.ok(maxOpen >= 1);
  } finally {
    for (const res of held) res.destroy();
    await dispatcher?.stop(100);
    await r.done();
    await healthy.close();
    await new Promise<void>((res) => dead.close(() => res()));
  }
});

test("endpoints that are slow but succeed cannot between them take every slot: a healthy endpoint's events go out before their backlog", async () => {
  // Three slow endpoints on one origin: every request is answered 200 after 300 ms.
  const slowStarted = new Set<string>();
  const slow = createServer((req, res) => {
    req.resume();
    if (req.headers["webhook-id"]) slowStarted.add(`${req.url} ${req.headers["webhook-id"]}`);
    setTimeout(() => res.end("ok"), 300);
  });
  await new Promise<void>((r) => slow.listen(0, "127.0.0.1", r));
  const origin = `http://127.0.0.1:${(slow.address() as AddressInfo).port}`;
  // How many slow deliveries had been sent when the healthy endpoint got its first one.
  let slowBeforeHealthy: number | undefined;
  const healthy = await startReceiver({
    respond: () => {
      slowBeforeHealthy ??= slowStarted.size;
      return 200;
    },
  });
  const r = await apiOnlyServer(`${origin}/s0`);
  let dispatcher: Dispatcher | undefined;
  try {
    await r.client.post("/v1/endpoints", { url: `${origin}/s1` });
    await r.client.post("/v1/endpoints", { url: `${origin}/s2` });
    const calls: number[] = [];
    for (let i = 0; i < 10; i++) {
      const id = await r.newCall(`+155504000${String(i).padStart(2, "0")}`);
      await r.client.post(`/v1/calls/${id}/start`, {});
      calls.push(id);
    }
    // The healthy endpoint's deliveries come after all 30 slow ones in the due order.
    await r.client.post("/v1/endpoints", { url: healthy.url });
    for (const id of calls) await r.client.post(`/v1/calls/${id}/end`, {});

    // 8 slots and up to 8 per endpoint: without a fair share for slow endpoints their 30 oldest
    // deliveries would all go before the healthy endpoint's first.
    dispatcher = new Dispatcher(r.api.ctx, {
      concurrency: 8,
      perEndpoint: 8,
      perFailingEndpoint: 2,
      slowAttemptMs: 200,
      batchSize: 8,
      pollMs: 50,
    });
    dispatcher.start();
    await healthy.waitForCount(10);
    assert.deepEqual(
      healthy.requests.map((q) => q.json.event_type),
      Array(10).fill("call.ended"),
    );
    assert.ok(
      slowBeforeHealthy !== undefined && slowBeforeHealthy <= 20,
      `${slowBeforeHealthy} of the slow endpoints' 30 started deliveries went before the healthy endpoint's first`,
    );
    // And the slow ones all go out (10 calls × 3 endpoints × started and ended).
    await waitFor("every slow delivery", () => (slowStarted.size === 60 ? true : undefined));
  } finally {
    await dispatcher?.stop(100);
    await r.done();
    await healthy.close();
    await new Promise<void>((res) => slow.close(() => res()));
  }
});

test("new endpoints that never answer cannot take every slot before their first answer: a healthy endpoint's events still go out", async () => {
  // Five endpoints on one origin that accept requests and never answer (delivery timeout 60 s).
  const held: ServerResponse[] = [];
  const dead = createServer((req, res) => {
    req.resume();
    held.push(res);
  });
  await new Promise<void>((r) => dead.listen(0, "127.0.0.1", r));
  const origin = `http://127.0.0.1:${(dead.address() as AddressInfo).port}`;
  const healthy = await startReceiver();
  const r = await apiOnlyServer(`${origin}/d0`);
  let dispatcher: Dispatcher | undefined;
  try {
    for (let i = 1; i < 5; i++) await r.client.post("/v1/endpoints", { url: `${origin}/d${i}` });
    const calls: number[] = [];
    for (let i = 0; i < 4; i++) {
      const id = await r.newCall(`+155505000${i}`);
      await r.client.post(`/v1/calls/${id}/start`, {});
      calls.push(id);
    }
    // The healthy endpoint's deliveries come after the dead endpoints' 20 in the due order.
    await r.client.post("/v1/endpoints", { url: healthy.url });
    for (const id of calls) await r.client.post(`/v1/calls/${id}/end`, {});

    // 16 slots and up to 16 per endpoint: new endpoints that were each given a healthy one's
    // slots would fill all 16 with attempts that hang for a minute.
    dispatcher = new Dispatcher(r.api.ctx, {
      concurrency: 16,
      perEndpoint: 16,
      perNewEndpoint: 2,
      batchSize: 16,
      pollMs: 50,
    });
    dispatcher.start();
    await healthy.waitForCount(4);
    assert.deepEqual(
      healthy.requests.map((q) => q.json.event_type),
      Array(4).fill("call.ended"),
    );
    assert.ok(held.length <= 10, `${held.length} attempts hang at the dead endpoints (5 × 2 at most)`);
  } finally {
    for (const res of held) res.destroy();
    await dispatcher?.stop(100);
    await r.done();
    await healthy.close();
    await new Promise<void>((res) => dead.close(() => res()));
  }
});
