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
    const ran: number[] = [];
    for (const m of migrations) {
      if (applied.has(m.id) || m.id > upTo) continue;
      await exec(
        `BEGIN;\n${m.sql(dialect)}\nINSERT INTO klen_migrations (id, name, applied_at) VALUES (${m.id}, '${m.name}', ${Date.now()});\nCOMMIT;`,
      );
      ran.push(m.id);
    }
    return ran;
  });
}
