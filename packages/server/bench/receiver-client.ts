import { type ChildProcess, fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { PathDigest, ReceiverReply, ReceiverRequest } from "./receiver.js";

/**
 * The parent's handle on the forked receiver process: one request at a time over IPC, each
 * answered by exactly one reply.
 */
export class ReceiverProcess {
  private queue: Promise<unknown> = Promise.resolve();
  ports: number[] = [];
  deadPort = 0;

  private constructor(private readonly child: ChildProcess) {}

  /** Forks bench/receiver.js and opens `ports` healthy ports plus the dead one. */
  static async start(ports: number): Promise<ReceiverProcess> {
    const child = fork(fileURLToPath(new URL("./receiver.js", import.meta.url)), [], {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      serialization: "advanced",
    });
    const r = new ReceiverProcess(child);
    const started = await r.ask({ type: "start", ports });
    if (started.type !== "started") throw new Error("receiver did not start");
    r.ports = started.ports;
    r.deadPort = started.deadPort;
    return r;
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  /** A healthy endpoint URL for endpoint number `i` (spread over the receiver's ports). */
  url(i: number, path: string): string {
    return `http://127.0.0.1:${this.ports[i % this.ports.length]}${path}`;
  }

  deadUrl(path: string): string {
    return `http://127.0.0.1:${this.deadPort}${path}`;
  }

  ask(msg: ReceiverRequest): Promise<ReceiverReply> {
    const run = () =>
      new Promise<ReceiverReply>((resolve, reject) => {
        const onExit = () => reject(new Error("receiver exited"));
        this.child.once("exit", onExit);
        this.child.once("message", (m) => {
          this.child.off("exit", onExit);
          resolve(m as ReceiverReply);
        });
        this.child.send(msg);
      });
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => {});
    return p;
  }

  /** Clears everything recorded; `keys` also records per-(call, type, path) arrival times. */
  async reset(secrets: Record<string, string>, keys = false): Promise<void> {
    await this.ask({ type: "reset", keys });
    await this.ask({ type: "secrets", secrets });
  }

  async count() {
    const r = await this.ask({ type: "count" });
    if (r.type !== "count") throw new Error("bad reply");
    return r;
  }

  async digest(): Promise<{
    paths: Record<string, PathDigest>;
    badSignatures: number;
    firstAt: number;
    lastAt: number;
  }> {
    const r = await this.ask({ type: "digest" });
    if (r.type !== "digest") throw new Error("bad reply");
    return r;
  }

  /** Arrival time per `callId:type:path` (latency runs). */
  async arrivals(): Promise<Map<string, number>> {
    const r = await this.ask({ type: "arrivals" });
    if (r.type !== "arrivals") throw new Error("bad reply");
    return new Map(r.arrivals);
  }

  /** The receiver's longest event-loop pause (ms) since the previous call. */
  async maxPause(): Promise<number> {
    const r = await this.ask({ type: "pause" });
    if (r.type !== "pause") throw new Error("bad reply");
    return r.maxMs;
  }

  /**
   * Waits until distinct webhook arrivals (summed over paths) reach `n`; gives up when nothing new
   * arrived for `stallMs` (the ledger check then reports what is missing).
   */
  async waitForDistinct(n: number, stallMs: number, intervalMs = 25) {
    let last = -1;
    let progressAt = Date.now();
    for (;;) {
      const c = await this.count();
      if (c.distinct >= n) return c;
      if (c.distinct !== last) {
        last = c.distinct;
        progressAt = Date.now();
      } else if (Date.now() - progressAt > stallMs) return c;
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once("exit", r));
    this.child.send({ type: "stop" } satisfies ReceiverRequest);
    await exited;
  }
}
