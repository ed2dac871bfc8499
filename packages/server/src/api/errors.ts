import type { IncomingMessage } from "node:http";
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { mediaType, notAudio } from "../blobs/upload.js";
import { ApiError, notFound } from "../errors.js";
import { quietly } from "../log.js";
import { isDatabaseUnavailable } from "../storage/store.js";
import { ID_NOUNS, isoTimestamp, NOT_BLANK } from "./routes/common.js";

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
  if (v.keyword === "pattern" && params.pattern === NOT_BLANK) return `"${field}" must not be blank`;
  // Any timestamp field: the pattern itself tells a reader nothing.
  if (v.keyword === "pattern" && String(params.pattern).includes(isoTimestamp.pattern))
    return `"${field}" is not an ISO-8601 timestamp with Z or an offset (e.g. 2026-11-24T18:00:00Z)`;
  return `"${field ?? err.validationContext}" ${v.message ?? "is invalid"}`;
}

/**
 * Keeps a refusal that reached the error handler as the outcome of its Idempotency-Key, when the
 * request carries one (PRODUCT.md §4: the first non-5xx response is stored): what to answer
 * instead (a replay, or the refusal now stored), or undefined when the request has no key or its
 * refusal is not kept. May throw an ApiError (the key reused with another request: 422).
 */
export type RememberRefusal = (
  req: FastifyRequest,
  refusal: ApiError,
) => Promise<{ status: number; body: unknown; replayed: boolean } | undefined>;

/**
 * Refusals kept for an Idempotency-Key: bad input, and a resource or state that does not allow
 * the request. Not 401 (no account to keep it under), 429 (the answer is "later", with the same
 * key), 413/415 (the body was not read, so a repeat cannot be compared), 408/414/431.
 */
const KEPT_REFUSALS: ReadonlySet<number> = new Set([400, 404, 409, 410, 422]);

/** Fastify's own refusals, in the API's words. */
const FASTIFY_REFUSALS: Record<string, [number, string, string]> = {
  FST_ERR_CTP_BODY_TOO_LARGE: [413, "payload_too_large", "the body is larger than allowed"],
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: [400, "invalid_request", "content-length does not match the body"],
};

/** The refusal (4xx) an error stands for, or undefined when it is no client error. */
function refusalOf(err: FastifyError, req: FastifyRequest): ApiError | undefined {
  if (err instanceof ApiError) return err;
  if (err.validation) {
    const v = err.validation[0];
    const prefix = /^\^([a-z]+)_/.exec(String(v?.params.pattern ?? ""))?.[1];
    if (err.validationContext === "params" && v?.keyword === "pattern" && prefix && ID_NOUNS[prefix])
      return notFound(ID_NOUNS[prefix], String((req.params as { id?: unknown }).id));
    const field = fieldOf(err);
    const location = err.validationContext ?? "body";
    return new ApiError(400, "invalid_request", messageOf(err, field), {
      field: field ?? location,
      location,
    });
  }
  if (err.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE") {
    // Say what was sent and what is taken: curl's --data-binary sends a form type by default.
    const sent = mediaType(req.headers["content-type"]);
    return /\/recording\/?(\?|$)/.test(req.url)
      ? notAudio(sent)
      : new ApiError(
          415,
          "unsupported_media_type",
          `the API takes application/json, not "${sent || "none"}"`,
          {
            field: "content-type",
          },
        );
  }
  const k = err.code ? FASTIFY_REFUSALS[err.code] : undefined;
  if (k) return new ApiError(k[0], k[1], k[2]);
  const status = err.statusCode ?? 500;
  if (err instanceof SyntaxError || (status >= 400 && status < 500)) {
    const code =
      status === 413 ? "payload_too_large" : status === 415 ? "unsupported_media_type" : "invalid_request";
    return new ApiError(status, code, err.message);
  }
  return undefined;
}

/**
 * The routes by method, to tell a path no route has (404) from one that another method has (405
 * with `Allow`).
 */
export class RouteTable {
  private readonly routes: Array<{ method: string; path: RegExp }> = [];

  add(method: string | string[], url: string): void {
    const path = new RegExp(
      `^${url
        .split("/")
        .map((part) =>
          part.startsWith(":") ? "[^/]+" : part === "*" ? ".*" : part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"),
        )
        .join("/")}$`,
    );
    for (const m of [method].flat()) this.routes.push({ method: m, path });
  }

  /** The methods some route takes at this path. */
  allowed(path: string): string[] {
    return [...new Set(this.routes.filter((r) => r.path.test(path)).map((r) => r.method))].sort();
  }
}

/**
 * One error shape for everything (PRODUCT.md §6): `{"error":{code,message,details}}`. Bad input
 * is a 4xx naming the field; anything unexpected is a 500 with no stack trace in the body.
 */
/** `{suppressed: n}` when lines were left out since the last one (log.ts `quietly`). */
const suppressedField = (q: { suppressed: number }) => (q.suppressed ? { suppressed: q.suppressed } : {});

export function installErrorHandler(
  app: FastifyInstance,
  remember?: RememberRefusal,
  routes: RouteTable = new RouteTable(),
): void {
  const refuse = (reply: FastifyReply, e: ApiError) => {
    if ((e.status === 429 || e.status === 503) && e.details?.retry_after)
      reply.header("retry-after", String(e.details.retry_after));
    return reply.status(e.status).send(e.toJSON());
  };
  const failed = (req: FastifyRequest, reply: FastifyReply, err: FastifyError) => {
    // Down, restarting, or on SQLite locked, full or gone (isDatabaseUnavailable).
    if (isDatabaseUnavailable(err)) {
      // Down or restarting: say so at once rather than hang or claim an internal error. Nothing
      // was committed (or the Idempotency-Key replays it), so the client may simply retry.
      // One line per 30 s: every request and probe of an outage logged its own.
      const q = quietly("request: database unavailable");
      if (q)
        req.log.warn(
          { err: { message: err.message, code: err.code }, ...suppressedField(q) },
          "database unavailable",
        );
      return reply
        .status(503)
        .header("retry-after", "1")
        .send(
          new ApiError(503, "database_unavailable", "the database is unavailable; retry shortly").toJSON(),
        );
    }
    req.log.error({ err }, "unhandled error");
    return reply
      .status(500)
      .send(new ApiError(500, "internal_error", "internal error", { request_id: req.id }).toJSON());
  };
  app.setErrorHandler(async (err: FastifyError, req, reply) => {
    // Fastify answers a body over the limit without reading it and closes the connection: a
    // client still sending it (fetch, undici) then failed with EPIPE and never saw the 413.
    if (err.code === "FST_ERR_CTP_BODY_TOO_LARGE") await discardBody(req.raw);
    if (err instanceof ApiError && err.status >= 500) {
      // A failure of the server's own (storage it cannot write): an operator needs to see it. A
      // request turned away while stopping is no failure: the stop is logged once already.
      // Once per 30 s for each code: a health probe every few seconds logged a stack each time.
      const q = err.code === "shutting_down" ? undefined : quietly(`request: ${err.code}`);
      if (q) req.log.error({ err: err.cause ?? err, ...suppressedField(q) }, err.message);
      return refuse(reply, err);
    }
    const refusal = refusalOf(err, req);
    if (!refusal) return failed(req, reply, err);
    // Only a refusal of what the client sent (ours, or the schema's) is its key's answer: not a
    // body that never fully arrived (Fastify's 400 for an aborted upload or a content-length that
    // does not match), which nobody receives and whose repeat, complete, must still go through.
    const ofTheRequest = err instanceof ApiError || err.validation !== undefined;
    if (!remember || !ofTheRequest || !KEPT_REFUSALS.has(refusal.status)) return refuse(reply, refusal);
    try {
      const out = await remember(req, refusal);
      if (!out) return refuse(reply, refusal);
      if (out.replayed) reply.header("idempotent-replayed", "true");
      return reply.status(out.status).send(out.body);
    } catch (e) {
      if (e instanceof ApiError && e.status < 500) return refuse(reply, e);
      return failed(req, reply, e as FastifyError);
    }
  });
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split("?")[0]!;
    const allowed = routes.allowed(path);
    if (allowed.length > 0)
      return reply
        .status(405)
        .header("allow", allowed.join(", "))
        .send(
          new ApiError(
            405,
            "method_not_allowed",
            `${req.method} is not allowed on ${path}; use ${allowed.join(", ")}`,
            {
              allowed,
            },
          ).toJSON(),
        );
    return reply.status(404).send(new ApiError(404, "not_found", `no route ${req.method} ${path}`).toJSON());
  });
}

/** What is read and dropped of a refused body, at most, before its answer goes out. */
const DISCARD_BYTES = 64 * 1024 * 1024;
const DISCARD_MS = 10_000;

/**
 * Reads and drops what is left of a request's body, up to `DISCARD_BYTES` or `DISCARD_MS`, so that
 * the client has finished sending when the answer (and the close) comes. A larger body is cut off
 * as before.
 */
function discardBody(raw: IncomingMessage): Promise<void> {
  if (raw.readableEnded || raw.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    let seen = 0;
    const done = () => {
      clearTimeout(timer);
      raw.off("data", onData);
      raw.off("end", done);
      raw.off("error", done);
      raw.off("close", done);
      resolve();
    };
    const onData = (chunk: Buffer) => {
      seen += chunk.length;
      if (seen > DISCARD_BYTES) done();
    };
    const timer = setTimeout(done, DISCARD_MS);
    raw.on("data", onData);
    raw.once("end", done);
    raw.once("error", done);
    raw.once("close", done);
    raw.resume();
  });
}
