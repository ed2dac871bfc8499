/**
 * Preloaded (`node --import`) into every server process the bench starts when
 * `KLEN_BENCH_SQL_TIMING=DIR` is set: the CPU time the main thread spends in each SQLite statement,
 * summed per SQL text (IN lists and VALUES rows folded), written to DIR/sql-PID.txt when the process
 * exits, most expensive first. SQLite runs on the main thread, so that thread's CPU time around a
 * call is the statement's own. It is read from /proc/thread-self/schedstat (Linux): the process's
 * CPU time would also count the sender thread, GC threads and the checkpoint thread running
 * meanwhile (by ~1.6 times in a drain with the sender thread). Elsewhere it falls back to that.
 */
import { mkdirSync, openSync, readSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import type BetterSqlite3 from "better-sqlite3";

const dir = process.env.KLEN_BENCH_SQL_TIMING;
if (dir) {
  const Database = createRequire(import.meta.url)("better-sqlite3") as typeof BetterSqlite3;
  const stats = new Map<string, { calls: number; us: number }>();
  const cpuUs = threadCpuClock();
  const proto = Database.prototype as unknown as {
    prepare(this: BetterSqlite3.Database, text: string): BetterSqlite3.Statement;
  };
  const prepare = proto.prepare;
  proto.prepare = function (text: string) {
    const st = prepare.call(this, text);
    const key = text
      .replace(/\s+/g, " ")
      .replace(/\(\?(, \?)*\)(, \(\?(, \?)*\))*/g, "(…)")
      .slice(0, 160);
    for (const m of ["run", "all", "get"] as const) {
      const f = st[m] as (...a: unknown[]) => unknown;
      (st as unknown as Record<string, unknown>)[m] = function (this: unknown, ...a: unknown[]) {
        const t = cpuUs();
        try {
          return f.apply(this, a);
        } finally {
          const s = stats.get(key) ?? { calls: 0, us: 0 };
          s.calls++;
          s.us += cpuUs() - t;
          stats.set(key, s);
        }
      };
    }
    return st;
  };
  process.on("exit", () => {
    const lines = [...stats]
      .sort((a, b) => b[1].us - a[1].us)
      .map(
        ([k, s]) =>
          `${(s.us / 1000).toFixed(0).padStart(7)} ms ${String(s.calls).padStart(8)} × ${(s.us / s.calls).toFixed(1).padStart(8)} µs  ${k}`,
      );
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `sql-${process.pid}.txt`), `${lines.join("\n")}\n`);
  });
}

/** Microseconds of CPU: of the calling thread where Linux says (schedstat), else of the process. */
function threadCpuClock(): () => number {
  try {
    // Opened on the main thread, this file stays that thread's: thread-self is resolved at open.
    const fd = openSync("/proc/thread-self/schedstat", "r");
    const buf = Buffer.alloc(128);
    return () => {
      const n = readSync(fd, buf, 0, buf.length, 0);
      const text = buf.toString("latin1", 0, n);
      return Number(text.slice(0, text.indexOf(" "))) / 1000;
    };
  } catch {
    return () => {
      const u = process.cpuUsage();
      return u.user + u.system;
    };
  }
}
