import { ApiError } from "../errors.js";

/** Deeper than any body the API takes (its deepest is an endpoint's `headers` object, two levels). */
const MAX_DEPTH = 32;

const poisoned = (field: string) =>
  new ApiError(
    400,
    "invalid_json",
    'the body has a "__proto__" key or a "constructor" key holding "prototype", which is refused',
    { field, location: "body" },
  );

/**
 * Parses a JSON request body, refusing what a plain `JSON.parse` lets through but the API must
 * not take: prototype-poisoning keys (as Fastify's own parser does), numbers JSON cannot hold
 * (`1e400` parses as Infinity and passes an integer schema) or holds only rounded (integers past
 * 2^53 - 1), strings holding NUL or half a surrogate pair, and nesting past `MAX_DEPTH`.
 */
export function parseJsonBody(text: string): unknown {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ApiError(400, "invalid_json", "the body is not valid JSON", {
      field: "body",
      location: "body",
    });
  }
  check(value, "", 0);
  return value;
}

function check(value: unknown, path: string, depth: number): void {
  if (typeof value === "string") {
    // No text the API keeps has a use for NUL, and PostgreSQL's text cannot hold it (it was a 500).
    if (value.includes("\0")) {
      const field = path || "body";
      throw new ApiError(400, "invalid_request", `"${field}" contains a NUL character (\\u0000)`, {
        field,
        location: "body",
      });
    }
    // An escaped half of a surrogate pair (`"\ud800"`) is no character: UTF-8 cannot store it, and
    // each database would replace it differently.
    if (!(value as string & { isWellFormed(): boolean }).isWellFormed()) {
      const field = path || "body";
      throw new ApiError(
        400,
        "invalid_request",
        `"${field}" contains an unpaired surrogate (\\ud800–\\udfff)`,
        {
          field,
          location: "body",
        },
      );
    }
    return;
  }
  if (typeof value === "number") {
    // Infinity, and integers past 2^53 - 1 that JSON.parse has already rounded (an id of
    // 9007199254740993 would silently become another id).
    if (!Number.isFinite(value) || (Number.isInteger(value) && !Number.isSafeInteger(value))) {
      const field = path || "body";
      throw new ApiError(400, "invalid_request", `"${field}" is out of range`, { field, location: "body" });
    }
    return;
  }
  if (value === null || typeof value !== "object") return;
  if (depth >= MAX_DEPTH) {
    throw new ApiError(400, "invalid_request", `the body is nested more than ${MAX_DEPTH} levels deep`, {
      field: path || "body",
      location: "body",
    });
  }
  const array = Array.isArray(value);
  for (const [k, v] of Object.entries(value)) {
    if (!array && (k === "__proto__" || (k === "constructor" && isObjectWith(v, "prototype"))))
      throw poisoned(path || "body");
    // An element is named as schema errors name it (errors.ts): `agent_ids.1`.
    check(v, path ? `${path}.${k}` : k, depth + 1);
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * The body's bytes as text, refusing bytes that are not UTF-8 (RFC 8259 §8.1) rather than turning
 * them into U+FFFD: the API would otherwise store text the client never sent.
 */
export function decodeJsonBody(bytes: Uint8Array): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw new ApiError(400, "invalid_json", "the body is not valid UTF-8", {
      field: "body",
      location: "body",
    });
  }
}

/**
 * JSON is UTF-8 (RFC 8259 §8.1): a body declared in another charset would otherwise be read as
 * UTF-8 and its text stored changed, so it is a 415 naming the header. No charset, UTF-8 and
 * US-ASCII are taken; so is any other charset when the body is plain ASCII (which reads the same
 * in UTF-8), except UTF-16 and UTF-32, whose every text differs.
 */
export function refuseCharset(contentType: string | undefined, body: Uint8Array): void {
  const declared = charsetOf(contentType ?? "");
  if (declared === undefined) return;
  const charset = declared.toLowerCase();
  if (["utf-8", "utf8", "us-ascii", "ascii"].includes(charset)) return;
  if (!ALWAYS_DIFFERENT.test(charset) && body.every((b) => b < 0x80)) return;
  throw new ApiError(
    415,
    "unsupported_media_type",
    `the API takes JSON in UTF-8, not charset "${declared}"`,
    {
      field: "content-type",
    },
  );
}

/** Charsets in which no text reads as in UTF-8, or ASCII text not as itself (UTF-7's "+"). */
const ALWAYS_DIFFERENT = /^(utf-?(7|16|32)|ucs-?[24]|unicode|iso-10646-ucs-|csunicode)/;

/** The `charset` parameter of a media type (RFC 9110 §5.6.6: token or quoted string), if any. */
function charsetOf(contentType: string): string | undefined {
  // Parameters one by one, so that a quoted value holding ";" or "charset=" is not taken for one.
  const param = /;\s*([^=;\s]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))/g;
  for (let m = param.exec(contentType); m; m = param.exec(contentType)) {
    if (m[1]!.toLowerCase() !== "charset") continue;
    const value = m[2] !== undefined ? m[2].replace(/\\(.)/g, "$1") : (m[3] ?? "");
    // 'utf-8' in single quotes is no valid parameter, but clear enough to take.
    return value.trim().replace(/^'(.*)'$/, "$1");
  }
  return undefined;
}

function isObjectWith(v: unknown, key: string): boolean {
  return v !== null && typeof v === "object" && Object.hasOwn(v, key);
}
