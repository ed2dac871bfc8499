import { type RawBuilder, sql } from "kysely";
import type { DialectCaps } from "./store.js";

/*
 * Lists and rows as ONE bound parameter, so that a batch statement has the same SQL text whatever
 * the batch size. `IN (?, ?, …)` and multi-row VALUES give every batch size its own text: SQLite
 * parses and plans each afresh (our statement cache cannot keep them all: a compiled 300-row
 * statement holds ~0.1 MB), and Kysely builds one node per value. Here the list travels as JSON
 * (SQLite's json_each) or as typed arrays (PostgreSQL's unnest), and the statement is prepared once.
 */

export type ColumnType = "text" | "bigint" | "integer";

/** `(SELECT …)` yielding `values` as one column: the right-hand side of `x IN …`. */
export function valueList(
  caps: Pick<DialectCaps, "name">,
  values: readonly (string | number)[],
  type: ColumnType,
): RawBuilder<unknown> {
  return caps.name === "postgres"
    ? sql`(SELECT unnest(CAST(${values} AS ${sql.raw(type)}[])))`
    : sql`(SELECT value FROM json_each(${JSON.stringify(values)}))`;
}

/**
 * `(SELECT c1, c2, …)` yielding one row per element of `rows` (each an array, one value per column
 * in `types`): the right-hand side of `(a, b) IN …` or the source of `INSERT … SELECT`.
 */
export function rowList(
  caps: Pick<DialectCaps, "name">,
  rows: ReadonlyArray<ReadonlyArray<string | number | null>>,
  types: readonly ColumnType[],
): RawBuilder<unknown> {
  if (caps.name === "postgres") {
    const columns = types.map((t, i) => sql`CAST(${rows.map((r) => r[i] ?? null)} AS ${sql.raw(t)}[])`);
    return sql`(SELECT * FROM unnest(${sql.join(columns)}))`;
  }
  const columns = types.map((_, i) => sql.raw(`value ->> ${i}`));
  return sql`(SELECT ${sql.join(columns)} FROM json_each(${JSON.stringify(rows)}))`;
}
