import { lookup as dnsLookup } from "node:dns";
import type { LookupFunction } from "node:net";
import { Agent, type Dispatcher, errors as undiciErrors } from "undici";
import { memo } from "../util/memo.js";
import { withoutNul } from "../util/text.js";
import { classifyAddress, isLiteralIp } from "./address.js";

/** How much of a response body an attempt keeps (PRODUCT.md §3). */
export const RESPONSE_BODY_LIMIT = 8 * 1024;

/** How much more is read and thrown away so the connection can be reused; past it, the socket is dropped. */
const DRAIN_LIMIT = 256 * 1024;

/**
 * A receiver's bytes as text for the attempt log. Invalid UTF-8 (a binary body) becomes U+FFFD; a
 * character the 8 KiB cut split in two is left out rather than shown broken; NUL becomes U+FFFD
 * too, because PostgreSQL's text cannot hold it: one receiver answering a NUL byte made every
 * outcome batch it was part of fail, for every endpoint of the process (delivery audit).
 */
function loggableText(bytes: Buffer, cut: boolean): string {
  // `stream` holds back the bytes of an unfinished character; a fresh decoder, as it keeps them.
  return withoutNul(cut ? new TextDecoder().decode(bytes, { stream: true }) : bytes.toString("utf8"));
}

export type ErrorClass =
  | "timeout"
  | "connection_refused"
  | "connection_reset"
  | "dns"
  | "tls"
  | "blocked_address"
  | "http_status"
  | "redirect"
  | "network";

export interface SendResult {
  statusCode: number | null;
  responseBody: string | null;
  responseHeaders: Record<string, string | string[] | undefined>;
  error: ErrorClass | null;
  errorMessage: string | null;
  durationMs: number;
}

class BlockedAddressError extends Error {
  readonly code = "EBLOCKED";
}

/** The reason an attempt past its time is aborted with (classified as `timeout`). */
class AttemptTimeout extends Error {
  override readonly name = "TimeoutError";
}

/**
 * Resolves like dns.lookup, then refuses non-global addresses. Used as the socket's own lookup,
 * so the address checked is the address connected to: a DNS answer that changes between a check
 * and the connection (rebinding) cannot slip through.
 */
export function guardedLookup(): LookupFunction {
  return ((hostname: string, options: object, callback: (...a: unknown[]) => void) => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err);
      const list = addresses as Array<{ address: string; family: number }>;
      const bad = list.find((a) => classifyAddress(a.address) !== "global");
      if (bad) {
        // The class, not the address: the attempt log must not turn the server into a DNS
        // lookup of its own network for whoever owns the endpoint.
        return callback(
          new BlockedAddressError(`${hostname} resolves to a ${classifyAddress(bad.address)} address`),
        );
      }
      const wantAll = (options as { all?: boolean }).all;
      if (wantAll) return callback(null, list);
      const first = list[0]!;
      return callback(null, first.address, first.family);
    });
  }) as LookupFunction;
}

function classify(err: unknown): ErrorClass {
  const e = err as { code?: string; name?: string; cause?: unknown };
  const code = e?.code ?? "";
  if (code === "EBLOCKED" || err instanceof BlockedAddressError) return "blocked_address";
  if (e?.cause && e.cause !== err) {
    const inner = classify(e.cause);
    if (inner !== "network") return inner;
  }
  if (e?.name === "TimeoutError" || e?.name === "AbortError") return "timeout";
  if (err instanceof undiciErrors.HeadersTimeoutError || err instanceof undiciErrors.BodyTimeoutError)
    return "timeout";
  if (
    err instanceof undiciErrors.ConnectTimeoutError ||
    code === "ETIMEDOUT" ||
    code === "UND_ERR_CONNECT_TIMEOUT"
  )
    return "timeout";
  if (code === "ECONNREFUSED") return "connection_refused";
  if (code === "ECONNRESET" || code === "EPIPE" || code === "UND_ERR_SOCKET") return "connection_reset";
  if (code === "ENOTFOUND" || code === "EAI_AGAIN" || code === "EAI_FAIL" || code === "EAI_NODATA")
    return "dns";
  if (
    /^(ERR_TLS|ERR_SSL|CERT_|UNABLE_TO_|DEPTH_ZERO|SELF_SIGNED|ERR_OSSL)/.test(code) ||
    /certificate|TLS|SSL/i.test(String((err as Error)?.message))
  )
    return "tls";
  return "network";
}

/**
 * What an attempt that got no answer says: the error's own text, with the cause spelt out where
 * OpenSSL's says only "wrong version number" (an https:// URL whose port speaks plain HTTP).
 */
function failureMessage(cls: ErrorClass, err: unknown): string {
  const text = withoutNul(String((err as Error)?.message ?? err));
  if (cls === "tls" && /wrong version number|packet length too long|http request/i.test(text))
    return `the endpoint's port does not speak TLS (plain HTTP there?): point the URL at its TLS port, or in dev mode (KLEN_DEV=1) use http:// (${text.trim()})`;
  return text;
}

/** An attempt that got no HTTP answer, and why. */
export function noAnswer(error: ErrorClass, errorMessage: string): Omit<SendResult, "durationMs"> {
  return { statusCode: null, responseBody: null, responseHeaders: {}, error, errorMessage };
}

export interface SenderOptions {
  /** `KLEN_DEV`: loopback and private targets and plain `http://` allowed. */
  dev: boolean;
  /** One timeout for the whole attempt. */
  timeoutMs: number;
  connectionsPerOrigin?: number;
}

/** What the dispatcher sends attempts through: `Sender`, or `ThreadSender` (send-thread.ts). */
/**
 * A rate-limited endpoint's attempts (`key`, its id) start at least `intervalMs` apart. The pacer
 * spaces their launches on the event loop; the sender thread spaces them again where they go out,
 * since a thread that gets no CPU for a while takes two spaced launches in one turn.
 */
export interface Spacing {
  key: string;
  intervalMs: number;
}

export interface AttemptSender {
  /** `spacing`: honoured by the sender thread; `Sender` sends when called (the pacer spaced the calls). */
  send(url: string, headers: Record<string, string>, body: string, spacing?: Spacing): Promise<SendResult>;
  /** Lets attempts in flight finish, then closes the connections. */
  close(): Promise<void>;
  /**
   * Gets ready for the first attempt now rather than when it comes (the sender thread); resolves
   * when ready, or when it gave up trying (then the first attempt tries again).
   */
  warm?(): Promise<void>;
}

/**
 * Posts webhook bodies over keep-alive connection pools, one pool per origin (undici's Agent).
 * Redirects are never followed: a 3xx is a failed attempt.
 */
export class Sender implements AttemptSender {
  private agent: Agent;
  constructor(private opts: SenderOptions) {
    this.agent = new Agent({
      connections: opts.connectionsPerOrigin ?? 64,
      keepAliveTimeout: 30_000,
      keepAliveMaxTimeout: 120_000,
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.timeoutMs,
      connect: {
        timeout: Math.min(opts.timeoutMs, 10_000),
        ...(opts.dev ? {} : { lookup: guardedLookup() }),
      },
    });
  }

  /** Parsed targets by URL (null: not a URL): every attempt would otherwise parse it again. */
  private readonly target = memo((url): URL | null => {
    try {
      return new URL(url);
    } catch {
      return null;
    }
  });

  /**
   * One attempt. Uses undici's dispatch interface with a handler of its own rather than
   * `request()`: no response stream, async iterator or AbortSignal per attempt, which were a
   * fifth of the dispatcher's CPU in profiles of a backlog drain. The timeout is one timer for
   * the whole attempt (waiting for a connection, sending, and reading the response).
   */
  send(url: string, headers: Record<string, string>, body: string): Promise<SendResult> {
    const started = performance.now();
    const done = (r: Omit<SendResult, "durationMs">): SendResult => ({
      ...r,
      durationMs: Math.round(performance.now() - started),
    });
    const failed = (error: ErrorClass, errorMessage: string) => done(noAnswer(error, errorMessage));
    const target = this.target(url);
    if (target === null) return Promise.resolve(failed("network", "invalid URL"));
    if (!this.opts.dev) {
      // Literal IPs never go through lookup, so they are checked here.
      if (isLiteralIp(target.hostname) && classifyAddress(target.hostname) !== "global") {
        const cls = classifyAddress(target.hostname);
        return Promise.resolve(failed("blocked_address", `${target.hostname} is a ${cls} address`));
      }
      if (target.protocol !== "https:")
        return Promise.resolve(failed("blocked_address", "https is required"));
    }
    return new Promise<SendResult>((resolve) => {
      let settled = false;
      let controller: Dispatcher.DispatchController | undefined;
      let statusCode = 0;
      let responseHeaders: SendResult["responseHeaders"] = {};
      const chunks: Buffer[] = [];
      let kept = 0;
      let read = 0;
      /** Read past DRAIN_LIMIT: the connection is dropped, the answer stands. */
      let truncated = false;
      const finish = (r: SendResult) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(r);
      };
      const answered = () => {
        const ok = statusCode >= 200 && statusCode < 300;
        finish(
          done({
            statusCode,
            responseBody: loggableText(Buffer.concat(chunks), read > kept),
            responseHeaders,
            error: ok ? null : statusCode >= 300 && statusCode < 400 ? "redirect" : "http_status",
            errorMessage: ok ? null : `HTTP ${statusCode}`,
          }),
        );
      };
      const timer = setTimeout(() => {
        // An answer whose status came in time stands even if its body did not finish (a receiver
        // that answers 200 and keeps the connection dribbling): as with a body too large to drain,
        // the connection is dropped and the status is the outcome. No status in time: a timeout.
        if (statusCode !== 0) answered();
        else finish(failed("timeout", `no response within ${this.opts.timeoutMs} ms`));
        controller?.abort(new AttemptTimeout());
      }, this.opts.timeoutMs);
      const handler: Dispatcher.DispatchHandler = {
        onRequestStart: (c) => {
          controller = c;
          // Started after the attempt already timed out (it waited for a connection): drop it.
          if (settled) c.abort(new AttemptTimeout());
        },
        onResponseStart: (_c, status, h) => {
          if (status < 200) return; // 1xx informational: the real answer follows
          statusCode = status;
          responseHeaders = h;
        },
        onResponseData: (c, chunk) => {
          read += chunk.length;
          if (kept < RESPONSE_BODY_LIMIT) {
            const part = chunk.subarray(0, RESPONSE_BODY_LIMIT - kept);
            chunks.push(part);
            kept += part.length;
          }
          if (read > DRAIN_LIMIT && !truncated) {
            truncated = true;
            c.abort(new Error("response body too large to drain; connection dropped"));
          }
        },
        onResponseEnd: () => answered(),
        onResponseError: (_c, err) => {
          // The status had come (the connection broke in the body, or was dropped past the drain
          // limit): it stands, as when the body outlasts the timeout.
          if (truncated || statusCode !== 0) return answered();
          if (settled) return;
          const cls = classify(err);
          const message =
            cls === "timeout" ? `no response within ${this.opts.timeoutMs} ms` : failureMessage(cls, err);
          finish(failed(cls, message));
        },
      };
      try {
        this.agent.dispatch(
          {
            origin: target.origin,
            path: `${target.pathname}${target.search}`,
            method: "POST",
            headers,
            body,
          },
          handler,
        );
      } catch (err) {
        const cls = classify(err);
        finish(failed(cls, failureMessage(cls, err)));
      }
    });
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}
