import type { ExpressionBuilder } from "kysely";
import type { AppContext } from "../api/context.js";
import { IDEMPOTENCY_TTL_MS } from "../api/idempotency.js";
import { allBlobStores, blobStoreFor } from "../blobs/blobs.js";
import type { BlobStore } from "../blobs/store.js";
import { REPLAYING, RUNNING } from "../delivery/recover.js";
import type { Database } from "../storage/schema.js";
import { type Db, PENDING } from "../storage/types.js";
import { idFloor } from "../util/ids.js";
import { pauseBetweenBatches } from "../util/periodic.js";

const DEFAULT_BATCH = 500;
/** A file with no `blobs` row is an orphan (a rolled-back transaction, a crash) once this old. */
export const ORPHAN_AGE_MS = 3_600_000;

export interface PurgeCounts {
  blobs: number;
  orphans: number;
  attempts: number;
  deliveries: number;
  events: number;
  summaries: number;
  jobs: number;
  idempotency: number;
}

/**
 * The brief summaries kept on calls not updated since `cutoff`. Read through the partial index of
 * calls that still hold one (migration 6): calls are never deleted, and a scan of all of them took
 * 121 ms per purge at 1,000,000 calls (0.1 ms through the index).
 */
export const expiredBriefSummaries = (db: Db, cutoff: number, limit: number) =>
  db
    .updateTable("calls")
    .set({ brief_summary: null })
    .where(
      "id",
      "in",
      db
        .selectFrom("calls")
        .select("id")
        .where("updated_at", "<", cutoff)
        .where("brief_summary", "is not", null)
        .orderBy("updated_at")
        .limit(limit),
    );

/**
 * Deletes payloads and media older than KLEN_RETENTION (PRODUCT.md §11), as of `now`:
 * - blobs (recordings, large transcripts/summaries): file and row; their URLs then answer 404.
 *   Not while a delivery of their call is still pending: its event keeps them;
 * - the delivery log — attempts (with their request headers and response bodies), finished
 *   deliveries and then events (their bodies carry transcripts, summaries, phone numbers) —
 *   whole rows, not emptied skeletons: an event body that no longer validates could not be
 *   replayed anyway. Deliveries still pending are never touched, nor are their events;
 * - the brief summary kept on old calls, summary jobs that failed (they hold a transcript copy) and
 *   test-call runs nobody has carried on for a retention period, and recover jobs done as long ago;
 * - the responses kept for Idempotency-Key replays once no repeat can get them (24 hours; sooner
 *   when the retention period is shorter): they show new endpoint secrets, phone numbers, summaries;
 * - orphaned blob files (bytes with no row, older than an hour).
 * Calls themselves (ids, status, times) stay: they are the index of what happened.
 * Works in batches so one run never holds a long transaction.
 */
export async function purgeExpired(
  ctx: AppContext,
  now = ctx.clock.now(),
  opts: { batch?: number; pauseMs?: number } = {},
): Promise<PurgeCounts> {
  const db = ctx.store.db;
  const batch = opts.batch ?? DEFAULT_BATCH;
  const pause = () => pauseBetweenBatches(opts.pauseMs);
  const cutoff = now - ctx.config.retentionMs;
  const counts: PurgeCounts = {
    blobs: 0,
    orphans: 0,
    attempts: 0,
    deliveries: 0,
    events: 0,
    summaries: 0,
    jobs: 0,
    idempotency: 0,
  };

  // Each loop goes on after the last row it read (keyset order), so the rows it keeps (a pending
  // delivery's) are read once a run, not again by every batch: 200,000 kept rows made a run take
  // 107 s instead of 9.
  let deliveriesAfter = "";
  for (;;) {
    const ids = (
      await db
        .selectFrom("deliveries")
        .select("id")
        // The id range (primary key index; ids sort by creation time) visits only rows made before
        // the cutoff. created_at has no index: each run scanned every delivery and every event,
        // a pause of the event loop that grows with the tables.
        .where("id", "<", idFloor("dlv", cutoff))
        .where("id", ">", deliveriesAfter)
        .where("created_at", "<", cutoff)
        .where("status", "<>", "pending")
        .orderBy("id")
        .limit(batch)
        .execute()
    ).map((r) => r.id);
    if (ids.length === 0) break;
    deliveriesAfter = ids[ids.length - 1]!;
    await db.transaction().execute(async (trx) => {
      // The deliveries first, and the attempts of only those deleted: one re-opened meanwhile (a
      // manual retry, a recover) is pending again, stays, and keeps its attempt log.
      const deleted = (
        await trx
          .deleteFrom("deliveries")
          .where("id", "in", ids)
          .where("status", "<>", "pending")
          .returning("id")
          .execute()
      ).map((r) => r.id);
      if (deleted.length === 0) return;
      const a = await trx.deleteFrom("attempts").where("delivery_id", "in", deleted).executeTakeFirst();
      counts.attempts += Number(a.numDeletedRows);
      counts.deliveries += deleted.length;
    });
    await pause();
  }
  let eventsAfter = "";
  for (;;) {
    const ids = (
      await db
        .selectFrom("events")
        .select("id")
        .where("id", "<", idFloor("evt", cutoff))
        .where("id", ">", eventsAfter)
        .where("created_at", "<", cutoff)
        .where(({ not, exists, selectFrom }) =>
          not(
            exists(
              selectFrom("deliveries")
                .select("deliveries.id")
                .whereRef("deliveries.event_id", "=", "events.id"),
            ),
          ),
        )
        .orderBy("id")
        .limit(batch)
        .execute()
    ).map((r) => r.id);
    if (ids.length === 0) break;
    eventsAfter = ids[ids.length - 1]!;
    const r = await db.deleteFrom("events").where("id", "in", ids).executeTakeFirst();
    counts.events += Number(r.numDeletedRows);
    await pause();
  }
  // The blobs after the deliveries and events: a manual retry or recover of a delivery the loops
  // above have not deleted re-opens it, and its call's blobs then stay (unsent); one arriving
  // after finds no delivery (404). Blobs first left a window of a minute in which a retry sent a
  // URL that was already 404 (retention audit).
  // A blob stays while a delivery of its call is still pending, as that delivery's event does:
  // the event may carry the blob's URL, and a receiver reached on a late retry (or a manual one)
  // would get a URL that is already 404. Through events_call and deliveries_event, a few rows a
  // blob, not the pending backlog.
  const unsent = (eb: ExpressionBuilder<Database, "blobs">) =>
    eb.not(
      eb.exists(
        eb
          .selectFrom("events")
          .innerJoin("deliveries", "deliveries.event_id", "events.id")
          .select("deliveries.id")
          .whereRef("events.call_id", "=", "blobs.call_id")
          .where("deliveries.status", "=", PENDING),
      ),
    );
  let blobsAfter: { created_at: number; id: string } | undefined;
  for (;;) {
    const from = blobsAfter;
    const rows = await db
      .selectFrom("blobs")
      .select(["id", "path", "created_at"])
      .where("created_at", "<", cutoff)
      // The plain bound first: with the OR alone SQLite read (and sorted) every expired blob
      // left on each batch, 720 ms a batch with 40,000 left (retention audit).
      .$if(from !== undefined, (q) =>
        q
          .where("created_at", ">=", from!.created_at)
          .where((eb) =>
            eb.or([
              eb("created_at", ">", from!.created_at),
              eb.and([eb("created_at", "=", from!.created_at), eb("id", ">", from!.id)]),
            ]),
          ),
      )
      .where(unsent)
      .orderBy("created_at")
      .orderBy("id")
      .limit(batch)
      .execute();
    if (rows.length === 0) break;
    const last = rows[rows.length - 1]!;
    blobsAfter = { created_at: Number(last.created_at), id: last.id };
    // Rows go first: a URL stops working at once, and a file whose delete fails is swept later.
    // A delivery re-opened meanwhile (a manual retry) keeps its blob: only the rows deleted here
    // lose their files.
    const deleted = await db
      .deleteFrom("blobs")
      .where(
        "id",
        "in",
        rows.map((r) => r.id),
      )
      .where(unsent)
      .returning(["id", "path", "sealed", "store"])
      .execute();
    for (const r of deleted)
      await blobStoreFor(ctx, { ...r, sealed: 0 })
        .remove(r.path)
        .catch(() => undefined);
    counts.blobs += deleted.length;
    await pause();
  }
  // In batches like the rest (one UPDATE of 102,000 calls held SQLite 303 ms, and PostgreSQL
  // that many row locks, in a retention audit).
  for (;;) {
    const s = await expiredBriefSummaries(db, cutoff, batch).executeTakeFirst();
    counts.summaries += Number(s.numUpdatedRows);
    if (Number(s.numUpdatedRows) < batch) break;
    await pause();
  }
  // Not a job still pending (it is retried for ~4 h, then fails) nor a test-call run still worked
  // on (its lease is renewed as it goes): a short retention dropped them mid-way, and the call never
  // got its summary or recording. Only what nobody works on any more goes.
  const j = await db
    .deleteFrom("summary_jobs")
    .where("created_at", "<", cutoff)
    .where("status", "<>", PENDING)
    .executeTakeFirst();
  // A lease of 0 is a run a stopping process handed over, for a worker to take at once.
  const r = await db
    .deleteFrom("test_call_runs")
    .where("created_at", "<", cutoff)
    .where("leased_until", "<", cutoff)
    .where("leased_until", "<>", 0)
    .executeTakeFirst();
  // Recover jobs that are done (kept for GET /v1/recover-jobs/{id}); a running one is never cut short.
  const rj = await db
    .deleteFrom("recover_jobs")
    .where("status", "not in", [RUNNING, REPLAYING])
    .where("finished_at", "<", cutoff)
    .executeTakeFirst();
  counts.jobs = Number(j.numDeletedRows) + Number(r.numDeletedRows) + Number(rj.numDeletedRows);

  // Oldest first, up to a batch of rows a statement (through the created_at index): the first purge
  // after an upgrade may find every record ever kept.
  const replayable = Math.max(cutoff, now - IDEMPOTENCY_TTL_MS);
  for (;;) {
    const nth = await db
      .selectFrom("idempotency_keys")
      .select("created_at")
      .where("created_at", "<", replayable)
      .orderBy("created_at")
      .offset(batch - 1)
      .limit(1)
      .executeTakeFirst();
    const upTo = nth ? Number(nth.created_at) : replayable - 1;
    const k = await db.deleteFrom("idempotency_keys").where("created_at", "<=", upTo).executeTakeFirst();
    counts.idempotency += Number(k.numDeletedRows);
    if (!nth) break;
    await pause();
  }

  // Both stores: blobs written before KLEN_BLOB_STORE changed are in the other one.
  for (const store of allBlobStores(ctx)) counts.orphans += await sweepOrphans(db, store, now, batch, pause);
  return counts;
}

/** Deletes the bytes `store` holds with no `blobs` row, older than ORPHAN_AGE_MS; says how many. */
async function sweepOrphans(
  db: Db,
  store: BlobStore,
  now: number,
  batch: number,
  pause: () => Promise<void>,
): Promise<number> {
  let orphans = 0;
  const old = await store.listOlderThan(Math.min(now, Date.now()) - ORPHAN_AGE_MS);
  for (let i = 0; i < old.length; i += batch) {
    const keys = old.slice(i, i + batch);
    // Looked up by id, the primary key: the local store's key is the blob's id (insertBlob), and
    // `path` has no index, so this read the whole table once per batch (retention audit: 373 ms
    // a batch at 1,000,000 blobs). A store that lays keys out otherwise must map them back here.
    const known = new Set(
      (await db.selectFrom("blobs").select("path").where("id", "in", keys).execute()).map((r) => r.path),
    );
    for (const k of keys) {
      if (known.has(k)) continue;
      await store.remove(k).catch(() => undefined);
      orphans++;
    }
    await pause();
  }
  return orphans;
}
