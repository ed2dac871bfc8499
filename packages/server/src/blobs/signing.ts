import { createHmac, timingSafeEqual } from "node:crypto";

/**
 * Pre-signed blob URLs (PRODUCT.md §5): `{public}/v1/blobs/{id}?expires={unix s}&signature={sig}`
 * where sig = base64url(HMAC-SHA256(key, "{id}.{expires}")). The id and the expiry are both
 * signed, so changing either (moving a URL to another blob, extending it) breaks the signature.
 * Pure: the key and the time are passed in.
 */
export function signBlob(key: Buffer, id: string, expires: number): string {
  return createHmac("sha256", key).update(`${id}.${expires}`).digest("base64url");
}

/** The full pre-signed URL of a blob. */
export function blobUrl(publicUrl: string, key: Buffer, id: string, expires: number): string {
  return `${publicUrl}/v1/blobs/${encodeURIComponent(id)}?expires=${expires}&signature=${signBlob(key, id, expires)}`;
}

/** When a URL made at `nowMs` with a TTL of `ttlMs` stops working, in whole Unix seconds. */
export function expiryOf(nowMs: number, ttlMs: number): number {
  return Math.floor((nowMs + ttlMs) / 1000);
}

export type UrlCheck = { ok: true } | { ok: false; reason: "malformed" | "bad_signature" | "expired" };

/**
 * Checks a presented URL's query. `expires` must be plain decimal digits exactly as signed (no
 * sign, no exponent, no padding: "0017…" or "1e10" would otherwise parse to a signed number);
 * the signature is compared in constant time; an expired URL is refused even when well signed.
 * An expiry further ahead than `maxAheadMs` (the URL TTL and some clock skew) is no URL this
 * server made, however well signed: a leaked key cannot mint URLs that last for ever.
 */
export function checkBlobUrl(
  key: Buffer,
  id: string,
  expires: unknown,
  signature: unknown,
  nowMs: number,
  maxAheadMs = Number.POSITIVE_INFINITY,
): UrlCheck {
  if (typeof expires !== "string" || typeof signature !== "string") return { ok: false, reason: "malformed" };
  if (!/^[1-9][0-9]{0,11}$/.test(expires) || !/^[A-Za-z0-9_-]{43}$/.test(signature)) {
    return { ok: false, reason: "malformed" };
  }
  const want = Buffer.from(signBlob(key, id, Number(expires)), "utf8");
  const got = Buffer.from(signature, "utf8");
  if (want.length !== got.length || !timingSafeEqual(want, got))
    return { ok: false, reason: "bad_signature" };
  if (Number(expires) * 1000 <= nowMs) return { ok: false, reason: "expired" };
  if (Number(expires) * 1000 > nowMs + maxAheadMs) return { ok: false, reason: "bad_signature" };
  return { ok: true };
}
