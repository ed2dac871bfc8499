import type { AppContext } from "../api/context.js";
import type { Config } from "../config.js";
import type { Db } from "../storage/types.js";
import { randomToken } from "../util/ids.js";
import { encryptedBlobStore } from "./encrypted.js";
import { signingKey } from "./key.js";
import { blobUrl, expiryOf } from "./signing.js";
import { type BlobStore, localBlobStore } from "./store.js";
import { storageFailure } from "./upload.js";

const stores = new WeakMap<Config, { plain: BlobStore; current: BlobStore }>();

/**
 * The blob store of this configuration (one per process; the local folder by default), sealing
 * what it writes when KLEN_ENCRYPTION_KEY is set. To read a stored blob, pass its `blobs.sealed`:
 * 0 (written in clear) is read in clear even if encryption was turned on later, 1 needs the key,
 * and `null` (written before the column existed) is read as the configuration says.
 */
export function blobStoreFor(config: Config, column?: number | string | null): BlobStore {
  // As the column reads: PostgreSQL may hand an integer back as a string.
  const sealed = column === undefined || column === null ? column : Number(column);
  let s = stores.get(config);
  if (!s) {
    const plain = localBlobStore(config.dataDir);
    s = { plain, current: config.encryptionKey ? encryptedBlobStore(plain, config.encryptionKey) : plain };
    stores.set(config, s);
  }
  if (sealed === 0) return s.plain;
  if (sealed === 1 && !config.encryptionKey)
    throw new Error("this blob is encrypted at rest: start with the KLEN_ENCRYPTION_KEY it was written with");
  return s.current;
}

/** The `blobs.sealed` of a blob written now by this configuration. */
export const sealedNow = (config: Config): number => (config.encryptionKey ? 1 : 0);

/** Blob ids are 192 random bits (base64url): unguessable, and no account or call in them. */
export function newBlobId(): string {
  return `blb_${randomToken(24)}`;
}

export interface BlobMeta {
  id: string;
  accountId: number;
  callId: number | null;
  kind: "transcript" | "summary" | "recording";
  contentType: string;
  size: number;
  now: number;
  /** `sealedNow(config)` of the process that wrote the bytes. */
  sealed: number;
}

/** Records a blob whose bytes are already in the store, in the caller's transaction. */
export async function insertBlob(trx: Db, m: BlobMeta): Promise<void> {
  await trx
    .insertInto("blobs")
    .values({
      id: m.id,
      account_id: m.accountId,
      call_id: m.callId,
      kind: m.kind,
      content_type: m.contentType,
      size: m.size,
      // The store key; the same as the id for the local store, kept separate so another store
      // may lay its objects out differently.
      path: m.id,
      sealed: m.sealed,
      created_at: m.now,
    })
    .execute();
}

/**
 * The pre-signed URL of a blob, valid for KLEN_URL_TTL from `now` (the event's generation time,
 * so that the URL, which is part of the body, is the same on every attempt).
 */
export async function presignedUrl(ctx: AppContext, db: Db, id: string, now: number): Promise<string> {
  const key = await signingKey(ctx.store, db);
  return blobUrl(ctx.config.publicUrl, key, id, expiryOf(now, ctx.config.urlTtlMs));
}

/**
 * Stores text as a `text/plain; charset=utf-8` blob and returns its URL. The file is written
 * before the row: if the transaction then rolls back the file is an orphan, which the retention
 * sweep deletes (files with no row, older than an hour); a row never points at missing bytes.
 */
export async function storeTextBlob(
  ctx: AppContext,
  trx: Db,
  input: { accountId: number; callId: number; kind: "transcript" | "summary"; text: string; now: number },
): Promise<string> {
  const id = newBlobId();
  const bytes = Buffer.from(input.text, "utf8");
  // A full disk is the server's trouble, said as a recording's is: 503 to send again.
  await blobStoreFor(ctx.config)
    .writeBuffer(id, bytes)
    .catch((err: unknown) => {
      throw storageFailure(err, input.kind) ?? err;
    });
  await insertBlob(trx, {
    id,
    accountId: input.accountId,
    callId: input.callId,
    kind: input.kind,
    contentType: "text/plain; charset=utf-8",
    size: bytes.length,
    now: input.now,
    sealed: sealedNow(ctx.config),
  });
  return presignedUrl(ctx, trx, id, input.now);
}
