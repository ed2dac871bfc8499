import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type ApiClient, apiClient } from "./api.js";
import { waitFor } from "./wait.js";

/** The compiled CLI, so tests run the same binary users run. */
export const CLI = resolve(fileURLToPath(import.meta.url), "../../../src/cli/main.js");

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const p = (s.address() as import("node:net").AddressInfo).port;
      s.close(() => res(p));
    });
    s.on("error", rej);
  });
}

export function tempDir(prefix = "klen-test-"): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

export interface ServerProcess {
  url: string;
  port: number;
  apiKey: string;
  api: ApiClient;
  proc: ChildProcess;
  output(): string;
  /** Sends a signal and waits for the process to exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Resolves once the process has exited and all its output is read. */
  closed(): Promise<void>;
}

export interface SpawnOptions {
  dataDir: string;
  env?: Record<string, string>;
  role?: "all" | "api" | "worker";
  apiKey?: string;
  /** Extra options for node itself (the bench's `--cpu-prof`). */
  nodeArgs?: string[];
}

/**
 * Starts `klen-webhooks serve` as a real child process and waits for /healthz. Fast retry
 * schedules and dev mode (loopback receivers) are the defaults; `env` overrides anything.
 * A port that `freePort` found free can be taken by another test file's server before this one
 * binds it: the start then fails naming PORT and is made again on another port.
 */
export async function spawnServer(opts: SpawnOptions): Promise<ServerProcess> {
  for (let tries = 1; ; tries++) {
    try {
      return await spawnOn(await freePort(), opts);
    } catch (err) {
      if (tries >= 5 || !/already in use/.test((err as Error).message)) throw err;
    }
  }
}

async function spawnOn(port: number, opts: SpawnOptions): Promise<ServerProcess> {
  const apiKey = opts.apiKey ?? "klen_test_key_0123456789";
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    PORT: String(port),
    KLEN_HOST: "127.0.0.1",
    KLEN_DATA_DIR: opts.dataDir,
    KLEN_API_KEY: apiKey,
    KLEN_DEV: "1",
    KLEN_RETRY_SCHEDULE: "100ms,200ms,300ms",
    KLEN_DELIVERY_TIMEOUT: "2s",
    LOG_LEVEL: "warn",
    // The start-up banner names the address the process bound (printed unless CI is "true").
    CI: "false",
    ...(opts.env ?? {}),
  };
  let out = "";
  const proc = spawn(
    process.execPath,
    [...(opts.nodeArgs ?? []), CLI, "serve", "--role", opts.role ?? "all"],
    {
      env,
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  proc.stdout!.on("data", (d: Buffer) => {
    out += d.toString();
  });
  proc.stderr!.on("data", (d: Buffer) => {
    out += d.toString();
  });
  const exited = new Promise<void>((r) => proc.once("exit", () => r()));
  // After "exit", once its output is all read.
  const closed = new Promise<void>((r) => proc.once("close", () => r()));
  const url = `http://127.0.0.1:${port}`;
  if ((opts.role ?? "all") !== "worker") {
    try {
      // Generous: a start takes 1–2 s, but a disk saturated by another test file's writes has
      // been seen to stretch it past 20 s. A process that exits ends the wait at once (a throw
      // would be taken by waitFor for "not yet", and the failed start known only after 60 s).
      await waitFor(
        `server on ${url}`,
        async () => {
          if (proc.exitCode !== null || proc.signalCode !== null) return true;
          // This process's banner, not only some server answering on the port.
          if (!out.includes(` on ${url}\n`)) return false;
          const r = await fetch(`${url}/healthz`).catch(() => undefined);
          return r?.ok;
        },
        60_000,
        50,
      );
      if (proc.exitCode !== null || proc.signalCode !== null) {
        await closed;
        throw new Error(`server exited ${proc.exitCode ?? proc.signalCode}: ${out}`);
      }
    } catch (err) {
      // A server left running would keep this test file's process, and so the whole run, alive.
      proc.kill("SIGKILL");
      await exited;
      throw new Error(`${(err as Error).message} (output: ${out.slice(-500)})`);
    }
  }
  return {
    url,
    port,
    apiKey,
    api: apiClient(url, apiKey),
    proc,
    output: () => out,
    closed: () => closed,
    async kill(signal: NodeJS.Signals = "SIGTERM") {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
  };
}

/**
 * Starts `count` `--role worker` processes, each with /healthz and /metrics on a port of its own
 * (KLEN_WORKER_PORT), and waits until every one answers there.
 */
export async function spawnWorkers(
  count: number,
  opts: Omit<SpawnOptions, "role">,
): Promise<Array<ServerProcess & { workerPort: number }>> {
  const workers: Array<ServerProcess & { workerPort: number }> = [];
  for (let i = 0; i < count; i++) workers.push(await spawnWorker(opts));
  return workers;
}

/**
 * One worker on a free port, waited for by its own banner (another process may answer on a port
 * picked free a moment before) and started again on another port if that one was taken.
 */
async function spawnWorker(
  opts: Omit<SpawnOptions, "role">,
  tries = 1,
): Promise<ServerProcess & { workerPort: number }> {
  const workerPort = await freePort();
  const w = await spawnServer({
    ...opts,
    role: "worker",
    env: { ...opts.env, KLEN_WORKER_PORT: String(workerPort) },
  });
  const url = `http://127.0.0.1:${workerPort}`;
  try {
    await waitFor(
      `worker on ${workerPort}`,
      async () => {
        // Exited: ends the wait at once (see spawnOn).
        if (w.proc.exitCode !== null || w.proc.signalCode !== null) return true;
        if (!w.output().includes(` on ${url}\n`)) return false;
        return (await fetch(`${url}/healthz`).catch(() => undefined))?.ok;
      },
      60_000,
    );
    if (w.proc.exitCode !== null || w.proc.signalCode !== null) {
      await w.closed();
      throw new Error(`worker exited ${w.proc.exitCode ?? w.proc.signalCode}: ${w.output()}`);
    }
  } catch (err) {
    await w.kill("SIGKILL");
    if (tries < 5 && /already in use/.test((err as Error).message)) return spawnWorker(opts, tries + 1);
    throw err;
  }
  return { ...w, workerPort };
}
