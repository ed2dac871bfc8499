import type { Kysely } from "kysely";
import type { FieldCipher } from "./encryption.js";
import type { Database } from "./schema.js";
import { preparedStatementMiss } from "./statement-names.js";

/**
 * What differs between the backends, as data rather than `if`s through the code (pg-boss style).
 * Queries above this line are written once; they consult these flags where SQL must differ.
 */
export interface DialectCaps {
  name: "sqlite" | "postgres";
  /** `FOR UPDATE SKIP LOCKED` on claims; SQLite has one writer at a time and needs none. */
  skipLocked: boolean;
  /** Row locks (`FOR SHARE`) to order a completion against a concurrent fan-out of the same call. */
  rowLocks: boolean;
  /** Other processes may share the database, so a wake-up must cross process boundaries. */
  crossProcessNotify: boolean;
}

/** The narrow storage interface: a Kysely handle plus the few things Kysely does not cover. */
export interface Store {
  readonly db: Kysely<Database>;
  readonly caps: DialectCaps;
  /** Runs a multi-statement SQL script (migrations). */
  execScript(sql: string): Promise<void>;
  /**
   * Runs `fn` while holding a database-wide lock, so that concurrent starts migrate once. `exec`
   * runs a script where the lock is held (PostgreSQL: on the lock's own session, so a session
   * killed while it held the lock cannot let a migration of it run beside another process's).
   */
  withMigrationLock<T>(fn: (exec: (sql: string) => Promise<void>) => Promise<T>): Promise<T>;
  /**
   * Inside a transaction: waits for, and holds until it ends, the lock migrations hold (PostgreSQL;
   * nothing on SQLite), so that start-up writes of processes starting together take turns.
   */
  startLock(trx: Kysely<Database>): Promise<void>;
  /**
   * Tells dispatchers in other processes that work is due (no-op where there are none); with
   * `message`, something more specific (`endpoint:<id>`: that endpoint changed), never coalesced.
   */
  notifyWork(message?: string): Promise<void>;
  /** Registers a listener for other processes' wake-ups (and their messages). */
  onWork(listener: (message?: string) => void): void;
  /** True when `err` is a unique-constraint violation. */
  isUniqueViolation(err: unknown): boolean;
  close(): Promise<void>;
  /** With `KLEN_ENCRYPTION_KEY`: the field cipher, for keyed fingerprints (`mac`). */
  readonly cipher?: FieldCipher;
}

/**
 * Opens the store named by `KLEN_DATABASE_URL`; only the chosen backend's driver is loaded. With an
 * encryption key, the sensitive columns are sealed at rest by a Kysely plugin (encryption.ts).
 * `server`: a long-running server process (SQLite then checkpoints on a thread of its own, whose
 * failures go to `onBackgroundError`).
 */
export async function openStore(
  url: string,
  opts: {
    encryptionKey?: string | undefined;
    server?: ServerStoreOptions;
    /**
     * PostgreSQL: a query with no answer for this long drops its connection (`openPostgres`);
     * unset, a query waits as long as TCP keeps the connection.
     */
    queryTimeoutMs?: number | undefined;
  } = {},
): Promise<Store> {
  const store = await openBackend(url, opts.server, opts.queryTimeoutMs);
  if (!opts.encryptionKey) return store;
  const { EncryptionPlugin, FieldCipher } = await import("./encryption.js");
  const cipher = new FieldCipher(opts.encryptionKey);
  return { ...store, db: store.db.withPlugin(new EncryptionPlugin(cipher)), cipher };
}

export interface ServerStoreOptions {
  /** Work the store does on its own (SQLite's checkpoint thread) failed; the store carries on. */
  onBackgroundError(err: Error): void;
  /** SQLite: the database file was deleted or replaced while open; every statement now fails. */
  onFileLost?(err: Error): void;
  /** SQLite: there was no database file; a new, empty one was made. */
  onCreated?(file: string): void;
}

async function openBackend(
  url: string,
  server: ServerStoreOptions | undefined,
  queryTimeoutMs: number | undefined,
): Promise<Store> {
  if (url.startsWith("sqlite:")) {
    const { openSqlite } = await import("./sqlite/index.js");
    return openSqlite(
      url.slice("sqlite:".length),
      server
        ? {
            checkpointThread: server,
            ...(server.onFileLost ? { onFileLost: server.onFileLost } : {}),
            ...(server.onCreated ? { onCreated: server.onCreated } : {}),
          }
        : {},
    );
  }
  if (/^postgres(ql)?:\/\//.test(url)) {
    const { openPostgres } = await import("./postgres/index.js");
    return openPostgres(url, { queryTimeoutMs });
  }
  throw new Error(`unsupported database URL: ${url.replace(/\/\/[^@]*@/, "//***@")}`);
}

// Connection-level failures: the database is down, restarting or unreachable, as opposed to a
// query it rejected (and the few rejections that only say "not now", listed first). PostgreSQL SQLSTATE class 08 and the shutdown/start-up states, socket errors
// (also a Unix socket's missing file, below), pg's own messages for a dropped or unobtainable
// connection; SQLite's codes are matched by SQLITE_UNAVAILABLE.
const UNAVAILABLE_CODES = new Set([
  // Gave up waiting, not a wrong query: a statement or lock timeout an operator set (57014, 55P03),
  // a deadlock or serialization failure between concurrent transactions (40P01, 40001). Nothing
  // was committed; the same request again succeeds.
  "57014",
  "55P03",
  "40P01",
  "40001",
  "57P01",
  "57P02",
  "57P03",
  // The server ended an idle session (idle_session_timeout), or one idle inside a transaction
  // (idle_in_transaction_session_timeout): a pooled connection handed out as it closed.
  "57P05",
  "25P03",
  "53300",
  // The server cannot take writes now: a read-only transaction (a standby after a failover, or
  // default_transaction_read_only set), a full disk, out of memory. Not the request's fault.
  "25006",
  "53100",
  "53200",
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAI_AGAIN",
]);
const SQLITE_UNAVAILABLE = /^SQLITE_(BUSY|LOCKED|FULL|IOERR|READONLY|CANTOPEN|FILE_LOST)/;
const UNAVAILABLE_MESSAGE =
  /Connection terminated|timeout exceeded when trying to connect|not queryable|Connection ended unexpectedly/;

/**
 * True when `err` means the database cannot be reached right now (retry later), not that a query
 * was wrong. The API maps it to 503 `database_unavailable`; the dispatcher simply retries.
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  for (let e = err, depth = 0; e && typeof e === "object" && depth < 3; depth++) {
    const { code, message, cause, syscall } = e as {
      code?: unknown;
      message?: unknown;
      cause?: unknown;
      syscall?: unknown;
    };
    if (typeof code === "string" && (UNAVAILABLE_CODES.has(code) || code.startsWith("08"))) return true;
    // SQLite that cannot write now: another process holds the lock, the disk is full, an I/O
    // error, the file read-only or gone (sqlite/index.ts FileGuard). Not the request's fault.
    if (typeof code === "string" && SQLITE_UNAVAILABLE.test(code)) return true;
    // PostgreSQL on a Unix socket (`?host=/run/postgresql`) that is not running: no socket file.
    // Only for a connect, so that a missing file elsewhere is not taken for a database outage.
    if (code === "ENOENT" && syscall === "connect") return true;
    if (typeof message === "string" && UNAVAILABLE_MESSAGE.test(message)) return true;
    // Run again, the statement goes unprepared and succeeds.
    if (preparedStatementMiss(e)) return true;
    e = cause;
  }
  return false;
}

/**
 * True when the database refused a write for what it held — a value it cannot store or a
 * constraint or trigger that rejects it (PostgreSQL classes 22 and 23, SQLite's constraint,
 * mismatch and size errors) — so that the same write will fail again, and only that write.
 * Not for a database that refuses every write (read-only, full, locked, busy).
 */
export function isRefusedContent(err: unknown): boolean {
  const code = typeof err === "object" && err !== null ? (err as { code?: unknown }).code : undefined;
  if (typeof code !== "string") return false;
  if (/^2[23][0-9A-Z]{3}$/.test(code)) return true;
  return code.startsWith("SQLITE_CONSTRAINT") || code === "SQLITE_MISMATCH" || code === "SQLITE_TOOBIG";
}
