import { mkdirSync } from "node:fs";
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
function cachingStatements(raw: BetterSqlite3.Database, max = 200, maxLength = 2_048): SqliteDatabase {
  const cache = new Map<string, BetterSqlite3.Statement>();
  return {
    close: () => raw.close(),
    prepare(text: string) {
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
  opts: { checkpointThread?: { onBackgroundError(err: Error): void } } = {},
): Store {
  const file = path === ":memory:" ? path : resolve(path);
  if (file !== ":memory:") mkdirSync(dirname(file), { recursive: true });
  const raw = new BetterSqlite3(file);
  // WAL lets readers run beside the one writer; synchronous=NORMAL keeps every commit durable
  // against a process crash (kill -9), which is the failure the delivery guarantee is about, and
  // avoids an fsync per commit. busy_timeout covers a second process (CLI, split roles).
  raw.pragma("journal_mode = WAL");
  raw.pragma("synchronous = NORMAL");
  raw.pragma("busy_timeout = 5000");
  raw.pragma("foreign_keys = ON");
  const checkpointer =
    opts.checkpointThread && file !== ":memory:"
      ? new Checkpointer(file, CHECKPOINT_MS, opts.checkpointThread.onBackgroundError)
      : undefined;
  if (checkpointer) raw.pragma(`wal_autocheckpoint = ${BACKSTOP_PAGES}`);
  const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: cachingStatements(raw) }) });
  return {
    db,
    caps,
    async execScript(script) {
      raw.exec(script);
    },
    async withMigrationLock(fn) {
      return fn();
    },
    async notifyWork() {},
    onWork() {},
    isUniqueViolation(err) {
      // Only UNIQUE and PRIMARY KEY: a NOT NULL or CHECK violation is a bug, not a race to replay.
      const code = typeof err === "object" && err !== null ? (err as { code?: string }).code : undefined;
      return code === "SQLITE_CONSTRAINT_UNIQUE" || code === "SQLITE_CONSTRAINT_PRIMARYKEY";
    },
    async close() {
      await checkpointer?.close();
      await db.destroy();
    },
  };
}
