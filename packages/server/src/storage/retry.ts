import { preparedStatementMiss } from "./statement-names.js";
/**
 * Runs a transaction again when the database rolled it back only because of another transaction,
 * so that running it again succeeds. Nothing of it was committed.
 *
 * - SQLite shared by several processes (split roles, the CLI): a transaction that read before
 *   another process committed a write cannot then write itself, and SQLite answers
 *   SQLITE_BUSY_SNAPSHOT at once (waiting cannot help, so busy_timeout does not apply); a read
 *   transaction upgrading to write beside another writer may get SQLITE_BUSY without waiting, to
 *   avoid a deadlock.
 * - PostgreSQL: a deadlock (40P01), where the server chose this transaction to roll back, or a
 *   serialization failure (40001). Both are the documented cue to run the transaction again. And
 *   a prepared statement that stopped fitting its connection (`preparedStatementMiss`), which the
 *   next run sends unprepared.
 *
 * `run` must hold no effect outside the database that a second run would repeat. What is left
 * after `tries` is thrown (the API answers 503 `database_unavailable`, storage/store.ts).
 */
export async function retryConflicts<T>(run: () => Promise<T>, tries = 10): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await run();
    } catch (err) {
      if (i >= tries || !isConflict(err)) throw err;
      // The other transaction holds its locks for the rest of its run: back off a little.
      await new Promise((r) => setTimeout(r, 2 ** i + Math.random() * 10));
    }
  }
}

const PG_CONFLICTS = new Set(["40P01", "40001"]);

function isConflict(err: unknown): boolean {
  const code = String((err as { code?: unknown } | null)?.code);
  return code.startsWith("SQLITE_BUSY") || PG_CONFLICTS.has(code) || preparedStatementMiss(err) !== undefined;
}
