import { randomBytes } from "node:crypto";
import type { Db } from "../storage/types.js";

const NAME = "blob_signing_key";
const cache = new WeakMap<object, Buffer>();

/**
 * The server's URL-signing key: 32 random bytes stored in `settings` on first use, so that every
 * process sharing the database (API, workers, restarts) signs and verifies with the same key.
 * Concurrent first starts race on the primary key; `ON CONFLICT DO NOTHING` and a re-read make
 * every process end up with the winner's key. `scope` (the Store) keys the in-memory cache; `db`
 * is whatever handle the caller holds (inside a transaction on SQLite's single connection the
 * outer handle would wait on itself).
 */
export async function signingKey(scope: object, db: Db): Promise<Buffer> {
  const hit = cache.get(scope);
  if (hit) return hit;
  const existing = await db
    .selectFrom("settings")
    .select("value")
    .where("name", "=", NAME)
    .executeTakeFirst();
  if (existing) {
    const key = Buffer.from(existing.value, "base64");
    cache.set(scope, key);
    return key;
  }
  await db
    .insertInto("settings")
    .values({ name: NAME, value: randomBytes(32).toString("base64"), created_at: Date.now() })
    .onConflict((oc) => oc.column("name").doNothing())
    .execute();
  const row = await db
    .selectFrom("settings")
    .select("value")
    .where("name", "=", NAME)
    .executeTakeFirstOrThrow();
  const key = Buffer.from(row.value, "base64");
  // A key inserted inside a transaction that may still roll back is not cached: another process
  // could then create a different one. Start-up calls this outside any transaction.
  if (!db.isTransaction) cache.set(scope, key);
  return key;
}
