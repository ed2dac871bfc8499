import { createHash, randomBytes, randomFillSync } from "node:crypto";

const CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz";

/** Random bytes drawn in blocks: one call into the kernel per 400 ids rather than per id. */
const pool = Buffer.alloc(4096);
let poolAt = pool.length;
function random40(): number {
  if (poolAt + 5 > pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  const v = pool.readUIntBE(poolAt, 5);
  poolAt += 5;
  return v;
}

const TWO40 = 2 ** 40;
let lastMs = -1;
let hi = 0;
let lo = 0;

function base32(n: number, digits: number): string {
  let out = "";
  for (let i = 0; i < digits; i++) {
    out = CROCKFORD[n % 32] + out;
    n = Math.floor(n / 32);
  }
  return out;
}

/**
 * Time-ordered unique id with a prefix (`evt_01j…`): 48 bits of milliseconds then 80 random bits,
 * Crockford base32. Sorting the ids sorts by creation time, which gives "newest first" lists
 * without a second index. Within one millisecond the random part is incremented rather than drawn again, as ULID's monotonic mode does, so ids made one after the
 * other in a process also sort in the order they were made (a transcript before its summary).
 */
export function newId(prefix: string, now = Date.now()): string {
  if (now !== lastMs) {
    lastMs = now;
    hi = random40();
    lo = random40();
  } else {
    lo += 1;
    if (lo === TWO40) {
      lo = 0;
      hi = (hi + 1) % TWO40;
    }
  }
  return `${prefix}_${base32(lastMs, 10)}${base32(hi, 8)}${base32(lo, 8)}`;
}

/**
 * The lowest id `newId(prefix)` can make at `ms`: every id made earlier sorts below it. Lets a
 * query select rows made before a time by a range on the id's index.
 */
export function idFloor(prefix: string, ms: number): string {
  return `${prefix}_${base32(ms, 10)}`;
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
