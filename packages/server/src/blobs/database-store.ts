import { open } from "node:fs/promises";
import { Readable } from "node:stream";
import { sql } from "kysely";
import type { Db } from "../storage/types.js";
import type { BlobStore } from "./store.js";

/**
 * A chunk's size: a range request reads only the chunks it covers, and no statement carries more
 * than this (PostgreSQL's TOAST and SQLite's overflow pages hold a chunk either way).
 */
export const CHUNK_BYTES = 256 * 1024;

/**
 * KLEN_BLOB_STORE=database: blob bytes in the `blob_chunks` table, numbered from 0, so that every
 * process sharing the database serves every blob without a shared folder. Written in the caller's
 * transaction when it passes one (the bytes then exist exactly when the blob's row does); uploads
 * still stream into a local temp file first (`tempPath`, from `local`), which `adopt` copies in.
 */
export function databaseBlobStore(main: Db, local: BlobStore, now: () => number = Date.now): BlobStore {
  const insert = async (db: Db, key: string, n: number, data: Buffer, at: number) => {
    await db.insertInto("blob_chunks").values({ blob_key: key, n, data, created_at: at }).execute();
  };
  // length() of a BLOB (SQLite) or an out-of-line BYTEA (PostgreSQL) is read from the value's header
  // or TOAST pointer, not its bytes: a column stored after `data` made SQLite walk every chunk's
  // overflow pages (80 ms for 150 MiB, on the event loop, twice a download).
  const size = async (key: string) => {
    const row = await main
      .selectFrom("blob_chunks")
      .select([
        sql<number>`count(*)`.as("chunks"),
        sql<number | string | null>`sum(length(data))`.as("bytes"),
      ])
      .where("blob_key", "=", key)
      .executeTakeFirst();
    return row && Number(row.chunks) > 0 ? Number(row.bytes) : undefined;
  };
  /** Inserts `pieces` as chunks 0, 1, …: at least one, so that an empty blob exists, with size 0. */
  const insertAll = async (db: Db, key: string, pieces: AsyncIterable<Buffer> | Iterable<Buffer>) => {
    const at = now();
    let n = 0;
    for await (const piece of pieces) await insert(db, key, n++, piece, at);
    if (n === 0) await insert(db, key, 0, Buffer.alloc(0), at);
  };
  return {
    kind: "database",
    transactional: true,
    async writeBuffer(key, data, db = main) {
      await insertAll(db, key, slices(Buffer.from(data)));
    },
    async adopt(tempFile, key, db = main) {
      await insertAll(db, key, fileChunks(tempFile));
    },
    tempPath: (name) => local.tempPath(name),
    async read(key, range) {
      // The blob route knows the size and always gives the range; only a whole read asks for it.
      const total = range ? undefined : await size(key);
      if (!range && total === undefined) return undefined;
      const start = range?.start ?? 0;
      const end = range?.end ?? (total as number) - 1;
      const first = Math.floor(start / CHUNK_BYTES);
      const last = Math.floor(end / CHUNK_BYTES);
      const chunk = async (n: number) =>
        (
          await main
            .selectFrom("blob_chunks")
            .select("data")
            .where("blob_key", "=", key)
            .where("n", "=", n)
            .executeTakeFirst()
        )?.data;
      // Read before the stream is made: no first chunk is no blob.
      const head = end >= start ? await chunk(first) : Buffer.alloc(0);
      if (head === undefined) return undefined;
      async function* pieces() {
        for (let n = first; n <= last && end >= start; n++) {
          const data = n === first ? head : await chunk(n);
          // Deleted while it was being read (retention): the download ends in an error, not short.
          if (data === undefined) throw new Error(`blob ${key} was deleted while it was being read`);
          const bytes = Buffer.from(data);
          const from = n === first ? start - n * CHUNK_BYTES : 0;
          const to = n === last ? end - n * CHUNK_BYTES + 1 : bytes.length;
          yield bytes.subarray(from, to);
        }
      }
      return Readable.from(pieces(), { objectMode: false });
    },
    size,
    async remove(key, db = main) {
      await db.deleteFrom("blob_chunks").where("blob_key", "=", key).execute();
    },
    async listOlderThan(beforeMs) {
      // Only the orphans (no row), so that a sweep does not read back every key ever stored.
      const rows = await main
        .selectFrom("blob_chunks as c")
        .select("c.blob_key")
        .where("c.n", "=", 0)
        .where("c.created_at", "<", beforeMs)
        .where(({ not, exists, selectFrom }) =>
          not(exists(selectFrom("blobs as b").select("b.id").whereRef("b.id", "=", "c.blob_key"))),
        )
        .execute();
      return rows.map((r) => r.blob_key);
    },
  };
}

/** `bytes` in chunk-sized slices (none for no bytes). */
function* slices(bytes: Buffer): Iterable<Buffer> {
  for (let off = 0; off < bytes.length; off += CHUNK_BYTES) yield bytes.subarray(off, off + CHUNK_BYTES);
}

/** A file's bytes in chunk-sized pieces, each read whole (a read may return less than asked). */
async function* fileChunks(file: string): AsyncIterable<Buffer> {
  const fh = await open(file, "r");
  try {
    for (let position = 0; ; ) {
      const buf = Buffer.alloc(CHUNK_BYTES);
      let filled = 0;
      while (filled < CHUNK_BYTES) {
        const { bytesRead } = await fh.read(buf, filled, CHUNK_BYTES - filled, position + filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      if (filled === 0) return;
      yield buf.subarray(0, filled);
      if (filled < CHUNK_BYTES) return;
      position += filled;
    }
  } finally {
    await fh.close();
  }
}
