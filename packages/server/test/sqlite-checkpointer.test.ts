import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { sql } from "kysely";
import { Checkpointer } from "../src/storage/sqlite/checkpointer.js";
import { openSqlite } from "../src/storage/sqlite/index.js";
import type { Store } from "../src/storage/store.js";
import { tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

const PAGE = 4_096;
/** Pages one chunk of writes dirties: 60 rows of ~4 KB, each on a page (or two) of its own. */
const CHUNK_ROWS = 60;

async function writeChunk(store: Store, chunk: number): Promise<void> {
  await store.db.transaction().execute(async (trx) => {
    for (let i = 0; i < CHUNK_ROWS; i++) {
      await sql`INSERT INTO blobs_t (chunk, body) VALUES (${chunk}, ${`${chunk}:${i}:`.padEnd(4_000, "x")})`.execute(
        trx,
      );
    }
  });
}

const size = (file: string) => {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
};

// The database file grows only when a checkpoint copies pages into it from the WAL. The writer's
// own (backstop) checkpoint waits for 4,000 pages of WAL; these tests write far fewer, so the file
// grows only if the checkpoint thread does its work.
test("sqlite: the checkpoint thread copies committed pages into the database file", async (t) => {
  const dir = tempDir();
  const file = join(dir.path, "ckpt.db");
  const failures: Error[] = [];
  const store = openSqlite(file, { checkpointThread: { onBackgroundError: (err) => failures.push(err) } });
  try {
    await store.execScript("CREATE TABLE blobs_t (id INTEGER PRIMARY KEY, chunk INTEGER, body TEXT)");
    const start = size(file);
    const chunks = 20;
    let walMax = 0;
    for (let c = 0; c < chunks; c++) {
      await writeChunk(store, c);
      walMax = Math.max(walMax, size(`${file}-wal`));
      // Every chunk so far reaches the database file, without this connection checkpointing.
      await waitFor(
        `chunk ${c} in the database file`,
        () => size(file) - start >= (c + 1) * CHUNK_ROWS * PAGE,
      );
    }
    // The WAL was copied back and started again from the beginning along the way: it holds a few
    // chunks, not all twenty (~1,200 pages, 5 MB). Not exactly one: the file may have grown while
    // the thread's checkpoint was still finishing, and a chunk begun then is appended instead (seen
    // on a loaded CI machine: 4.2 chunks).
    t.diagnostic(`largest WAL: ${(walMax / (CHUNK_ROWS * PAGE)).toFixed(1)} chunks`);
    assert.ok(walMax < 10 * CHUNK_ROWS * PAGE, `WAL grew to ${walMax} bytes`);
    const rows = await sql<{ n: number }>`SELECT count(*) AS n FROM blobs_t`.execute(store.db);
    assert.equal(rows.rows[0]!.n, chunks * CHUNK_ROWS);
    assert.deepEqual(failures, []);
  } finally {
    await store.close();
    dir.remove();
  }
});

test("sqlite: without the checkpoint thread the same writes stay in the WAL until the backstop", async () => {
  const dir = tempDir();
  const file = join(dir.path, "plain.db");
  // The plain connection keeps SQLite's automatic checkpoint at 1,000 pages; set the backstop's
  // 4,000 to show the thread is what copies pages in the test above.
  const store = openSqlite(file);
  try {
    await store.execScript(
      "PRAGMA wal_autocheckpoint = 4000; CREATE TABLE blobs_t (id INTEGER PRIMARY KEY, chunk INTEGER, body TEXT)",
    );
    const start = size(file);
    for (let c = 0; c < 5; c++) await writeChunk(store, c);
    assert.ok(size(`${file}-wal`) >= 5 * CHUNK_ROWS * PAGE, "the writes are in the WAL");
    assert.ok(size(file) - start < CHUNK_ROWS * PAGE, "and not yet in the database file");
  } finally {
    await store.close();
    dir.remove();
  }
});

test("sqlite: a checkpoint thread that cannot run says so instead of failing silently", async () => {
  const dir = tempDir();
  const failures: Error[] = [];
  // Its connection cannot open a file in a folder that does not exist; the server logs what it hears.
  const ckpt = new Checkpointer(join(dir.path, "missing", "x.db"), 20, (err) => failures.push(err));
  try {
    await waitFor("the failure reported", () => failures.length > 0);
    assert.match(failures[0]!.message, /SQLite checkpoint thread stopped: .*directory does not exist/);
  } finally {
    await ckpt.close();
    dir.remove();
  }
});
