import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { test } from "node:test";
import {
  accountByKey,
  createAccount,
  createDefaultAccount,
  ensureAccountForKey,
} from "../src/accounts/accounts.js";
import { migrate } from "../src/storage/migrate.js";
import { openStore } from "../src/storage/store.js";
import { tempDir } from "./helpers/server.js";

test("KLEN_API_KEY joins the default account a first start created, even renamed, and never another account named default", async () => {
  const dir = tempDir();
  const store = await openStore(`sqlite:${dir.path}/klen.db`);
  try {
    await migrate(store);
    // The first start without KLEN_API_KEY: the default account and its printed key.
    const first = await store.db.transaction().execute((trx) => createDefaultAccount(trx));
    // Renamed by its owner, and a tenant calling itself "default".
    await store.db.updateTable("accounts").set({ name: "Acme" }).where("id", "=", first.account.id).execute();
    const tenant = await store.db.transaction().execute((trx) => createAccount(trx, "default"));
    const joined = await ensureAccountForKey(store, "dev_key_0123456789");
    assert.equal(joined.id, first.account.id);
    assert.equal((await accountByKey(store.db, "dev_key_0123456789"))?.id, first.account.id);
    assert.equal(
      (await accountByKey(store.db, first.apiKey))?.id,
      first.account.id,
      "the printed key still works",
    );
    assert.equal((await accountByKey(store.db, tenant.apiKey))?.id, tenant.account.id);
    // Idempotent: the same key again changes nothing.
    assert.equal((await ensureAccountForKey(store, "dev_key_0123456789")).id, first.account.id);
    const accounts = await store.db.selectFrom("accounts").select("id").execute();
    assert.equal(accounts.length, 2);
  } finally {
    await store.close();
    dir.remove();
  }
});

test("on a database from before the record, the oldest account named default is the default", async () => {
  const dir = tempDir();
  const store = await openStore(`sqlite:${dir.path}/klen.db`);
  try {
    await migrate(store);
    const old = await store.db.transaction().execute((trx) => createAccount(trx, "default"));
    await store.db.transaction().execute((trx) => createAccount(trx, "default"));
    assert.equal((await ensureAccountForKey(store, "dev_key_0123456789")).id, old.account.id);
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

test("processes starting at once on one fresh SQLite file with one KLEN_API_KEY all come up, on one account", async () => {
  const dir = tempDir();
  const url = `sqlite:${dir.path}/klen.db`;
  const store = await openStore(url);
  try {
    await migrate(store);
    const start = Date.now() + 2_000;
    const script = `
      const { openStore } = await import(${JSON.stringify(new URL("../src/storage/store.js", import.meta.url).href)});
      const { ensureAccountForKey } = await import(${JSON.stringify(new URL("../src/accounts/accounts.js", import.meta.url).href)});
      const store = await openStore(${JSON.stringify(url)});
      // All at the same moment, once every process has loaded.
      await new Promise((r) => setTimeout(r, ${start} - Date.now()));
      const a = await ensureAccountForKey(store, "dev_key_0123456789");
      await store.close();
      process.stdout.write(String(a.id));`;
    const runs = await Promise.all(
      Array.from(
        { length: 8 },
        () =>
          new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
            const p = spawn(process.execPath, ["--input-type=module", "-e", script]);
            let out = "";
            let err = "";
            p.stdout.on("data", (d) => (out += d));
            p.stderr.on("data", (d) => (err += d));
            p.on("close", (code) => resolve({ code, out, err }));
          }),
      ),
    );
    for (const r of runs) assert.equal(r.code, 0, r.err);
    assert.equal(new Set(runs.map((r) => r.out)).size, 1, "one account");
    const accounts = await store.db.selectFrom("accounts").select("id").execute();
    assert.equal(accounts.length, 1);
  } finally {
    await store.close();
    dir.remove();
  }
});
