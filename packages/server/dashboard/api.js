// The dashboard's only way to the server: same-origin fetches to /v1 with the signed-in API key.
// The key lives in sessionStorage, so it is gone when the tab closes and never leaves this origin.

const KEY = "klen.apiKey";

/** An error answer of the API: `{"error":{code,message,details}}`. */
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  set(key) {
    sessionStorage.setItem(KEY, key);
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
};

let onUnauthorized = () => {};
/** Called when the key stops working (revoked, or a new server): the app signs out. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

const RATE_LIMIT_WAIT_MS = 10_000;

/** `Retry-After` in delay-seconds, or undefined when absent or not a number (an HTTP date). */
function retryAfterSeconds(value) {
  if (value === null || !/^\s*\d+(\.\d+)?\s*$/.test(value)) return undefined;
  return Number(value);
}

/** How long to wait before trying again: the delay-seconds given (at least 0.2 s), else 1 s. */
function retryAfterMs(value) {
  const seconds = retryAfterSeconds(value);
  return seconds === undefined ? 1000 : Math.max(seconds, 0.2) * 1000;
}

/**
 * Calls the API and returns the parsed JSON body; throws ApiError for non-2xx answers.
 * @param {string} method
 * @param {string} path e.g. `/v1/endpoints`
 * @param {unknown} [body]
 * @param {{key?: string}} [opts] `key` to try a key before it is stored (sign-in)
 */
export async function api(method, path, body, opts = {}) {
  const key = opts.key ?? session.key;
  // Signed out meanwhile (a poll still running): nothing to send, and no reason to sign out again.
  if (!key) throw new ApiError(401, "signed_out", "Signed out.");
  const headers = { authorization: `Bearer ${key}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  // One key for every try of this request, so a POST tried again after a 429 acts once.
  if (method === "POST") headers["idempotency-key"] = crypto.randomUUID();
  let res;
  for (let waited = 0; ; ) {
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError(0, "network_error", `Cannot reach the server (${err.message})`);
    }
    // Over the server's rate limit (KLEN_RATE_LIMIT): wait as its Retry-After says and try again,
    // up to RATE_LIMIT_WAIT_MS in all; past that the 429 is shown, with the wait it asked for.
    if (res.status !== 429) break;
    const wait = retryAfterMs(res.headers.get("retry-after"));
    if (waited + wait > RATE_LIMIT_WAIT_MS) break;
    await res.arrayBuffer().catch(() => undefined);
    await new Promise((r) => setTimeout(r, wait));
    waited += wait;
  }
  const text = await res.text();
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  if (!res.ok) {
    const e = json?.error ?? {};
    const retry = res.status === 429 ? retryAfterSeconds(res.headers.get("retry-after")) : undefined;
    const err = new ApiError(
      res.status,
      e.code ?? "http_error",
      retry !== undefined
        ? `${e.message ?? "Too many requests"}: try again in ${retry} s`
        : (e.message ?? `HTTP ${res.status}`),
      e.details,
    );
    // Only a refusal of the key this tab is signed in with now: not of one it has since left.
    if (res.status === 401 && opts.key === undefined && key === session.key) onUnauthorized(err);
    throw err;
  }
  return json;
}

/** Builds `/v1/x?a=1` leaving out empty values. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params))
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/** A human sentence for an error, naming the field when the API did. */
export function describe(err) {
  if (!(err instanceof ApiError)) return String(err?.message ?? err);
  const field = err.details?.field ? ` (${err.details.field})` : "";
  return `${err.message}${field}`;
}
