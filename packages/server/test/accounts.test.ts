import assert from "node:assert/strict";
import { test } from "node:test";
import { accountByKey, createAccount, ensureAccountForKey } from "../src/accounts/accounts.js";
import { migrate } from "../src/storage/migrate.js";
import { openStore } from "../src/storage/store.js";
import { tempDir } from "./helpers/server.js";

test("KLEN_API_KEY joins the default account a first start created, instead of a second account of that name", async () => {
  const dir = tempDir();
  const store = await openStore(`sqlite:${dir.path}/klen.db`);
  try {
    await migrate(store);
    // The first start without KLEN_API_KEY: an account named "default" and its printed key.
    const first = await store.db.transaction().execute((trx) => createAccount(trx, "default"));
    const joined = await ensureAccountForKey(store, "dev_key_0123456789");
    assert.equal(joined.id, first.account.id);
    assert.equal((await accountByKey(store.db, "dev_key_0123456789"))?.id, first.account.id);
    assert.equal(
      (await accountByKey(store.db, first.apiKey))?.id,
      first.account.id,
      "the printed key still works",
    );
    // Idempotent, and another account's name is not "default": a key for "acme" creates it.
    assert.equal((await ensureAccountForKey(store, "dev_key_0123456789")).id, first.account.id);
    const acme = await ensureAccountForKey(store, "acme_key_0123456789", "acme");
    assert.notEqual(acme.id, first.account.id);
    assert.equal(acme.name, "acme");
    const names = await store.db.selectFrom("accounts").select("name").orderBy("id").execute();
    assert.deepEqual(
      names.map((a) => a.name),
      ["default", "acme"],
    );
  } finally {
    await store.close();
    dir.remove();
  }
});

test("KLEN_API_KEY on an empty database creates the default account", async () => {
  const dir = tempDir();
  const store = await openStore(`sqlite:${dir.path}/klen.db`);
  try {
    await migrate(store);
    const a = await ensureAccountForKey(store, "dev_key_0123456789");
    assert.equal(a.name, "default");
    assert.equal((await accountByKey(store.db, "dev_key_0123456789"))?.id, a.id);
  } finally {
    await store.close();
    dir.remove();
  }
});
