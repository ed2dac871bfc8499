import assert from "node:assert/strict";
import { test } from "node:test";
import { runCall, setupAccount } from "./helpers/api.js";
import { startReceiver } from "./helpers/receiver.js";
import { spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

test("logs are JSON and never contain the API key or an endpoint secret, even at trace level", async () => {
  const dir = tempDir();
  const apiKey = "klen_sk_log_test_0123456789abcdef";
  const server = await spawnServer({
    dataDir: dir.path,
    apiKey,
    env: { LOG_LEVEL: "trace", KLEN_RETRY_SCHEDULE: "20ms" },
  });
  const failing = await startReceiver({ respond: () => 500 });
  const ok = await startReceiver();
  try {
    const { agentId, endpoint } = await setupAccount(server.api, {
      endpointUrl: ok.url,
      endpoint: { headers: { authorization: "Bearer receiver-token-xyz" } },
    });
    const bad = await server.api.post("/v1/endpoints", { url: failing.url });
    const rotated = await server.api.post(`/v1/endpoints/${endpoint.id}/rotate-secret`, {});
    await runCall(server.api, agentId);
    await ok.waitForCount(4);
    await waitFor("failed attempts", () => failing.requests.length >= 8);
    await server.api.get("/v1/nothing");
    await server.kill("SIGTERM");
    const out = server.output();
    assert.ok(out.length > 0, "the server logged something");
    for (const secret of [
      apiKey,
      endpoint.secret,
      bad.body.secret,
      rotated.body.secret,
      "receiver-token-xyz",
    ]) {
      assert.equal(out.includes(secret), false, "a secret appeared in the logs");
    }
    const jsonLines = out.split("\n").filter((l) => l.startsWith("{"));
    assert.ok(jsonLines.length > 0);
    for (const l of jsonLines) assert.doesNotThrow(() => JSON.parse(l));
    // The stored attempt log keeps the signature but redacts sensitive custom headers.
    const d = (await (async () => {
      const s2 = await spawnServer({ dataDir: dir.path, apiKey });
      try {
        return (await s2.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&limit=1`)).body.data[0];
      } finally {
        await s2.kill();
      }
    })()) as { attempts: Array<{ request_headers: Record<string, string> }> };
    assert.equal(d.attempts[0]!.request_headers.authorization, "[redacted]");
    assert.match(d.attempts[0]!.request_headers["webhook-signature"]!, /^v1,/);
  } finally {
    await failing.close();
    await ok.close();
    dir.remove();
  }
});
