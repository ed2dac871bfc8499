/**
 * PostgreSQL keeps the hot-path statements prepared on each pooled connection
 * (storage/statement-names.ts); a prepared statement that stops fitting its connection costs its
 * transaction one more run, never a failed request.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, test } from "node:test";
import { sql } from "kysely";
import pg from "pg";
import { openPostgres } from "../src/storage/postgres/index.js";
import { prepared } from "../src/storage/prepared.js";
import { retryConflicts } from "../src/storage/retry.js";
import { preparedStatementMiss, statementName } from "../src/storage/statement-names.js";
import { isDatabaseUnavailable } from "../src/storage/store.js";
import type { Db } from "../src/storage/types.js";
import { startPostgres, stopPostgres } from "./helpers/postgres.js";

after(() => stopPostgres());

// A hot-path statement of this test's own, on a table every database has.
const setting = prepared((db, p: Record<"name", never>) =>
  db.selectFrom("settings").selectAll().where("name", "=", p.name),
);

async function planCacheMode(db: Db): Promise<string | undefined> {
  return (await sql<{ plan_cache_mode: string }>`SHOW plan_cache_mode`.execute(db)).rows[0]?.plan_cache_mode;
}

/** The text of the statement prepared on this connection (one only). */
async function preparedText(db: Db): Promise<string | undefined> {
  const r = await sql<{ statement: string }>`SELECT statement FROM pg_prepared_statements`.execute(db);
  return r.rows[0]?.statement;
}

async function preparedHere(db: Db): Promise<string[]> {
  const r = await sql<{ name: string }>`SELECT name FROM pg_prepared_statements ORDER BY name`.execute(db);
  return r.rows.map((x) => x.name);
}

/** One connection, so that every statement below runs where the last one did. */
async function oneConnectionStore(url: string) {
  const store = openPostgres(url, { poolSize: 1 });
  await store.execScript(
    "CREATE TABLE settings (name text PRIMARY KEY, value text NOT NULL, created_at bigint NOT NULL)",
  );
  await sql`INSERT INTO settings VALUES ('a', 'one', 1)`.execute(store.db);
  return store;
}

test("postgres: a hot-path statement is prepared once on its connection, and answers as before", async () => {
  const db = await (await startPostgres()).freshDatabase();
  const store = await oneConnectionStore(db.url);
  try {
    assert.deepEqual(await preparedHere(store.db), []);
    for (let i = 0; i < 3; i++)
      assert.deepEqual(await setting(store.db, store.caps, { name: "a" }), [
        { name: "a", value: "one", created_at: 1 },
      ]);
    const names = await preparedHere(store.db);
    assert.equal(names.length, 1);
    // Named by its text, so that one name means one statement in every process (behind a pooler a
    // server connection may hold another process's): the same text, the same name.
    const sql = (await preparedText(store.db)) ?? "";
    assert.equal(names[0], `klen_${createHash("sha256").update(sql).digest("hex").slice(0, 32)}`);
    assert.equal(statementName(sql), names[0]);
    // Planned for its values at each run: no generic plan made on a small table outlives its growth.
    const mode = await planCacheMode(store.db);
    assert.equal(mode, "force_custom_plan");
  } finally {
    await store.close();
    await db.drop();
  }
});

/** A one-connection store whose prepared `setting` read had its table changed since (a migration). */
async function alteredUnderPrepared() {
  const db = await (await startPostgres()).freshDatabase();
  const store = await oneConnectionStore(db.url);
  await setting(store.db, store.caps, { name: "a" });
  const other = new pg.Client({ connectionString: db.url });
  await other.connect();
  await other.query("ALTER TABLE settings ADD COLUMN note text");
  await other.end();
  return {
    store,
    async cleanup() {
      await store.close();
      await db.drop();
    },
  };
}

test("postgres: a table changed under a prepared SELECT * (another process's migration) costs one more run of the transaction", async () => {
  const { store, cleanup } = await alteredUnderPrepared();
  try {
    const errors: unknown[] = [];
    const rows = await retryConflicts(() =>
      store.db
        .transaction()
        .execute((trx) => setting(trx, store.caps, { name: "a" }))
        .catch((err: unknown) => {
          errors.push(err);
          throw err;
        }),
    );
    assert.deepEqual(rows, [{ name: "a", value: "one", created_at: 1, note: null }]);
    assert.equal(errors.length, 1, "one run refused, the next one answered");
    assert.equal(preparedStatementMiss(errors[0]), "stale");
    // From then on it runs unprepared on that connection, with the new column.
    assert.deepEqual(await setting(store.db, store.caps, { name: "a" }), rows);
  } finally {
    await cleanup();
  }
});

test("postgres: outside a transaction, a statement that stopped fitting is sent again at once, unprepared (a claim's reads after its commit)", async () => {
  const { store, cleanup } = await alteredUnderPrepared();
  try {
    assert.deepEqual(await setting(store.db, store.caps, { name: "a" }), [
      { name: "a", value: "one", created_at: 1, note: null },
    ]);
    // Lost from the connection: the same, and names are off for the pool from then on.
    const fresh = prepared((q, p: Record<"name", never>) =>
      q.selectFrom("settings").select(["name", "value"]).where("name", "=", p.name),
    );
    await fresh(store.db, store.caps, { name: "a" });
    await sql`DEALLOCATE ALL`.execute(store.db);
    assert.deepEqual(await fresh(store.db, store.caps, { name: "a" }), [{ name: "a", value: "one" }]);
    assert.deepEqual(await preparedHere(store.db), []);
  } finally {
    await cleanup();
  }
});

test("postgres: a connection that lost its prepared statements (a pooler's other server connection, DISCARD ALL) turns them off and runs the transaction again", async () => {
  const db = await (await startPostgres()).freshDatabase();
  const store = await oneConnectionStore(db.url);
  try {
    await setting(store.db, store.caps, { name: "a" });
    assert.equal((await preparedHere(store.db)).length, 1);
    await sql`DEALLOCATE ALL`.execute(store.db);
    let runs = 0;
    const rows = await retryConflicts(() => {
      runs++;
      return store.db.transaction().execute((trx) => setting(trx, store.caps, { name: "a" }));
    });
    assert.deepEqual(rows, [{ name: "a", value: "one", created_at: 1 }]);
    assert.equal(runs, 2);
    // Names are off for the pool: nothing is prepared again.
    await setting(store.db, store.caps, { name: "a" });
    assert.deepEqual(await preparedHere(store.db), []);
  } finally {
    await store.close();
    await db.drop();
  }
});

test("a prepared statement's miss is told from other errors, and answered as unavailable (503), not as a bad query", () => {
  const misses: Array<[Record<string, string>, string]> = [
    [{ code: "26000", message: 'prepared statement "klen_3" does not exist' }, "missing"],
    [{ code: "42P05", message: 'prepared statement "klen_3" already exists' }, "missing"],
    [{ code: "0A000", message: "cached plan must not change result type" }, "stale"],
  ];
  for (const [err, kind] of misses) {
    assert.equal(preparedStatementMiss(Object.assign(new Error(err.message), err)), kind);
    assert.equal(isDatabaseUnavailable(Object.assign(new Error(err.message), err)), true);
  }
  const other = Object.assign(new Error("LOCK TABLE is not supported here"), { code: "0A000" });
  assert.equal(preparedStatementMiss(other), undefined);
  assert.equal(isDatabaseUnavailable(other), false);
});
