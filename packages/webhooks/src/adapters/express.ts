/**
 * Express (4 and 5). Typed structurally on Node's `http` types, so using it imports nothing
 * from Express and the emitted `.d.ts` does not require `@types/express`.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Idempotency } from "../idempotency.js";
import type { Webhook } from "../webhook.js";
import { BodyTooLargeError, byteLimit, DEFAULT_MAX_BODY_BYTES, readNodeBody } from "./body.js";
import {
  type AdapterOptions,
  checkVerifyOptions,
  DUPLICATE,
  type EventHandler,
  errorResponse,
  isResponse,
  rejection,
  reportError,
  runHandler,
  verifySync,
  type WebhookDelivery,
} from "./common.js";
import { sendNode } from "./node.js";

/** Express's `req` as far as this adapter needs it: a Node request plus body-parser's `body`. */
export type ExpressLikeRequest = IncomingMessage & { body?: unknown };
/** Express's `next`. */
export type ExpressLikeNext = (err?: unknown) => void;

/** Options of `expressWebhook`. */
export interface ExpressWebhookOptions extends AdapterOptions {
  /**
   * Run this and answer the request (200, or 500 when it throws). Without it the middleware
   * calls `next()` and the route handler reads the event with `webhookDelivery(req)`; with
   * `idempotency` too, the route runs once per `webhook-id`: a 2xx answer from it marks the id
   * done (a repeat then gets 200 `{"received":true,"duplicate":true}` without reaching the route),
   * any other answer, or none, lets a retry reach the route again.
   */
  readonly onEvent?: EventHandler<ExpressLikeRequest>;
}

// One store for the ESM and the CommonJS build alike (a receiver may import the middleware and
// require `webhookDelivery`, or the other way round): kept on globalThis under a registered symbol.
const STORE = Symbol.for("@klen/webhooks.expressDeliveries");
const shared = globalThis as { [STORE]?: WeakMap<object, WebhookDelivery> };
shared[STORE] ??= new WeakMap<object, WebhookDelivery>();
const deliveries = shared[STORE];

/**
 * The delivery `expressWebhook` verified for this request.
 *
 * @example
 * ```ts
 * app.post("/webhooks/klen", expressWebhook(wh), (req, res) => {
 *   const { id, event } = webhookDelivery(req);
 *   res.sendStatus(204);
 * });
 * ```
 */
export function webhookDelivery(req: object): WebhookDelivery {
  const d = deliveries.get(req);
  if (!d)
    throw new Error("No verified webhook on this request: is expressWebhook() mounted before this handler?");
  return d;
}

/**
 * `next()` at most once per `webhook-id`, for `next()` mode with `idempotency`: the route's
 * answer says whether it handled the event (2xx) or failed (anything else, or the connection
 * closing first), so a failed run gives the id back for the sender's retry.
 */
async function nextOnce(
  delivery: WebhookDelivery,
  res: ServerResponse,
  next: ExpressLikeNext,
  idempotency: Idempotency,
  opts: ExpressWebhookOptions,
): Promise<void> {
  let routed = false;
  const route = () =>
    new Promise<void>((resolve, reject) => {
      routed = true;
      const finished = () => {
        res.off("close", closed);
        if (res.statusCode >= 200 && res.statusCode < 300) resolve();
        else reject(new Error(`the route answered ${res.statusCode}`));
      };
      const closed = () => {
        res.off("finish", finished);
        reject(new Error("the connection closed before the route answered"));
      };
      res.once("finish", finished);
      res.once("close", closed);
      next();
    });
  try {
    const { duplicate } = await idempotency.run(delivery.id, route);
    if (duplicate) sendNode(res, DUPLICATE);
  } catch (err) {
    // The route answered already (its failure is its own answer), or never ran: a duplicate that
    // gave up waiting for the run holding its id (5xx, so the sender tries again), or a store error.
    if (routed) return;
    reportError(opts, err, delivery);
    sendNode(res, errorResponse(500, "handler_failed"));
  }
}

/** The raw bytes, from express.raw()/express.text() if one ran, else from the stream itself. */
async function rawBody(req: ExpressLikeRequest, maxBodyBytes?: number): Promise<Uint8Array> {
  const maxBytes = byteLimit(maxBodyBytes, "maxBodyBytes", DEFAULT_MAX_BODY_BYTES);
  const body = req.body;
  // express.raw() (a Buffer) or express.text(): their own `limit` ran first, ours still holds.
  const buffered =
    body instanceof Uint8Array ? body : typeof body === "string" ? new TextEncoder().encode(body) : undefined;
  if (buffered) {
    if (buffered.byteLength > maxBytes) throw new BodyTooLargeError(maxBytes);
    return buffered;
  }
  // Express 5 leaves `body` undefined when no parser ran; 4 sets `{}` for an unread body.
  const unparsed = body === undefined || (isEmptyObject(body) && !req.readableEnded);
  if (unparsed && !req.readableEnded) return readNodeBody(req, maxBytes);
  throw new Error(
    "The request body was already parsed (express.json() ran before expressWebhook()); the signature " +
      "covers the raw bytes. Mount expressWebhook() before express.json(), or use express.raw({ type: '*/*' }) on this route.",
  );
}

function isEmptyObject(value: unknown): boolean {
  return typeof value === "object" && value !== null && Object.keys(value).length === 0;
}

/**
 * Express middleware: reads the raw body (or takes it from `express.raw()`), verifies it, and
 * either runs `onEvent` and answers, or stores the delivery for `webhookDelivery(req)` and
 * calls `next()`. A failed verification answers 400 `{"error":{"code":…}}`.
 *
 * @example
 * ```ts
 * import express from "express";
 * import { Webhook } from "@klen/webhooks";
 * import { expressWebhook } from "@klen/webhooks/express";
 *
 * const wh = new Webhook(process.env.KLEN_WEBHOOK_SECRET!);
 * const app = express();
 * app.post("/webhooks/klen", expressWebhook(wh, {
 *   onEvent: async (event) => { if (event.event_type === "call.ended") await save(event.call); },
 * }));
 * app.use(express.json()); // other routes may parse JSON; mount the webhook route first
 * ```
 */
export function expressWebhook(
  wh: Webhook,
  opts: ExpressWebhookOptions = {},
): (req: ExpressLikeRequest, res: ServerResponse, next: ExpressLikeNext) => Promise<void> {
  checkVerifyOptions(opts);
  return async (req, res, next) => {
    try {
      let body: Uint8Array;
      try {
        body = await rawBody(req, opts.maxBodyBytes);
      } catch (err) {
        const r = rejection(err, opts);
        if (!r) throw err;
        return sendNode(res, r);
      }
      const result = verifySync(wh, body, req.headers, opts);
      if (isResponse(result)) return sendNode(res, result);
      if (!opts.onEvent) {
        deliveries.set(req, result);
        if (!opts.idempotency) return next();
        return await nextOnce(result, res, next, opts.idempotency, opts);
      }
      sendNode(res, await runHandler(result, req, { ...opts, onEvent: opts.onEvent }));
    } catch (err) {
      next(err); // Express's error handling: a misconfiguration or a bug, not the sender's fault
    }
  };
}
