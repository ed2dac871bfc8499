import { type RawBuilder, sql } from "kysely";
import type { AppContext } from "../api/context.js";
import { logBackgroundFailure } from "../log.js";
import { Periodic, pauseBetweenBatches } from "../util/periodic.js";
import { ENCRYPTED_COLUMNS, isSealed } from "./encryption.js";
import { retryConflicts } from "./retry.js";
import type { Store } from "./store.js";

/** Each table with sealed columns, and the key its rows are walked in. */
const TABLES: ReadonlyArray<{ table: string; key: readonly string[] }> = [
  { table: "endpoints", key: ["id"] },
  { table: "contacts", key: ["id"] },
  { table: "calls", key: ["id"] },
  { table: "summary_jobs", key: ["call_id"] },
  { table: "idempotency_keys", key: ["account_id", "key"] },
  { table: "events", key: ["id"] },
];

/** `settings` row saying every value stored before the key was set is sealed (value: the key's mark). */
const DONE = "sealed_before_key";

/**
 * Seals the values of the encrypted columns that were written in clear before KLEN_ENCRYPTION_KEY
 * was set (PRODUCT.md §11: phone numbers, secrets, transcripts and summaries at rest, not only
 * those written since), so that a copy of the database holds none of them in clear, and an
 * equality lookup on a sealed column (a contact's phone number) finds old rows too.
 *
 * Walks each table in key order, `batch` rows a page, each page's updates in one transaction,
 * each update compared with the clear value it replaces, so that several processes doing it at once, and
 * requests writing the same rows, lose nothing. Returns how many values it sealed; stops early
 * when `stopped()` says so. Once every table is done it records it (`settings`), and the next
 * start with the same key skips the walk; a start without a key drops that record, as it writes
 * in clear again.
 */
export async function sealWrittenInClear(
  store: Store,
  opts: { batch?: number; pauseMs?: number; stopped?: () => boolean } = {},
): Promise<number> {
  const { cipher, db } = store;
  const done = await db.selectFrom("settings").select("value").where("name", "=", DONE).executeTakeFirst();
  if (!cipher) {
    if (done) await db.deleteFrom("settings").where("name", "=", DONE).execute();
    return 0;
  }
  const mark = cipher.mac(DONE);
  if (done?.value === mark) return 0;
  // Event bodies are up to the inline limit (64 KiB) each: a page holds at most a few MiB.
  const batch = opts.batch ?? 100;
  let sealed = 0;
  for (const { table, key } of TABLES) {
    const columns = ENCRYPTED_COLUMNS[table]!;
    let after: unknown[] | undefined;
    for (;;) {
      if (opts.stopped?.()) return sealed;
      // Raw statements are not rewritten by the encryption plugin, and their results are opened
      // by column name only: the values are read under other names (`v0`, …), as stored.
      const rows = (
        await sql<Record<string, unknown>>`
          SELECT ${sql.join(key.map((k, i) => sql`${sql.ref(k)} AS ${sql.ref(`k${i}`)}`))},
                 ${sql.join(columns.map((c, i) => sql`${sql.ref(c)} AS ${sql.ref(`v${i}`)}`))}
          FROM ${sql.table(table)}
          ${after ? sql`WHERE ${tuple(key.map((k) => sql.ref(k)))} > ${tuple(after.map((v) => sql`${v}`))}` : sql``}
          ORDER BY ${sql.join(key.map((k) => sql.ref(k)))}
          LIMIT ${batch}`.execute(db)
      ).rows;
      if (rows.length === 0) break;
      const updates = rows.flatMap((row) =>
        columns.flatMap((column, i) => {
          const value = row[`v${i}`];
          // `enc1:…` is taken as sealed even when this key cannot open it: sealed under another
          // key, it must not be sealed again (it would then read back as that ciphertext).
          if (typeof value !== "string" || isSealed(value)) return [];
          const where = sql.join(
            key.map((k, j) => sql`${sql.ref(k)} = ${row[`k${j}`]}`),
            sql` AND `,
          );
          return [
            sql`UPDATE ${sql.table(table)} SET ${sql.ref(column)} = ${cipher.seal(value)}
                WHERE ${where} AND ${sql.ref(column)} = ${value}`,
          ];
        }),
      );
      // One transaction a page: one commit, not one a value (SQLite's write lock is held for
      // the page only).
      if (updates.length > 0)
        sealed += await retryConflicts(() =>
          db.transaction().execute(async (trx) => {
            let n = 0;
            for (const u of updates) n += Number((await u.execute(trx)).numAffectedRows ?? 0);
            return n;
          }),
        );
      const last = rows[rows.length - 1]!;
      after = key.map((_, i) => last[`k${i}`]);
      if (rows.length < batch) break;
      await pauseBetweenBatches(opts.pauseMs);
    }
  }
  await db
    .insertInto("settings")
    .values({ name: DONE, value: mark, created_at: Date.now() })
    .onConflict((oc) => oc.column("name").doUpdateSet({ value: mark }))
    .execute();
  return sealed;
}

const tuple = (parts: RawBuilder<unknown>[]) => sql`(${sql.join(parts)})`;

/**
 * `sealWrittenInClear` in the background of a worker process: soon after start, then every few
 * minutes while it has not finished (a database outage, a stop) — each run after the first that
 * finished only reads the `settings` record.
 */
export function resealJob(ctx: AppContext): Periodic {
  return new Periodic(
    (stopped) =>
      sealWrittenInClear(ctx.store, { stopped })
        .then((n) => {
          if (n > 0)
            ctx.log.info(
              { component: "encryption", sealed: n },
              "sealed values stored in clear before the key was set",
            );
        })
        .catch((err: unknown) =>
          logBackgroundFailure(
            ctx.log,
            { component: "encryption" },
            "sealing values stored in clear failed",
            err,
          ),
        ),
    () => 300_000,
    1_000,
  );
}
