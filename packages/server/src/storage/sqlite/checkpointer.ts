import { Worker } from "node:worker_threads";

/**
 * Copies the WAL back into the database file on a thread of its own, so that the event loop does
 * not. SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the
 * thread that commits: every ~80 transitions one commit copies 1,000 pages and waits for two
 * fsyncs (docs/performance.md). A PASSIVE checkpoint from a second connection runs beside the
 * writer without blocking it; the writer restarts the WAL at its next transaction once everything
 * is copied. The main connection keeps a (larger) automatic checkpoint as the backstop: should this
 * thread fall behind, the WAL still stops growing at that size.
 */
export class Checkpointer {
  private readonly worker: Worker;
  private readonly exited: Promise<void>;

  /**
   * `onError` hears of a thread that stopped (it could not open the file, say) and of failed
   * checkpoints (not busy ones), at most one a minute. Either costs speed, not data: the writer's backstop
   * checkpoint carries on.
   */
  constructor(file: string, intervalMs: number, onError: (err: Error) => void) {
    this.worker = new Worker(new URL("./checkpoint-worker.js", import.meta.url), {
      workerData: { file, intervalMs },
    });
    this.worker.on("error", (err) => onError(new Error(`SQLite checkpoint thread stopped: ${err.message}`)));
    this.worker.on("message", (m: { failed?: string }) => {
      if (m.failed) onError(new Error(`SQLite checkpoint failed: ${m.failed}`));
    });
    this.worker.unref();
    this.exited = new Promise((resolve) => this.worker.once("exit", () => resolve()));
  }

  /** Stops the thread after its current checkpoint. */
  async close(): Promise<void> {
    // Held by the process again until it has stopped (unref'd, it would not keep a closing process up).
    this.worker.ref();
    this.worker.postMessage("stop");
    await this.exited;
  }
}
