import { sql } from "kysely";
import { retryConflicts } from "../storage/retry.js";
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

/**
 * What lists show of a key: its first 12 characters, but never more than a third of it, so an
 * operator's short `KLEN_API_KEY` is not shown whole (a generated key is 51 characters).
 */
export const keyPrefix = (key: string): string => key.slice(0, Math.min(12, Math.floor(key.length / 3)));

/** Another API key for an existing account; its id and the prefix that lists show of it. */
export async function addApiKey(
  db: Db,
  accountId: number,
  key: string,
  now = Date.now(),
): Promise<{ id: number; prefix: string }> {
  const row = await db
    .insertInto("api_keys")
    .values({ account_id: accountId, key_hash: hashApiKey(key), prefix: keyPrefix(key), created_at: now })
    .returning(["id", "prefix"])
    .executeTakeFirstOrThrow();
  return { id: Number(row.id), prefix: row.prefix };
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

/** The `settings` row naming the default account: the one a first start created. */
const DEFAULT_ACCOUNT = "default_account_id";

/** Creates the default account (first start, no `KLEN_API_KEY`) and records it as such. */
export async function createDefaultAccount(db: Db, key = newApiKey(), now = Date.now()) {
  const created = await createAccount(db, "default", key, now);
  await recordDefault(db, created.account.id, now);
  return created;
}

async function recordDefault(db: Db, id: number, now = Date.now()): Promise<void> {
  await db
    .insertInto("settings")
    .values({ name: DEFAULT_ACCOUNT, value: String(id), created_at: now })
    .onConflict((oc) => oc.column("name").doNothing())
    .execute();
}

/**
 * The default account: the one recorded at its creation, so a rename (`PATCH /v1/account`) keeps
 * it and another account taking its name does not (databases from before the record got it in
 * migration 13). None when accounts were only ever made with `accounts create`.
 */
function defaultAccount(db: Db) {
  return db
    .selectFrom("settings")
    .innerJoin("accounts", (j) => j.on(sql`CAST(settings.value AS INTEGER)`, "=", sql.ref("accounts.id")))
    .select(["accounts.id", "accounts.name", "accounts.auto_summary"])
    .where("settings.name", "=", DEFAULT_ACCOUNT)
    .executeTakeFirst();
}

/**
 * `KLEN_API_KEY` bootstrap: makes sure an account answers to this key. The key joins the default
 * account when there is one (the account a first start created and printed a key for), so setting
 * the variable later does not leave that account's data behind another; otherwise it creates the
 * default account. Idempotent, and safe when several processes start at once: the key hash is
 * unique, so the losers of the race find the winner's account; PostgreSQL starts take turns under
 * the migration lock, and a SQLite transaction that lost its snapshot to another process's write
 * runs again.
 */
export async function ensureAccountForKey(store: Store, key: string): Promise<Account> {
  const existing = await accountByKey(store.db, key);
  if (existing) return existing;
  try {
    return await atStart(store, async (trx) => {
      const raced = await accountByKey(trx, key);
      if (raced) return raced;
      const revoked = await trx
        .selectFrom("revoked_api_keys")
        .select(["revoked_at", "account_id"])
        .where("key_hash", "=", hashApiKey(key))
        .executeTakeFirst();
      if (revoked) throw new RevokedKeyError(Number(revoked.revoked_at), Number(revoked.account_id));
      const d = await defaultAccount(trx);
      if (!d) return (await createDefaultAccount(trx, key)).account;
      await addApiKey(trx, Number(d.id), key);
      return toAccount(d);
    });
  } catch (err) {
    if (!store.isUniqueViolation(err)) throw err;
    const again = await accountByKey(store.db, key);
    if (!again) throw err;
    return again;
  }
}

/** `KLEN_API_KEY` names a key revoked through the API: it is not added back. */
export class RevokedKeyError extends Error {
  constructor(
    readonly revokedAt: number,
    readonly accountId: number,
  ) {
    super(
      `KLEN_API_KEY, a key of account ${accountId}, was revoked (DELETE /v1/api-keys/{id}) at ${new Date(revokedAt).toISOString()} and is not accepted again: set another key of the account (klen-webhooks api-keys create), or none`,
    );
  }
}

/**
 * The first start's account: without `KLEN_API_KEY`, creates the default account and returns its
 * new key, once, however many processes start at once on an empty database. PostgreSQL: under the
 * migration lock, taken by the transaction itself; SQLite: the check and the insert share a
 * transaction, which a concurrent start's commit makes run again (and then find the account).
 */
export async function createFirstAccount(store: Store): Promise<string | undefined> {
  return atStart(store, async (trx) => {
    const any = await trx.selectFrom("accounts").select("id").limit(1).executeTakeFirst();
    return any ? undefined : (await createDefaultAccount(trx)).apiKey;
  });
}

/**
 * Undoes `createFirstAccount` of a start that then could not listen (its port taken): its key was
 * never printed, so the account would answer to no key anyone has, and the next start, finding an
 * account, would print none either. Only while the account is still untouched: one key, nothing
 * else made in it.
 */
export async function undoFirstAccount(store: Store, key: string): Promise<void> {
  await atStart(store, async (trx) => {
    const account = await accountByKey(trx, key);
    if (!account) return;
    const id = account.id;
    const used = await Promise.all(
      (["agents", "contacts", "calls", "endpoints"] as const).map((t) =>
        trx.selectFrom(t).select("account_id").where("account_id", "=", id).limit(1).executeTakeFirst(),
      ),
    );
    const keys = await trx.selectFrom("api_keys").select("id").where("account_id", "=", id).execute();
    if (used.some((r) => r !== undefined) || keys.length !== 1) return;
    await trx.deleteFrom("api_keys").where("account_id", "=", id).execute();
    await trx
      .deleteFrom("settings")
      .where("name", "=", DEFAULT_ACCOUNT)
      .where("value", "=", String(id))
      .execute();
    await trx.deleteFrom("accounts").where("id", "=", id).execute();
  });
}

/**
 * A start-up transaction that processes starting together take in turns: under the migration lock
 * (PostgreSQL; a transaction-level lock, which cannot outlive its transaction's session as a
 * session lock held on another connection could), and run again when another process's commit
 * made its snapshot stale (SQLite).
 */
function atStart<T>(store: Store, fn: (trx: Db) => Promise<T>): Promise<T> {
  return retryConflicts(() =>
    store.db.transaction().execute(async (trx) => {
      await store.startLock(trx);
      return fn(trx);
    }),
  );
}
