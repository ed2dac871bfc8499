import { Kysely, PostgresDialect } from "kysely";
import pg from "pg";
import type { Database } from "../schema.js";
import type { DialectCaps, Store } from "../store.js";

const caps: DialectCaps = { name: "postgres", skipLocked: true, rowLocks: true, crossProcessNotify: true };

// BIGINT (times in ms, serial ids) as numbers: every value we store is far below 2^53.
pg.types.setTypeParser(20, (v) => Number(v));

const CHANNEL = "klen_work";
/** Arbitrary constant naming the migration lock among the database's advisory locks. */
const MIGRATION_LOCK = 724_311_001;

/**
 * PostgreSQL store: a connection pool for queries, plus one dedicated connection that LISTENs for
 * wake-ups. NOTIFY is only a hint; dispatchers poll as well, so a lost notification (say, while
 * the listener reconnects after a database restart) delays work by one poll, never loses it.
 */
export function openPostgres(url: string, opts: { poolSize?: number } = {}): Store {
  const pool = new pg.Pool({
    connectionString: url,
    max: opts.poolSize ?? 10,
    idleTimeoutMillis: 30_000,
    // While the database is unreachable a request fails after this instead of waiting forever
    // for a connection (the API answers 503, the dispatcher retries).
    connectionTimeoutMillis: 5_000,
    // Detects a peer that vanished without closing the socket (a host failover).
    keepAlive: true,
  });
  // A dropped connection emits "error" on the pool (idle clients) and on the client itself (one
  // checked out, say between the statements of a transaction). An "error" with no listener would
  // crash the process; the query in progress is rejected either way, and its caller retries.
  pool.on("error", () => {});
  pool.on("connect", (client) => {
    client.on("error", () => {});
  });
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  const listeners: Array<() => void> = [];
  let listener: pg.Client | undefined;
  let closed = false;
  let lastNotify = 0;

  const listen = async (): Promise<void> => {
    if (closed || listeners.length === 0 || listener) return;
    const client = new pg.Client({ connectionString: url });
    listener = client;
    const retry = () => {
      if (listener === client) listener = undefined;
      client.end().catch(() => {});
      if (!closed) setTimeout(() => void listen(), 1_000).unref();
    };
    client.on("error", retry);
    client.on("end", () => {
      if (listener === client) retry();
    });
    client.on("notification", () => {
      for (const l of listeners) l();
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${CHANNEL}`);
      // Anything notified while we were not listening is picked up by this wake-up.
      for (const l of listeners) l();
    } catch {
      retry();
    }
  };

  return {
    db,
    caps,
    async execScript(script) {
      // A dedicated connection: a script that fails after its own BEGIN leaves the session in an
      // aborted transaction, which must be rolled back before the connection is reused.
      const client = await pool.connect();
      try {
        await client.query(script);
      } catch (err) {
        await client.query("ROLLBACK").catch(() => {});
        throw err;
      } finally {
        client.release();
      }
    },
    async withMigrationLock(fn) {
      const client = await pool.connect();
      try {
        await client.query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK]);
        return await fn();
      } finally {
        await client.query("SELECT pg_advisory_unlock($1)", [MIGRATION_LOCK]).catch(() => {});
        client.release();
      }
    },
    async notifyWork() {
      // Coalesce: under load every transition would otherwise send its own NOTIFY.
      const now = Date.now();
      if (now - lastNotify < 2) return;
      lastNotify = now;
      await pool.query(`NOTIFY ${CHANNEL}`).catch(() => {});
    },
    onWork(l) {
      listeners.push(l);
      void listen();
    },
    isUniqueViolation(err) {
      return typeof err === "object" && err !== null && (err as { code?: string }).code === "23505";
    },
    async close() {
      closed = true;
      const l = listener;
      listener = undefined;
      await l?.end().catch(() => {});
      await db.destroy();
    },
  };
}
