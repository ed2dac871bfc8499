/** The checkpoint thread of checkpointer.ts: a PASSIVE checkpoint every `intervalMs`. */
import { parentPort, workerData } from "node:worker_threads";
import BetterSqlite3 from "better-sqlite3";

const { file, intervalMs } = workerData as { file: string; intervalMs: number };
const db = new BetterSqlite3(file);
db.pragma("busy_timeout = 1000");
db.pragma("synchronous = NORMAL");
/** In a run of failed checkpoints, only the first is reported. */
let failing = false;
const timer = setInterval(() => {
  try {
    db.pragma("wal_checkpoint(PASSIVE)");
    failing = false;
  } catch (err) {
    // The next tick tries again, and the writer's backstop holds meanwhile. Busy is expected
    // beside another process's checkpoint; anything else (I/O error, disk full) is reported.
    const code = (err as { code?: string }).code ?? "";
    if (!failing && !code.startsWith("SQLITE_BUSY")) parentPort?.postMessage({ failed: String(err) });
    failing = true;
  }
}, intervalMs);
parentPort?.on("message", () => {
  clearInterval(timer);
  db.close();
  parentPort?.close();
});
