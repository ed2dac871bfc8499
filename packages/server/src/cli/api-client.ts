import { randomUUID } from "node:crypto";
import { InvalidArgumentError } from "commander";
import { parseRetryAfter } from "../delivery/schedule.js";
import { VERSION } from "../version.js";
import type { Output } from "./output.js";

/** A failed API call: the server's stable error `code` and the field at fault, when it named one. */
export class ApiRequestError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "ApiRequestError";
  }
}

/**
 * A failure a follower (`test-call --wait`, `endpoints recover --wait`) waits out until its
 * --timeout: the server restarting or briefly overloaded, not what it says of the request itself.
 */
function isPassing(err: unknown): boolean {
  return (
    err instanceof ApiRequestError &&
    (err.code === "connection_failed" || err.code === "timeout" || err.status >= 500)
  );
}

/**
 * What a follower does: polls until `poll` says done or `timeoutMs` passes, 100 ms apart, backing
 * off to 1 s. A passing failure (a server restarting) is waited out, said once as `who`; any
 * other, or one after the deadline, is thrown. Answers the last answer of `poll`.
 */
export async function pollUntil<T>(
  out: Output,
  who: string,
  timeoutMs: number,
  poll: () => Promise<{ done: boolean; value: T }>,
): Promise<{ done: boolean; value: T }> {
  const deadline = Date.now() + timeoutMs;
  let unreachable = false;
  for (let delay = 100; ; delay = Math.min(1_000, delay * 1.5)) {
    let r: { done: boolean; value: T };
    try {
      r = await poll();
      unreachable = false;
    } catch (err) {
      if (!isPassing(err) || Date.now() > deadline) throw err;
      if (!unreachable)
        out.warn(`klen-webhooks ${who}: ${(err as Error).message}; trying again until --timeout`);
      unreachable = true;
      await new Promise((res) => setTimeout(res, delay));
      continue;
    }
    if (r.done || Date.now() > deadline) return r;
    await new Promise((res) => setTimeout(res, delay));
  }
}

export interface ClientOptions {
  apiUrl: string;
  apiKey?: string | undefined;
  /** Per request; a server that takes the connection and never answers is an error, not a hang. Default 30 s. */
  timeoutMs?: number;
  /** How long, in all, one request may wait out `429` answers' `Retry-After`. Default 60 s. */
  maxRateLimitWaitMs?: number;
}

/** How long a `429`'s `Retry-After` asks to wait: between 1 and 60 s, 1 s when absent or unreadable. */
export function retryAfterMs(value: string | null): number {
  return Math.min(60_000, Math.max(1_000, parseRetryAfter(value ?? undefined, Date.now()) ?? 0));
}

/** `--api-url` without a trailing slash, checked early so a typo is an error, not a hang. */
export function normalizeApiUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new InvalidArgumentError(`--api-url "${raw}" is not a URL (e.g. http://localhost:8080)`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new InvalidArgumentError(`--api-url must be http:// or https://, got "${raw}"`);
  if (url.username || url.password)
    throw new InvalidArgumentError(
      "--api-url must not hold a user name or password: the API key goes in --api-key",
    );
  if (url.search || url.hash)
    throw new InvalidArgumentError(
      `--api-url is the server's base URL, without ?query or #fragment (e.g. ${url.origin})`,
    );
  return url.toString().replace(/\/+$/, "");
}

/**
 * The CLI's client for the server's API: bearer auth, JSON in and out, errors as
 * {@link ApiRequestError}. Every state-changing POST carries a fresh Idempotency-Key so that a
 * retried request never drives a call twice.
 */
export function apiClient(opts: ClientOptions) {
  const base = normalizeApiUrl(opts.apiUrl);
  if (!opts.apiKey) throw new Error("no API key: pass --api-key or set KLEN_API_KEY");
  const key = opts.apiKey;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const maxRateLimitWaitMs = opts.maxRateLimitWaitMs ?? 60_000;
  const headers = (extra: Record<string, string> = {}) => ({
    authorization: `Bearer ${key}`,
    "user-agent": `klen-webhooks-cli/${VERSION}`,
    ...extra,
  });

  async function request<T>(
    method: string,
    path: string,
    body?: { json: unknown } | { bytes: Uint8Array; contentType: string },
    idempotencyKey: string = randomUUID(),
  ): Promise<T> {
    const extra: Record<string, string> = {};
    let payload: string | Blob | undefined;
    if (body && "json" in body) {
      extra["content-type"] = "application/json";
      payload = JSON.stringify(body.json);
    } else if (body) {
      extra["content-type"] = body.contentType;
      payload = new Blob([new Uint8Array(body.bytes)]);
    }
    // One key for every try of this request, so a POST retried after a 429 cannot act twice.
    if (method !== "GET") extra["idempotency-key"] = idempotencyKey;
    const timedOut = (cause: unknown) =>
      new ApiRequestError(
        0,
        "timeout",
        `${method} ${path}: no answer from ${base} within ${timeoutMs / 1000} s`,
        undefined,
        {
          cause,
        },
      );
    let res: Response;
    for (let waited = 0; ; ) {
      try {
        res = await fetch(`${base}${path}`, {
          method,
          headers: headers(extra),
          body: payload,
          signal: AbortSignal.timeout(timeoutMs),
        });
      } catch (err) {
        if ((err as Error).name === "TimeoutError") throw timedOut(err);
        const cause = (err as { cause?: { code?: string; message?: string } }).cause;
        throw new ApiRequestError(
          0,
          "connection_failed",
          `cannot reach the server at ${base} (${cause?.code ?? cause?.message ?? (err as Error).message}); is it running? (--api-url)`,
          undefined,
          { cause: err },
        );
      }
      // Over the server's KLEN_RATE_LIMIT: wait as told and try again, within a bound.
      if (res.status !== 429) break;
      const wait = retryAfterMs(res.headers.get("retry-after"));
      if (waited + wait > maxRateLimitWaitMs) break;
      await res.arrayBuffer().catch(() => undefined);
      await new Promise((r) => setTimeout(r, wait));
      waited += wait;
    }
    // The timeout covers the answer's body too.
    const text = await res.text().catch((err: Error) => {
      throw err.name === "TimeoutError" ? timedOut(err) : err;
    });
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    const e = (
      json as { error?: { code?: string; message?: string; details?: { field?: string } } } | undefined
    )?.error;
    // Every answer of the API is JSON, its errors `{"error":{…}}`: anything else is another server
    // at --api-url (a 5xx keeps its status code: a proxy in front of a restarting server).
    // A 405: the CLI sends each path the method the API takes there, so this is another server,
    // one whose errors may look like the API's (a receiver made with the SDK's adapters).
    if (json === undefined || (!res.ok && typeof e?.code !== "string") || res.status === 405) {
      // What an error answer said, after the hint (the output escapes it: any server's text).
      const said = !res.ok && text.trim() ? ` It said: ${text.trim().slice(0, 200)}` : "";
      throw new ApiRequestError(
        res.status,
        res.status >= 500 ? `http_${res.status}` : "not_klen_api",
        `${method} ${path}: ${base} answered ${res.status} ${res.headers.get("content-type") ?? "without a content type"}, not the Klen API's JSON; is --api-url the Klen server?${said}`,
      );
    }
    if (!res.ok) {
      // The key is the usual culprit of a 401: say where it comes from.
      const hint = res.status === 401 ? " (the key comes from --api-key or KLEN_API_KEY)" : "";
      throw new ApiRequestError(
        res.status,
        e!.code!,
        `${method} ${path}: ${res.status} ${e?.message ?? res.statusText}${hint}`,
        e?.details?.field,
      );
    }
    return json as T;
  }

  return {
    base,
    key,
    get: <T>(path: string) => request<T>("GET", path),
    /** A POST; `idempotencyKey` (default: a fresh one) makes concurrent or repeated runs one. */
    post: <T>(path: string, json: unknown = {}, idempotencyKey?: string) =>
      request<T>("POST", path, { json }, idempotencyKey),
    patch: <T>(path: string, json: unknown) => request<T>("PATCH", path, { json }),
    delete: <T>(path: string) => request<T>("DELETE", path),
    upload: <T>(path: string, bytes: Uint8Array, contentType: string) =>
      request<T>("POST", path, { bytes, contentType }),
    /** A raw streaming GET (the event stream), with auth. */
    stream: (path: string, extra: Record<string, string>, signal: AbortSignal) =>
      fetch(`${base}${path}`, { headers: headers({ accept: "text/event-stream", ...extra }), signal }),
  };
}
export type ApiClient = ReturnType<typeof apiClient>;

/** The API's objects as far as the CLI reads them. */
export interface CallObject {
  id: number;
  status: string;
  started_at: string | null;
  has_transcript?: boolean;
  has_summary?: boolean;
  has_recording?: boolean;
}
export interface EventObject {
  id: string;
  event_type: string;
  call_id: number;
  payload: unknown;
  created_at: string;
}
export interface DeliveryObject {
  id: string;
  event_id: string;
  endpoint_id: string;
  status: string;
  attempts: Array<{
    number: number;
    status_code: number | null;
    error: string | null;
    duration_ms: number;
    error_message?: string | null;
    response_body?: string | null;
  }>;
  next_attempt_at: string | null;
  /** Set while a worker sends its attempt (older servers leave it out). */
  sending_since?: string | null;
}
export interface Page<T> {
  data: T[];
  next_cursor: string | null;
}

/** Every item of a list route, following `next_cursor` (lists are newest first). */
export async function listAll<T>(client: ApiClient, path: string, max = 1000): Promise<T[]> {
  const out: T[] = [];
  let cursor: string | null = null;
  const sep = path.includes("?") ? "&" : "?";
  do {
    const page: Page<T> = await client.get<Page<T>>(
      `${path}${sep}limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`,
    );
    out.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor && out.length < max);
  return out;
}

/** An attempt's detail: the error's, or for an HTTP answer the start of the response body. */
export function attemptDetail(a: DeliveryObject["attempts"][number]): string {
  if (a.error !== null && a.error !== "http_status") return a.error_message ?? "";
  const body = (a.response_body ?? "").replace(/\s+/g, " ").trim();
  return body.length > 100 ? `${body.slice(0, 100)}…` : body;
}
