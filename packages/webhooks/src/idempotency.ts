/**
 * Run a handler at most once per `webhook-id`.
 *
 * Klen delivers at least once: a retry after a timeout, a manual replay or a `recover` sends
 * the same event again with the same `webhook-id`. The helper claims the id in a store before
 * running the handler, marks it done after, and releases it when the handler throws so the
 * sender's next retry can run it again.
 */

import { brand, isBranded } from "./errors.js";

/** What `claim` found. */
export type ClaimResult =
  /** The caller holds the key now and must run the handler. */
  | "claimed"
  /** A handler already completed for this key. */
  | "done"
  /** Another worker holds an unexpired claim on this key. */
  | "pending";

/**
 * Where claims live. The in-memory store serves one process; implement this over SQL or
 * Redis (see the README) when several processes receive webhooks.
 *
 * Each run passes a `token` of its own (unique per run) to all three calls. A store that keeps it
 * with the claim and releases only a claim that still holds the same token stays correct when a
 * lease runs out mid-handler: the slow first run's failure then cannot free the claim of the run
 * that took over (which would let a third delivery run the handler beside it). Stores written
 * before the token (three calls without it) keep working as they did.
 */
export interface IdempotencyStore {
  /**
   * Atomically: if `key` is absent or its claim has expired, claim it for `leaseMs` (held by
   * `token`) and answer "claimed"; otherwise answer "done" or "pending".
   */
  claim(key: string, leaseMs: number, token: string): ClaimResult | Promise<ClaimResult>;
  /** Marks `key` done, remembered for `ttlMs` (the handler ran, whoever holds the claim now). */
  complete(key: string, ttlMs: number, token: string): void | Promise<void>;
  /**
   * Forgets the claim on `key`, so that it can be claimed again: only while the claim is still
   * pending and held by `token`.
   */
  release(key: string, token: string): void | Promise<void>;
}

/** Options of `createIdempotency`. */
export interface IdempotencyOptions {
  /** Default: a `MemoryIdempotencyStore`. */
  readonly store?: IdempotencyStore;
  /**
   * How long a key stays done. Default 7 days: longer than the sender's whole retry schedule
   * (about 28 hours) plus a manual replay a few days later.
   */
  readonly ttlMs?: number;
  /**
   * How long a claim may last before another worker may take over (a worker that crashed
   * mid-handler never completes nor releases). Default 5 minutes.
   */
  readonly leaseMs?: number;
  /** While another process holds the claim, how often to look again. Default 250 ms. */
  readonly pollIntervalMs?: number;
  /**
   * How long a duplicate waits for the run that holds its key (in this process or another) before
   * giving up with `IdempotencyTimeoutError`. Default 10 000: under Klen's 15 s delivery timeout,
   * so the duplicate's request is answered (5xx, retried later) before the sender gives up on it.
   */
  readonly waitTimeoutMs?: number;
}

/** What `run` reports. */
export type OnceResult<T> =
  /** This call ran the handler. */
  | { readonly duplicate: false; readonly value: T }
  /**
   * A handler already ran (or is running in this process: then `value` is its result). After
   * a completed run `value` is `undefined`: results are not stored, only the fact.
   */
  | { readonly duplicate: true; readonly value: T | undefined };

/**
 * Raised when another process holds a key for longer than `waitTimeoutMs`; answer 5xx so the
 * sender retries later.
 *
 * @example
 * ```ts
 * catch (err) { if (err instanceof IdempotencyTimeoutError) return res.sendStatus(503); }
 * ```
 */
export class IdempotencyTimeoutError extends Error {
  override readonly name = "IdempotencyTimeoutError";
  constructor(message: string) {
    super(message);
    brand(this, "IdempotencyTimeoutError");
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return isBranded(value, "IdempotencyTimeoutError");
  }
}

/** A once-per-key runner. */
export interface Idempotency {
  /**
   * Runs `handler` unless it already ran for `key`. Concurrent calls with the same key in this
   * process share the first call's outcome (its value, or its error).
   */
  run<T>(key: string, handler: () => T | Promise<T>): Promise<OnceResult<T>>;
}

const DAY = 86_400_000;

/**
 * Creates a once-per-`webhook-id` runner.
 *
 * @example
 * ```ts
 * const once = createIdempotency(); // in memory; pass { store } for a shared one
 * const { duplicate } = await once.run(webhookId, () => saveCall(event));
 * ```
 */
export function createIdempotency(opts: IdempotencyOptions = {}): Idempotency {
  const store = opts.store ?? new MemoryIdempotencyStore();
  const ttlMs = opts.ttlMs ?? 7 * DAY;
  const leaseMs = opts.leaseMs ?? 5 * 60_000;
  const pollIntervalMs = opts.pollIntervalMs ?? 250;
  const waitTimeoutMs = opts.waitTimeoutMs ?? 10_000;
  // In-process duplicates wait on the first call's promise instead of polling the store.
  const inFlight = new Map<string, Promise<OnceResult<unknown>>>();

  async function claimOrWait(key: string, token: string): Promise<"claimed" | "done"> {
    const deadline = Date.now() + waitTimeoutMs;
    for (;;) {
      const result = await store.claim(key, leaseMs, token);
      if (result !== "pending") return result;
      // Another process is running the handler: wait for it to finish or release. Polling is
      // the one portable way across stores; the interval bounds the extra latency of a duplicate.
      if (Date.now() >= deadline) throw stillRunning(key, "elsewhere");
      await new Promise((r) => setTimeout(r, pollIntervalMs));
    }
  }

  async function execute<T>(key: string, handler: () => T | Promise<T>): Promise<OnceResult<T>> {
    const token = runToken();
    if ((await claimOrWait(key, token)) === "done") return { duplicate: true, value: undefined };
    let value: T;
    try {
      value = await handler();
    } catch (err) {
      await store.release(key, token);
      throw err;
    }
    await store.complete(key, ttlMs, token);
    return { duplicate: false, value };
  }

  return {
    async run<T>(key: string, handler: () => T | Promise<T>): Promise<OnceResult<T>> {
      if (typeof key !== "string" || key === "")
        throw new TypeError("Idempotency key must be a non-empty string");
      const running = inFlight.get(key) as Promise<OnceResult<T>> | undefined;
      if (running) {
        const first = await withDeadline(running, waitTimeoutMs, () => stillRunning(key, "in this process"));
        return { duplicate: true, value: first.value };
      }
      const promise = execute(key, handler);
      inFlight.set(key, promise);
      try {
        return await promise;
      } finally {
        inFlight.delete(key);
      }
    },
  };
}

/** Unique per run, across processes: Web Crypto's UUID (Node, browsers, Deno, Bun, workers). */
function runToken(): string {
  return globalThis.crypto.randomUUID();
}

function stillRunning(key: string, where: string): IdempotencyTimeoutError {
  return new IdempotencyTimeoutError(`Key ${key} is still being processed ${where}`);
}

/** `promise`, or the error `late()` makes if it has not settled within `ms`. */
async function withDeadline<T>(promise: Promise<T>, ms: number, late: () => Error): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(late()), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** Options of `MemoryIdempotencyStore`. */
export interface MemoryIdempotencyStoreOptions {
  /**
   * At most this many keys are remembered; the oldest are forgotten first. Default 100 000,
   * about 30 MB of heap for `evt_…` ids (~300 bytes each, measured) — a bound, so a flood of
   * distinct ids cannot exhaust memory.
   */
  readonly maxEntries?: number;
  /** The clock, in milliseconds; injectable so tests can expire entries without waiting. */
  readonly now?: () => number;
}

/**
 * A bounded in-memory store with expiry: the default, for a single process.
 *
 * @example
 * ```ts
 * const once = createIdempotency({ store: new MemoryIdempotencyStore({ maxEntries: 10_000 }) });
 * ```
 */
export class MemoryIdempotencyStore implements IdempotencyStore {
  // Map keeps insertion order, and every write re-inserts, so the first key is the oldest.
  readonly #entries = new Map<
    string,
    { state: "pending" | "done"; expiresAt: number; token?: string | undefined }
  >();
  readonly #maxEntries: number;
  readonly #now: () => number;

  constructor(opts: MemoryIdempotencyStoreOptions = {}) {
    this.#maxEntries = opts.maxEntries ?? 100_000;
    this.#now = opts.now ?? Date.now;
    if (!(this.#maxEntries >= 1)) throw new TypeError("maxEntries must be at least 1");
  }

  /** Number of keys held, expired ones included until they are evicted. */
  get size(): number {
    return this.#entries.size;
  }

  claim(key: string, leaseMs: number, token?: string): ClaimResult {
    const entry = this.#entries.get(key);
    if (entry && entry.expiresAt > this.#now()) return entry.state === "done" ? "done" : "pending";
    this.#set(key, "pending", leaseMs, token);
    return "claimed";
  }

  complete(key: string, ttlMs: number, _token?: string): void {
    this.#set(key, "done", ttlMs);
  }

  /** With a `token`, only the pending claim that token holds is forgotten; without, any entry. */
  release(key: string, token?: string): void {
    const entry = this.#entries.get(key);
    if (token !== undefined && (entry?.state !== "pending" || entry.token !== token)) return;
    this.#entries.delete(key);
  }

  #set(key: string, state: "pending" | "done", ms: number, token?: string): void {
    this.#entries.delete(key);
    this.#entries.set(key, { state, expiresAt: this.#now() + ms, token });
    while (this.#entries.size > this.#maxEntries) {
      const oldest = this.#entries.keys().next();
      if (oldest.done) break;
      this.#entries.delete(oldest.value);
    }
  }
}
