import { randomBytes } from "node:crypto";
import { isSealed } from "../storage/encryption.js";
import type { Store } from "../storage/store.js";
import type { Db } from "../storage/types.js";

const NAME = "blob_signing_key";
const cache = new WeakMap<object, Buffer>();

/**
 * The server's URL-signing key: 32 random bytes stored in `settings` on first use, so that every
 * process sharing the database (API, workers, restarts) signs and verifies with the same key.
 * Concurrent first starts race on the primary key; `ON CONFLICT DO NOTHING` and a re-read make
 * every process end up with the winner's key. `store` keys the in-memory cache; `db` is whatever
 * handle the caller holds (inside a transaction on SQLite's single connection the outer handle
 * would wait on itself).
 *
 * With KLEN_ENCRYPTION_KEY the key is stored sealed, like the endpoint secrets: a copy of the
 * database alone must not be enough to sign URLs that the server would then serve decrypted. A
 * key stored in clear before encryption was turned on is sealed at the next start.
 */
export async function signingKey(store: Store, db: Db): Promise<Buffer> {
  const hit = cache.get(store);
  if (hit) return hit;
  const { cipher } = store;
  const read = () => storedKey(db);
  let stored = await read();
  if (stored === undefined) {
    const fresh = randomBytes(32).toString("base64");
    await db
      .insertInto("settings")
      .values({ name: NAME, value: cipher ? cipher.seal(fresh) : fresh, created_at: Date.now() })
      .onConflict((oc) => oc.column("name").doNothing())
      .execute();
    stored = await read();
    if (stored === undefined) throw new Error("the blob signing key could not be stored");
  } else if (cipher && !isSealed(stored) && !db.isTransaction) {
    await db
      .updateTable("settings")
      .set({ value: cipher.seal(stored) })
      .where("name", "=", NAME)
      .where("value", "=", stored)
      .execute();
  }
  if (!cipher && isSealed(stored))
    throw new Error(
      "the blob signing key is stored encrypted: start with the KLEN_ENCRYPTION_KEY it was sealed with",
    );
  const key = Buffer.from(cipher ? openWith(cipher, stored) : stored, "base64");
  // A key inserted inside a transaction that may still roll back is not cached: another process
  // could then create a different one. Start-up calls this outside any transaction.
  if (!db.isTransaction) cache.set(store, key);
  return key;
}

/** Opens the stored key, saying which setting is wrong when it was sealed under another key. */
function openWith(cipher: NonNullable<Store["cipher"]>, stored: string): string {
  try {
    return cipher.open(stored);
  } catch (err) {
    throw new Error(
      "the blob signing key cannot be opened with this KLEN_ENCRYPTION_KEY: the data was sealed with another key; start every process with the key it was sealed with",
      { cause: err },
    );
  }
}

/**
 * Whether the stored signing key is sealed: it is from the start of the first process that has
 * KLEN_ENCRYPTION_KEY, so a process without the key can tell that another one turned it on.
 */
export async function signingKeySealed(db: Db): Promise<boolean> {
  const stored = await storedKey(db);
  return stored !== undefined && isSealed(stored);
}

/** The signing key as stored (sealed or not); undefined before the first start made it. */
async function storedKey(db: Db): Promise<string | undefined> {
  return (await db.selectFrom("settings").select("value").where("name", "=", NAME).executeTakeFirst())?.value;
}
