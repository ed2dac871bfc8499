import { createHash, randomBytes } from "node:crypto";

const CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz";

/**
 * Time-ordered unique id with a prefix (`evt_01j…`): 48 bits of milliseconds then 80 random bits,
 * Crockford base32. Sorting the ids sorts by creation time, which gives "newest first" lists
 * without a second index.
 */
export function newId(prefix: string, now = Date.now()): string {
  let time = "";
  let t = now;
  for (let i = 0; i < 10; i++) {
    time = CROCKFORD[t % 32] + time;
    t = Math.floor(t / 32);
  }
  const rnd = randomBytes(10);
  let bits = 0;
  let value = 0;
  let tail = "";
  for (const byte of rnd) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      tail += CROCKFORD[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  return `${prefix}_${time}${tail}`;
}

/** Endpoint secrets: `whsec_` and the base64 of 32 random bytes (the rule allows 24–64). */
export function newEndpointSecret(): string {
  return `whsec_${randomBytes(32).toString("base64")}`;
}

/** API keys: `klen_sk_` and 32 random bytes, url-safe. Only their hash is stored. */
export function newApiKey(): string {
  return `klen_sk_${randomBytes(32).toString("base64url")}`;
}

/** API keys are random with 256 bits of entropy, so a fast hash is enough (no password stretching). */
export function hashApiKey(key: string): string {
  return createHash("sha256").update(key).digest("hex");
}

/** Unguessable token for blob ids and the like. */
export function randomToken(bytes = 24): string {
  return randomBytes(bytes).toString("base64url");
}
