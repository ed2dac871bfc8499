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
    if (!account)
      throw new ApiError(
        401,
        "unauthorized",
        // An endpoint's signing secret is the key most often pasted by mistake: say so.
        key.startsWith("whsec_")
          ? "invalid API key: this is an endpoint's signing secret (whsec_…), which signs webhooks; send an API key"
          : "invalid API key",
      );
    if (!revokedMeanwhile) {
      if (this.cache.size > 10_000) this.cache.clear();
      this.cache.set(key, { account, until: now + this.ttlMs });
    }
    return account;
  }

  forget(accountId: number): void {
    this.forgotten++;
    for (const [k, v] of this.cache) if (v.account.id === accountId) this.cache.delete(k);
  }
}

/**
 * Token bucket per API key (`KLEN_RATE_LIMIT` requests per second, bursts up to one second's
 * worth): two keys of one account have a budget each. Keyed by the raw key in memory only, as the
 * authentication cache is; only keys that authenticated get a bucket.
 */
export class RateLimiter {
  private buckets = new Map<string, { tokens: number; at: number }>();
  constructor(private perSecond: number) {}

  /** Seconds to wait, or 0 when the request may pass. */
  take(apiKey: string, now = Date.now()): number {
    if (this.perSecond <= 0) return 0;
    // The bucket holds at least one request, or a rate below 1/s (KLEN_RATE_LIMIT=0.5) would
    // never refill to a whole token and refuse every request forever.
    const capacity = Math.max(1, this.perSecond);
    const b = this.buckets.get(apiKey) ?? { tokens: capacity, at: now };
    b.tokens = Math.min(capacity, b.tokens + ((now - b.at) / 1000) * this.perSecond);
    b.at = now;
    this.buckets.set(apiKey, b);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - b.tokens) / this.perSecond));
  }
}
