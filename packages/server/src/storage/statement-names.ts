import { createHash } from "node:crypto";

/**
 * The hot-path statements (storage/prepared.ts) that PostgreSQL keeps prepared on each pooled
 * connection: parsed and analysed once per connection, where an unnamed statement is parsed,
 * analysed and planned at every run. They are still planned at each run, for their values
 * (`plan_cache_mode = force_custom_plan`, postgres/index.ts): a generic plan made on a small
 * table outlived its growth (docs/performance.md, 33).
 */
const names = new Map<string, string>();

/**
 * Marks `sql` as one to keep prepared. Its name is made from its text, so that one name means
 * one statement in every process and version: behind a pooler, a server connection may hold
 * another process's prepared statements (numbered names had `klen_1` run one process's DELETE
 * where another meant its SELECT).
 */
export function nameStatement(sql: string): void {
  if (!names.has(sql)) names.set(sql, `klen_${createHash("sha256").update(sql).digest("hex").slice(0, 32)}`);
}

/** The name `sql` is prepared under, when it is one of the marked statements. */
export function statementName(sql: string): string | undefined {
  return names.get(sql);
}

/**
 * A prepared statement that no longer fits its connection. Outside a transaction the statement is
 * sent again at once, unprepared; inside one, the transaction runs again (storage/retry.ts) and
 * succeeds, the statement then unprepared:
 * - `stale`: a migration changed a table a `SELECT *` statement returns (another process's
 *   upgrade), and PostgreSQL refuses to return other columns under the same statement (0A000);
 * - `missing`: the statement is not on the server connection, or another client's is (26000,
 *   42P05): a pooler that hands each transaction another server connection (PgBouncer before
 *   1.21 in transaction mode), or a `DISCARD ALL`.
 */
export function preparedStatementMiss(err: unknown): "stale" | "missing" | undefined {
  if (typeof err !== "object" || err === null) return undefined;
  const { code, message } = err as { code?: unknown; message?: unknown };
  if (code === "26000" || code === "42P05") return "missing";
  if (
    code === "0A000" &&
    typeof message === "string" &&
    /cached plan must not change result type/.test(message)
  )
    return "stale";
  return undefined;
}
