/**
 * Reading a request body as the exact bytes that were sent, with a size bound. Never through a
 * JSON parser: the signature covers the bytes, and `JSON.stringify(JSON.parse(body))` is a
 * different byte string (spacing, key order, escapes, number formats).
 */

import { brand, isBranded } from "../errors.js";

/**
 * Default largest body, 1 MiB (`maxBodyBytes` in the adapters' options). Klen moves transcripts and summaries over 64 KiB behind a URL,
 * so real events are far smaller; the bound keeps an unauthenticated sender from streaming
 * gigabytes into memory before the signature can be checked.
 */
export const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;

/**
 * A byte bound from the caller's options: `fallback` when not given, else a positive number (or a
 * string of digits, as read from the environment). Anything else is the caller's mistake and
 * throws at once: `NaN` (`Number(process.env.UNSET)`) compared false with every size, so it
 * silently removed the bound.
 */
export function byteLimit(value: unknown, option: string, fallback: number): number {
  if (value === undefined || value === null) return fallback;
  if (typeof value === "number" && value > 0) return value;
  if (typeof value === "string" && /^\s*\d+\s*$/.test(value) && Number(value) > 0) return Number(value);
  throw new TypeError(`\`${option}\` must be a positive number of bytes, not ${String(value)}`);
}

/**
 * The body is over the bound; adapters answer 413.
 *
 * @example
 * ```ts
 * try { await readNodeBody(req, 65_536); } catch (err) { if (err instanceof BodyTooLargeError) res.statusCode = 413; }
 * ```
 */
export class BodyTooLargeError extends Error {
  override readonly name = "BodyTooLargeError";
  constructor(readonly maxBytes: number) {
    super(`Request body is larger than ${maxBytes} bytes`);
    brand(this, "BodyTooLargeError");
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return isBranded(value, "BodyTooLargeError");
  }
}

/** A Node readable request: what `http.IncomingMessage` (and Express's `req`) are. */
export interface NodeReadableRequest extends AsyncIterable<unknown> {
  readonly headers: { readonly [name: string]: string | readonly string[] | undefined };
  /** Node's stream flag: true once something read the body to its end. */
  readonly readableEnded?: boolean;
}

/**
 * Something read the body before the adapter could (a middleware parsed it): a mistake in the
 * receiver's setup, reported as such rather than as a signature that does not match an empty body.
 */
function alreadyRead(what: string): Error {
  return new Error(
    `The request body was already read (${what}); the signature covers the raw bytes, so the webhook ` +
      "handler must get the request before anything reads its body.",
  );
}

function declaredLength(value: string | readonly string[] | null | undefined): number {
  return typeof value === "string" ? Number(value) : Number.NaN;
}

/**
 * Reads a Node request stream to the end, as bytes.
 *
 * @example
 * ```ts
 * const raw = await readNodeBody(req); // Uint8Array
 * ```
 */
export async function readNodeBody(req: NodeReadableRequest, maxBodyBytes?: number): Promise<Uint8Array> {
  const maxBytes = byteLimit(maxBodyBytes, "maxBodyBytes", DEFAULT_MAX_BODY_BYTES);
  if (declaredLength(req.headers["content-length"]) > maxBytes) throw new BodyTooLargeError(maxBytes);
  if (req.readableEnded) throw alreadyRead("the stream has ended");
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of req) {
    const bytes = typeof chunk === "string" ? new TextEncoder().encode(chunk) : (chunk as Uint8Array);
    total += bytes.byteLength;
    if (total > maxBytes) throw new BodyTooLargeError(maxBytes);
    chunks.push(bytes);
  }
  return join(chunks, total);
}

/**
 * Reads a Fetch `Request` body as bytes, stopping at the bound (Content-Length may be absent
 * or wrong with chunked uploads).
 *
 * @example
 * ```ts
 * const raw = await readFetchBody(request);
 * ```
 */
export async function readFetchBody(request: Request, maxBodyBytes?: number): Promise<Uint8Array> {
  const maxBytes = byteLimit(maxBodyBytes, "maxBodyBytes", DEFAULT_MAX_BODY_BYTES);
  if (declaredLength(request.headers.get("content-length")) > maxBytes) throw new BodyTooLargeError(maxBytes);
  if (request.bodyUsed) throw alreadyRead("request.bodyUsed is true: pass a request.clone() made before");
  if (!request.body) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel().catch(() => {});
      throw new BodyTooLargeError(maxBytes);
    }
    chunks.push(value);
  }
  return join(chunks, total);
}

function join(chunks: Uint8Array[], total: number): Uint8Array {
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.byteLength;
  }
  return out;
}
