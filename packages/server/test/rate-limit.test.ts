import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { Webhook } from "standardwebhooks";
import { createAccount } from "../src/accounts/accounts.js";
import type { Claimed } from "../src/delivery/claim.js";
import { Dispatcher } from "../src/delivery/dispatcher.js";
import { Pacer } from "../src/delivery/pacer.js";
import { planGrant } from "../src/delivery/rate.js";
import { migrate } from "../src/storage/migrate.js";
import { openStore } from "../src/storage/store.js";
import { newEndpointSecret } from "../src/util/ids.js";
import { type ApiClient, setupAccount, startedCall } from "./helpers/api.js";
import { apiOnlyServer } from "./helpers/api-only.js";
import { backends, postgresBackend } from "./helpers/backends.js";
import { attemptsAt } from "./helpers/metrics.js";
import { stopPostgres } from "./helpers/postgres.js";
import { type Receiver, type Responder, startReceiver } from "./helpers/receiver.js";
import { type ServerProcess, spawnServer, spawnWorkers, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

// An endpoint's rate_limit (attempts per second, across every worker): start times are handed out
// from the endpoint's row, one interval apart, and each process starts its attempts no sooner.

after(() => stopPostgres());

describe("planGrant", () => {
  const us = (ms: number) => ms * 1000;
  test("hands out start times one interval apart, from now or the row's next time, within the horizon", () => {
    const now = 1_000_000;
    const fresh = planGrant({ rate_limit: 4, rate_next_us: null }, 10, now);
    assert.deepEqual(fresh.starts, [now, now + 250, now + 500, now + 750], "a second's worth at 4/s");
    assert.equal(fresh.intervalMs, 250);
    assert.equal(fresh.nextGrantAt, now + 1);
    assert.equal(fresh.rowNextUs, us(now + 1000));
    const few = planGrant({ rate_limit: 4, rate_next_us: null }, 2, now);
    assert.deepEqual(few.starts, [now, now + 250], "no more than asked for");
    assert.equal(few.nextGrantAt, now + 500 - 1000 + 1);
    const ahead = planGrant({ rate_limit: 4, rate_next_us: us(now + 900) }, 10, now);
    assert.deepEqual(ahead.starts, [now + 900], "after what another worker reserved, up to the horizon");
    const full = planGrant({ rate_limit: 4, rate_next_us: us(now + 1000) }, 10, now);
    assert.deepEqual(full.starts, [], "nothing when the next start is a horizon away");
    assert.ok(full.nextGrantAt > now, "and it says when to ask again");
    assert.equal(
      planGrant({ rate_limit: 4, rate_next_us: us(now + 1000) }, 10, full.nextGrantAt).starts.length,
      1,
    );
    const past = planGrant({ rate_limit: 1, rate_next_us: us(now - 60_000) }, 5, now);
    assert.deepEqual(past.starts, [now], "an idle endpoint saves up no burst");
    const odd = planGrant({ rate_limit: 3, rate_next_us: null }, 3, now);
    assert.equal(odd.starts.length, 3);
    for (let i = 1; i < odd.starts.length; i++)
      assert.ok((odd.starts[i] as number) - (odd.starts[i - 1] as number) >= 1000 / 3 - 1e-9);
    assert.deepEqual(planGrant({ rate_limit: null, rate_next_us: null }, 5, now).starts, []);
    assert.equal(planGrant({ rate_limit: null, rate_next_us: null }, 5, now).limit, null);
  });

  test("a high limit granted one start at a time loses nothing to rounding", () => {
    const now = 5_000_000;
    let row: { rate_limit: number; rate_next_us: number | null } = {
      rate_limit: 100_000,
      rate_next_us: null,
    };
    const starts: number[] = [];
    for (let i = 0; i < 1000; i++) {
      const g = planGrant(row, 1, now);
      starts.push(...g.starts);
      row = { ...row, rate_next_us: g.rowNextUs };
    }
    assert.equal(starts.length, 1000, "all within the horizon");
    // 1,000 starts at 100,000 a second span 10 ms (each rounded up to the microsecond at most).
    assert.ok((starts.at(-1) as number) - now < 11, `spanned ${(starts.at(-1) as number) - now} ms`);
    for (let i = 1; i < starts.length; i++)
      assert.ok(
        (starts[i] as number) - (starts[i - 1] as number) >= 0.01 - 1e-9,
        "never closer than the interval",
      );
  });
});

describe("Pacer", () => {
  test("an attempt late within its grant's block starts; one past the block's end by more than 20 ms is handed back, not started in another worker's time", async () => {
    const dir = tempDir();
    const store = await openStore(`sqlite:${dir.path}/pacer.db`);
    after(async () => {
      await store.close();
      dir.remove();
    });
    await migrate(store);
    const t = Date.now();
    const { account } = await store.db.transaction().execute((trx) => createAccount(trx, "pacer"));
    await store.db
      .insertInto("endpoints")
      .values({
        id: "ep_paced",
        account_id: account.id,
        url: "http://127.0.0.1:9/",
        secret: newEndpointSecret(),
        rate_limit: 100,
        created_at: t,
        updated_at: t,
      } as never)
      .execute();
    let now = t;
    let slot = false;
    const launched: string[] = [];
    const handedBack: string[] = [];
    const pacer = new Pacer(store, {
      now: () => now,
      launch: (c) => launched.push(c.id),
      handBack: async (claims) => {
        handedBack.push(...claims.map((c) => c.id));
      },
      wake: () => {},
      startWithinMs: 60_000,
      hasSlot: () => slot,
    });
    const claimed = ["dlv_1", "dlv_2", "dlv_3"].map(
      (id) => ({ id, endpointId: "ep_paced", readAt: now }) as unknown as Claimed,
    );
    try {
      // Granted 10 ms apart from now (a block of three: now, +10, +20); no slot free, none starts.
      await pacer.take(new Map([["ep_paced", claimed]]), now);
      assert.deepEqual([launched, handedBack], [[], []]);
      // 25 ms on a slot is free: the first is late, but its block is this worker's.
      now += 25;
      slot = true;
      pacer.resume();
      assert.deepEqual([launched, handedBack], [["dlv_1"], []]);
      // Half a second on the block is long over: the other two are handed back when their turn comes.
      now += 500;
      await waitFor("the rest handed back", () => handedBack.length === 2);
      assert.deepEqual(launched, ["dlv_1"]);
      assert.deepEqual(handedBack.sort(), ["dlv_2", "dlv_3"]);
    } finally {
      pacer.drop();
    }
  });
});

/**
 * The start times (ms) of every attempt of `endpointId`, ascending, once at least `n` are recorded
 * (a receiver has a request before its worker records the attempt).
 */
function attemptStarts(api: ApiClient, endpointId: string, n: number): Promise<number[]> {
  return waitFor(`${n} attempts recorded`, async () => {
    const starts = await listStarts(api, endpointId);
    return starts.length >= n && starts;
  });
}

async function listStarts(api: ApiClient, endpointId: string): Promise<number[]> {
  const starts: number[] = [];
  let cursor: string | null = null;
  do {
    const r = await api.get(
      `/v1/deliveries?endpoint_id=${endpointId}&limit=100${cursor ? `&cursor=${cursor}` : ""}`,
    );
    assert.equal(r.status, 200);
    for (const d of r.body.data) for (const a of d.attempts) starts.push(Date.parse(a.started_at));
    cursor = r.body.next_cursor;
  } while (cursor);
  return starts.sort((a, b) => a - b);
}

/**
 * Asserts what a limit of `perSecond` promises: the k-th attempt (from 0) started no sooner than
 * k intervals after `t0`, a time before the first could be granted, and with `oneAtATime` (one
 * process at a time) no two attempts closer together than the interval, so no burst either
 * (attempt times are kept to the millisecond, hence the 1 ms).
 */
function assertPaced(starts: number[], perSecond: number, t0: number, oneAtATime = false) {
  const interval = 1000 / perSecond;
  if (oneAtATime)
    for (let k = 1; k < starts.length; k++)
      assert.ok(
        (starts[k] as number) - (starts[k - 1] as number) >= interval - 1,
        `attempts ${k - 1} and ${k} ${(starts[k] as number) - (starts[k - 1] as number)} ms apart (starts: ${starts.map((x) => x - t0).join(", ")})`,
      );
  for (const [k, s] of starts.entries())
    assert.ok(
      s >= t0 + k * interval - 1,
      `attempt ${k} started ${s - t0} ms after t0, before ${k * interval} ms (starts: ${starts.map((x) => x - t0).join(", ")})`,
    );
}

/**
 * Stalls of this test process's event loop (from, to): the receivers run in it and stamp a request
 * when the loop gets to it, so requests that arrived apart during a stall are stamped together.
 * A loaded machine gave stalls of 150-430 ms here.
 */
const stalls: Array<[number, number]> = [];
let lastTick = Date.now();
setInterval(() => {
  const now = Date.now();
  if (now - lastTick > 15) stalls.push([lastTick, now]);
  lastTick = now;
}, 5).unref();

/**
 * As the receiver saw them, no two requests came together: the restarted process's first attempts
 * included (a sender thread still starting would send those at once). A tenth of the interval
 * leaves room for a late request; a burst is a millisecond or two. A pair stamped just after a
 * stall of this process long enough to have bunched it is not evidence either way and is left
 * out; the attempts' own start times are checked strictly (`assertPaced`).
 */
function assertArrivalsApart(rx: Receiver, minGapMs = 50) {
  const at = rx.requests.map((q) => q.at);
  let checked = 0;
  for (let k = 1; k < at.length; k++) {
    const a = at[k - 1] as number;
    const gap = (at[k] as number) - a;
    if (gap >= minGapMs) {
      checked++;
      continue;
    }
    const stalled = stalls.some(([from, to]) => from < a && a <= to + 20 && to - from >= minGapMs - gap);
    assert.ok(
      stalled,
      `requests ${k - 1} and ${k} arrived ${gap} ms apart (gaps: ${at
        .slice(1)
        .map((t, i) => t - (at[i] as number))
        .join(", ")})`,
    );
  }
  assert.ok(checked > 0, "at least one pair of arrivals was measured");
}

/** Distinct webhook-ids `rx` received (a resend after a failed attempt counts once). */
const distinct = (rx: Receiver) => new Set(rx.requests.map((q) => q.id)).size;

for (const backend of backends()) {
  describe(`endpoint rate limit on ${backend.name}`, () => {
    test("a limited endpoint's attempts keep to it, across a graceful restart; an unlimited one beside it is not held", async () => {
      const fresh = await backend.fresh();
      const limited = await startReceiver();
      const free = await startReceiver();
      // A long lease: attempts left waiting by the graceful stop must be handed back, not expire.
      const env = { KLEN_DATABASE_URL: fresh.databaseUrl, KLEN_LEASE: "120s" };
      let server: ServerProcess | undefined = await spawnServer({ dataDir: fresh.dataDir, env });
      after(async () => {
        await server?.kill("SIGKILL");
        await limited.close();
        await free.close();
        await fresh.cleanup();
      });
      const api = server.api;
      const { agentId, endpoint } = await setupAccount(api, {
        endpointUrl: limited.url,
        endpoint: { rate_limit: 2 },
      });
      assert.equal(endpoint.rate_limit, 2);
      limited.setSecret(endpoint.secret);
      const other = await api.post("/v1/endpoints", { url: free.url });
      assert.equal(other.body.rate_limit, null, "no limit unless one is set");
      free.setSecret(other.body.secret);

      const t0 = Date.now();
      const calls = 12;
      // Made together: one at a time on a slow machine, the limited endpoint could keep up.
      await Promise.all(
        Array.from({ length: calls }, (_, i) =>
          startedCall(api, agentId, `+1555030${String(i).padStart(4, "0")}`),
        ),
      );
      await free.waitForCount(calls, 30_000);
      // The unlimited endpoint got all of its deliveries while the limited one (2 a second: 5.5 s
      // for 12) was still working through them: the limit holds back only its own endpoint.
      assert.ok(distinct(limited) < calls, `limited endpoint had ${distinct(limited)} of ${calls} already`);

      // A graceful stop part-way: attempts waiting for their start time are handed back, and the
      // next process keeps to the same limit from the endpoint's row.
      await waitFor("a few limited deliveries", () => distinct(limited) >= 3, 30_000);
      await server.kill("SIGTERM");
      server = await spawnServer({ dataDir: fresh.dataDir, env });
      await waitFor("every limited delivery", () => distinct(limited) >= calls, 60_000);
      assert.deepEqual(limited.verifyFailures, []);
      assertPaced(await attemptStarts(server.api, endpoint.id, calls), 2, t0, true);
      assertArrivalsApart(limited);
    });
  });
}

/**
 * A fresh PostgreSQL database with an `--role api` process, an agent and an endpoint at a verifying
 * receiver limited to `perSecond`; `addWorkers(n)` starts worker processes on it. All are stopped
 * after the test file.
 */
async function apiOnPostgres(perSecond: number) {
  const fresh = await postgresBackend.fresh();
  const rx = await startReceiver();
  const procs: ServerProcess[] = [];
  after(async () => {
    for (const p of procs) await p.kill("SIGKILL");
    await rx.close();
    await fresh.cleanup();
  });
  const env = { KLEN_DATABASE_URL: fresh.databaseUrl };
  const apiProc = await spawnServer({ dataDir: fresh.dataDir, role: "api", env });
  procs.push(apiProc);
  const { agentId, endpoint } = await setupAccount(apiProc.api, {
    endpointUrl: rx.url,
    endpoint: { rate_limit: perSecond },
  });
  rx.setSecret(endpoint.secret);
  const addWorkers = async (n: number) => {
    const workers = await spawnWorkers(n, { dataDir: fresh.dataDir, env });
    procs.push(...workers);
    return workers;
  };
  return { rx, apiProc, agentId, endpoint, addWorkers };
}

describe("endpoint rate limit across workers", () => {
  test("two workers on one PostgreSQL share one endpoint's limit", async (t) => {
    const { rx, apiProc, agentId, endpoint, addWorkers } = await apiOnPostgres(10);
    const workers = await addWorkers(2);
    const calls: number[] = [];
    for (let i = 0; i < 24; i++) {
      const c = await apiProc.api.post("/v1/calls", {
        agent_id: agentId,
        type: "outbound",
        phone_number: `+1555040${String(i).padStart(4, "0")}`,
      });
      calls.push(c.body.id);
    }
    // Both workers are waiting: the calls start at once, far faster than 10 a second.
    const t0 = Date.now();
    const started = await Promise.all(calls.map((id) => apiProc.api.post(`/v1/calls/${id}/start`, {})));
    assert.deepEqual(new Set(started.map((r) => r.status)), new Set([200]));
    await waitFor("every delivery", () => distinct(rx) >= calls.length, 60_000);
    assert.deepEqual(rx.verifyFailures, []);
    assertPaced(await attemptStarts(apiProc.api, endpoint.id, calls.length), 10, t0);
    const attempts = await Promise.all(workers.map((w) => attemptsAt(w.workerPort)));
    t.diagnostic(`attempts per worker: ${attempts.join(", ")}`);
    for (const n of attempts) assert.ok(n > 0, `both workers took part (${attempts.join(", ")})`);
  });
});

test("a worker started with a limited backlog waiting sends it spaced from its first attempt", async () => {
  const { rx, apiProc, agentId, endpoint, addWorkers } = await apiOnPostgres(10);
  for (let i = 0; i < 12; i++)
    await startedCall(apiProc.api, agentId, `+1555110${String(i).padStart(4, "0")}`);
  // Its first claim finds the whole backlog: a sender thread still coming up would take the first
  // few attempts at once when ready, and they would arrive together.
  await addWorkers(1);
  await waitFor("every delivery", () => distinct(rx) >= 12, 30_000);
  const starts = await attemptStarts(apiProc.api, endpoint.id, 12);
  assertPaced(starts, 10, starts[0] as number, true);
  assertArrivalsApart(rx, 20);
});

test("rate_limit is a whole number of attempts per second, 1 to 100,000, or null for none", async () => {
  const fresh = await backends()[0]!.fresh();
  const server = await spawnServer({ dataDir: fresh.dataDir, env: { KLEN_DATABASE_URL: fresh.databaseUrl } });
  after(async () => {
    await server.kill("SIGKILL");
    await fresh.cleanup();
  });
  const { api } = server;
  for (const bad of [0, -1, 1.5, 100_001, "10", true]) {
    const r = await api.post("/v1/endpoints", { url: "http://127.0.0.1:9/x", rate_limit: bad });
    assert.equal(r.status, 400, `${JSON.stringify(bad)}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.error.details?.field, "rate_limit", JSON.stringify(r.body));
  }
  const created = await api.post("/v1/endpoints", { url: "http://127.0.0.1:9/x", rate_limit: 100_000 });
  assert.equal(created.status, 201);
  assert.equal(created.body.rate_limit, 100_000);
  const id = created.body.id as string;
  assert.equal((await api.patch(`/v1/endpoints/${id}`, { rate_limit: 3 })).body.rate_limit, 3);
  assert.equal((await api.get(`/v1/endpoints/${id}`)).body.rate_limit, 3);
  assert.equal((await api.patch(`/v1/endpoints/${id}`, { description: "kept" })).body.rate_limit, 3);
  assert.equal((await api.patch(`/v1/endpoints/${id}`, { rate_limit: null })).body.rate_limit, null);
  const bad = await api.patch(`/v1/endpoints/${id}`, { rate_limit: 0 });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.details?.field, "rate_limit");
});

test("attempts waiting for their start time take none of the process's slots: a healthy endpoint is not held up", async () => {
  const limited = await startReceiver();
  const healthy = await startReceiver();
  // Two endpoints at 20 a second with a backlog each; 8 slots, 4 per endpoint. Were waiting
  // attempts to hold slots, the limited endpoints' 8 would take them all, and the healthy
  // endpoint's events, last in the due order, would wait for both backlogs (10 s).
  const r = await apiOnlyServer(`${limited.url}/a`, { rate_limit: 20 });
  let dispatcher: Dispatcher | undefined;
  try {
    await r.client.post("/v1/endpoints", { url: `${limited.url}/b`, rate_limit: 20 });
    const calls: number[] = [];
    for (let i = 0; i < 100; i++) {
      const id = await r.newCall(`+1555080${String(i).padStart(4, "0")}`);
      await r.client.post(`/v1/calls/${id}/start`, {});
      calls.push(id);
    }
    await r.client.post("/v1/endpoints", { url: healthy.url });
    for (const id of calls.slice(0, 20)) await r.client.post(`/v1/calls/${id}/end`, {});
    dispatcher = new Dispatcher(r.api.ctx, { concurrency: 8, perEndpoint: 4, batchSize: 8, pollMs: 50 });
    dispatcher.start();
    await healthy.waitForCount(20, 30_000);
    // The limited endpoints start 40 attempts a second between them: the healthy endpoint's 20 went
    // out within their first 1.5 s (here ~0.3 s and 5 of theirs; with waiting attempts holding
    // slots, ~5 s and ~100).
    assert.ok(
      distinct(limited) < 60,
      `the healthy endpoint waited for ${distinct(limited)} limited attempts`,
    );
  } finally {
    await dispatcher?.stop(100);
    await r.done();
    await limited.close();
    await healthy.close();
  }
});

/**
 * A `serve` process on a fresh SQLite database (`env` added), with an agent and an endpoint at a
 * verifying receiver limited to `perSecond`; stopped after the test file.
 */
async function serverOnSqlite(perSecond: number, env: Record<string, string> = {}, respond?: Responder) {
  const fresh = await backends()[0]!.fresh();
  const rx = await startReceiver({ respond });
  const server = await spawnServer({
    dataDir: fresh.dataDir,
    env: { KLEN_DATABASE_URL: fresh.databaseUrl, ...env },
  });
  after(async () => {
    await server.kill("SIGKILL");
    await rx.close();
    await fresh.cleanup();
  });
  const { agentId, endpoint } = await setupAccount(server.api, {
    endpointUrl: rx.url,
    endpoint: { rate_limit: perSecond },
  });
  rx.setSecret(endpoint.secret);
  return { rx, server, agentId, endpoint };
}

test("a disabled endpoint's backlog is settled at once, not at its rate limit", async () => {
  const { rx, server, agentId, endpoint } = await serverOnSqlite(1);
  // Made together: one at a time on a slow machine, several would be sent before the disable.
  await Promise.all(
    Array.from({ length: 30 }, (_, i) =>
      startedCall(server.api, agentId, `+1555090${String(i).padStart(4, "0")}`),
    ),
  );
  await rx.waitForCount(1, 30_000);
  await server.api.patch(`/v1/endpoints/${endpoint.id}`, { disabled: true });
  // At 1 a second the 30 would take half a minute; settled without an attempt, they take moments.
  await waitFor(
    "every delivery settled",
    async () => {
      const r = await server.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&status=pending&limit=1`);
      return r.body.data.length === 0;
    },
    15_000,
    100,
  );
  const failed = await server.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&status=failed&limit=100`);
  assert.ok(failed.body.data.length >= 25, `${failed.body.data.length} failed as endpoint_disabled`);
  assert.ok(rx.requests.length < 10, `${rx.requests.length} sent`);
});

// Attempts claimed and waiting for their start time (a second's worth) were sent as the endpoint
// was when claimed: signed with a secret rotated out, or to an endpoint already deleted.
async function assertChangesReachWaitingAttempts(
  rx: Receiver,
  api: ApiClient,
  agentId: number,
  endpointId: string,
): Promise<void> {
  // The backlog made at once, so that most of it is still waiting at 10 a second, however slow
  // the machine (made one call at a time, a slow run had delivered 52 of 60 before the rotation).
  const calls = await Promise.all(
    Array.from({ length: 60 }, (_, i) =>
      api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: `+1555091${String(i).padStart(4, "0")}`,
      }),
    ),
  );
  const started = await Promise.all(calls.map((c) => api.post(`/v1/calls/${c.body.id}/start`, {})));
  assert.deepEqual(new Set(started.map((r) => r.status)), new Set([200]));
  await rx.waitForCount(5, 30_000);
  const rotated = await api.post(`/v1/endpoints/${endpointId}/rotate-secret`, { grace_seconds: 0 });
  assert.equal(rotated.status, 200);
  const rotatedAt = Date.now();
  const before = rx.requests.length;
  await rx.waitForCount(before + 15, 30_000);
  // At most the attempt already on its way when the rotation committed is signed the old way.
  const fresh = new Webhook(rotated.body.secret);
  const oldSigned = rx.requests.filter((q) => {
    if (q.at <= rotatedAt) return false;
    try {
      fresh.verify(q.body, q.headers as Record<string, string>);
      return false;
    } catch {
      return true;
    }
  });
  assert.ok(
    oldSigned.length <= 1,
    `${oldSigned.length} requests after the rotation not signed with the new secret`,
  );

  assert.equal((await api.del(`/v1/endpoints/${endpointId}`)).status, 200);
  const deletedAt = Date.now();
  await waitFor("every delivery settled", async () => {
    const r = await api.get(`/v1/deliveries?endpoint_id=${endpointId}&status=pending&limit=1`);
    return r.body.data.length === 0;
  });
  const late = rx.requests.filter((q) => q.at > deletedAt).length;
  assert.ok(late <= 1, `${late} requests arrived after the DELETE answered`);
}

test("attempts waiting for their start time go out as the endpoint is now: its new secret, and none after DELETE", async () => {
  const { rx, server, agentId, endpoint } = await serverOnSqlite(10);
  await assertChangesReachWaitingAttempts(rx, server.api, agentId, endpoint.id);
});

test("an endpoint the dispatcher disables (410 Gone) gets none of the attempts already waiting for their start time", async () => {
  // Healthy for its first three, then gone: by then a second's worth of attempts is waiting.
  const { rx, server, agentId, endpoint } = await serverOnSqlite(10, {}, (q) =>
    q.n <= 3 ? 200 : { status: 410, body: "gone" },
  );
  for (let i = 0; i < 30; i++)
    await startedCall(server.api, agentId, `+1555092${String(i).padStart(4, "0")}`);
  await waitFor(
    "the endpoint disabled",
    async () => (await server.api.get(`/v1/endpoints/${endpoint.id}`)).body.disabled,
  );
  await waitFor("every delivery settled", async () => {
    const r = await server.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&status=pending&limit=1`);
    return r.body.data.length === 0;
  });
  // After the 410 at most the attempt already on its way; a second's worth was waiting.
  const after410 = rx.requests.filter((q) => q.n > 4).length;
  assert.ok(after410 <= 1, `${after410} requests after the endpoint answered 410 Gone`);
});

test("the same with the change made through an API process and the attempts waiting in a worker (PostgreSQL NOTIFY)", async () => {
  const { rx, apiProc, agentId, endpoint, addWorkers } = await apiOnPostgres(10);
  await addWorkers(1);
  await assertChangesReachWaitingAttempts(rx, apiProc.api, agentId, endpoint.id);
});

test("a lease with little to spare over the delivery timeout still lets a limited endpoint keep its rate", async () => {
  // 500 ms between the end of an attempt's timeout and the end of its lease: start times taken a
  // second ahead would be stale before they came, handed back and taken again, over and over.
  const { rx, server, agentId, endpoint } = await serverOnSqlite(2, {
    KLEN_DELIVERY_TIMEOUT: "2s",
    KLEN_LEASE: "2500ms",
  });
  const t0 = Date.now();
  for (let i = 0; i < 8; i++) await startedCall(server.api, agentId, `+1555100${String(i).padStart(4, "0")}`);
  // 8 at 2 a second: 3.5 s; stalled, one every few seconds.
  await waitFor("every delivery", () => distinct(rx) >= 8, 20_000);
  assertPaced(await attemptStarts(server.api, endpoint.id, 8), 2, t0, true);
  assertArrivalsApart(rx);
});
