/**
 * Validators and conditional requests for blobs (RFC 9110 §8.8, §13). Blobs never change once
 * written, so their id is a strong ETag and their creation time an exact Last-Modified: a client
 * can resume a download (`If-Range`) or revalidate a copy (`If-None-Match`) safely. Pure.
 */

/** The strong ETag of a blob: its id, which never names other bytes. */
export const blobEtag = (id: string): string => `"${id}"`;

/** `Last-Modified` of a blob created at `createdMs`: an HTTP-date, whole seconds. */
export const lastModified = (createdMs: number): string => new Date(createdMs).toUTCString();

/**
 * Whether `If-None-Match` matches (the client's copy is current: 304). Weak comparison, as the
 * RFC asks for this header: `W/"x"` matches `"x"`; `*` matches any blob that exists.
 *
 * @example noneMatch('W/"blb_a", "blb_b"', '"blb_b"') // true
 */
export function noneMatch(header: string | undefined, etag: string): boolean {
  if (header === undefined) return false;
  if (header.trim() === "*") return true;
  return header.split(",").some((tag) => tag.trim().replace(/^W\//, "") === etag);
}

/**
 * Whether a `Range` may be honoured under `If-Range` (§13.1.5): there is no `If-Range`, or it
 * names this blob's ETag (strong comparison: a weak tag never matches), or exactly its
 * Last-Modified date. Otherwise the client's partial copy is of something else, and it gets the
 * whole blob (200), not a piece to splice onto the wrong bytes.
 *
 * @example ifRangeHolds('"blb_old"', '"blb_new"', 0) // false: send everything
 */
export function ifRangeHolds(header: string | undefined, etag: string, createdMs: number): boolean {
  if (header === undefined) return true;
  const v = header.trim();
  if (v.startsWith('"') || v.startsWith("W/")) return v === etag;
  const date = Date.parse(v);
  return !Number.isNaN(date) && date === Math.floor(createdMs / 1000) * 1000;
}
