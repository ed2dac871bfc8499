import { existsSync, mkdirSync, type Stats, statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import BetterSqlite3 from "better-sqlite3";
import { Kysely, type SqliteDatabase, SqliteDialect } from "kysely";
import type { Database } from "../schema.js";
import type { DialectCaps, Store } from "../store.js";
import { Checkpointer } from "./checkpointer.js";

const caps: DialectCaps = { name: "sqlite", skipLocked: false, rowLocks: false, crossProcessNotify: false };

/**
 * Kysely's SQLite driver prepares every query afresh, and SQLite's parse and plan of a statement
 * cost more than running the small indexed statements of the hot path (profile of the API under
 * load: `prepare` was 12 % of the server's CPU). Statements are cached by SQL text, least recently
 * used out first. Safe with one connection: Kysely runs one query at a time on it, and a streamed
 * query holds the connection until its iterator is done. Long statements (the dispatcher's batch
 * inserts and IN lists, a different text for every batch size) are not kept: they seldom repeat
 * and each compiled one holds tens of KB of native memory.
 */
function cachingStatements(
  raw: BetterSqlite3.Database,
  guard: FileGuard,
  max = 200,
  maxLength = 2_048,
): SqliteDatabase {
  const cache = new Map<string, BetterSqlite3.Statement>();
  return {
    close: () => raw.close(),
    prepare(text: string) {
      guard.check();
      // SQLite rolls a transaction back by itself when a statement fails for a full disk or an I/O
      // error; Kysely's ROLLBACK then failed with "cannot rollback - no transaction is active", and
      // that error replaced the real one (SQLITE_FULL) in what the caller saw.
      if (text === "rollback" && !raw.inTransaction) return NO_OP as unknown as BetterSqlite3.Statement;
      if (text.length > maxLength) return raw.prepare(text);
      let st = cache.get(text);
      if (st) {
        cache.delete(text);
      } else {
        st = raw.prepare(text);
        if (cache.size >= max) cache.delete(cache.keys().next().value as string);
      }
      cache.set(text, st);
      return st;
    },
  };
}

/** A statement that does nothing: the ROLLBACK of a transaction SQLite already rolled back. */
const NO_OP = { reader: false, run: () => ({ changes: 0, lastInsertRowid: 0 }) };

/**
 * Watches the database file for being deleted or replaced while it is open. SQLite goes on
 * writing to the open file, which no one will ever open again: every request it acknowledged
 * from then on was lost at the next start, which made a new, empty database (an audit: 8,721
 * acknowledged transitions). Once the file is found gone or replaced, every statement fails as an
 * outage (503 for the API, retried by workers), and it is logged, so nothing more is acknowledged.
 */
class FileGuard {
  private lost: Error | undefined;
  private timer: NodeJS.Timeout | undefined;
  constructor(file: string, onLost: (err: Error) => void, everyMs = 1_000) {
    if (file === ":memory:") return;
    const opened = statSync(file);
    this.timer = setInterval(() => {
      if (this.lost) return;
      let now: Stats | undefined;
      try {
        now = statSync(file);
      } catch {
        now = undefined;
      }
      if (now && now.ino === opened.ino && now.dev === opened.dev) return;
      this.lost = Object.assign(
        new Error(
          `the database file ${file} was ${now ? "replaced" : "deleted"} while open; nothing more is written to it — restore it and restart (its data is still readable through /proc/${process.pid}/fd while this process runs)`,
        ),
        { code: "SQLITE_FILE_LOST" },
      );
      onLost(this.lost);
    }, everyMs);
    this.timer.unref();
  }
  check(): void {
    if (this.lost) throw this.lost;
  }
  stop(): void {
    clearInterval(this.timer);
  }
}

/** Pages of WAL at which the writer checkpoints itself when the checkpoint thread has fallen behind. */
const BACKSTOP_PAGES = 4_000;
/**
 * How often the checkpoint thread copies the WAL back. A checkpoint copies each page written since
 * the last one once, however often it was rewritten meanwhile; the hot pages (index roots, the
 * tail of the attempt log) are rewritten by every transaction, so a longer interval copies fewer
 * pages in all: the thread's CPU in a 100,000-delivery drain fell from 0.52–0.73 s at 20 ms to
 * 0.24–0.30 s at 100 ms (docs/performance.md). How far the WAL grows did not change with it: under
 * a steady stream of writes it starts over only when a transaction begins just after a checkpoint
 * has copied everything, so at either interval it reached 3,900–4,000 frames before starting over.
 */
const CHECKPOINT_MS = 100;

/**
 * Opens (creating if needed) the SQLite file at `path`, relative to the working directory. With
 * `checkpointThread`, WAL checkpoints run on a thread of their own (checkpointer.ts), which reports
 * its failures to `onBackgroundError`: what a server process wants; a short CLI command does not.
 */
export function openSqlite(
  path: string,
  opts: {
    checkpointThread?: { onBackgroundError(err: Error): void };
    onFileLost?: (err: Error) => void;
    onCreated?: (file: string) => void;
  } = {},
): Store {
  const file = path === ":memory:" ? path : resolve(path);
  if (file !== ":memory:") mkdirSync(dirname(file), { recursive: true });
  const created = file !== ":memory:" && !existsSync(file);
  const raw = new BetterSqlite3(file);
  // A new file where one was expected (deleted, a wrong path) is an empty database: said aloud.
  if (created && opts.onCreated) opts.onCreated(file);
  // WAL lets readers run beside the one writer; synchronous=NORMAL keeps every commit durable
  // against a process crash (kill -9), which is the failure the delivery guarantee is about, and
  // avoids an fsync per commit. busy_timeout covers a second process (CLI, split roles).
  raw.pragma("journal_mode = WAL");
  raw.pragma("synchronous = NORMAL");
  // Another process holding the write lock (the sqlite3 shell in a transaction, a second server)
  // is waited for inside the statement, on the event loop: 5 s of it froze the API, /healthz and
  // the dispatcher for 5 s a statement. A quarter of a second, then the request is a 503 with
  // Retry-After (the dispatcher retries), and the process stays responsive.
  raw.pragma("busy_timeout = 250");
  raw.pragma("foreign_keys = ON");
  // After a checkpoint that could start the WAL over, its file is cut back to 64 MiB: a reader
  // that held checkpoints off for 30 s had grown it to 1.3 GB, and it stayed that size.
  raw.pragma("journal_size_limit = 67108864");
  const checkpointer =
    opts.checkpointThread && file !== ":memory:"
      ? new Checkpointer(file, CHECKPOINT_MS, opts.checkpointThread.onBackgroundError)
      : undefined;
  if (checkpointer) raw.pragma(`wal_autocheckpoint = ${BACKSTOP_PAGES}`);
  const guard = new FileGuard(file, (err) => opts.onFileLost?.(err));
  const db = new Kysely<Database>({
    dialect: new SqliteDialect({ database: cachingStatements(raw, guard) }),
  });
  const execScript = async (script: string) => {
    raw.exec(script);
  };
  return {
    db,
    caps,
    execScript,
    // One process writes at a time: the lock is the file's own.
    withMigrationLock: (fn) => fn(execScript),
    async startLock() {},
    async notifyWork() {},
    onWork() {},
    isUniqueViolation(err) {
      // Only UNIQUE and PRIMARY KEY: a NOT NULL or CHECK violation is a bug, not a race to replay.
      const code = typeof err === "object" && err !== null ? (err as { code?: string }).code : undefined;
      return code === "SQLITE_CONSTRAINT_UNIQUE" || code === "SQLITE_CONSTRAINT_PRIMARYKEY";
    },
    async close() {
      guard.stop();
      await checkpointer?.close();
      await db.destroy();
    },
  };
}
