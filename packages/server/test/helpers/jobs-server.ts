import type { TestContext } from "node:test";
import type { AppContext } from "../../src/api/context.js";
import { loadConfig } from "../../src/config.js";
import { createLogger } from "../../src/log.js";
import { type Running, startServer } from "../../src/server.js";
import { apiClient } from "./api.js";
import type { Backend } from "./backends.js";

/**
 * An API-role server in this process on a fresh database of `backend`: no dispatcher and no job
 * worker of its own, so a test claims deliveries and runs a background recover's or replay's
 * batches itself, with its own clock (`at`). Stopped when the test ends.
 */
export async function apiRoleServer(t: TestContext, backend: Backend, recoverBatch: number) {
  const db = await backend.fresh();
  const key = "klen_test_key_jobs";
  const running: Running = await startServer(
    loadConfig({
      PORT: "0",
      KLEN_DATA_DIR: db.dataDir,
      KLEN_DATABASE_URL: db.databaseUrl,
      KLEN_API_KEY: key,
      KLEN_DEV: "1",
      KLEN_RECOVER_BATCH: String(recoverBatch),
      // Not the default (60 s): a job's lease is KLEN_LEASE, as a delivery's.
      KLEN_LEASE: "45s",
    }),
    createLogger({ level: "silent" }),
    { role: "api" },
  );
  t.after(async () => {
    await running.stop(1000);
    await db.cleanup();
  });
  return {
    api: apiClient(running.address!.replace("[::1]", "127.0.0.1"), key),
    store: running.ctx.store,
    /** The server's context with its clock at `ms`. */
    at: (ms: number): AppContext => ({ ...running.ctx, clock: { now: () => ms } }),
  };
}
