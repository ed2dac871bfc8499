/** The sender thread of send-thread.ts: a `Sender` of its own, fed and answered in batches. */
import { parentPort, workerData } from "node:worker_threads";
import { noAnswer, Sender, type SenderOptions, type SendResult, type Spacing } from "./send.js";
import type { SendRequest } from "./send-thread.js";

const port = parentPort;
if (!port) throw new Error("send-worker.js runs as a worker thread");
const sender = new Sender(workerData as SenderOptions);
let answers: Array<[number, SendResult]> = [];
const flush = () => {
  if (answers.length === 0) return;
  port.postMessage(answers);
  answers = [];
};
// When each rate-limited endpoint's last attempt here started (performance.now()), or will.
const lastStart = new Map<string, number>();
// Attempts waiting for their turn: they start before the sender closes.
const spaced = new Set<Promise<void>>();

/** How long to hold an attempt so that it starts `intervalMs` after its endpoint's previous one. */
function holdFor(spacing: Spacing | undefined): number {
  if (!spacing) return 0;
  const now = performance.now();
  const at = Math.max(now, (lastStart.get(spacing.key) ?? Number.NEGATIVE_INFINITY) + spacing.intervalMs);
  lastStart.set(spacing.key, at);
  if (lastStart.size > 10_000) for (const [k, t] of lastStart) if (t < now - 60_000) lastStart.delete(k);
  return at - now;
}

const start = (id: number, url: string, headers: Record<string, string>, body: string) =>
  // `send` answers failures rather than throwing; should it throw all the same, that one attempt
  // fails, not the thread and every attempt in flight on it.
  sender
    .send(url, headers, body)
    .catch(
      (err: unknown): SendResult => ({
        ...noAnswer("network", String((err as Error)?.message ?? err)),
        durationMs: 0,
      }),
    )
    .then((r) => {
      if (answers.push([id, r]) === 1) queueMicrotask(flush);
    });

port.on("message", (m: SendRequest[] | "close") => {
  if (m === "close") {
    // Attempts still running finish first (undici's close waits for them); their answers go out.
    void Promise.all(spaced)
      .then(() => sender.close())
      .finally(() => {
        flush();
        port.close();
      });
    return;
  }
  for (const [id, url, headers, body, spacing] of m) {
    const wait = holdFor(spacing);
    if (wait <= 0) {
      void start(id, url, headers, body);
      continue;
    }
    const turn = new Promise<void>((resolve) =>
      setTimeout(() => {
        spaced.delete(turn);
        void start(id, url, headers, body);
        resolve();
      }, wait),
    );
    spaced.add(turn);
  }
});
// Loaded and listening: the first attempts need not wait for the thread to come up (`warm`).
port.postMessage("ready");
