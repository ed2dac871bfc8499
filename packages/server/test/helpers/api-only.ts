import { loadConfig } from "../../src/config.js";
import { createLogger } from "../../src/log.js";
import { startServer } from "../../src/server.js";
import { apiClient, setupAccount } from "./api.js";
import { tempDir } from "./server.js";

/**
 * An API-only server (no dispatcher) with an agent and one endpoint at `endpointUrl`, for tests
 * that queue work first and then run a Dispatcher of their own on `api.ctx`. Deliveries time out
 * after 60 s and are retried every 200 ms (30 times); `env` changes that or adds settings.
 */
export async function apiOnlyServer(
  endpointUrl: string,
  endpoint: Record<string, unknown> = {},
  env: Record<string, string> = {},
) {
  const dir = tempDir();
  const config = loadConfig({
    KLEN_DATA_DIR: dir.path,
    KLEN_DEV: "1",
    KLEN_API_KEY: "klen_api_only_key",
    // Picked by the listen itself: a port found free a moment before may be taken by then.
    PORT: "0",
    KLEN_DELIVERY_TIMEOUT: "60s",
    KLEN_RETRY_SCHEDULE: Array(30).fill("200ms").join(","),
    ...env,
  });
  const api = await startServer(config, createLogger({ level: "silent" }), { role: "api" });
  const client = apiClient(`http://127.0.0.1:${new URL(api.address!).port}`, "klen_api_only_key");
  const { agentId } = await setupAccount(client, { endpointUrl, endpoint });
  return {
    api,
    client,
    async newCall(phone = "+15550300000") {
      const c = await client.post("/v1/calls", { agent_id: agentId, type: "inbound", phone_number: phone });
      return c.body.id as number;
    },
    async done() {
      await api.stop();
      dir.remove();
    },
  };
}
