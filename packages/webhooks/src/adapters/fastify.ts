/**
 * Fastify (4 and 5) as an encapsulated plugin. Inside the plugin's scope every content type is
 * parsed as a raw `Buffer`, so the route sees the signed bytes while the rest of the app keeps
 * Fastify's JSON parser. Typed structurally: nothing is imported from Fastify.
 */
import type { IncomingHttpHeaders } from "node:http";
import type { Webhook } from "../webhook.js";
import { BodyTooLargeError, byteLimit, DEFAULT_MAX_BODY_BYTES } from "./body.js";
import {
  type AdapterOptions,
  checkHandlerOptions,
  type EventHandler,
  errorResponse,
  isResponse,
  reportRejection,
  runHandler,
  verifySync,
} from "./common.js";

/** The part of a Fastify request the plugin reads. */
export interface FastifyLikeRequest {
  readonly headers: IncomingHttpHeaders;
  readonly body: unknown;
}
/** The part of a Fastify reply the plugin uses. */
export interface FastifyLikeReply {
  code(status: number): FastifyLikeReply;
  header(name: string, value: string): FastifyLikeReply;
  send(payload: string): unknown;
}
/** The part of a Fastify instance the plugin uses. */
export interface FastifyLikeInstance {
  removeAllContentTypeParsers(): void;
  addContentTypeParser(
    contentType: string,
    options: { parseAs: "buffer"; bodyLimit?: number },
    parser: (req: any, body: any, done: (err: Error | null, body?: unknown) => void) => void,
  ): void;
  post(path: string, handler: (request: any, reply: any) => Promise<unknown>): unknown;
  setErrorHandler(handler: (error: any, request: any, reply: any) => unknown): unknown;
}

/** Options of `fastifyWebhook`. */
export interface FastifyWebhookOptions extends AdapterOptions {
  readonly webhook: Webhook;
  readonly onEvent: EventHandler<FastifyLikeRequest>;
  /** Route path inside the plugin's prefix. Default "/". */
  readonly path?: string;
}

/**
 * Registers `POST {prefix}{path}` that verifies the raw body and runs `onEvent`: 200 after it,
 * 400 `{"error":{"code"}}` on a failed verification, 413 over `maxBodyBytes`, 500 when it throws.
 *
 * @example
 * ```ts
 * import Fastify from "fastify";
 * import { Webhook } from "@klen/webhooks";
 * import { fastifyWebhook } from "@klen/webhooks/fastify";
 *
 * const app = Fastify();
 * await app.register(fastifyWebhook, {
 *   prefix: "/webhooks/klen",
 *   webhook: new Webhook(process.env.KLEN_WEBHOOK_SECRET!),
 *   onEvent: async (event) => app.log.info({ type: event.event_type }, "klen event"),
 * });
 * ```
 */
export async function fastifyWebhook(
  instance: FastifyLikeInstance,
  opts: FastifyWebhookOptions,
): Promise<void> {
  checkHandlerOptions("fastifyWebhook", opts, true);
  const maxBytes = byteLimit(opts.maxBodyBytes, "maxBodyBytes", DEFAULT_MAX_BODY_BYTES);
  // Encapsulation: this only replaces the parsers of the plugin's own child context.
  instance.removeAllContentTypeParsers();
  instance.addContentTypeParser("*", { parseAs: "buffer", bodyLimit: maxBytes }, (_req, body, done) =>
    done(null, body),
  );
  // Over maxBodyBytes Fastify's parser fails before the route: answer as the other adapters do;
  // anything else goes on to the app's own error handler.
  instance.setErrorHandler((error: { statusCode?: number }, _request: unknown, reply: FastifyLikeReply) => {
    if (error?.statusCode !== 413) throw error;
    reportRejection(opts, new BodyTooLargeError(maxBytes));
    const r = errorResponse(413, "payload_too_large");
    return reply.code(r.status).header("content-type", "application/json; charset=utf-8").send(r.body);
  });
  instance.post(opts.path ?? "/", async (request: FastifyLikeRequest, reply: FastifyLikeReply) => {
    // No body at all (no content-type) arrives as undefined: verify it as empty bytes.
    const body = request.body instanceof Uint8Array ? request.body : new Uint8Array(0);
    const result = verifySync(opts.webhook, body, request.headers, opts);
    const r = isResponse(result) ? result : await runHandler(result, request, opts);
    return reply.code(r.status).header("content-type", "application/json; charset=utf-8").send(r.body);
  });
}
