import type { FastifyError, FastifyInstance } from "fastify";
import { mediaType, notAudio } from "../blobs/upload.js";
import { ApiError } from "../errors.js";
import { isDatabaseUnavailable } from "../storage/store.js";
import { isoTimestamp } from "./routes/common.js";

/** A property name that failed `propertyNames` (a custom header's name): Ajv reports it aside. */
const badPropertyName = (v: object): string | undefined => (v as { propertyName?: string }).propertyName;

/** Turns an Ajv error into the name of the field at fault (`phone_number`, `call.agent_id`, `limit`). */
function fieldOf(err: FastifyError): string | undefined {
  const v = err.validation?.[0];
  if (!v) return undefined;
  const path = v.instancePath.replace(/^\//, "").replace(/\//g, ".");
  const params = v.params as Record<string, unknown>;
  const extra = (params.missingProperty ??
    params.additionalProperty ??
    badPropertyName(v) ??
    params.propertyName) as string | undefined;
  if (extra !== undefined) return path ? `${path}.${extra}` : extra;
  return path || undefined;
}

function messageOf(err: FastifyError, field: string | undefined): string {
  const v = err.validation?.[0];
  if (!v) return err.message;
  const params = v.params as Record<string, unknown>;
  if (v.keyword === "additionalProperties")
    return err.validationContext === "querystring"
      ? `unknown query parameter "${field}"`
      : `unknown field "${field}"`;
  if (v.keyword === "required") return `"${field}" is required`;
  if (v.keyword === "enum")
    return `"${field}" must be one of: ${(params.allowedValues as string[]).join(", ")}`;
  if (badPropertyName(v) !== undefined || v.keyword === "propertyNames")
    return `"${field}" is not a valid name`;
  if (v.keyword === "pattern" && field?.endsWith("phone_number"))
    return `"${field}" must be E.164: + and 8 to 15 digits`;
  // Any timestamp field: the pattern itself tells a reader nothing.
  if (v.keyword === "pattern" && String(params.pattern).includes(isoTimestamp.pattern))
    return `"${field}" is not an ISO-8601 timestamp with Z or an offset (e.g. 2026-11-24T18:00:00Z)`;
  return `"${field ?? err.validationContext}" ${v.message ?? "is invalid"}`;
}

/**
 * One error shape for everything (PRODUCT.md §6): `{"error":{code,message,details}}`. Bad input
 * is a 4xx naming the field; anything unexpected is a 500 with no stack trace in the body.
 */
export function installErrorHandler(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError, req, reply) => {
    if (err instanceof ApiError) {
      if (err.status === 429 && err.details?.retry_after)
        reply.header("retry-after", String(err.details.retry_after));
      return reply.status(err.status).send(err.toJSON());
    }
    if (err.validation) {
      const field = fieldOf(err);
      const location = err.validationContext ?? "body";
      return reply.status(400).send(
        new ApiError(400, "invalid_request", messageOf(err, field), {
          field: field ?? location,
          location,
        }).toJSON(),
      );
    }
    // SQLITE_BUSY_SNAPSHOT (and other extended busy codes) is SQLite's lock contention too.
    if (isDatabaseUnavailable(err) || /^SQLITE_BUSY/.test(String((err as { code?: unknown }).code))) {
      // Down or restarting: say so at once rather than hang or claim an internal error. Nothing
      // was committed (or the Idempotency-Key replays it), so the client may simply retry.
      req.log.warn({ err: { message: err.message, code: err.code } }, "database unavailable");
      return reply
        .status(503)
        .header("retry-after", "1")
        .send(
          new ApiError(503, "database_unavailable", "the database is unavailable; retry shortly").toJSON(),
        );
    }
    const status = err.statusCode ?? 500;
    const known: Record<string, [number, string, string]> = {
      FST_ERR_CTP_BODY_TOO_LARGE: [413, "payload_too_large", "the body is larger than allowed"],
      FST_ERR_CTP_INVALID_CONTENT_LENGTH: [400, "invalid_request", "content-length does not match the body"],
    };
    const k = err.code ? known[err.code] : undefined;
    if (err.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") {
      // Say what was sent and what is taken: curl's --data-binary sends a form type by default.
      const sent = mediaType(req.headers["content-type"]);
      const refusal = /\/recording\/?(\?|$)/.test(req.url)
        ? notAudio(sent)
        : new ApiError(
            415,
            "unsupported_media_type",
            `the API takes application/json, not "${sent || "none"}"`,
            {
              field: "content-type",
            },
          );
      return reply.status(415).send(refusal.toJSON());
    }
    if (k) return reply.status(k[0]).send(new ApiError(k[0], k[1], k[2]).toJSON());
    if (err instanceof SyntaxError || (status >= 400 && status < 500)) {
      const code =
        status === 413 ? "payload_too_large" : status === 415 ? "unsupported_media_type" : "invalid_request";
      return reply.status(status).send(new ApiError(status, code, err.message).toJSON());
    }
    req.log.error({ err }, "unhandled error");
    return reply.status(500).send(new ApiError(500, "internal_error", "internal error").toJSON());
  });
  app.setNotFoundHandler((req, reply) =>
    reply
      .status(404)
      .send(new ApiError(404, "not_found", `no route ${req.method} ${req.url.split("?")[0]}`).toJSON()),
  );
}
