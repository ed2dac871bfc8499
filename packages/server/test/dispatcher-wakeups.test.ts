import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { Dispatcher } from "../src/delivery/dispatcher.js";
import { apiOnlyServer } from "./helpers/api-only.js";
import { waitFor } from "./helpers/wait.js";

// After a claim that found less than it asked for, the dispatcher does not claim again on every
// settled attempt (that claim would find nothing, stepping over every due row of the endpoints at
// their cap); it claims when an endpoint it left out is back under its threshold, or when a
// completion releases a parked delivery. These tests poll once an hour, so a missed claim would
// strand the work and time out.

/**
 * A receiver that holds every request until told to answer, recording what arrived; the first
 * `failFirst` requests are answered 500 at once.
 */
async function holdingReceiver(failFirst = 0) {
  const held: ServerResponse[] = [];
  const arrived: string[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      arrived.push(JSON.parse(Buffer.concat(chunks).toString("utf8")).event_type);
      if (arrived.length <= failFirst) res.writeHead(500).end();
      else held.push(res);
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  let answered = 0;
  const answerAll = () => {
    answered += held.length;
    for (const res of held.splice(0)) res.end("ok");
  };
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`,
    arrived,
    held,
    answerAll,
    /** Answers requests as they arrive until `n` have been answered in all. */
    async answerUntil(n: number) {
      while (answered < n) {
        await waitFor(`request ${answered + 1} of ${n}`, () => held.length > 0);
        answerAll();
      }
    },
    async close() {
      for (const res of held.splice(0)) res.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** Waits until every delivery in the server's database has succeeded. */
async function everyDeliverySucceeded(r: Awaited<ReturnType<typeof apiOnlyServer>>, timeoutMs?: number) {
  await waitFor(
    "every delivery succeeded",
    async () =>
      (
        await r.api.ctx.store.db
          .selectFrom("deliveries")
          .select("id")
          .where("status", "!=", "succeeded")
          .execute()
      ).length === 0,
    timeoutMs,
  );
}

test("an endpoint at its cap gets its remaining deliveries as its slots free up, with no poll", async () => {
  const receiver = await holdingReceiver();
  const r = await apiOnlyServer(receiver.url);
  let dispatcher: Dispatcher | undefined;
  try {
    for (let i = 0; i < 6; i++) await r.client.post(`/v1/calls/${await r.newCall()}/start`, {});
    // Cap 2 per endpoint: the first claim takes what fits and hands the rest back.
    dispatcher = new Dispatcher(r.api.ctx, {
      concurrency: 4,
      perEndpoint: 2,
      batchSize: 4,
      pollMs: 3_600_000,
    });
    dispatcher.start();
    await receiver.answerUntil(6);
    assert.deepEqual(receiver.arrived, Array(6).fill("call.started"));
    await everyDeliverySucceeded(r);
  } finally {
    await dispatcher?.stop(100);
    await receiver.close();
    await r.done();
  }
});

test("a failed attempt's retry is sent when it comes due, not at the next poll", async () => {
  // Every first attempt fails; with a poll once an hour only the dispatcher's own timer for the
  // retries it scheduled (1 s later) can send them before the test gives up.
  const receiver = await holdingReceiver(3);
  const r = await apiOnlyServer(receiver.url, {}, { KLEN_RETRY_SCHEDULE: "1s" });
  let dispatcher: Dispatcher | undefined;
  try {
    for (let i = 0; i < 3; i++) await r.client.post(`/v1/calls/${await r.newCall()}/start`, {});
    dispatcher = new Dispatcher(r.api.ctx, { pollMs: 3_600_000 });
    dispatcher.start();
    await waitFor("three failed first attempts", () => receiver.arrived.length === 3);
    await receiver.answerUntil(3);
    await everyDeliverySucceeded(r, 20_000);
    const attempts = await r.api.ctx.store.db.selectFrom("attempts").select("status_code").execute();
    assert.deepEqual(attempts.map((a) => a.status_code).sort(), [200, 200, 200, 500, 500, 500]);
  } finally {
    await dispatcher?.stop(100);
    await receiver.close();
    await r.done();
  }
});

test("one endpoint's backlog is claimed once per delivery: no claim takes more than the endpoint's free slots", async () => {
  const receiver = await holdingReceiver();
  const r = await apiOnlyServer(receiver.url);
  let dispatcher: Dispatcher | undefined;
  try {
    for (let i = 0; i < 12; i++) await r.client.post(`/v1/calls/${await r.newCall()}/start`, {});
    // Eight slots in all, four per endpoint: a claim of eight would take four that cannot start.
    dispatcher = new Dispatcher(r.api.ctx, {
      concurrency: 8,
      perEndpoint: 4,
      batchSize: 8,
      pollMs: 3_600_000,
    });
    dispatcher.start();
    await receiver.answerUntil(12);
    await everyDeliverySucceeded(r);
    // Every claim bumps the delivery's claim token: a delivery claimed and handed back shows 2.
    const tokens = await r.api.ctx.store.db.selectFrom("deliveries").select("claim_token").execute();
    assert.deepEqual(
      tokens.map((t) => Number(t.claim_token)),
      Array(12).fill(1),
    );
  } finally {
    await dispatcher?.stop(100);
    await receiver.close();
    await r.done();
  }
});

test("an endpoint's retry is not held up behind another endpoint's backlog whose completions keep the dispatcher awake", async () => {
  // Unlike the others here, this test polls (every 300 ms): the poll interval is what it is about.
  // A: holds every request; the test answers one every 40 ms, so A stays at its cap and its
  // completions wake the dispatcher far more often than the poll interval.
  const a = await holdingReceiver();
  // E: the first request fails, every later one succeeds at once.
  let eSeen = 0;
  let aAnsweredWhenRetried = -1;
  let aAnswered = 0;
  const e = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      eSeen++;
      if (eSeen === 1) return void res.writeHead(500).end();
      if (aAnsweredWhenRetried < 0) aAnsweredWhenRetried = aAnswered;
      res.writeHead(200).end();
    });
  });
  await new Promise<void>((r) => e.listen(0, "127.0.0.1", r));
  const r = await apiOnlyServer(a.url, { event_types: ["call.started"] });
  let dispatcher: Dispatcher | undefined;
  let pacer: NodeJS.Timeout | undefined;
  try {
    // A's backlog: 60 started events. E takes only the one ended event, which fails once and is
    // due again 200 ms later (the helper's retry schedule).
    const calls: number[] = [];
    for (let i = 0; i < 60; i++) {
      const id = await r.newCall();
      await r.client.post(`/v1/calls/${id}/start`, {});
      calls.push(id);
    }
    await r.client.post("/v1/endpoints", {
      url: `http://127.0.0.1:${(e.address() as AddressInfo).port}/`,
      event_types: ["call.ended"],
    });
    await r.client.post(`/v1/calls/${calls[0]}/end`, {});
    dispatcher = new Dispatcher(r.api.ctx, { concurrency: 8, perEndpoint: 4, batchSize: 8, pollMs: 300 });
    dispatcher.start();
    pacer = setInterval(() => {
      const res = a.held.shift();
      if (res) {
        aAnswered++;
        res.end("ok");
      }
    }, 40);
    await waitFor("E's retry", () => aAnsweredWhenRetried >= 0, 20_000);
    assert.ok(
      aAnsweredWhenRetried < 50,
      `E's retry waited until A had been answered ${aAnsweredWhenRetried} times of 60`,
    );
  } finally {
    if (pacer) clearInterval(pacer);
    // A's held requests cut first: the dispatcher's stop would wait for them (a grace shorter than
    // KLEN_DELIVERY_TIMEOUT, 60 s here, lets the attempts in flight run to their own timeout).
    await a.close();
    await dispatcher?.stop(100);
    e.closeAllConnections();
    await new Promise<void>((res) => e.close(() => res()));
    await r.done();
  }
});

test("a completion that releases a parked delivery makes the dispatcher claim it, with no poll", async () => {
  const receiver = await holdingReceiver();
  const r = await apiOnlyServer(receiver.url);
  let dispatcher: Dispatcher | undefined;
  try {
    const id = await r.newCall();
    await r.client.post(`/v1/calls/${id}/start`, {});
    await r.client.post(`/v1/calls/${id}/end`, {});
    dispatcher = new Dispatcher(r.api.ctx, { pollMs: 3_600_000 });
    dispatcher.start();
    // The first claim finds only the started event (the ended one waits behind it) and is short.
    await waitFor("the first event", () => receiver.held.length === 1);
    assert.deepEqual(receiver.arrived, ["call.started"]);
    receiver.answerAll();
    await waitFor("the released second event", () => receiver.held.length === 1);
    assert.deepEqual(receiver.arrived, ["call.started", "call.ended"]);
    receiver.answerAll();
  } finally {
    await dispatcher?.stop(100);
    await receiver.close();
    await r.done();
  }
});

test("a failing endpoint holds few slots until it succeeds again; none of its deliveries is dropped", async () => {
  // Counts the requests open at the endpoint; answers 500 until told to recover.
  let open = 0;
  let maxOpen = 0;
  let healthy = false;
  const server = createServer((req, res) => {
    open++;
    maxOpen = Math.max(maxOpen, open);
    res.on("close", () => open--);
    req.resume();
    req.on("end", () => setTimeout(() => res.writeHead(healthy ? 200 : 500).end(), 20));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const r = await apiOnlyServer(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
  let dispatcher: Dispatcher | undefined;
  try {
    for (let i = 0; i < 24; i++) await r.client.post(`/v1/calls/${await r.newCall()}/start`, {});
    const attempts = async () =>
      Number(
        (
          await r.api.ctx.store.db
            .selectFrom("attempts")
            .select((eb) => eb.fn.countAll().as("n"))
            .executeTakeFirstOrThrow()
        ).n,
      );
    dispatcher = new Dispatcher(r.api.ctx, { perEndpoint: 8, perFailingEndpoint: 2, pollMs: 50 });
    dispatcher.start();
    // The first wave runs at the full cap; once it has failed, the endpoint holds 2 at most.
    await waitFor("the first wave failed", async () => (await attempts()) >= 8);
    await waitFor("the first wave settled", () => open <= 2);
    maxOpen = open;
    const seen = await attempts();
    await waitFor("more failed attempts", async () => (await attempts()) >= seen + 10);
    assert.ok(maxOpen <= 2, `a failing endpoint held ${maxOpen} requests at once (cap 2 while failing)`);
    healthy = true;
    await everyDeliverySucceeded(r, 30_000);
  } finally {
    await dispatcher?.stop(100);
    server.closeAllConnections();
    await new Promise<void>((res) => server.close(() => res()));
    await r.done();
  }
});

test("a failing endpoint that is deleted or disabled is forgotten; one still failing is not", async () => {
  const server = createServer((req, res) => {
    req.resume();
    req.on("end", () => res.writeHead(500).end());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const r = await apiOnlyServer(`${base}/a`);
  let dispatcher: Dispatcher | undefined;
  try {
    const b = await r.client.post("/v1/endpoints", { url: `${base}/b` });
    const c = await r.client.post("/v1/endpoints", { url: `${base}/c` });
    for (let i = 0; i < 3; i++) await r.client.post(`/v1/calls/${await r.newCall()}/start`, {});
    dispatcher = new Dispatcher(r.api.ctx, { pollMs: 50, sweepMs: 50 });
    dispatcher.start();
    const d = dispatcher;
    await waitFor("all three endpoints failing", () => d.failingEndpoints === 3);
    assert.equal((await r.client.del(`/v1/endpoints/${b.body.id}`)).status, 200);
    assert.equal((await r.client.patch(`/v1/endpoints/${c.body.id}`, { disabled: true })).status, 200);
    await waitFor("the deleted and the disabled endpoint forgotten", () => d.failingEndpoints === 1);
    // Sweeps go on; the endpoint that is still there and still failing stays held to its few slots.
    await new Promise((res) => setTimeout(res, 300));
    assert.equal(d.failingEndpoints, 1);
  } finally {
    await dispatcher?.stop(100);
    server.closeAllConnections();
    await new Promise<void>((res) => server.close(() => res()));
    await r.done();
  }
});

test("claims that leave out failing endpoints start past their backlog, and find it again once one is served", async () => {
  // Two endpoints take call.started, fail their first two requests and then hold every request
  // until told to answer; a third takes call.ended and answers at once. The started events are
  // older, so once the failing endpoints sit at their cap the claims for the third start at its
  // first delivery (the floor), past their rows.
  const slow1 = await holdingReceiver(2);
  const slow2 = await holdingReceiver(2);
  let fastGot = 0;
  const fast = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      fastGot++;
      res.end("ok");
    });
  });
  await new Promise<void>((r) => fast.listen(0, "127.0.0.1", r));
  const r = await apiOnlyServer(slow1.url, { event_types: ["call.started"] });
  let dispatcher: Dispatcher | undefined;
  try {
    const more = [
      { url: slow2.url, event_types: ["call.started"] },
      { url: `http://127.0.0.1:${(fast.address() as AddressInfo).port}/`, event_types: ["call.ended"] },
    ];
    for (const e of more) assert.equal((await r.client.post("/v1/endpoints", e)).status, 201);
    const calls: number[] = [];
    for (let i = 0; i < 6; i++) {
      calls.push(await r.newCall());
      await r.client.post(`/v1/calls/${calls[i]}/start`, {});
    }
    for (const id of calls) await r.client.post(`/v1/calls/${id}/end`, {});
    // Cap 2 per endpoint; a floor trusted for an hour, so only a correct check finds the rows.
    dispatcher = new Dispatcher(r.api.ctx, {
      concurrency: 16,
      perEndpoint: 2,
      perFailingEndpoint: 2,
      batchSize: 4,
      pollMs: 100,
      floorMs: 3_600_000,
    });
    dispatcher.start();
    await waitFor(
      "both failing endpoints at their cap",
      () => slow1.held.length === 2 && slow2.held.length === 2,
    );
    await waitFor("every call.ended at the fast endpoint", () => fastGot === 6);
    // The second endpoint is served again: its remaining rows lie before the floor. Six to answer:
    // the two that failed (retried) and four more.
    await slow2.answerUntil(6);
    assert.equal(slow2.arrived.length, 8);
    assert.equal(slow1.arrived.length, 4, "the first stays at its cap, unanswered");
    await slow1.answerUntil(6);
    await everyDeliverySucceeded(r);
  } finally {
    await dispatcher?.stop(100);
    await slow1.close();
    await slow2.close();
    fast.closeAllConnections();
    await new Promise<void>((res) => fast.close(() => res()));
    await r.done();
  }
});
