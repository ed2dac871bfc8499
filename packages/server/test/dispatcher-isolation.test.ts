import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { Dispatcher } from "../src/delivery/dispatcher.js";
import { apiOnlyServer } from "./helpers/api-only.js";
import { startReceiver } from "./helpers/receiver.js";
import { waitFor } from "./helpers/wait.js";

/**
 * Adds endpoints at `urls` beside the one `r` has, starts `calls` calls (a `call.started` each for
 * them all), then adds the endpoint at `lastUrl` and ends the calls: every `call.started` of the
 * first endpoints comes before the last endpoint's first delivery in the due order.
 */
async function queueBehind(
  r: Awaited<ReturnType<typeof apiOnlyServer>>,
  urls: string[],
  calls: number,
  lastUrl: string,
) {
  for (const url of urls) await r.client.post("/v1/endpoints", { url });
  const ids: number[] = [];
  for (let i = 0; i < calls; i++) {
    const id = await r.newCall(`+1555060${String(ids.length).padStart(4, "0")}`);
    await r.client.post(`/v1/calls/${id}/start`, {});
    ids.push(id);
  }
  await r.client.post("/v1/endpoints", { url: lastUrl });
  for (const id of ids) await r.client.post(`/v1/calls/${id}/end`, {});
}

/** Starts `dispatcher` and waits for `n` deliveries at `healthy`, all of them `call.ended`. */
async function endsArrive(
  dispatcher: Dispatcher,
  healthy: Awaited<ReturnType<typeof startReceiver>>,
  n: number,
) {
  dispatcher.start();
  await healthy.waitForCount(n);
  assert.deepEqual(
    healthy.requests.map((q) => q.json.event_type),
    Array(n).fill("call.ended"),
  );
}

/** Ends the held answers, then stops the dispatcher, the API server and both receivers. */
async function tearDown(
  held: ServerResponse[],
  dispatcher: Dispatcher | undefined,
  r: Awaited<ReturnType<typeof apiOnlyServer>>,
  healthy: Awaited<ReturnType<typeof startReceiver>>,
  dead: Server,
) {
  for (const res of held) res.destroy();
  await dispatcher?.stop(100);
  await r.done();
  await healthy.close();
  await new Promise<void>((res) => dead.close(() => res()));
}

/**
 * A loopback server that accepts requests and never answers; counts the requests open at once
 * (`maxOpen`) and those the sender gave up on (`closed`). `held`: their responses, for tearDown.
 * `answered` may answer a request itself (true), which then neither hangs nor counts.
 */
async function hangingServer(answered: (req: IncomingMessage, res: ServerResponse) => boolean = () => false) {
  const s = { open: 0, maxOpen: 0, closed: 0, held: [] as ServerResponse[] };
  const server = createServer((req, res) => {
    req.resume();
    // Answered by the caller (not held).
    if (answered(req, res)) return;
    s.open++;
    s.maxOpen = Math.max(s.maxOpen, s.open);
    s.held.push(res);
    res.on("close", () => {
      s.open--;
      s.closed++;
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { stats: s, server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

test("a dead endpoint never holds more than its share of the slots, even when one claim batch is all its own", async () => {
  // The dead endpoint: accepts requests and never answers (the delivery timeout is long).
  const { stats, server: dead, origin } = await hangingServer();
  const healthy = await startReceiver();
  // An API-only process queues the work first, so the dispatcher's first batch is all the dead
  // endpoint's: 4 claimed, cap 2 per endpoint.
  const r = await apiOnlyServer(`${origin}/`);
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
    assert.ok(stats.maxOpen <= 2, `the dead endpoint held ${stats.maxOpen} slots at once (cap 2)`);
    assert.ok(stats.maxOpen >= 1);
  } finally {
    await tearDown(stats.held, dispatcher, r, healthy, dead);
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
    // The healthy endpoint's deliveries come after all 30 slow ones in the due order.
    await queueBehind(r, [`${origin}/s1`, `${origin}/s2`], 10, healthy.url);

    // 8 slots and up to 8 per endpoint: without a fair share for slow endpoints their 30 oldest
    // deliveries would all go before the healthy endpoint's first.
    dispatcher = new Dispatcher(r.api.ctx, {
      concurrency: 8,
      perEndpoint: 8,
      perFailingEndpoint: 2,
      minSlowShare: 2,
      slowAttemptMs: 200,
      batchSize: 8,
      pollMs: 50,
    });
    await endsArrive(dispatcher, healthy, 10);
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
  const { stats, server: dead, origin } = await hangingServer();
  const held = stats.held;
  const healthy = await startReceiver();
  const r = await apiOnlyServer(`${origin}/d0`);
  let dispatcher: Dispatcher | undefined;
  try {
    // The healthy endpoint's deliveries come after the dead endpoints' 20 in the due order.
    const more = [1, 2, 3, 4].map((i) => `${origin}/d${i}`);
    await queueBehind(r, more, 4, healthy.url);

    // 16 slots and up to 16 per endpoint: new endpoints that were each given a healthy one's
    // slots would fill all 16 with attempts that hang for a minute.
    dispatcher = new Dispatcher(r.api.ctx, {
      concurrency: 16,
      perEndpoint: 16,
      perNewEndpoint: 2,
      batchSize: 16,
      pollMs: 50,
    });
    await endsArrive(dispatcher, healthy, 4);
    assert.ok(held.length <= 10, `${held.length} attempts hang at the dead endpoints (5 × 2 at most)`);
  } finally {
    await tearDown(held, dispatcher, r, healthy, dead);
  }
});

test("endpoints that hang are retried on more slots while the others leave them idle, within their share together", async () => {
  // Three endpoints on one origin that accept requests and never answer; the delivery timeout is
  // 400 ms, so their attempts time out.
  const { stats, server: dead, origin } = await hangingServer();
  const healthy = await startReceiver();
  const r = await apiOnlyServer(`${origin}/h0`, {}, { KLEN_DELIVERY_TIMEOUT: "400ms" });
  let dispatcher: Dispatcher | undefined;
  let sampler: NodeJS.Timeout | undefined;
  try {
    for (const path of ["/h1", "/h2"]) await r.client.post("/v1/endpoints", { url: `${origin}${path}` });
    // 10 calls: 10 deliveries per endpoint due at once, each the first of its call.
    for (let i = 0; i < 10; i++) {
      const id = await r.newCall(`+155503100${String(i).padStart(2, "0")}`);
      await r.client.post(`/v1/calls/${id}/start`, {});
    }
    // New, each gets 2 slots (6 in all). Once their attempts time out they hang: up to 8 each,
    // but 12 together at the most, plus the 2 an endpoint always has when the 12 are taken.
    dispatcher = new Dispatcher(r.api.ctx, {
      concurrency: 64,
      perEndpoint: 16,
      perNewEndpoint: 2,
      perFailingEndpoint: 2,
      perHangingEndpoint: 8,
      failingShare: 12,
      batchSize: 32,
      pollMs: 50,
    });
    // Counted where the attempts are made: the receiver sees a timed-out request close only some
    // time after the dispatcher gave up on it, so its count of open requests runs ahead.
    let most = 0;
    const d = dispatcher;
    sampler = setInterval(() => {
      most = Math.max(most, d.inFlight);
    }, 2);
    dispatcher.start();
    await waitFor("more than their 6 slots at once", () => most >= 10);
    await waitFor("the first attempts timed out", () => stats.closed >= 6);
    // Every delivery is attempted again and again (30 deliveries, 3 rounds), never beyond the share.
    await waitFor("three rounds of attempts", () => stats.closed >= 90);
    assert.ok(most <= 14, `${most} attempts at once at the hanging endpoints (12 + 2 at most)`);
    assert.equal(dispatcher.failingEndpoints, 3);
  } finally {
    clearInterval(sampler);
    await tearDown(stats.held, dispatcher, r, healthy, dead);
  }
});

test("an outcome the database refuses holds up only itself: the others of its batch are recorded", async () => {
  // Two endpoints on one receiver: /poison's answer is refused by a trigger when its attempt is
  // logged; /ok answers a little later, so its outcome joins the refused one's retried batch.
  const rx = await startReceiver({
    respond: (q) => (q.path === "/poison" ? { status: 200, body: "poison" } : { status: 200, delayMs: 300 }),
  });
  const r = await apiOnlyServer(`${rx.url}/poison`);
  let dispatcher: Dispatcher | undefined;
  try {
    const ok = (await r.client.post("/v1/endpoints", { url: `${rx.url}/ok` })).body.id as string;
    await r.api.ctx.store.execScript(
      "CREATE TRIGGER poison BEFORE INSERT ON attempts WHEN NEW.response_body = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned attempt'); END;",
    );
    const call = await r.newCall("+15550700000");
    await r.client.post(`/v1/calls/${call}/start`, {});
    dispatcher = new Dispatcher(r.api.ctx, { pollMs: 50 });
    dispatcher.start();
    // The lease is 90 s: recorded well before it runs out means recorded apart from the refused one.
    const recorded = await waitFor("the /ok delivery recorded", async () => {
      const page = (await r.client.get(`/v1/deliveries?endpoint_id=${ok}`)).body;
      return page.data[0]?.status === "succeeded" ? page.data[0] : undefined;
    });
    assert.equal(recorded.attempts.length, 1);
    const all = (await r.client.get(`/v1/deliveries?call_id=${call}`)).body.data;
    assert.deepEqual(all.map((d: { status: string }) => d.status).sort(), ["pending", "succeeded"]);
  } finally {
    await r.api.ctx.store.execScript("DROP TRIGGER IF EXISTS poison");
    await dispatcher?.stop(100);
    await r.done();
    await rx.close();
  }
});

test("many failing endpoints together hold no more than their share: a healthy endpoint's events still go out", async () => {
  // Ten endpoints on one origin whose first request each is answered 500 (so they are failing)
  // and whose later requests hang (delivery timeout 60 s).
  const failedOnce = new Set<string>();
  const {
    stats,
    server: dead,
    origin,
  } = await hangingServer((req, res) => {
    if (failedOnce.has(req.url!)) return false;
    failedOnce.add(req.url!);
    res.writeHead(500).end();
    return true;
  });
  const healthy = await startReceiver();
  const r = await apiOnlyServer(`${origin}/f0`);
  let dispatcher: Dispatcher | undefined;
  try {
    const more = Array.from({ length: 9 }, (_, i) => `${origin}/f${i + 1}`);
    await queueBehind(r, more, 4, healthy.url);
    // 16 slots, 2 per failing endpoint: ten of them had 20, every slot. Together they may have 4.
    // One each while new, so that nothing hangs before an endpoint is failing.
    dispatcher = new Dispatcher(r.api.ctx, {
      concurrency: 16,
      perEndpoint: 16,
      perNewEndpoint: 1,
      perFailingEndpoint: 2,
      failingShare: 4,
      batchSize: 16,
      pollMs: 50,
    });
    dispatcher.start();
    await waitFor("every failing endpoint failed once", () => failedOnce.size === 10);
    await healthy.waitForCount(4);
    assert.deepEqual(
      healthy.requests.map((q) => q.json.event_type),
      Array(4).fill("call.ended"),
    );
    assert.ok(
      stats.maxOpen <= 4 + 2,
      `${stats.maxOpen} attempts hung at once (the share, 4, and one claim's overlap)`,
    );
  } finally {
    await tearDown(stats.held, dispatcher, r, healthy, dead);
  }
});

test("many new endpoints that never answer together hold no more than their share: a known healthy endpoint's events still go out", async () => {
  const { stats, server: dead, origin } = await hangingServer();
  const healthy = await startReceiver();
  const r = await apiOnlyServer(healthy.url);
  let dispatcher: Dispatcher | undefined;
  try {
    // 16 slots, 2 per new endpoint: twenty that never answer had 40, every slot, for a whole
    // delivery timeout (60 s). Together they may have 4.
    dispatcher = new Dispatcher(r.api.ctx, {
      concurrency: 16,
      perEndpoint: 16,
      perNewEndpoint: 2,
      newShare: 4,
      batchSize: 16,
      pollMs: 50,
    });
    dispatcher.start();
    // The healthy endpoint answers once: it is known to this process.
    const first = await r.newCall("+15550700000");
    await r.client.post(`/v1/calls/${first}/start`, {});
    await healthy.waitForCount(1);
    // Then twenty new endpoints, and calls whose events go to all of them.
    for (let i = 0; i < 20; i++) await r.client.post("/v1/endpoints", { url: `${origin}/n${i}` });
    for (let i = 1; i <= 4; i++) {
      const id = await r.newCall(`+1555070000${i}`);
      await r.client.post(`/v1/calls/${id}/start`, {});
    }
    await healthy.waitForCount(5);
    assert.deepEqual(
      healthy.requests.map((q) => q.json.event_type),
      Array(5).fill("call.started"),
    );
    assert.ok(stats.maxOpen <= 4, `${stats.maxOpen} attempts hung at once (the share: 4)`);
    assert.ok(stats.maxOpen >= 1);
  } finally {
    await tearDown(stats.held, dispatcher, r, healthy, dead);
  }
});
