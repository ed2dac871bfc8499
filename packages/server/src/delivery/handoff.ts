import type { Claimed } from "./claim.js";

/**
 * A dispatcher that takes new deliveries straight from the transaction that made them, already
 * leased, instead of finding them again with a claim (Dispatcher implements it).
 */
export interface HandoffTarget {
  /** Holds one attempt slot for `endpointId`, or says no (full, stopping, endpoint at its cap). */
  reserve(endpointId: string): boolean;
  /** Gives back slots held for deliveries that will not be handed over (rolled back). */
  cancel(endpointIds: readonly string[]): void;
  /** Takes committed, leased deliveries over; each uses one slot reserved for its endpoint. */
  adopt(claimed: readonly Claimed[]): void;
}

/**
 * The deliveries one API request's transaction leased for this process's dispatcher. A delivery
 * is leased in the INSERT that creates it (claim token 1, `next_attempt_at` at the lease's end) only
 * when the dispatcher has a slot for it and it is not parked behind an earlier delivery of its
 * chain; the rest wait for a claim as before. Handing over saves each such delivery a claim: an
 * UPDATE and its commit, and the reads of its payload and endpoint. If the process dies between
 * the commit and the attempt, the lease runs out and any worker claims the delivery: the same
 * as dying during an attempt.
 */
export class Handoff {
  private reserved: string[] = [];
  private taken: Claimed[] = [];
  /** Some delivery due now was not handed over: the dispatcher has to claim it. */
  needsClaim = false;

  constructor(
    private readonly target: HandoffTarget,
    readonly leaseMs: number,
  ) {}

  /** Asks for a slot; on yes the caller leases the delivery and calls `took` with it. */
  reserve(endpointId: string): boolean {
    if (!this.target.reserve(endpointId)) {
      this.needsClaim = true;
      return false;
    }
    this.reserved.push(endpointId);
    return true;
  }

  took(claimed: Claimed): void {
    this.taken.push(claimed);
  }

  /** The transaction rolled back or is run again: nothing it leased exists. */
  cancel(): void {
    this.target.cancel(this.reserved);
    this.reserved = [];
    this.taken = [];
    this.needsClaim = false;
  }

  /** The transaction committed: the dispatcher attempts what it leased. */
  commit(): void {
    const taken = this.taken;
    this.reserved = [];
    this.taken = [];
    this.target.adopt(taken);
  }
}

const byTransaction = new WeakMap<object, Handoff>();

/** Makes deliveries created in `trx` go to `handoff` (see Handoff). */
export function handOffIn(trx: object, handoff: Handoff): void {
  byTransaction.set(trx, handoff);
}

/** The hand-off of the transaction, if its deliveries go straight to this process's dispatcher. */
export function handoffOf(trx: object): Handoff | undefined {
  return byTransaction.get(trx);
}
