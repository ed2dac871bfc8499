import type { Kysely, Transaction } from "kysely";
import type { Database } from "./schema.js";

/** A handle to run queries on: the database itself or an open transaction. */
export type Db = Kysely<Database> | Transaction<Database>;
