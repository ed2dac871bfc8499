import type { FastifyRequest } from "fastify";
import { type Account, accountByKey } from "../accounts/accounts.js";
import { ApiError } from "../errors.js";
import type { Store } from "../storage/store.js";

declare module "fastify" {
  interface FastifyRequest {
    account: Account;
  }
}

/** The API key of `Authorization: Bearer <key>`, if the request carries one. */
export function bearerKey(req: FastifyRequest): string | undefined {
  const header = req.headers.authorization;
  return (header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null)?.[1];
}

/**
 * Bearer API keys. Lookups are cached for a few seconds, keyed by the raw key in memory only, so
 * a hot sender does not pay a database read per request; a deleted key stops working within the
 * cache's lifetime.
 */
export class Authenticator {
  private cache = new Map<string, { account: Account; until: number }>();
  /** Counts `forget` calls: a change means a key of this process may have been revoked since. */
  forgotten = 0;
  constructor(
    store: Store,
    private ttlMs = 5_000,
    private readonly lookup: (key: string) => Promise<Account | undefined> = (key) =>
      accountByKey(store.db, key),
  ) {}

  async authenticate(req: FastifyRequest): Promise<Account> {
    const key = bearerKey(req);
    if (key === undefined) throw new ApiError(401, "unauthorized", "send Authorization: Bearer <api key>");
    const now = Date.now();
    const hit = this.cache.get(key);
    if (hit && hit.until > now) return hit.account;
    const before = this.forgotten;
    let account = await this.lookup(key);
    // A key revoked while it was being looked up (the read saw it before the delete committed):
    // read again, and keep nothing, or the revoked key would work here for another ttlMs.
    const revokedMeanwhile = this.forgotten !== before;
    if (revokedMeanwhile) account = await this.lookup(key);
    if (!account) {
      this.cache.delete(key);
      throw new ApiError(401, "unauthorized", "invalid API key");
    }
    if (!revokedMeanwhile) {
      if (this.cache.size > 10_000) this.cache.clear();
      this.cache.set(key, { account, until: now + this.ttlMs });
    }
    return account;
  }

  /** Whether `key` authenticated in this process (kept until the cache is cleared, expired or not). */
  known(key: string): boolean {
    return this.cache.has(key);
  }

  forget(accountId: number): void {
    this.forgotten++;
    for (const [k, v] of this.cache) if (v.account.id === accountId) this.cache.delete(k);
  }
}

/**
 * Token buckets by a string (an API key, an address): `perSecond` tokens a second, holding up to
 * `capacity` (at least one, or a rate below 1/s would never refill to a whole token). Keyed in
 * memory only; at 10,000 keys the oldest buckets are dropped (each starts full again).
 */
class Buckets {
  private buckets = new Map<string, { tokens: number; at: number }>();
  constructor(
    private readonly perSecond: number,
    private readonly capacity = Math.max(1, perSecond),
  ) {}

  private refill(key: string, now: number) {
    const b = this.buckets.get(key) ?? { tokens: this.capacity, at: now };
    b.tokens = Math.min(this.capacity, b.tokens + ((now - b.at) / 1000) * this.perSecond);
    b.at = now;
    if (!this.buckets.has(key)) {
      if (this.buckets.size >= 10_000) this.buckets.delete(this.buckets.keys().next().value!);
      this.buckets.set(key, b);
    }
    return b;
  }

  /** Seconds until a token is there (0: one is), without taking it. */
  wait(key: string, now = Date.now()): number {
    const b = this.refill(key, now);
    return b.tokens >= 1 ? 0 : Math.max(1, Math.ceil((1 - b.tokens) / this.perSecond));
  }

  /** Takes a token: 0, or the seconds to wait when there is none (nothing taken). */
  take(key: string, now = Date.now()): number {
    const wait = this.wait(key, now);
    if (wait === 0) this.refill(key, now).tokens -= 1;
    return wait;
  }
}

/**
 * Token bucket per API key (`KLEN_RATE_LIMIT` requests per second, bursts up to one second's
 * worth): two keys of one account have a budget each. Keyed by the raw key in memory only, as the
 * authentication cache is; only keys that authenticated get a bucket.
 */
export class RateLimiter {
  private readonly buckets: Buckets | undefined;
  constructor(perSecond: number) {
    this.buckets = perSecond > 0 ? new Buckets(perSecond) : undefined;
  }

  /** Seconds to wait, or 0 when the request may pass. */
  take(apiKey: string, now = Date.now()): number {
    return this.buckets?.take(apiKey, now) ?? 0;
  }
}

/**
 * Wrong API keys, counted per client address whatever `KLEN_RATE_LIMIT` says: 100 at once, then 10
 * a second. Past that, a key this process has not seen authenticate is refused `429` before it is
 * looked up, so guessing costs 10 tries a second from an address rather than the thousand a second
 * the database could answer; keys that authenticated here before (the cache, even expired) go on
 * working from the same address (a proxy in front of the server shares one).
 */
export class FailedKeys {
  private readonly buckets = new Buckets(10, 100);
  /** Seconds for an unknown key from `address` to wait, or 0. */
  wait(address: string, now = Date.now()): number {
    return this.buckets.wait(address, now);
  }
  failed(address: string, now = Date.now()): void {
    this.buckets.take(address, now);
  }
}
