import { Kysely, PostgresDialect, sql } from "kysely";
import pg from "pg";
import type { Database } from "../schema.js";
import { preparedStatementMiss, statementName } from "../statement-names.js";
import type { DialectCaps, Store } from "../store.js";

const caps: DialectCaps = { name: "postgres", skipLocked: true, rowLocks: true, crossProcessNotify: true };

// BIGINT (times in ms, serial ids) as numbers: every value we store is far below 2^53.
pg.types.setTypeParser(20, (v) => Number(v));

const CHANNEL = "klen_work";

/** Arbitrary constant naming the migration lock among the database's advisory locks. */
const MIGRATION_LOCK = 724_311_001;

/**
 * Drops a pooled connection whose query has had no answer for `ms`: a database that stops
 * answering without closing its connections (a frozen host, a network partition) would otherwise
 * hold each request on a checked-out connection until TCP gives up, which takes minutes. The query
 * then fails as a lost connection does (the API answers 503, the dispatcher retries) and the pool
 * opens a new connection for the next one (which fails within `connectionTimeoutMillis` while the
 * database stays away). pg's own `query_timeout` leaves the connection busy with the unanswered query.
 *
 * A server that is up but slow (a statement waiting on another session's lock, a long scan) does
 * not notice that its client went away until it next writes to it, so the dropped connection's
 * statement goes on running there, and each retry of the request would start one more beside it
 * until `max_connections` refuses everyone. `end` is told the dropped backend's pid, to end it.
 */
function boundQueries(
  client: pg.PoolClient,
  ms: number,
  exempt: () => boolean,
  end: (pid: number) => void,
): void {
  const query = client.query.bind(client) as (...args: unknown[]) => unknown;
  (client as { query: unknown }).query = (...args: unknown[]) => {
    const result = query(...args);
    if (!(result instanceof Promise) || exempt()) return result;
    const timer = setTimeout(() => {
      const pid = (client as unknown as { processID: number | null }).processID;
      (client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
      if (pid) end(pid);
    }, ms);
    timer.unref();
    return result.finally(() => clearTimeout(timer));
  };
}

/**
 * Sends the marked hot-path statements (`statementName`) as named, prepared statements. One that
 * stopped fitting (`preparedStatementMiss`) is sent unprepared from then on: a stale one on this
 * connection, and every one for the whole pool when one is missing (`names.off`: the server
 * connections are not the pool's own). The statement did not run: outside a transaction it is
 * sent again at once; inside one, the transaction is aborted and the error goes to the caller,
 * which runs it again (`retryConflicts`; a claim or a completion by its own retries).
 */
function useStatementNames(client: pg.PoolClient, names: { off: boolean }): void {
  const query = client.query.bind(client) as (...args: unknown[]) => unknown;
  const stale = new Set<string>();
  (client as { query: unknown }).query = (...args: unknown[]) => {
    const [text, values] = args;
    const name =
      !names.off && args.length === 2 && typeof text === "string" && !stale.has(text)
        ? statementName(text)
        : undefined;
    if (!name) return query(...args);
    // Kysely sends one statement at a time on a connection: this is its state for this one.
    const alone = client.getTransactionStatus() === "I";
    return (query({ name, text, values }) as Promise<unknown>).catch((err: unknown) => {
      const miss = preparedStatementMiss(err);
      if (miss === "stale") stale.add(text as string);
      if (miss === "missing") names.off = true;
      if (miss && alone) return query(text, values);
      throw err;
    });
  };
}

/**
 * Runs a multi-statement script on `client`. One that fails after its own BEGIN leaves the session
 * in an aborted transaction, which is rolled back before the connection is used again.
 */
async function runScript(client: pg.PoolClient, script: string): Promise<void> {
  try {
    await client.query(script);
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    throw err;
  }
}

/**
 * PostgreSQL store: a connection pool for queries, plus one dedicated connection that LISTENs for
 * wake-ups. NOTIFY is only a hint; dispatchers poll as well, so a lost notification (say, while
 * the listener reconnects after a database restart) delays work by one poll, never loses it.
 */
export function openPostgres(
  url: string,
  opts: { poolSize?: number; queryTimeoutMs?: number | undefined } = {},
): Store {
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
  const names = { off: false };
  // Queries under the migration lock (migrations, and waiting for it: the first account) may
  // rightly run for minutes.
  let unbounded = 0;
  pool.on("connect", (client) => {
    client.on("error", () => {});
    useStatementNames(client, names);
    // Planned for their values each time, not once for any value: a generic plan made while a
    // table was small and without statistics (a fresh database, a backlog queued in seconds)
    // stays a sequential scan as the table grows (the bench's queueing of 100,000 deliveries took
    // 81 s with generic plans, 32 s unprepared, 19 s prepared and planned each time).
    client.query("SET plan_cache_mode = force_custom_plan").catch(() => {});
    if (opts.queryTimeoutMs)
      boundQueries(
        client,
        opts.queryTimeoutMs,
        () => unbounded > 0,
        // On another connection; fails harmlessly when the database is really gone.
        (pid) => void pool.query("SELECT pg_terminate_backend($1)", [pid]).catch(() => {}),
      );
  });
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  const listeners: Array<(message?: string) => void> = [];
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
    client.on("notification", (msg) => {
      for (const l of listeners) l(msg.payload || undefined);
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
      // A dedicated connection, for runScript's rollback.
      const client = await pool.connect();
      try {
        await runScript(client, script);
      } finally {
        client.release();
      }
    },
    async withMigrationLock(fn) {
      unbounded++;
      try {
        const client = await pool.connect();
        try {
          await client.query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK]);
          return await fn((script) => runScript(client, script));
        } finally {
          await client.query("SELECT pg_advisory_unlock($1)", [MIGRATION_LOCK]).catch(() => {});
          client.release();
        }
      } finally {
        unbounded--;
      }
    },
    async startLock(trx) {
      // The wait may rightly last as long as another process's migrations.
      unbounded++;
      try {
        await sql`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`.execute(trx);
      } finally {
        unbounded--;
      }
    },
    async notifyWork(message) {
      if (message !== undefined) {
        await pool.query("SELECT pg_notify($1, $2)", [CHANNEL, message]).catch(() => {});
        return;
      }
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
