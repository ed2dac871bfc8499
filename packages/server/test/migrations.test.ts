import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, describe, type TestContext, test } from "node:test";
import { sql } from "kysely";
import { claimDue } from "../src/delivery/claim.js";
import { migrate, SchemaTooNewError } from "../src/storage/migrate.js";
import { type MigrationDialect, migrations } from "../src/storage/migrations.js";
import { openStore } from "../src/storage/store.js";
import { type Backend, backends } from "./helpers/backends.js";
import { stopPostgres } from "./helpers/postgres.js";

after(() => stopPostgres());

const DIALECTS: MigrationDialect[] = [
  { serial: "INTEGER PRIMARY KEY AUTOINCREMENT", bigint: "INTEGER", name: "sqlite" },
  { serial: "BIGSERIAL PRIMARY KEY", bigint: "BIGINT", name: "postgres" },
];

/**
 * What each migration's SQL was when it was released (sha256, first 16 hex digits; SQLite, then
 * PostgreSQL). A database records a migration by its number only, so one changed after release
 * never reaches the databases that ran it (migration 14 did that once: 16 repairs it). A new
 * migration adds its line here; an old line never changes.
 */
const RELEASED: Record<number, string> = {
  1: "dab41f4592e6af70 5d6cad64531222ea",
  2: "1648e197c2db2337 0dfb6af9ebfd0a61",
  3: "5d77a44a34048fb3 b70b6bebd8efbe56",
  4: "87e0e8d46282965d 87e0e8d46282965d",
  5: "a38b897494af2d74 a02036dc85ee12d2",
  6: "d3c83254aa2ac945 d3c83254aa2ac945",
  7: "1e1974aee91b3581 1e1974aee91b3581",
  8: "c32f6aa72918cae9 c32f6aa72918cae9",
  9: "b88f894c67194b68 b88f894c67194b68",
  10: "5a198bdbd5226724 5a198bdbd5226724",
  11: "089d7eb1af0adc5a 089d7eb1af0adc5a",
  12: "d377d1b31ec8bde7 b7c93ec2f90e5eca",
  13: "2fb513f68e036ad3 2fb513f68e036ad3",
  14: "2fc7500bc4450593 e2c99b13cad88852",
  15: "de81f14044a28d60 57f3a14bc7b98b36",
  16: "f14df39c28c78091 589722b8fd1ce1aa",
  17: "109914e1b1d8253b 0a77351a88e1b5cf",
  18: "df9d7a94bf337818 c9b9edb62b6d7fd8",
  19: "827ed91581389254 827ed91581389254",
  20: "8a530e854f1f964e 8a530e854f1f964e",
  21: "ecc8a196e55497b2 41221a43048065e7",
  22: "16c4b0a8b50d4e6b 6dc534106f61ba79",
};

test("released migrations are never edited, and every migration is listed as released", () => {
  // Migration 16's SQLite text depends on the columns found; the hash is of the whole-14 case.
  const columns = new Map([["deliveries", new Set(["leased_at"])]]);
  const now = Object.fromEntries(
    migrations.map((m) => [
      m.id,
      DIALECTS.map((d) => createHash("sha256").update(m.sql(d, columns)).digest("hex").slice(0, 16)).join(
        " ",
      ),
    ]),
  );
  assert.deepEqual(now, Object.fromEntries(Object.entries(RELEASED).map(([k, v]) => [k, v])));
});

/** The migrations a database at 14 is then given. */
const after14 = () => migrations.map((m) => m.id).filter((id) => id > 14);

/** A store on a fresh empty database of `backend`, closed and dropped after the test. */
async function freshStore(t: TestContext, backend: Backend) {
  const fresh = await backend.fresh();
  const store = await openStore(fresh.databaseUrl);
  t.after(async () => {
    await store.close();
    await fresh.cleanup();
  });
  return store;
}

for (const backend of backends()) {
  describe(`migrations: ${backend.name}`, () => {
    test("a database migrated by a newer version is refused, and left as it was", async (t) => {
      const store = await freshStore(t, backend);
      await migrate(store);
      const newest = Math.max(...migrations.map((m) => m.id));
      await sql`INSERT INTO klen_migrations (id, name, applied_at) VALUES (${newest + 1}, 'from_the_future', 0)`.execute(
        store.db,
      );
      await assert.rejects(migrate(store), (err: unknown) => {
        assert.ok(err instanceof SchemaTooNewError);
        assert.match(err.message, new RegExp(`migration ${newest + 1}; this version knows up to ${newest}`));
        return true;
      });
    });

    test("a migration 14 made without leased_at (as one commit made it) is repaired by 16: claims work again", async (t) => {
      const store = await freshStore(t, backend);
      await migrate(store, 13);
      // 14 as that commit made it: the trigger, reading updated_at, and no leased_at column.
      const row = `NEW.id, NEW.attempt_count, OLD.updated_at, '', '{}', NULL, NULL, 0, 'lease_expired: x'`;
      const insert = `INSERT INTO attempts (delivery_id, number, started_at, url, request_headers, status_code, response_body, duration_ms, error)`;
      if (backend.name === "sqlite")
        await sql
          .raw(`CREATE TRIGGER deliveries_lease_expired AFTER UPDATE OF claim_token ON deliveries
            FOR EACH ROW WHEN OLD.leased_until IS NOT NULL BEGIN ${insert} VALUES (${row}); END`)
          .execute(store.db);
      else {
        await sql
          .raw(`CREATE FUNCTION klen_log_lease_expired() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN ${insert} VALUES (${row}); RETURN NULL; END $$`)
          .execute(store.db);
        await sql
          .raw(`CREATE TRIGGER deliveries_lease_expired AFTER UPDATE OF claim_token ON deliveries
            FOR EACH ROW WHEN (OLD.leased_until IS NOT NULL) EXECUTE FUNCTION klen_log_lease_expired()`)
          .execute(store.db);
      }
      await sql`INSERT INTO klen_migrations (id, name, applied_at) VALUES (14, 'lease_expired_attempts', 0)`.execute(
        store.db,
      );
      // The claim fails on such a database (on PostgreSQL it may name first a column of a later
      // migration the database has yet to run, 18's).
      await assert.rejects(
        claimDue(store, { now: Date.now(), limit: 1, leaseMs: 1_000, exclude: [] }),
        /leased_at|resume_at|manual_attempts/,
        "the claim fails on such a database",
      );

      assert.deepEqual(await migrate(store), after14());
      assert.deepEqual(await claimDue(store, { now: Date.now(), limit: 1, leaseMs: 1_000, exclude: [] }), []);
      // The trigger is 14's own again: it reads leased_at.
      const body =
        backend.name === "sqlite"
          ? (
              await sql<{
                s: string;
              }>`SELECT sql AS s FROM sqlite_master WHERE name = 'deliveries_lease_expired'`.execute(store.db)
            ).rows[0]?.s
          : (
              await sql<{
                s: string;
              }>`SELECT prosrc AS s FROM pg_proc WHERE proname = 'klen_log_lease_expired'`.execute(store.db)
            ).rows[0]?.s;
      assert.match(body ?? "", /leased_at/);
    });
  });
}

describe("migrations: postgres, beside a long transaction", () => {
  test("a migration waiting for a table's lock steps aside: writes of that table go on meanwhile, and it runs once the transaction ends", async (t) => {
    const { postgresBackend } = await import("./helpers/backends.js");
    const pg = (await import("pg")).default;
    const fresh = await postgresBackend.fresh();
    const store = await openStore(fresh.databaseUrl);
    const holder = new pg.Client({ connectionString: fresh.databaseUrl });
    const writer = new pg.Client({ connectionString: fresh.databaseUrl });
    const watcher = new pg.Client({ connectionString: fresh.databaseUrl });
    for (const c of [holder, writer, watcher]) {
      c.on("error", () => {});
      await c.connect();
    }
    t.after(async () => {
      await holder.query("ROLLBACK").catch(() => {});
      for (const c of [holder, writer, watcher]) await c.end().catch(() => {});
      await store.close();
      await fresh.cleanup();
    });
    await migrate(store, 14);
    // A transaction that wrote to deliveries and stays open: migration 15's CREATE INDEX waits for it.
    await holder.query("BEGIN");
    await holder.query("UPDATE deliveries SET updated_at = 0 WHERE false");
    let finished = false;
    const migrating = migrate(store).then((r) => {
      finished = true;
      return r;
    });
    // Until the migration is seen waiting for its lock (the only session of this database that can).
    for (;;) {
      const w = await watcher.query(
        "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
      );
      if (w.rowCount) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    // Another session's write queues behind the waiting DDL; without lock_timeout it would wait
    // until the holder ends (and this test would wait for ever).
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      writer.query("UPDATE deliveries SET updated_at = 0 WHERE false"),
      new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error("the write still waits behind the migration after 30 s")),
          30_000,
        );
      }),
    ]).finally(() => clearTimeout(timer));
    assert.equal(finished, false, "the migration still waits for the holder");
    await holder.query("COMMIT");
    assert.deepEqual(await migrating, after14());
  });
});
