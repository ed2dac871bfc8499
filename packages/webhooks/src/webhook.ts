/**
 * `Webhook`: sign and verify Standard Webhooks deliveries (v1 HMAC-SHA256, v1a ed25519) and
 * return the body as a typed Klen call event.
 */
import { decodeBase64, encodeBase64 } from "./base64.js";
import { constantTimeEqual, type RawBody, signedContent, toBytes } from "./crypto/bytes.js";
import * as nodeCrypto from "./crypto/node.js";
import * as webCrypto from "./crypto/web.js";
import { WebhookKeyError, WebhookVerificationError } from "./errors.js";
import type { CallEvent } from "./events.js";
import { type HeadersInput, readWebhookHeaders, type WebhookHeaders } from "./headers.js";
import { parseKeys, type WebhookKey } from "./keys.js";
import { parseCallEvent } from "./parse-event.js";
import { assertSeconds, checkTimestamp, type VerifyOptions } from "./tolerance.js";

type NodeKeyObject = ReturnType<typeof nodeCrypto.ed25519PublicKey>;

/** Keys prepared for node:crypto, built on first sync use. */
interface NodeKeys {
  readonly hmac: readonly Uint8Array[];
  readonly verify: readonly NodeKeyObject[];
  readonly sign: readonly NodeKeyObject[];
}
/** Keys imported into WebCrypto, built on first async use. */
interface WebKeys {
  readonly hmac: readonly CryptoKey[];
  readonly verify: readonly CryptoKey[];
  readonly sign: readonly CryptoKey[];
}

// Lengths of the decoded signatures; anything else cannot match and is skipped before any crypto.
const HMAC_LENGTH = 32;
const ED25519_LENGTH = 64;

/**
 * Verifies (and, for tests, signs) webhook deliveries with one or more keys.
 *
 * Keys: `whsec_…` or bare base64 (HMAC, `v1`); `whpk_…` (ed25519 public key, verifies `v1a`);
 * `whsk_…` (ed25519 signing key, signs and verifies `v1a`). Give a list during a secret
 * rotation: a delivery passes when any signature in its header matches any key.
 *
 * @example
 * ```ts
 * import { Webhook, WebhookVerificationError } from "@klen/webhooks";
 *
 * const wh = new Webhook(process.env.KLEN_WEBHOOK_SECRET!);
 * const event = wh.verify(rawBody, req.headers); // throws WebhookVerificationError
 * if (event.event_type === "call.ended") console.log(event.call.duration);
 * ```
 */
export class Webhook {
  readonly #keys: readonly WebhookKey[];
  #node: NodeKeys | undefined;
  #web: Promise<WebKeys> | undefined;

  /**
   * @param keys one key or several (rotation). Throws `WebhookKeyError` for an unusable key.
   */
  constructor(keys: string | readonly string[]) {
    this.#keys = parseKeys(keys);
  }

  /**
   * Checks headers, timestamp and signature, then parses and validates the body as a call
   * event. Synchronous; needs `node:crypto` (use `verifyAsync` on edge runtimes).
   *
   * @param rawBody the body exactly as received: string, Buffer or Uint8Array — never a
   *   re-serialised `JSON.stringify(req.body)`.
   * @param headers a plain object (any case), Node's `IncomingHttpHeaders` or a Fetch `Headers`.
   * @param opts `now` (Unix seconds or Date) and `toleranceSeconds` (default 300).
   * @throws WebhookVerificationError with a `code`.
   * @example
   * ```ts
   * const event = wh.verify(req.body, req.headers, { now: 1614265330 });
   * ```
   */
  verify(rawBody: RawBody, headers: HeadersInput, opts?: VerifyOptions): CallEvent {
    const body = toBytes(rawBody);
    this.verifySignature(body, headers, opts);
    return parseCallEvent(body);
  }

  /**
   * Checks headers, timestamp and signature only; returns nothing, throws on failure.
   *
   * @example
   * ```ts
   * wh.verifySignature(rawBody, headers); // any body, not only call events
   * ```
   */
  verifySignature(rawBody: RawBody, headers: HeadersInput, opts?: VerifyOptions): void {
    const h = this.#checkHeaders(headers, opts);
    const content = signedContent(h.id, h.timestamp, toBytes(rawBody));
    const keys = this.#nodeKeys();
    let hmacs: Uint8Array[] | undefined;
    for (const { version, signature } of h.signatures) {
      if (version === "v1" && keys.hmac.length > 0) {
        const given = decodeBase64(signature, { canonical: true });
        if (given?.length !== HMAC_LENGTH) continue;
        hmacs ??= keys.hmac.map((k) => nodeCrypto.hmacSha256(k, content));
        if (hmacs.some((expected) => constantTimeEqual(expected, given))) return;
      } else if (version === "v1a" && keys.verify.length > 0) {
        const given = decodeBase64(signature, { canonical: true });
        if (given?.length !== ED25519_LENGTH) continue;
        if (keys.verify.some((k) => nodeCrypto.ed25519Verify(k, content, given))) return;
      }
    }
    throw noMatch();
  }

  /**
   * `verify` on WebCrypto: for edge runtimes (Next.js edge, Cloudflare Workers, Deno, Bun).
   *
   * @example
   * ```ts
   * const event = await wh.verifyAsync(await request.text(), request.headers);
   * ```
   */
  async verifyAsync(rawBody: RawBody, headers: HeadersInput, opts?: VerifyOptions): Promise<CallEvent> {
    const body = toBytes(rawBody);
    await this.verifySignatureAsync(body, headers, opts);
    return parseCallEvent(body);
  }

  /**
   * `verifySignature` on WebCrypto.
   *
   * @example
   * ```ts
   * await wh.verifySignatureAsync(rawBody, request.headers);
   * ```
   */
  async verifySignatureAsync(rawBody: RawBody, headers: HeadersInput, opts?: VerifyOptions): Promise<void> {
    const h = this.#checkHeaders(headers, opts);
    const content = signedContent(h.id, h.timestamp, toBytes(rawBody));
    const keys = await this.#webKeys();
    let hmacs: Uint8Array[] | undefined;
    for (const { version, signature } of h.signatures) {
      if (version === "v1" && keys.hmac.length > 0) {
        const given = decodeBase64(signature, { canonical: true });
        if (given?.length !== HMAC_LENGTH) continue;
        hmacs ??= await Promise.all(keys.hmac.map((k) => webCrypto.hmacSha256(k, content)));
        if (hmacs.some((expected) => constantTimeEqual(expected, given))) return;
      } else if (version === "v1a" && keys.verify.length > 0) {
        const given = decodeBase64(signature, { canonical: true });
        if (given?.length !== ED25519_LENGTH) continue;
        for (const k of keys.verify) if (await webCrypto.ed25519Verify(k, content, given)) return;
      }
    }
    throw noMatch();
  }

  /**
   * Signs a body with every signing key (`whsec_` → `v1`, `whsk_` → `v1a`), space-separated as
   * in a `webhook-signature` header. For tests and local tools; `whpk_` keys cannot sign.
   *
   * @param timestamp Unix seconds or a Date.
   * @example
   * ```ts
   * const signature = wh.sign("evt_1", Math.floor(Date.now() / 1000), body); // "v1,…"
   * ```
   */
  sign(id: string, timestamp: number | Date, rawBody: RawBody): string {
    const content = signedContent(id, toSeconds(timestamp), toBytes(rawBody));
    const keys = this.#nodeKeys();
    if (keys.hmac.length + keys.sign.length === 0) throw cannotSign();
    return [
      ...keys.hmac.map((k) => `v1,${encodeBase64(nodeCrypto.hmacSha256(k, content))}`),
      ...keys.sign.map((k) => `v1a,${encodeBase64(nodeCrypto.ed25519Sign(k, content))}`),
    ].join(" ");
  }

  /**
   * `sign` on WebCrypto.
   *
   * @example
   * ```ts
   * const signature = await wh.signAsync("evt_1", new Date(), body);
   * ```
   */
  async signAsync(id: string, timestamp: number | Date, rawBody: RawBody): Promise<string> {
    const content = signedContent(id, toSeconds(timestamp), toBytes(rawBody));
    const keys = await this.#webKeys();
    if (keys.hmac.length + keys.sign.length === 0) throw cannotSign();
    const v1 = await Promise.all(keys.hmac.map((k) => webCrypto.hmacSha256(k, content)));
    const v1a = await Promise.all(keys.sign.map((k) => webCrypto.ed25519Sign(k, content)));
    return [...v1.map((s) => `v1,${encodeBase64(s)}`), ...v1a.map((s) => `v1a,${encodeBase64(s)}`)].join(" ");
  }

  #checkHeaders(headers: HeadersInput, opts: VerifyOptions | undefined): WebhookHeaders {
    const h = readWebhookHeaders(headers);
    checkTimestamp(h.timestamp, opts);
    return h;
  }

  #nodeKeys(): NodeKeys {
    if (!this.#node) {
      const hmac: Uint8Array[] = [];
      const verify: NodeKeyObject[] = [];
      const sign: NodeKeyObject[] = [];
      for (const key of this.#keys) {
        if (key.kind === "hmac") hmac.push(key.secret);
        else if (key.kind === "ed25519-public") verify.push(nodeCrypto.ed25519PublicKey(key.publicKey));
        else {
          const priv = nodeCrypto.ed25519PrivateKey(key.seed);
          sign.push(priv);
          verify.push(nodeCrypto.publicOf(priv));
        }
      }
      this.#node = { hmac, verify, sign };
    }
    return this.#node;
  }

  #webKeys(): Promise<WebKeys> {
    this.#web ??= (async () => {
      const hmac: CryptoKey[] = [];
      const verify: CryptoKey[] = [];
      const sign: CryptoKey[] = [];
      for (const key of this.#keys) {
        if (key.kind === "hmac") hmac.push(await webCrypto.importHmacKey(key.secret));
        else if (key.kind === "ed25519-public")
          verify.push(await webCrypto.importEd25519Public(key.publicKey));
        else {
          const priv = await webCrypto.importEd25519Private(key.seed);
          sign.push(priv);
          verify.push(await webCrypto.publicOfPrivate(priv));
        }
      }
      return { hmac, verify, sign };
    })();
    // A failed import (runtime without Ed25519) must not be cached forever as a rejected promise.
    this.#web.catch(() => {
      this.#web = undefined;
    });
    return this.#web;
  }
}

function toSeconds(timestamp: number | Date): number {
  const value = timestamp instanceof Date ? Math.floor(timestamp.getTime() / 1000) : timestamp;
  if (!Number.isSafeInteger(value))
    throw new TypeError("timestamp must be whole Unix seconds or a valid Date");
  assertSeconds(value, "timestamp");
  return value;
}

function noMatch(): WebhookVerificationError {
  return new WebhookVerificationError("no_matching_signature", "No matching signature found");
}

function cannotSign(): WebhookKeyError {
  return new WebhookKeyError("None of the keys can sign: whpk_ keys only verify; use whsec_ or whsk_");
}
