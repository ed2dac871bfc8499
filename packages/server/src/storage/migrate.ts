import { sql } from "kysely";
import { type MigrationDialect, migrations } from "./migrations.js";
import type { Store } from "./store.js";

const DIALECTS: Record<Store["caps"]["name"], MigrationDialect> = {
  sqlite: { serial: "INTEGER PRIMARY KEY AUTOINCREMENT", bigint: "INTEGER", name: "sqlite" },
  postgres: { serial: "BIGSERIAL PRIMARY KEY", bigint: "BIGINT", name: "postgres" },
};

/** PostgreSQL's lock_not_available: lock_timeout ran out. */
const LOCK_NOT_AVAILABLE = "55P03";
const LOCK_WAIT_MS = 2_000;
const LOCK_PAUSE_MS = 1_000;
/** About five minutes of trying. */
const LOCK_TRIES = 100;

/** Applies the migrations not yet applied, each in its own transaction; returns their ids. */
export async function migrate(store: Store, upTo = Number.POSITIVE_INFINITY): Promise<number[]> {
  const dialect = DIALECTS[store.caps.name];
  return store.withMigrationLock(async (exec) => {
    await exec(
      `CREATE TABLE IF NOT EXISTS klen_migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at ${dialect.bigint} NOT NULL)`,
    );
    const done = await sql<{ id: number }>`SELECT id FROM klen_migrations`.execute(store.db);
    const applied = new Set(done.rows.map((r) => Number(r.id)));
    const known = Math.max(...migrations.map((m) => m.id));
    const newer = [...applied].filter((id) => id > known).sort((a, b) => a - b);
    if (newer.length > 0) throw new SchemaTooNewError(newer, known);
    const ran: number[] = [];
    for (const m of migrations) {
      if (applied.has(m.id) || m.id > upTo) continue;
      const columns = new Map<string, Set<string>>();
      for (const table of m.reads ?? []) columns.set(table, await columnsOf(store, table));
      // PostgreSQL: a migration's DDL queues for its table's exclusive lock behind any open
      // transaction on it, and every later query of that table queues behind the DDL (an audit saw
      // GET /v1/deliveries wait 20 s behind a 25 s read). So it waits LOCK_WAIT at a time, steps
      // aside for a second to let the traffic through, and tries again.
      const lockWait =
        store.caps.name === "postgres" ? `SET LOCAL lock_timeout = '${LOCK_WAIT_MS}ms';\n` : "";
      const script = `BEGIN;\n${lockWait}${m.sql(dialect, columns)}\nINSERT INTO klen_migrations (id, name, applied_at) VALUES (${m.id}, '${m.name}', ${Date.now()});\nCOMMIT;`;
      for (let tries = 1; ; tries++) {
        try {
          await exec(script);
          break;
        } catch (err) {
          if ((err as { code?: string }).code !== LOCK_NOT_AVAILABLE) throw err;
          if (tries >= LOCK_TRIES)
            throw new Error(
              `migration ${m.id} (${m.name}) could not lock its tables in ${tries} tries of ${LOCK_WAIT_MS / 1000} s: another session holds them in a long transaction (see pg_stat_activity)`,
              { cause: err },
            );
          await new Promise((r) => setTimeout(r, LOCK_PAUSE_MS));
        }
      }
      ran.push(m.id);
    }
    return ran;
  });
}

/**
 * A database migrated by a newer build than this one. Running on it would write what that build's
 * schema no longer expects (an older claim beside migration 14's trigger logged attempts under
 * numbers already used), so start-up and `migrate` stop instead.
 */
export class SchemaTooNewError extends Error {
  constructor(
    readonly newer: number[],
    readonly known: number,
  ) {
    super(
      `the database was migrated by a newer version of klen-webhooks (migration ${newer.join(", ")}; this version knows up to ${known}): run that version or a later one`,
    );
    this.name = "SchemaTooNewError";
  }
}

async function columnsOf(store: Store, table: string): Promise<Set<string>> {
  const rows =
    store.caps.name === "sqlite"
      ? (await sql<{ name: string }>`SELECT name FROM pragma_table_info(${table})`.execute(store.db)).rows
      : (
          await sql<{ name: string }>`SELECT column_name AS name FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name = ${table}`.execute(store.db)
        ).rows;
  return new Set(rows.map((r) => r.name));
}
