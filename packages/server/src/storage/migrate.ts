import { sql } from "kysely";
import { type MigrationDialect, migrations } from "./migrations.js";
import type { Store } from "./store.js";

const DIALECTS: Record<Store["caps"]["name"], MigrationDialect> = {
  sqlite: { serial: "INTEGER PRIMARY KEY AUTOINCREMENT", bigint: "INTEGER", name: "sqlite" },
  postgres: { serial: "BIGSERIAL PRIMARY KEY", bigint: "BIGINT", name: "postgres" },
};

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
      await exec(
        `BEGIN;\n${m.sql(dialect, columns)}\nINSERT INTO klen_migrations (id, name, applied_at) VALUES (${m.id}, '${m.name}', ${Date.now()});\nCOMMIT;`,
      );
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
