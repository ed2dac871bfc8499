/**
 * An OpenAI-compatible chat-completions client for summaries. `KLEN_SUMMARY_URL` is the API's
 * base URL, as OpenAI's own SDKs take it (`https://api.openai.com/v1`, or a local server's
 * `http://127.0.0.1:11434/v1`); `/chat/completions` is appended. Each call has a timeout and a
 * few quick retries with exponential backoff for transient failures (network errors, 408, 409,
 * 429, 5xx); the durable job around it retries much later if those run out.
 */
import { withoutNul } from "../util/text.js";

export interface ChatConfig {
  url: string;
  model: string;
  apiKey: string;
}

export class SummarizerError extends Error {
  constructor(
    message: string,
    readonly retryable: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "SummarizerError";
  }
}

export interface ChatOptions {
  timeoutMs?: number;
  /** Attempts in this call, including the first. */
  attempts?: number;
  /** First backoff delay; doubles each time. */
  backoffMs?: number;
  onRetry?: (attempt: number, err: SummarizerError) => void;
}

/** The endpoint a base URL stands for: trailing slashes removed, `/chat/completions` appended. */
export function completionsUrl(base: string): string {
  return `${base.replace(/\/+$/, "")}/chat/completions`;
}

const SYSTEM_PROMPT =
  "You summarize phone calls between an AI voice agent and a customer for the business that " +
  "runs the agent. Write a concise, factual summary in plain prose (no headings, no lists): why " +
  "the customer called, what was resolved or agreed, and any follow-up. At most 120 words.";

/** Asks the model for a summary of `transcript`; throws SummarizerError when it cannot. */
export async function chatSummary(
  cfg: ChatConfig,
  transcript: string,
  opts: ChatOptions = {},
): Promise<string> {
  const attempts = opts.attempts ?? 3;
  let delay = opts.backoffMs ?? 500;
  for (let n = 1; ; n++) {
    try {
      return await once(cfg, transcript, opts.timeoutMs ?? 30_000);
    } catch (e) {
      const err =
        e instanceof SummarizerError
          ? e
          : new SummarizerError(`request failed: ${(e as Error).message}`, true, { cause: e });
      if (!err.retryable || n >= attempts) throw err;
      opts.onRetry?.(n, err);
      await new Promise((r) => setTimeout(r, delay));
      delay *= 2;
    }
  }
}

// Prompts are bounded: a transcript beyond this is cut (its start and end carry the purpose
// and the outcome), which keeps a pathological upload from blowing the model's context.
const MAX_PROMPT_CHARS = 60_000;

function clipTranscript(t: string): string {
  if (t.length <= MAX_PROMPT_CHARS) return t;
  const half = MAX_PROMPT_CHARS / 2;
  return `${t.slice(0, half)}\n[…]\n${t.slice(-half)}`;
}

/**
 * The most of an answer that is read: a summary is a few KiB, and the whole answer was held in
 * memory (a 300 MB answer took the server from 111 MB to 1.5 GB and became a 300 MB blob).
 */
export const MAX_ANSWER_BYTES = 1024 * 1024;

/** The answer's text up to MAX_ANSWER_BYTES (the rest left unread), and whether there was more. */
async function readAnswer(res: Response): Promise<{ text: string; over: boolean }> {
  if (!res.body) return { text: "", over: false };
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MAX_ANSWER_BYTES) {
      await reader.cancel().catch(() => undefined);
      return { text: Buffer.concat(chunks).toString("utf8"), over: true };
    }
    chunks.push(value);
  }
  return { text: Buffer.concat(chunks).toString("utf8"), over: false };
}

async function once(cfg: ChatConfig, transcript: string, timeoutMs: number): Promise<string> {
  let res: Response;
  try {
    res = await fetch(completionsUrl(cfg.url), {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(cfg.apiKey ? { authorization: `Bearer ${cfg.apiKey}` } : {}),
      },
      body: JSON.stringify({
        model: cfg.model,
        temperature: 0.2,
        messages: [
          { role: "system", content: SYSTEM_PROMPT },
          { role: "user", content: `Transcript:\n${clipTranscript(transcript)}` },
        ],
      }),
      redirect: "error",
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    const timeout = (err as Error).name === "TimeoutError";
    throw new SummarizerError(
      timeout ? `timed out after ${timeoutMs} ms` : `request failed: ${(err as Error).message}`,
      true,
      {
        cause: err,
      },
    );
  }
  let answer = { text: "", over: false };
  try {
    answer = await readAnswer(res);
  } catch (err) {
    // An error status is reported as such (below), whatever became of its body.
    if (res.ok)
      throw new SummarizerError(`reading the answer failed: ${(err as Error).message}`, true, { cause: err });
  }
  const { text } = answer;
  if (!res.ok) {
    const retryable = res.status >= 500 || res.status === 408 || res.status === 409 || res.status === 429;
    // The start of the answer goes to the log: never the key, should the service echo it back.
    const shown = cfg.apiKey ? text.split(cfg.apiKey).join("[redacted]") : text;
    throw new SummarizerError(`HTTP ${res.status}: ${withoutNul(shown.slice(0, 200))}`, retryable);
  }
  if (answer.over) throw new SummarizerError(`the answer is larger than ${MAX_ANSWER_BYTES} bytes`, true);
  let content: unknown;
  try {
    content = (JSON.parse(text) as { choices?: Array<{ message?: { content?: unknown } }> }).choices?.[0]
      ?.message?.content;
  } catch {
    throw new SummarizerError("the response is not JSON", true);
  }
  if (typeof content !== "string" || content.trim() === "")
    throw new SummarizerError("the response has no choices[0].message.content", true);
  return withoutNul(content.trim());
}
