import assert from "node:assert/strict";
import { request } from "node:http";

/** Uploads `wav` as call `callId`'s recording through the API at `base`, and expects a 200. */
export async function uploadRecording(
  base: string,
  apiKey: string,
  callId: number,
  wav: Buffer,
): Promise<void> {
  const r = await fetch(`${base}/v1/calls/${callId}/recording`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "audio/wav" },
    body: new Uint8Array(wav),
  });
  assert.equal(r.status, 200, await r.text());
}

/**
 * Uploads `totalBytes` generated on the fly (never held in memory) as a raw body, chunked, with
 * back-pressure; returns status, headers and body text of the answer.
 */
export function streamUpload(opts: {
  url: string;
  apiKey: string;
  contentType: string;
  totalBytes: number;
  headers?: Record<string, string>;
  chunkBytes?: number;
}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      opts.url,
      {
        method: "POST",
        headers: {
          authorization: `Bearer ${opts.apiKey}`,
          "content-type": opts.contentType,
          ...(opts.headers ?? {}),
        },
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => {
          body += c;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      },
    );
    req.on("error", reject);
    const chunk = Buffer.alloc(opts.chunkBytes ?? 64 * 1024);
    for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31 + 7) & 0xff;
    let sent = 0;
    const pump = () => {
      while (sent < opts.totalBytes) {
        const n = Math.min(chunk.length, opts.totalBytes - sent);
        sent += n;
        if (!req.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
          req.once("drain", pump);
          return;
        }
      }
      req.end();
    };
    pump();
  });
}
