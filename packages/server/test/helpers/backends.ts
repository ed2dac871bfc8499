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

/** SQLite always; PostgreSQL joins this list where the suite has a server (see postgres.ts). */
export function backends(): Backend[] {
  return [sqliteBackend];
}
