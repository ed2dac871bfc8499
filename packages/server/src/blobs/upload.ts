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

/** The media type of a content-type header, lower-cased and without parameters. */
export function mediaType(header: string | undefined): string {
  return (header ?? "").split(";")[0]!.trim().toLowerCase();
}

export interface Upload {
  tempFile: string;
  size: number;
  /** sha256 of the bytes, hex: the request-body digest for Idempotency-Key. */
  sha256: string;
}

/**
 * Streams a request body to a temp file in the blob store, counting and hashing on the way:
 * memory stays flat whatever the size (one chunk at a time, with back-pressure from the disk).
 * More than `limit` bytes stops the transfer with a 413 and deletes the partial file.
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
  const meter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      size += chunk.length;
      if (size > limit) {
        done(new ApiError(413, "payload_too_large", `the recording is larger than ${limit} bytes`));
        return;
      }
      hash.update(chunk);
      done(null, chunk);
    },
  });
  try {
    await pipeline(body, meter, writeStream(tempFile));
  } catch (err) {
    await unlink(tempFile).catch(() => undefined);
    if (err instanceof ApiError) throw err;
    // The client went away mid-upload (or the disk failed): nothing was stored.
    throw new ApiError(400, "upload_incomplete", "the recording upload did not complete", undefined, {
      cause: err,
    });
  }
  return { tempFile, size, sha256: hash.digest("hex") };
}
