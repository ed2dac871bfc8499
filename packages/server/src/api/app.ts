import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import swagger from "@fastify/swagger";
import { EVENT_TYPES, eventSchemas } from "@klen/webhooks/schemas";
import { Ajv } from "ajv";
import Fastify, {
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from "fastify";
import { sql } from "kysely";
import { ApiError } from "../errors.js";
import type { Logger } from "../log.js";
import { BACKLOG_COUNT_CAP, httpRequests, measureBacklogWith, registry } from "../metrics.js";
import { type Db, PENDING } from "../storage/types.js";
import { Authenticator, bearerKey, RateLimiter } from "./auth.js";
import { type AppContext, announceEndpointChange, announceWork } from "./context.js";
import { installErrorHandler, RouteTable } from "./errors.js";
import { canonicalJson, digest, type IdempotentRequest, type Outcome, runIdempotent } from "./idempotency.js";
import { decodeJsonBody, parseJsonBody, refuseCharset } from "./json-body.js";
import { completeOpenApi } from "./openapi.js";
import { RESPONSE_SCHEMAS } from "./response-schemas.js";
import { registerRoutes } from "./routes/index.js";
import { guardSlowBodies } from "./slow-body.js";

// Bodies are validated strictly: no type coercion ("5" is not an agent id) and unknown fields are
// errors, not silently dropped. Query strings arrive as text, so they are coerced.
const bodyAjv = new Ajv({
  coerceTypes: false,
  useDefaults: true,
  removeAdditional: false,
  allErrors: false,
  strict: false,
});
const queryAjv = new Ajv({ coerceTypes: "array", useDefaults: true, removeAdditional: false, strict: false });

/** The integer-typed path and query parameters of a route's schema, found once per route. */
const integerParams = new WeakMap<object, Array<["params" | "querystring", string]>>();

function integersOf(schema: Record<string, unknown>): Array<["params" | "querystring", string]> {
  let found = integerParams.get(schema);
  if (found) return found;
  found = [];
  for (const part of ["params", "querystring"] as const) {
    const props = (schema[part] as { properties?: Record<string, { type?: string }> } | undefined)
      ?.properties;
    for (const [name, s] of Object.entries(props ?? {})) if (s.type === "integer") found.push([part, name]);
  }
  integerParams.set(schema, found);
  return found;
}

const INTEGER_TEXT = /^-?(0|[1-9][0-9]*)$/;

/**
 * Path and query integers must be written as integers: the query validator coerces with
 * `Number()`, which would take `0x10`, `1e3`, ` 1`, `+1`, `01` or `1.0` as some id. Checked on the
 * raw text before validation; a repeated query parameter is left to the schema.
 */
function checkIntegerText(req: FastifyRequest): void {
  const schema = req.routeOptions.schema as Record<string, unknown> | undefined;
  if (!schema) return;
  for (const [part, name] of integersOf(schema)) {
    const raw = (part === "params" ? req.params : req.query) as Record<string, unknown> | undefined;
    const text = raw?.[name];
    if (typeof text === "string" && !INTEGER_TEXT.test(text))
      throw new ApiError(400, "invalid_request", `"${name}" must be an integer, written in decimal digits`, {
        field: name,
        location: part,
      });
  }
}

export interface RouteHelpers {
  /** Runs a state-changing handler with Idempotency-Key semantics and sends its outcome. */
  mutate(
    req: FastifyRequest,
    reply: FastifyReply,
    fn: (trx: Db) => Promise<Outcome>,
    opts?: { work?: boolean; endpoint?: string },
  ): Promise<FastifyReply>;
  /** Drops this process's cached key lookups of an account (after a key is revoked). */
  forgetKeys(accountId: number): void;
  /**
   * Whether the key a long-lived request (the event stream) was authenticated with still opens
   * its account. A key revoked through this process is refused at once, one revoked through
   * another within the lookup cache's lifetime (5 s).
   */
  keyStillValid(req: FastifyRequest): Promise<boolean>;
  /** Counts `forgetKeys` calls: a change means some key of this process may have been revoked. */
  keysForgotten(): number;
}

/**
 * What an Idempotency-Key is kept and compared by. Only a request with a key is ever compared with
 * another, so only then is its body hashed: the recording route's digest of the bytes it stored,
 * the raw text of a body that was not JSON, else the parsed body with its fields in sorted order
 * (the same fields in another order are the same request).
 */
function idempotentRequestOf(req: FastifyRequest): IdempotentRequest {
  const header = req.headers["idempotency-key"];
  const key = Array.isArray(header) ? header[0] : header;
  const base = { accountId: req.account.id, key, method: req.method, path: req.url.split("?")[0]! };
  if (key === undefined) return { ...base, bodyDigest: "" };
  const raw = (req as { rawBodyDigest?: string }).rawBodyDigest;
  if (raw !== undefined) return { ...base, bodyDigest: raw };
  if (req.body === undefined) return { ...base, bodyDigest: digest("") };
  const canonical = canonicalJson(req.body);
  const asSent = JSON.stringify(req.body);
  return {
    ...base,
    bodyDigest: digest(canonical),
    ...(asSent === canonical ? {} : { bodyDigestAsSent: digest(asSent) }),
  };
}

/**
 * The HTTP app: the `/v1` API, OpenAPI, health and metrics. With `workerOnly` (a `--role worker`
 * process with KLEN_WORKER_PORT) only /healthz and /metrics are served.
 */
/** The HTTP layer's level: warnings at most, and no more than LOG_LEVEL lets through (`silent`, `error`). */
export function httpLogLevel(log: Logger): string {
  return log.levelVal > log.levels.values.warn! ? log.level : "warn";
}

export async function buildApp(
  ctx: AppContext,
  opts: {
    logger?: boolean;
    workerOnly?: boolean;
    /** Tests: the slow-body guard's grace and check interval (slow-body.ts). */
    slowBody?: { graceMs: number; checkEveryMs: number };
  } = {},
): Promise<FastifyInstance> {
  const app = Fastify({
    // Requests are counted in /metrics rather than logged one by one; the HTTP layer logs warnings.
    ...(opts.logger === false
      ? { logger: false }
      : {
          loggerInstance: ctx.log.child(
            { component: "http" },
            { level: httpLogLevel(ctx.log) },
          ) as unknown as FastifyBaseLogger,
        }),
    bodyLimit: ctx.config.maxBody,
    trustProxy: false,
    // Malformed percent-encoding or an over-long path segment is rejected by the router before
    // the error handler runs; without this Fastify answers in its own shape, not the API's.
    // A request Node's parser refuses (bad header bytes, headers too large) never reaches the
    // router either: answer it in the API's shape too, then close as Node would.
    clientErrorHandler: (err, socket) => {
      if ((err as NodeJS.ErrnoException).code === "ECONNRESET" || socket.destroyed) return;
      const code = (err as NodeJS.ErrnoException).code;
      const [status, reason, apiCode, message] =
        code === "ERR_HTTP_REQUEST_TIMEOUT"
          ? [408, "Request Timeout", "request_timeout", "the request took too long to arrive"]
          : code === "HPE_HEADER_OVERFLOW"
            ? [
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                "the request headers are too large",
              ]
            : [400, "Bad Request", "invalid_request", "the HTTP request is malformed"];
      const body = JSON.stringify(new ApiError(status, apiCode, message).toJSON());
      if (socket.writable)
        socket.write(
          `HTTP/1.1 ${status} ${reason}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${body}`,
        );
      socket.destroy(err);
    },
    frameworkErrors: (err, _req, reply) => {
      const tooLong = err.code === "FST_ERR_MAX_PARAM_LENGTH";
      const status = tooLong ? 414 : 400;
      const message = tooLong ? "a path segment is too long" : "the URL is not validly encoded";
      const body = new ApiError(status, tooLong ? "uri_too_long" : "invalid_url", message, {
        field: "url",
      }).toJSON();
      return (reply as FastifyReply).status(status).send(body);
    },
    ajv: { customOptions: { removeAdditional: false } },
    // Requests arriving while the server closes are answered in the API's shape (below).
    return503OnClosing: false,
    // Unique across processes and restarts (Fastify's own count starts again at req-1 in each):
    // the `x-request-id` of an answer finds its log lines.
    genReqId: () => `req_${randomUUID().replaceAll("-", "")}`,
  });
  guardSlowBodies(app, ctx.log, opts.slowBody);
  app.setValidatorCompiler(({ schema, httpPart }) =>
    httpPart === "body" ? bodyAjv.compile(schema) : queryAjv.compile(schema),
  );
  // A refusal of an authenticated state-changing request (bad input, no such resource) is the
  // first answer to its Idempotency-Key as much as a handler's own is (PRODUCT.md §4). A
  // recording's refusals are not kept: its body, what a repeat is compared by, was not read.
  const routes = new RouteTable();
  installErrorHandler(
    app,
    async (req, refusal) => {
      if (req.account === undefined || req.method === "GET" || req.method === "HEAD") return undefined;
      if (!takesJsonBody(req)) return undefined;
      const r = idempotentRequestOf(req);
      if (r.key === undefined) return undefined;
      return runIdempotent(
        ctx.store,
        r,
        async () => {
          throw refusal;
        },
        ctx.clock.now(),
      );
    },
    routes,
  );
  // The API speaks JSON (and raw audio on the recording route); plain text is a 415, not a string body.
  app.removeContentTypeParser("text/plain");
  // An empty body sent with `content-type: application/json` (curl -X POST -H …, many HTTP
  // clients) is no body at all rather than a parse error; anything else parses as JSON, with the
  // checks of parseJsonBody.
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "buffer" }, (req, body, done) => {
    let text: string;
    try {
      refuseCharset(req.headers["content-type"], body as Buffer);
      text = decodeJsonBody(body as Buffer);
    } catch (err) {
      if (req.headers["idempotency-key"] !== undefined)
        (req as { rawBodyDigest?: string }).rawBodyDigest = `bytes:${digest(body as Buffer)}`;
      return done(err as Error, undefined);
    }
    if (text.trim() === "") return done(null, undefined);
    let value: unknown;
    try {
      value = parseJsonBody(text);
    } catch (err) {
      // Its refusal may be kept for an Idempotency-Key: a repeat is compared by the text itself.
      if (req.headers["idempotency-key"] !== undefined)
        (req as { rawBodyDigest?: string }).rawBodyDigest = `text:${digest(text)}`;
      return done(err as Error, undefined);
    }
    done(null, value);
  });
  // A `/v1` route that takes no query parameter refuses any, as the lists refuse an unknown one:
  // it gets an empty query schema, so the validator says `unknown query parameter "…"`. The
  // pre-signed blob route checks its own query (a bad one is a 403).
  app.addHook("onRoute", (route) => {
    routes.add(route.method, route.url);
    if (!route.url.startsWith("/v1/") || route.url === "/v1/blobs/:id") return;
    route.schema ??= {};
    route.schema.querystring ??= { type: "object", additionalProperties: false, properties: {} };
  });
  // A bodiless POST/PATCH to a route with a body schema means `{}`: steps whose fields are all
  // optional (start, end, rotate-secret) just work, and the others name the missing field.
  app.addHook("preValidation", async (req) => {
    if (req.body === undefined && req.method !== "GET" && req.routeOptions.schema?.body) req.body = {};
    refuseUnexpectedBody(req);
    checkIntegerText(req);
  });

  await app.register(swagger, {
    openapi: {
      info: { title: "Klen call webhooks API", version: ctx.version },
      components: {
        securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
        schemas: {
          ...Object.fromEntries(
            EVENT_TYPES.map((t) => {
              const { $id: _id, ...rest } = eventSchemas[t];
              return [t.replace(".", "_"), rest];
            }),
          ),
          ...RESPONSE_SCHEMAS,
        } as never,
      },
      security: [{ bearer: [] }],
    },
    transformObject: (d) =>
      ("openapiObject" in d ? completeOpenApi(d.openapiObject as never) : d.swaggerObject) as never,
  });

  const auth = new Authenticator(ctx.store);
  const limiter = new RateLimiter(ctx.config.rateLimit);
  app.decorateRequest("account", undefined as never);
  // Stopping: requests still arriving on open connections are told to go elsewhere, and the
  // connection is closed after the answer.
  let closing = false;
  app.addHook("preClose", async () => {
    closing = true;
  });
  app.addHook("onRequest", async (req, reply) => {
    reply.header("x-request-id", req.id);
    if (!closing) return;
    reply.header("connection", "close");
    throw new ApiError(503, "shutting_down", "the server is shutting down; retry shortly", {
      retry_after: 1,
    });
  });
  app.addHook("onRequest", async (req) => {
    // A worker's port serves no API: /v1/… there is a 404 with or without a key.
    if (opts.workerOnly) return;
    // Decided by the matched route, not the raw URL: an absolute-form request target
    // (`GET http://host/v1/calls`) is routed to /v1/calls while req.url starts with "http".
    const route = req.routeOptions.url;
    if (route === undefined) {
      if (!req.url.startsWith("/v1/") || req.url.startsWith("/v1/blobs/")) return;
    } else if (!route.startsWith("/v1/") || route === "/v1/blobs/:id") return;
    req.account = await auth.authenticate(req);
    // Authenticated, so the request carries a key.
    const wait = limiter.take(bearerKey(req)!);
    if (wait > 0)
      throw new ApiError(429, "rate_limited", "too many requests for this API key", { retry_after: wait });
  });
  // A body is taken as sent: one declared compressed (or otherwise coded) was read as if it were
  // plain, and a plain JSON body labelled gzip changed state (RFC 9110 §15.5.16: a 415).
  app.addHook("onRequest", async (req, reply) => {
    const coding = req.headers["content-encoding"]?.trim().toLowerCase();
    if (coding === undefined || coding === "" || coding === "identity") return;
    const hasBody =
      req.headers["transfer-encoding"] !== undefined || Number(req.headers["content-length"] ?? 0) > 0;
    if (!hasBody) return;
    // Not read: the connection closes after the answer rather than taking the body in to reuse it.
    reply.header("connection", "close");
    throw new ApiError(
      415,
      "unsupported_media_type",
      `content-encoding "${coding.slice(0, 40)}" is not supported: send the body uncompressed`,
      { field: "content-encoding" },
    );
  });

  const helpers: RouteHelpers = {
    async mutate(req, reply, fn, o = {}) {
      const out = await runIdempotent(ctx.store, idempotentRequestOf(req), fn, ctx.clock.now());
      if (out.replayed) reply.header("idempotent-replayed", "true");
      else if (out.status < 300) {
        if (o.work) await announceWork(ctx);
        if (o.endpoint) await announceEndpointChange(ctx, o.endpoint);
      }
      return reply.status(out.status).send(out.body);
    },
    forgetKeys: (accountId) => auth.forget(accountId),
    keysForgotten: () => auth.forgotten,
    async keyStillValid(req) {
      try {
        return (await auth.authenticate(req)).id === req.account.id;
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return false;
        throw err;
      }
    },
  };

  // Healthy: the database answers a read and takes writes, and no background loop of this process
  // has failed every try for HEALTH_FAILING_MS (the dispatcher's claims, while another process
  // holds SQLite's write lock, say). A read alone passed on a PostgreSQL standby after a failover.
  app.get("/healthz", { schema: { hide: true } }, async () => {
    if (ctx.store.caps.name === "postgres") {
      const r = await sql<{ ro: string }>`SELECT current_setting('transaction_read_only') AS ro`.execute(
        ctx.store.db,
      );
      if (r.rows[0]?.ro === "on")
        throw new ApiError(
          503,
          "database_unavailable",
          "the database takes no writes: it is read-only (a standby?)",
        );
    }
    await ctx.store.db.selectFrom("accounts").select("id").limit(1).execute();
    const problem = ctx.health?.problem();
    if (problem)
      throw new ApiError(
        503,
        "unhealthy",
        problem.waiting
          ? `the ${problem.part} has had no answer from the database for ${Math.round(problem.forMs / 1000)} s`
          : `the ${problem.part} has failed every try for ${Math.round(problem.forMs / 1000)} s: ${problem.error}`,
      );
    return { ok: true, version: ctx.version };
  });
  measureBacklogWith(async () => {
    const now = ctx.clock.now();
    const db = ctx.store.db;
    // One read for both gauges: the oldest due rows first (the due index's order), so the
    // smallest of the counted ones is the oldest of all.
    const due = db
      .selectFrom("deliveries")
      .select("next_attempt_at")
      .where("status", "=", PENDING) // the literal, which lets the planner use the partial due index
      .where("next_attempt_at", "<=", now)
      .orderBy("next_attempt_at")
      .limit(BACKLOG_COUNT_CAP);
    const r = await db
      .selectFrom(due.as("d"))
      .select((eb) => [eb.fn.countAll().as("n"), eb.fn.min("next_attempt_at").as("t")])
      .executeTakeFirst();
    return {
      due: Number(r?.n ?? 0),
      oldestDueMs: r?.t == null ? 0 : Math.max(0, now - Number(r.t)),
    };
  });
  const metricsToken = ctx.config.metricsToken;
  app.get("/metrics", { schema: { hide: true } }, async (req, reply) => {
    // Open by default, as Prometheus endpoints usually are; with KLEN_METRICS_TOKEN, a scraper
    // sends it (`authorization` in the scrape config) and nothing else reads the process's figures.
    if (metricsToken !== undefined && !sameSecret(bearerKey(req), metricsToken)) {
      reply.header("www-authenticate", 'Bearer realm="metrics"');
      throw new ApiError(401, "unauthorized", "send Authorization: Bearer <KLEN_METRICS_TOKEN>");
    }
    return reply.header("content-type", registry.contentType).send(await registry.metrics());
  });
  app.addHook("onResponse", async (req, reply) => {
    httpRequests.inc({ method: req.method, status: `${Math.floor(reply.statusCode / 100)}xx` });
  });
  if (opts.workerOnly) return app;
  app.get("/openapi.json", { schema: { hide: true } }, async () => app.swagger());
  await registerRoutes(app, ctx, helpers);
  return app;
}

/**
 * A state-changing `/v1` route that takes no body (create an API key, retry a delivery, every
 * DELETE) refuses one with fields, as a route with a body schema refuses an unknown field: a
 * client sending `{"hard": true}` to a DELETE must not be told it succeeded. No body, or `{}`, is
 * fine. The recording route reads its body as audio.
 */
function refuseUnexpectedBody(req: FastifyRequest): void {
  if (req.routeOptions.schema?.body || req.body === undefined || req.method === "GET") return;
  if (!takesJsonBody(req)) return;
  const body = req.body;
  if (body !== null && typeof body === "object" && !Array.isArray(body)) {
    const [first] = Object.keys(body);
    if (first === undefined) return;
    throw new ApiError(400, "invalid_request", `unknown field "${first}"`, { field: first });
  }
  throw new ApiError(400, "invalid_request", "this request takes no body (or {})", { field: "body" });
}

/** An API route whose body, if any, is JSON: every `/v1` route but the recording upload (audio). */
function takesJsonBody(req: FastifyRequest): boolean {
  const route = req.routeOptions.url;
  return route?.startsWith("/v1/") === true && !route.endsWith("/recording");
}

/** `given` equals `secret`, compared in constant time (by their SHA-256, so lengths do not show). */
function sameSecret(given: string | undefined, secret: string): boolean {
  if (given === undefined) return false;
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(secret).digest();
  return timingSafeEqual(a, b);
}
