/** The once-per-webhook-id helper and its in-memory store. */
import * as assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  createIdempotency,
  type Idempotency,
  type IdempotencyStore,
  IdempotencyTimeoutError,
  MemoryIdempotencyStore,
} from "../src/index.js";
import { deferred } from "./helpers.js";

describe("idempotency", () => {
  test("runs once per key; later duplicates are reported", async () => {
    const once = createIdempotency();
    let runs = 0;
    assert.deepEqual(await once.run("evt_1", () => ++runs), { duplicate: false, value: 1 });
    assert.deepEqual(await once.run("evt_1", () => ++runs), { duplicate: true, value: undefined });
    assert.deepEqual(await once.run("evt_2", () => ++runs), { duplicate: false, value: 2 });
    assert.equal(runs, 2);
  });

  test("concurrent duplicates wait for and share the first run", async () => {
    const once = createIdempotency();
    const gate = deferred();
    let runs = 0;
    const first = once.run("evt_1", async () => {
      runs++;
      await gate.promise;
      return "done";
    });
    const second = once.run("evt_1", async () => {
      runs++;
      return "second";
    });
    gate.resolve();
    assert.deepEqual(await first, { duplicate: false, value: "done" });
    assert.deepEqual(await second, { duplicate: true, value: "done" });
    assert.equal(runs, 1);
  });

  test("a failed handler releases the key: waiters share the error, a retry runs", async () => {
    const once = createIdempotency();
    const gate = deferred();
    const first = once.run("evt_1", async () => {
      await gate.promise;
      throw new Error("db down");
    });
    const concurrent = once.run("evt_1", () => "never");
    gate.resolve();
    await assert.rejects(first, /db down/);
    await assert.rejects(concurrent, /db down/);
    assert.deepEqual(await once.run("evt_1", () => "retried"), { duplicate: false, value: "retried" });
  });

  test("a shared store: a second process waits for the first one's claim, then sees it done", async () => {
    const store = new MemoryIdempotencyStore();
    let claims = 0;
    const counting: IdempotencyStore = {
      claim: (k, l) => {
        claims++;
        return store.claim(k, l);
      },
      complete: (k, t) => store.complete(k, t),
      release: (k) => store.release(k),
    };
    const a = createIdempotency({ store: counting });
    const b = createIdempotency({ store: counting, pollIntervalMs: 1 });
    const gate = deferred();
    const started = deferred();
    const first = a.run("evt_1", async () => {
      started.resolve();
      await gate.promise;
      return "a";
    });
    await started.promise;
    const second = b.run("evt_1", () => "b");
    // Let b observe the pending claim at least once before a finishes: wait on the claim count.
    while (claims < 2) await new Promise((r) => setImmediate(r));
    gate.resolve();
    assert.deepEqual(await first, { duplicate: false, value: "a" });
    assert.deepEqual(await second, { duplicate: true, value: undefined });
  });

  test("a claim held elsewhere past waitTimeoutMs raises IdempotencyTimeoutError", async () => {
    const store = new MemoryIdempotencyStore();
    store.claim("evt_1", 60_000);
    const once = createIdempotency({ store, waitTimeoutMs: 0 });
    await assert.rejects(
      once.run("evt_1", () => 1),
      IdempotencyTimeoutError,
    );
  });

  test("a duplicate in this process waits for a run that never ends no longer than waitTimeoutMs", async () => {
    const once = createIdempotency({ waitTimeoutMs: 20 });
    const never = deferred();
    const first = once.run("evt_1", () => never.promise);
    await assert.rejects(
      once.run("evt_1", () => "second"),
      (err: unknown) => err instanceof IdempotencyTimeoutError && /in this process/.test(err.message),
    );
    // The first run is still the one in flight: it completes normally once its handler does.
    never.resolve();
    assert.equal((await first).duplicate, false);
    assert.deepEqual(await once.run("evt_1", () => "third"), { duplicate: true, value: undefined });
  });

  test("a run whose lease ran out and then fails does not free the claim of the run that took over", async () => {
    let now = 1_000;
    const store = new MemoryIdempotencyStore({ now: () => now });
    const processes = [1, 2, 3].map(() => createIdempotency({ store, leaseMs: 100, waitTimeoutMs: 0 }));
    const [slow, takeover, third] = processes as [Idempotency, Idempotency, Idempotency];
    const slowGate = deferred();
    const takeoverGate = deferred();
    let runs = 0;
    const first = slow.run("evt_1", async () => {
      runs++;
      await slowGate.promise;
      throw new Error("db down");
    });
    now += 100; // the slow run's lease is over: another process takes the id
    const second = takeover.run("evt_1", async () => {
      runs++;
      await takeoverGate.promise;
      return "second";
    });
    await new Promise((r) => setImmediate(r));
    slowGate.resolve();
    await assert.rejects(first, /db down/);
    // The second run still holds the id: a third delivery waits for it (here: gives up at once).
    await assert.rejects(
      third.run("evt_1", () => ++runs),
      IdempotencyTimeoutError,
    );
    takeoverGate.resolve();
    assert.deepEqual(await second, { duplicate: false, value: "second" });
    assert.deepEqual(await third.run("evt_1", () => ++runs), { duplicate: true, value: undefined });
    assert.equal(runs, 2);
  });

  test("a store without tokens (written before them) still works: release frees the key", async () => {
    const keys = new Map<string, "pending" | "done">();
    const legacy: IdempotencyStore = {
      claim(key: string) {
        const state = keys.get(key);
        if (state) return state;
        keys.set(key, "pending");
        return "claimed";
      },
      complete(key: string) {
        keys.set(key, "done");
      },
      release(key: string) {
        keys.delete(key);
      },
    };
    const once = createIdempotency({ store: legacy });
    await assert.rejects(
      once.run("evt_1", () => {
        throw new Error("first try");
      }),
      /first try/,
    );
    assert.deepEqual(await once.run("evt_1", () => "retried"), { duplicate: false, value: "retried" });
    assert.equal(keys.get("evt_1"), "done");
  });

  test("memory store: a release with another run's token leaves the claim; without a token it frees it", () => {
    const store = new MemoryIdempotencyStore();
    assert.equal(store.claim("k", 60_000, "run-a"), "claimed");
    store.release("k", "run-b");
    assert.equal(store.claim("k", 60_000, "run-c"), "pending");
    store.release("k", "run-a");
    assert.equal(store.claim("k", 60_000, "run-c"), "claimed");
    store.complete("k", 60_000, "run-c");
    store.release("k", "run-c");
    assert.equal(store.claim("k", 60_000, "run-d"), "done", "a done key is not released");
    assert.equal(store.claim("j", 60_000), "claimed");
    store.release("j");
    assert.equal(store.claim("j", 60_000), "claimed");
  });

  test("memory store: TTL and lease expiry with an injected clock", () => {
    let now = 1_000;
    const store = new MemoryIdempotencyStore({ now: () => now });
    assert.equal(store.claim("k", 100), "claimed");
    assert.equal(store.claim("k", 100), "pending");
    now += 100; // a lease that ran out: the worker crashed
    assert.equal(store.claim("k", 100), "claimed");
    store.complete("k", 500);
    assert.equal(store.claim("k", 100), "done");
    now += 499;
    assert.equal(store.claim("k", 100), "done");
    now += 1;
    assert.equal(store.claim("k", 100), "claimed");
    store.release("k");
    assert.equal(store.claim("k", 100), "claimed");
  });

  test("memory store is bounded: the oldest keys go first", () => {
    const store = new MemoryIdempotencyStore({ maxEntries: 3 });
    for (const k of ["a", "b", "c", "d"]) store.complete(k, 60_000);
    assert.equal(store.size, 3);
    assert.equal(store.claim("a", 1), "claimed", "a was evicted");
    assert.equal(store.claim("d", 1), "done");
  });
});
