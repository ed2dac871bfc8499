import type { Claimed } from "../../src/delivery/claim.js";
import type { Outcome } from "../../src/delivery/complete.js";
import type { SendResult } from "../../src/delivery/send.js";

/** An attempt the endpoint answered 200. */
export function ok(): SendResult {
  return {
    statusCode: 200,
    responseBody: "ok",
    responseHeaders: {},
    error: null,
    errorMessage: null,
    durationMs: 3,
  };
}

/** An attempt the endpoint answered `status` (500 unless said). */
export function failed(status = 500): SendResult {
  return {
    statusCode: status,
    responseBody: "no",
    responseHeaders: {},
    error: "http_status",
    errorMessage: null,
    durationMs: 3,
  };
}

/** The outcome of `claimed`'s attempt, made at `now`, for `completeBatch`. */
export function outcome(
  claimed: Claimed,
  result: SendResult | null,
  now: number,
  url = "http://127.0.0.1:9/",
): Outcome {
  return { claimed, startedAt: now, url, requestHeaders: {}, result };
}
