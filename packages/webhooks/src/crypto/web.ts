/**
 * Asynchronous primitives on WebCrypto (`globalThis.crypto.subtle`): Node 20+, Deno, Bun,
 * Cloudflare Workers, Vercel/Next.js edge. Used by `verifyAsync` / `signAsync` and the Fetch
 * adapter, so they never touch `node:crypto`.
 */
import { concat, ED25519_PKCS8_PREFIX, ED25519_SPKI_PREFIX } from "./der.js";

function subtle(): SubtleCrypto {
  const s = (globalThis as { crypto?: { subtle?: SubtleCrypto } }).crypto?.subtle;
  if (!s) throw new Error("WebCrypto (globalThis.crypto.subtle) is not available on this runtime");
  return s;
}

/** WebCrypto wants an ArrayBuffer-backed view; copies when given a view of a shared buffer. */
function buf(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return bytes.buffer instanceof ArrayBuffer ? (bytes as Uint8Array<ArrayBuffer>) : new Uint8Array(bytes);
}

export function importHmacKey(secret: Uint8Array): Promise<CryptoKey> {
  // A zero-length HMAC key is refused by WebCrypto; parseKey never produces one.
  return subtle().importKey("raw", buf(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
}

export async function hmacSha256(key: CryptoKey, data: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await subtle().sign("HMAC", key, buf(data)));
}

export function importEd25519Public(raw: Uint8Array): Promise<CryptoKey> {
  return subtle().importKey("spki", buf(concat(ED25519_SPKI_PREFIX, raw)), { name: "Ed25519" }, false, [
    "verify",
  ]);
}

export function importEd25519Private(seed: Uint8Array): Promise<CryptoKey> {
  // Extractable so the public half can be derived (WebCrypto has no "public from private").
  return subtle().importKey("pkcs8", buf(concat(ED25519_PKCS8_PREFIX, seed)), { name: "Ed25519" }, true, [
    "sign",
  ]);
}

/** The public key of an extractable ed25519 private key, via its JWK `x`. */
export async function publicOfPrivate(key: CryptoKey): Promise<CryptoKey> {
  const jwk = await subtle().exportKey("jwk", key);
  const { d: _d, key_ops: _ops, ...pub } = jwk;
  return subtle().importKey("jwk", { ...pub, key_ops: ["verify"] }, { name: "Ed25519" }, false, ["verify"]);
}

export async function ed25519Verify(
  key: CryptoKey,
  data: Uint8Array,
  signature: Uint8Array,
): Promise<boolean> {
  return subtle().verify("Ed25519", key, buf(signature), buf(data));
}

export async function ed25519Sign(key: CryptoKey, data: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await subtle().sign("Ed25519", key, buf(data)));
}
