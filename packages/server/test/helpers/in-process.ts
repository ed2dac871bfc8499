import { loadConfig } from "../../src/config.js";
import { createLogger } from "../../src/log.js";
import { type Running, startServer } from "../../src/server.js";
import { apiClient } from "./api.js";

/**
 * An API-role server in this process (so a test can run a purge with a later "now", or read its
 * database), in dev mode, with texts of a few KiB behind a URL as 64 KiB ones are by default; `env`
 * adds or changes settings. The caller stops it (`running.stop`).
 */
export async function inProcessApi(o: {
  databaseUrl: string;
  dataDir: string;
  apiKey: string;
  env?: Record<string, string>;
}) {
  const running: Running = await startServer(
    loadConfig({
      PORT: "0",
      KLEN_DATA_DIR: o.dataDir,
      KLEN_DATABASE_URL: o.databaseUrl,
      KLEN_API_KEY: o.apiKey,
      KLEN_DEV: "1",
      KLEN_INLINE_LIMIT: "2KiB",
      ...o.env,
    }),
    createLogger({ level: "silent" }),
    { role: "api" },
  );
  const base = running.address!.replace("[::1]", "127.0.0.1");
  return { running, base, api: apiClient(base, o.apiKey) };
}
