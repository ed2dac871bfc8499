import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, readdir, rename, stat, unlink, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Readable, Transform } from "node:stream";
import type { Db } from "../storage/types.js";

/**
 * Where blob bytes live. Rows in the `blobs` table are the truth about which blobs exist; the
 * store only holds bytes under a key. A local folder is the default (`localBlobStore`), the
 * database the other (`databaseBlobStore`, KLEN_BLOB_STORE=database); an S3-compatible store can
 * implement the same methods.
 *
 * `db`, where a method takes it, is the caller's transaction: a store that keeps bytes in the
 * database writes them there (they then commit or roll back with the blob's row); a folder
 * ignores it.
 */
export interface BlobStore {
  /** What `blobs.store` records for the bytes it writes. */
  readonly kind: "local" | "database";
  /** True when bytes written with `db` roll back with its transaction (nothing to undo by hand). */
  readonly transactional: boolean;
  /** Writes small content (text) under `key` atomically (temp file, then rename). */
  writeBuffer(key: string, data: Buffer | string, db?: Db): Promise<void>;
  /**
   * Moves a file already written to the store's temp area (see `tempPath`) to `key`. The file
   * holds the bytes as the store keeps them: written through `sealing(key)` when there is one.
   * A transactional store copies it and leaves the file for the caller to delete.
   */
  adopt(tempFile: string, key: string, db?: Db): Promise<void>;
  /**
   * For a store that keeps bytes other than as given (encrypted at rest), the transform from the
   * clear bytes of `key` to the stored ones. Uploads are written to their temp file through it,
   * so that `adopt`, which runs inside a database transaction, is a rename whatever the store.
   */
  sealing?(key: string): Transform;
  /** A temp path on the same file system, so `adopt` is a rename and never a copy. */
  tempPath(name: string): Promise<string>;
  /** A stream of bytes `start..end` (inclusive) of `key`; undefined when it does not exist. */
  read(key: string, range?: { start: number; end: number }): Promise<Readable | undefined>;
  /** Size in bytes of `key`, or undefined when it does not exist. */
  size(key: string): Promise<number | undefined>;
  /** Deletes `key`; a missing key is not an error (deletes are retried by the retention sweep). */
  remove(key: string, db?: Db): Promise<void>;
  /**
   * Keys older than `beforeMs` (by modification time), for the orphan sweep, which deletes those
   * with no `blobs` row (a store may leave out keys it knows have one).
   */
  listOlderThan(beforeMs: number): Promise<string[]>;
}

const KEY = /^[A-Za-z0-9_-]{16,80}$/;

function checkKey(key: string): string {
  // Keys are our own random ids; checking them keeps any path trickery out of the file system.
  if (!KEY.test(key)) throw new Error(`invalid blob key ${JSON.stringify(key)}`);
  return key;
}

/** The default store: `$KLEN_DATA_DIR/blobs/<key>`, temp files in `$KLEN_DATA_DIR/blobs/tmp`. */
export function localBlobStore(dataDir: string): BlobStore {
  const root = join(dataDir, "blobs");
  const tmp = join(root, "tmp");
  let ready: Promise<void> | undefined;
  const ensure = () => {
    ready ??= mkdir(tmp, { recursive: true }).then(() => undefined);
    return ready;
  };
  const path = (key: string) => join(root, checkKey(key));
  let seq = 0;
  return {
    kind: "local",
    transactional: false,
    async writeBuffer(key, data) {
      await ensure();
      const t = join(tmp, `${checkKey(key)}.${process.pid}.${++seq}.part`);
      await writeFile(t, data);
      await rename(t, path(key));
    },
    async adopt(tempFile, key) {
      await ensure();
      await rename(tempFile, path(key));
      // The orphan sweep goes by age; a long upload must not look old the moment it lands.
      const now = new Date();
      await utimes(path(key), now, now);
    },
    async tempPath(name) {
      await ensure();
      return join(tmp, `${checkKey(name)}.${process.pid}.${++seq}.part`);
    },
    async read(key, range) {
      const p = path(key);
      try {
        await stat(p);
      } catch {
        return undefined;
      }
      return createReadStream(p, range ? { start: range.start, end: range.end } : {});
    },
    async size(key) {
      try {
        return (await stat(path(key))).size;
      } catch {
        return undefined;
      }
    },
    async remove(key) {
      await unlink(path(key)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "ENOENT") throw err;
      });
    },
    async listOlderThan(beforeMs) {
      await ensure();
      const out: string[] = [];
      for (const name of await readdir(root)) {
        if (!KEY.test(name)) continue;
        const s = await stat(join(root, name)).catch(() => undefined);
        if (s?.isFile() && s.mtimeMs < beforeMs) out.push(name);
      }
      // Abandoned uploads (a crash mid-stream) are swept too; they live under tmp with a suffix.
      for (const name of await readdir(tmp)) {
        const s = await stat(join(tmp, name)).catch(() => undefined);
        if (s?.isFile() && s.mtimeMs < beforeMs) await unlink(join(tmp, name)).catch(() => undefined);
      }
      return out;
    },
  };
}

/** A write stream to a temp path (re-exported so routes do not import node:fs themselves). */
export const writeStream = (p: string) => createWriteStream(p, { flags: "wx" });
