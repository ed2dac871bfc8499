/** The sender thread of send-thread.ts: a `Sender` of its own, fed and answered in batches. */
import { parentPort, workerData } from "node:worker_threads";
import { noAnswer, Sender, type SenderOptions, type SendResult } from "./send.js";
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
port.on("message", (m: SendRequest[] | "close") => {
  if (m === "close") {
    // Attempts still running finish first (undici's close waits for them); their answers go out.
    void sender.close().finally(() => {
      flush();
      port.close();
    });
    return;
  }
  for (const [id, url, headers, body] of m) {
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
  }
});
// Loaded and listening: the first attempts need not wait for the thread to come up (`warm`).
port.postMessage("ready");
