import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import pg from "pg";
import { ConfigError, loadConfig } from "../src/config.js";
import { isDatabaseUnavailable } from "../src/storage/store.js";
import { startPostgres, stopPostgres } from "./helpers/postgres.js";
import { CLI } from "./helpers/server.js";

after(() => stopPostgres());

// The settings and error classes the scale-out design leans on: a lease longer than an attempt,
// and connection failures told apart from rejected queries (503 rather than 500).

test("KLEN_LEASE defaults to the delivery timeout + 30 s and must exceed the timeout", () => {
  assert.equal(loadConfig({ KLEN_DELIVERY_TIMEOUT: "15s" }).leaseMs, 45_000);
  assert.equal(loadConfig({ KLEN_DELIVERY_TIMEOUT: "15s", KLEN_LEASE: "20s" }).leaseMs, 20_000);
  for (const lease of ["15s", "10s"]) {
    assert.throws(
      () => loadConfig({ KLEN_DELIVERY_TIMEOUT: "15s", KLEN_LEASE: lease }),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.variable === "KLEN_LEASE" &&
        /KLEN_DELIVERY_TIMEOUT/.test(err.message),
    );
  }
  // A lease that only looks long enough against the default timeout is refused too.
  assert.throws(() => loadConfig({ KLEN_LEASE: "10s" }), /KLEN_LEASE/);
});

test("the CLI refuses to start with a lease not longer than the timeout, naming KLEN_LEASE", () => {
  const r = spawnSync(process.execPath, [CLI, "migrate"], {
    env: {
      ...process.env,
      KLEN_DELIVERY_TIMEOUT: "5s",
      KLEN_LEASE: "5s",
      KLEN_DATABASE_URL: "sqlite::memory:",
    },
    encoding: "utf8",
  });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /invalid configuration: KLEN_LEASE: must be longer than KLEN_DELIVERY_TIMEOUT/);
});

test("PostgreSQL on a Unix socket that is not there is unavailable; a missing file is not", async () => {
  const dir = mkdtempSync(join(tmpdir(), "klen-nosock-"));
  try {
    // What pg itself raises for `postgres://user@/db?host=<dir>` when no server listens there.
    const client = new pg.Client({ host: dir, user: "postgres", database: "klen" });
    const err = await client.connect().then(
      () => assert.fail("connected to a socket that does not exist"),
      (e: unknown) => e,
    );
    assert.equal((err as { code?: string }).code, "ENOENT");
    assert.equal(isDatabaseUnavailable(err), true, String(err));
    const missing = await readFile(join(dir, "blb_missing")).catch((e: unknown) => e);
    assert.equal((missing as { code?: string }).code, "ENOENT");
    assert.equal(isDatabaseUnavailable(missing), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("connection failures are classified as database unavailable, query errors are not", () => {
  const unavailable = [
    Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED" }),
    Object.assign(new Error("terminating connection due to administrator command"), { code: "57P01" }),
    Object.assign(new Error("the database system is starting up"), { code: "57P03" }),
    Object.assign(new Error("connection failure"), { code: "08006" }),
    new Error("Connection terminated unexpectedly"),
    new Error("timeout exceeded when trying to connect"),
    new Error("wrapped", { cause: Object.assign(new Error("reset"), { code: "ECONNRESET" }) }),
    Object.assign(new Error("database is locked"), { code: "SQLITE_BUSY" }),
    Object.assign(new Error("canceling statement due to statement timeout"), { code: "57014" }),
    Object.assign(new Error("canceling statement due to lock timeout"), { code: "55P03" }),
    Object.assign(new Error("deadlock detected"), { code: "40P01" }),
    Object.assign(new Error("could not serialize access"), { code: "40001" }),
  ];
  for (const e of unavailable) assert.equal(isDatabaseUnavailable(e), true, e.message);
  const other = [
    Object.assign(new Error("duplicate key value"), { code: "23505" }),
    Object.assign(new Error("syntax error"), { code: "42601" }),
    Object.assign(new Error("UNIQUE constraint failed"), { code: "SQLITE_CONSTRAINT_UNIQUE" }),
    new Error("something else"),
    undefined,
    "text",
  ];
  for (const e of other) assert.equal(isDatabaseUnavailable(e), false, String(e));
});

test("postgres: a session the server ends for idling (idle_session_timeout, idle_in_transaction_session_timeout) is unavailable, not a query error", async () => {
  const server = await startPostgres();
  const db = await server.freshDatabase();
  try {
    for (const [setting, begin, code] of [
      ["idle_session_timeout", false, "57P05"],
      ["idle_in_transaction_session_timeout", true, "25P03"],
    ] as const) {
      // The error PostgreSQL sends when it ends the session, as pg raises it on the connection.
      const client = new pg.Client({ connectionString: db.url });
      const ended = new Promise<unknown>((resolve) => client.on("error", resolve));
      await client.connect();
      await client.query(`SET ${setting} = '100ms'`);
      if (begin) await client.query("BEGIN");
      const err = await ended;
      await client.end().catch(() => {});
      assert.equal((err as { code?: string }).code, code, String(err));
      assert.equal(isDatabaseUnavailable(err), true, `${setting}: ${String(err)}`);
    }
  } finally {
    await db.drop();
  }
});

test("serve that reaches PostgreSQL but is refused (no such database, a wrong user) says which database, without its password", async () => {
  const server = await startPostgres();
  const url = new URL(server.adminUrl);
  const tmp = mkdtempSync(join(tmpdir(), "klen-refused-"));
  try {
    const cases: Array<[string, string, RegExp]> = [
      [
        url.username,
        `/klen_nodb_${process.pid}`,
        new RegExp(`database "klen_nodb_${process.pid}" does not exist`),
      ],
      ["klen_nouser", url.pathname, /role "klen_nouser" does not exist/],
    ];
    for (const [user, path, why] of cases) {
      const target = new URL(url);
      target.username = user;
      target.pathname = path;
      target.password = "S3cretPw";
      const r = spawnSync(process.execPath, [CLI, "serve"], {
        env: { ...process.env, KLEN_DATABASE_URL: target.toString(), KLEN_DATA_DIR: tmp, PORT: "0" },
        encoding: "utf8",
        timeout: 30_000,
      });
      assert.equal(r.status, 1, r.stderr);
      assert.match(
        r.stderr,
        /cannot open the database postgres:\/\/[^ ]*\*\*\*@[^ ]* \(KLEN_DATABASE_URL\): /,
      );
      assert.match(r.stderr, why);
      assert.doesNotMatch(r.stderr + r.stdout, /S3cretPw/);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
