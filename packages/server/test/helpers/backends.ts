import { startPostgres } from "./postgres.js";
import { tempDir } from "./server.js";

/**
 * The storage backends every backend-agnostic suite runs against. Each gives a fresh, empty
 * database URL per call and cleans up after itself.
 */
export interface Backend {
  name: "sqlite" | "postgres";
  /** A fresh empty database: its URL and a data dir for blobs. */
  fresh(): Promise<{ databaseUrl: string; dataDir: string; cleanup(): Promise<void> }>;
}

export const sqliteBackend: Backend = {
  name: "sqlite",
  async fresh() {
    const dir = tempDir();
    return {
      databaseUrl: `sqlite:${dir.path}/klen.db`,
      dataDir: dir.path,
      async cleanup() {
        dir.remove();
      },
    };
  },
};

/**
 * PostgreSQL: a fresh database on this test process's server (KLEN_TEST_DATABASE_URL, or a
 * throwaway server started on first use, see postgres.ts), dropped again by `cleanup`.
 */
export const postgresBackend: Backend = {
  name: "postgres",
  async fresh() {
    const server = await startPostgres();
    const db = await server.freshDatabase();
    const dir = tempDir();
    return {
      databaseUrl: db.url,
      dataDir: dir.path,
      async cleanup() {
        await db.drop();
        dir.remove();
      },
    };
  },
};

/** Every backend: the suites that loop over this list run on SQLite and on PostgreSQL. */
export function backends(): Backend[] {
  return [sqliteBackend, postgresBackend];
}
