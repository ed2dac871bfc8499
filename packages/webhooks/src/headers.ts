/**
 * Reading the three Standard Webhooks headers from whatever a framework hands over, and
 * parsing them strictly.
 */
import { WebhookVerificationError } from "./errors.js";

/** A Fetch `Headers` or anything with the same `get`. */
export interface HeaderGetter {
  get(name: string): string | null;
}
/** A plain object in any case, or Node's `IncomingHttpHeaders` (values may be arrays). */
export type HeaderRecord = {
  readonly [name: string]: string | readonly string[] | number | undefined | null;
};
/** Every shape of headers the SDK accepts. */
export type HeadersInput = HeaderGetter | HeaderRecord;

/** One entry of `webhook-signature`: `v1,<base64>` or `v1a,<base64>`. */
export interface SignatureEntry {
  readonly version: string;
  readonly signature: string;
}

/** The verified-to-be-present, parsed headers of a delivery. */
export interface WebhookHeaders {
  readonly id: string;
  /** Unix seconds, parsed from `webhook-timestamp`. */
  readonly timestamp: number;
  readonly signatures: readonly SignatureEntry[];
}

function isGetter(headers: HeadersInput): headers is HeaderGetter {
  return typeof (headers as { get?: unknown }).get === "function";
}

/**
 * Reads one header case-insensitively. Repeated headers (arrays) are joined with ", " as a
 * Fetch `Headers` would, which keeps space-separated signature lists intact.
 *
 * @example
 * ```ts
 * getHeader({ "Webhook-Id": "evt_1" }, "webhook-id"); // "evt_1"
 * ```
 */
export function getHeader(headers: HeadersInput, name: string): string | undefined {
  if (isGetter(headers)) return headers.get(name) ?? undefined;
  const lower = name.toLowerCase();
  let value = headers[lower];
  if (value === undefined || value === null) {
    for (const key of Object.keys(headers)) {
      if (key.toLowerCase() === lower && headers[key] != null) {
        value = headers[key];
        break;
      }
    }
  }
  if (value === undefined || value === null) return undefined;
  if (Array.isArray(value)) return value.join(", ");
  return String(value);
}

// Unix seconds as a plain decimal integer. A sign is allowed so that "-1" is reported as too old
// (it is a number, just not a plausible one); "1614265330.5" and "1614265330abc" are rejected
// rather than truncated as parseInt would, because the truncated value is not what was signed.
const TIMESTAMP = /^-?[0-9]+$/;

/** Parses `webhook-timestamp` strictly; throws `invalid_timestamp` on anything but an integer. */
export function parseTimestamp(text: string): number {
  const value = TIMESTAMP.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(value)) {
    throw new WebhookVerificationError(
      "invalid_timestamp",
      "webhook-timestamp is not an integer of Unix seconds",
    );
  }
  return value;
}

/**
 * Splits `webhook-signature` into entries. Empty entries (double or edge spaces) and entries
 * without a comma are skipped rather than fatal, so one malformed entry from a misbehaving
 * proxy cannot hide a valid signature next to it.
 */
export function parseSignatureHeader(text: string): SignatureEntry[] {
  const entries: SignatureEntry[] = [];
  for (const token of text.split(" ")) {
    // A header sent on several lines reaches us joined with ", " (Node, Fetch): "v1,a=, v1,b=".
    // Base64 has no comma, so a trailing one is that separator, not part of the signature.
    const part = token.replace(/,+$/, "");
    const comma = part.indexOf(",");
    if (comma <= 0) continue;
    entries.push({ version: part.slice(0, comma), signature: part.slice(comma + 1) });
  }
  return entries;
}

function required(headers: HeadersInput, name: string): string {
  // HTTP strips surrounding whitespace from field values; a blank value is as good as none.
  const value = getHeader(headers, name)?.trim();
  if (!value) throw new WebhookVerificationError("missing_header", `Missing required header ${name}`);
  return value;
}

/**
 * Reads and parses the three headers. Throws `missing_header` or `invalid_timestamp`.
 *
 * @example
 * ```ts
 * const { id, timestamp, signatures } = readWebhookHeaders(req.headers);
 * ```
 */
export function readWebhookHeaders(headers: HeadersInput): WebhookHeaders {
  if (headers === null || typeof headers !== "object") {
    throw new WebhookVerificationError("missing_header", "No headers were given");
  }
  const id = required(headers, "webhook-id");
  const timestampText = required(headers, "webhook-timestamp");
  const signatureText = required(headers, "webhook-signature");
  return { id, timestamp: parseTimestamp(timestampText), signatures: parseSignatureHeader(signatureText) };
}
