import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { applyTransition } from "../src/calls/service.js";
import { loadConfig } from "../src/config.js";
import { Dispatcher } from "../src/delivery/dispatcher.js";
import { Handoff, handOffIn } from "../src/delivery/handoff.js";
import { createLogger } from "../src/log.js";
import { type Running, startServer } from "../src/server.js";
import { type ApiClient, apiClient, setupAccount } from "./helpers/api.js";
import { type Receiver, startReceiver } from "./helpers/receiver.js";
import { freePort, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

// Deliveries the API creates go straight to the dispatcher of the same process, leased in the
// transaction that made them (src/delivery/handoff.ts). Here an API-only server holds the data and
// a dispatcher of our own does the attempts, so that the tests decide when a claim may run: its
// poll interval is an hour and nothing wakes it, so whatever arrives was handed over.

describe("hand-off of new deliveries to the dispatcher", () => {
  const dir = tempDir();
  let server: Running;
  let api: ApiClient;
  let receiver: Receiver;
  let agentId: number;
  let accountId: number;
  let endpointId: string;
  let dispatcher: Dispatcher;
  const LEASE = 60_000;

  before(async () => {
    receiver = await startReceiver();
    const config = loadConfig({
      KLEN_DATA_DIR: dir.path,
      KLEN_DEV: "1",
      KLEN_API_KEY: "klen_handoff_key",
      PORT: String(await freePort()),
      KLEN_LEASE: `${LEASE / 1000}s`,
    });
    server = await startServer(config, createLogger({ level: "silent" }), { role: "api" });
    api = apiClient(`http://127.0.0.1:${config.port}`, "klen_handoff_key");
    const setup = await setupAccount(api, { endpointUrl: receiver.url });
    agentId = setup.agentId;
    endpointId = setup.endpoint.id;
    accountId = (await server.ctx.store.db.selectFrom("accounts").select("id").executeTakeFirstOrThrow()).id;
    dispatcher = new Dispatcher(server.ctx, { perEndpoint: 2, pollMs: 3_600_000 });
    dispatcher.start();
  });

  after(async () => {
    await dispatcher.stop(100);
    await server.stop();
    await receiver.close();
    dir.remove();
  });

  async function newCall(): Promise<number> {
    const r = await api.post("/v1/calls", {
      agent_id: agentId,
      type: "inbound",
      phone_number: "+15551230000",
    });
    assert.equal(r.status, 201);
    return r.body.id;
  }

  /** Starts the call in a transaction whose deliveries go to `handoff`; `fail` rolls it back. */
  async function start(callId: number, handoff: Handoff, fail = false): Promise<string> {
    const { store } = server.ctx;
    return store.db.transaction().execute(async (trx) => {
      handOffIn(trx, handoff);
      const r = await applyTransition(trx, store.caps, accountId, callId, "start", { now: Date.now() });
      if (fail) throw new Error("rolled back");
      return r.eventId;
    });
  }

  const delivery = (eventId: string) =>
    server.ctx.store.db
      .selectFrom("deliveries")
      .select(["status", "claim_token", "next_attempt_at", "leased_until", "created_at", "attempt_count"])
      .where("event_id", "=", eventId)
      .executeTakeFirst();

  test("a delivery made in a handed-off transaction is leased there and attempted without a claim", async () => {
    const handoff = new Handoff(dispatcher, LEASE);
    const eventId = await start(await newCall(), handoff);
    const row = await delivery(eventId);
    assert.equal(row?.claim_token, 1, "leased by the INSERT (token 1), before any attempt");
    assert.equal(row?.leased_until, Number(row?.created_at) + LEASE);
    assert.equal(row?.next_attempt_at, row?.leased_until, "not due again before the lease ends");
    assert.equal(handoff.needsClaim, false);
    assert.equal(dispatcher.reservedSlots, 1, "the slot is held until the commit is announced");

    handoff.commit();
    assert.equal(dispatcher.reservedSlots, 0);
    const got = await waitFor("the event at the receiver", () =>
      receiver.requests.find((r) => r.id === eventId),
    );
    assert.equal((got.json as { event_type: string }).event_type, "call.started");
    const done = await waitFor("the outcome recorded", async () => {
      const d = await delivery(eventId);
      return d?.status === "succeeded" && d;
    });
    assert.equal(done.attempt_count, 1);
    assert.equal(done.claim_token, 1, "never claimed");
  });

  test("an endpoint at its cap gets no slot: the delivery is created due, for a claim", async () => {
    // The dispatcher's cap is 2 per endpoint; two slots held by transactions still open elsewhere.
    assert.equal(dispatcher.reserve(endpointId), true);
    assert.equal(dispatcher.reserve(endpointId), true);
    assert.equal(dispatcher.reserve(endpointId), false, "the third slot is over the cap");
    const handoff = new Handoff(dispatcher, LEASE);
    const eventId = await start(await newCall(), handoff);
    assert.equal(handoff.needsClaim, true);
    const row = await delivery(eventId);
    assert.equal(row?.claim_token, 0);
    assert.equal(row?.leased_until, null);
    assert.equal(row?.next_attempt_at, row?.created_at, "due at once");

    handoff.commit(); // nothing was handed over
    dispatcher.cancel([endpointId, endpointId]);
    assert.equal(dispatcher.reservedSlots, 0);
    dispatcher.wake();
    await waitFor("the event at the receiver", () => receiver.requests.find((r) => r.id === eventId));
    const done = await waitFor("the outcome recorded", async () => {
      const d = await delivery(eventId);
      return d?.status === "succeeded" && d;
    });
    assert.equal(done.claim_token, 1, "claimed once");
  });

  test("a rolled-back transaction hands nothing over and gives its slots back", async () => {
    const handoff = new Handoff(dispatcher, LEASE);
    const before = receiver.requests.length;
    await assert.rejects(start(await newCall(), handoff, true), /rolled back/);
    assert.equal(dispatcher.reservedSlots, 1, "held until the caller says what happened");
    handoff.cancel();
    assert.equal(dispatcher.reservedSlots, 0);
    const pending = await server.ctx.store.db
      .selectFrom("deliveries")
      .select("id")
      .where("status", "=", "pending")
      .execute();
    assert.deepEqual(pending, [], "the rolled-back delivery does not exist");
    assert.equal(receiver.requests.length, before);
  });

  test("a stopping dispatcher takes no hand-offs", async () => {
    const other = new Dispatcher(server.ctx, { pollMs: 3_600_000 });
    assert.equal(other.reserve(endpointId), false, "not started");
    other.start();
    assert.equal(other.reserve(endpointId), true);
    other.cancel([endpointId]);
    await other.stop(100);
    assert.equal(other.reserve(endpointId), false, "stopped");
  });
});
