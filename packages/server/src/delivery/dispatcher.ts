import { type AppContext, announceEndpointChange } from "../api/context.js";
import { previousSecrets } from "../endpoints/secrets.js";
import { logBackgroundFailure } from "../log.js";
import {
  attemptSeconds,
  attemptsTotal,
  claimErrors,
  deliveriesFinished,
  endpointsDisabled,
  inflightGauge,
  statusClass,
} from "../metrics.js";
import { inListOf, listValue } from "../storage/lists.js";
import { isRefusedContent } from "../storage/store.js";
import { memo } from "../util/memo.js";
import { type Claimed, claimDue, dueHead, releaseLeases, releaseOrphans, selectEndpoints } from "./claim.js";
import { completeBatch, type Outcome } from "./complete.js";
import { Pacer } from "./pacer.js";
import { parseRetryAfter } from "./schedule.js";
import { type AttemptSender, Sender } from "./send.js";
import { ThreadSender } from "./send-thread.js";
import { attemptHeaders, secretKey } from "./sign.js";

export interface DispatcherOptions {
  /** Attempts in flight at once in this process. */
  concurrency: number;
  /** In-flight attempts one endpoint may hold, so a slow endpoint cannot take every slot. */
  perEndpoint: number;
  /** The same for an endpoint whose last attempt failed, until one succeeds again. */
  perFailingEndpoint: number;
  /**
   * What a failing endpoint whose last attempt timed out (it hangs) may hold while the process has
   * slots to spare (`spareForFailing`), so that its retries keep to their schedule.
   */
  perHangingEndpoint: number;
  /**
   * What failing endpoints hold together at most (`sitsOut`); they get more than
   * `perFailingEndpoint` each only while they hold fewer slots than this together.
   */
  failingShare: number;
  /** What endpoints with no finished attempt yet in this process hold together at most. */
  newShare: number;
  /**
   * How long the other endpoints must have held fewer than half of the slots at every turn before
   * anything is lent: a drain frees slots in batches and takes them again at once, and lending in
   * those gaps took 6-19 % of the healthy endpoints' throughput beside a dead one (bench: isolation).
   */
  quietMs: number;
  /**
   * The same for an endpoint none of whose attempts has finished yet in this process: until its
   * first answer says whether it is healthy, it is not given a healthy endpoint's slots.
   */
  perNewEndpoint: number;
  /**
   * An attempt that took this long (and succeeded) makes its endpoint slow until a faster one:
   * a slow endpoint holds at most its fair share of the slots (`capOf`).
   */
  slowAttemptMs: number;
  /** The least a slow endpoint's fair share comes to, however many endpoints are in flight. */
  minSlowShare: number;
  /** Deliveries claimed per query. */
  batchSize: number;
  /** How often to look for due work when nothing wakes the dispatcher (retries coming due). */
  pollMs: number;
  /** How often the ordering safety net runs. */
  sweepMs: number;
  /** How long a claim floor (`ClaimFloor`) is trusted before it is looked up again. */
  floorMs: number;
  /**
   * How far before the floor a lookup starts when it can build on the floor, and how often one
   * starts from the front all the same (`floorPlan`).
   */
  floorSlackMs: number;
  fullFloorMs: number;
}

export const defaultDispatcherOptions: DispatcherOptions = {
  concurrency: 256,
  perEndpoint: 64,
  // Few, so that many endpoints down at once still leave the slots to those that answer: at 8
  // each, 32 failing endpoints held all 256, and 4 new ones that never answered held them for a
  // whole delivery timeout (delivery audit: a healthy endpoint's events waited 8-29 s behind
  // 5-40 dead endpoints). 128 failing or 32 new endpoints filled them; now the groups have shares too.
  perFailingEndpoint: 2,
  // ...but 2 slots against an endpoint that hangs are 2 attempts per delivery timeout, which falls
  // behind the retry schedule once it has more than 8 calls a minute to retry (crash campaign: 280
  // attempts at a 1.5 s timeout took 218 s). While the slots are mostly idle it may have more.
  perHangingEndpoint: 16,
  failingShare: 64,
  quietMs: 2_000,
  perNewEndpoint: 8,
  newShare: 64,
  minSlowShare: 8,
  slowAttemptMs: 1_000,
  batchSize: 256,
  pollMs: 250,
  sweepMs: 30_000,
  floorMs: 1_000,
  floorSlackMs: 10_000,
  fullFloorMs: 60_000,
};

/** A claimed delivery that waits for a start time: its endpoint has a rate limit and still takes events. */
function isPaced(c: Claimed): boolean {
  const ep = c.endpoint;
  return ep !== undefined && ep.rate_limit !== null && ep.deleted_at === null && ep.disabled === 0;
}

/** How many endpoints `Dispatcher.known` remembers. */
const KNOWN_ENDPOINTS = 50_000;
/** Retries a dispatcher wakes up for itself (`wakeForRetries`); later ones wait for the poll. */
const RETRY_WAKES = 1_024;
/** The longest delay `setTimeout` takes (about 24.8 days); a later retry re-arms when it fires. */
const TIMER_MAX_MS = 2_147_483_647;

// The headers the attempt log keeps as sent: our own. A custom header's value is kept as
// `[redacted]`, whatever its name: receivers put credentials in them (`X-Partner-Sig`), and the
// endpoint itself shows them to its account.
const OWN_HEADERS = new Set([
  "content-type",
  "user-agent",
  "webhook-id",
  "webhook-timestamp",
  "webhook-signature",
]);

/**
 * Claims that leave all of `excluded` out start at `value`: when it was looked up (`at`), every due
 * delivery before it belonged to one of them (claim.ts, `dueHead`). Rows come due after that only
 * at "now" or later (retries, handed-back leases), and claims only take rows away, so it stays good,
 * except against new work, stamped when its request ran (and committed maybe a little later): new
 * work makes it stale (`Dispatcher.wake`), as does `floorMs` passing, and it is looked up again.
 * A claim that serves one of `excluded` starts from the front.
 */
export interface ClaimFloor {
  value: number;
  at: number;
  excluded: ReadonlySet<string>;
  /** When a lookup last started from the front rather than from an earlier floor. */
  fullAt: number;
}

/** Where a claim that leaves endpoints out starts, with the floor as it is. */
export type FloorPlan =
  /** No failing endpoint is left out: from the front, as always. */
  | { kind: "none" }
  /**
   * Look the floor up again, leaving out these failing endpoints, from `from` (0: from the front),
   * and claim from it.
   */
  | { kind: "lookup"; failing: string[]; from: number }
  /** Claim from the floor. */
  | { kind: "use"; from: number }
  /** One of the floor's endpoints is served this time: from the front; the floor stays good. */
  | { kind: "front" };

/** What the dispatcher's two loops are called in `/healthz`'s answer (health.ts). */
const CLAIMS = "dispatcher";
const RECORDING = "recording of outcomes";

/**
 * Decides a claim's start (pure, for tests). Only failing endpoints count for the floor: healthy
 * ones near their cap come and go from one claim to the next, and looking the floor up again each
 * time cost what it saved (bench: a dead endpoint's backlog stepped over by every lookup).
 *
 * A lookup builds on the floor it replaces while that floor's endpoints are all still left out:
 * the rows before it were theirs, and work that came since is stamped at most `floorSlackMs`
 * before it showed (its request's time), so the lookup starts that far before the old floor
 * instead of stepping over the whole backlog of a dead endpoint (a million rows after a day of
 * timeouts: ~135 ms a lookup, one per announced event). Every `fullFloorMs` one starts from the
 * front all the same, for work stamped by a slower transaction or another host's clock.
 */
export function floorPlan(
  floor: ClaimFloor | undefined,
  saturated: readonly string[],
  failing: ReadonlySet<string>,
  now: number,
  o: Pick<DispatcherOptions, "floorMs" | "floorSlackMs" | "fullFloorMs">,
): FloorPlan {
  const left = saturated.filter((id) => failing.has(id));
  if (left.length === 0) return { kind: "none" };
  if (!floor || now - floor.at >= o.floorMs) {
    // A set: with thousands of failing endpoints left out, a list's `includes` made this quadratic
    // (review: 10,000 of them, 483 ms a claim).
    const leftSet = new Set(left);
    const builds =
      floor !== undefined &&
      now - floor.fullAt < o.fullFloorMs &&
      [...floor.excluded].every((id) => leftSet.has(id));
    return { kind: "lookup", failing: left, from: builds ? Math.max(0, floor.value - o.floorSlackMs) : 0 };
  }
  const out = new Set(saturated);
  return [...floor.excluded].every((id) => out.has(id))
    ? { kind: "use", from: floor.value }
    : { kind: "front" };
}

/**
 * How many more slots failing endpoints may take together in this turn beyond the
 * `perFailingEndpoint` each always has (pure, for tests): none while the other endpoints hold half
 * of the slots or more, so an endpoint that hangs borrows only what nobody is using; otherwise what
 * is left of `failingShare` after what the failing endpoints hold already. Every attempt a failing
 * endpoint starts spends one. A slot lent out is held for at most a delivery timeout.
 */
export function spareForFailing(
  perEndpoint: ReadonlyMap<string, number>,
  failing: ReadonlySet<string>,
  inflight: number,
  o: Pick<DispatcherOptions, "concurrency" | "failingShare">,
): { spare: number; busy: boolean; held: number } {
  let held = 0;
  for (const [id, n] of perEndpoint) if (failing.has(id)) held += n;
  if (inflight - held >= o.concurrency / 2) return { spare: 0, busy: true, held };
  return { spare: Math.max(0, o.failingShare - held), busy: false, held };
}

/**
 * Whether a group of endpoints (the failing ones, the new ones) sits out the claim together:
 * once they hold more than three quarters of their `share` between them, until a
 * quarter of it is free again, as one endpoint near its cap sits out. Each failing endpoint has
 * `perFailingEndpoint` slots and each new one `perNewEndpoint`, but 128 failing or 32 new endpoints
 * had all 256 (delivery audit: 150 endpoints of one account that never answered held every slot,
 * and another account's healthy endpoint got nothing for over a minute).
 */
function sitsOut(held: number, share: number): boolean {
  return held > share - Math.ceil(share / 4);
}

/**
 * The dispatcher: claims due deliveries in batches, sends them concurrently over keep-alive
 * pools, and records outcomes in batches. It wakes at once when the API commits new work (or a
 * completion releases the next delivery of a call) and polls as the safety net.
 */
export class Dispatcher {
  private readonly opts: DispatcherOptions;
  private readonly sender: AttemptSender;
  private running = false;
  private loopDone: Promise<void> = Promise.resolve();
  private dirty = true;
  private wakeUp: (() => void) | undefined;
  /**
   * Retries this process scheduled, earliest first (at most RETRY_WAKES of them): the loop is woken
   * for each when it comes due, so it is sent on time rather than at the next poll, which added up
   * to `pollMs` to every retry's delay (past the top of its ±20 % band).
   */
  private dueRetries: Array<{ at: number; endpointId: string }> = [];
  private retryTimer: NodeJS.Timeout | undefined;
  private retryTimerAt = Number.POSITIVE_INFINITY;
  /** Ends the wait for the sender thread before the loop's first turn (`start`). */
  private endWarmUp: (() => void) | undefined;
  private wakeQueued = false;
  private inflight = new Map<string, Claimed>();
  private perEndpoint = new Map<string, number>();
  /** Endpoints whose last attempt in this process failed: they get `perFailingEndpoint` slots. */
  private failing = new Set<string>();
  /** Endpoints whose last attempt in this process took `slowAttemptMs` or longer. */
  private slow = new Set<string>();
  /** Failing endpoints whose last attempt in this process timed out: they may borrow slots. */
  private hanging = new Set<string>();
  /** Slots failing endpoints may still borrow in this turn of the loop (`spareForFailing`). */
  private spare = 0;
  /** When the other endpoints last held half of the slots or more (`quietMs`). */
  private busyAt = Number.NEGATIVE_INFINITY;
  /**
   * Endpoints with a finished attempt in this process, most recent last; the oldest are forgotten
   * past `KNOWN_ENDPOINTS` (one forgotten is new again until its next answer, within the new endpoints' share).
   */
  private known = new Map<string, true>();
  /**
   * While failing (new) endpoints hold their share, the ones of them a claim brought and handed
   * back: with those holding slots, the ones to leave out (not every failing endpoint the process
   * knows of, which may be thousands with nothing due). Emptied once the group has room again.
   */
  private failingSeen = new Set<string>();
  private newSeen = new Set<string>();
  /** What new endpoints held at this turn's start: past half of `newShare`, one slot each. */
  private newHeld = 0;
  private buffer: Outcome[] = [];
  /**
   * The endpoints that may have due deliveries; undefined: any may. A claim that found fewer
   * deliveries than it asked for took every due one of the endpoints it served, so only those it
   * left out (near their cap, or handed back as excess) may have more. Released deliveries add
   * their endpoints; new work announced (a commit, the sweep) or the poll makes it undefined again.
   * While it is known, a claim asks for no more than these endpoints' free slots (`claimRoom`),
   * and none at all while they are all near their cap: a larger claim would take a batch of one
   * endpoint's backlog and hand back all but the few that fit, and the claim after it, leaving that
   * endpoint out, would step over its whole backlog to find nothing (bench: one endpoint's backlog
   * was claimed 6.5 times over).
   */
  private mayHaveDue: Set<string> | undefined;
  /** When `mayHaveDue` was last learned: it is forgotten after `pollMs`, as retries come due. */
  private mayHaveDueAt = 0;
  /** Where claims that leave failing endpoints out start (`ClaimFloor`). */
  private floor: ClaimFloor | undefined;
  private flushing: Promise<void> | undefined;
  /** Rate-limited endpoints' attempts waiting for their start times (pacer.ts). */
  private readonly pacer: Pacer;
  /** Outcomes whose write failed in a way that may have committed (see completeBatch). */
  private readonly uncertain = new WeakSet<Outcome>();
  private sweepTimer: NodeJS.Timeout | undefined;
  private readonly onWork = (message?: string) => {
    if (message?.startsWith("endpoint:")) this.onEndpointChange(message.slice("endpoint:".length));
    else this.wake();
  };
  /**
   * Endpoints changed since they were claimed, and when: through the API, or disabled by a
   * dispatcher (announceEndpointChange). Read again before use.
   */
  private readonly changedEndpoints = new Map<string, number>();
  /** The reading of a changed endpoint after its change, shared by every attempt that needs it. */
  private readonly rereads = new Map<string, { at: number; row: Promise<Claimed["endpoint"]> }>();
  private readonly onEndpointChange = (id: string) => {
    this.changedEndpoints.set(id, this.ctx.clock.now());
  };
  /** An endpoint's secret key bytes and custom headers, worked out once per distinct text. */
  private readonly keyOf = memo(secretKey);
  private readonly customHeaders = memo((json) => JSON.parse(json) as Record<string, string>);

  constructor(
    private ctx: AppContext,
    opts: Partial<DispatcherOptions> = {},
  ) {
    this.opts = { ...defaultDispatcherOptions, ...opts };
    const sender = {
      dev: ctx.config.dev,
      timeoutMs: ctx.config.deliveryTimeoutMs,
      // As many connections to one origin as attempts in flight: endpoints that share a host
      // (several paths of one receiver service) must not queue behind each other's slow answers
      // for a connection. What one endpoint holds is bounded by its slots (`capOf`).
      connectionsPerOrigin: this.opts.concurrency,
    };
    this.sender = ctx.config.senderThread ? new ThreadSender(sender) : new Sender(sender);
    this.pacer = new Pacer(ctx.store, {
      now: () => this.ctx.clock.now(),
      launch: (c) => this.begin(c),
      handBack: (claims, dueAt) =>
        releaseLeases(this.ctx.store, claims, this.ctx.clock.now(), dueAt).catch((err) =>
          this.ctx.log.warn(
            { err },
            "could not hand back claims over a rate limit; their leases expire on their own",
          ),
        ),
      wake: (endpoints) => this.wake(true, endpoints),
      startWithinMs: ctx.config.leaseMs - ctx.config.deliveryTimeoutMs,
      hasSlot: () => this.inflight.size < this.opts.concurrency,
    });
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.ctx.work.on("work", this.onWork);
    this.ctx.work.on("endpoint", this.onEndpointChange);
    this.ctx.store.onWork(this.onWork);
    this.sweepTimer = setInterval(() => {
      this.forgetGoneEndpoints().catch((err) =>
        logBackgroundFailure(this.ctx.log, {}, "failing-endpoint sweep failed", err),
      );
      // A change older than any lease concerns no claim still held.
      const before = this.ctx.clock.now() - this.ctx.config.leaseMs;
      for (const [id, at] of this.changedEndpoints)
        if (at < before) {
          this.changedEndpoints.delete(id);
          this.rereads.delete(id);
        }
      releaseOrphans(this.ctx.store, this.ctx.clock.now())
        .then((n) => {
          if (n > 0) {
            this.ctx.log.warn({ released: n }, "released parked deliveries with no earlier pending delivery");
            this.wake();
          }
        })
        .catch((err) => logBackgroundFailure(this.ctx.log, {}, "ordering sweep failed", err));
    }, this.opts.sweepMs);
    this.sweepTimer.unref();
    // The sender thread comes up first (for up to 2 s): started by the first attempts, it would
    // take them all at once when it is ready, and paced attempts would reach their endpoint in a burst.
    // A stop meanwhile ends the wait: the timer is unref'd, so nothing else would, and a process
    // stopped in its first seconds ran out of work and exited half-way through its shutdown.
    const warm = this.sender.warm?.();
    const stopped = new Promise<void>((r) => {
      this.endWarmUp = r;
    });
    this.loopDone = (
      warm
        ? Promise.race([warm, stopped, new Promise((r) => setTimeout(r, 2_000).unref())])
        : Promise.resolve()
    )
      .catch(() => {})
      .then(() => this.loop());
  }

  /**
   * `newWork` false: only slots were freed (an attempt settled), no delivery became due. With
   * `endpoints`, the new work is theirs only (deliveries released by completions).
   */
  wake(newWork = true, endpoints?: Iterable<string>): void {
    if (newWork) {
      if (endpoints && this.mayHaveDue) for (const id of endpoints) this.mayHaveDue.add(id);
      else this.mayHaveDue = undefined;
      // Looked up again before its next use, from a little before where it is (`floorPlan`).
      if (this.floor) this.floor = { ...this.floor, at: Number.NEGATIVE_INFINITY };
    }
    this.dirty = true;
    if (this.wakeQueued || !this.wakeUp) return;
    // Resume a sleeping loop after the current I/O phase, not at once: every commit and every
    // completion that lands in the same turn then shares one claim query. Under load this turns
    // one claim per event into one per turn; idle, it costs nothing (the next turn is immediate).
    this.wakeQueued = true;
    setImmediate(() => {
      this.wakeQueued = false;
      const w = this.wakeUp;
      this.wakeUp = undefined;
      w?.();
    });
  }

  /** Notes retries that come due later, and arms the timer for the earliest. */
  private wakeForRetries(retries: ReadonlyArray<{ at: number; endpointId: string }>): void {
    if (!this.running) return;
    this.dueRetries.push(...retries);
    this.dueRetries.sort((a, b) => a.at - b.at);
    // Beyond these the poll finds them, as before.
    if (this.dueRetries.length > RETRY_WAKES) this.dueRetries.length = RETRY_WAKES;
    this.armRetryTimer();
  }

  private armRetryTimer(): void {
    const next = this.dueRetries[0];
    if (!next || !this.running) return;
    if (this.retryTimer && this.retryTimerAt <= next.at) return;
    clearTimeout(this.retryTimer);
    this.retryTimerAt = next.at;
    // A couple of ms past the time: a timer may fire a little before Date.now() reaches it.
    const delay = Math.min(Math.max(0, next.at - this.ctx.clock.now()) + 2, TIMER_MAX_MS);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.retryTimerAt = Number.POSITIVE_INFINITY;
      const now = this.ctx.clock.now();
      let n = 0;
      // Only those due now: one woken for a few ms early would be claimed before it is due and
      // then wait for the poll. The timer runs a couple of ms late, so its own retry is due.
      while (n < this.dueRetries.length && this.dueRetries[n]!.at <= now) n++;
      const due = this.dueRetries.splice(0, n);
      if (due.length > 0) this.wake(true, new Set(due.map((d) => d.endpointId)));
      this.armRetryTimer();
    }, delay);
    this.retryTimer.unref();
  }

  /** Attempts currently in flight (for metrics and tests). */
  get inFlight(): number {
    return this.inflight.size;
  }

  /** Endpoints held to `perFailingEndpoint` slots (for tests). */
  get failingEndpoints(): number {
    return this.failing.size;
  }

  /**
   * Forgets failing and slow endpoints that were deleted or disabled since: no attempt of theirs
   * will ever take them out of `failing` or `slow`, which would otherwise grow for as long as the
   * process runs.
   */
  private async forgetGoneEndpoints(): Promise<void> {
    const paced = [...this.pacer.endpoints()];
    if (this.failing.size === 0 && this.slow.size === 0 && paced.length === 0) return;
    const ids = [...new Set([...this.failing, ...this.slow, ...paced])];
    const { db, caps } = this.ctx.store;
    const live = await db
      .selectFrom("endpoints")
      .select("id")
      .where(inListOf(caps, "id", listValue(caps, ids), "text"))
      .where("deleted_at", "is", null)
      .where("disabled", "=", 0)
      .execute();
    const keep = new Set(live.map((e) => e.id));
    for (const id of ids)
      if (!keep.has(id)) {
        this.failingSeen.delete(id);
        this.failing.delete(id);
        this.slow.delete(id);
        this.hanging.delete(id);
        // Its attempts already waiting (a second's worth at most) are settled by `run`, which reads
        // an endpoint announced as changed (announceEndpointChange) again before an attempt.
        this.pacer.forget([id]);
      }
  }

  /**
   * Graceful stop: claims nothing more, lets in-flight attempts finish for up to `graceMs`, records
   * them, then hands any still running back to the queue so another worker takes them at once.
   */
  async stop(graceMs = 10_000): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.ctx.work.off("work", this.onWork);
    this.ctx.work.off("endpoint", this.onEndpointChange);
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    clearTimeout(this.retryTimer);
    this.dueRetries = [];
    this.endWarmUp?.();
    this.wake();
    await this.loopDone;
    // Attempts still waiting for their start time are handed back unstarted.
    await releaseLeases(this.ctx.store, this.pacer.drop(), this.ctx.clock.now()).catch((err) =>
      this.ctx.log.warn({ err }, "could not release leases; they expire on their own"),
    );
    const deadline = Date.now() + graceMs;
    while (this.inflight.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    if (this.flushing) await this.flushing;
    if (this.buffer.length > 0) await this.flush();
    if (this.inflight.size > 0) {
      const held = [...this.inflight.values()];
      await releaseLeases(this.ctx.store, held, this.ctx.clock.now()).catch((err) =>
        this.ctx.log.warn({ err }, "could not release leases; they expire on their own"),
      );
    }
    await this.sender.close().catch(() => {});
  }

  private async loop(): Promise<void> {
    while (this.running) {
      const free = this.opts.concurrency - this.inflight.size;
      if (free <= 0 || !this.dirty) {
        // Every slot busy: wait for settle() to wake us. Leaving `dirty` set here would make
        // sleep() resolve at once, a microtask loop that starves the event loop (no I/O, no signals).
        if (free <= 0) this.dirty = false;
        await this.sleep(this.opts.pollMs);
        if (free > 0) this.dirty = true;
        continue;
      }
      this.dirty = false;
      const lend = spareForFailing(this.perEndpoint, this.failing, this.inflight.size, this.opts);
      const now = this.ctx.clock.now();
      if (lend.busy) this.busyAt = now;
      this.spare = now - this.busyAt >= this.opts.quietMs ? lend.spare : 0;
      // An endpoint close to its cap sits out the claim until a quarter of its slots are free.
      // Its due rows are usually the oldest (a slow or dead endpoint's backlog), so a claim that
      // includes it takes a whole batch of them and hands back all but the few that fit: with
      // one free slot as the threshold, every settled attempt of a dead endpoint cost a claim
      // and a hand-back of ~250 rows (bench: latency of healthy endpoints beside a dead one).
      const holding =
        this.pacer.size === 0
          ? this.perEndpoint.keys()
          : new Set([...this.perEndpoint.keys(), ...this.pacer.endpoints()]);
      const saturated = [...holding].filter((id) => {
        const cap = this.capOf(id);
        return this.heldBy(id) > cap - Math.ceil(cap / 4);
      });
      // A rate-limited endpoint sits out until a grant can give it a start time again (and all of
      // them while as many attempts wait as the process has slots); like a failing one, its
      // backlog is stepped over from the claim floor (`claim`).
      const pacedOut =
        this.pacer.queued >= this.opts.concurrency ? [...this.pacer.endpoints()] : this.pacer.leftOut(now);
      for (const id of pacedOut) if (!saturated.includes(id)) saturated.push(id);
      // Failing endpoints together hold at most `failingShare`, new ones `newShare`: past three
      // quarters of it the group sits out, its endpoints in flight and those a claim brought and
      // handed back meanwhile (`failingSeen`, `newSeen`; their backlogs are stepped over from the
      // claim floor, `claim`). One no claim brought yet cannot be named: the first claim that
      // brings it hands its deliveries back (below), and it is left out from then on.
      let newHeld = 0;
      for (const [id, n] of this.perEndpoint) if (!this.known.has(id)) newHeld += n;
      this.newHeld = newHeld;
      const failingOut = sitsOut(lend.held, this.opts.failingShare);
      const newOut = sitsOut(newHeld, this.opts.newShare);
      if (!failingOut) this.failingSeen.clear();
      if (!newOut) this.newSeen.clear();
      if (failingOut || newOut) {
        const out = new Set(saturated);
        const leave = (id: string) => {
          if (!out.has(id)) {
            out.add(id);
            saturated.push(id);
          }
        };
        for (const id of this.perEndpoint.keys())
          if (this.failing.has(id) ? failingOut : newOut && !this.known.has(id)) leave(id);
        if (failingOut) for (const id of this.failingSeen) leave(id);
        if (newOut) for (const id of this.newSeen) leave(id);
      }
      // Retries come due with time, unannounced. The poll's timer forgets the set, but only when
      // nothing wakes the loop for `pollMs`, and a busy endpoint's completions wake it all the
      // time: without this, an endpoint's retry could wait behind another's whole backlog.
      if (this.mayHaveDue && this.ctx.clock.now() - this.mayHaveDueAt >= this.opts.pollMs) {
        this.mayHaveDue = undefined;
      }
      const want = Math.min(free, this.opts.batchSize, this.claimRoom(new Set(saturated)));
      // Every endpoint that may have due work sits out: wait for news.
      if (want <= 0) continue;
      let claimed: Claimed[];
      const answered = this.ctx.health?.begin(CLAIMS);
      try {
        claimed = await this.claim(want, saturated);
        answered?.();
        this.ctx.health?.succeeded(CLAIMS);
      } catch (err) {
        answered?.();
        claimErrors.inc();
        this.ctx.health?.failed(CLAIMS, err);
        logBackgroundFailure(this.ctx.log, {}, "claim failed", err);
        await this.sleep(Math.max(this.opts.pollMs, 500));
        this.dirty = true;
        continue;
      }
      // One batch can hold more of an endpoint's deliveries than its share of the slots (the
      // exclusion above only covers endpoints already at their cap). Those are handed back at once,
      // so a slow or dead endpoint never holds more than its cap of this process's slots.
      const excess: Claimed[] = [];
      const paced = new Map<string, Claimed[]>();
      // And failing or new endpoints together no more than their share, whatever one batch brought.
      let failingRoom = this.opts.failingShare - lend.held;
      let newRoom = this.opts.newShare - newHeld;
      for (const c of claimed) {
        const later = paced.get(c.endpointId);
        const failing = this.failing.has(c.endpointId);
        const isNew = !this.known.has(c.endpointId);
        const groupFull = failing ? failingRoom <= 0 : isNew && newRoom <= 0;
        if (groupFull) (failing ? this.failingSeen : this.newSeen).add(c.endpointId);
        if (groupFull || this.heldBy(c.endpointId) + (later?.length ?? 0) >= this.capOf(c.endpointId)) {
          excess.push(c);
          continue;
        }
        if (failing) failingRoom--;
        else if (isNew) newRoom--;
        if (isPaced(c)) {
          if (later) later.push(c);
          else paced.set(c.endpointId, [c]);
        } else this.begin(c);
      }
      if (excess.length > 0) {
        await releaseLeases(this.ctx.store, excess, this.ctx.clock.now()).catch((err) =>
          this.ctx.log.warn({ err }, "could not hand back excess claims; their leases expire on their own"),
        );
      }
      if (paced.size > 0) {
        try {
          const { unlimited, handedBack } = await this.pacer.take(paced, now);
          for (const c of unlimited) this.begin(c);
          excess.push(...handedBack);
        } catch (err) {
          const all = [...paced.values()].flat();
          logBackgroundFailure(this.ctx.log, { deliveries: all.length }, "rate limit grant failed", err);
          await releaseLeases(this.ctx.store, all, this.ctx.clock.now()).catch(() => {});
          excess.push(...all);
          // As after a failed claim: not at once again.
          await this.sleep(Math.max(this.opts.pollMs, 500));
          this.dirty = true;
        }
      }
      // A full batch means more may be waiting: claim again at once. A short one took every due
      // delivery of the endpoints it could serve.
      if (claimed.length === want) {
        this.dirty = true;
        if (this.mayHaveDue) for (const c of excess) this.mayHaveDue.add(c.endpointId);
      } else {
        this.mayHaveDue = new Set([...saturated, ...excess.map((c) => c.endpointId)]);
        this.mayHaveDueAt = this.ctx.clock.now();
      }
    }
  }

  /**
   * One claim of up to `want` due deliveries of endpoints not in `saturated`. When failing endpoints
   * are left out it starts at the floor (`floorPlan`): without one, a dead endpoint's backlog at the
   * front of the due order would be stepped over by every claim, at a cost growing with that backlog
   * (bench: isolation).
   */
  private async claim(want: number, saturated: string[]): Promise<Claimed[]> {
    const now = this.ctx.clock.now();
    const opts = { now, limit: want, leaseMs: this.ctx.config.leaseMs, exclude: saturated };
    // Rate-limited endpoints, like failing ones, may have a backlog at the front of the due order.
    const behind =
      this.pacer.size > 0 || this.newSeen.size > 0
        ? new Set([...this.failing, ...this.pacer.endpoints(), ...this.newSeen])
        : this.failing;
    const plan = floorPlan(this.floor, saturated, behind, now, this.opts);
    if (plan.kind === "lookup") {
      const head = await dueHead(this.ctx.store, { now, exclude: plan.failing, from: plan.from });
      // With nothing due but the failing endpoints' deliveries, every other due row is still to
      // come, at `now` or later: the floor is `now`, and this claim would find nothing.
      this.floor = {
        value: head ?? now,
        at: now,
        excluded: new Set(plan.failing),
        fullAt: plan.from === 0 || !this.floor ? now : this.floor.fullAt,
      };
      if (head === undefined) return [];
      return claimDue(this.ctx.store, { ...opts, from: head });
    }
    return claimDue(this.ctx.store, plan.kind === "use" ? { ...opts, from: plan.from } : opts);
  }

  /**
   * The slots an endpoint may hold: `perEndpoint`, or for a slow one (its last attempt took
   * `slowAttemptMs` or more) its fair share when more endpoints are in flight. A failing one (its
   * last attempt failed: down, timing out, answering 5xx) gets few, so that while it fails it
   * holds a small share of the slots instead of a quarter of them, and healthy endpoints keep
   * their throughput; its first success gives it back its full share. One whose last attempt timed
   * out (it hangs) may have up to `perHangingEndpoint` while there are slots to spare, as many as
   * are left to lend (so a claim takes no more of its rows than it can start). One with no finished
   * attempt yet in this process gets `perNewEndpoint` until its first answer. A rate-limited one
   * no more than one grant can start (a horizon's worth, and one still waiting), so a claim does
   * not take a batch of its backlog only to hand it back. Its deliveries are still attempted as
   * slots free up, in order.
   */
  private capOf(endpointId: string): number {
    return this.pacer.capOf(endpointId, this.shareOf(endpointId));
  }

  /** What an endpoint holds in this process: attempts in flight and attempts waiting to start. */
  private heldBy(endpointId: string): number {
    return (this.perEndpoint.get(endpointId) ?? 0) + this.pacer.queuedOf(endpointId);
  }

  /** `capOf` before a rate limit. */
  private shareOf(endpointId: string): number {
    if (this.failing.has(endpointId)) {
      const base = this.opts.perFailingEndpoint;
      if (this.spare <= 0 || !this.hanging.has(endpointId)) return base;
      const held = this.perEndpoint.get(endpointId) ?? 0;
      return Math.min(Math.max(this.opts.perHangingEndpoint, base), Math.max(base, held + this.spare));
    }
    // Past half of their share together, one each: more new endpoints tried at once find out
    // sooner which of them answer (after a restart every endpoint is new).
    if (!this.known.has(endpointId))
      return this.newHeld >= this.opts.newShare / 2
        ? 1
        : Math.min(this.opts.perNewEndpoint, this.opts.perEndpoint);
    if (!this.slow.has(endpointId)) return this.opts.perEndpoint;
    // A fair share, so that endpoints that are slow but succeed (never failing, none at its cap)
    // cannot between them take every slot: the slots split between the endpoints in flight and
    // one more, which keeps a share free for an endpoint that has nothing in flight yet. Only for
    // slow endpoints: fast ones give their slots back within milliseconds, and capping them too
    // made every claim of a many-endpoint drain step over the rows of those sitting out
    // (SQLite drain: 13 % more CPU per delivery).
    const sharing = this.perEndpoint.size + (this.perEndpoint.has(endpointId) ? 1 : 2);
    const share = Math.floor(this.opts.concurrency / sharing);
    return Math.min(this.opts.perEndpoint, Math.max(this.opts.minSlowShare, share));
  }

  /**
   * The most deliveries a claim can start now (`mayHaveDue`): the free slots of the endpoints that
   * may have due work and are not left out. When any endpoint may, those of the endpoints in
   * flight plus one endpoint's share for the others: a full claim is followed by another at once,
   * so a smaller one only splits the work, while a larger one could take more of one endpoint's
   * backlog than fits.
   */
  private claimRoom(saturated: ReadonlySet<string>): number {
    const roomOf = (id: string) => Math.max(0, this.capOf(id) - this.heldBy(id));
    let room = this.mayHaveDue ? 0 : this.opts.perEndpoint;
    for (const id of this.mayHaveDue ?? this.perEndpoint.keys()) if (!saturated.has(id)) room += roomOf(id);
    return room;
  }

  private sleep(ms: number): Promise<void> {
    if (this.dirty || !this.running) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.wakeUp = undefined;
        this.dirty = true;
        this.mayHaveDue = undefined; // retries come due with time
        resolve();
      }, ms);
      this.wakeUp = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }

  /** Gives back the slots `hold` took. */
  private unhold(done: Claimed[]): void {
    for (const c of done) {
      this.inflight.delete(c.id);
      const n = (this.perEndpoint.get(c.endpointId) ?? 1) - 1;
      if (n <= 0) this.perEndpoint.delete(c.endpointId);
      else this.perEndpoint.set(c.endpointId, n);
    }
    inflightGauge.set(this.inflight.size);
    this.pacer.resume();
  }

  /** Takes a slot for a claimed delivery: it counts against the caps from now until it settles. */
  private hold(c: Claimed): void {
    if (this.failing.has(c.endpointId)) this.spare--;
    this.inflight.set(c.id, c);
    inflightGauge.set(this.inflight.size);
    this.perEndpoint.set(c.endpointId, (this.perEndpoint.get(c.endpointId) ?? 0) + 1);
  }

  /** Takes a slot for a claimed delivery and makes its attempt. */
  private begin(c: Claimed): void {
    this.hold(c);
    this.launch(c);
  }

  /** Makes the attempt of a delivery `hold` took a slot for. */
  private launch(c: Claimed): void {
    this.run(c).then(
      (o) => {
        if (o) return this.record(o);
        // Not attempted (its endpoint could not be read again): handed back, due at once; if the
        // database refuses that too, the lease runs out and the delivery is due then.
        this.settle([c]);
        releaseLeases(this.ctx.store, [c], this.ctx.clock.now()).catch(() => {});
      },
      (err) => {
        // A bug, not an endpoint failure: leave the lease to expire so the delivery is retried.
        this.ctx.log.error({ err, delivery: c.id }, "attempt crashed");
        this.settle([c]);
      },
    );
  }

  private async run(c: Claimed): Promise<Outcome | undefined> {
    // Changed since the claim read it (deleted, disabled, its secret rotated, its URL edited): as
    // it is now. An attempt already on its way when the change commits is not called back.
    const changedAt = this.changedEndpoints.get(c.endpointId);
    if (changedAt !== undefined && changedAt >= c.readAt) {
      try {
        c.endpoint = await this.endpointAfter(c.endpointId, changedAt);
      } catch (err) {
        // Not sent as the claim read it: that may be a secret rotated out or an endpoint deleted.
        this.ctx.log.warn({ err, endpoint: c.endpointId }, "could not read a changed endpoint again");
        return undefined;
      }
    }
    const now = this.ctx.clock.now();
    const ep = c.endpoint;
    if (!ep || ep.deleted_at !== null) {
      return {
        claimed: c,
        startedAt: now,
        url: "",
        requestHeaders: {},
        result: null,
        skipped: "endpoint_deleted",
      };
    }
    if (ep.disabled === 1) {
      return {
        claimed: c,
        startedAt: now,
        url: ep.url,
        requestHeaders: {},
        result: null,
        skipped: "endpoint_disabled",
      };
    }
    const keys = [this.keyOf(ep.secret)];
    for (const p of previousSecrets(ep, now)) keys.push(this.keyOf(p.secret));
    const headers = attemptHeaders({
      id: c.eventId,
      timestampSeconds: Math.floor(now / 1000),
      body: c.payload,
      keys,
      userAgent: `Klen-Webhooks/${this.ctx.version}`,
      custom: this.customHeaders(ep.headers),
    });
    const spacing =
      ep.rate_limit !== null && ep.rate_limit > 0
        ? { key: ep.id, intervalMs: 1000 / ep.rate_limit }
        : undefined;
    const result = await this.sender.send(ep.url, headers, c.payload, spacing);
    const logged: Record<string, string> = {};
    for (const [k, v] of Object.entries(headers)) logged[k] = OWN_HEADERS.has(k) ? v : "[redacted]";
    const outcome: Outcome = { claimed: c, startedAt: now, url: ep.url, requestHeaders: logged, result };
    if (result.statusCode === 429 || result.statusCode === 503) {
      const ra = parseRetryAfter(result.responseHeaders["retry-after"], now);
      if (ra !== undefined) outcome.retryAfterMs = ra;
    }
    return outcome;
  }

  private record(o: Outcome): void {
    if (o.result) {
      this.known.delete(o.claimed.endpointId);
      this.known.set(o.claimed.endpointId, true);
      this.newSeen.delete(o.claimed.endpointId);
      if (this.known.size > KNOWN_ENDPOINTS) this.known.delete(this.known.keys().next().value as string);
      if (o.result.error === null) this.failing.delete(o.claimed.endpointId);
      else this.failing.add(o.claimed.endpointId);
      if (o.result.durationMs >= this.opts.slowAttemptMs) this.slow.add(o.claimed.endpointId);
      else this.slow.delete(o.claimed.endpointId);
      if (o.result.error === "timeout") this.hanging.add(o.claimed.endpointId);
      else this.hanging.delete(o.claimed.endpointId);
      attemptsTotal.inc({
        outcome: o.result.error ?? "success",
        status_class: statusClass(o.result.statusCode),
      });
      attemptSeconds.observe(o.result.durationMs / 1000);
    }
    // One line per attempt at LOG_LEVEL=debug; the check keeps the object unbuilt otherwise.
    if (this.ctx.log.isLevelEnabled("debug"))
      this.ctx.log.debug(
        {
          delivery_id: o.claimed.id,
          event_id: o.claimed.eventId,
          endpoint_id: o.claimed.endpointId,
          attempt: o.claimed.attemptCount + (o.result ? 1 : 0),
          status_code: o.result?.statusCode ?? null,
          duration_ms: o.result?.durationMs ?? null,
          error: o.result ? o.result.error : (o.skipped ?? null),
        },
        o.result ? "attempt" : "settled without an attempt",
      );
    this.buffer.push(o);
    if (!this.flushing) this.flushing = this.flush();
  }

  /** Writes buffered outcomes; retries while the database is unreachable, holding the slots. */
  private async flush(): Promise<void> {
    // Let outcomes that finish in the same tick join the batch.
    await new Promise((r) => setImmediate(r));
    // After a batch the database refused for what it held (a value or a constraint: not for being
    // unreachable, read-only or busy, which every write would hit), its outcomes are written one
    // at a time, so one the database cannot take holds up only itself.
    let oneByOne = 0;
    while (this.buffer.length > 0) {
      const single = oneByOne > 0;
      const batch = this.buffer.splice(0, single ? 1 : 500);
      if (single) oneByOne--;
      const answered = this.ctx.health?.begin(RECORDING);
      try {
        const { released, disabled, succeeded, failed, retries } = await completeBatch(
          this.ctx.store,
          batch,
          {
            schedule: this.ctx.config.retrySchedule,
            disableAfterMs: this.ctx.config.disableAfterMs,
            random: Math.random,
          },
          this.ctx.clock.now(),
          { mayBeRecorded: batch.some((o) => this.uncertain.has(o)) },
        );
        answered?.();
        this.ctx.health?.succeeded(RECORDING);
        if (retries.length > 0) this.wakeForRetries(retries);
        if (succeeded > 0) deliveriesFinished.inc({ status: "succeeded", reason: "" }, succeeded);
        for (const [reason, n] of Object.entries(failed))
          deliveriesFinished.inc({ status: "failed", reason }, n);
        for (const d of disabled) {
          endpointsDisabled.inc({ reason: d.cause });
          this.ctx.log.warn({ endpoint_id: d.id, reason: d.reason }, "endpoint disabled");
          // Attempts of it other workers hold are settled, not sent (as after a PATCH).
          void announceEndpointChange(this.ctx, d.id).catch(() => {});
        }
        this.settle(
          batch.map((o) => o.claimed),
          released > 0,
        );
      } catch (err) {
        answered?.();
        if (!single && batch.length > 1 && isRefusedContent(err)) {
          this.ctx.log.warn(
            { err, outcomes: batch.length },
            "recording outcomes failed; writing them one by one",
          );
          this.buffer.unshift(...batch);
          oneByOne = batch.length;
          continue;
        }
        if (single && oneByOne > 0 && isRefusedContent(err)) {
          // The rest of the refused batch goes first; this one is tried again after them.
          this.buffer.splice(oneByOne, 0, ...batch);
          continue;
        }
        this.ctx.health?.failed(RECORDING, err);
        logBackgroundFailure(this.ctx.log, { outcomes: batch.length }, "recording outcomes failed", err);
        // The connection may have broken after the commit went through: written again, they are
        // checked against the attempt log first.
        for (const o of batch) this.uncertain.add(o);
        this.buffer.unshift(...batch);
        await new Promise((r) => setTimeout(r, 500));
        // Past the lease another worker may have taken them: drop what cannot be recorded safely.
        const leaseEnd = this.ctx.clock.now() - this.ctx.config.leaseMs;
        const stale = this.buffer.filter((o) => o.startedAt < leaseEnd);
        if (stale.length > 0) {
          this.buffer = this.buffer.filter((o) => o.startedAt >= leaseEnd);
          this.settle(stale.map((o) => o.claimed));
        }
      }
    }
    // Nothing left to record (written, or given up as stale to the lease's expiry): no longer
    // failing, though no batch succeeded since.
    this.ctx.health?.succeeded(RECORDING);
    this.flushing = undefined;
  }

  /** The endpoint as read after its change announced at `changedAt` (one read for all who ask). */
  private endpointAfter(id: string, changedAt: number): Promise<Claimed["endpoint"]> {
    const known = this.rereads.get(id);
    if (known?.at === changedAt) return known.row;
    const { db, caps } = this.ctx.store;
    const read = {
      at: changedAt,
      row: selectEndpoints(db, caps, { ids: listValue(caps, [id]) }).then((r) => r[0]),
    };
    this.rereads.set(id, read);
    // A failed read is not kept: the next attempt reads again.
    read.row.catch(() => {
      if (this.rereads.get(id) === read) this.rereads.delete(id);
    });
    return read.row;
  }

  /** Frees the slots of finished attempts; `released`: the completion made parked deliveries due. */
  private settle(done: Claimed[], released = false): void {
    this.unhold(done);
    this.wake(released, released ? done.map((c) => c.endpointId) : undefined);
  }
}
