/** Byte helpers shared by both crypto back ends. */

const encoder = new TextEncoder();

/** What the SDK accepts as a raw body: a string, or bytes (a Buffer, any typed array or DataView). */
export type RawBody = string | Uint8Array | ArrayBuffer | ArrayBufferView;

/**
 * The raw body as bytes. Strings are encoded as UTF-8, which is what went over the wire when
 * the string came from a UTF-8 decode of the request. A parsed object is refused with a message
 * that names the usual cause, because re-serialising JSON changes the bytes that were signed.
 */
export function toBytes(body: RawBody): Uint8Array {
  if (typeof body === "string") return encoder.encode(body);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  // Another view of bytes (a DataView, a Uint16Array): its bytes as they are.
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  throw new TypeError(
    "rawBody must be the raw request body (string, Buffer or Uint8Array), not a parsed object: " +
      "re-serialised JSON does not match the signature. Use express.raw({ type: 'application/json' }) " +
      "or the SDK's adapters.",
  );
}

/** `{id}.{timestamp}.{body}`: the signed content of Standard Webhooks. */
export function signedContent(id: string, timestamp: number, body: Uint8Array): Uint8Array {
  // The timestamp is re-formatted from the parsed integer, as every reference library does, so
  // "01614265330" verifies against a signature over "1614265330".
  const prefix = encoder.encode(`${id}.${timestamp}.`);
  const out = new Uint8Array(prefix.length + body.length);
  out.set(prefix, 0);
  out.set(body, prefix.length);
  return out;
}

/**
 * Compares two byte strings in time that depends only on their lengths, so an attacker cannot
 * learn a valid signature byte by byte from response times.
 */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}
