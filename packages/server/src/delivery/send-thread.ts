import { Worker } from "node:worker_threads";
import type { AttemptSender, SenderOptions, SendResult, Spacing } from "./send.js";

/** One attempt on its way to the sender thread: its number, URL, headers, body and spacing. */
export type SendRequest = [number, string, Record<string, string>, string, Spacing?];

interface Waiting {
  resolve: (r: SendResult) => void;
  reject: (e: Error) => void;
}

/**
 * A `Sender` on a thread of its own (send-worker.ts): the HTTP side of attempts — undici, the
 * sockets, reading answers — runs beside the dispatcher's database work instead of taking turns
 * with it on one event loop (docs/performance.md). Attempts and answers cross in batches, one
 * message per tick each way. Should the thread stop, the attempts it held are rejected (the
 * dispatcher then leaves their leases to run out, so they are tried again) and the next attempt
 * starts a new thread. The thread holds the process open only while attempts are in flight.
 */
export class ThreadSender implements AttemptSender {
  private worker: Worker | undefined;
  private readonly waiting = new Map<number, Waiting>();
  private nextId = 0;
  private queued: SendRequest[] = [];
  private closed = false;
  /** Settles when the thread has said it is ready, or has stopped (`warm`). */
  private ready: Promise<void> = Promise.resolve();

  constructor(private readonly opts: SenderOptions) {}

  send(url: string, headers: Record<string, string>, body: string, spacing?: Spacing): Promise<SendResult> {
    if (this.closed) return Promise.reject(new Error("sender closed"));
    const id = this.nextId++;
    return new Promise<SendResult>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      const request: SendRequest = spacing ? [id, url, headers, body, spacing] : [id, url, headers, body];
      if (this.queued.push(request) === 1) queueMicrotask(this.flush);
    });
  }

  warm(): Promise<void> {
    if (this.closed) return Promise.resolve();
    try {
      const w = this.thread();
      // Idle, it does not hold the process open.
      if (this.waiting.size === 0) w.unref();
    } catch {
      // The first attempt starts it, or reports why it cannot.
      return Promise.resolve();
    }
    return this.ready;
  }

  async close(): Promise<void> {
    this.closed = true;
    // Attempts sent in this tick go out before the thread is told to close, as with `Sender`.
    if (this.queued.length > 0) this.flush();
    const w = this.worker;
    if (!w) return;
    w.ref();
    const exited = new Promise<void>((resolve) => w.once("exit", () => resolve()));
    w.postMessage("close");
    await exited;
  }

  private readonly flush = () => {
    const batch = this.queued;
    if (batch.length === 0) return; // already sent by close()
    this.queued = [];
    try {
      const w = this.thread();
      w.ref();
      w.postMessage(batch);
    } catch (err) {
      this.fail(
        batch.map(([id]) => id),
        new Error(`sender thread unavailable: ${(err as Error).message}`),
      );
    }
  };

  private thread(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(new URL("./send-worker.js", import.meta.url), { workerData: this.opts });
    let isReady: () => void = () => {};
    this.ready = new Promise<void>((resolve) => {
      isReady = resolve;
    });
    w.on("message", (answers: Array<[number, SendResult]> | "ready") => {
      if (answers === "ready") return isReady();
      for (const [id, r] of answers) this.take(id)?.resolve(r);
      if (this.waiting.size === 0 && !this.closed) w.unref();
    });
    const stopped = (why: string) => {
      isReady();
      if (this.worker !== w) return;
      this.worker = undefined;
      this.fail([...this.waiting.keys()], new Error(`sender thread stopped: ${why}`));
    };
    w.on("error", (err) => stopped(err.message));
    // An answer that cannot be read would leave its attempts waiting: end the thread, failing them.
    w.on("messageerror", () => void w.terminate());
    w.on("exit", (code) => stopped(`exit code ${code}`));
    this.worker = w;
    return w;
  }

  private fail(ids: number[], err: Error): void {
    for (const id of ids) this.take(id)?.reject(err);
  }

  /** The attempt waiting under `id`, no longer waiting. */
  private take(id: number): Waiting | undefined {
    const waiting = this.waiting.get(id);
    this.waiting.delete(id);
    return waiting;
  }
}
