import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { type ServerProcess, spawnServer } from "../test/helpers/server.js";

export type { ServerProcess };

/**
 * The server under test: the real CLI (`klen-webhooks serve`, KLEN_DEV=1 for loopback receivers)
 * as a child process, started by the same helper the end-to-end tests use.
 */
export async function startServerProcess(opts: {
  dataDir: string;
  databaseUrl: string;
  role?: "all" | "api" | "worker";
  env?: Record<string, string>;
}): Promise<ServerProcess> {
  const p = await spawnServer({
    dataDir: opts.dataDir,
    role: opts.role ?? "all",
    apiKey: BENCH_API_KEY,
    // Instruments (docs/performance.md): KLEN_BENCH_PROFILE=DIR, a V8 CPU profile of every server
    // process; KLEN_BENCH_SQL_TIMING=DIR, CPU time per SQLite statement (bench/sql-timing.ts);
    // KLEN_BENCH_NODE_ARGS, more node options for the server processes (GC sizes, say).
    nodeArgs: [
      ...(process.env.KLEN_BENCH_NODE_ARGS ? process.env.KLEN_BENCH_NODE_ARGS.split(" ") : []),
      ...(process.env.KLEN_BENCH_PROFILE
        ? ["--cpu-prof", `--cpu-prof-dir=${process.env.KLEN_BENCH_PROFILE}`]
        : []),
      ...(process.env.KLEN_BENCH_SQL_TIMING
        ? ["--import", fileURLToPath(new URL("./sql-timing.js", import.meta.url))]
        : []),
    ],
    // The product's own delivery defaults (the test helper shortens them); scenarios override.
    env: {
      KLEN_DATABASE_URL: opts.databaseUrl,
      LOG_LEVEL: "error",
      KLEN_DELIVERY_TIMEOUT: "15s",
      KLEN_RETRY_SCHEDULE: "5s,5m,30m,2h,5h,10h,10h",
      ...(opts.env ?? {}),
    },
  });
  live.add(p);
  p.proc.once("exit", () => live.delete(p));
  return p;
}

const live = new Set<ServerProcess>();
// A crashed or interrupted bench must not leave servers draining into nothing.
process.once("exit", () => {
  for (const p of live) p.proc.kill("SIGKILL");
});
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.once(sig, () => {
    for (const p of live) p.proc.kill("SIGKILL");
    process.exit(130);
  });
}

export const BENCH_API_KEY = "klen_bench_key_0123456789abcdef";

/** Peak resident set size of a live process in MiB (Linux VmHWM), or undefined elsewhere. */
export function peakRssMb(pid: number | undefined): number | undefined {
  if (!pid) return undefined;
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Current resident set size of a live process in MiB (Linux VmRSS). */
export function rssMb(pid: number | undefined): number | undefined {
  if (!pid) return undefined;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** CPU time (user + system) a live process has used so far, in seconds (Linux /proc). */
export function cpuSeconds(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}
