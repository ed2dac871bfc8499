/**
 * `@klen/webhooks`: receive Klen call webhooks safely.
 *
 * @example
 * ```ts
 * import { Webhook } from "@klen/webhooks";
 * const event = new Webhook(secret).verify(rawBody, headers);
 * ```
 */
export { BodyTooLargeError, DEFAULT_MAX_BODY_BYTES, readFetchBody, readNodeBody } from "./adapters/body.js";
export type { AdapterOptions, EventHandler, HandlerOptions, WebhookDelivery } from "./adapters/common.js";
export {
  type ContentEvent,
  ContentFetchError,
  type ContentFetchErrorCode,
  type FetchContentOptions,
  fetchContent,
} from "./content.js";
export type { RawBody } from "./crypto/bytes.js";
export { WebhookKeyError, WebhookVerificationError, type WebhookVerificationErrorCode } from "./errors.js";
export type * from "./events.js";
export { getHeader, type HeadersInput, readWebhookHeaders, type WebhookHeaders } from "./headers.js";
export {
  type ClaimResult,
  createIdempotency,
  type Idempotency,
  type IdempotencyOptions,
  type IdempotencyStore,
  IdempotencyTimeoutError,
  MemoryIdempotencyStore,
  type MemoryIdempotencyStoreOptions,
  type OnceResult,
} from "./idempotency.js";
export { parseKey, type WebhookKey } from "./keys.js";
export { isCallEvent, parseCallEvent, validateCallEvent } from "./parse-event.js";
export { DEFAULT_TOLERANCE_SECONDS, type VerifyOptions } from "./tolerance.js";
export { type SchemaIssue, type ValidateOptions, validate } from "./validate.js";
export { Webhook } from "./webhook.js";
