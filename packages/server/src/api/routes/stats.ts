import { sql } from "kysely";
import { ApiError, badRequest, notFound } from "../../errors.js";
import { LEASE_EXPIRED_LIKE } from "../../storage/migrations.js";
import type { Db } from "../../storage/types.js";
import { isoMillis, parseIso } from "../../util/time.js";
import { parseDuration } from "../../util/units.js";
import { isoTimestamp } from "./common.js";
import type { RouteModule } from "./index.js";

/** Most buckets one request may ask for: enough for a week in 10-minute steps, small enough to draw. */
export const MAX_BUCKETS = 1_000;

export interface StatsRow {
  succeeded: number;
  failed: number;
  /** Nearest-rank percentiles of attempt duration; null when the bucket had no attempt. */
  p50_ms: number | null;
  p95_ms: number | null;
}

export interface DeliveryStatsQuery {
  accountId: number;
  since: number;
  until: number;
  bucketMs: number;
  endpointId?: string | undefined;
}

const num = (v: unknown): number => Number(v ?? 0);
const numOrNull = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

/**
 * Attempt counts and latency percentiles of one account's deliveries, per time bucket, in one
 * portable SQL statement (SQLite ≥ 3.25 and PostgreSQL both have window functions).
 *
 * Percentiles are exact nearest-rank values computed in the database: each attempt is ranked by
 * duration within its bucket (a `lease_expired` attempt counts as failed but has no response time to
 * rank), and the rank ceil(p·n) is picked with integer arithmetic
 * ((p·n + 99) / 100) because `CEIL` is not in every SQLite build. Only one row per bucket
 * leaves the database, however many attempts there were.
 *
 * `bucketKey` is an SQL expression over `t.started_at`: the bucket index, or a constant for totals.
 */
async function aggregate(db: Db, q: DeliveryStatsQuery, bucketKey: ReturnType<typeof sql<number>>) {
  const endpointFilter = q.endpointId === undefined ? sql`` : sql`AND d.endpoint_id = ${q.endpointId}`;
  const res = await sql<{
    b: number | string;
    succeeded: number | string;
    failed: number | string;
    p50: number | string | null;
    p95: number | string | null;
  }>`
    WITH a AS (
      SELECT ${bucketKey} AS b,
             -- A lease_expired attempt's duration is its lease's length, not a response time.
             CASE WHEN t.error LIKE ${LEASE_EXPIRED_LIKE} THEN NULL ELSE t.duration_ms END AS dur,
             CASE WHEN t.error IS NULL AND t.status_code >= 200 AND t.status_code < 300 THEN 1 ELSE 0 END AS ok
      FROM attempts t
      JOIN deliveries d ON d.id = t.delivery_id
      WHERE d.account_id = ${q.accountId}
        AND t.started_at >= ${q.since}
        AND t.started_at < ${q.until}
        ${endpointFilter}
    ), r AS (
      SELECT b, dur, ok,
             ROW_NUMBER() OVER (PARTITION BY b, dur IS NULL ORDER BY dur) AS rn,
             COUNT(dur) OVER (PARTITION BY b) AS n
      FROM a
    )
    SELECT b,
           SUM(ok) AS succeeded,
           COUNT(*) - SUM(ok) AS failed,
           MAX(CASE WHEN dur IS NOT NULL AND rn = (50 * n + 99) / 100 THEN dur END) AS p50,
           MAX(CASE WHEN dur IS NOT NULL AND rn = (95 * n + 99) / 100 THEN dur END) AS p95
    FROM r
    GROUP BY b
    ORDER BY b
  `.execute(db);
  return res.rows.map((r) => ({
    b: num(r.b),
    succeeded: num(r.succeeded),
    failed: num(r.failed),
    p50_ms: numOrNull(r.p50),
    p95_ms: numOrNull(r.p95),
  }));
}

/**
 * Per-bucket and overall delivery statistics: every bucket in [since, until) is present, empty
 * ones with zero counts and null percentiles, so a chart can plot them as they come.
 */
export async function deliveryStats(db: Db, q: DeliveryStatsQuery) {
  // The bucket index is integer division of two integers in both dialects. The operands are
  // inlined as validated integer literals: a bound JS number may reach SQLite as a REAL, which
  // would turn the division into a fractional one.
  const since = sql.lit(Math.trunc(q.since));
  const width = sql.lit(Math.trunc(q.bucketMs));
  const perBucket = await aggregate(db, q, sql<number>`(t.started_at - ${since}) / ${width}`);
  const [total] = await aggregate(db, q, sql<number>`0`);
  const count = Math.ceil((q.until - q.since) / q.bucketMs);
  const byIndex = new Map(perBucket.map((r) => [r.b, r]));
  const buckets = Array.from({ length: count }, (_, i) => {
    const r = byIndex.get(i);
    return {
      start: isoMillis(q.since + i * q.bucketMs),
      succeeded: r?.succeeded ?? 0,
      failed: r?.failed ?? 0,
      p50_ms: r?.p50_ms ?? null,
      p95_ms: r?.p95_ms ?? null,
    };
  });
  return {
    since: isoMillis(q.since),
    until: isoMillis(q.until),
    bucket_seconds: q.bucketMs / 1000,
    totals: {
      succeeded: total?.succeeded ?? 0,
      failed: total?.failed ?? 0,
      p50_ms: total?.p50_ms ?? null,
      p95_ms: total?.p95_ms ?? null,
    } satisfies StatsRow,
    buckets,
  };
}

export const statsRoutes: RouteModule = (app, ctx) => {
  app.get(
    "/v1/stats/deliveries",
    {
      schema: {
        querystring: {
          type: "object",
          additionalProperties: false,
          properties: {
            since: isoTimestamp,
            until: isoTimestamp,
            bucket: { type: "string", maxLength: 20, default: "1h" },
            endpoint_id: { type: "string", pattern: "^ep_[0-9a-z]{26}$" },
          },
        },
      },
    },
    async (req) => {
      const q = req.query as { since?: string; until?: string; bucket: string; endpoint_id?: string };
      let bucketMs: number;
      try {
        bucketMs = parseDuration(q.bucket);
      } catch {
        throw badRequest("bucket", `not a duration: "${q.bucket}" (use e.g. 60s, 5m, 1h, 1d)`);
      }
      if (bucketMs < 1000 || bucketMs % 1000 !== 0)
        throw badRequest("bucket", "bucket must be a whole number of seconds, at least 1s");
      const until = q.until === undefined ? ctx.clock.now() : parseIso(q.until);
      if (until === undefined) throw badRequest("until", `"until" is not an ISO-8601 timestamp`);
      const since = q.since === undefined ? until - 24 * 3_600_000 : parseIso(q.since);
      if (since === undefined) throw badRequest("since", `"since" is not an ISO-8601 timestamp`);
      if (since >= until)
        throw new ApiError(400, "invalid_request", `"since" must be before "until"`, { field: "since" });
      if (Math.ceil((until - since) / bucketMs) > MAX_BUCKETS)
        throw badRequest("bucket", `at most ${MAX_BUCKETS} buckets: use a larger bucket or a shorter range`);
      if (q.endpoint_id !== undefined) {
        // Another account's endpoint is a 404 like everywhere else (§6), not an empty chart. A
        // deleted endpoint of this account still has its history.
        const own = await ctx.store.db
          .selectFrom("endpoints")
          .select("id")
          .where("id", "=", q.endpoint_id)
          .where("account_id", "=", req.account.id)
          .executeTakeFirst();
        if (!own) throw notFound("endpoint", q.endpoint_id);
      }
      return deliveryStats(ctx.store.db, {
        accountId: req.account.id,
        since,
        until,
        bucketMs,
        endpointId: q.endpoint_id,
      });
    },
  );
};
