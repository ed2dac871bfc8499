import { lookup as dnsLookup } from "node:dns";
import type { LookupFunction } from "node:net";
import { Agent, errors as undiciErrors } from "undici";
import { classifyAddress, isLiteralIp } from "./address.js";

/** How much of a response body an attempt keeps (PRODUCT.md §3). */
export const RESPONSE_BODY_LIMIT = 8 * 1024;
/** How much more is read and thrown away so the connection can be reused; past it, the socket is dropped. */
const DRAIN_LIMIT = 256 * 1024;

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
        return callback(
          new BlockedAddressError(
            `${hostname} resolves to ${classifyAddress(bad.address)} address ${bad.address}`,
          ),
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
 * Posts webhook bodies over keep-alive connection pools, one pool per origin (undici's Agent).
 * Redirects are never followed: a 3xx is a failed attempt.
 */
export class Sender {
  private agent: Agent;
  constructor(private opts: { dev: boolean; timeoutMs: number; connectionsPerOrigin?: number }) {
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

  async send(url: string, headers: Record<string, string>, body: string): Promise<SendResult> {
    const started = performance.now();
    const done = (r: Omit<SendResult, "durationMs">): SendResult => ({
      ...r,
      durationMs: Math.round(performance.now() - started),
    });
    let target: URL;
    try {
      target = new URL(url);
    } catch {
      return done({
        statusCode: null,
        responseBody: null,
        responseHeaders: {},
        error: "network",
        errorMessage: "invalid URL",
      });
    }
    if (!this.opts.dev) {
      // Literal IPs never go through lookup, so they are checked here.
      if (isLiteralIp(target.hostname) && classifyAddress(target.hostname) !== "global") {
        return done({
          statusCode: null,
          responseBody: null,
          responseHeaders: {},
          error: "blocked_address",
          errorMessage: `${target.hostname} is a ${classifyAddress(target.hostname)} address`,
        });
      }
      if (target.protocol !== "https:") {
        return done({
          statusCode: null,
          responseBody: null,
          responseHeaders: {},
          error: "blocked_address",
          errorMessage: "https is required",
        });
      }
    }
    const signal = AbortSignal.timeout(this.opts.timeoutMs);
    try {
      const res = await this.agent.request({
        origin: target.origin,
        path: `${target.pathname}${target.search}`,
        method: "POST",
        headers,
        body,
        signal,
      });
      const chunks: Buffer[] = [];
      let kept = 0;
      let read = 0;
      for await (const chunk of res.body) {
        const buf = chunk as Buffer;
        read += buf.length;
        if (kept < RESPONSE_BODY_LIMIT) {
          const part = buf.subarray(0, RESPONSE_BODY_LIMIT - kept);
          chunks.push(part);
          kept += part.length;
        }
        if (read > DRAIN_LIMIT) {
          res.body.destroy();
          break;
        }
      }
      const status = res.statusCode;
      const ok = status >= 200 && status < 300;
      return done({
        statusCode: status,
        responseBody: Buffer.concat(chunks).toString("utf8"),
        responseHeaders: res.headers,
        error: ok ? null : status >= 300 && status < 400 ? "redirect" : "http_status",
        errorMessage: ok ? null : `HTTP ${status}`,
      });
    } catch (err) {
      const cls = classify(err);
      const message =
        cls === "timeout"
          ? `no response within ${this.opts.timeoutMs} ms`
          : String((err as Error).message ?? err);
      return done({
        statusCode: null,
        responseBody: null,
        responseHeaders: {},
        error: cls,
        errorMessage: message,
      });
    }
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}
