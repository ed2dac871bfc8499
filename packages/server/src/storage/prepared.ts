import type { Compilable, CompiledQuery, QueryResult, RawBuilder } from "kysely";
import { type ColumnType, rowListOf, rowListValues } from "./lists.js";
import { nameStatement } from "./statement-names.js";
import type { DialectCaps } from "./store.js";
import type { Db } from "./types.js";

/** Stands in for a value while a prepared query is built; replaced by the real value at each run. */
class Slot {
  constructor(readonly name: string) {}
}

/**
 * A hot-path query built through Kysely and compiled once per dialect, then run with new values.
 * Building and compiling cost more than running a small indexed statement (a primary-key select:
 * ~11 µs to build and compile, ~7 µs to run), and the API's transition path runs a dozen of them.
 *
 * `build` receives `p`, whose properties are placeholders: use `p.name` wherever the value goes;
 * and the dialect's capabilities, for what differs between dialects (row locks).
 * Only for queries whose values are not encrypted at rest: the encryption plugin seals values
 * while the query compiles, and a placeholder is not a value (reading encrypted columns is fine;
 * results are opened as usual).
 */
export function prepared<P extends string, R>(
  build: (db: Db, p: Record<P, never>, caps: DialectCaps) => Compilable<R> | RawBuilder<R>,
): (db: Db, caps: DialectCaps, values: Record<P, unknown>) => Promise<R[]> {
  const run = preparedResult(build);
  return async (db, caps, values) => (await run(db, caps, values)).rows;
}

/** `prepared`, answering Kysely's whole result: for the rows a write changed (`numAffectedRows`). */
export function preparedResult<P extends string, R>(
  build: (db: Db, p: Record<P, never>, caps: DialectCaps) => Compilable<R> | RawBuilder<R>,
): (db: Db, caps: DialectCaps, values: Record<P, unknown>) => Promise<QueryResult<R>> {
  // By dialect: one process may hold a SQLite and a PostgreSQL store at once (the bench does).
  const compiled = new Map<string, CompiledQuery<R>>();
  const slots = new Proxy({} as Record<P, never>, {
    get: (_target, name) => new Slot(String(name)) as never,
  });
  return (db, caps, values) => {
    let c = compiled.get(caps.name);
    if (!c) {
      // A query builder compiles by itself, an `sql` template against the database it runs on.
      c = (build(db, slots, caps) as { compile(db: Db): CompiledQuery<R> }).compile(db);
      compiled.set(caps.name, c);
      if (caps.name === "postgres") nameStatement(c.sql);
    }
    const parameters = c.parameters.map((v) => (v instanceof Slot ? values[v.name as P] : v));
    // The compiled query's own id: plugins that noted something about the query when it was
    // compiled (the encryption plugin: which sealed columns it can return) find it again.
    return db.executeQuery<R>({ query: c.query, sql: c.sql, parameters, queryId: c.queryId });
  };
}

/**
 * A row list (storage/lists.ts) in a prepared query: `rowListSlot` stands where the list goes in
 * `build`, `rowListArgs` gives the rows at each run. Its bound values (one JSON text on SQLite, one
 * array per column on PostgreSQL) travel as the placeholders `name0`, `name1`, ….
 */
export function rowListSlot(
  p: object,
  name: string,
  caps: Pick<DialectCaps, "name">,
  types: readonly ColumnType[],
  names?: readonly string[],
): RawBuilder<unknown> {
  const slots = types.map((_, i) => (p as Record<string, unknown>)[`${name}${i}`]);
  return rowListOf(caps, slots, types, names);
}

export function rowListArgs(
  caps: Pick<DialectCaps, "name">,
  name: string,
  rows: ReadonlyArray<ReadonlyArray<string | number | null>>,
  types: readonly ColumnType[],
): Record<string, unknown> {
  return Object.fromEntries(rowListValues(caps, rows, types).map((v, i) => [`${name}${i}`, v]));
}
