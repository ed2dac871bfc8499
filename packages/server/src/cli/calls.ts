import { createWriteStream } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream } from "node:stream/web";
import type { Command } from "commander";
import { apiClient } from "./api-client.js";
import { type ApiOpts, positiveInt, run, withApiOptions } from "./command-kit.js";

/** One item of `GET /v1/calls/{id}/media`. */
interface MediaObject {
  id: string;
  kind: string;
  event_id: string | null;
  event_type: string | null;
  content_type: string;
  size: number;
  created_at: string;
  url: string;
  expires_at: string;
}

const EXTENSIONS: Record<string, string> = {
  "audio/wav": "wav",
  "audio/x-wav": "wav",
  "audio/wave": "wav",
  "audio/vnd.wave": "wav",
  "audio/mpeg": "mp3",
  "audio/mp3": "mp3",
  "audio/ogg": "ogg",
  "audio/opus": "opus",
  "audio/webm": "webm",
  "audio/mp4": "m4a",
  "audio/x-m4a": "m4a",
  "audio/aac": "aac",
  "audio/flac": "flac",
  "audio/x-flac": "flac",
  "audio/basic": "au",
  "text/plain": "txt",
};

/**
 * The file a content is saved as: `call-42-recording.wav`, `call-42-transcript.txt`,
 * `call-42-summary.txt`, and `call-42-brief-summary.txt` for the brief summary of `call.ended`;
 * the blob id is added should two contents still share a name (two summaries whose events the
 * retention period has purged).
 */
export function mediaFileName(callId: number, m: MediaObject, taken: Set<string>): string {
  const ext = EXTENSIONS[m.content_type.split(";")[0]!.trim().toLowerCase()] ?? "bin";
  const what = m.event_type === "call.ended" ? "brief-summary" : m.kind;
  let name = `call-${callId}-${what}.${ext}`;
  if (taken.has(name)) name = `call-${callId}-${what}-${m.id}.${ext}`;
  taken.add(name);
  return name;
}

/**
 * Streams a pre-signed URL's bytes to `path`, through `path.part` renamed once all `size` bytes
 * are there: a download cut short leaves no file that looks whole (it replaces one of that name).
 */
async function download(url: string, path: string, size: number): Promise<void> {
  const part = `${path}.part`;
  try {
    const res = await fetch(url);
    if (res.status !== 200 || !res.body) {
      const text = await res.text().catch(() => "");
      throw new Error(`GET ${new URL(url).pathname}: ${res.status}${text ? ` ${text.slice(0, 200)}` : ""}`);
    }
    await pipeline(Readable.fromWeb(res.body as ReadableStream<Uint8Array>), createWriteStream(part));
    const got = (await stat(part)).size;
    if (got !== size) throw new Error(`got ${got} of its ${size} bytes`);
    await rename(part, path);
  } catch (err) {
    await rm(part, { force: true });
    throw new Error(`${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** `calls media <call_id>`: a call's recording and stored texts, with URLs made now, or saved. */
export function registerCallCommands(program: Command): void {
  const calls = program
    .command("calls")
    .description("a call's stored content: its recording and long transcript and summaries")
    .addHelpText("after", "\nExamples:\n  $ klen-webhooks calls media 42 --output ./call-42");
  withApiOptions(
    calls
      .command("media")
      .description(
        "list a call's recording and the texts stored behind URLs, each with a URL made now (GET /v1/calls/{id}/media)",
      )
      .argument("<call_id>", "the call", positiveInt("call_id"))
      .option(
        "--output <dir>",
        "save each to this folder (made if missing; a file of the same name is replaced) instead of printing its URL",
      ),
  )
    .addHelpText(
      "after",
      `
An event's own recording_url, transcript_url and summary_url stop working KLEN_URL_TTL (7 days by
default) after the event; the URLs printed here are made by this request and last as long again.
Texts short enough to go inline in their event are not stored, so not listed.

Examples:
  $ klen-webhooks calls media 42
  $ klen-webhooks calls media 42 --output ./call-42
  $ klen-webhooks calls media 42 --json`,
    )
    .action(
      run<ApiOpts & { output?: string }>(async (o, out, cmd) => {
        const callId = cmd.processedArgs[0] as number;
        const { data } = await apiClient(o).get<{ data: MediaObject[] }>(`/v1/calls/${callId}/media`);
        if (o.output === undefined) {
          if (out.json) out.data({ data });
          else if (data.length === 0)
            out.line(`call ${callId} has no recording, and no transcript or summary too long to go inline`);
          else
            for (const m of data) {
              const carrier = m.event_type ? ` ${out.dim(`(${m.event_type} ${m.event_id})`)}` : "";
              out.line(
                `${m.kind}  ${m.content_type}  ${m.size} bytes${carrier}  ${out.dim(`until ${m.expires_at}`)}`,
              );
              out.line(`  ${m.url}`);
            }
          return 0;
        }
        await mkdir(o.output, { recursive: true });
        const taken = new Set<string>();
        const saved: Array<MediaObject & { path: string }> = [];
        for (const m of data) {
          const path = join(o.output, mediaFileName(callId, m, taken));
          await download(m.url, path, m.size);
          saved.push({ ...m, path });
          if (!out.json) out.line(`${m.kind}  ${m.size} bytes  → ${path}`);
        }
        if (out.json) out.data({ data: saved });
        else if (data.length === 0) out.line(`call ${callId} has nothing stored: nothing saved`);
        return 0;
      }),
    );
}
