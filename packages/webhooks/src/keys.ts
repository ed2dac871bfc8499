import { decodeBase64 } from "./base64.js";
import { ED25519_SPKI_PREFIX, startsWith } from "./crypto/der.js";
import { WebhookKeyError } from "./errors.js";

/**
 * Parsed webhook keys. A `Webhook` holds one or more of these; which signature versions it
 * can check (and produce) follows from their kinds.
 */
export type WebhookKey =
  /** `whsec_…` or bare base64: HMAC-SHA256, signature version `v1`. */
  | { readonly kind: "hmac"; readonly secret: Uint8Array }
  /** `whpk_…`: ed25519 public key (raw 32 bytes), verifies `v1a`. */
  | { readonly kind: "ed25519-public"; readonly publicKey: Uint8Array }
  /** `whsk_…`: ed25519 seed (32 bytes), signs and verifies `v1a`. */
  | { readonly kind: "ed25519-private"; readonly seed: Uint8Array };

function decodeKeyBody(key: string, body: string): Uint8Array {
  const bytes = decodeBase64(body, { canonical: false });
  if (bytes === undefined) throw new WebhookKeyError(`Webhook key ${describe(key)} is not valid base64`);
  if (bytes.length === 0) throw new WebhookKeyError(`Webhook key ${describe(key)} is empty`);
  return bytes;
}

/** Names the key in messages without printing it: secrets end up in logs. */
function describe(key: string): string {
  const prefix = /^(whsec|whpk|whsk)_/.exec(key)?.[0];
  return prefix ? `"${prefix}…" (${key.length} chars)` : `(${key.length} chars)`;
}

/**
 * Parses one key string.
 *
 * Accepted, following PRODUCT.md §9 and the conformance vectors: `whsec_<base64>` or bare
 * base64 of any non-empty length (24–64 bytes is the rule for *generating*; senders in the
 * wild use shorter ones), padding optional; `whpk_` with a raw 32-byte or SPKI-DER (44-byte)
 * ed25519 public key; `whsk_` with a 32-byte seed or the 64-byte seed‖public key svix uses.
 *
 * @example
 * ```ts
 * parseKey("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"); // { kind: "hmac", secret: Uint8Array(24) }
 * ```
 */
export function parseKey(key: string): WebhookKey {
  if (typeof key !== "string") throw new WebhookKeyError("Webhook key must be a string");
  const trimmed = key.trim();
  if (trimmed === "") throw new WebhookKeyError("Webhook key is empty");
  // A secret pasted with its quotes (from a .env file or JSON): said so, not "not valid base64".
  const quoted = /^(["'`])(.*)\1$/s.exec(trimmed);
  if (quoted)
    throw new WebhookKeyError(
      `Webhook key ${describe(quoted[2] ?? "")} is wrapped in ${quoted[1]} quotes: pass the secret without them`,
    );
  if (trimmed.startsWith("whpk_")) {
    const bytes = decodeKeyBody(trimmed, trimmed.slice(5));
    if (bytes.length === 32) return { kind: "ed25519-public", publicKey: bytes };
    if (bytes.length === 44 && startsWith(bytes, ED25519_SPKI_PREFIX)) {
      return { kind: "ed25519-public", publicKey: bytes.slice(12) };
    }
    throw new WebhookKeyError(
      `whpk_ key must hold a 32-byte or SPKI ed25519 public key, got ${bytes.length} bytes`,
    );
  }
  if (trimmed.startsWith("whsk_")) {
    const bytes = decodeKeyBody(trimmed, trimmed.slice(5));
    if (bytes.length === 32) return { kind: "ed25519-private", seed: bytes };
    // The public half of the 64-byte form is ignored: it is always re-derived from the seed, so a
    // mismatched pair cannot make us sign with one key and verify with another.
    if (bytes.length === 64) return { kind: "ed25519-private", seed: bytes.slice(0, 32) };
    throw new WebhookKeyError(
      `whsk_ key must hold a 32-byte seed or 64-byte seed and public key, got ${bytes.length} bytes`,
    );
  }
  // The likeliest wrong string to paste: the Klen API key. Named, without printing it.
  if (trimmed.startsWith("klen_sk_"))
    throw new WebhookKeyError(
      `Webhook key "klen_sk_…" is an API key, not an endpoint's signing secret: use the endpoint's whsec_ secret (klen-webhooks endpoints secret ep_…)`,
    );
  const body = trimmed.startsWith("whsec_") ? trimmed.slice(6) : trimmed;
  // An unknown `xyz_` prefix is rejected by the base64 check itself ("_" is not in the alphabet).
  return { kind: "hmac", secret: decodeKeyBody(trimmed, body) };
}

/** Parses a key, a list of keys (rotation) or already parsed keys. */
export function parseKeys(keys: string | readonly string[]): WebhookKey[] {
  const list = typeof keys === "string" ? [keys] : keys;
  if (!Array.isArray(list))
    throw new WebhookKeyError(
      `A webhook key must be a string ("whsec_…") or a list of them, not ${typeof keys}`,
    );
  if (list.length === 0) throw new WebhookKeyError("At least one webhook key is required");
  return list.map(parseKey);
}
