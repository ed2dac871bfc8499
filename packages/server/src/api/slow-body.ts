import type { IncomingMessage, ServerResponse } from "node:http";
import type { FastifyInstance } from "fastify";
import { ApiError } from "../errors.js";
import { type Logger, quietly } from "../log.js";

/** How long a request body may take before its pace is looked at. */
export const SLOW_BODY_GRACE_MS = 30_000;
/** The slowest average pace a body may keep past the grace: 1 KiB/s (a 200 MiB recording: 57 h). */
export const SLOW_BODY_MIN_BYTES_PER_S = 1024;
const CHECK_EVERY_MS = 5_000;

interface Arriving {
  raw: IncomingMessage;
  res: ServerResponse;
  since: number;
  bytesAtStart: number;
}

/**
 * Cuts off a request whose body trickles in. Fastify sets Node's `requestTimeout` to 0 (no
 * limit), so a client that announced a body and sent a byte every few seconds held its connection
 * for ever, with or without an API key (an unauthenticated one is answered 401 at once, but Node
 * keeps reading the body to reuse the connection). Past `SLOW_BODY_GRACE_MS`, a body still
 * arriving at under `SLOW_BODY_MIN_BYTES_PER_S` on average is answered `408 request_timeout`
 * (when nothing was answered yet) and its connection closed. Headers that trickle are Node's
 * `headersTimeout` (60 s). One timer for the whole server; a request is looked at only while its
 * body has not fully arrived.
 */
export function guardSlowBodies(
  app: FastifyInstance,
  log: Logger,
  /** Tests' shorter clock; the minimum pace stays. */
  t: { graceMs: number; checkEveryMs: number } = {
    graceMs: SLOW_BODY_GRACE_MS,
    checkEveryMs: CHECK_EVERY_MS,
  },
): void {
  const arriving = new Map<IncomingMessage, Arriving>();
  let timer: NodeJS.Timeout | undefined;
  const check = () => {
    const now = Date.now();
    for (const a of arriving.values()) {
      const socket = a.raw.socket;
      if (a.raw.complete || socket.destroyed) {
        arriving.delete(a.raw);
        continue;
      }
      const elapsed = now - a.since;
      if (elapsed < t.graceMs) continue;
      const received = socket.bytesRead - a.bytesAtStart;
      if (received >= (SLOW_BODY_MIN_BYTES_PER_S * elapsed) / 1000) continue;
      arriving.delete(a.raw);
      const q = quietly("slow_body");
      if (q)
        log.warn(
          { received, elapsed_ms: elapsed, left_out: q.suppressed },
          "a request body arriving slower than 1 KiB/s was cut off (408)",
        );
      // Its own answer, unless another is being written on the connection (a request pipelined
      // behind a stream): then the connection is only closed.
      if (a.res.socket === socket && !a.res.headersSent && socket.writable) {
        const body = JSON.stringify(
          new ApiError(
            408,
            "request_timeout",
            `the request body arrived too slowly (under ${SLOW_BODY_MIN_BYTES_PER_S} bytes/s after ${t.graceMs / 1000} s)`,
          ).toJSON(),
        );
        socket.end(
          `HTTP/1.1 408 Request Timeout\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${body}`,
        );
        // Whatever the handler was waiting for ends here: the body will not come.
        setTimeout(() => socket.destroy(), 1_000).unref();
      } else socket.destroy();
    }
    if (arriving.size === 0 && timer) {
      clearInterval(timer);
      timer = undefined;
    }
  };
  app.addHook("onRequest", async (req, reply) => {
    const h = req.raw.headers;
    if (req.raw.complete || (h["content-length"] === undefined && h["transfer-encoding"] === undefined))
      return;
    if (h["content-length"] === "0") return;
    arriving.set(req.raw, {
      raw: req.raw,
      res: reply.raw,
      since: Date.now(),
      bytesAtStart: req.raw.socket.bytesRead,
    });
    timer ??= setInterval(check, t.checkEveryMs).unref();
  });
  // Most bodies have arrived by the answer; one still arriving then (an unauthenticated request
  // answered at once) stays looked at.
  app.addHook("onResponse", async (req) => {
    if (req.raw.complete) arriving.delete(req.raw);
  });
  app.addHook("onClose", async () => {
    if (timer) clearInterval(timer);
    timer = undefined;
    arriving.clear();
  });
}
