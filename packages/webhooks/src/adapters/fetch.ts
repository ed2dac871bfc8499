/**
 * Fetch `Request` → `Response`: Next.js route handlers, Hono, Deno, Bun, Cloudflare Workers.
 * Uses only WebCrypto (`verifyAsync`), never `node:crypto`.
 */
import type { HeadersInput } from "../headers.js";
import type { VerifyOptions } from "../tolerance.js";
import type { Webhook } from "../webhook.js";
import { readFetchBody } from "./body.js";
import {
  type AdapterResponse,
  checkHandlerOptions,
  deliveryOf,
  errorResponse,
  type HandlerOptions,
  rejection,
  reportError,
  runHandler,
  unknownEventAck,
  type WebhookDelivery,
} from "./common.js";

function toResponse(r: AdapterResponse): Response {
  return new Response(r.body, {
    status: r.status,
    headers: { "content-type": "application/json; charset=utf-8" },
  });
}

/**
 * Reads and verifies a `Request`. Resolves to the delivery; throws `WebhookVerificationError`
 * (or `BodyTooLargeError`) when it must be refused.
 *
 * @example
 * ```ts
 * // Hono
 * app.post("/webhooks/klen", async (c) => {
 *   const { event } = await verifyRequest(wh, c.req.raw);
 *   return c.json({ ok: true });
 * });
 * ```
 */
export async function verifyRequest(
  wh: Webhook,
  request: Request,
  opts: { maxBodyBytes?: number; verify?: VerifyOptions } = {},
): Promise<WebhookDelivery> {
  const body = await readFetchBody(request, opts.maxBodyBytes);
  const headers: HeadersInput = request.headers;
  return deliveryOf(await wh.verifyAsync(body, headers, opts.verify), headers);
}

/**
 * A `(request) => Promise<Response>` handler: 200 after `onEvent`, 400 `{"error":{"code"}}` on
 * a failed verification, 413 on an oversized body, 500 when `onEvent` throws.
 *
 * @example
 * ```ts
 * // app/api/webhooks/klen/route.ts (Next.js)
 * import { Webhook } from "@klen/webhooks";
 * import { fetchWebhookHandler } from "@klen/webhooks/fetch";
 *
 * const wh = new Webhook(process.env.KLEN_WEBHOOK_SECRET!);
 * export const POST = fetchWebhookHandler(wh, { onEvent: async (event) => console.log(event.event_type) });
 *
 * // Hono: app.post("/webhooks/klen", (c) => handler(c.req.raw));
 * ```
 */
export function fetchWebhookHandler(
  wh: Webhook,
  opts: HandlerOptions<Request>,
): (request: Request) => Promise<Response> {
  checkHandlerOptions("fetchWebhookHandler(wh, opts)", opts);
  return async (request) => {
    let body: Uint8Array | undefined;
    let delivery: WebhookDelivery;
    try {
      body = await readFetchBody(request, opts.maxBodyBytes);
      delivery = deliveryOf(await wh.verifyAsync(body, request.headers, opts.verify), request.headers);
    } catch (err) {
      const r = (body && unknownEventAck(err, body, opts)) ?? rejection(err, opts);
      if (r) return toResponse(r);
      reportError(opts, err);
      return toResponse(errorResponse(500, "internal_error"));
    }
    return toResponse(await runHandler(delivery, request, opts));
  };
}
