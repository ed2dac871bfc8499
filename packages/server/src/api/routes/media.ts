import { signingKey } from "../../blobs/key.js";
import { blobUrl, expiryOf } from "../../blobs/signing.js";
import { notFound } from "../../errors.js";
import { isoMillis, isoSeconds } from "../../util/time.js";
import { idParam } from "./common.js";
import type { RouteModule } from "./index.js";

/**
 * `GET /v1/calls/{id}/media`: the call's stored content — its recording, and the transcript and
 * summaries too long to go inline — each with a pre-signed URL made now, valid for KLEN_URL_TTL.
 * An event's own URLs are part of its body, made when the event was, and so stop working
 * KLEN_URL_TTL after it: this is how a receiver that was down longer, or that was sent an old event
 * by a replay or a manual retry, gets the bytes. Content purged by retention is no longer listed.
 */
export const mediaRoutes: RouteModule = (app, ctx) => {
  app.get("/v1/calls/:id/media", { schema: { params: idParam } }, async (req) => {
    const id = (req.params as { id: number }).id;
    const db = ctx.store.db;
    const call = await db
      .selectFrom("calls")
      .select("id")
      .where("id", "=", id)
      .where("account_id", "=", req.account.id)
      .executeTakeFirst();
    if (!call) throw notFound("call", id);
    const blobs = await db
      .selectFrom("blobs")
      .select(["id", "kind", "content_type", "size", "created_at"])
      .where("call_id", "=", id)
      .where("account_id", "=", req.account.id)
      .orderBy("created_at")
      .orderBy("id")
      .execute();
    // The event that carried each blob: the one whose body has its URL. (Not the one made at the
    // blob's time: on PostgreSQL an `end` and a `summary` of one call sent together can share a
    // millisecond, and both may store a summary.) A call has a handful of events.
    const events =
      blobs.length === 0
        ? []
        : await db
            .selectFrom("events")
            .select(["id", "event_type", "payload"])
            .where("call_id", "=", id)
            .where("account_id", "=", req.account.id)
            .execute();
    const now = ctx.clock.now();
    const expires = expiryOf(now, ctx.config.urlTtlMs);
    const key = await signingKey(ctx.store, db);
    return {
      data: blobs.map((b) => {
        const path = `/v1/blobs/${encodeURIComponent(b.id)}?`;
        const carrier = events.find((e) => e.payload.includes(path));
        return {
          id: b.id,
          kind: b.kind,
          event_id: carrier?.id ?? null,
          event_type: carrier?.event_type ?? null,
          content_type: b.content_type,
          size: Number(b.size),
          created_at: isoMillis(Number(b.created_at)),
          url: blobUrl(ctx.config.publicUrl, key, b.id, expires),
          expires_at: isoSeconds(expires * 1000),
        };
      }),
    };
  });
};
