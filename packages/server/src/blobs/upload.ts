import { createHash } from "node:crypto";
import { unlink } from "node:fs/promises";
import { type Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { ApiError } from "../errors.js";
import { type BlobStore, writeStream } from "./store.js";

/** The audio types a recording may have (PRODUCT.md §6); anything else is a 415. */
export const AUDIO_TYPES = [
  "audio/wav",
  "audio/x-wav",
  "audio/wave",
  "audio/vnd.wave",
  "audio/mpeg",
  "audio/mp3",
  "audio/ogg",
  "audio/opus",
  "audio/webm",
  "audio/mp4",
  "audio/x-m4a",
  "audio/aac",
  "audio/flac",
  "audio/x-flac",
  "audio/basic",
] as const;

/** The 415 for a recording that is not audio (`type`: what was sent, `mediaType`). */
export function notAudio(type: string): ApiError {
  return new ApiError(
    415,
    "unsupported_media_type",
    `a recording must be audio (${AUDIO_TYPES.join(", ")}), not "${type || "none"}"`,
    { field: "content-type" },
  );
}

/** The media type of a content-type header, lower-cased and without parameters. */
export function mediaType(header: string | undefined): string {
  return (header ?? "").split(";")[0]!.trim().toLowerCase();
}

/**
 * After a refusal, the rest of the body is read and discarded (up to 16 MiB, or the limit if
 * larger) so that the client, still sending, reads the 4xx on a healthy connection instead of a
 * reset. A client that keeps sending past that is cut off.
 */
export function discardRest(body: Readable, limit: number): void {
  const cap = Math.max(limit, 16 * 1024 * 1024);
  let discarded = 0;
  body.on("data", (c: Buffer) => {
    discarded += c.length;
    if (discarded > cap) body.destroy();
  });
  body.resume();
}

export interface Upload {
  tempFile: string;
  size: number;
  /** sha256 of the bytes, hex: the request-body digest for Idempotency-Key. */
  sha256: string;
}

/** File-system errors that mean the server cannot store bytes now, not that the upload was cut off. */
const STORAGE_FAILURES = new Set(["ENOSPC", "EDQUOT", "EIO", "EROFS", "EACCES", "EPERM", "EMFILE", "ENFILE"]);

/**
 * What an upload that did not complete answers: the server could not write it (a full disk, an
 * I/O error) is a 503 to send again shortly, no fault of the client's (logged as a server
 * failure); otherwise the client went away mid-upload, a 400. Nothing was stored either way.
 */
export function uploadFailure(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  return (
    storageFailure(err, "recording") ??
    new ApiError(400, "upload_incomplete", "the recording upload did not complete", undefined, {
      cause: err,
    })
  );
}

/**
 * A write of `what` the server could not make (a full disk, an I/O error): `503 storage_unavailable`
 * to send again shortly; undefined for any other error.
 */
export function storageFailure(err: unknown, what: string): ApiError | undefined {
  const code = (err as { code?: unknown }).code;
  if (typeof code !== "string" || !STORAGE_FAILURES.has(code)) return undefined;
  return new ApiError(
    503,
    "storage_unavailable",
    `the ${what} could not be stored; retry shortly`,
    { retry_after: 1 },
    { cause: err },
  );
}

/**
 * Streams a request body to a temp file in the blob store, counting and hashing on the way:
 * memory stays flat whatever the size (one chunk at a time, with back-pressure from the disk).
 * More than `limit` bytes stops the transfer with a 413 and deletes the partial file. `name` is
 * the key the file will be adopted as: a store that seals its bytes (KLEN_ENCRYPTION_KEY) seals
 * them on the way, so the file is ready for `adopt` to rename; size and hash are of the clear bytes.
 */
export async function streamToTemp(
  body: Readable,
  store: BlobStore,
  name: string,
  limit: number,
): Promise<Upload> {
  const tempFile = await store.tempPath(name);
  const hash = createHash("sha256");
  let size = 0;
  let tooLarge = false;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      size += chunk.length;
      if (size > limit) {
        tooLarge = true;
        done(new ApiError(413, "payload_too_large", `the recording is larger than ${limit} bytes`));
        return;
      }
      hash.update(chunk);
      done(null, chunk);
    },
  });
  // The body is piped by hand rather than through pipeline(): on a 413 the request must stay
  // open long enough to carry the answer, so it is unpiped and drained, not destroyed.
  const onAbort = () => meter.destroy(new Error("the client aborted the upload"));
  body.once("aborted", onAbort);
  body.once("error", onAbort);
  body.pipe(meter);
  try {
    const seal = store.sealing?.(name);
    await pipeline(seal ? [meter, seal, writeStream(tempFile)] : [meter, writeStream(tempFile)]);
  } catch (err) {
    body.unpipe(meter);
    if (tooLarge) discardRest(body, limit);
    await unlink(tempFile).catch(() => undefined);
    throw uploadFailure(err);
  } finally {
    body.off("aborted", onAbort);
    body.off("error", onAbort);
  }
  return { tempFile, size, sha256: hash.digest("hex") };
}
