import type { Store } from "../storage/store.js";
import type { Claimed } from "./claim.js";
import { grantStarts, RATE_HORIZON_MS } from "./rate.js";

/** How soon deliveries whose endpoint row was held by another transaction are asked for again. */
const LOCKED_RETRY_MS = 20;
/**
 * How far past the end of its grant's block of start times an attempt may still start (or two
 * intervals, when longer). Blocks are handed out one per grant and the next may be another
 * worker's: an attempt started later than this would take start times the row gave someone else.
 * Within its own block an attempt may start late (a busy process drifts behind its start times,
 * one interval after the other), since those times are this worker's.
 */
const LATE_MS = 20;

/** A claimed delivery of a rate-limited endpoint waiting for its start time. */
interface Queued {
  c: Claimed;
  /** Its start time (ms, not whole). */
  at: number;
  /** The endpoint's interval when it was granted: a limit changed since applies from the next grant. */
  intervalMs: number;
  /** The last start time of its grant's block. */
  until: number;
  claimedAt: number;
}

/** One rate-limited endpoint in this process. */
interface Pace {
  intervalMs: number;
  /** When a grant can next hand out a start time (`RateGrant.nextGrantAt`): left out of claims until then. */
  nextGrantAt: number;
  /** When this process was last granted start times for it. */
  grantedAt: number;
  /** When this process last started one of its attempts. */
  last: number;
  queue: Queued[];
  timer: NodeJS.Timeout | undefined;
}

export interface PacerHooks {
  now(): number;
  /** Starts an attempt whose time has come: from then on it holds one of the process's slots. */
  launch(c: Claimed): void;
  /** Hands claims back to the queue, due at `dueAt`; never throws. */
  handBack(claims: Claimed[], dueAt: number): Promise<void>;
  /** A grant can be made again for these endpoints: wake the claim loop for them. */
  wake(endpoints: string[]): void;
  /** How long after its claim a waiting attempt may still start: its lease less the delivery timeout. */
  startWithinMs: number;
  /** Whether the process has a slot free for one more attempt. */
  hasSlot(): boolean;
}

/**
 * The rate-limited endpoints' side of the dispatcher (rate.ts): claimed deliveries of such an
 * endpoint get start times from its row and wait for them here, each starting at its time and at
 * least one interval after the endpoint's previous start in this process. Waiting attempts hold
 * their leases and count against their endpoint's own cap, not against the process's slots, so
 * rate-limited backlogs cannot keep other endpoints waiting; an attempt takes a slot when it starts,
 * and waits for one when none is free.
 */
export class Pacer {
  private readonly paces = new Map<string, Pace>();
  private wakeTimer: NodeJS.Timeout | undefined;
  private waiting = 0;
  /** Endpoints with an attempt whose time has come but no slot to start in (`resume`). */
  private readonly blocked = new Set<string>();
  /**
   * How far ahead start times are taken: a second, or less when the lease leaves less than twice
   * that between claim and start (a start time further out would be handed back stale, and taken
   * again just as far out, each time).
   */
  private readonly horizonMs: number;

  constructor(
    private readonly store: Store,
    private readonly hooks: PacerHooks,
  ) {
    this.horizonMs = Math.max(1, Math.min(RATE_HORIZON_MS, Math.floor(hooks.startWithinMs / 2)));
  }

  /** Attempts waiting for their start time, over every endpoint. */
  get queued(): number {
    return this.waiting;
  }

  queuedOf(endpointId: string): number {
    return this.paces.get(endpointId)?.queue.length ?? 0;
  }

  /** How many rate-limited endpoints this process knows of. */
  get size(): number {
    return this.paces.size;
  }

  /** The rate-limited endpoints this process knows of. */
  endpoints(): IterableIterator<string> {
    return this.paces.keys();
  }

  /**
   * What a rate-limited endpoint may hold in this process, waiting or in flight, given `share`
   * otherwise: no more than one grant can start (a horizon's worth, and one still waiting), so a
   * claim does not take a batch of its backlog only to hand it back.
   */
  capOf(endpointId: string, share: number): number {
    const p = this.paces.get(endpointId);
    return p ? Math.min(share, Math.ceil(this.horizonMs / p.intervalMs) + 1) : share;
  }

  /**
   * The endpoints that may not be granted a start time yet, and so sit out the claim; arms the
   * wake-up for the first of them. Forgets one with nothing waiting that has had no grant and no
   * start for a horizon and an interval: what its row says is then all there is to know (and its
   * next start is an interval after its last one here in any case).
   */
  leftOut(now: number): string[] {
    if (this.paces.size === 0) return [];
    const out: string[] = [];
    let first = Number.POSITIVE_INFINITY;
    for (const [id, p] of this.paces) {
      if (p.nextGrantAt > now) {
        out.push(id);
        first = Math.min(first, p.nextGrantAt);
      } else if (
        p.queue.length === 0 &&
        now - Math.max(p.last, p.grantedAt) >= Math.max(this.horizonMs, p.intervalMs)
      ) {
        this.paces.delete(id);
      }
    }
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
    this.wakeTimer = undefined;
    if (out.length > 0)
      this.wakeTimer = setTimeout(
        () => {
          this.wakeTimer = undefined;
          const at = this.hooks.now();
          this.hooks.wake([...this.paces].filter(([, p]) => p.nextGrantAt <= at).map(([id]) => id));
        },
        Math.max(1, Math.ceil(first - now)),
      );
    return out;
  }

  /**
   * Asks the endpoints' rows for start times for `claimed` (one transaction for them all; claimed
   * at `claimedAt`) and queues those granted, oldest delivery first. The rest are handed back, due
   * when the next grant can be made. Returns the deliveries whose endpoint turned out to have no
   * limit (to start at once) and those handed back. Throws when the grant failed; nothing was
   * queued then.
   */
  async take(
    claimed: ReadonlyMap<string, Claimed[]>,
    claimedAt: number,
  ): Promise<{ unlimited: Claimed[]; handedBack: Claimed[] }> {
    const now = this.hooks.now();
    const want = new Map([...claimed].map(([id, list]) => [id, list.length]));
    const grants = await grantStarts(this.store, want, now, this.horizonMs);
    const out = { unlimited: [] as Claimed[], handedBack: [] as Claimed[] };
    const backs: Array<Promise<void>> = [];
    for (const [id, unsorted] of claimed) {
      const grant = grants.get(id);
      if (!grant) {
        // Its row was held by another transaction (PostgreSQL): asked again shortly.
        out.handedBack.push(...unsorted);
        backs.push(this.hooks.handBack(unsorted, now + LOCKED_RETRY_MS));
        continue;
      }
      if (grant.limit === null) {
        // The limit was removed since the claim read it.
        out.unlimited.push(...unsorted);
        continue;
      }
      let p = this.paces.get(id);
      if (!p) {
        p = {
          intervalMs: 0,
          nextGrantAt: 0,
          grantedAt: 0,
          last: Number.NEGATIVE_INFINITY,
          queue: [],
          timer: undefined,
        };
        this.paces.set(id, p);
      }
      p.intervalMs = grant.intervalMs;
      p.nextGrantAt = grant.nextGrantAt;
      p.grantedAt = now;
      // Delivery ids grow with time: the oldest first.
      const list = [...unsorted].sort((a, b) => (a.id < b.id ? -1 : 1));
      const granted = grant.starts.length;
      for (let i = 0; i < granted; i++)
        p.queue.push({
          c: list[i] as Claimed,
          at: grant.starts[i] as number,
          intervalMs: grant.intervalMs,
          until: grant.starts[granted - 1] as number,
          claimedAt,
        });
      this.waiting += granted;
      const rest = list.slice(granted);
      if (rest.length > 0) {
        out.handedBack.push(...rest);
        backs.push(this.hooks.handBack(rest, Math.max(now, grant.nextGrantAt)));
      }
      this.pump(id);
    }
    await Promise.all(backs);
    return out;
  }

  /**
   * Starts the endpoint's waiting attempts whose time has come, each at least its interval after
   * the one before it in this process, and sets a timer for the next. One that waited so long that
   * its lease could run out during the attempt is handed back instead, due at once.
   */
  private pump(endpointId: string): void {
    const p = this.paces.get(endpointId);
    if (!p) return;
    if (p.timer) clearTimeout(p.timer);
    p.timer = undefined;
    const stale: Claimed[] = [];
    for (let next = p.queue[0]; next !== undefined; next = p.queue[0]) {
      const now = this.hooks.now();
      // Waited so long that its lease could run out during the attempt, or so late that its
      // grant's block is long over: handed back, due at once, for a start time of its own again.
      if (
        now - next.claimedAt > this.hooks.startWithinMs ||
        now - next.until > Math.max(LATE_MS, 2 * next.intervalMs)
      ) {
        p.queue.shift();
        this.waiting--;
        stale.push(next.c);
        continue;
      }
      const at = Math.max(next.at, p.last + next.intervalMs);
      if (at > now) {
        p.timer = setTimeout(() => this.pump(endpointId), Math.ceil(at - now));
        break;
      }
      // Its time has come, but it starts only in a free slot, like any attempt (`resume`).
      if (!this.hooks.hasSlot()) {
        this.blocked.add(endpointId);
        break;
      }
      p.queue.shift();
      this.waiting--;
      this.hooks.launch(next.c);
      // Read after the launch, which stamps the attempt's start: a pause in between (a collection)
      // must not let the next attempt start closer to this one than the interval.
      p.last = this.hooks.now();
    }
    if (stale.length > 0) void this.hooks.handBack(stale, this.hooks.now());
  }

  /** Slots came free: starts the attempts that were waiting for one. */
  resume(): void {
    if (this.blocked.size === 0) return;
    const ids = [...this.blocked];
    this.blocked.clear();
    for (const id of ids) this.pump(id);
  }

  /** Forgets endpoints (deleted or disabled) with nothing waiting. */
  forget(endpointIds: Iterable<string>): void {
    for (const id of endpointIds) if (this.queuedOf(id) === 0) this.paces.delete(id);
  }

  /** Stops every timer and returns the attempts still waiting, unstarted (graceful stop). */
  drop(): Claimed[] {
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
    this.wakeTimer = undefined;
    const dropped: Claimed[] = [];
    for (const p of this.paces.values()) {
      if (p.timer) clearTimeout(p.timer);
      p.timer = undefined;
      for (const q of p.queue.splice(0)) dropped.push(q.c);
    }
    this.waiting = 0;
    this.blocked.clear();
    return dropped;
  }
}
