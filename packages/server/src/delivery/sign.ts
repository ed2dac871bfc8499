import { createHmac } from "node:crypto";

/** The key bytes of a `whsec_<base64>` secret. */
export function secretKey(secret: string): Buffer {
  return Buffer.from(secret.startsWith("whsec_") ? secret.slice(6) : secret, "base64");
}

/** Standard Webhooks v1: `v1,` + base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}"). */
export function signV1(key: Buffer, id: string, timestampSeconds: number, body: string): string {
  const mac = createHmac("sha256", key).update(`${id}.${timestampSeconds}.`).update(body).digest("base64");
  return `v1,${mac}`;
}

/**
 * The headers of one attempt. Custom endpoint headers come first so that none of them can
 * replace a signature header; `keys` has the current secret first, then a rotated one still in
 * its grace period (both signatures are sent, space-separated).
 */
export function attemptHeaders(opts: {
  id: string;
  timestampSeconds: number;
  body: string;
  keys: Buffer[];
  userAgent: string;
  custom: Record<string, string>;
}): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(opts.custom)) headers[k.toLowerCase()] = v;
  headers["content-type"] = "application/json";
  headers["user-agent"] = opts.userAgent;
  headers["webhook-id"] = opts.id;
  headers["webhook-timestamp"] = String(opts.timestampSeconds);
  headers["webhook-signature"] = opts.keys
    .map((k) => signV1(k, opts.id, opts.timestampSeconds, opts.body))
    .join(" ");
  return headers;
}

/** Header names an endpoint's custom headers may not set. */
export const RESERVED_HEADERS = new Set([
  "content-type",
  "content-length",
  "user-agent",
  "webhook-id",
  "webhook-timestamp",
  "webhook-signature",
  "host",
  "connection",
  "transfer-encoding",
]);
