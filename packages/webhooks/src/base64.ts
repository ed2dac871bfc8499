/**
 * A small, strict base64 codec (standard alphabet) with no dependency on `Buffer`, so the same
 * code runs on Node and on edge runtimes.
 *
 * Why not `Buffer.from(s, "base64")`: it silently skips invalid characters and accepts the
 * URL-safe alphabet, so `whsec_!!!!` would become an empty key and a mangled signature could
 * still decode to something. Keys and signatures must be rejected, not repaired.
 */

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const LOOKUP = new Int16Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) LOOKUP[ALPHABET.charCodeAt(i)] = i;

export interface DecodeOptions {
  /**
   * Signatures: require `=` padding and zero unused bits, so exactly one text encodes each
   * signature (the comparison is on the canonical form). Keys: padding is optional because
   * secrets copied without their `=` are common and every reference library accepts them.
   */
  readonly canonical: boolean;
}

/** Decodes standard base64; returns `undefined` for anything that is not valid base64. */
export function decodeBase64(text: string, opts: DecodeOptions): Uint8Array | undefined {
  let end = text.length;
  while (end > 0 && text.charCodeAt(end - 1) === 61 /* = */) end--;
  const padding = text.length - end;
  if (padding > 2) return undefined;
  if (opts.canonical ? text.length % 4 !== 0 : padding > 0 && text.length % 4 !== 0) return undefined;
  const rest = end % 4;
  if (rest === 1) return undefined;
  if (padding > 0 && (rest === 0 || padding !== 4 - rest)) return undefined;

  const out = new Uint8Array(Math.floor((end * 3) / 4));
  let buffer = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < end; i++) {
    const code = text.charCodeAt(i);
    const v = code < 128 ? (LOOKUP[code] ?? -1) : -1;
    if (v < 0) return undefined;
    buffer = ((buffer << 6) | v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (buffer >> bits) & 0xff;
    }
  }
  if (opts.canonical && bits > 0 && (buffer & ((1 << bits) - 1)) !== 0) return undefined;
  return out;
}

/** Encodes bytes as padded standard base64. */
export function encodeBase64(bytes: Uint8Array): string {
  let out = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!;
    out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]! + ALPHABET[(n >> 6) & 63]! + ALPHABET[n & 63]!;
  }
  const left = bytes.length - i;
  if (left === 1) {
    const n = bytes[i]! << 16;
    out += `${ALPHABET[n >> 18]!}${ALPHABET[(n >> 12) & 63]!}==`;
  } else if (left === 2) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8);
    out += `${ALPHABET[n >> 18]!}${ALPHABET[(n >> 12) & 63]!}${ALPHABET[(n >> 6) & 63]!}=`;
  }
  return out;
}
