import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import Database from "better-sqlite3";
import { sql } from "kysely";
import { storageFailure, uploadFailure } from "../src/blobs/upload.js";
import { openSqlite } from "../src/storage/sqlite/index.js";
import { isDatabaseUnavailable } from "../src/storage/store.js";
import { spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

// What the machine can do to the storage under a running server: the SQLite file deleted, the disk
// full, another process holding the write lock. Each is an outage (503, retried by workers), never
// an acknowledgement that is then lost, nor a 500 naming the wrong error.

test("sqlite: a database file deleted while the server runs: every request is a 503 from then on, and it is logged", async () => {
  const dir = tempDir();
  const server = await spawnServer({ dataDir: dir.path });
  try {
    assert.equal((await server.api.post("/v1/agents", { name: "Before" })).status, 201);
    rmSync(join(dir.path, "klen.db"));
    // Nothing written from here on could be read again after a restart: none of it is acknowledged.
    const refused = await waitFor("writes refused", async () => {
      const r = await server.api.post("/v1/agents", { name: "After" });
      return r.status === 201 ? undefined : r;
    });
    assert.equal(refused.status, 503);
    assert.equal(refused.body.error.code, "database_unavailable");
    assert.equal((await fetch(`${server.url}/healthz`)).status, 503);
    await waitFor("logged", () => /database file lost/.test(server.output()));
    assert.match(server.output(), /klen\.db was deleted while open/);
  } finally {
    await server.kill();
    dir.remove();
  }
});

test("sqlite: a full disk is a 503 naming SQLITE_FULL, not a failed ROLLBACK's 500; it recovers when there is room", async () => {
  const dir = tempDir();
  const file = join(dir.path, "full.db");
  const store = openSqlite(file);
  try {
    await store.execScript("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)");
    const pages = Number(
      (await sql<{ page_count: number }>`PRAGMA page_count`.execute(store.db)).rows[0]!.page_count,
    );
    // The file may not grow past what it has: the next page it needs is a full disk to SQLite.
    await sql.raw(`PRAGMA max_page_count = ${pages}`).execute(store.db);
    const write = () =>
      store.db.transaction().execute(async (trx) => {
        for (let i = 0; i < 50; i++)
          await sql`INSERT INTO t (body) VALUES (${"x".repeat(4_000)})`.execute(trx);
      });
    const err = await write().then(
      () => undefined,
      (e: unknown) => e as { code?: string; message?: string },
    );
    assert.ok(err, "the write failed");
    assert.equal(err.code, "SQLITE_FULL", err.message);
    assert.equal(isDatabaseUnavailable(err), true);
    await sql.raw(`PRAGMA max_page_count = ${pages + 1_000}`).execute(store.db);
    await write();
    assert.equal(
      Number((await sql<{ n: number }>`SELECT count(*) AS n FROM t`.execute(store.db)).rows[0]!.n),
      50,
    );
  } finally {
    await store.close();
    dir.remove();
  }
});

test("sqlite: another process holding the write lock makes writes a 503 with Retry-After, and /healthz a 503 once the dispatcher has failed for 5 s; they go through once it lets go", async () => {
  const dir = tempDir();
  const server = await spawnServer({ dataDir: dir.path });
  const other = new Database(join(dir.path, "klen.db"));
  try {
    other.exec("BEGIN EXCLUSIVE");
    const r = await server.api.post("/v1/agents", { name: "Locked out" });
    assert.equal(r.status, 503);
    assert.equal(r.body.error.code, "database_unavailable");
    assert.equal(r.headers.get("retry-after"), "1");
    // Reads still work under the lock, but the dispatcher cannot claim: once every claim has
    // failed for a while, /healthz says so (a read alone said 200 for as long as the lock lasted).
    assert.equal((await fetch(`${server.url}/healthz`)).status, 200, "not at the first failure");
    const unhealthy = await waitFor("/healthz to report the failing dispatcher", async () => {
      const h = await fetch(`${server.url}/healthz`);
      return h.status === 503
        ? ((await h.json()) as { error: { code: string; message: string } })
        : undefined;
    });
    assert.equal(unhealthy.error.code, "unhealthy");
    assert.match(unhealthy.error.message, /dispatcher has failed every try for \d+ s: .*(locked|busy)/i);
    other.exec("COMMIT");
    assert.equal((await server.api.post("/v1/agents", { name: "Let in" })).status, 201);
    await waitFor(
      "/healthz to be 200 again",
      async () => (await fetch(`${server.url}/healthz`)).status === 200,
    );
  } finally {
    if (other.inTransaction) other.exec("ROLLBACK");
    other.close();
    await server.kill();
    dir.remove();
  }
});

test("a recording the server cannot write (a full disk) is a 503 to send again, not the client's 400 upload_incomplete", () => {
  for (const code of ["ENOSPC", "EDQUOT", "EIO", "EROFS"]) {
    const err = uploadFailure(Object.assign(new Error("write failed"), { code }));
    assert.deepEqual([err.status, err.code, err.details?.retry_after], [503, "storage_unavailable", 1], code);
  }
  // A transcript or summary too long to send inline is a file too: the same 503, naming it.
  const text = storageFailure(Object.assign(new Error("write failed"), { code: "ENOSPC" }), "transcript");
  assert.deepEqual(
    [text?.status, text?.code, text?.message],
    [503, "storage_unavailable", "the transcript could not be stored; retry shortly"],
  );
  assert.equal(storageFailure(new Error("something else"), "summary"), undefined);
  // A client that went away mid-upload is still told its upload did not complete.
  const gone = uploadFailure(new Error("the client aborted the upload"));
  assert.deepEqual([gone.status, gone.code], [400, "upload_incomplete"]);
});
