import { EVENT_TYPES } from "@klen/webhooks/schemas";
import type { Selectable } from "kysely";
import { countRecoverable, queueRecoverJob, recoverAll } from "../../delivery/recover.js";
import { fitsInRequest, replayAll, replayFilter } from "../../delivery/replay.js";
import { RESERVED_HEADERS } from "../../delivery/sign.js";
import { previousSecretsExpireAt, rotatedOut } from "../../endpoints/secrets.js";
import { checkEndpointUrl } from "../../endpoints/url.js";
import { ApiError, badRequest, notFound } from "../../errors.js";
import type { Database } from "../../storage/schema.js";
import type { Db } from "../../storage/types.js";
import { newEndpointSecret, newId } from "../../util/ids.js";
import { isoMillis, parseIso } from "../../util/time.js";
import type { Outcome } from "../idempotency.js";
import { listPage, pageQuery } from "../pagination.js";
import { INT32_MAX, isoTimestamp, stringIdParam } from "./common.js";
import type { RouteModule } from "./index.js";

type EndpointRow = Selectable<Database["endpoints"]>;

export const endpointObject = (e: EndpointRow) => ({
  id: e.id,
  url: e.url,
  description: e.description,
  event_types: JSON.parse(e.event_types) as string[],
  agent_ids: JSON.parse(e.agent_ids) as number[],
  headers: JSON.parse(e.headers) as Record<string, string>,
  disabled: e.disabled === 1,
  disabled_reason: e.disabled_reason,
  rate_limit: e.rate_limit === null ? null : Number(e.rate_limit),
  failing_since: e.failing_since === null ? null : isoMillis(Number(e.failing_since)),
  created_at: isoMillis(Number(e.created_at)),
  updated_at: isoMillis(Number(e.updated_at)),
});

const endpointProps = {
  url: { type: "string", minLength: 1, maxLength: 2000 },
  description: { type: "string", maxLength: 1000 },
  event_types: {
    type: "array",
    uniqueItems: true,
    maxItems: EVENT_TYPES.length,
    items: { type: "string", enum: EVENT_TYPES },
  },
  agent_ids: {
    type: "array",
    uniqueItems: true,
    maxItems: 1000,
    items: { type: "integer", minimum: 1, maximum: INT32_MAX },
  },
  headers: {
    type: "object",
    maxProperties: 20,
    propertyNames: { pattern: "^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$" },
    // Visible ASCII, space and tab: anything else (CR, LF, NUL, other controls) cannot be sent, so
    // every attempt would fail; it is refused when the endpoint is saved instead.
    additionalProperties: { type: "string", maxLength: 4000, pattern: "^[\\t\\x20-\\x7e]*$" },
  },
  disabled: { type: "boolean" },
  // Attempts per second at most, across every worker; null: no limit.
  rate_limit: { type: ["integer", "null"], minimum: 1, maximum: 100_000 },
} as const;

type EndpointBody = {
  url?: string;
  description?: string;
  event_types?: string[];
  agent_ids?: number[];
  headers?: Record<string, string>;
  disabled?: boolean;
  rate_limit?: number | null;
};

/** Headers the HTTP client refuses to send: an endpoint with one would fail every attempt. */
const UNSENDABLE_HEADERS = new Set(["expect", "upgrade", "keep-alive"]);

function checkHeaders(headers: Record<string, string> | undefined): void {
  // Header names are case-insensitive: two spellings of one would be sent as one, the last.
  const seen = new Set<string>();
  for (const name of Object.keys(headers ?? {})) {
    if (seen.has(name.toLowerCase()))
      throw badRequest(`headers.${name}`, `header "${name}" is given twice (names are case-insensitive)`);
    seen.add(name.toLowerCase());
    if (RESERVED_HEADERS.has(name.toLowerCase())) {
      throw badRequest(`headers.${name}`, `header "${name}" is set by Klen and cannot be overridden`);
    }
    if (UNSENDABLE_HEADERS.has(name.toLowerCase())) {
      throw badRequest(`headers.${name}`, `header "${name}" is a connection header and cannot be set`);
    }
  }
}

/**
 * Re-queued work for a disabled endpoint would only be settled as `endpoint_disabled` without an
 * attempt, so retry and recover refuse it rather than answer 202 and send nothing.
 */
export function assertSending(e: Pick<EndpointRow, "id" | "disabled" | "disabled_reason">): void {
  if (e.disabled === 1)
    throw new ApiError(
      409,
      "endpoint_disabled",
      `endpoint ${e.id} is disabled (${e.disabled_reason ?? "no reason recorded"}); enable it first (dashboard, klen-webhooks endpoints enable, or PATCH /v1/endpoints/${e.id} {"disabled": false})`,
      { endpoint_id: e.id },
    );
}

export async function findEndpoint(
  db: Db,
  accountId: number,
  id: string,
  /** Lock the row for the rest of the transaction (PostgreSQL; SQLite has one writer at a time). */
  forUpdate = false,
): Promise<EndpointRow> {
  const e = await db
    .selectFrom("endpoints")
    .selectAll()
    .where("id", "=", id)
    .where("account_id", "=", accountId)
    .where("deleted_at", "is", null)
    .$if(forUpdate, (q) => q.forUpdate())
    .executeTakeFirst();
  if (!e) throw notFound("endpoint", id);
  return e;
}

const idParam = stringIdParam("ep");

/** The body of recover and replay: a time range, `until` now when left out. */
const timeRangeBody = {
  type: "object",
  additionalProperties: false,
  required: ["since"],
  properties: { since: isoTimestamp, until: isoTimestamp },
} as const;
type TimeRangeBody = { since: string; until?: string };

function timeRange(b: TimeRangeBody, now: number): { since: number; until: number } {
  const since = parseIso(b.since);
  if (since === undefined) throw badRequest("since", `"since" is not an ISO-8601 timestamp`);
  const until = b.until === undefined ? now : parseIso(b.until);
  if (until === undefined) throw badRequest("until", `"until" is not an ISO-8601 timestamp`);
  if (until < since) {
    // Without `until` it is now: then `since` is what is wrong.
    throw b.until === undefined
      ? badRequest("since", `"since" is in the future`)
      : new ApiError(400, "invalid_request", `"until" is before "since"`, { field: "until" });
  }
  return { since, until };
}

/**
 * An agent filter names the account's own agents: an id of another account's, a deleted one or a
 * typo would make a filter that never matches, the endpoint silently getting nothing.
 */
async function checkAgentIds(trx: Db, accountId: number, ids: readonly number[] | undefined): Promise<void> {
  if (!ids || ids.length === 0) return;
  const found = await trx
    .selectFrom("agents")
    .select("id")
    .where("account_id", "=", accountId)
    .where("deleted_at", "is", null)
    .where("id", "in", ids)
    .execute();
  const known = new Set(found.map((r) => Number(r.id)));
  const unknown = ids.filter((id) => !known.has(id));
  if (unknown.length > 0)
    throw badRequest(
      "agent_ids",
      `${unknown.length === 1 ? "agent" : "agents"} ${unknown.slice(0, 10).join(", ")} not found`,
    );
}

/** `{secret}`, plus when the last rotated-out secret stops signing while one still does. */
function secretObject(secret: string, previousExpireAt: number | undefined) {
  return {
    secret,
    ...(previousExpireAt !== undefined ? { previous_secret_expires_at: isoMillis(previousExpireAt) } : {}),
  };
}

export const endpointRoutes: RouteModule = (app, ctx, h) => {
  const dev = ctx.config.dev;

  app.post(
    "/v1/endpoints",
    {
      schema: {
        body: { type: "object", additionalProperties: false, required: ["url"], properties: endpointProps },
      },
    },
    (req, reply) =>
      h.mutate(req, reply, async (trx) => {
        const b = req.body as EndpointBody & { url: string };
        const url = checkEndpointUrl(b.url, dev);
        checkHeaders(b.headers);
        await checkAgentIds(trx, req.account.id, b.agent_ids);
        const now = ctx.clock.now();
        const row = await trx
          .insertInto("endpoints")
          .values({
            id: newId("ep", now),
            account_id: req.account.id,
            url,
            description: b.description ?? "",
            event_types: JSON.stringify(b.event_types ?? []),
            agent_ids: JSON.stringify(b.agent_ids ?? []),
            headers: JSON.stringify(b.headers ?? {}),
            secret: newEndpointSecret(),
            previous_secret: null,
            previous_secret_expires_at: null,
            previous_secrets: null,
            disabled: b.disabled ? 1 : 0,
            disabled_reason: b.disabled ? "disabled by user" : null,
            failing_since: null,
            rate_limit: b.rate_limit ?? null,
            created_at: now,
            updated_at: now,
            deleted_at: null,
          })
          .returningAll()
          .executeTakeFirstOrThrow();
        return { status: 201, body: { ...endpointObject(row), secret: row.secret } };
      }),
  );

  app.get(
    "/v1/endpoints",
    { schema: { querystring: { type: "object", additionalProperties: false, properties: pageQuery } } },
    async (req) => {
      const q = req.query as { limit: number; cursor?: string };
      const sel = ctx.store.db
        .selectFrom("endpoints")
        .selectAll()
        .where("account_id", "=", req.account.id)
        .where("deleted_at", "is", null);
      return listPage(sel, q, "string", endpointObject, undefined, "ep");
    },
  );

  app.get("/v1/endpoints/:id", { schema: { params: idParam } }, async (req) =>
    endpointObject(await findEndpoint(ctx.store.db, req.account.id, (req.params as { id: string }).id)),
  );

  app.patch(
    "/v1/endpoints/:id",
    {
      schema: {
        params: idParam,
        body: { type: "object", additionalProperties: false, properties: endpointProps },
      },
    },
    (req, reply) =>
      h.mutate(
        req,
        reply,
        async (trx) => {
          const id = (req.params as { id: string }).id;
          const current = await findEndpoint(trx, req.account.id, id);
          const b = req.body as EndpointBody;
          const set: Partial<EndpointRow> = { updated_at: ctx.clock.now() };
          if (b.url !== undefined) set.url = checkEndpointUrl(b.url, dev);
          if (b.headers !== undefined) {
            checkHeaders(b.headers);
            set.headers = JSON.stringify(b.headers);
          }
          if (b.description !== undefined) set.description = b.description;
          if (b.event_types !== undefined) set.event_types = JSON.stringify(b.event_types);
          if (b.agent_ids !== undefined) {
            await checkAgentIds(trx, req.account.id, b.agent_ids);
            set.agent_ids = JSON.stringify(b.agent_ids);
          }
          if (b.rate_limit !== undefined) set.rate_limit = b.rate_limit;
          if (b.disabled === true && current.disabled === 0) {
            set.disabled = 1;
            set.disabled_reason = "disabled by user";
          }
          if (b.disabled === false && current.disabled === 1) {
            // Re-enabling starts the failure clock afresh.
            set.disabled = 0;
            set.disabled_reason = null;
            set.failing_since = null;
          }
          await trx.updateTable("endpoints").set(set).where("id", "=", id).execute();
          return { status: 200, body: endpointObject(await findEndpoint(trx, req.account.id, id)) };
        },
        { endpoint: (req.params as { id: string }).id },
      ),
  );

  app.delete("/v1/endpoints/:id", { schema: { params: idParam } }, (req, reply) =>
    h.mutate(
      req,
      reply,
      async (trx) => {
        const id = (req.params as { id: string }).id;
        const e = await findEndpoint(trx, req.account.id, id);
        const now = ctx.clock.now();
        await trx
          .updateTable("endpoints")
          .set({ deleted_at: now, updated_at: now })
          .where("id", "=", id)
          .execute();
        return { status: 200, body: { ...endpointObject(e), deleted: true } };
      },
      { endpoint: (req.params as { id: string }).id },
    ),
  );

  app.get("/v1/endpoints/:id/secret", { schema: { params: idParam } }, async (req) => {
    const e = await findEndpoint(ctx.store.db, req.account.id, (req.params as { id: string }).id);
    const now = ctx.clock.now();
    return secretObject(e.secret, previousSecretsExpireAt(e, now));
  });

  app.post(
    "/v1/endpoints/:id/rotate-secret",
    {
      // No body means the default grace; a JSON `null` is refused as any body that is not an object.
      preValidation: async (req) => {
        if (req.body === undefined) req.body = {};
      },
      schema: {
        params: idParam,
        body: {
          type: "object",
          additionalProperties: false,
          properties: { grace_seconds: { type: "integer", minimum: 0, maximum: 30 * 86400 } },
        },
      },
    },
    (req, reply) =>
      h.mutate(
        req,
        reply,
        async (trx) => {
          const id = (req.params as { id: string }).id;
          // Locked: two rotations at once must each see the other's secret to keep it signing.
          const e = await findEndpoint(trx, req.account.id, id, ctx.store.caps.rowLocks);
          const grace = (req.body as { grace_seconds?: number } | null)?.grace_seconds ?? 86_400;
          const now = ctx.clock.now();
          const secret = newEndpointSecret();
          const previous = rotatedOut(e, now, grace);
          await trx
            .updateTable("endpoints")
            .set({ secret, ...previous, updated_at: now })
            .where("id", "=", id)
            .execute();
          return { status: 200, body: secretObject(secret, previousSecretsExpireAt(previous, now)) };
        },
        { endpoint: (req.params as { id: string }).id },
      ),
  );

  /**
   * Recover and replay: a time range of a sending endpoint, carried out in the request's
   * transaction or recorded with it as a background job (delivery/recover.ts).
   */
  const rangeRoute = (
    action: "recover" | "replay",
    act: (trx: Db, e: EndpointRow, range: { since: number; until: number }, now: number) => Promise<Outcome>,
  ) =>
    app.post(
      `/v1/endpoints/:id/${action}`,
      { schema: { params: idParam, body: timeRangeBody } },
      (req, reply) =>
        h.mutate(
          req,
          reply,
          async (trx) => {
            const e = await findEndpoint(trx, req.account.id, (req.params as { id: string }).id);
            assertSending(e);
            const now = ctx.clock.now();
            return act(trx, e, timeRange(req.body as TimeRangeBody, now), now);
          },
          { work: true },
        ),
    );

  rangeRoute("recover", async (trx, e, range, now) => {
    const scope = { endpointId: e.id, ...range };
    // A recover of up to KLEN_RECOVER_BATCH deliveries is done here, in the request's
    // transaction; a larger one is recorded with it and carried out by worker processes a
    // batch of calls at a time (delivery/recover.ts), since one statement re-opening 200,000
    // deliveries held SQLite, and so every request and attempt, for ~4 s.
    const found = await countRecoverable(trx, scope);
    if (found <= ctx.config.recoverBatch)
      return { status: 202, body: { queued: await recoverAll(trx, ctx.store.caps, scope, now) } };
    const job = await queueRecoverJob(trx, ctx.store.caps, { ...scope, accountId: e.account_id, found }, now);
    return { status: 202, body: { queued: found, job_id: job } };
  });

  rangeRoute("replay", async (trx, e, range, now) => {
    const scope = {
      accountId: e.account_id,
      endpointId: e.id,
      // Events older than the retention period may have lost their deliveries to the purge
      // already (retention/purge.ts), and would look never sent: the range starts after it.
      since: Math.max(range.since, now - ctx.config.retentionMs),
      // What is made after this request is not missing: its own fan-out decided it.
      until: Math.min(range.until, now),
      ...replayFilter(e),
    };
    // As a recover: a range of up to KLEN_RECOVER_BATCH events in the request's transaction,
    // a larger one by worker processes in the background, that many events a batch.
    if (await fitsInRequest(trx, scope, ctx.config.recoverBatch))
      return { status: 202, body: { queued: await replayAll(trx, ctx.store.caps, scope, now) } };
    const job = await queueRecoverJob(trx, ctx.store.caps, { ...scope, found: 0, kind: "replay" }, now);
    return { status: 202, body: { queued: null, job_id: job } };
  });
};
