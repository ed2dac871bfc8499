import type { Store } from "../storage/store.js";

/**
 * An endpoint's rate limit: start times for its attempts, handed out from its row so that every
 * worker sharing the database keeps to one limit.
 *
 * The row holds when the next attempt may start (`rate_next_at`). A grant takes the next `n` start
 * times from there (never before now), one interval (1000 / limit ms) apart, and moves the row past
 * them. Only start times within `horizonMs` of now are handed out, so a worker reserves at most
 * about a second of an endpoint's attempts ahead and a second worker's grants follow on at once.
 * The dispatcher starts each attempt at its time, and no sooner than one interval after the
 * endpoint's previous start in the same process (`Dispatcher.pump`): a process that falls behind
 * (a busy event loop, a slow timer) sends late, never in a burst.
 */
export interface RateGrant {
  /** Attempts per second; null when the endpoint has no limit (then `starts` is empty). */
  limit: number | null;
  /** 1000 / limit: how far apart two attempts of the endpoint start. */
  intervalMs: number;
  /** Start times granted, ascending, as many as were asked for at most. */
  starts: number[];
  /** The earliest time another grant can hand out a start time. */
  nextGrantAt: number;
}

export const RATE_HORIZON_MS = 1_000;

/** The grant itself, on the row as read (pure, for tests). */
export function planGrant(
  row: { rate_limit: number | null; rate_next_at: number | null },
  want: number,
  now: number,
  horizonMs = RATE_HORIZON_MS,
): RateGrant & { rowNextAt: number | null } {
  if (row.rate_limit === null || row.rate_limit <= 0)
    return { limit: null, intervalMs: 0, starts: [], nextGrantAt: now, rowNextAt: row.rate_next_at };
  const intervalMs = 1000 / row.rate_limit;
  const first = Math.max(Number(row.rate_next_at ?? 0), now);
  // Start times first, first + interval, … that fall before now + horizon.
  const room = Math.max(0, Math.ceil((now + horizonMs - first) / intervalMs));
  const n = Math.max(0, Math.min(want, room));
  const starts = Array.from({ length: n }, (_, i) => first + i * intervalMs);
  // Rounded up to the millisecond the column holds: never closer together than the interval.
  const next = n > 0 ? Math.ceil(first + n * intervalMs) : first;
  return {
    limit: row.rate_limit,
    intervalMs,
    starts,
    // The first millisecond at which a start time at `next` is within the horizon.
    nextGrantAt: Math.floor(next - horizonMs) + 1,
    rowNextAt: n > 0 ? next : row.rate_next_at,
  };
}

/** Grants up to `want` start times for attempts of `endpointId` (see `RateGrant`). */
export async function grantStarts(
  store: Store,
  endpointId: string,
  want: number,
  now: number,
): Promise<RateGrant> {
  return store.db.transaction().execute(async (trx) => {
    const row = await trx
      .selectFrom("endpoints")
      .select(["rate_limit", "rate_next_at"])
      .where("id", "=", endpointId)
      // Two workers granting at once must each see the other's reservation (SQLite: one writer).
      .$if(store.caps.rowLocks, (q) => q.forUpdate())
      .executeTakeFirst();
    const plan = planGrant(
      { rate_limit: row?.rate_limit ?? null, rate_next_at: row?.rate_next_at ?? null },
      want,
      now,
    );
    if (plan.starts.length > 0)
      await trx
        .updateTable("endpoints")
        .set({ rate_next_at: plan.rowNextAt })
        .where("id", "=", endpointId)
        .execute();
    const { rowNextAt: _, ...grant } = plan;
    return grant;
  });
}
