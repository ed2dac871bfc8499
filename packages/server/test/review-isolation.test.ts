import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { after, before, describe, test } from "node:test";
import { type ApiClient, apiClient, runCall, setupAccount } from "./helpers/api.js";
import { startReceiver } from "./helpers/receiver.js";
import { CLI, type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

/**
 * Adversarial review: one account must not reach another's resources through any route (404, or
 * 400 naming the field for a reference inside a body), and endpoint settings that can never be
 * sent or that point at blocked addresses are refused when saved, on update as on create.
 */

const notFound = (r: { status: number; body: any }, what: string) => {
  assert.equal(r.status, 404, `${what}: ${JSON.stringify(r.body)}`);
  assert.equal(r.body.error.code, "not_found", what);
};

describe("review: another account's resources are out of reach", () => {
  const dir = tempDir();
  let server: ServerProcess;
  let other: ApiClient;
  let rx: Awaited<ReturnType<typeof startReceiver>>;
  let agentId: number;
  let endpoint: any;
  let callId: number;
  let delivery: any;
  before(async () => {
    server = await spawnServer({ dataDir: dir.path });
    rx = await startReceiver({ respond: () => 500 });
    ({ agentId, endpoint } = await setupAccount(server.api, { endpointUrl: rx.url }));
    callId = await runCall(server.api, agentId);
    delivery = await waitFor("a failed delivery", async () => {
      const r = await server.api.get(`/v1/deliveries?endpoint_id=${endpoint.id}&status=failed`);
      return r.body.data[0];
    });
    const out = spawnSync(process.execPath, [CLI, "accounts", "create", "--name", "Other", "--json"], {
      env: { ...process.env, KLEN_DATA_DIR: dir.path },
      encoding: "utf8",
    });
    assert.equal(out.status, 0, out.stderr);
    other = apiClient(server.url, JSON.parse(out.stdout).api_key);
  });
  after(async () => {
    await server.kill();
    await rx.close();
    dir.remove();
  });

  test("every route with an id of the first account answers 404 to the second", async () => {
    const ev = (await server.api.get(`/v1/events?call_id=${callId}`)).body.data[0];
    const contact = await server.api.post("/v1/contacts", { name: "Ada", phone_number: "+15550001111" });
    notFound(await other.get(`/v1/events/${ev.id}`), "event");
    notFound(await other.get(`/v1/deliveries/${delivery.id}`), "delivery");
    notFound(await other.post(`/v1/deliveries/${delivery.id}/retry`), "retry");
    notFound(
      await other.post(`/v1/endpoints/${endpoint.id}/recover`, { since: "2020-01-01T00:00:00Z" }),
      "recover",
    );
    notFound(await other.post(`/v1/endpoints/${endpoint.id}/rotate-secret`, {}), "rotate");
    notFound(await other.get(`/v1/endpoints/${endpoint.id}/secret`), "secret");
    notFound(
      await other.patch(`/v1/endpoints/${endpoint.id}`, { description: "mine now" }),
      "patch endpoint",
    );
    notFound(await other.del(`/v1/endpoints/${endpoint.id}`), "delete endpoint");
    notFound(await other.patch(`/v1/agents/${agentId}`, { name: "x" }), "patch agent");
    notFound(await other.del(`/v1/agents/${agentId}`), "delete agent");
    notFound(await other.get(`/v1/contacts/${contact.body.id}`), "contact");
    notFound(await other.patch(`/v1/contacts/${contact.body.id}`, { name: "x" }), "patch contact");
    notFound(await other.del(`/v1/contacts/${contact.body.id}`), "delete contact");
    for (const step of ["end", "transcript", "summary"])
      notFound(await other.post(`/v1/calls/${callId}/${step}`, step === "end" ? {} : { [step]: "x" }), step);
    notFound(await other.post(`/v1/calls/${callId}/fail`, { failure_reason: "no-answer" }), "fail");
    const upload = await other.raw("POST", `/v1/calls/${callId}/recording`, "RIFF....WAVE", {
      "content-type": "audio/wav",
      "idempotency-key": "rec-other",
    });
    notFound(upload, "recording");
    notFound(
      await other.get(`/v1/stats/deliveries?bucket=1h&endpoint_id=${endpoint.id}`),
      "stats of another account's endpoint",
    );

    // References inside a body: a 400 naming the field, the same as for an id that does not exist.
    for (const [body, field] of [
      [{ endpoint_id: endpoint.id }, "endpoint_id"],
      [{ agent_id: agentId }, "agent_id"],
    ] as const) {
      const r = await other.post("/v1/test-calls", body);
      assert.equal(r.status, 400, JSON.stringify(r.body));
      assert.equal(r.body.error.details.field, field);
    }
    const linked = await other.post("/v1/calls", {
      agent_id: (await other.post("/v1/agents", { name: "Theirs" })).body.id,
      type: "inbound",
      phone_number: "+15551234567",
      contact_id: contact.body.id,
    });
    assert.equal(linked.status, 400, JSON.stringify(linked.body));
    assert.equal(linked.body.error.details.field, "contact_id");

    // Lists filtered by another account's ids are empty, and nothing above changed anything.
    assert.equal((await other.get(`/v1/deliveries?endpoint_id=${endpoint.id}`)).body.data.length, 0);
    assert.equal((await other.get(`/v1/events?call_id=${callId}`)).body.data.length, 0);
    const still = await server.api.get(`/v1/deliveries/${delivery.id}`);
    assert.equal(still.body.status, "failed");
    const ep = await server.api.get(`/v1/endpoints/${endpoint.id}`);
    assert.equal(ep.status, 200);
    assert.equal(ep.body.description, "");
    assert.equal((await server.api.get(`/v1/agents/${agentId}`)).body.name, "Customer Support");
    assert.equal((await server.api.get(`/v1/calls/${callId}`)).body.status, "completed");
    // The first account's own stats for its endpoint still answer.
    assert.equal(
      (await server.api.get(`/v1/stats/deliveries?bucket=1h&endpoint_id=${endpoint.id}`)).status,
      200,
    );
  });

  test("an Idempotency-Key of one account is not seen by another", async () => {
    const key = "shared-key-1";
    const mine = await server.api.post("/v1/agents", { name: "Mine" }, { "idempotency-key": key });
    assert.equal(mine.status, 201);
    const theirs = await other.post("/v1/agents", { name: "Mine" }, { "idempotency-key": key });
    assert.equal(theirs.status, 201, "not a replay of the other account's answer");
    assert.notEqual(theirs.body.id, mine.body.id);
    assert.equal(theirs.headers.get("idempotent-replayed"), null);
  });
});

describe("review: endpoint settings are checked on update as on create", () => {
  const dir = tempDir();
  let server: ServerProcess;
  before(async () => {
    server = await spawnServer({ dataDir: dir.path, env: { KLEN_DEV: "0" } });
  });
  after(async () => {
    await server.kill();
    dir.remove();
  });

  test("a PATCH cannot move an endpoint to http:// or a literal non-global address", async () => {
    const ep = await server.api.post("/v1/endpoints", { url: "https://hooks.example.com/klen" });
    assert.equal(ep.status, 201, JSON.stringify(ep.body));
    for (const url of [
      "http://hooks.example.com/klen",
      "https://127.0.0.1/x",
      "https://127.1/x",
      "https://[::1]/x",
      "https://[::ffff:127.0.0.1]/x",
      "https://0x7f000001/x",
    ]) {
      const r = await server.api.patch(`/v1/endpoints/${ep.body.id}`, { url });
      assert.equal(r.status, 400, `${url}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.details.field, "url");
    }
    assert.equal(
      (await server.api.get(`/v1/endpoints/${ep.body.id}`)).body.url,
      "https://hooks.example.com/klen",
    );
  });

  test("headers that can never be sent are refused when saved, naming the header", async () => {
    const bad: Array<Record<string, string>> = [
      { "x-a": "b\r\nInjected: 1" },
      { "x-a": "nul\u0000byte" },
      { "x-a": "bell\u0007" },
      { "x-a": "caf\u00e9 \u20ac" },
      { Expect: "100-continue" },
      { upgrade: "websocket" },
      { "Keep-Alive": "timeout=5" },
      { "Webhook-Signature": "v1,forged" },
      { Host: "internal" },
    ];
    const ep = await server.api.post("/v1/endpoints", { url: "https://hooks.example.com/klen" });
    for (const headers of bad) {
      const created = await server.api.post("/v1/endpoints", { url: "https://hooks.example.com/k", headers });
      assert.equal(created.status, 400, `${JSON.stringify(headers)}: ${JSON.stringify(created.body)}`);
      assert.match(created.body.error.details.field, /^headers/);
      const patched = await server.api.patch(`/v1/endpoints/${ep.body.id}`, { headers });
      assert.equal(patched.status, 400, `${JSON.stringify(headers)}: ${JSON.stringify(patched.body)}`);
    }
    const ok = await server.api.patch(`/v1/endpoints/${ep.body.id}`, {
      headers: { "X-Tenant": "acme\tblue", Authorization: "Bearer t0k3n" },
    });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
  });
});
