/**
 * Node's `http` (and anything built on it that leaves the request stream unread).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Webhook } from "../webhook.js";
import { readNodeBody } from "./body.js";
import {
  type AdapterOptions,
  type AdapterResponse,
  checkHandlerOptions,
  errorResponse,
  type HandlerOptions,
  isResponse,
  rejection,
  reportError,
  runHandler,
  verifySync,
  type WebhookDelivery,
} from "./common.js";

/**
 * Writes an adapter response (status and JSON body) to a Node response.
 *
 * @example
 * ```ts
 * const result = await verifyNodeRequest(wh, req);
 * if ("status" in result) return sendNode(res, result);
 * ```
 */
export function sendNode(res: ServerResponse, r: AdapterResponse): void {
  res.statusCode = r.status;
  res.setHeader("content-type", "application/json; charset=utf-8");
  // An oversized body was not read to the end: closing is cheaper than draining it.
  if (r.status === 413) res.setHeader("connection", "close");
  res.end(r.body);
}

/**
 * Reads and verifies a Node request; resolves to the delivery, or to the rejection to send
 * (400/413) when it must be refused, whose reason goes to `onRejected` (default: `console.warn`).
 *
 * @example
 * ```ts
 * const result = await verifyNodeRequest(wh, req);
 * if ("status" in result) return sendNode(res, result);
 * console.log(result.event.event_type);
 * ```
 */
export async function verifyNodeRequest(
  wh: Webhook,
  req: IncomingMessage,
  opts: Pick<AdapterOptions, "maxBodyBytes" | "verify" | "onRejected" | "unknownEvents"> = {},
): Promise<WebhookDelivery | AdapterResponse> {
  let body: Uint8Array;
  try {
    body = await readNodeBody(req, opts.maxBodyBytes);
  } catch (err) {
    const r = rejection(err, opts);
    if (r) return r;
    throw err;
  }
  return verifySync(wh, body, req.headers, opts);
}

/**
 * A `(req, res)` listener for `http.createServer` that verifies each request and runs
 * `onEvent`: 200 after the handler, 400 `{"error":{"code"}}` on a failed verification, 413 on
 * an oversized body, 500 when the handler throws (so Klen retries), 405 to a method other than
 * POST.
 *
 * @example
 * ```ts
 * import { createServer } from "node:http";
 * import { Webhook, createIdempotency } from "@klen/webhooks";
 * import { nodeWebhookHandler } from "@klen/webhooks/node";
 *
 * const wh = new Webhook(process.env.KLEN_WEBHOOK_SECRET!);
 * createServer(nodeWebhookHandler(wh, {
 *   idempotency: createIdempotency(),
 *   onEvent: async (event) => console.log(event.event_type, event.call.id),
 * })).listen(3000);
 * ```
 */
export function nodeWebhookHandler(
  wh: Webhook,
  opts: HandlerOptions<IncomingMessage>,
): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  checkHandlerOptions("nodeWebhookHandler(wh, opts)", opts);
  return async (req, res) => {
    // Deliveries are POSTs: anything else (a browser opening the URL, a probe) is told so rather
    // than refused as an unsigned delivery.
    if (req.method !== "POST") {
      req.resume();
      res.setHeader("allow", "POST");
      return sendNode(res, errorResponse(405, "method_not_allowed"));
    }
    try {
      const result = await verifyNodeRequest(wh, req, opts);
      sendNode(res, isResponse(result) ? result : await runHandler(result, req, opts));
    } catch (err) {
      // A client that went away mid-body is nobody's error and has no one to answer.
      if (clientGone(err)) return;
      // Only a bug lands here; never let it crash the server.
      reportError(opts, err);
      if (!res.headersSent) sendNode(res, errorResponse(500, "internal_error"));
    }
  };
}

/** The errors Node gives a body read whose client closed the connection. */
function clientGone(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "ECONNRESET" || code === "ERR_STREAM_PREMATURE_CLOSE";
}
