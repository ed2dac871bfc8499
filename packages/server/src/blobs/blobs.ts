import type { AppContext } from "../api/context.js";
import type { Config } from "../config.js";
import type { Store } from "../storage/store.js";
import type { Db } from "../storage/types.js";
import { randomToken } from "../util/ids.js";
import { databaseBlobStore } from "./database-store.js";
import { encryptedBlobStore } from "./encrypted.js";
import { signingKey } from "./key.js";
import { blobUrl, expiryOf } from "./signing.js";
import { type BlobStore, localBlobStore } from "./store.js";
import { storageFailure } from "./upload.js";

/** What a blob store is made from: the process's configuration and its database. */
export interface BlobContext {
  config: Config;
  store: Store;
}

const stores = new WeakMap<
  Config,
  WeakMap<Store, Record<"local" | "database", { plain: BlobStore; current: BlobStore }>>
>();

/** Where a stored blob's bytes are, from its row: `blobs.sealed` and `blobs.store` as they read. */
export interface BlobPlace {
  sealed: number | string | null;
  store: string | null;
}

/**
 * The blob store of this process (one per configuration and database): with no `row`, the one
 * new blobs are written to (KLEN_BLOB_STORE: the local folder by default, or the database), sealing
 * what it writes when KLEN_ENCRYPTION_KEY is set. To read a stored blob, pass its row's place:
 * `store` says which store has its bytes (null: the local folder, before migration 22), `sealed`
 * whether they are encrypted: 0 (written in clear) is read in clear even if encryption was turned
 * on later, 1 needs the key, and `null` (written before the column existed) is read as the
 * configuration says.
 */
export function blobStoreFor(ctx: BlobContext, row?: BlobPlace): BlobStore {
  const { config } = ctx;
  let byStore = stores.get(config);
  if (!byStore) {
    byStore = new WeakMap();
    stores.set(config, byStore);
  }
  let s = byStore.get(ctx.store);
  if (!s) {
    const local = localBlobStore(config.dataDir);
    const database = databaseBlobStore(ctx.store.db, local);
    const seal = (plain: BlobStore) => ({
      plain,
      current: config.encryptionKey ? encryptedBlobStore(plain, config.encryptionKey) : plain,
    });
    s = { local: seal(local), database: seal(database) };
    byStore.set(ctx.store, s);
  }
  const kind = row ? (row.store === "database" ? "database" : "local") : config.blobStore;
  // As the column reads: PostgreSQL may hand an integer back as a string.
  const sealed = row?.sealed === undefined || row.sealed === null ? row?.sealed : Number(row.sealed);
  if (sealed === 0) return s[kind].plain;
  if (sealed === 1 && !config.encryptionKey)
    throw new Error("this blob is encrypted at rest: start with the KLEN_ENCRYPTION_KEY it was written with");
  return s[kind].current;
}

/** Both stores, for the orphan sweep: blobs may be in either after KLEN_BLOB_STORE changed. */
export function allBlobStores(ctx: BlobContext): BlobStore[] {
  return [
    blobStoreFor(ctx, { sealed: 0, store: "local" }),
    blobStoreFor(ctx, { sealed: 0, store: "database" }),
  ];
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
  /** The `kind` of the store that has the bytes. */
  store: BlobStore["kind"];
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
      store: m.store,
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
  const store = blobStoreFor(ctx);
  await store.writeBuffer(id, bytes, trx).catch((err: unknown) => {
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
    store: store.kind,
  });
  return presignedUrl(ctx, trx, id, input.now);
}
