import assert from "node:assert/strict";
import { after, type TestContext, test } from "node:test";
import pg from "pg";
import { runCall, setupAccount } from "./helpers/api.js";
import { startPostgres, stopPostgres } from "./helpers/postgres.js";
import { startReceiver } from "./helpers/receiver.js";
import { freePort, type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

after(() => stopPostgres());

// A database outage (PRODUCT.md §3: "no event is lost when the database connection drops"):
// while PostgreSQL is down the API answers 503 `database_unavailable` at once (no hang, no
// 500), no process exits, and once it is back every event is delivered without a restart.

test("PostgreSQL down and back: 503 while down, no process exits, nothing lost", async () => {
  const server = await startPostgres({ own: true }); // this test stops it
  const db = await server.freshDatabase();
  const dir = tempDir();
  const rx = await startReceiver();
  const procs: ServerProcess[] = [];
  after(async () => {
    for (const p of procs) await p.kill("SIGKILL");
    await rx.close();
    await server.stop();
    dir.remove();
  });
  const env = { KLEN_DATABASE_URL: db.url, KLEN_DELIVERY_TIMEOUT: "2s", KLEN_LEASE: "5s" };
  const api = await spawnServer({ dataDir: dir.path, role: "api", env });
  const worker = await spawnServer({ dataDir: dir.path, role: "worker", env });
  procs.push(api, worker);
  const { agentId, endpoint } = await setupAccount(api.api, { endpointUrl: rx.url });
  rx.setSecret(endpoint.secret);
  await runCall(api.api, agentId);
  await rx.waitForCount(4);

  await server.down("immediate");
  const health = await fetch(`${api.url}/healthz`);
  assert.equal(health.status, 503);
  const create = await api.api.post(
    "/v1/calls",
    { agent_id: agentId, type: "inbound", phone_number: "+15551234567" },
    { "idempotency-key": "during-outage" },
  );
  assert.equal(create.status, 503, JSON.stringify(create.body));
  assert.equal(create.body.error.code, "database_unavailable");
  assert.equal(create.headers.get("retry-after"), "1");
  const list = await api.api.get("/v1/calls");
  assert.equal(list.status, 503);
  assert.equal(api.proc.exitCode, null, "the API process keeps running");
  assert.equal(worker.proc.exitCode, null, "the worker keeps running");
  // A process started during the outage waits for the database instead of exiting.
  const latePort = await freePort();
  const late = await spawnServer({
    dataDir: dir.path,
    role: "worker",
    env: { ...env, KLEN_WORKER_PORT: String(latePort) },
  });
  procs.push(late);
  await waitFor("the late worker to wait for the database", () =>
    late.output().includes("database unavailable at start"),
  );
  assert.equal(late.proc.exitCode, null, "started during the outage, it waits");

  await server.up();
  await waitFor(
    "the late worker up once the database is",
    async () => (await fetch(`http://127.0.0.1:${latePort}/healthz`).catch(() => undefined))?.ok,
    30_000,
  );
  // The same request, retried with its key, now goes through (the 503 was not stored).
  const retried = await waitFor("the API to answer again", async () => {
    const r = await api.api.post(
      "/v1/calls",
      { agent_id: agentId, type: "inbound", phone_number: "+15551234567" },
      { "idempotency-key": "during-outage" },
    );
    return r.status === 201 ? r : undefined;
  });
  for (const step of ["start", "end"]) {
    const r = await api.api.post(`/v1/calls/${retried.body.id}/${step}`, {});
    assert.equal(r.status, 200);
  }
  // The worker reconnects on its own (its pool and its LISTEN connection) and delivers.
  await runCall(api.api, agentId);
  await rx.waitForCount(10);
  const ids = new Set(rx.requests.map((r) => r.id));
  assert.equal(ids.size, 10, "every event delivered once the database is back");
  assert.deepEqual(rx.verifyFailures, []);
  assert.equal(api.proc.exitCode, null);
  assert.equal(worker.proc.exitCode, null);
});

// A database that stops answering but keeps its connections open (a frozen host, a network
// partition): requests already holding a connection would wait until TCP gives up, minutes later.
// With KLEN_DATABASE_TIMEOUT they fail as a lost connection does, and the process recovers.
test("PostgreSQL that stops answering: 503 after KLEN_DATABASE_TIMEOUT, not a hang; back to 200 after", async () => {
  const server = await startPostgres({ own: true }); // this test freezes it
  const db = await server.freshDatabase();
  const dir = tempDir();
  let frozen = false;
  let api: ServerProcess | undefined;
  after(async () => {
    if (frozen) server.thaw();
    await api?.kill("SIGKILL");
    await server.stop();
    dir.remove();
  });
  api = await spawnServer({
    dataDir: dir.path,
    env: { KLEN_DATABASE_URL: db.url, KLEN_DATABASE_TIMEOUT: "2s" },
  });
  // Every pooled connection open and idle: the requests below take one that is already there.
  await Promise.all(Array.from({ length: 10 }, () => api!.api.get("/v1/account")));
  server.freeze();
  frozen = true;
  const answers = await Promise.all(
    [`${api.url}/v1/account`, `${api.url}/healthz`, `${api.url}/v1/calls`].map((url) =>
      fetch(url, {
        headers: { authorization: `Bearer ${api!.apiKey}` },
        // Far longer than the bound, far shorter than TCP's: a hang fails the test here.
        signal: AbortSignal.timeout(30_000),
      }).then(async (r) => ({ status: r.status, body: await r.json() })),
    ),
  );
  for (const a of answers) assert.equal(a.status, 503, JSON.stringify(a.body));
  assert.equal(answers[0]!.body.error.code, "database_unavailable");
  assert.equal(api.proc.exitCode, null, "the process keeps running");
  server.thaw();
  frozen = false;
  await waitFor("answers again", async () => (await api!.api.get("/v1/account")).status === 200, 30_000);
  const created = await api.api.post("/v1/agents", { name: "after the freeze" });
  assert.equal(created.status, 201);
});

// A database that is up but where a statement waits (another session holds the row's lock, or an
// operator's lock_timeout gives up): each request is a 503 with Retry-After, never a 500, and the
// statement the API stopped waiting for does not go on waiting in PostgreSQL, so clients retrying
// do not pile up backends until max_connections refuses everyone.
test("PostgreSQL that makes a statement wait: 503, and the abandoned statements do not pile up", async () => {
  const server = await startPostgres();
  const db = await server.freshDatabase();
  const dir = tempDir();
  const holder = new pg.Client({ connectionString: db.url });
  const apis: ServerProcess[] = [];
  after(async () => {
    await holder.end().catch(() => {});
    for (const a of apis) await a.kill("SIGKILL");
    await db.drop();
    dir.remove();
  });
  const env = { KLEN_DATABASE_URL: db.url, KLEN_DATABASE_TIMEOUT: "1s" };
  const api = await spawnServer({ dataDir: dir.path, env });
  apis.push(api);
  const { agentId } = await setupAccount(api.api);
  const call = await api.api.post("/v1/calls", {
    agent_id: agentId,
    type: "inbound",
    phone_number: "+15551234567",
  });
  assert.equal(call.status, 201);
  await holder.connect();
  const waiting = async () =>
    Number(
      (
        await holder.query(
          "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
      ).rows[0].n,
    );
  await holder.query("BEGIN");
  await holder.query("SELECT id FROM calls WHERE id = $1 FOR UPDATE", [call.body.id]);
  for (let i = 0; i < 6; i++) {
    const r = await api.api.post(`/v1/calls/${call.body.id}/start`, {});
    assert.equal(r.status, 503, JSON.stringify(r.body));
    assert.equal(r.body.error.code, "database_unavailable");
  }
  // Each abandoned statement is ended on the server (at once after its 503, give or take a query).
  await waitFor("no statement left waiting on the lock", async () => (await waiting()) === 0, 10_000);
  await holder.query("ROLLBACK");
  assert.equal((await api.api.post(`/v1/calls/${call.body.id}/start`, {})).status, 200);

  // An operator's lock_timeout (SQLSTATE 55P03) is the same 503, with Retry-After.
  await holder.query(`ALTER DATABASE ${pgIdent(db.url)} SET lock_timeout = '200ms'`);
  const bounded = await spawnServer({ dataDir: dir.path, env: { KLEN_DATABASE_URL: db.url } });
  apis.push(bounded);
  await holder.query("BEGIN");
  await holder.query("SELECT id FROM calls WHERE id = $1 FOR UPDATE", [call.body.id]);
  const res = await fetch(`${bounded.url}/v1/calls/${call.body.id}/end`, {
    method: "POST",
    headers: { authorization: `Bearer ${api.apiKey}`, "content-type": "application/json" },
    body: "{}",
  });
  assert.equal(res.status, 503, await res.clone().text());
  assert.equal(res.headers.get("retry-after"), "1");
  assert.equal(((await res.json()) as { error: { code: string } }).error.code, "database_unavailable");
  await holder.query("ROLLBACK");
});

/** The database name of a connection URL, quoted as an identifier. */
function pgIdent(url: string): string {
  return `"${decodeURIComponent(new URL(url).pathname.slice(1)).replaceAll('"', '""')}"`;
}

/**
 * A server process on a fresh database, and a second session on it (`holder`, not yet connected)
 * that takes the locks a test needs; all stopped and dropped after the test.
 */
async function serverWithHolder(t: TestContext): Promise<{ holder: pg.Client; api: ServerProcess }> {
  const server = await startPostgres();
  const db = await server.freshDatabase();
  const dir = tempDir();
  const holder = new pg.Client({ connectionString: db.url });
  let api: ServerProcess | undefined;
  t.after(async () => {
    await api?.kill("SIGKILL");
    await holder.end().catch(() => {});
    await db.drop();
    dir.remove();
  });
  api = await spawnServer({ dataDir: dir.path, env: { KLEN_DATABASE_URL: db.url } });
  return { holder, api };
}

// A deadlock between a request's transaction and another session's: PostgreSQL rolls one of
// them back (SQLSTATE 40P01), and when that is the request's, the server runs the transaction
// again instead of answering 503. The call ends once, with one `call.ended`.
test("PostgreSQL deadlock on a request's transaction: run again, one transition, one event", async (t) => {
  const { holder, api } = await serverWithHolder(t);
  const { agentId } = await setupAccount(api.api);
  const call = await api.api.post("/v1/calls", {
    agent_id: agentId,
    type: "inbound",
    phone_number: "+15551234567",
  });
  assert.equal(call.status, 201);
  assert.equal((await api.api.post(`/v1/calls/${call.body.id}/start`, {})).status, 200);
  const account = (await api.api.get("/v1/account")).body.id;

  await holder.connect();
  await holder.query("BEGIN");
  // The request locks its call, then stores its Idempotency-Key, which this session has written
  // and not committed: the request waits for this session.
  await holder.query(
    `INSERT INTO idempotency_keys (account_id, key, method, path, request_hash, status_code, response_body, created_at)
     VALUES ($1, 'end-once', 'POST', '/', '', 200, '{}', 0)`,
    [account],
  );
  const ending = api.api.post(`/v1/calls/${call.body.id}/end`, {}, { "idempotency-key": "end-once" });
  await waitFor(
    "the request to wait for this session's key",
    async () =>
      Number(
        (
          await holder.query(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
          )
        ).rows[0].n,
      ) === 1,
    10_000,
  );
  // Now this session wants the call the request holds: a deadlock. The request has waited longer,
  // so its deadlock_timeout runs out first and PostgreSQL rolls its transaction back.
  await holder.query("SELECT id FROM calls WHERE id = $1 FOR UPDATE", [call.body.id]);
  await holder.query("ROLLBACK");
  const ended = await ending;
  assert.equal(ended.status, 200, JSON.stringify(ended.body));
  assert.equal(ended.body.status, "completed");
  const events = await api.api.get(`/v1/events?call_id=${call.body.id}`);
  assert.deepEqual(
    events.body.data.map((e: { event_type: string }) => e.event_type),
    ["call.ended", "call.started"],
  );
});

test("PostgreSQL that takes no writes (read-only, as a standby after a failover): writes and /healthz are 503 on the api and the worker; 200 once it takes writes again", async (t) => {
  const server = await startPostgres({ own: true }); // this test makes it read-only
  const db = await server.freshDatabase();
  const dir = tempDir();
  const admin = new pg.Client({ connectionString: db.url });
  const procs: ServerProcess[] = [];
  t.after(async () => {
    for (const p of procs) await p.kill("SIGKILL");
    await admin.end().catch(() => {});
    await server.stop();
    dir.remove();
  });
  const env = { KLEN_DATABASE_URL: db.url };
  const api = await spawnServer({ dataDir: dir.path, role: "api", env });
  procs.push(api);
  const workerPort = await freePort();
  procs.push(
    await spawnServer({
      dataDir: dir.path,
      role: "worker",
      env: { ...env, KLEN_WORKER_PORT: String(workerPort) },
    }),
  );
  const health = async (url: string) => {
    const r = await fetch(`${url}/healthz`);
    return {
      status: r.status,
      body: (await r.json()) as { ok?: boolean; error?: { code: string; message: string } },
    };
  };
  const workerUrl = `http://127.0.0.1:${workerPort}`;
  assert.equal((await health(api.url)).status, 200);
  await waitFor(
    "the worker's port",
    async () => (await health(workerUrl).catch(() => undefined))?.status === 200,
  );

  await admin.connect();
  await admin.query("SET default_transaction_read_only = off"); // this session still writes
  await admin.query("ALTER SYSTEM SET default_transaction_read_only = on");
  await admin.query("SELECT pg_reload_conf()");
  for (const url of [api.url, workerUrl]) {
    const h = await waitFor(`${url}/healthz to say the database takes no writes`, async () => {
      const r = await health(url);
      return r.status === 503 ? r : undefined;
    });
    assert.equal(h.body.error?.code, "database_unavailable");
    assert.match(h.body.error?.message ?? "", /read-only/);
  }
  const refused = await api.api.post("/v1/agents", { name: "Read-only" });
  assert.equal(refused.status, 503, JSON.stringify(refused.body));
  assert.equal(refused.body.error.code, "database_unavailable");

  await admin.query("ALTER SYSTEM RESET default_transaction_read_only");
  await admin.query("SELECT pg_reload_conf()");
  for (const url of [api.url, workerUrl])
    await waitFor(`${url}/healthz to be 200 again`, async () => (await health(url)).status === 200);
  assert.equal((await api.api.post("/v1/agents", { name: "Writable" })).status, 201);
});

// A worker whose claims get no answer (another session holds the deliveries table) delivers
// nothing, though the database answers reads: /healthz says so while it lasts, not only after.
test("PostgreSQL: a lock that leaves the dispatcher's claims unanswered makes /healthz 503 while it is held", async (t) => {
  const { holder, api } = await serverWithHolder(t);
  await setupAccount(api.api);
  const health = async () => {
    const r = await fetch(`${api.url}/healthz`);
    return { status: r.status, body: (await r.json()) as { error?: { code: string; message: string } } };
  };
  assert.equal((await health()).status, 200);
  await holder.connect();
  await holder.query("BEGIN");
  await holder.query("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE");
  const unhealthy = await waitFor(
    "/healthz 503 while the claims wait",
    async () => {
      const h = await health();
      return h.status === 503 ? h : undefined;
    },
    30_000,
    200,
  );
  assert.equal(unhealthy.body.error?.code, "unhealthy");
  assert.match(
    unhealthy.body.error?.message ?? "",
    /dispatcher has had no answer from the database for \d+ s/,
  );
  await holder.query("COMMIT");
  await waitFor("/healthz 200 again", async () => (await health()).status === 200, 30_000, 200);
});
