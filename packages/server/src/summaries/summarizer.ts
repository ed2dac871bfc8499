import type { Config } from "../config.js";
import type { Logger } from "../log.js";
import { summarizeExtractive } from "./extractive.js";
import { chatSummary } from "./openai.js";

/** Turns a transcript into the detailed summary of `call.summary`; `callId` names it in logs. */
export type Summarizer = (transcript: string, about?: { callId: number }) => Promise<string>;

/** The built-in summarizer's bounds: a detailed summary, still a short read. */
export const DETAILED = { maxChars: 1200, maxSentences: 6 } as const;

/**
 * The configured summarizer: the OpenAI-compatible endpoint when KLEN_SUMMARY_URL is set,
 * else the built-in extractive one (offline, deterministic).
 */
export function summarizerFor(config: Config, log: Logger): Summarizer {
  const remote = config.summary;
  if (!remote) return async (t) => summarizeExtractive(t, DETAILED);
  return (t, about) =>
    chatSummary(remote, t, {
      onRetry: (attempt, err) =>
        log.warn(
          { component: "summaries", ...(about ? { call_id: about.callId } : {}), attempt, err: err.message },
          "summarizer request failed; retrying",
        ),
    });
}
