import { type Kysely, sql, type Transaction } from "kysely";
import type { Database } from "./schema.js";

/** A handle to run queries on: the database itself or an open transaction. */
export type Db = Kysely<Database> | Transaction<Database>;

/**
 * `'pending'` as a literal in the SQL text. The queue's partial indexes (`… WHERE status =
 * 'pending'`) are only usable when SQLite can see the literal at prepare time: with a bound
 * parameter it plans a scan (claim select on 20,000 rows: 12.8 µs with a parameter, 2.8 µs with
 * the literal; the per-call busy check 25.7 µs against 9.6 µs, growing with the table).
 */
export const PENDING = sql.lit("pending");
/** `'failed'` as a literal, for the partial index of failed deliveries that a recover reads. */
export const FAILED = sql.lit("failed");
