import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, describe, test } from "node:test";
import Database from "better-sqlite3";
import { sql } from "kysely";
import pg from "pg";
import {
  accountByKey,
  createAccount,
  createDefaultAccount,
  ensureAccountForKey,
} from "../src/accounts/accounts.js";
import { signingKey } from "../src/blobs/key.js";
import { migrate } from "../src/storage/migrate.js";
import { migrations } from "../src/storage/migrations.js";
import { isDatabaseUnavailable, openStore } from "../src/storage/store.js";
import { apiClient } from "./helpers/api.js";
import { backends, postgresBackend } from "./helpers/backends.js";
import { stopPostgres } from "./helpers/postgres.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

after(() => stopPostgres());

test("KLEN_API_KEY joins the default account a first start created, even renamed, and never another account named default", async () => {
  const dir = tempDir();
  const store = await openStore(`sqlite:${dir.path}/klen.db`);
  try {
    await migrate(store);
    // The first start without KLEN_API_KEY: the default account and its printed key.
    const first = await store.db.transaction().execute((trx) => createDefaultAccount(trx));
    // Renamed by its owner, and a tenant calling itself "default".
    await store.db.updateTable("accounts").set({ name: "Acme" }).where("id", "=", first.account.id).execute();
    const tenant = await store.db.transaction().execute((trx) => createAccount(trx, "default"));
    const joined = await ensureAccountForKey(store, "dev_key_0123456789");
    assert.equal(joined.id, first.account.id);
    assert.equal((await accountByKey(store.db, "dev_key_0123456789"))?.id, first.account.id);
    assert.equal(
      (await accountByKey(store.db, first.apiKey))?.id,
      first.account.id,
      "the printed key still works",
    );
    assert.equal((await accountByKey(store.db, tenant.apiKey))?.id, tenant.account.id);
    // Idempotent: the same key again changes nothing.
    assert.equal((await ensureAccountForKey(store, "dev_key_0123456789")).id, first.account.id);
    const accounts = await store.db.selectFrom("accounts").select("id").execute();
    assert.equal(accounts.length, 2);
  } finally {
    await store.close();
    dir.remove();
  }
});

test("on a database from before the record, migration 13 records the account a first start made, and only that one", async () => {
  const dir = tempDir();
  const store = await openStore(`sqlite:${dir.path}/klen.db`);
  try {
    await migrate(store, 12);
    // A first start: the URL-signing key, then the default account; later a tenant named default.
    await signingKey(store, store.db);
    const old = await store.db.transaction().execute((trx) => createAccount(trx, "default"));
    await store.db.transaction().execute((trx) => createAccount(trx, "default"));
    assert.deepEqual(await migrate(store, 13), [13]);
    // The later migrations, which a start applies before it looks at KLEN_API_KEY.
    await migrate(store);
    // Renamed since: still the default, by its record.
    await store.db.updateTable("accounts").set({ name: "Acme" }).where("id", "=", old.account.id).execute();
    assert.equal((await ensureAccountForKey(store, "dev_key_0123456789")).id, old.account.id);
  } finally {
    await store.close();
    dir.remove();
  }
  // `accounts create` on a new database, a start later (its signing key), the tenant renamed
  // "default" before the upgrade: not the default; the key gets an account of its own.
  const other = tempDir();
  const second = await openStore(`sqlite:${other.path}/klen.db`);
  try {
    await migrate(second, 12);
    const tenant = await second.db.transaction().execute((trx) => createAccount(trx, "Tenant A"));
    // "Later" as the record tells it: the key's created_at is a millisecond count, and one made
    // in the account's own millisecond would read as made before it (a start's order).
    await nextMillisecond();
    await signingKey(second, second.db);
    await second.db
      .updateTable("accounts")
      .set({ name: "default" })
      .where("id", "=", tenant.account.id)
      .execute();
    assert.deepEqual(await migrate(second, 13), [13]);
    await migrate(second);
    const operator = await ensureAccountForKey(second, "dev_key_0123456789");
    assert.notEqual(operator.id, tenant.account.id);
  } finally {
    await second.close();
    other.remove();
  }
});

test('accounts made only with `accounts create`: a tenant renamed "default" never gets KLEN_API_KEY; a new default account does', async () => {
  const dir = tempDir();
  const store = await openStore(`sqlite:${dir.path}/klen.db`);
  try {
    await migrate(store);
    const tenant = await store.db.transaction().execute((trx) => createAccount(trx, "Tenant A"));
    await store.db
      .updateTable("accounts")
      .set({ name: "default" })
      .where("id", "=", tenant.account.id)
      .execute();
    const operator = await ensureAccountForKey(store, "dev_key_0123456789");
    assert.notEqual(operator.id, tenant.account.id);
    assert.equal(operator.name, "default");
    const tenantKeys = await store.db
      .selectFrom("api_keys")
      .select("id")
      .where("account_id", "=", tenant.account.id)
      .execute();
    assert.equal(tenantKeys.length, 1, "the tenant's own key only");
    // And it stays the default from now on, by its record.
    assert.equal((await ensureAccountForKey(store, "other_dev_key_0123456789")).id, operator.id);
  } finally {
    await store.close();
    dir.remove();
  }
});

test("KLEN_API_KEY on an empty database creates the default account", async () => {
  const dir = tempDir();
  const store = await openStore(`sqlite:${dir.path}/klen.db`);
  try {
    await migrate(store);
    const a = await ensureAccountForKey(store, "dev_key_0123456789");
    assert.equal(a.name, "default");
    assert.equal((await accountByKey(store.db, "dev_key_0123456789"))?.id, a.id);
  } finally {
    await store.close();
    dir.remove();
  }
});

test("a short KLEN_API_KEY outside dev mode is accepted with a warning at start; in dev mode, or long, no warning", async () => {
  const warning = /KLEN_API_KEY is shorter than 16 characters/;
  const starts = [
    { apiKey: "dev_key", dev: "0", warns: true },
    { apiKey: "dev_key", dev: "1", warns: false },
    { apiKey: "klen_a_long_operator_key_0123", dev: "0", warns: false },
  ];
  for (const s of starts) {
    const dir = tempDir();
    const server = await spawnServer({ dataDir: dir.path, apiKey: s.apiKey, env: { KLEN_DEV: s.dev } });
    try {
      // The key works either way.
      assert.equal((await server.api.get("/v1/account")).status, 200);
      assert.equal(
        warning.test(server.output()),
        s.warns,
        `${s.apiKey} with KLEN_DEV=${s.dev}: ${server.output()}`,
      );
    } finally {
      await server.kill();
      dir.remove();
    }
  }
});

test("a start outside dev mode warns of the enabled endpoints whose URLs only dev mode allows", async () => {
  const dir = tempDir();
  const dev = await spawnServer({ dataDir: dir.path });
  let plain: ServerProcess | undefined;
  try {
    // No event is made: nothing is ever sent to these.
    const made = [];
    for (const body of [
      { url: "http://127.0.0.1:9/hook" },
      { url: "https://[::1]:9/other" },
      { url: "https://localhost:9/named" },
      { url: "http://127.0.0.1:9/off", disabled: true },
    ]) {
      const r = await dev.api.post("/v1/endpoints", body);
      assert.equal(r.status, 201);
      made.push(r.body.id as string);
    }
    await dev.kill();
    plain = await spawnServer({ dataDir: dir.path, env: { KLEN_DEV: "0" } });
    const server = plain;
    const line = await waitFor("the warning", () =>
      server
        .output()
        .split("\n")
        .find((l) => l.includes("only KLEN_DEV allows")),
    );
    const entry = JSON.parse(line);
    assert.equal(entry.endpoints, 3, "the disabled one left out");
    assert.deepEqual([...entry.examples].sort(), made.slice(0, 3).sort());
  } finally {
    await dev.kill();
    await plain?.kill();
    dir.remove();
  }
});

/**
 * Starts `n` processes at the same moment on one fresh database, each running the start-up
 * bootstrap (`KLEN_API_KEY` given, or the first start's account), and returns what each printed.
 */
async function startAtOnce(databaseUrl: string, n: number, key: string | undefined): Promise<string[]> {
  const at = Date.now() + 2_000;
  const mod = (p: string) => JSON.stringify(new URL(p, import.meta.url).href);
  const script = `
    const { openStore } = await import(${mod("../src/storage/store.js")});
    const { createFirstAccount, ensureAccountForKey } = await import(${mod("../src/accounts/accounts.js")});
    const store = await openStore(${JSON.stringify(databaseUrl)});
    // All at the same moment, once every process has loaded.
    await new Promise((r) => setTimeout(r, ${at} - Date.now()));
    const key = ${JSON.stringify(key ?? null)};
    const out = key ? String((await ensureAccountForKey(store, key)).id) : String(await createFirstAccount(store) ?? "");
    await store.close();
    process.stdout.write(out);`;
  const runs = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
          const p = spawn(process.execPath, ["--input-type=module", "-e", script]);
          let out = "";
          let err = "";
          p.stdout.on("data", (d) => (out += d));
          p.stderr.on("data", (d) => (err += d));
          p.on("close", (code) => resolve({ code, out, err }));
        }),
    ),
  );
  for (const r of runs) assert.equal(r.code, 0, r.err);
  return runs.map((r) => r.out);
}

for (const backend of backends()) {
  describe(`processes starting at once on one fresh database (${backend.name})`, () => {
    for (const withKey of [true, false]) {
      test(
        withKey
          ? "with one KLEN_API_KEY: all come up, on one account"
          : "without KLEN_API_KEY: one account, its key printed once",
        async () => {
          const db = await backend.fresh();
          const store = await openStore(db.databaseUrl);
          try {
            await migrate(store);
            const outs = await startAtOnce(db.databaseUrl, 6, withKey ? "dev_key_0123456789" : undefined);
            if (withKey) assert.equal(new Set(outs).size, 1, "one account id");
            else
              assert.equal(outs.filter((o) => o !== "").length, 1, "exactly one process created the account");
            const accounts = await store.db.selectFrom("accounts").select("id").execute();
            assert.equal(accounts.length, 1);
          } finally {
            await store.close();
            await db.cleanup();
          }
        },
      );
    }
  });
}

test("API keys: a new key works and is shown once, lists show prefixes only, a revoked key stops working, even as KLEN_API_KEY after a restart, the last one stays", async () => {
  const dir = tempDir();
  const server = await spawnServer({ dataDir: dir.path });
  let restarted: ServerProcess | undefined;
  try {
    const created = await server.api.post("/v1/api-keys", {}, { "idempotency-key": "new-key-1" });
    assert.equal(created.status, 201);
    // A replay says which key was made, not the key: it is kept nowhere but as a hash.
    const replay = await server.api.post("/v1/api-keys", {}, { "idempotency-key": "new-key-1" });
    assert.equal(replay.status, 201);
    assert.equal(replay.headers.get("idempotent-replayed"), "true");
    assert.equal(replay.body.id, created.body.id);
    assert.equal(replay.body.key, null);
    const file = new Database(`${dir.path}/klen.db`, { readonly: true });
    const stored = JSON.stringify(file.prepare("SELECT * FROM idempotency_keys").all());
    file.close();
    assert.ok(stored.includes(created.body.prefix), "the stored answer names the key");
    assert.ok(!stored.includes(created.body.key), "but does not hold it");
    assert.match(created.body.key, /^klen_sk_/);
    assert.equal(created.body.prefix, created.body.key.slice(0, 12));
    const second = apiClient(server.url, created.body.key);
    assert.equal((await second.get("/v1/account")).body.id, (await server.api.get("/v1/account")).body.id);

    const listed = (await second.get("/v1/api-keys")).body.data as Array<Record<string, unknown>>;
    assert.equal(listed.length, 2);
    assert.deepEqual(
      listed.map((k) => [k.id, k.current]),
      [
        [created.body.id, true],
        [listed[1]!.id, false],
      ],
    );
    assert.ok(!JSON.stringify(listed).includes(created.body.key), "a key is never listed whole");
    assert.ok(!JSON.stringify(listed).includes(server.apiKey));

    // Revoke the first key with the new one: it stops working at once in this process.
    const first = listed[1]!.id as number;
    const revoked = await second.del(`/v1/api-keys/${first}`);
    assert.equal(revoked.status, 200);
    assert.equal(revoked.body.deleted, true);
    assert.equal((await server.api.get("/v1/account")).status, 401);
    // The last key cannot go; another account's key id is not found.
    const last = await second.del(`/v1/api-keys/${created.body.id}`);
    assert.equal(last.status, 409);
    assert.equal(last.body.error.code, "last_api_key");
    assert.equal((await second.del(`/v1/api-keys/${first}`)).status, 404);
    assert.equal((await second.get("/v1/account")).status, 200);

    // Started again with the revoked key as KLEN_API_KEY (the environment it had), the process
    // does not add it back: it says so, and serves the account's other keys.
    await server.kill();
    restarted = await spawnServer({ dataDir: dir.path });
    assert.equal((await restarted.api.get("/v1/account")).status, 401);
    assert.match(
      restarted.output(),
      /KLEN_API_KEY, a key of account 1, was revoked \(DELETE \/v1\/api-keys\/\{id\}\) at \d{4}-\d\d-\d\dT[\d:.]+Z and is not accepted again/,
    );
    const keys = await apiClient(restarted.url, created.body.key).get("/v1/api-keys");
    assert.deepEqual(
      keys.body.data.map((k: { id: number }) => k.id),
      [created.body.id],
    );
  } finally {
    await server.kill();
    await restarted?.kill();
    dir.remove();
  }
});

for (const backend of backends()) {
  test(`${backend.name}: an operator's short KLEN_API_KEY is never listed whole, and migration 8 trims what older versions kept`, async () => {
    const db = await backend.fresh();
    const store = await openStore(db.databaseUrl);
    try {
      await migrate(store);
      const account = await ensureAccountForKey(store, "dev_key");
      const generated = await store.db.transaction().execute((trx) => createAccount(trx, "tenant"));
      const prefixes = async () =>
        (await store.db.selectFrom("api_keys").select("prefix").orderBy("id").execute()).map((r) => r.prefix);
      assert.deepEqual(await prefixes(), ["de", generated.apiKey.slice(0, 12)]);

      // A database from before: the short key kept whole, migration 8 not yet applied.
      await store.db
        .updateTable("api_keys")
        .set({ prefix: "dev_key" })
        .where("account_id", "=", account.id)
        .execute();
      await store.db
        .deleteFrom("klen_migrations" as never)
        .where("id" as never, "=", 8 as never)
        .execute();
      assert.deepEqual(await migrate(store), [8]);
      assert.deepEqual(await prefixes(), ["de", generated.apiKey.slice(0, 12)]);
    } finally {
      await store.close();
      await db.cleanup();
    }
  });
}

test("postgres: a migrating process whose lock session is killed stops migrating; the next one migrates once", async (t) => {
  const db = await postgresBackend.fresh();
  const a = await openStore(db.databaseUrl);
  const b = await openStore(db.databaseUrl);
  const locker = new pg.Client({ connectionString: db.databaseUrl });
  await locker.connect();
  // In this order: dropping the database ends every connection still open on it.
  t.after(async () => {
    await locker.end().catch(() => {});
    await a.close();
    await b.close();
    await db.cleanup();
  });
  await migrate(a, 2);
  // Migration 3 alters `deliveries`: it waits while this holds the table.
  await locker.query("BEGIN; LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE");
  const first = migrate(a).then(
    (ran) => ({ ran }),
    (err: Error) => ({ err }),
  );
  const lockHolder = async () =>
    (
      await locker.query<{ pid: number; query: string }>(
        `SELECT l.pid, a.query FROM pg_locks l JOIN pg_stat_activity a USING (pid)
         WHERE l.locktype = 'advisory' AND l.granted`,
      )
    ).rows[0];
  const holder = await waitFor(
    "the first process holds the migration lock and waits on the table",
    async () => {
      const h = await lockHolder();
      const waiting = await locker.query("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'");
      return h && waiting.rows.length > 0 ? h : undefined;
    },
  );
  // An idle-connection reaper, or idle_session_timeout, ends the lock's session.
  await locker.query("SELECT pg_terminate_backend($1)", [holder.pid]);
  const second = migrate(b);
  await waitFor("the second process takes the lock", async () => (await lockHolder())?.pid !== holder.pid);
  await locker.query("COMMIT");
  const [one, two] = await Promise.all([first, second]);
  assert.ok("err" in one, "the first process's migration ended with its session");
  assert.ok(isDatabaseUnavailable(one.err), `a connection failure, retried at start: ${one.err.message}`);
  assert.deepEqual(
    two,
    migrations.filter((m) => m.id > 2).map((m) => m.id),
    "the second ran every remaining migration",
  );
  const applied = await b.db
    .selectFrom("klen_migrations" as never)
    .select(sql<number>`count(*)`.as("n"))
    .executeTakeFirstOrThrow();
  assert.equal(Number((applied as { n: number }).n), migrations.length);
  assert.deepEqual(await migrate(a), [], "nothing left when the first process starts again");
});

/** Resolves once Date.now() has moved past the millisecond it was called in. */
async function nextMillisecond(): Promise<void> {
  const now = Date.now();
  while (Date.now() <= now) await new Promise((resolve) => setTimeout(resolve, 1));
}
