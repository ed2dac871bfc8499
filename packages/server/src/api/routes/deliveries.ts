import { type Selectable, sql } from "kysely";
import { awaitingJob, lockCallsOfEndpoint, reorderChains } from "../../delivery/chains.js";
import { ApiError, notFound } from "../../errors.js";
import type { Database } from "../../storage/schema.js";
import type { Db } from "../../storage/types.js";
import { isoMillis } from "../../util/time.js";
import { idRange, page, pageQuery, type TimeRange, timeQuery } from "../pagination.js";
import { INT32_MAX, idFilter, stringIdParam } from "./common.js";
import { assertSending } from "./endpoints.js";
import type { RouteModule } from "./index.js";

type DeliveryRow = Selectable<Database["deliveries"]>;
type AttemptRow = Selectable<Database["attempts"]>;

const attemptObject = (a: AttemptRow) => ({
  number: a.number,
  started_at: isoMillis(Number(a.started_at)),
  url: a.url,
  request_headers: JSON.parse(a.request_headers) as Record<string, string>,
  status_code: a.status_code,
  duration_ms: a.duration_ms,
  // The log row keeps "class: detail"; the API gives the stable class and the detail apart.
  error: a.error === null ? null : a.error.split(": ", 1)[0]!,
  error_message:
    a.error === null || !a.error.includes(": ") ? null : a.error.slice(a.error.indexOf(": ") + 2),
  response_body: a.response_body,
});

/**
 * Claimed by a worker and not yet finished: its attempt is being sent (or waits for the endpoint's
 * rate limit), and `next_attempt_at` is when the lease runs out, when it is sent again if lost.
 */
const inFlight = (d: DeliveryRow, now: number) =>
  d.status === "pending" && d.leased_until !== null && Number(d.leased_until) > now;

const deliveryObject = (d: DeliveryRow, x: Details) => ({
  id: d.id,
  event_id: d.event_id,
  event_type: x.eventTypes.get(d.event_id) ?? null,
  endpoint_id: d.endpoint_id,
  call_id: Number(d.call_id),
  status: d.status,
  attempt_count: d.attempt_count,
  next_attempt_at:
    d.status === "pending" && d.next_attempt_at !== null ? isoMillis(Number(d.next_attempt_at)) : null,
  sending_since: inFlight(d, x.now) ? isoMillis(Number(d.leased_at ?? d.updated_at)) : null,
  last_error: d.last_error,
  created_at: isoMillis(Number(d.created_at)),
  updated_at: isoMillis(Number(d.updated_at)),
  attempts: (x.attempts.get(d.id) ?? []).map(attemptObject),
});

/** What a page of deliveries shows beside their rows: attempts (by delivery) and event types. */
interface Details {
  attempts: Map<string, AttemptRow[]>;
  eventTypes: Map<string, string>;
  /** When they were read: a lease that has run out is no attempt in flight. */
  now: number;
}

/**
 * The attempts of several deliveries (each list in ascending `number` order) and their events'
 * types, in one query each.
 */
async function detailsOf(db: Db, deliveries: DeliveryRow[], now: number): Promise<Details> {
  const out: Details = { attempts: new Map(), eventTypes: new Map(), now };
  if (deliveries.length === 0) return out;
  const [attempts, events] = await Promise.all([
    db
      .selectFrom("attempts")
      .selectAll()
      .where(
        "delivery_id",
        "in",
        deliveries.map((d) => d.id),
      )
      .orderBy("number")
      .orderBy("id")
      .execute(),
    db
      .selectFrom("events")
      .select(["id", "event_type"])
      .where("id", "in", [...new Set(deliveries.map((d) => d.event_id))])
      .execute(),
  ]);
  for (const r of attempts) {
    const list = out.attempts.get(r.delivery_id) ?? [];
    list.push(r);
    out.attempts.set(r.delivery_id, list);
  }
  for (const e of events) out.eventTypes.set(e.id, e.event_type);
  return out;
}

async function findDelivery(db: Db, accountId: number, id: string, lock = false): Promise<DeliveryRow> {
  const d = await db
    .selectFrom("deliveries")
    .selectAll()
    .where("id", "=", id)
    .where("account_id", "=", accountId)
    .$if(lock, (q) => q.forUpdate())
    .executeTakeFirst();
  if (!d) throw notFound("delivery", id);
  return d;
}

const idParam = stringIdParam("dlv");

export const deliveryRoutes: RouteModule = (app, ctx, h) => {
  app.get(
    "/v1/deliveries",
    {
      schema: {
        querystring: {
          type: "object",
          additionalProperties: false,
          properties: {
            ...pageQuery,
            ...timeQuery,
            endpoint_id: idFilter("ep"),
            event_id: idFilter("evt"),
            status: { type: "string", enum: ["pending", "succeeded", "failed"] },
            call_id: { type: "integer", minimum: 1, maximum: INT32_MAX },
          },
        },
      },
    },
    async (req) => {
      const q = req.query as TimeRange & {
        limit: number;
        cursor?: string;
        endpoint_id?: string;
        event_id?: string;
        status?: string;
        call_id?: number;
      };
      const { below, from } = idRange("dlv", q);
      // With call_id, SQLite must not walk the account's or the endpoint's index testing every
      // delivery against the call's events: `+column` (SQLite only; PostgreSQL plans by its
      // statistics) leaves it the call's events (events_call), then their deliveries (deliveries_event).
      const col = <T>(name: "account_id" | "endpoint_id") =>
        q.call_id && ctx.store.caps.name === "sqlite" ? sql<T>`+${sql.ref(name)}` : sql<T>`${sql.ref(name)}`;
      let sel = ctx.store.db
        .selectFrom("deliveries")
        .selectAll()
        .where(col<number>("account_id"), "=", req.account.id);
      if (below !== undefined) sel = sel.where("id", "<", below);
      if (from !== undefined) sel = sel.where("id", ">=", from);
      if (q.endpoint_id) sel = sel.where(col<string>("endpoint_id"), "=", q.endpoint_id);
      if (q.event_id) sel = sel.where("event_id", "=", q.event_id);
      if (q.status) sel = sel.where("status", "=", q.status);
      if (q.call_id)
        sel = sel.where("event_id", "in", (eb) =>
          eb
            .selectFrom("events")
            .select("events.id")
            .where("events.account_id", "=", req.account.id)
            .where("events.call_id", "=", q.call_id!),
        );
      const rows = await sel
        .orderBy("id", "desc")
        .limit(q.limit + 1)
        .execute();
      const details = await detailsOf(ctx.store.db, rows.slice(0, q.limit), ctx.clock.now());
      return page(
        rows,
        q.limit,
        (r) => r.id,
        (r) => deliveryObject(r, details),
      );
    },
  );

  app.get("/v1/deliveries/:id", { schema: { params: idParam } }, async (req) => {
    const d = await findDelivery(ctx.store.db, req.account.id, (req.params as { id: string }).id);
    return deliveryObject(d, await detailsOf(ctx.store.db, [d], ctx.clock.now()));
  });

  app.post("/v1/deliveries/:id/retry", { schema: { params: idParam } }, (req, reply) =>
    h.mutate(
      req,
      reply,
      async (trx) => {
        const id = (req.params as { id: string }).id;
        if (ctx.store.caps.rowLocks) {
          // Its call first, then the delivery: the order completions, recovers and transitions
          // lock in (a completion written again after a lost answer locked call then delivery,
          // this delivery then call, and they deadlocked).
          const peek = await findDelivery(trx, req.account.id, id);
          await lockCallsOfEndpoint(trx, ctx.store.caps, {
            endpointId: peek.endpoint_id,
            callIds: [Number(peek.call_id)],
          });
        }
        // Locked on PostgreSQL: two retries at once, or a retry and the dispatcher's claim, must
        // see each other, or a retry could make a claimed delivery due again while it is sent.
        const d = await findDelivery(trx, req.account.id, id, ctx.store.caps.rowLocks);
        const endpoint = await trx
          .selectFrom("endpoints")
          .select(["id", "disabled", "disabled_reason", "deleted_at"])
          .where("id", "=", d.endpoint_id)
          .executeTakeFirstOrThrow();
        if (endpoint.deleted_at !== null)
          throw new ApiError(409, "endpoint_deleted", `endpoint ${d.endpoint_id} has been deleted`, {
            endpoint_id: d.endpoint_id,
          });
        assertSending(endpoint);
        const now = ctx.clock.now();
        if (d.status === "pending" && d.next_attempt_at === null) {
          // Sending it now would overtake an earlier event of its call that is still being retried:
          // the answer names that one, the delivery to retry instead.
          const earlier = await trx
            .selectFrom("deliveries")
            .select(["id", "next_attempt_at", "leased_until"])
            .where("endpoint_id", "=", d.endpoint_id)
            .where("call_id", "=", d.call_id)
            .where("status", "=", "pending")
            .where("event_seq", "<", d.event_seq)
            .orderBy("event_seq")
            .limit(1)
            .executeTakeFirst();
          // What to do about it: retry that one, unless it is being sent now or waits itself.
          const hint = !earlier
            ? ""
            : earlier.leased_until !== null && Number(earlier.leased_until) > now
              ? ` (${earlier.id} is being sent, or about to be)`
              : earlier.next_attempt_at === null
                ? ""
                : ` (retry ${earlier.id} instead)`;
          // Nothing earlier pending: a background recover or replay has yet to make one pending.
          const job = earlier
            ? undefined
            : (
                await sql<{ id: string; kind: string }>`
                  SELECT j.id, j.kind FROM recover_jobs j
                  WHERE j.endpoint_id = ${d.endpoint_id}
                    AND ${awaitingJob(sql`${d.endpoint_id}`, d.call_id, d.event_seq)}
                  ORDER BY j.created_at LIMIT 1`.execute(trx)
              ).rows[0];
          throw new ApiError(
            409,
            "delivery_waiting",
            earlier
              ? `delivery ${d.id} is waiting for ${earlier.id}, an earlier event of call ${d.call_id} to this endpoint; it is sent after that one${hint}`
              : job
                ? `delivery ${d.id} is waiting for an earlier event of call ${d.call_id} to this endpoint, which the ${job.kind} ${job.id} has yet to queue; it is sent after that one (GET /v1/recover-jobs/${job.id})`
                : `delivery ${d.id} is waiting for an earlier event of call ${d.call_id} to this endpoint; it is sent after that one`,
            earlier ? { waiting_for: earlier.id } : job ? { job_id: job.id } : undefined,
          );
        }
        if (inFlight(d, now)) {
          throw new ApiError(
            409,
            "delivery_in_flight",
            `an attempt of delivery ${d.id} is in flight; retry once it has finished`,
          );
        }
        // One new attempt: a delivery waiting for its next retry is made due now and keeps that
        // retry's time, to go back to if this attempt fails (its schedule unchanged; a second retry
        // before the attempt keeps the first one's); a finished one is re-opened for one attempt
        // (a failure ends it again) and goes out at once unless an earlier event of its call to
        // this endpoint is still pending, which it then follows.
        await trx
          .updateTable("deliveries")
          .set(
            d.status === "pending"
              ? {
                  next_attempt_at: now,
                  resume_at: sql`CASE WHEN resume_at IS NOT NULL THEN resume_at WHEN next_attempt_at > ${now} THEN next_attempt_at ELSE NULL END`,
                  updated_at: now,
                }
              : {
                  status: "pending",
                  next_attempt_at: null,
                  resume_at: null,
                  one_attempt: 1,
                  updated_at: now,
                },
          )
          .where("id", "=", d.id)
          .execute();
        // Its call is locked already (above).
        if (d.status !== "pending")
          await reorderChains(trx, { endpointId: d.endpoint_id, callIds: [Number(d.call_id)] }, now);
        const after = await findDelivery(trx, req.account.id, d.id);
        return { status: 202, body: deliveryObject(after, await detailsOf(trx, [after], now)) };
      },
      { work: true },
    ),
  );
};
