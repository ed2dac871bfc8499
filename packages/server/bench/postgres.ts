import pg from "pg";
import { startPostgres } from "../test/helpers/postgres.js";

export interface BenchPostgres {
  /** How the server was obtained, for the printout. */
  describe: string;
  /** A new empty database on it. */
  fresh(): Promise<{ url: string; drop(): Promise<void> }>;
  stop(): Promise<void>;
}

/**
 * PostgreSQL for the benchmark's PostgreSQL rows: `KLEN_BENCH_DATABASE_URL` when set (the role
 * needs CREATE DATABASE; each scenario gets its own database, dropped afterwards), otherwise a
 * throwaway server started the way the tests start theirs (test/helpers/postgres.ts).
 */
export async function benchPostgres(): Promise<BenchPostgres> {
  const external = process.env.KLEN_BENCH_DATABASE_URL;
  if (external) {
    let n = 0;
    return {
      describe: "KLEN_BENCH_DATABASE_URL",
      async fresh() {
        const name = `klen_bench_${process.pid}_${++n}`;
        const admin = new pg.Client({ connectionString: external });
        await admin.connect();
        await admin.query(`CREATE DATABASE ${name}`).finally(() => admin.end());
        const url = new URL(external);
        url.pathname = `/${name}`;
        return {
          url: url.toString(),
          async drop() {
            const c = new pg.Client({ connectionString: external });
            await c.connect();
            await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).finally(() => c.end());
          },
        };
      },
      async stop() {},
    };
  }
  const server = await startPostgres({ own: true });
  return {
    describe:
      "throwaway PostgreSQL (initdb in a temp dir, as the tests start it: fsync=off, synchronous commits, shared_buffers=64MB)",
    fresh: () => server.freshDatabase(),
    stop: () => server.stop(),
  };
}
