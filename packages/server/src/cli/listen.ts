import { randomBytes } from "node:crypto";
import { EVENT_TYPES } from "@klen/webhooks/schemas";
import { InvalidArgumentError } from "commander";
import { attemptHeaders, secretKey } from "../delivery/sign.js";
import { VERSION } from "../version.js";
import { type ApiClient, ApiRequestError, retryAfterMs } from "./api-client.js";
import { type Output, statusText } from "./output.js";
import { type SseMessage, SseParser } from "./sse.js";

/** A local signing secret like an endpoint's: `whsec_` + base64 of 32 random bytes. */
export function newLocalSecret(): string {
  return `whsec_${randomBytes(32).toString("base64")}`;
}

/**
 * Checks a `--secret` (or `KLEN_WEBHOOK_SECRET`, named as `from`): `whsec_<base64>` of at least 24
 * bytes, what verifying libraries expect.
 */
export function checkSecret(secret: string, from = "--secret"): string {
  const m = /^whsec_([A-Za-z0-9+/]+={0,2})$/.exec(secret);
  if (!m || Buffer.from(m[1]!, "base64").length < 24)
    throw new InvalidArgumentError(`${from} must be whsec_ followed by the base64 of at least 24 bytes`);
  return secret;
}

/** `--events call.started,call.ended` → the list, checked against the six event types. */
export function parseEventList(raw: string | undefined, option = "--events"): string[] | undefined {
  if (raw === undefined || raw.trim() === "" || raw.trim() === "*") return undefined;
  const list = raw.split(",").map((s) => s.trim());
  for (const t of list)
    if (!(EVENT_TYPES as readonly string[]).includes(t))
      throw new InvalidArgumentError(`${option}: unknown event type "${t}"; use ${EVENT_TYPES.join(", ")}`);
  return list;
}

export interface ListenOptions {
  client: ApiClient;
  forwardTo: string;
  events: string[] | undefined;
  secret: string;
  /** Start after this event id (older events are forwarded first) instead of at the tail. */
  after?: string | undefined;
  /** Where a secret that was given came from (not printed then); undefined for a new one. */
  secretFrom?: "KLEN_WEBHOOK_SECRET" | "--secret" | undefined;
  out: Output;
  /** Aborting stops the loop (Ctrl-C). */
  signal: AbortSignal;
  /** Per forwarded request. */
  forwardTimeoutMs?: number;
  /** Reconnect backoff bounds. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** The server heartbeats every 15 s; silence this long means a dead connection. */
  idleTimeoutMs?: number;
  /** How long the server may take to answer the stream's request before the attempt counts as failed. */
  connectTimeoutMs?: number;
}

export interface Forwarded {
  event_id: string;
  event_type: string;
  url: string;
  status: number | null;
  error: string | null;
  duration_ms: number;
  /** The start of the receiver's answer when it was not a 2xx (why it refused), else null. */
  response_body: string | null;
}

/**
 * POSTs one event, signed with the local secret, to the local URL. Never throws. `signal` (Ctrl-C)
 * ends a forward still waiting for the receiver, whose error is then `aborted`.
 */
export async function forwardEvent(
  opts: Pick<ListenOptions, "forwardTo" | "secret" | "forwardTimeoutMs"> & { signal?: AbortSignal },
  msg: { id: string; type: string; body: string },
): Promise<Forwarded> {
  const headers = attemptHeaders({
    id: msg.id,
    timestampSeconds: Math.floor(Date.now() / 1000),
    body: msg.body,
    keys: [secretKey(opts.secret)],
    userAgent: `klen-webhooks-cli/${VERSION} (listen)`,
    custom: {},
  });
  const t0 = performance.now();
  const result = (status: number | null, error: string | null, body: string | null = null): Forwarded => ({
    event_id: msg.id,
    event_type: msg.type,
    url: opts.forwardTo,
    status,
    error,
    duration_ms: Math.round(performance.now() - t0),
    response_body: body,
  });
  try {
    const res = await fetch(opts.forwardTo, {
      method: "POST",
      headers,
      body: msg.body,
      redirect: "manual",
      signal: AbortSignal.any([
        AbortSignal.timeout(opts.forwardTimeoutMs ?? 30_000),
        ...(opts.signal ? [opts.signal] : []),
      ]),
    });
    const text = await res.text().catch(() => "");
    // Cut by characters, not UTF-16 units: half of one would not be valid in the --json line.
    const start = [...text.trim()].slice(0, 300).join("");
    return result(res.status, null, res.ok || start === "" ? null : start);
  } catch (err) {
    const e = err as Error & { cause?: { code?: string; message?: string } };
    if (e.name === "TimeoutError") return result(null, "timeout");
    if (opts.signal?.aborted) return result(null, "aborted");
    return result(null, e.cause?.code ?? e.cause?.message ?? e.message);
  }
}

/** The terminal's clock, as `stripe listen` shows it: local time of day (UTC where TZ is unset). */
export const timeOfDay = (d = new Date()) =>
  [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");

/**
 * The `stripe listen` loop: streams the account's events from `GET /v1/events/stream` and forwards
 * each one to `forwardTo`. The connection is re-opened with exponential backoff whenever it drops
 * (server restart, network), resuming with `Last-Event-ID` after the last event seen, so nothing
 * is skipped and nothing is forwarded twice by one listener. Resolves when `signal` aborts; rejects
 * only on errors a retry cannot fix (bad API key, bad request).
 */
export async function listen(opts: ListenOptions): Promise<void> {
  const { client, out, signal } = opts;
  const minBackoff = opts.minBackoffMs ?? 250;
  const maxBackoff = opts.maxBackoffMs ?? 3_000;
  const idleTimeout = opts.idleTimeoutMs ?? 45_000;
  const connectTimeout = opts.connectTimeoutMs ?? 10_000;
  const query = opts.events ? `?event_types=${encodeURIComponent(opts.events.join(","))}` : "";
  let lastId: string | undefined = opts.after;
  let backoff = minBackoff;
  let connectedOnce = false;
  let lostSince: number | undefined;
  /** The last refusal's Retry-After (ms): the next try waits at least this long. */
  let retryAfter = 0;

  const handle = async (m: SseMessage) => {
    if (m.event === "ready") {
      if (m.id) lastId = m.id;
      return;
    }
    if (!m.id || !(EVENT_TYPES as readonly string[]).includes(m.event)) return;
    // The server filters by --events too; checked here as well, so no other server's stream can
    // send more than was asked for.
    if (opts.events && !opts.events.includes(m.event)) {
      lastId = m.id;
      return;
    }
    const f = await forwardEvent(opts, { id: m.id, type: m.event, body: m.data });
    // Ctrl-C during the forward: stop at once, print nothing more (the event was not seen through).
    if (signal.aborted) return;
    lastId = m.id;
    if (out.json) out.data({ type: "forwarded", ...f });
    else
      out.line(
        `${out.dim(timeOfDay())}  ${m.event.padEnd(15)} ${out.dim(m.id)}  → ${statusText(out, f.status, f.error)} ${out.dim(`POST ${f.url} (${f.duration_ms} ms)`)}${f.response_body ? `  ${f.response_body}` : ""}`,
      );
  };

  while (!signal.aborted) {
    const conn = new AbortController();
    const stop = () => conn.abort();
    signal.addEventListener("abort", stop, { once: true });
    let idle: NodeJS.Timeout | undefined;
    const touch = () => {
      clearTimeout(idle);
      idle = setTimeout(() => conn.abort(), idleTimeout);
    };
    let reason = "connection closed";
    // A server that takes the connection and never answers is told apart from a silent stream.
    let unanswered = true;
    const connecting = setTimeout(() => conn.abort(), connectTimeout);
    try {
      const res = await client.stream(
        `/v1/events/stream${query}`,
        lastId ? { "last-event-id": lastId } : {},
        conn.signal,
      );
      unanswered = false;
      clearTimeout(connecting);
      // A refusal (4xx but "later" and "too slow") does not change by asking again.
      if (res.status >= 400 && res.status < 500 && res.status !== 429 && res.status !== 408) {
        const body = (await res.json().catch(() => undefined)) as {
          error?: { code?: string; message?: string };
        };
        // The Klen API says why in its error shape; an answer without it is another server, and
        // so is a 405 (the stream's GET is what the API takes there: a receiver's adapter).
        const ours = typeof body?.error?.code === "string" && res.status !== 405;
        throw new ApiRequestError(
          res.status,
          ours ? (body.error?.code as string) : "not_klen_api",
          ours
            ? `event stream: ${res.status} ${body?.error?.message ?? res.statusText}`
            : `event stream: ${client.base} answered ${res.status} ${res.statusText} without the Klen API's error; is --api-url the Klen server?`,
        );
      }
      if (res.status === 429 || res.status === 503) {
        // "Later" (too many streams open for the account, a database outage): its reason, and
        // no sooner than the server's Retry-After.
        const body = (await res.json().catch(() => undefined)) as
          | { error?: { message?: string } }
          | undefined;
        retryAfter = retryAfterMs(res.headers.get("retry-after"));
        throw new Error(`event stream answered ${res.status}: ${body?.error?.message ?? res.statusText}`);
      }
      if (!res.ok || !res.body) throw new Error(`event stream answered ${res.status}`);
      // A 200 that is not an event stream is another server at --api-url: no retry fixes that.
      const type = res.headers.get("content-type") ?? "";
      if (!type.startsWith("text/event-stream")) {
        await res.body.cancel().catch(() => undefined);
        throw new ApiRequestError(
          res.status,
          "not_klen_api",
          `event stream: ${client.base} answered ${res.status} ${type || "without a content type"}, not text/event-stream; is --api-url the Klen server?`,
        );
      }
      backoff = minBackoff;
      if (!connectedOnce) {
        connectedOnce = true;
        if (out.json)
          out.data({
            type: "ready",
            // Scripts read it here whichever way it came (the terminal line does not show a given one).
            secret: opts.secret,
            ...(opts.secretFrom ? { secret_from: opts.secretFrom } : {}),
            forward_to: opts.forwardTo,
          });
        else {
          out.line(
            `${out.green("Ready!")} Forwarding ${opts.events ? opts.events.join(", ") : "all events"} from ${client.base} to ${out.bold(opts.forwardTo)}`,
          );
          out.line(
            opts.secretFrom
              ? `Signing with the secret from ${opts.secretFrom} (^C to quit)`
              : `Your local webhook signing secret is ${out.bold(opts.secret)} (^C to quit)`,
          );
        }
      } else {
        const gone =
          lostSince === undefined ? "" : ` after ${((Date.now() - lostSince) / 1000).toFixed(1)} s`;
        if (out.json) out.data({ type: "reconnected", after_event_id: lastId ?? null });
        else out.warn(`reconnected to ${client.base}${gone}; resuming after ${lastId ?? "the start"}`);
      }
      lostSince = undefined;
      touch();
      const queue: SseMessage[] = [];
      const parser = new SseParser((m) => queue.push(m));
      const decoder = new TextDecoder();
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        parser.push(decoder.decode(chunk, { stream: true }));
        // The time a slow receiver takes is not the server's silence: the idle clock stops while
        // events are forwarded, and starts again after.
        clearTimeout(idle);
        while (queue.length && !signal.aborted) await handle(queue.shift()!);
        touch();
      }
    } catch (err) {
      if (err instanceof ApiRequestError) throw err;
      if (signal.aborted) break;
      const e = err as Error & { cause?: { code?: string } };
      reason =
        e.name === "AbortError"
          ? unanswered
            ? `no answer within ${connectTimeout / 1000} s`
            : "no heartbeat"
          : (e.cause?.code ?? e.message);
    } finally {
      clearTimeout(connecting);
      clearTimeout(idle);
      signal.removeEventListener("abort", stop);
    }
    if (signal.aborted) break;
    lostSince ??= Date.now();
    const wait = Math.max(retryAfter, Math.round(backoff * (0.8 + Math.random() * 0.4)));
    retryAfter = 0;
    if (out.json) out.data({ type: "disconnected", reason, retry_in_ms: wait });
    else
      out.warn(
        out.yellow(
          `${connectedOnce ? "lost the event stream" : `no event stream from ${client.base}`} (${reason}); retrying in ${(wait / 1000).toFixed(1)} s`,
        ),
      );
    await new Promise<void>((r) => {
      const wake = () => {
        clearTimeout(t);
        signal.removeEventListener("abort", wake);
        r();
      };
      const t = setTimeout(wake, wait);
      signal.addEventListener("abort", wake, { once: true });
    });
    backoff = Math.min(maxBackoff, backoff * 2);
  }
}
