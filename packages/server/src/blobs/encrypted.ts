import { createCipheriv, createHmac, hkdfSync } from "node:crypto";
import { pipeline as pipeStreams, Transform } from "node:stream";
import type { BlobStore } from "./store.js";

/**
 * Encryption at rest for blob bytes (transcripts, summaries, recordings) with AES-256-CTR.
 * CTR keeps the size and allows decrypting any byte range on its own, which HTTP range requests
 * on recordings need; each blob has its own IV (derived from its unguessable key), so no two
 * blobs share a key stream. Integrity comes from the pre-signed URL and the database row, not
 * from the file.
 */
export function encryptedBlobStore(inner: BlobStore, secret: string): BlobStore {
  const key = Buffer.from(hkdfSync("sha256", Buffer.from(secret, "utf8"), "klen", "blob-encryption", 32));
  const ivOf = (blobKey: string) => createHmac("sha256", key).update(blobKey).digest().subarray(0, 16);

  /** A cipher positioned at byte `offset` of the blob's key stream. */
  const cipherAt = (blobKey: string, offset: number) => {
    const iv = Buffer.from(ivOf(blobKey));
    // Add the block index to the 128-bit big-endian counter.
    let carry = BigInt(Math.floor(offset / 16));
    for (let i = 15; i >= 0 && carry > 0n; i--) {
      const sum = BigInt(iv[i]!) + (carry & 0xffn);
      iv[i] = Number(sum & 0xffn);
      carry = (carry >> 8n) + (sum >> 8n);
    }
    const c = createCipheriv("aes-256-ctr", key, iv);
    const skip = offset % 16;
    if (skip > 0) c.update(Buffer.alloc(skip));
    return c;
  };

  return {
    ...inner,
    async writeBuffer(blobKey, data, db) {
      const c = cipherAt(blobKey, 0);
      await inner.writeBuffer(blobKey, Buffer.concat([c.update(Buffer.from(data)), c.final()]), db);
    },
    // Uploads are sealed as they stream into their temp file, so the inner store's adopt (a
    // rename) is all a transaction waits for. Sealing in adopt copied the whole file through AES
    // inside it: a 190 MB upload held SQLite's writer lock for about 2 s.
    sealing: (blobKey) => cipherAt(blobKey, 0),
    async read(blobKey, range) {
      const stream = await inner.read(blobKey, range);
      if (!stream) return undefined;
      const c = cipherAt(blobKey, range?.start ?? 0);
      const out = new Transform({
        transform(chunk: Buffer, _enc, done) {
          done(null, c.update(chunk));
        },
      });
      // pipeline(), not pipe(): a download cut off (the client went away) destroys `out`, and
      // pipe() would only pause the file stream, keeping its descriptor and buffers open for the
      // life of the process (one per aborted download). pipeline() destroys the file stream with
      // it, and a read error part-way ends the response instead of leaving it hanging. Errors
      // reach the caller through `out`.
      pipeStreams(stream, out, () => undefined);
      return out;
    },
  };
}
