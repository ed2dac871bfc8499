import { type ExpressionBuilder, type Selectable, sql } from "kysely";
import { type AppContext, announceWork } from "../api/context.js";
import { logBackgroundFailure } from "../log.js";
import { retryConflicts } from "../storage/retry.js";
import type { Database } from "../storage/schema.js";
import type { DialectCaps } from "../storage/store.js";
import { type Db, FAILED } from "../storage/types.js";
import { newId } from "../util/ids.js";
import { Periodic, pauseBetweenBatches } from "../util/periodic.js";
import { isoMillis } from "../util/time.js";
import { holdForJobs, lockCallsOfEndpoint, lockFanOuts, reorderChains } from "./chains.js";
import { replayBatch, replayFilter } from "./replay.js";

/** What a recover re-opens: an endpoint's failed deliveries made in `[since, until]`. */
export interface RecoverScope {
  endpointId: string;
  since: number;
  until: number;
}

/** How often worker processes look for recover jobs to work on. */
const POLL_MS = 1_000;

/** A job not yet done; `finished` and `stopped` (its endpoint was disabled or deleted) are final. */
export const RUNNING = "running";
/**
 * A replay job not yet done, shown as `running`. Stored apart so that a process of the version
 * before migration 19 (which may run beside this one while an upgrade rolls out) does not take it
 * for a recover: it would find no failed delivery to re-open and end it as `finished` at once.
 */
export const REPLAYING = "replaying";
const ACTIVE = [RUNNING, REPLAYING];

/** A background job re-opens failed deliveries (`recover`) or makes missing ones (`replay`). */
export type JobKind = "recover" | "replay";

/** The condition of a recover's deliveries: the endpoint's failed ones made in `[since, until]`. */
function inScope(s: RecoverScope) {
  return (eb: ExpressionBuilder<Database, "deliveries">) =>
    eb.and([
      eb("endpoint_id", "=", s.endpointId),
      eb("status", "=", FAILED), // the literal, which lets SQLite use the partial index
      eb("created_at", ">=", s.since),
      eb("created_at", "<=", s.until),
    ]);
}

function failedInScope(db: Db, s: RecoverScope) {
  return db.selectFrom("deliveries").where(inScope(s));
}

/**
 * Sets the failed deliveries in scope back to `pending`, parked, for the one attempt a recover
 * promises; `reorderChains` then releases the first of each call's chain.
 */
function reopenFailed(trx: Db, s: RecoverScope, now: number) {
  return trx
    .updateTable("deliveries")
    .set({ status: "pending", next_attempt_at: null, resume_at: null, one_attempt: 1, updated_at: now })
    .where(inScope(s));
}

/** How many deliveries a recover of this scope would re-open now. */
export async function countRecoverable(db: Db, s: RecoverScope): Promise<number> {
  const r = await failedInScope(db, s)
    .select((eb) => eb.fn.countAll().as("n"))
    .executeTakeFirst();
  return Number(r?.n ?? 0);
}

/**
 * Re-opens the failed deliveries in scope of the calls after `afterCallId`, a whole call at a
 * time, about `rows` deliveries: the calls of the next `rows` failed deliveries in call order.
 * Re-opened deliveries start parked; then the first of each call's chain is released, so a call's
 * recovered events still go out one at a time, in order. A call is never split between two
 * batches, so no batch can release a later event of a call whose earlier one is still failed.
 * Returns how many it re-opened and the last call it covered (undefined: nothing was left).
 */
export async function recoverBatch(
  trx: Db,
  caps: DialectCaps,
  s: RecoverScope,
  afterCallId: number,
  rows: number,
  now: number,
): Promise<{ queued: number; lastCallId: number | undefined }> {
  const found = await failedInScope(trx, s)
    .select("call_id")
    .where("call_id", ">", afterCallId)
    .orderBy("call_id")
    .limit(rows)
    .execute();
  if (found.length === 0) return { queued: 0, lastCallId: undefined };
  const callIds = [...new Set(found.map((r) => Number(r.call_id)))];
  await lockCallsOfEndpoint(trx, caps, { endpointId: s.endpointId, callIds });
  const res = await reopenFailed(trx, s, now).where("call_id", "in", callIds).executeTakeFirst();
  await reorderChains(trx, { endpointId: s.endpointId, callIds }, now);
  return { queued: Number(res.numUpdatedRows), lastCallId: callIds[callIds.length - 1] };
}

/**
 * Re-opens every failed delivery in scope in the caller's transaction (the request's): one
 * statement, a few milliseconds for the usual recover of a few hundred.
 */
export async function recoverAll(trx: Db, caps: DialectCaps, s: RecoverScope, now: number): Promise<number> {
  await lockCallsOfEndpoint(trx, caps, { endpointId: s.endpointId, status: "failed" });
  const res = await reopenFailed(trx, s, now).executeTakeFirst();
  await reorderChains(trx, { endpointId: s.endpointId }, now);
  return Number(res.numUpdatedRows);
}

/**
 * Records a recover for worker processes to carry out in batches (migration 15), in the caller's
 * transaction, so that it exists exactly when the request's Idempotency-Key does.
 */
export async function queueRecoverJob(
  trx: Db,
  caps: DialectCaps,
  job: RecoverScope & { accountId: number; found: number; kind?: JobKind },
  now: number,
): Promise<string> {
  const id = newId("rcv", now);
  const replay = job.kind === "replay";
  await trx
    .insertInto("recover_jobs")
    .values({
      id,
      account_id: job.accountId,
      endpoint_id: job.endpointId,
      since: job.since,
      until: job.until,
      // A replay goes by event ids (after_event_id); past every call, the recover half leaves it be.
      after_call_id: replay ? Number.MAX_SAFE_INTEGER : -1,
      after_event_id: null,
      kind: job.kind ?? "recover",
      queued: 0,
      leased_until: null,
      claim_token: 0,
      created_at: now,
      status: replay ? REPLAYING : RUNNING,
      found: job.found,
      finished_at: null,
    })
    .execute();
  // Its pending deliveries that wait for a call's earlier event the job will make pending wait
  // for it from now on. On PostgreSQL the calls with a pending delivery are locked, as a
  // recover's are (a completion releasing one of them meanwhile would not see the job), and then
  // the account's fan-outs are held off until this commits (a new delivery would not see the
  // job, nor this its delivery). In that order: a transition locks its call before it fans out.
  await lockCallsOfEndpoint(trx, caps, { endpointId: job.endpointId, status: "pending" });
  await lockFanOuts(trx, caps, job.accountId);
  await holdForJobs(trx, job.endpointId, now);
  return id;
}

type JobRow = { id: string; account_id: number; endpoint_id: string; claim_token: number };

/** Takes the oldest recover job nobody holds (or whose holder's lease ran out), compare-and-set. */
async function takeJob(ctx: AppContext): Promise<JobRow | undefined> {
  const now = ctx.clock.now();
  const free = await ctx.store.db
    .selectFrom("recover_jobs")
    .select(["id", "claim_token"])
    .where("status", "in", ACTIVE)
    .where((eb) => eb.or([eb("leased_until", "is", null), eb("leased_until", "<=", now)]))
    .orderBy("created_at")
    .limit(1)
    .executeTakeFirst();
  if (!free) return undefined;
  return ctx.store.db
    .updateTable("recover_jobs")
    .set({ leased_until: now + ctx.config.leaseMs, claim_token: sql`claim_token + 1` })
    .where("id", "=", free.id)
    .where("claim_token", "=", free.claim_token)
    .returning(["id", "account_id", "endpoint_id", "claim_token"])
    .executeTakeFirst();
}

type Step = { kind: "more"; queued: number } | { kind: "done" } | { kind: "lost" };

/** What one batch did, and where the job goes on from (undefined: it is done). */
type Batch = {
  queued: number;
  next: { after_call_id: number } | { after_event_id: string } | undefined;
};
type HeldJob = Selectable<Database["recover_jobs"]>;

async function recoverStep(
  trx: Db,
  ctx: AppContext,
  s: RecoverScope,
  job: HeldJob,
  now: number,
): Promise<Batch> {
  const b = await recoverBatch(
    trx,
    ctx.store.caps,
    s,
    Number(job.after_call_id),
    ctx.config.recoverBatch,
    now,
  );
  return { queued: b.queued, next: b.lastCallId === undefined ? undefined : { after_call_id: b.lastCallId } };
}

async function replayStep(
  trx: Db,
  ctx: AppContext,
  s: Parameters<typeof replayBatch>[2],
  job: HeldJob,
  now: number,
): Promise<Batch> {
  const b = await replayBatch(trx, ctx.store.caps, s, job.after_event_id, ctx.config.recoverBatch, now);
  return {
    queued: b.queued,
    next: b.lastEventId === undefined ? undefined : { after_event_id: b.lastEventId },
  };
}

/**
 * One batch of a job, in one transaction: renews the lease (fenced by the token: a job taken over
 * by another worker is left to it), ends the job when its endpoint was deleted or disabled
 * (retry and recover refuse those too) or nothing is left, else re-opens the next calls and
 * moves the job past them.
 */
async function step(ctx: AppContext, job: JobRow): Promise<Step> {
  const now = ctx.clock.now();
  return retryConflicts(() =>
    ctx.store.db.transaction().execute(async (trx): Promise<Step> => {
      const held = await trx
        .updateTable("recover_jobs")
        .set({ leased_until: now + ctx.config.leaseMs })
        .where("id", "=", job.id)
        .where("claim_token", "=", job.claim_token)
        .where("status", "in", ACTIVE)
        .returningAll()
        .executeTakeFirst();
      if (!held) return { kind: "lost" };
      const endpoint = await trx
        .selectFrom("endpoints")
        .select(["disabled", "deleted_at", "event_types", "agent_ids"])
        .where("id", "=", held.endpoint_id)
        .where("account_id", "=", held.account_id)
        .executeTakeFirst();
      const sending =
        endpoint !== undefined && endpoint.deleted_at === null && Number(endpoint.disabled) === 0;
      const scope = { endpointId: held.endpoint_id, since: Number(held.since), until: Number(held.until) };
      const batch = !sending
        ? { queued: 0, next: undefined }
        : held.kind === "replay"
          ? await replayStep(
              trx,
              ctx,
              {
                ...scope,
                // Each batch as the request did: an event older than the retention period may have
                // lost its deliveries to the purge since, and would look never sent.
                since: Math.max(scope.since, now - ctx.config.retentionMs),
                accountId: held.account_id,
                ...replayFilter(endpoint!),
              },
              held,
              now,
            )
          : await recoverStep(trx, ctx, scope, held, now);
      const queued = Number(held.queued) + batch.queued;
      if (batch.next === undefined) {
        // Kept, finished, for GET /v1/recover-jobs/{id}; the retention period removes it. Held
        // for ever and past every call, so processes of the version before migration 17 (which
        // know no status, and may run beside this one while an upgrade rolls out) neither take
        // it up again nor park new events behind it.
        await trx
          .updateTable("recover_jobs")
          .set({
            status: sending ? "finished" : "stopped",
            queued,
            leased_until: Number.MAX_SAFE_INTEGER,
            after_call_id: Number.MAX_SAFE_INTEGER,
            finished_at: now,
          })
          .where("id", "=", job.id)
          .execute();
        // New events parked behind calls this job will now not reach go on (a disabled
        // endpoint's are then settled as they come due).
        await reorderChains(trx, { endpointId: held.endpoint_id }, now);
        const log = ctx.log.child({ component: "recover", job: job.id, endpoint_id: held.endpoint_id });
        if (sending) log.info({ queued, kind: held.kind }, `${held.kind} done`);
        else
          log.warn({ queued, kind: held.kind }, `${held.kind} stopped: its endpoint was disabled or deleted`);
        return { kind: "done" };
      }
      await trx
        .updateTable("recover_jobs")
        .set({ ...batch.next, queued })
        .where("id", "=", job.id)
        .execute();
      return { kind: "more", queued: batch.queued };
    }),
  );
}

/**
 * Works through the recover jobs nobody else holds, a batch at a time with a pause between
 * batches (SQLite runs every statement on the event loop: 200,000 deliveries in one statement
 * held everything else for ~4 s). Stopping mid-job hands the job back at once.
 */
export async function runRecoverJobs(ctx: AppContext, stopped: () => boolean = () => false): Promise<number> {
  let batches = 0;
  for (;;) {
    if (stopped()) return batches;
    const job = await takeJob(ctx);
    if (!job) return batches;
    for (;;) {
      if (stopped()) {
        await ctx.store.db
          .updateTable("recover_jobs")
          .set({ leased_until: null })
          .where("id", "=", job.id)
          .where("claim_token", "=", job.claim_token)
          .execute();
        return batches;
      }
      const s = await step(ctx, job);
      if (s.kind === "lost") break;
      batches++;
      if (s.kind === "done") break;
      if (s.queued > 0) await announceWork(ctx);
      await pauseBetweenBatches();
    }
  }
}

/** Worker processes (roles `all` and `worker`) look for recover jobs every second. */
export function recoverJobs(ctx: AppContext): Periodic {
  return new Periodic(
    (stopped) =>
      runRecoverJobs(ctx, stopped).catch((err: unknown) =>
        logBackgroundFailure(ctx.log, { component: "recover" }, "working on a recover failed", err),
      ),
    () => POLL_MS,
  );
}

/** A recover job as the API shows it (`GET /v1/recover-jobs/{id}`). */
export function recoverJobObject(j: Selectable<Database["recover_jobs"]>) {
  return {
    id: j.id,
    kind: j.kind,
    endpoint_id: j.endpoint_id,
    status: j.status === REPLAYING ? RUNNING : j.status,
    since: isoMillis(Number(j.since)),
    until: isoMillis(Number(j.until)),
    // A replay does not count its events in advance (that would read the whole range at once).
    found: j.kind === "replay" ? null : Number(j.found),
    queued: Number(j.queued),
    created_at: isoMillis(Number(j.created_at)),
    finished_at: j.finished_at === null ? null : isoMillis(Number(j.finished_at)),
  };
}
