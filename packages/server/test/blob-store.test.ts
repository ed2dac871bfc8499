import assert from "node:assert/strict";
import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, type TestContext, test } from "node:test";
import { sql } from "kysely";
import { CHUNK_BYTES, databaseBlobStore } from "../src/blobs/database-store.js";
import { localBlobStore } from "../src/blobs/store.js";
import { purgeExpired } from "../src/retention/purge.js";
import { synthesizeWav } from "../src/simulator/wav.js";
import { migrate } from "../src/storage/migrate.js";
import { openStore } from "../src/storage/store.js";
import { type Backend, backends } from "./helpers/backends.js";
import { onServer } from "./helpers/content.js";
import { inProcessApi } from "./helpers/in-process.js";
import { tempDir } from "./helpers/server.js";
import { uploadRecording } from "./helpers/upload.js";
import { waitFor } from "./helpers/wait.js";

const DAY = 86_400_000;
const KEY = "klen_test_key_blob_store";

/** A server in this process on `databaseUrl`, with `dataDir` for its folder; stopped after the test. */
async function serve(t: TestContext, databaseUrl: string, dataDir: string, env: Record<string, string> = {}) {
  const { running, base, api } = await inProcessApi({ databaseUrl, dataDir, apiKey: KEY, env });
  let stopped = false;
  const stop = async () => {
    if (!stopped) await running.stop(1000);
    stopped = true;
  };
  t.after(stop);
  return { running, base, api, stop };
}

type Server = Awaited<ReturnType<typeof serve>>;

async function fresh(t: TestContext, backend: Backend) {
  const db = await backend.fresh();
  t.after(() => db.cleanup());
  return db;
}

/** A finished call with a transcript too long to go inline and `wav` as its recording. */
async function callWithContent(s: Server, wav: Buffer, transcript: string): Promise<number> {
  const agents = await s.api.get("/v1/agents");
  const agentId = agents.body.data[0]?.id ?? (await s.api.post("/v1/agents", { name: "Support" })).body.id;
  const c = await s.api.post("/v1/calls", {
    agent_id: agentId,
    type: "inbound",
    phone_number: "+15551234567",
  });
  assert.equal(c.status, 201);
  for (const [step, body] of [
    ["start", {}],
    ["end", {}],
    ["transcript", { transcript }],
  ] as const) {
    const r = await s.api.post(`/v1/calls/${c.body.id}/${step}`, body);
    assert.equal(r.status, 200, `${step}: ${JSON.stringify(r.body)}`);
  }
  await uploadRecording(s.base, KEY, c.body.id, wav);
  return c.body.id;
}

/** The call's media as another server lists them: kind → pre-signed URL on that server. */
async function mediaOn(s: Server, callId: number): Promise<Record<string, string>> {
  const res = await s.api.get(`/v1/calls/${callId}/media`);
  assert.equal(res.status, 200);
  return Object.fromEntries(
    (res.body.data as Array<{ kind: string; url: string }>).map((m) => [m.kind, onServer(s.base, m.url)]),
  );
}

async function bytes(url: string, headers: Record<string, string> = {}, status = 200): Promise<Buffer> {
  const r = await fetch(url, { headers });
  assert.equal(r.status, status, `${url} ${JSON.stringify(headers)}`);
  return Buffer.from(await r.arrayBuffer());
}

/** Blob files in a data folder (its temp area apart). */
const blobFiles = (dataDir: string) =>
  existsSync(join(dataDir, "blobs")) ? readdirSync(join(dataDir, "blobs")).filter((f) => f !== "tmp") : [];
const tempFiles = (dataDir: string) =>
  existsSync(join(dataDir, "blobs", "tmp")) ? readdirSync(join(dataDir, "blobs", "tmp")) : [];

/** A recording of more than two chunks, so reads cross chunk boundaries. */
const bigWav = () => synthesizeWav({ seconds: 40, sampleRate: 8000, seed: 21 });

async function chunkCounts(s: Server): Promise<Map<string, number>> {
  const rows = await s.running.ctx.store.db
    .selectFrom("blob_chunks")
    .select(["blob_key", sql<number>`count(*)`.as("n")])
    .groupBy("blob_key")
    .execute();
  return new Map(rows.map((r) => [r.blob_key, Number(r.n)]));
}

for (const backend of backends()) {
  describe(`KLEN_BLOB_STORE=database (${backend.name})`, () => {
    test("what one process stores, another with its own KLEN_DATA_DIR serves whole and by range; no file is written", async (t) => {
      const db = await fresh(t, backend);
      const own = tempDir();
      t.after(() => own.remove());
      const a = await serve(t, db.databaseUrl, db.dataDir, { KLEN_BLOB_STORE: "database" });
      const b = await serve(t, db.databaseUrl, own.path, { KLEN_BLOB_STORE: "database" });
      const wav = bigWav();
      assert.ok(wav.length > 2 * CHUNK_BYTES, `${wav.length} bytes`);
      const transcript = `Agent: Hello!\n${"Customer: these are words of the call. ".repeat(200)}`;
      const callId = await callWithContent(a, wav, transcript);

      const urls = await mediaOn(b, callId);
      assert.deepEqual(Object.keys(urls).sort(), ["recording", "transcript"]);
      assert.equal((await bytes(urls.transcript!)).toString("utf8"), transcript);
      assert.ok((await bytes(urls.recording!)).equals(wav));
      // Across the first chunk boundary, within the last chunk, and a suffix.
      const across = await bytes(
        urls.recording!,
        { range: `bytes=${CHUNK_BYTES - 100}-${CHUNK_BYTES + 99}` },
        206,
      );
      assert.ok(across.equals(wav.subarray(CHUNK_BYTES - 100, CHUNK_BYTES + 100)));
      const tail = await bytes(urls.recording!, { range: "bytes=-1000" }, 206);
      assert.ok(tail.equals(wav.subarray(wav.length - 1000)));
      const open = await bytes(urls.recording!, { range: `bytes=${2 * CHUNK_BYTES}-` }, 206);
      assert.ok(open.equals(wav.subarray(2 * CHUNK_BYTES)));
      const head = await fetch(urls.recording!, { method: "HEAD" });
      assert.equal(head.headers.get("content-length"), String(wav.length));

      // The recording in ceil(size / chunk) chunks, the transcript in one; the rows say where.
      const chunks = await chunkCounts(a);
      const recordingKey = new URL(urls.recording!).pathname.split("/").pop()!;
      assert.equal(chunks.get(recordingKey), Math.ceil(wav.length / CHUNK_BYTES));
      assert.equal(chunks.size, 2);
      const stores = await a.running.ctx.store.db.selectFrom("blobs").select("store").execute();
      assert.deepEqual(
        stores.map((r) => r.store),
        ["database", "database"],
      );
      // Neither process wrote a file, nor left its upload's temp file.
      assert.deepEqual(blobFiles(db.dataDir), []);
      assert.deepEqual(tempFiles(db.dataDir), []);
      assert.deepEqual(blobFiles(own.path), []);
    });

    test("a test call's recording and long transcript are kept in the database too", async (t) => {
      const db = await fresh(t, backend);
      const s = await serve(t, db.databaseUrl, db.dataDir, { KLEN_BLOB_STORE: "database" });
      const agent = await s.api.post("/v1/agents", { name: "Support" });
      const started = await s.api.post("/v1/test-calls", { agent_id: agent.body.id, transcript_bytes: 4096 });
      assert.equal(started.status, 202, JSON.stringify(started.body));
      const callId = started.body.call_id as number;
      await waitFor(
        "the test call's recording",
        async () => (await s.api.get(`/v1/calls/${callId}`)).body.has_recording,
      );
      const urls = await mediaOn(s, callId);
      const wav = await bytes(urls.recording!);
      assert.equal(wav.subarray(0, 4).toString("latin1"), "RIFF");
      assert.ok((await bytes(urls.transcript!)).length >= 4096);
      const chunks = await chunkCounts(s);
      assert.ok(chunks.has(new URL(urls.recording!).pathname.split("/").pop()!));
      assert.deepEqual(blobFiles(db.dataDir), []);
    });

    test("retention deletes a blob's chunks with its row; chunks without a row are swept after an hour", async (t) => {
      const db = await fresh(t, backend);
      const s = await serve(t, db.databaseUrl, db.dataDir, { KLEN_BLOB_STORE: "database" });
      const wav = synthesizeWav({ seconds: 1, sampleRate: 8000, seed: 3 });
      await callWithContent(s, wav, `Agent: ${"words ".repeat(1000)}`);
      const trx = s.running.ctx.store.db;
      // An orphan (a crash between a write outside a transaction and its row), two hours old, and
      // a fresh one, which the sweep leaves: its row may be about to commit.
      const old = Date.now() - 2 * 3_600_000;
      await trx
        .insertInto("blob_chunks")
        .values([
          { blob_key: "blb_orphan_old_0123456789", n: 0, data: Buffer.from("x"), created_at: old },
          { blob_key: "blb_orphan_old_0123456789", n: 1, data: Buffer.from("y"), created_at: old },
          {
            blob_key: "blb_orphan_new_0123456789",
            n: 0,
            data: Buffer.from("z"),
            created_at: Date.now(),
          },
        ])
        .execute();
      const now = await purgeExpired(s.running.ctx, Date.now());
      assert.equal(now.orphans, 1);
      assert.deepEqual(
        [...(await chunkCounts(s)).keys()].filter((k) => k.includes("orphan")),
        ["blb_orphan_new_0123456789"],
      );
      assert.equal((await chunkCounts(s)).size, 3);

      const later = await purgeExpired(s.running.ctx, Date.now() + 31 * DAY);
      assert.equal(later.blobs, 2);
      // The recording's and the transcript's chunks went with their rows (the fresh orphan is
      // now old too, by the purge's clock, but the sweep goes by the real one as well).
      assert.deepEqual([...(await chunkCounts(s)).keys()], ["blb_orphan_new_0123456789"]);
    });
  });
}

describe("KLEN_BLOB_STORE=database: encryption, a change of store, transactions", () => {
  test("with KLEN_ENCRYPTION_KEY the chunks hold sealed bytes, served in clear, by range too", async (t) => {
    const dir = tempDir();
    t.after(() => dir.remove());
    const s = await serve(t, `sqlite:${dir.path}/klen.db`, dir.path, {
      KLEN_BLOB_STORE: "database",
      KLEN_ENCRYPTION_KEY: "a-test-encryption-key-of-32-chars!",
    });
    const wav = bigWav();
    const callId = await callWithContent(s, wav, `Agent: ${"secret words ".repeat(400)}`);
    const urls = await mediaOn(s, callId);
    assert.ok((await bytes(urls.recording!)).equals(wav));
    const part = await bytes(urls.recording!, { range: `bytes=${CHUNK_BYTES - 7}-${CHUNK_BYTES + 7}` }, 206);
    assert.ok(part.equals(wav.subarray(CHUNK_BYTES - 7, CHUNK_BYTES + 8)));
    const key = new URL(urls.recording!).pathname.split("/").pop()!;
    const first = await s.running.ctx.store.db
      .selectFrom("blob_chunks")
      .select("data")
      .where("blob_key", "=", key)
      .where("n", "=", 0)
      .executeTakeFirstOrThrow();
    assert.equal(first.data.length, CHUNK_BYTES);
    assert.ok(!Buffer.from(first.data).equals(wav.subarray(0, CHUNK_BYTES)));
    assert.ok(!Buffer.from(first.data).includes(Buffer.from("RIFF")));
  });

  test("changing KLEN_BLOB_STORE keeps serving what the other store holds", async (t) => {
    const dir = tempDir();
    t.after(() => dir.remove());
    const url = `sqlite:${dir.path}/klen.db`;
    const one = synthesizeWav({ seconds: 1, sampleRate: 8000, seed: 1 });
    const two = synthesizeWav({ seconds: 1, sampleRate: 8000, seed: 2 });
    const first = await serve(t, url, dir.path);
    const inFolder = await callWithContent(first, one, `Agent: ${"one ".repeat(800)}`);
    await first.stop();
    assert.equal(blobFiles(dir.path).length, 2);

    const second = await serve(t, url, dir.path, { KLEN_BLOB_STORE: "database" });
    const inDatabase = await callWithContent(second, two, `Agent: ${"two ".repeat(800)}`);
    assert.equal(blobFiles(dir.path).length, 2);
    assert.equal((await chunkCounts(second)).size, 2);
    assert.ok((await bytes((await mediaOn(second, inFolder)).recording!)).equals(one));
    await second.stop();

    const third = await serve(t, url, dir.path, { KLEN_BLOB_STORE: "local" });
    assert.ok((await bytes((await mediaOn(third, inFolder)).recording!)).equals(one));
    assert.ok((await bytes((await mediaOn(third, inDatabase)).recording!)).equals(two));
    const transcript = await bytes((await mediaOn(third, inDatabase)).transcript!);
    assert.equal(transcript.toString("utf8"), `Agent: ${"two ".repeat(800)}`);
  });

  test("bytes written in a transaction that rolls back are gone with it; an upload's file is left to its caller", async (t) => {
    const dir = tempDir();
    t.after(() => dir.remove());
    const store = await openStore(`sqlite:${dir.path}/klen.db`);
    t.after(() => store.close());
    await migrate(store);
    const blobs = databaseBlobStore(store.db, localBlobStore(dir.path));
    const temp = await blobs.tempPath("blb_upload_0123456789");
    const content = Buffer.alloc(CHUNK_BYTES * 2 + 5, 9);
    writeFileSync(temp, content);
    await assert.rejects(
      store.db.transaction().execute(async (trx) => {
        await blobs.adopt(temp, "blb_upload_0123456789", trx);
        await blobs.writeBuffer("blb_text_000000000000", "hello", trx);
        assert.equal(await chunksIn(trx, "blb_upload_0123456789"), 3);
        throw new Error("rolled back");
      }),
      /rolled back/,
    );
    assert.equal(await blobs.size("blb_upload_0123456789"), undefined);
    assert.equal(await blobs.size("blb_text_000000000000"), undefined);
    // The same file adopted again (a retried transaction) lands whole.
    assert.ok(existsSync(temp));
    await store.db.transaction().execute((trx) => blobs.adopt(temp, "blb_upload_0123456789", trx));
    assert.equal(await blobs.size("blb_upload_0123456789"), content.length);
    const read = await blobs.read("blb_upload_0123456789");
    const back: Buffer[] = [];
    for await (const piece of read!) back.push(piece as Buffer);
    assert.ok(Buffer.concat(back).equals(content));
    // Empty content is stored as one empty chunk: it exists, with size 0.
    await blobs.writeBuffer("blb_empty_00000000000", "");
    assert.equal(await blobs.size("blb_empty_00000000000"), 0);
  });
});

async function chunksIn(db: Parameters<typeof databaseBlobStore>[0], key: string): Promise<number> {
  const row = await db
    .selectFrom("blob_chunks")
    .select(sql<number>`count(*)`.as("n"))
    .where("blob_key", "=", key)
    .executeTakeFirstOrThrow();
  return Number(row.n);
}
