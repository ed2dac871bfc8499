import type { Store } from "../storage/store.js";

/**
 * An endpoint's rate limit: start times for its attempts, handed out from its row so that every
 * worker sharing the database keeps to one limit.
 *
 * The row holds when the next attempt may start (`rate_next_us`, microseconds). A grant takes the
 * next `n` start times from there (never before now), one interval (1000 / limit ms) apart, and
 * moves the row past them. Only start times within `RATE_HORIZON_MS` of now are handed out, so a
 * worker reserves at most about a second of an endpoint's attempts ahead and a second worker's
 * grants follow on at once. Each worker starts an attempt at its time, and no sooner than one
 * interval after the endpoint's previous start there (pacer.ts): a worker that falls behind (a
 * busy event loop, a slow timer) sends late, never in a burst. Start times are each worker's own
 * clock: hosts whose clocks differ keep the limit only as well as their clocks agree.
 */
export interface RateGrant {
  /** Attempts per second; null when the endpoint has no limit (then `starts` is empty). */
  limit: number | null;
  /** 1000 / limit: how far apart two attempts of the endpoint start, in ms. */
  intervalMs: number;
  /** Start times granted (ms, not whole), ascending, as many as were asked for at most. */
  starts: number[];
  /** The earliest millisecond at which another grant can hand out a start time. */
  nextGrantAt: number;
}

export const RATE_HORIZON_MS = 1_000;

/** The grant itself, on the row as read (pure, for tests); `rowNextUs` is what the row then holds. */
export function planGrant(
  row: { rate_limit: number | null; rate_next_us: number | null },
  want: number,
  now: number,
  horizonMs = RATE_HORIZON_MS,
): RateGrant & { rowNextUs: number | null } {
  if (row.rate_limit === null || row.rate_limit <= 0)
    return { limit: null, intervalMs: 0, starts: [], nextGrantAt: now, rowNextUs: row.rate_next_us };
  const intervalMs = 1000 / row.rate_limit;
  const first = Math.max(Number(row.rate_next_us ?? 0) / 1000, now);
  // Start times first, first + interval, … that fall before now + horizon.
  const room = Math.max(0, Math.ceil((now + horizonMs - first) / intervalMs));
  const n = Math.max(0, Math.min(want, room));
  const starts = Array.from({ length: n }, (_, i) => first + i * intervalMs);
  const next = first + n * intervalMs;
  return {
    limit: row.rate_limit,
    intervalMs,
    starts,
    nextGrantAt: Math.floor(next - horizonMs) + 1,
    // Rounded up to the microsecond the column holds: never closer together than the interval.
    rowNextUs: n > 0 ? Math.ceil(next * 1000) : row.rate_next_us,
  };
}

/**
 * Grants start times to several endpoints at once (`want`: how many each), in one transaction:
 * the rows are locked in id order on PostgreSQL, so that two workers granting at once each see the
 * other's reservations (SQLite has one writer at a time). An endpoint without a
 * limit (any more) gets a grant with `limit` null; one whose row another transaction holds
 * (PostgreSQL), or that is not found, is left out.
 */
export async function grantStarts(
  store: Store,
  want: ReadonlyMap<string, number>,
  now: number,
  horizonMs = RATE_HORIZON_MS,
): Promise<Map<string, RateGrant>> {
  const ids = [...want.keys()].sort();
  return store.db.transaction().execute(async (trx) => {
    // SKIP LOCKED: a row another transaction holds (another worker's grant, a completion marking
    // the endpoint failing) is left out, to be asked again shortly, rather than waited for: a
    // grant holds no other lock, but a completion may sit on the row for the rest of its batch.
    const rows = await trx
      .selectFrom("endpoints")
      .select(["id", "rate_limit", "rate_next_us"])
      .where("id", "in", ids)
      .orderBy("id")
      .$if(store.caps.rowLocks, (q) => q.forUpdate().skipLocked())
      .execute();
    const grants = new Map<string, RateGrant>();
    for (const row of rows) {
      const { rowNextUs, ...grant } = planGrant(
        { rate_limit: row.rate_limit, rate_next_us: row.rate_next_us },
        want.get(row.id) ?? 0,
        now,
        horizonMs,
      );
      if (grant.starts.length > 0)
        await trx
          .updateTable("endpoints")
          .set({ rate_next_us: rowNextUs })
          .where("id", "=", row.id)
          .execute();
      grants.set(row.id, grant);
    }
    return grants;
  });
}
