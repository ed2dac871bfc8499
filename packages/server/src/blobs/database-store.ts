import { createReadStream } from "node:fs";
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
  return {
    kind: "database",
    transactional: true,
    async writeBuffer(key, data, db = main) {
      const bytes = Buffer.from(data);
      const at = now();
      // One chunk even when empty: the key then exists with size 0.
      for (let n = 0, off = 0; n === 0 || off < bytes.length; n++, off += CHUNK_BYTES) {
        await insert(db, key, n, bytes.subarray(off, off + CHUNK_BYTES), at);
      }
    },
    async adopt(tempFile, key, db = main) {
      const at = now();
      let n = 0;
      let pending: Buffer[] = [];
      let held = 0;
      const flush = async (all: boolean) => {
        while (held >= CHUNK_BYTES || (all && (held > 0 || n === 0))) {
          const joined = Buffer.concat(pending);
          const chunk = joined.subarray(0, CHUNK_BYTES);
          await insert(db, key, n++, chunk, at);
          pending = [joined.subarray(chunk.length)];
          held = joined.length - chunk.length;
        }
      };
      for await (const piece of createReadStream(tempFile, { highWaterMark: CHUNK_BYTES })) {
        pending.push(piece as Buffer);
        held += (piece as Buffer).length;
        await flush(false);
      }
      await flush(true);
    },
    tempPath: (name) => local.tempPath(name),
    async read(key, range) {
      const total = await size(key);
      if (total === undefined) return undefined;
      const start = range?.start ?? 0;
      const end = Math.min(range?.end ?? total - 1, total - 1);
      const first = Math.floor(start / CHUNK_BYTES);
      const last = Math.floor(end / CHUNK_BYTES);
      async function* chunks() {
        for (let n = first; n <= last && end >= start; n++) {
          const row = await main
            .selectFrom("blob_chunks")
            .select("data")
            .where("blob_key", "=", key)
            .where("n", "=", n)
            .executeTakeFirst();
          // Deleted while it was being read (retention): the download ends in an error, not short.
          if (!row) throw new Error(`blob ${key} was deleted while it was being read`);
          const data = Buffer.from(row.data);
          const from = n === first ? start - n * CHUNK_BYTES : 0;
          const to = n === last ? end - n * CHUNK_BYTES + 1 : data.length;
          yield data.subarray(from, to);
        }
      }
      return Readable.from(chunks(), { objectMode: false });
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
