import type { Store } from "../storage/store.js";
import type { Db } from "../storage/types.js";
import { hashApiKey, newApiKey } from "../util/ids.js";

export interface Account {
  id: number;
  name: string;
  auto_summary: boolean;
}

/** Creates an account and its first API key; the key is returned once and stored only hashed. */
export async function createAccount(db: Db, name: string, key = newApiKey(), now = Date.now()) {
  const account = await db
    .insertInto("accounts")
    .values({ name, auto_summary: 0, created_at: now })
    .returning(["id", "name", "auto_summary"])
    .executeTakeFirstOrThrow();
  await addApiKey(db, account.id, key, now);
  return { account: toAccount(account), apiKey: key };
}

/** Another API key for an existing account. */
export async function addApiKey(db: Db, accountId: number, key: string, now = Date.now()): Promise<void> {
  await db
    .insertInto("api_keys")
    .values({ account_id: accountId, key_hash: hashApiKey(key), prefix: key.slice(0, 12), created_at: now })
    .execute();
}

export function toAccount(row: { id: number; name: string; auto_summary: number }): Account {
  return { id: Number(row.id), name: row.name, auto_summary: row.auto_summary === 1 };
}

export async function accountByKey(db: Db, key: string): Promise<Account | undefined> {
  const row = await db
    .selectFrom("api_keys")
    .innerJoin("accounts", "accounts.id", "api_keys.account_id")
    .select(["accounts.id", "accounts.name", "accounts.auto_summary"])
    .where("api_keys.key_hash", "=", hashApiKey(key))
    .executeTakeFirst();
  return row ? toAccount(row) : undefined;
}

/**
 * `KLEN_API_KEY` bootstrap: makes sure an account answers to this key. The key joins the account
 * named `name` when there is one (the account a first start created and printed a key for), so
 * setting the variable later does not leave the data of that account behind another; otherwise it
 * creates that account. Idempotent, and safe when several processes start at once: the key hash is
 * unique, so the losers of the race find the winner's account.
 */
export async function ensureAccountForKey(store: Store, key: string, name = "default"): Promise<Account> {
  const existing = await accountByKey(store.db, key);
  if (existing) return existing;
  try {
    return await store.db.transaction().execute(async (trx) => {
      const named = await trx
        .selectFrom("accounts")
        .select(["id", "name", "auto_summary"])
        .where("name", "=", name)
        .orderBy("id")
        .limit(1)
        .executeTakeFirst();
      if (!named) return (await createAccount(trx, name, key)).account;
      await addApiKey(trx, Number(named.id), key);
      return toAccount(named);
    });
  } catch (err) {
    if (!store.isUniqueViolation(err)) throw err;
    const again = await accountByKey(store.db, key);
    if (!again) throw err;
    return again;
  }
}
