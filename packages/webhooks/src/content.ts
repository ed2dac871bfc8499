/**
 * The full transcript or summary of an event, whether it came inline or, past the sender's
 * inline limit (64 KiB by default), behind a pre-signed `transcript_url` / `summary_url`.
 */

import { byteLimit } from "./adapters/body.js";
import { brand, isBranded } from "./errors.js";
import type { CallEndedEvent, CallSummaryEvent, CallTranscriptEvent } from "./events.js";

/** Events that carry text content. */
export type ContentEvent = CallTranscriptEvent | CallSummaryEvent | CallEndedEvent;

/** Options of `fetchContent`. */
export interface FetchContentOptions {
  /**
   * Largest body accepted, in bytes. Default 10 MiB: far above any real transcript, low
   * enough that a wrong URL cannot fill the receiver's memory.
   */
  readonly maxBytes?: number;
  /** Timeout of the whole download, in milliseconds. Default 30 000. */
  readonly timeoutMs?: number;
  /** Aborts the download. */
  readonly signal?: AbortSignal;
  /** The `fetch` to use. Default: the global one. */
  readonly fetch?: typeof fetch;
  /**
   * The Klen API, to get a URL made now when the event's own has expired (a URL is valid for the
   * server's KLEN_URL_TTL, 7 days by default, from the event; a replayed or long-retried event can
   * be older): its base URL and an API key of the account. On a `403` `expired`, `fetchContent`
   * asks `GET /v1/calls/{id}/media` for the same content's current URL and downloads that. Without
   * it, an expired URL is a `ContentFetchError` with `reason` `"expired"`.
   */
  readonly api?: { readonly url: string; readonly key: string };
}

/** Why `fetchContent` failed. */
export type ContentFetchErrorCode =
  | "http_status"
  | "too_large"
  | "timeout"
  | "aborted"
  | "network"
  | "no_content";

/**
 * Raised by `fetchContent`; `cause` holds the underlying error where there is one.
 *
 * @example
 * ```ts
 * catch (err) {
 *   // A URL past its validity (KLEN_URL_TTL, 7 days by default): the event is older than that.
 *   if (err instanceof ContentFetchError && err.status === 403 && err.reason === "expired") …
 * }
 * ```
 */
export class ContentFetchError extends Error {
  override readonly name = "ContentFetchError";
  readonly code: ContentFetchErrorCode;
  /** The HTTP status, for `http_status`. */
  readonly status: number | undefined;
  /**
   * For `http_status`, the reason the Klen server gave, when it gave one: on a 403 `expired` (the
   * URL outlived its validity), `bad_signature` or `malformed` (the URL was altered); with the
   * `api` option, the API's error code (`unauthorized`, `not_found`: the call or its content is
   * no longer there).
   */
  readonly reason: string | undefined;

  constructor(
    code: ContentFetchErrorCode,
    message: string,
    options?: { cause?: unknown; status?: number; reason?: string },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.status = options?.status;
    this.reason = options?.reason;
    brand(this, "ContentFetchError");
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    return isBranded(value, "ContentFetchError");
  }
}

const MiB = 1024 * 1024;

/** The inline text or the URL to fetch it from. */
function source(event: ContentEvent): { text: string } | { url: string } {
  const call = event.call as {
    transcript?: string;
    transcript_url?: string;
    summary?: string;
    summary_url?: string;
  };
  if (event.event_type === "call.transcript") {
    if (typeof call.transcript === "string") return { text: call.transcript };
    if (typeof call.transcript_url === "string") return { url: call.transcript_url };
  } else {
    if (typeof call.summary === "string") return { text: call.summary };
    if (typeof call.summary_url === "string") return { url: call.summary_url };
  }
  throw new ContentFetchError("no_content", `${event.event_type} event carries no content`);
}

/**
 * Returns the full transcript (`call.transcript`) or summary (`call.summary`, or the brief one
 * of `call.ended`), downloading it when the event only has a URL.
 *
 * @example
 * ```ts
 * if (event.event_type === "call.transcript") {
 *   const transcript = await fetchContent(event, { timeoutMs: 10_000 });
 * }
 * ```
 */
export async function fetchContent(event: ContentEvent, opts: FetchContentOptions = {}): Promise<string> {
  // The caller's own mistakes first, inline content or not.
  const maxBytes = byteLimit(opts.maxBytes, "maxBytes", 10 * MiB);
  const src = source(event);
  if ("text" in src) return src.text;

  const timeout = AbortSignal.timeout(opts.timeoutMs ?? 30_000);
  const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
  const doFetch = opts.fetch ?? globalThis.fetch;
  const fail = (cause: unknown): ContentFetchError =>
    cause instanceof ContentFetchError
      ? cause
      : opts.signal?.aborted
        ? new ContentFetchError("aborted", "Downloading the content was aborted", { cause })
        : timeout.aborted
          ? new ContentFetchError("timeout", "Downloading the content timed out", { cause })
          : new ContentFetchError("network", "Downloading the content failed", { cause });

  const download = async (from: string): Promise<string> => {
    let response: Response;
    try {
      response = await doFetch(from, {
        signal,
        headers: { accept: "text/plain, application/json;q=0.9, */*;q=0.1" },
      });
    } catch (cause) {
      throw fail(cause);
    }
    try {
      if (!response.ok) throw await statusError(response, "Content URL");
      const declared = Number(response.headers.get("content-length"));
      if (declared > maxBytes) throw tooLarge(maxBytes);
      return await readText(response, maxBytes);
    } catch (cause) {
      // Stop the transfer rather than let it run to the end in the background.
      await response.body?.cancel().catch(() => {});
      throw fail(cause);
    }
  };

  try {
    return await download(src.url);
  } catch (err) {
    if (!opts.api || !(err instanceof ContentFetchError) || err.reason !== "expired") throw err;
    let fresh: string;
    try {
      fresh = await currentUrl(event, src.url, opts.api, doFetch, signal);
    } catch (cause) {
      const failed = fail(cause);
      // Not the content's URL that failed: say so.
      throw failed.code === "network"
        ? new ContentFetchError("network", "Asking the Klen API for a current URL failed", { cause })
        : failed;
    }
    return download(fresh);
  }
}

/** One item of the Klen API's `GET /v1/calls/{id}/media`, as far as read here. */
interface MediaItem {
  id?: unknown;
  url?: unknown;
}

/**
 * The URL made now of the content an expired URL named (the same blob id), from the Klen API's
 * list of the call's stored content.
 */
async function currentUrl(
  event: ContentEvent,
  expired: string,
  api: { readonly url: string; readonly key: string },
  doFetch: typeof fetch,
  signal: AbortSignal,
): Promise<string> {
  const blobId = decodeURIComponent(new URL(expired).pathname.split("/").pop() ?? "");
  const response = await doFetch(`${api.url.replace(/\/+$/, "")}/v1/calls/${event.call.id}/media`, {
    signal,
    headers: { accept: "application/json", authorization: `Bearer ${api.key}` },
  });
  if (!response.ok) throw await statusError(response, "The Klen API", true);
  let items: MediaItem[];
  try {
    items = ((await response.json()) as { data: MediaItem[] }).data;
    if (!Array.isArray(items)) throw new TypeError("no data list");
  } catch (cause) {
    throw new ContentFetchError(
      "http_status",
      "The Klen API answered what is not its list of a call's media",
      {
        cause,
        status: response.status,
      },
    );
  }
  const item = items.find((m) => m.id === blobId);
  if (typeof item?.url !== "string")
    throw new ContentFetchError(
      "http_status",
      `The Klen API lists no ${blobId} for call ${event.call.id}: the content is no longer stored`,
      { status: 404, reason: "not_found" },
    );
  return item.url;
}

/**
 * The error for a non-2xx answer, with the Klen server's own explanation when the body is its
 * error JSON (`{"error":{"message","details":{"reason"}}}`), so that an expired URL can be told
 * from an altered one.
 */
async function statusError(response: Response, who: string, api = false): Promise<ContentFetchError> {
  let message: string | undefined;
  let reason: string | undefined;
  try {
    const body = JSON.parse(await readText(response, 8 * 1024)) as {
      error?: { code?: unknown; message?: unknown; details?: { reason?: unknown } };
    };
    if (typeof body.error?.message === "string") message = body.error.message;
    if (typeof body.error?.details?.reason === "string") reason = body.error.details.reason;
    // The API's own answers say why by their code (`not_found`: an unknown call).
    else if (api && typeof body.error?.code === "string") reason = body.error.code;
  } catch {
    // Not the server's error JSON (a proxy's page, say): the status alone.
  }
  return new ContentFetchError(
    "http_status",
    `${who} answered ${response.status}${message ? `: ${message}` : ""}`,
    { status: response.status, ...(reason ? { reason } : {}) },
  );
}

function tooLarge(maxBytes: number): ContentFetchError {
  return new ContentFetchError("too_large", `Content is larger than ${maxBytes} bytes`);
}

/** Reads the body as UTF-8, stopping as soon as it passes `maxBytes` (Content-Length may lie or be absent). */
async function readText(response: Response, maxBytes: number): Promise<string> {
  if (!response.body) return "";
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let received = 0;
  let text = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    received += value.byteLength;
    if (received > maxBytes) {
      // Stop the transfer: the caller's own cancel cannot, while this reader holds the stream.
      await reader.cancel().catch(() => {});
      throw tooLarge(maxBytes);
    }
    text += decoder.decode(value, { stream: true });
  }
  return text + decoder.decode();
}
