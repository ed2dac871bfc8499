/**
 * What every adapter does once it has the raw body: verify, run the handler at most once,
 * and turn the outcome into a status and a JSON body. Framework files only move bytes.
 */
import { WebhookVerificationError } from "../errors.js";
import type { CallEvent } from "../events.js";
import { getHeader, type HeadersInput } from "../headers.js";
import type { Idempotency } from "../idempotency.js";
import { EVENT_TYPES } from "../schemas.js";
import { toleranceOf, type VerifyOptions } from "../tolerance.js";
import type { Webhook } from "../webhook.js";
import { BodyTooLargeError, byteLimit, DEFAULT_MAX_BODY_BYTES } from "./body.js";

/** A verified delivery. */
export interface WebhookDelivery {
  /** `webhook-id`: the event id, the same on every retry — the idempotency key. */
  readonly id: string;
  /** `webhook-timestamp` of this attempt, Unix seconds. */
  readonly timestamp: number;
  readonly event: CallEvent;
}

/** Called with each verified event; throw to answer 500 so the sender retries. */
export type EventHandler<Req> = (
  event: CallEvent,
  delivery: WebhookDelivery & { readonly request: Req },
) => unknown;

/** Options shared by the adapters. */
export interface AdapterOptions {
  /** `now` and `toleranceSeconds` for verification (tests; clock-skewed hosts). */
  readonly verify?: VerifyOptions;
  /** Largest accepted body; default 1 MiB. */
  readonly maxBodyBytes?: number;
  /** Runs the handler at most once per `webhook-id`; without it every delivery runs it. */
  readonly idempotency?: Idempotency;
  /**
   * Told about an error before the adapter answers 500 (the error never reaches the sender):
   * a handler error with its delivery, or an unexpected one without. Default: `console.error`.
   * It may be async: a promise it returns that rejects is logged.
   */
  readonly onError?: (error: unknown, delivery?: WebhookDelivery) => void;
  /**
   * Told about each request the adapter refuses, 400 or 413, with the reason (the sender is told
   * only the code): a signature that matches no secret, a timestamp out of tolerance, a missing
   * header, a body that is not a call event or too large. Default: one `console.warn` line, so a
   * wrong secret shows in the receiver's own log; `() => {}` keeps it quiet. It may be async: a
   * promise it returns that rejects is logged, never left to end the process.
   */
  readonly onRejected?: (error: WebhookVerificationError | BodyTooLargeError) => void;
  /**
   * What to answer a correctly signed event this SDK version cannot read because a newer server
   * added to it: an `event_type` it does not know, or a value it does not know in a field with a
   * fixed set of values (a new `failure_reason`). `"reject"` (default): 400 `invalid_body`, as
   * `verify` throws, so the sender retries it. `"acknowledge"`: 200
   * `{"received":true,"ignored":"unknown_event_type"}` (or `"unknown_value"`) without running the
   * handler, so a server that adds to the events does not see its deliveries to this receiver
   * fail. Either way a body that is not JSON, or a known type with a field missing or of the wrong
   * type, is a 400.
   */
  readonly unknownEvents?: "reject" | "acknowledge";
}

/** Options of an adapter that runs a handler and answers the request itself. */
export interface HandlerOptions<Req> extends AdapterOptions {
  readonly onEvent: EventHandler<Req>;
}

/** A response to send: status and JSON text. */
export interface AdapterResponse {
  readonly status: number;
  readonly body: string;
}

/** `{"error":{"code":…}}`: the code only. Why a signature failed is for the receiver's logs, not for whoever sent it. */
export function errorResponse(status: number, code: string): AdapterResponse {
  return { status, body: JSON.stringify({ error: { code } }) };
}

/**
 * 400 for a verification failure, 413 for an oversized body, told to `onRejected`; `undefined`
 * for anything else (a bug, rethrown).
 */
export function rejection(err: unknown, opts: AdapterOptions): AdapterResponse | undefined {
  let r: AdapterResponse;
  if (err instanceof WebhookVerificationError) r = errorResponse(400, err.code);
  else if (err instanceof BodyTooLargeError) r = errorResponse(413, "payload_too_large");
  else return undefined;
  reportRejection(opts, err);
  return r;
}

/** What to check, for the reasons a receiver set up wrong runs into. */
const REJECTION_HINTS: Partial<Record<string, string>> = {
  no_matching_signature:
    "is the secret given to new Webhook() this endpoint's whsec_ secret (klen-webhooks endpoints secret ep_…), and is the body the raw bytes received?",
  timestamp_too_old: "a replayed request, or this host's clock is behind",
  timestamp_too_new: "this host's clock is ahead",
};

/** Hands a refused request's reason to `onRejected`, or logs it; never throws. */
export function reportRejection(
  opts: AdapterOptions,
  error: WebhookVerificationError | BodyTooLargeError,
): void {
  if (opts.onRejected) {
    // Called as a method of the options, as onEvent is: a hook written as one may use `this`.
    callHook("onRejected", () => opts.onRejected?.(error), [error]);
    return;
  }
  const code = error instanceof WebhookVerificationError ? error.code : "payload_too_large";
  const hint = REJECTION_HINTS[code];
  console.warn(`@klen/webhooks: refused a request (${code}): ${error.message}${hint ? `; ${hint}` : ""}`);
}

/**
 * The 200 for a correctly signed event of a type (or with a value) this SDK does not know, when the options
 * acknowledge those; `undefined` for any other failure. `err` came from `verify`, which checks the
 * signature before the body, so an `invalid_body` error means the signature matched.
 */
export function unknownEventAck(
  err: unknown,
  body: Uint8Array,
  opts: AdapterOptions,
): AdapterResponse | undefined {
  if (opts.unknownEvents !== "acknowledge") return undefined;
  if (!(err instanceof WebhookVerificationError) || err.code !== "invalid_body") return undefined;
  let type: unknown;
  try {
    type = (JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body)) as { event_type?: unknown })
      ?.event_type;
  } catch {
    return undefined;
  }
  if (typeof type !== "string" || type === "") return undefined;
  if (!(EVENT_TYPES as readonly string[]).includes(type))
    return { status: 200, body: JSON.stringify({ received: true, ignored: "unknown_event_type" }) };
  // A known type whose only faults are values outside a field's fixed set: a newer server's.
  const onlyNewValues = err.issues.length > 0 && err.issues.every((i) => i.keyword === "enum");
  if (!onlyNewValues) return undefined;
  return { status: 200, body: JSON.stringify({ received: true, ignored: "unknown_value" }) };
}

/** Builds the delivery from a verified event and its headers (already checked present). */
export function deliveryOf(event: CallEvent, headers: HeadersInput): WebhookDelivery {
  return {
    id: getHeader(headers, "webhook-id")!.trim(),
    timestamp: Number(getHeader(headers, "webhook-timestamp")!.trim()),
    event,
  };
}

/** Verifies synchronously (Node adapters); returns the delivery or the rejection to send. */
export function verifySync(
  wh: Webhook,
  body: Uint8Array,
  headers: HeadersInput,
  opts: AdapterOptions,
): WebhookDelivery | AdapterResponse {
  try {
    return deliveryOf(wh.verify(body, headers, opts.verify), headers);
  } catch (err) {
    const r = unknownEventAck(err, body, opts) ?? rejection(err, opts);
    if (r) return r;
    throw err;
  }
}

/**
 * Checks, when an adapter is made, what plain JavaScript can get wrong and TypeScript would have
 * refused: a missing `onEvent` would otherwise fail on the first delivery instead of at start-up.
 */
export function checkHandlerOptions(adapter: string, opts: unknown, needsWebhook = false): void {
  const o = opts as { onEvent?: unknown; webhook?: unknown } | null | undefined;
  if (typeof o !== "object" || o === null || typeof o.onEvent !== "function")
    throw new TypeError(`${adapter} needs options with an onEvent(event, delivery) function`);
  if (needsWebhook && (typeof o.webhook !== "object" || o.webhook === null))
    throw new TypeError(`${adapter} needs a webhook option: new Webhook(secret)`);
  checkVerifyOptions(opts as AdapterOptions);
}

/**
 * `verify.toleranceSeconds` checked when the adapter is made: wrong, it failed every delivery
 * with a 500 (signed or not), and the sender retried until it disabled the endpoint.
 */
export function checkVerifyOptions(opts: AdapterOptions | undefined): void {
  toleranceOf(opts?.verify?.toleranceSeconds);
  byteLimit(opts?.maxBodyBytes, "maxBodyBytes", DEFAULT_MAX_BODY_BYTES);
}

/**
 * Calls a reporting hook (`onError`, `onRejected`) that may be async: a promise it returns is
 * waited for nowhere, so its rejection is logged here rather than left to crash the process.
 */
function callHook(name: string, run: () => unknown, logged: unknown[]): void {
  const failedToo = (failure: unknown) =>
    console.error(`@klen/webhooks: ${name} threw while reporting`, ...logged, failure);
  try {
    const r = run() as { then?: unknown } | undefined;
    if (r && typeof r.then === "function") (r as Promise<unknown>).then(undefined, failedToo);
  } catch (failure) {
    failedToo(failure);
  }
}

/** The answer to a delivery whose `webhook-id` was handled already (idempotency). */
export const DUPLICATE: AdapterResponse = {
  status: 200,
  body: JSON.stringify({ received: true, duplicate: true }),
};

/** Runs the handler (once per id when idempotency is on) and answers 200, or 500 on error. */
export async function runHandler<Req>(
  delivery: WebhookDelivery,
  request: Req,
  opts: HandlerOptions<Req>,
): Promise<AdapterResponse> {
  const call = () => opts.onEvent(delivery.event, { ...delivery, request });
  try {
    if (opts.idempotency) {
      const { duplicate } = await opts.idempotency.run(delivery.id, call);
      if (duplicate) return DUPLICATE;
    } else {
      await call();
    }
    return { status: 200, body: JSON.stringify({ received: true }) };
  } catch (err) {
    reportError(opts, err, delivery);
    return errorResponse(500, "handler_failed");
  }
}

/**
 * Hands an error to `onError`, or logs it: a swallowed handler error would be invisible. Never
 * throws: an `onError` that fails (a logger down) is logged itself, so the adapter still answers.
 */
export function reportError(
  opts: AdapterOptions | undefined,
  error: unknown,
  delivery?: WebhookDelivery,
): void {
  if (opts?.onError) callHook("onError", () => opts.onError?.(error, delivery), [error]);
  else if (delivery)
    console.error(`@klen/webhooks: handler failed for ${delivery.id} (${delivery.event.event_type})`, error);
  else console.error("@klen/webhooks: unexpected error", error);
}

/** Type guard: a response rather than a delivery. */
export function isResponse(value: WebhookDelivery | AdapterResponse): value is AdapterResponse {
  return "status" in value;
}
