import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { runCall, setupAccount } from "./helpers/api.js";
import { startReceiver } from "./helpers/receiver.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

const dir = tempDir();
let server: ServerProcess;
before(async () => {
  // A long schedule of short delays: call A's first event keeps failing for as long as the test wants.
  server = await spawnServer({
    dataDir: dir.path,
    env: { KLEN_RETRY_SCHEDULE: Array(60).fill("50ms").join(",") },
  });
});
after(async () => {
  await server.kill();
  dir.remove();
});

test("while one call's first event keeps failing, its later events wait and another call's events flow", async () => {
  let callA = -1;
  let release = false;
  const rx = await startReceiver({
    respond: (r) =>
      r.json?.call?.id === callA && r.json.event_type === "call.started" && !release ? 500 : 200,
  });
  const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: rx.url });
  rx.setSecret(endpoint.secret);
  const a = await server.api.post("/v1/calls", {
    agent_id: agentId,
    type: "outbound",
    phone_number: "+15550100001",
  });
  callA = a.body.id;
  for (const step of ["start", "end", "transcript"] as const) {
    const body = step === "transcript" ? { transcript: "Agent: hi" } : {};
    assert.equal((await server.api.post(`/v1/calls/${callA}/${step}`, body)).status, 200);
  }
  await waitFor(
    "call A's started to fail twice",
    () => rx.requests.filter((r) => r.json.call.id === callA).length >= 2,
  );

  const callB = await runCall(server.api, agentId, "+15550100002");
  await waitFor(
    "call B's four events",
    () => rx.requests.filter((r) => r.json.call.id === callB).length >= 4,
  );
  const seenA = rx.requests.filter((r) => r.json.call.id === callA).map((r) => r.json.event_type);
  assert.ok(
    seenA.every((t) => t === "call.started"),
    `only A's call.started was attempted while it failed (saw ${seenA.join(", ")})`,
  );
  assert.deepEqual(
    rx.requests.filter((r) => r.json.call.id === callB).map((r) => r.json.event_type),
    ["call.started", "call.ended", "call.transcript", "call.summary"],
  );

  release = true;
  await waitFor(
    "call A's events after release",
    () =>
      rx.requests.filter((r) => r.json.call.id === callA && r.json.event_type !== "call.started").length >= 2,
  );
  const aTypes = rx.requests.filter((r) => r.json.call.id === callA).map((r) => r.json.event_type);
  const firstLater = aTypes.findIndex((t) => t !== "call.started");
  assert.deepEqual(
    aTypes.slice(firstLater),
    ["call.ended", "call.transcript"],
    "A's later events arrive in order after its first",
  );
  assert.ok(aTypes.slice(0, firstLater).length >= 3, "A's call.started was retried until it succeeded");
  assert.deepEqual(rx.verifyFailures, []);
  await rx.close();
});

test("a given-up event releases the next one: the chain moves on after the last attempt", async () => {
  const dir2 = tempDir();
  const s2 = await spawnServer({ dataDir: dir2.path, env: { KLEN_RETRY_SCHEDULE: "20ms,20ms" } });
  try {
    const rx = await startReceiver({ respond: (r) => (r.json?.event_type === "call.started" ? 500 : 200) });
    const { agentId, endpoint } = await setupAccount(s2.api, { endpointUrl: rx.url });
    const call = await s2.api.post("/v1/calls", {
      agent_id: agentId,
      type: "inbound",
      phone_number: "+15550100003",
    });
    await s2.api.post(`/v1/calls/${call.body.id}/start`, {});
    await s2.api.post(`/v1/calls/${call.body.id}/end`, {});
    await waitFor("call.ended delivered", () => rx.requests.some((r) => r.json.event_type === "call.ended"));
    const types = rx.requests.map((r) => r.json.event_type);
    assert.deepEqual(types, ["call.started", "call.started", "call.started", "call.ended"]);
    const failed = await s2.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&status=failed`);
    assert.equal(failed.body.data.length, 1);
    await rx.close();
  } finally {
    await s2.kill();
    dir2.remove();
  }
});

test("calls do not wait on each other: many calls interleave at one endpoint, each in order", async () => {
  const rx = await startReceiver();
  const { agentId } = await setupAccount(server.api, { endpointUrl: rx.url });
  const ids = await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      runCall(server.api, agentId, `+1555020${String(i).padStart(4, "0")}`),
    ),
  );
  await rx.waitForCount(80);
  for (const id of ids) {
    assert.deepEqual(
      rx.requests.filter((r) => r.json.call.id === id).map((r) => r.json.event_type),
      ["call.started", "call.ended", "call.transcript", "call.summary"],
      `call ${id} in order`,
    );
  }
  await rx.close();
});
