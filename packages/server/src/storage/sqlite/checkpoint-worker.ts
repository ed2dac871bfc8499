/** The checkpoint thread of checkpointer.ts: a PASSIVE checkpoint every `intervalMs`. */
import { parentPort, workerData } from "node:worker_threads";
import BetterSqlite3 from "better-sqlite3";

const { file, intervalMs } = workerData as { file: string; intervalMs: number };
const db = new BetterSqlite3(file);
db.pragma("busy_timeout = 1000");
db.pragma("synchronous = NORMAL");
/** Failures are reported at most this often (a checkpoint runs every `intervalMs`). */
const REPORT_EVERY_MS = 60_000;
let lastReport = Number.NEGATIVE_INFINITY;
const timer = setInterval(() => {
  try {
    db.pragma("wal_checkpoint(PASSIVE)");
  } catch (err) {
    // The next tick tries again, and the writer's backstop holds meanwhile. Busy is expected
    // beside another process's checkpoint; anything else (I/O error, disk full) is reported.
    const code = (err as { code?: string }).code ?? "";
    if (code.startsWith("SQLITE_BUSY")) return;
    const now = Date.now();
    if (now - lastReport < REPORT_EVERY_MS) return;
    lastReport = now;
    parentPort?.postMessage({ failed: String(err) });
  }
}, intervalMs);
parentPort?.on("message", () => {
  clearInterval(timer);
  db.close();
  parentPort?.close();
});
