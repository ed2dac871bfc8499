import { unlink } from "node:fs/promises";
import type { Readable } from "node:stream";
import { blobStoreFor, insertBlob, newBlobId, presignedUrl, sealedNow } from "../../blobs/blobs.js";
import { AUDIO_TYPES, discardRest, mediaType, notAudio, streamToTemp } from "../../blobs/upload.js";
import { applyTransition, callObject, lockCall } from "../../calls/service.js";
import { transition } from "../../calls/transitions.js";
import { ApiError, badRequest } from "../../errors.js";
import { idParam } from "./common.js";
import type { RouteModule } from "./index.js";

/**
 * `POST /v1/calls/{id}/recording` with a raw audio body → the call; emits `call.recording`
 * (PRODUCT.md §6). The body is never buffered: a content-type parser hands the raw request
 * stream over, which is written to a temp file in the blob store (hashing and counting on the
 * way), then, inside the transition's transaction, renamed into place. An invalid transition,
 * a replayed Idempotency-Key or any failure leaves no file behind: whatever has no `blobs` row
 * when the request is over is deleted.
 */
export const recordingRoutes: RouteModule = async (app, ctx, h) => {
  // Encapsulated so that the audio parser applies to this route only.
  await app.register(async (scope) => {
    scope.addContentTypeParser([...AUDIO_TYPES], (_req, payload, done) => done(null, payload));
    // Audio labelled JSON is refused as the wrong media type (415), not parsed and refused as
    // bad JSON: the handler below names the content type whatever the bytes are.
    scope.removeContentTypeParser("application/json");
    scope.addContentTypeParser("application/json", (_req, payload, done) => done(null, payload));
    scope.post(
      "/v1/calls/:id/recording",
      {
        schema: {
          summary: "Upload the call's audio recording (raw body); emits call.recording",
          description: `Raw audio body, one of: ${AUDIO_TYPES.join(", ")}. At most KLEN_MAX_RECORDING bytes (413).`,
          params: idParam,
        },
        bodyLimit: ctx.config.maxRecording,
      },
      async (req, reply) => {
        const type = mediaType(req.headers["content-type"]);
        const body = req.body as Readable | undefined;
        if (!(AUDIO_TYPES as readonly string[]).includes(type) || typeof body?.pipe !== "function")
          throw notAudio(type);
        const id = (req.params as { id: number }).id;
        const accountId = req.account.id;
        try {
          const declared = Number(req.headers["content-length"] ?? Number.NaN);
          if (declared > ctx.config.maxRecording) {
            throw new ApiError(
              413,
              "payload_too_large",
              `the recording is larger than ${ctx.config.maxRecording} bytes`,
            );
          }
          // Without an Idempotency-Key nothing can be replayed, so a step that cannot happen is
          // refused before a possibly large upload is read. With one, the stored answer for
          // these exact bytes must win, so the body is read first.
          if (req.headers["idempotency-key"] === undefined) {
            const call = await lockCall(ctx.store.db, { ...ctx.store.caps, rowLocks: false }, accountId, id);
            const check = transition(call, "recording", { now: ctx.clock.now() });
            if (!check.ok) throw new ApiError(check.status, check.code, check.message);
          }
        } catch (err) {
          // Refused unread: discard (boundedly) what the client is still sending.
          discardRest(body, ctx.config.maxRecording);
          throw err;
        }
        const store = blobStoreFor(ctx);
        const blobId = newBlobId();
        const upload = await streamToTemp(body, store, blobId, ctx.config.maxRecording);
        if (upload.size === 0) {
          await unlink(upload.tempFile).catch(() => undefined);
          throw badRequest("body", "the recording is empty");
        }
        (req as { rawBodyDigest?: string }).rawBodyDigest = `sha256:${upload.sha256}:${type}`;
        let adopted = false;
        try {
          return await h.mutate(
            req,
            reply,
            async (trx) => {
              const now = ctx.clock.now();
              const { call } = await applyTransition(
                trx,
                ctx.store.caps,
                accountId,
                id,
                "recording",
                { now },
                async () => {
                  // The transaction may be retried (idempotency race): a file is renamed only once;
                  // bytes copied into the database rolled back with the attempt and go in again.
                  if (!adopted || store.transactional) await store.adopt(upload.tempFile, blobId, trx);
                  adopted = true;
                  await insertBlob(trx, {
                    id: blobId,
                    accountId,
                    callId: id,
                    kind: "recording",
                    contentType: type,
                    size: upload.size,
                    now,
                    sealed: sealedNow(ctx.config),
                    store: store.kind,
                  });
                  return { recording_url: await presignedUrl(ctx, trx, blobId, now) };
                },
              );
              return { status: 200, body: callObject(call) };
            },
            { work: true },
          );
        } finally {
          if (!adopted || store.transactional) await unlink(upload.tempFile).catch(() => undefined);
          if (adopted && !store.transactional) {
            // If the database cannot say (it is down), the file stays: the retention sweep
            // removes it later if it has no row, and the request's own error is what matters.
            const kept = await ctx.store.db
              .selectFrom("blobs")
              .select("id")
              .where("id", "=", blobId)
              .executeTakeFirst()
              .catch(() => true);
            if (!kept) await store.remove(blobId).catch(() => undefined);
          }
        }
      },
    );
  });
};
