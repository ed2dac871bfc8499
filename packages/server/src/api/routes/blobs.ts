import type { FastifyReply, FastifyRequest } from "fastify";
import { blobStoreFor } from "../../blobs/blobs.js";
import { blobEtag, ifRangeHolds, lastModified, noneMatch } from "../../blobs/conditional.js";
import { signingKey } from "../../blobs/key.js";
import { parseRange } from "../../blobs/range.js";
import { checkBlobUrl } from "../../blobs/signing.js";
import { ApiError } from "../../errors.js";
import type { AppContext } from "../context.js";
import type { RouteModule } from "./index.js";

const gone = () => new ApiError(404, "not_found", "this content does not exist or was purged");

let missingSaidAt = 0;

/**
 * Logs, at most once a minute, that a blob the database records is not in this process's store:
 * processes sharing a database must share KLEN_DATA_DIR (one folder, or one shared volume across
 * machines) or keep blobs in the database (KLEN_BLOB_STORE=database), or each serves only what it
 * stored itself.
 */
function missingBytes(ctx: AppContext, id: string): void {
  const now = Date.now();
  if (now - missingSaidAt < 60_000) return;
  missingSaidAt = now;
  ctx.log.error(
    { blob_id: id, data_dir: ctx.config.dataDir },
    "a stored blob's bytes are not in this process's KLEN_DATA_DIR: every process sharing the database must share KLEN_DATA_DIR (a shared volume across machines), or keep new blobs in the database (KLEN_BLOB_STORE=database)",
  );
}

/** How far ahead of this process's clock another process may have made a URL's expiry. */
const CLOCK_SKEW_MS = 5 * 60_000;

/**
 * `GET /v1/blobs/{id}?expires=…&signature=…` (PRODUCT.md §5): pre-signed, no API key. The
 * signature is checked before anything is looked up, so an unsigned request learns nothing
 * about which ids exist (403 for tampered, malformed or expired; 404 only with a valid signature).
 * Audio is served with its stored content type and single byte-range support (206/416); `HEAD`
 * gives the same headers without opening the file. Blobs never change: the id is their ETag, and
 * `If-None-Match` (304) and `If-Range` are honoured.
 */
export const blobRoutes: RouteModule = (app, ctx) => {
  const serve = async (req: FastifyRequest, reply: FastifyReply) => {
    const id = (req.params as { id: string }).id;
    const q = req.query as Record<string, unknown>;
    const key = await signingKey(ctx.store, ctx.store.db);
    const check = checkBlobUrl(
      key,
      id,
      q.expires,
      q.signature,
      ctx.clock.now(),
      ctx.config.urlTtlMs + CLOCK_SKEW_MS,
    );
    if (!check.ok) {
      const message = check.reason === "expired" ? "this URL has expired" : "this URL is not validly signed";
      throw new ApiError(403, "forbidden", message, { reason: check.reason });
    }
    const row = await ctx.store.db
      .selectFrom("blobs")
      .select(["path", "content_type", "size", "sealed", "store", "created_at"])
      .where("id", "=", id)
      .executeTakeFirst();
    if (!row) throw gone();
    const store = blobStoreFor(ctx, row);
    const size = await store.size(row.path);
    if (size === undefined) {
      // A row without its bytes here: another process stored them in a KLEN_DATA_DIR of its own.
      // The receiver is told no more than for a purged blob; the operator is told why.
      missingBytes(ctx, id);
      throw gone();
    }
    const etag = blobEtag(id);
    const created = Number(row.created_at);
    reply
      .header("etag", etag)
      .header("last-modified", lastModified(created))
      // The URL is a capability: keep it out of shared caches; the receiver's own may keep it.
      .header("cache-control", "private, max-age=3600");
    if (noneMatch(req.headers["if-none-match"], etag)) return reply.status(304).send();
    // A Range whose If-Range names other bytes is ignored: the whole blob, 200. So is a Range on
    // HEAD: GET is the only method with range handling (RFC 9110 §14.2).
    const range =
      req.method === "GET" && ifRangeHolds(req.headers["if-range"] as string | undefined, etag, created)
        ? parseRange(req.headers.range, size)
        : ({ kind: "full" } as const);
    if (range.kind === "unsatisfiable") {
      return reply
        .status(416)
        .header("content-range", `bytes */${size}`)
        .send(
          new ApiError(
            416,
            "range_not_satisfiable",
            `the range is outside the ${size} bytes of content`,
          ).toJSON(),
        );
    }
    const part = range.kind === "partial" ? { start: range.start, end: range.end } : undefined;
    reply
      .header("content-type", row.content_type)
      .header("accept-ranges", "bytes")
      .header("x-content-type-options", "nosniff");
    if (part) {
      reply.status(206).header("content-range", `bytes ${part.start}-${part.end}/${size}`);
      reply.header("content-length", String(part.end - part.start + 1));
    } else {
      reply.header("content-length", String(size));
    }
    // HEAD answers from the row and the file's size alone: handing it a stream, as GET does, made
    // Fastify read (and with KLEN_ENCRYPTION_KEY decrypt) the whole file to throw it away, after
    // the answer had gone (5 HEADs of a 20 MB recording read 100 MB).
    if (req.method === "HEAD") return reply.send();
    // A zero-length file cannot be read with an inclusive range; it is sent empty.
    const stream = size === 0 ? undefined : await store.read(row.path, part ?? { start: 0, end: size - 1 });
    if (size > 0 && !stream) throw gone();
    return reply.send(stream ?? "");
  };
  const schema = {
    summary: "Download a transcript, summary or recording by its pre-signed URL",
    description:
      "No API key: the `expires` (Unix seconds) and `signature` query parameters of the URL in the event " +
      "authorize it. 403 when tampered, malformed or expired; 404 when unknown or purged. Audio supports " +
      "`Range` (206/416), `If-Range`, and `If-None-Match` (304) against the `ETag` (the blob id). HEAD answers " +
      "the headers of a GET without Range, without the body.",
    // The query is checked by the handler (a bad one is a 403, not a 400), so it has no schema here.
    params: { type: "object", properties: { id: { type: "string" } } },
    security: [],
  };
  // HEAD is its own route, registered first, so that Fastify does not add its automatic one,
  // which would run the GET handler and drain the body it returns.
  app.head("/v1/blobs/:id", { schema }, serve);
  app.get("/v1/blobs/:id", { schema }, serve);
};
