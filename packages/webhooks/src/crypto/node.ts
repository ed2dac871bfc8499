/**
 * Synchronous primitives on `node:crypto`: what makes `Webhook.verify` synchronous on Node.
 *
 * The module is fetched with `process.getBuiltinModule` instead of a static import so this file
 * (and the whole SDK) still loads on edge runtimes without `node:crypto`; there only the async
 * WebCrypto path works, and the sync methods say so.
 */
import type * as NodeCrypto from "node:crypto";
import { concat, ED25519_PKCS8_PREFIX, ED25519_SPKI_PREFIX } from "./der.js";

type NodeCryptoModule = typeof NodeCrypto;

let cached: NodeCryptoModule | null | undefined;

/** `node:crypto`, or `undefined` outside Node (and on Node < 20.16). */
export function nodeCrypto(): NodeCryptoModule | undefined {
  if (cached === undefined) {
    const proc = (globalThis as { process?: { getBuiltinModule?: (id: string) => unknown } }).process;
    cached = (proc?.getBuiltinModule?.("node:crypto") as NodeCryptoModule | undefined) ?? null;
  }
  return cached ?? undefined;
}

function requireNodeCrypto(): NodeCryptoModule {
  const c = nodeCrypto();
  if (!c) {
    throw new Error(
      "Synchronous signing and verification need node:crypto; on this runtime use verifyAsync / signAsync",
    );
  }
  return c;
}

export function hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array {
  return requireNodeCrypto().createHmac("sha256", key).update(data).digest();
}

export function ed25519PublicKey(raw: Uint8Array): NodeCrypto.KeyObject {
  return requireNodeCrypto().createPublicKey({
    key: Buffer.from(concat(ED25519_SPKI_PREFIX, raw)),
    format: "der",
    type: "spki",
  });
}

export function ed25519PrivateKey(seed: Uint8Array): NodeCrypto.KeyObject {
  return requireNodeCrypto().createPrivateKey({
    key: Buffer.from(concat(ED25519_PKCS8_PREFIX, seed)),
    format: "der",
    type: "pkcs8",
  });
}

export function ed25519Verify(key: NodeCrypto.KeyObject, data: Uint8Array, signature: Uint8Array): boolean {
  return requireNodeCrypto().verify(null, data, key, signature);
}

export function ed25519Sign(key: NodeCrypto.KeyObject, data: Uint8Array): Uint8Array {
  return requireNodeCrypto().sign(null, data, key);
}

/** The public half of a private key object. */
export function publicOf(key: NodeCrypto.KeyObject): NodeCrypto.KeyObject {
  return requireNodeCrypto().createPublicKey(key);
}
