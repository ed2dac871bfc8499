import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { gzipSync } from "node:zlib";
import { apiClient, setupAccount } from "./helpers/api.js";
import { backends } from "./helpers/backends.js";
import { stopPostgres } from "./helpers/postgres.js";
import { startReceiver } from "./helpers/receiver.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

const expectError = (r: { status: number; body: any }, status: number, code: string, field?: string) => {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.equal(r.body.error.code, code, JSON.stringify(r.body));
  assert.equal(typeof r.body.error.message, "string");
  assert.doesNotMatch(JSON.stringify(r.body), /at .*\.js:\d+/, "no stack trace");
  if (field !== undefined) assert.equal(r.body.error.details?.field, field, JSON.stringify(r.body));
};

after(() => stopPostgres());

describe("bad input gets a clear 4xx, emits nothing and crashes nothing", () => {
  const dir = tempDir();
  let server: ServerProcess;
  let agentId: number;
  before(async () => {
    server = await spawnServer({ dataDir: dir.path });
    ({ agentId } = await setupAccount(server.api));
  });
  after(async () => {
    await server.kill();
    dir.remove();
  });

  test("authentication", async () => {
    const none = await fetch(`${server.url}/v1/calls`);
    assert.equal(none.status, 401);
    assert.equal(((await none.json()) as any).error.code, "unauthorized");
    expectError(await apiClient(server.url, "wrong").get("/v1/calls"), 401, "unauthorized");
    // An endpoint's signing secret sent as the key: the answer says what it is.
    const secret = await apiClient(server.url, `whsec_${Buffer.alloc(32).toString("base64")}`).get(
      "/v1/calls",
    );
    expectError(secret, 401, "unauthorized");
    assert.match(secret.body.error.message, /endpoint's signing secret/);
    assert.equal((await fetch(`${server.url}/healthz`)).status, 200);
    const openapi = (await (await fetch(`${server.url}/openapi.json`)).json()) as any;
    assert.equal(openapi.openapi.slice(0, 2), "3.");
    assert.ok(openapi.paths["/v1/calls/{id}/start"], "OpenAPI documents the routes");
    assert.ok(openapi.components.schemas.call_ended, "OpenAPI embeds the event schemas");
  });

  test("every answer names its request: x-request-id, unique, also on refusals", async () => {
    const answers = await Promise.all([
      fetch(`${server.url}/v1/calls`),
      fetch(`${server.url}/v1/calls`, { headers: { authorization: `Bearer ${server.apiKey}` } }),
      fetch(`${server.url}/v1/nope`, { headers: { authorization: `Bearer ${server.apiKey}` } }),
      fetch(`${server.url}/healthz`),
    ]);
    const ids = answers.map((r) => r.headers.get("x-request-id"));
    assert.deepEqual(
      answers.map((r) => r.status),
      [401, 200, 404, 200],
    );
    for (const id of ids) assert.match(String(id), /^req_[0-9a-f]{32}$/);
    assert.equal(new Set(ids).size, ids.length);
  });

  test("the OpenAPI document states each operation's success status, its errors and the Idempotency-Key header", async () => {
    // Fetched twice: the document is built once, and the second copy must not grow.
    await fetch(`${server.url}/openapi.json`);
    const doc = (await (await fetch(`${server.url}/openapi.json`)).json()) as any;
    const statuses = (path: string, method: string) => Object.keys(doc.paths[path][method].responses);
    assert.equal(statuses("/v1/calls", "post")[0], "201");
    assert.equal(statuses("/v1/endpoints", "post")[0], "201");
    assert.equal(statuses("/v1/test-calls", "post")[0], "202");
    assert.equal(statuses("/v1/deliveries/{id}/retry", "post")[0], "202");
    assert.equal(statuses("/v1/calls/{id}/start", "post")[0], "200");
    assert.ok(statuses("/v1/calls/{id}/end", "post").includes("409"));
    assert.ok(statuses("/v1/calls", "get").includes("401"));
    assert.equal(
      doc.paths["/v1/calls"].post.responses["400"].content["application/json"].schema.$ref,
      "#/components/schemas/error",
    );
    assert.ok(doc.components.schemas.error.properties.error);
    for (const [path, ops] of Object.entries<any>(doc.paths)) {
      if (!path.startsWith("/v1/")) continue;
      for (const [method, op] of Object.entries<any>(ops)) {
        const keys = (op.parameters ?? []).filter((p: any) => p.name === "Idempotency-Key");
        assert.equal(keys.length, method === "get" ? 0 : 1, `${method} ${path}`);
      }
    }
    assert.ok(doc.paths["/v1/calls/{id}/recording"].post.requestBody.content["audio/*"]);
    // The blob route needs no key and serves ranges; the stream is not JSON.
    assert.deepEqual(statuses("/v1/blobs/{id}", "get"), ["200", "206", "403", "404", "416", "503"]);
    assert.ok(doc.paths["/v1/events/stream"].get.responses["200"].content["text/event-stream"]);
    // Each webhook names its event's schema, and that schema is in the document.
    for (const [type, hook] of Object.entries<any>(doc["x-webhooks"])) {
      const ref: string = hook.post.requestBody.content["application/json"].schema.$ref;
      assert.ok(doc.components.schemas[ref.split("/").pop()!], `${type} → ${ref}`);
    }
    assert.equal(Object.keys(doc["x-webhooks"]).length, 6);
  });

  test("malformed JSON, wrong types, missing and unknown fields name the field", async () => {
    const malformed = await server.api.raw("POST", "/v1/calls", '{"agent_id": 1,', {});
    expectError(malformed, 400, "invalid_json");
    assert.match(malformed.body.error.message, /not valid JSON/);
    const infinite = await server.api.raw(
      "POST",
      "/v1/calls",
      '{"agent_id":1e400,"type":"inbound","phone_number":"+15551234567"}',
      {},
    );
    expectError(infinite, 400, "invalid_request", "agent_id");
    expectError(
      await server.api.raw(
        "POST",
        "/v1/endpoints",
        '{"url":"http://127.0.0.1:9/x","agent_ids":[1,-1e999]}',
        {},
      ),
      400,
      "invalid_request",
      "agent_ids.1",
    );
    const poisoned = await server.api.raw(
      "POST",
      "/v1/agents",
      '{"name":"a","__proto__":{"admin":true}}',
      {},
    );
    expectError(poisoned, 400, "invalid_json", "body");
    assert.match(poisoned.body.error.message, /"__proto__" key or a "constructor" key holding "prototype"/);
    const viaConstructor = await server.api.raw(
      "POST",
      "/v1/agents",
      '{"name":"a","constructor":{"prototype":{"admin":true}}}',
      {},
    );
    expectError(viaConstructor, 400, "invalid_json");
    // Nesting past what any body needs is refused before the schema walks it.
    const deep = `{"name":"a","x":${"[".repeat(20_000)}${"]".repeat(20_000)}}`;
    const nested = await server.api.raw("POST", "/v1/agents", deep, {});
    expectError(nested, 400, "invalid_request");
    assert.match(nested.body.error.message, /nested more than 32 levels/);
    expectError(
      await server.api.post("/v1/calls", { agent_id: "1", type: "inbound", phone_number: "+15551234567" }),
      400,
      "invalid_request",
      "agent_id",
    );
    expectError(
      await server.api.post("/v1/calls", {
        agent_id: agentId,
        type: "sideways",
        phone_number: "+15551234567",
      }),
      400,
      "invalid_request",
      "type",
    );
    expectError(
      await server.api.post("/v1/calls", { agent_id: agentId, type: "inbound", phone_number: "555-1234" }),
      400,
      "invalid_request",
      "phone_number",
    );
    expectError(
      await server.api.post("/v1/calls", { agent_id: agentId, type: "inbound" }),
      400,
      "invalid_request",
      "phone_number",
    );
    expectError(
      await server.api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: "+15551234567",
        colour: "red",
      }),
      400,
      "invalid_request",
      "colour",
    );
    expectError(
      await server.api.post("/v1/calls", { agent_id: 999999, type: "inbound", phone_number: "+15551234567" }),
      400,
      "invalid_request",
      "agent_id",
    );
    expectError(await server.api.post("/v1/agents", { name: "" }), 400, "invalid_request", "name");
    expectError(
      await server.api.post("/v1/contacts", { name: "X", email: "not-an-email" }),
      400,
      "invalid_request",
      "email",
    );
    expectError(await server.api.get("/v1/calls?limit=0"), 400, "invalid_request", "limit");
    expectError(await server.api.get("/v1/calls?status=lost"), 400, "invalid_request", "status");
    expectError(await server.api.get("/v1/events?cursor=%%%"), 400, "invalid_request", "cursor");
    const text = await server.api.raw("POST", "/v1/agents", "name=x", { "content-type": "text/plain" });
    expectError(text, 415, "unsupported_media_type", "content-type");
    assert.equal(text.body.error.message, 'the API takes application/json, not "text/plain"');
    // JSON is UTF-8: a body declared in another charset would be read as UTF-8 and stored changed.
    const utf16 = await server.api.raw("POST", "/v1/agents", '{"name":"x"}', {
      "content-type": "application/json; charset=utf-16",
    });
    expectError(utf16, 415, "unsupported_media_type", "content-type");
    assert.equal(utf16.body.error.message, 'the API takes JSON in UTF-8, not charset "utf-16"');
    // UTF-7 reads even plain ASCII differently ("+ImI-" is one character): refused however sent.
    expectError(
      await server.api.raw("POST", "/v1/agents", '{"name":"A+ImIDkQ-"}', {
        "content-type": "application/json; charset=UTF-7",
      }),
      415,
      "unsupported_media_type",
      "content-type",
    );
    // Latin-1 with a non-ASCII character would be stored changed; plain ASCII reads the same.
    expectError(
      await server.api.raw("POST", "/v1/agents", '{"name":"Café"}', {
        "content-type": 'application/json; charset="ISO-8859-1"',
      }),
      415,
      "unsupported_media_type",
      "content-type",
    );
    for (const contentType of [
      "application/json; charset=UTF-8",
      'application/json;charset="utf-8"',
      "application/json; charset=us-ascii",
      "application/json; charset=iso-8859-1",
      'application/json; profile="a;charset=x"',
    ]) {
      const ok = await server.api.raw("POST", "/v1/agents", '{"name":"Charset"}', {
        "content-type": contentType,
      });
      assert.equal(ok.status, 201, contentType);
    }
    // Sent in full by fetch before it reads the answer: the 413 must wait for the body, not cut
    // the connection while the client is still writing (that was EPIPE, "fetch failed").
    for (const mib of [2, 16]) {
      const huge = await server.api.post("/v1/agents", { name: "x".repeat(mib * 1024 * 1024) });
      expectError(huge, 413, "payload_too_large");
    }
    expectError(await server.api.get("/v1/nothing-here"), 404, "not_found");
    const calls = await server.api.get("/v1/calls");
    assert.equal(calls.body.data.length, 0, "no call was created by any bad request");
  });

  test("invalid transitions are 409 or 404 and emit nothing", async () => {
    const call = await server.api.post("/v1/calls", {
      agent_id: agentId,
      type: "inbound",
      phone_number: "+15551234567",
    });
    const id = call.body.id;
    expectError(await server.api.post(`/v1/calls/${id}/end`, {}), 409, "invalid_transition");
    // A time well ahead of the server's clock is a mistake, not a call.
    expectError(
      await server.api.post(`/v1/calls/${id}/start`, { started_at: "2099-01-01T00:00:00Z" }),
      400,
      "invalid_request",
      "started_at",
    );
    const soon = new Date(Date.now() + 60_000).toISOString();
    const other = await server.api.post("/v1/calls", {
      agent_id: agentId,
      type: "inbound",
      phone_number: "+15551234567",
    });
    assert.equal(
      (await server.api.post(`/v1/calls/${other.body.id}/start`, { started_at: soon })).status,
      200,
      "a minute of clock skew is fine",
    );
    expectError(
      await server.api.post(`/v1/calls/${id}/transcript`, { transcript: "early" }),
      409,
      "invalid_transition",
    );
    expectError(
      await server.api.post(`/v1/calls/${id}/fail`, { failure_reason: "exploded" }),
      400,
      "invalid_request",
      "failure_reason",
    );
    expectError(await server.api.post(`/v1/calls/${id}/fail`, {}), 400, "invalid_request", "failure_reason");
    expectError(
      await server.api.post(`/v1/calls/${id}/start`, { started_at: "yesterday" }),
      400,
      "invalid_request",
      "started_at",
    );
    expectError(await server.api.post("/v1/calls/987654/start", {}), 404, "not_found");
    expectError(await server.api.post("/v1/calls/abc/start", {}), 400, "invalid_request", "id");
    assert.equal((await server.api.post(`/v1/calls/${id}/start`, {})).status, 200);
    expectError(
      await server.api.post(`/v1/calls/${id}/end`, { ended_at: "2000-01-01T00:00:00Z" }),
      400,
      "invalid_request",
      "ended_at",
    );
    assert.equal((await server.api.post(`/v1/calls/${id}/end`, {})).status, 200);
    expectError(await server.api.post(`/v1/calls/${id}/end`, {}), 409, "invalid_transition");
    // A blank transcript or summary: nothing to summarize or to say.
    for (const step of ["transcript", "summary"]) {
      const r = await server.api.post(`/v1/calls/${id}/${step}`, { [step]: " \n\t " });
      expectError(r, 400, "invalid_request", step);
      assert.equal(r.body.error.message, `"${step}" must not be blank`);
    }
    expectError(
      await server.api.post(`/v1/calls/${id}/fail`, { failure_reason: "busy" }),
      409,
      "invalid_transition",
    );
    const events = await server.api.get(`/v1/events?call_id=${id}`);
    assert.deepEqual(events.body.data.map((e: { event_type: string }) => e.event_type).sort(), [
      "call.ended",
      "call.started",
    ]);
  });

  test("bad endpoint input: URL, reserved headers, unknown event types", async () => {
    expectError(await server.api.post("/v1/endpoints", { url: "not a url" }), 400, "invalid_url", "url");
    expectError(
      await server.api.post("/v1/endpoints", { url: "ftp://example.com/x" }),
      400,
      "invalid_url",
      "url",
    );
    // A URL without its scheme reads as scheme "localhost:": the answer says what to add.
    const schemeless = await server.api.post("/v1/endpoints", { url: "localhost:3000/webhooks" });
    expectError(schemeless, 400, "invalid_url", "url");
    assert.equal(
      schemeless.body.error.message,
      '"url" has no scheme: begin it with https:// (or http:// in dev mode), e.g. https://localhost:3000/webhooks',
    );
    const ftp = await server.api.post("/v1/endpoints", { url: "ftp://example.com/x" });
    assert.match(ftp.body.error.message, /must be http\(s\), not ftp:; begin it with https:\/\//);
    // Header names are case-insensitive: two spellings of one would be sent as one.
    const twice = await server.api.post("/v1/endpoints", {
      url: "https://example.com/h",
      headers: { "X-Team": "a", "x-team": "b" },
    });
    expectError(twice, 400, "invalid_request", "headers.x-team");
    assert.match(twice.body.error.message, /given twice \(names are case-insensitive\)/);
    // A host without a scheme that is no URL at all is told the same; another scheme is named.
    for (const [url, message] of [
      ["example.com/hook", /has no scheme: .* e\.g\. https:\/\/example\.com\/hook$/],
      ["127.0.0.1:3000/hook", /has no scheme: .* e\.g\. https:\/\/127\.0\.0\.1:3000\/hook$/],
      ["mailto:a@b", /must be http\(s\), not mailto:/],
      ["javascript:alert(1)", /must be http\(s\), not javascript:/],
    ] as const) {
      const r = await server.api.post("/v1/endpoints", { url });
      expectError(r, 400, "invalid_url", "url");
      assert.match(r.body.error.message, message, url);
    }
    expectError(
      await server.api.post("/v1/endpoints", { url: "https://example.com", event_types: ["call.exploded"] }),
      400,
      "invalid_request",
    );
    expectError(
      await server.api.post("/v1/endpoints", {
        url: "https://example.com",
        headers: { "webhook-signature": "forged" },
      }),
      400,
      "invalid_request",
      "headers.webhook-signature",
    );
    const badName = await server.api.post("/v1/endpoints", {
      url: "http://127.0.0.1:9/x",
      headers: { "bad header": "x" },
    });
    expectError(badName, 400, "invalid_request", "headers.bad header");
    assert.match(badName.body.error.message, /"headers\.bad header" is not a valid name/);
    // An id that cannot exist is not found, like one that does not.
    for (const path of [
      "/v1/endpoints/ep_nope",
      "/v1/deliveries/dlv_123",
      "/v1/events/evt_x",
      "/v1/endpoints/42",
    ])
      expectError(await server.api.get(path), 404, "not_found");
    expectError(await server.api.post("/v1/deliveries/dlv_123/retry"), 404, "not_found");
    expectError(await server.api.post("/v1/endpoints/nope/rotate-secret"), 404, "not_found");
    // List filters take ids as the paths do.
    expectError(await server.api.get("/v1/deliveries?event_id=bad"), 400, "invalid_request", "event_id");
    expectError(
      await server.api.get("/v1/deliveries?endpoint_id=ep_x"),
      400,
      "invalid_request",
      "endpoint_id",
    );
    assert.equal(
      (await server.api.get("/v1/deliveries?endpoint_id=&event_id=")).status,
      200,
      "empty: no filter",
    );
    // An unknown or misspelt query parameter is an error, not a silently unfiltered list.
    for (const path of [
      "/v1/deliveries?endpoint=ep_x",
      "/v1/events?type=call.ended",
      "/v1/calls?agent=1",
      "/v1/agents?sort=name",
      "/v1/contacts?q=jane",
      "/v1/endpoints?disabled=true",
    ]) {
      const r = await server.api.get(path);
      const field = path.slice(path.indexOf("?") + 1, path.indexOf("="));
      expectError(r, 400, "invalid_request", field);
      assert.equal(r.body.error.message, `unknown query parameter "${field}"`, path);
      assert.equal(r.body.error.details.location, "querystring");
    }
    expectError(await server.api.get("/v1/endpoints/ep_00000000000000000000000000"), 404, "not_found");
    // recover: the field named is the one that is wrong.
    const ep = await server.api.post("/v1/endpoints", { url: "http://127.0.0.1:9/recover-input" });
    assert.equal(ep.status, 201);
    const recover = (body: unknown) => server.api.post(`/v1/endpoints/${ep.body.id}/recover`, body);
    expectError(await recover({ since: "9999-12-31T23:59:59Z" }), 400, "invalid_request", "since");
    expectError(
      await recover({ since: "2026-01-02T00:00:00Z", until: "2026-01-01T00:00:00Z" }),
      400,
      "invalid_request",
      "until",
    );
    expectError(await recover({ since: "yesterday" }), 400, "invalid_request", "since");
    assert.equal((await server.api.del(`/v1/endpoints/${ep.body.id}`)).status, 200);
  });

  test("another account's resources are 404, and lists show only one's own", async () => {
    const rx = await startReceiver();
    const mine = await server.api.post("/v1/endpoints", { url: rx.url });
    const call = await server.api.post("/v1/calls", {
      agent_id: agentId,
      type: "inbound",
      phone_number: "+15551234567",
    });
    // A second account, created by the CLI against the same database.
    const { spawnSync } = await import("node:child_process");
    const { CLI } = await import("./helpers/server.js");
    const out = spawnSync(process.execPath, [CLI, "accounts", "create", "--name", "Other", "--json"], {
      env: { ...process.env, KLEN_DATA_DIR: dir.path },
      encoding: "utf8",
    });
    assert.equal(out.status, 0, out.stderr);
    const other = apiClient(server.url, JSON.parse(out.stdout).api_key);
    expectError(await other.get(`/v1/endpoints/${mine.body.id}`), 404, "not_found");
    expectError(await other.get(`/v1/calls/${call.body.id}`), 404, "not_found");
    expectError(await other.post(`/v1/calls/${call.body.id}/start`, {}), 404, "not_found");
    expectError(await other.get(`/v1/agents/${agentId}`), 404, "not_found");
    expectError(
      await other.post("/v1/calls", { agent_id: agentId, type: "inbound", phone_number: "+15551234567" }),
      400,
      "invalid_request",
      "agent_id",
    );
    assert.equal((await other.get("/v1/endpoints")).body.data.length, 0);
    assert.equal((await other.get("/v1/calls")).body.data.length, 0);
    const theirs = await other.get("/v1/account");
    assert.equal(theirs.body.name, "Other");
    await rx.close();
  });

  test("pagination walks every item once, newest first", async () => {
    const created: number[] = [];
    for (let i = 0; i < 7; i++)
      created.push((await server.api.post("/v1/agents", { name: `Agent ${i}` })).body.id);
    const seen: number[] = [];
    let cursor: string | null = null;
    do {
      const r: { body: { data: Array<{ id: number }>; next_cursor: string | null } } = await server.api.get(
        `/v1/agents?limit=3${cursor ? `&cursor=${cursor}` : ""}`,
      );
      seen.push(...r.body.data.map((a) => a.id));
      cursor = r.body.next_cursor;
    } while (cursor);
    assert.deepEqual(
      seen.filter((id) => created.includes(id)),
      [...created].reverse(),
    );
    assert.equal(new Set(seen).size, seen.length);
  });

  test("a cursor cut short, respelled or taken from another list is a 400 naming cursor, not another position", async () => {
    for (let i = 0; i < 3; i++) {
      await server.api.post("/v1/agents", { name: `Cursor ${i}` });
      await server.api.post("/v1/endpoints", { url: `https://127.0.0.1/cursor-${i}`, disabled: true });
    }
    const agents = (await server.api.get("/v1/agents?limit=1")).body.next_cursor as string;
    const endpoints = (await server.api.get("/v1/endpoints?limit=1")).body.next_cursor as string;
    assert.equal((await server.api.get(`/v1/agents?limit=1&cursor=${agents}`)).status, 200);
    assert.equal((await server.api.get(`/v1/endpoints?limit=1&cursor=${endpoints}`)).status, 200);
    const refused = [
      `/v1/endpoints?cursor=${endpoints.slice(0, -1)}`,
      `/v1/endpoints?cursor=${endpoints.slice(0, -8)}`,
      `/v1/events?cursor=${endpoints}`,
      `/v1/deliveries?cursor=${endpoints}`,
      `/v1/endpoints?cursor=${agents}`,
      `/v1/agents?cursor=${agents}%3D%3D`,
      `/v1/agents?cursor=%20${agents}`,
      `/v1/agents?cursor=${Buffer.from("007").toString("base64url")}`,
      `/v1/agents?cursor=${endpoints}`,
    ];
    for (const path of refused) expectError(await server.api.get(path), 400, "invalid_request", "cursor");
  });

  test("a blank brief summary on end is none: call.ended omits it and the call holds null", async () => {
    for (const summary of ["", "   \n"]) {
      const call = await server.api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: "+15551234567",
      });
      await server.api.post(`/v1/calls/${call.body.id}/start`, {});
      const ended = await server.api.post(`/v1/calls/${call.body.id}/end`, { summary });
      assert.equal(ended.status, 200, JSON.stringify(ended.body));
      assert.equal(ended.body.summary, null);
      const events = await server.api.get(`/v1/events?call_id=${call.body.id}`);
      const body = events.body.data.find((e: any) => e.event_type === "call.ended");
      assert.ok(body, JSON.stringify(events.body));
      assert.equal("summary" in body.payload.call, false, JSON.stringify(body.payload));
    }
  });

  test("ids and query integers are decimal digits, unknown query parameters are refused on every route, and a body's integers fit 2^53", async () => {
    const call = (
      await server.api.post("/v1/calls", { agent_id: agentId, type: "inbound", phone_number: "+15551234567" })
    ).body;
    assert.equal((await server.api.get(`/v1/calls/${call.id}`)).status, 200);
    for (const id of ["0x1", "1e0", "%201", "1%20", "+1", "01", "0b1", "1.0", ".1e1"]) {
      const r = await server.api.get(`/v1/calls/${id}`);
      expectError(r, 400, "invalid_request", "id");
      assert.match(r.body.error.message, /"id" must be an integer/);
    }
    const before = (await server.api.get(`/v1/events?call_id=${call.id}`)).body.data.length;
    expectError(
      await server.api.post(`/v1/calls/0x${call.id.toString(16)}/start`, {}),
      400,
      "invalid_request",
      "id",
    );
    assert.equal(
      (await server.api.get(`/v1/events?call_id=${call.id}`)).body.data.length,
      before,
      "nothing emitted",
    );
    for (const q of ["limit=1e1", "limit=0x5", "agent_id=0x2", "limit=%205"])
      expectError(await server.api.get(`/v1/calls?${q}`), 400, "invalid_request", q.split("=")[0]);
    expectError(await server.api.get(`/v1/events?call_id=3e0`), 400, "invalid_request", "call_id");
    assert.equal((await server.api.get(`/v1/calls?limit=5&agent_id=${agentId}`)).status, 200);

    for (const path of ["/v1/account", `/v1/agents/${agentId}`, `/v1/calls/${call.id}`]) {
      const r = await server.api.get(`${path}?verbose=1`);
      expectError(r, 400, "invalid_request", "verbose");
      assert.match(r.body.error.message, /unknown query parameter "verbose"/);
    }
    expectError(
      await server.api.post(`/v1/agents?dry_run=1`, { name: "x" }),
      400,
      "invalid_request",
      "dry_run",
    );

    expectError(
      await server.api.raw(
        "POST",
        "/v1/calls",
        '{"agent_id":9007199254740993,"type":"inbound","phone_number":"+15551234567"}',
        {},
      ),
      400,
      "invalid_request",
      "agent_id",
    );
    expectError(
      await server.api.raw("POST", "/v1/endpoints", '{"url":"http://127.0.0.1:9/x","agent_ids":[1e300]}', {}),
      400,
      "invalid_request",
      "agent_ids.0",
    );
    // An agent filter names the account's own agents: beyond an agent id's range, or unknown here.
    expectError(
      await server.api.post("/v1/endpoints", { url: "http://127.0.0.1:9/x", agent_ids: [99999999999] }),
      400,
      "invalid_request",
      "agent_ids.0",
    );
    const unknownAgent = await server.api.post("/v1/endpoints", {
      url: "http://127.0.0.1:9/x",
      agent_ids: [2147483000],
    });
    expectError(unknownAgent, 400, "invalid_request", "agent_ids");
    assert.match(unknownAgent.body.error.message, /agent 2147483000 not found/);
    const invalid = await server.api.raw("POST", "/v1/agents", '{"name":', {});
    expectError(invalid, 400, "invalid_json", "body");
    const deep = await server.api.raw("POST", "/v1/agents", `${'{"a":'.repeat(40)}1${"}".repeat(40)}`, {});
    expectError(deep, 400, "invalid_request");
    assert.match(deep.body.error.details.field, /^a(\.a)+$/);
    expectError(await server.api.get("/v1/calls/%zz"), 400, "invalid_url", "url");
  });

  test("API keys list as every list: limit, cursor, next_cursor", async () => {
    const made = await server.api.post("/v1/api-keys", {});
    assert.equal(made.status, 201);
    const first = await server.api.get("/v1/api-keys?limit=1");
    assert.equal(first.status, 200);
    assert.deepEqual(
      first.body.data.map((k: { id: number }) => k.id),
      [made.body.id],
    );
    assert.ok(first.body.next_cursor);
    const second = await server.api.get(`/v1/api-keys?limit=1&cursor=${first.body.next_cursor}`);
    assert.equal(second.body.data.length, 1);
    assert.ok(second.body.data[0].id < made.body.id);
    expectError(await server.api.get("/v1/api-keys?cursor=abc"), 400, "invalid_request", "cursor");
    expectError(await server.api.get("/v1/api-keys?foo=bar"), 400, "invalid_request", "foo");
    assert.equal((await server.api.del(`/v1/api-keys/${made.body.id}`)).status, 200);
  });

  test("a recording labelled application/json is the wrong media type, whatever its bytes", async () => {
    const call = (
      await server.api.post("/v1/calls", { agent_id: agentId, type: "inbound", phone_number: "+15551234567" })
    ).body;
    await server.api.post(`/v1/calls/${call.id}/start`, {});
    for (const bytes of ["RIFFxxxxWAVE", "{}"]) {
      const r = await server.api.raw("POST", `/v1/calls/${call.id}/recording`, bytes, {});
      expectError(r, 415, "unsupported_media_type", "content-type");
    }
  });

  test("a body declared compressed (content-encoding) is a 415, whatever its bytes; identity is plain", async () => {
    const before = (await server.api.get("/v1/agents")).body.data.length;
    const gzipped = gzipSync(Buffer.from('{"name":"Zipped"}'));
    for (const [coding, body] of [
      ["gzip", '{"name":"Plain but labelled gzip"}'],
      ["gzip", gzipped],
      ["br", '{"name":"x"}'],
      ["deflate, gzip", '{"name":"x"}'],
    ] as const) {
      const r = await fetch(`${server.url}/v1/agents`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${server.apiKey}`,
          "content-type": "application/json",
          "content-encoding": coding,
        },
        body: typeof body === "string" ? body : new Uint8Array(body),
      });
      const answer = { status: r.status, body: await r.json() };
      expectError(answer, 415, "unsupported_media_type", "content-encoding");
      // The body is not read: the connection is not kept for another request.
      assert.equal(r.headers.get("connection"), "close");
    }
    const call = (
      await server.api.post("/v1/calls", { agent_id: agentId, type: "inbound", phone_number: "+15551234567" })
    ).body;
    await server.api.post(`/v1/calls/${call.id}/start`, {});
    await server.api.post(`/v1/calls/${call.id}/end`, {});
    expectError(
      await server.api.raw("POST", `/v1/calls/${call.id}/recording`, "RIFFxxxxWAVE", {
        "content-type": "audio/wav",
        "content-encoding": "gzip",
      }),
      415,
      "unsupported_media_type",
      "content-encoding",
    );
    assert.equal((await server.api.get(`/v1/calls/${call.id}`)).body.has_recording, false);
    assert.equal((await server.api.get("/v1/agents")).body.data.length, before, "nothing was created");
    const plain = await server.api.raw("POST", "/v1/agents", '{"name":"Identity"}', {
      "content-encoding": "identity",
    });
    assert.equal(plain.status, 201);
  });

  test("a JSON null is not an object: refused where a missing body means defaults", async () => {
    const ep = await server.api.post("/v1/endpoints", { url: "http://127.0.0.1:9/hook" });
    assert.equal(ep.status, 201);
    for (const path of ["/v1/test-calls", `/v1/endpoints/${ep.body.id}/rotate-secret`]) {
      expectError(await server.api.raw("POST", path, "null"), 400, "invalid_request");
    }
    // The refused request rotated nothing; one with no body rotates, with the default grace.
    const secret = await server.api.get(`/v1/endpoints/${ep.body.id}/secret`);
    assert.deepEqual(secret.body, { secret: ep.body.secret });
    const rotated = await server.api.raw("POST", `/v1/endpoints/${ep.body.id}/rotate-secret`, undefined);
    assert.equal(rotated.status, 200, JSON.stringify(rotated.body));
    assert.notEqual(rotated.body.secret, ep.body.secret);
    assert.ok(rotated.body.previous_secret_expires_at);
    await server.api.del(`/v1/endpoints/${ep.body.id}`);
  });

  test("routes that take no body refuse one with fields; a known path with another method is 405 with Allow", async () => {
    const call = (
      await server.api.post("/v1/calls", { agent_id: agentId, type: "inbound", phone_number: "+15551234567" })
    ).body;
    const agent = (await server.api.post("/v1/agents", { name: "Kept" })).body;
    const keys = async () => (await server.api.get("/v1/api-keys?limit=100")).body.data.length;
    const keysBefore = await keys();
    // A client that thinks it set an expiry or asked for a hard delete is not told it succeeded.
    expectError(
      await server.api.post("/v1/api-keys", { expires_at: "2020-01-01T00:00:00Z" }),
      400,
      "invalid_request",
      "expires_at",
    );
    expectError(
      await server.api.raw("DELETE", `/v1/agents/${agent.id}`, { hard: true }),
      400,
      "invalid_request",
      "hard",
    );
    expectError(await server.api.raw("POST", "/v1/api-keys", [1, 2]), 400, "invalid_request", "body");
    expectError(
      await server.api.raw("DELETE", `/v1/agents/${agent.id}`, '"x"'),
      400,
      "invalid_request",
      "body",
    );
    assert.equal(
      (await server.api.get(`/v1/agents/${agent.id}`)).status,
      200,
      "the refused DELETE deleted nothing",
    );
    assert.equal(await keys(), keysBefore, "no key was made");
    // No body, or {}, is what these routes take.
    const key = await server.api.post("/v1/api-keys", {});
    assert.equal(key.status, 201);
    assert.equal((await server.api.raw("DELETE", `/v1/api-keys/${key.body.id}`)).status, 200);
    assert.equal((await server.api.raw("DELETE", `/v1/agents/${agent.id}`, {})).status, 200);

    const wrong = await server.api.raw("PUT", `/v1/calls/${call.id}`, {});
    expectError(wrong, 405, "method_not_allowed");
    assert.equal(wrong.headers.get("allow"), "GET, HEAD");
    assert.deepEqual(wrong.body.error.details.allowed, ["GET", "HEAD"]);
    const start = await server.api.raw("GET", `/v1/calls/${call.id}/start`);
    expectError(start, 405, "method_not_allowed");
    assert.equal(start.headers.get("allow"), "POST");
    expectError(await server.api.raw("DELETE", "/v1/calls"), 405, "method_not_allowed");
    // A path no route has is still a 404.
    expectError(await server.api.get(`/v1/calls/${call.id}/nothing`), 404, "not_found");
  });

  test("the server is still healthy after all of the above", async () => {
    assert.equal((await fetch(`${server.url}/healthz`)).status, 200);
    assert.equal(server.proc.exitCode, null);
  });
});

describe("KLEN_METRICS_TOKEN", () => {
  test("with it /metrics answers only its bearer token; /healthz stays open", async (t) => {
    const dir = tempDir();
    const token = "metrics-token-0123456789";
    const server = await spawnServer({ dataDir: dir.path, env: { KLEN_METRICS_TOKEN: token } });
    t.after(async () => {
      await server.kill();
      dir.remove();
    });
    const scrape = (authorization?: string) =>
      fetch(`${server.url}/metrics`, authorization ? { headers: { authorization } } : {});
    for (const auth of [
      undefined,
      "Bearer wrong",
      `Bearer ${token}x`,
      `Basic ${token}`,
      `Bearer ${server.apiKey}`,
    ]) {
      const r = await scrape(auth);
      assert.equal(r.status, 401, String(auth));
      assert.equal(r.headers.get("www-authenticate"), 'Bearer realm="metrics"');
      assert.equal((await r.json()).error.code, "unauthorized");
    }
    const ok = await scrape(`Bearer ${token}`);
    assert.equal(ok.status, 200);
    assert.match(await ok.text(), /^klen_http_requests_total\{/m);
    assert.equal((await fetch(`${server.url}/healthz`)).status, 200);
  });
});

describe("address blocking without dev mode (loopback forms only)", () => {
  const dir = tempDir();
  let server: ServerProcess;
  before(async () => {
    server = await spawnServer({ dataDir: dir.path, env: { KLEN_DEV: "0", KLEN_RETRY_SCHEDULE: "20ms" } });
  });
  after(async () => {
    await server.kill();
    dir.remove();
  });

  test("http:// and literal non-global IPs are refused at creation", async () => {
    expectError(
      await server.api.post("/v1/endpoints", { url: "http://example.com/hook" }),
      400,
      "invalid_url",
      "url",
    );
    for (const url of [
      "https://127.0.0.1/x",
      "https://127.1/x",
      "https://[::1]/x",
      "https://[::ffff:127.0.0.1]/x",
      "https://0x7f000001/x",
    ]) {
      const refused = await server.api.post("/v1/endpoints", { url });
      expectError(refused, 400, "blocked_address", "url");
      assert.match(refused.body.error.message, /loopback address.*KLEN_DEV=1/);
    }
  });

  test("a host name that resolves to loopback fails the attempt at connect time with blocked_address", async () => {
    const rx = await startReceiver();
    const { agentId } = await setupAccount(server.api);
    const ep = await server.api.post("/v1/endpoints", { url: `https://localhost:${rx.port}/hook` });
    assert.equal(ep.status, 201, "a host name is accepted at creation");
    const call = await server.api.post("/v1/calls", {
      agent_id: agentId,
      type: "inbound",
      phone_number: "+15551234567",
    });
    await server.api.post(`/v1/calls/${call.body.id}/start`, {});
    const d = await waitFor("delivery failed", async () => {
      const x = (await server.api.get(`/v1/deliveries?endpoint_id=${ep.body.id}`)).body.data[0];
      return x?.status === "failed" ? x : undefined;
    });
    assert.ok(d.attempts.length >= 1);
    assert.ok(
      d.attempts.every((a: { error: string }) => a.error === "blocked_address"),
      JSON.stringify(d.attempts),
    );
    assert.equal(rx.requests.length, 0, "nothing reached the loopback receiver");
    // The log says why, without the address the name resolved to.
    assert.equal(d.attempts[0].error_message, "localhost resolves to a loopback address");
    await rx.close();
  });
});

describe("rate limit (KLEN_RATE_LIMIT=1)", () => {
  const dir = tempDir();
  let server: ServerProcess;
  before(async () => {
    server = await spawnServer({ dataDir: dir.path, env: { KLEN_RATE_LIMIT: "1" } });
  });
  after(async () => {
    await server.kill();
    dir.remove();
  });

  test("over the limit a key gets 429 with Retry-After, and another key of the same account has its own budget", async () => {
    // A second key, made first: its bucket is untouched by what follows.
    const made = await server.api.post("/v1/api-keys", {});
    assert.equal(made.status, 201);
    const second = apiClient(server.url, made.body.key);
    let limited: Awaited<ReturnType<typeof server.api.get>> | undefined;
    for (let i = 0; i < 50 && !limited; i++) {
      const r = await server.api.get("/v1/account");
      if (r.status === 429) limited = r;
      else assert.equal(r.status, 200);
    }
    assert.ok(limited, "the first key was limited");
    expectError(limited, 429, "rate_limited");
    assert.ok(Number(limited.headers.get("retry-after")) >= 1);
    assert.equal(limited.body.error.details.retry_after, Number(limited.headers.get("retry-after")));
    assert.equal((await second.get("/v1/account")).status, 200, "the second key's first request passes");
  });
});

// PostgreSQL's text cannot hold NUL: there a string with one was a 500 on every route that stores text.
for (const backend of backends()) {
  describe(`events and deliveries by creation time (${backend.name})`, () => {
    let db: Awaited<ReturnType<typeof backend.fresh>>;
    let server: ServerProcess;
    let agentId: number;
    before(async () => {
      db = await backend.fresh();
      server = await spawnServer({ dataDir: db.dataDir, env: { KLEN_DATABASE_URL: db.databaseUrl } });
      ({ agentId } = await setupAccount(server.api));
    });
    after(async () => {
      await server.kill();
      await db.cleanup();
    });

    test("an integer list filter past PostgreSQL's INTEGER is a 400 naming it, the same on both databases", async () => {
      for (const [path, filter] of [
        ["/v1/calls", "agent_id"],
        ["/v1/events", "call_id"],
        ["/v1/deliveries", "call_id"],
      ] as const) {
        for (const n of ["2147483648", "9007199254740991", "99999999999999999999"]) {
          const r = await server.api.get(`${path}?${filter}=${n}`);
          expectError(r, 400, "invalid_request", filter);
        }
        const largest = await server.api.get(`${path}?${filter}=2147483647`);
        assert.equal(largest.status, 200, JSON.stringify(largest.body));
        assert.deepEqual(largest.body.data, []);
      }
    });

    test("before is exclusive, after inclusive, and pages stay inside", async () => {
      const rx = await startReceiver();
      try {
        const ep = (await server.api.post("/v1/endpoints", { url: rx.url })).body;
        for (let i = 0; i < 4; i++) {
          const call = await server.api.post("/v1/calls", {
            agent_id: agentId,
            type: "inbound",
            phone_number: `+1555077000${i}`,
          });
          await server.api.post(`/v1/calls/${call.body.id}/start`, {});
          // Apart by a few milliseconds, so that the instants below fall between events.
          await new Promise((r) => setTimeout(r, 5));
        }
        type Item = { id: string; created_at: string };
        const walk = async (path: string, query: string) => {
          const seen: string[] = [];
          let cursor: string | null = null;
          do {
            const r: { status: number; body: { data: Item[]; next_cursor: string | null } } =
              await server.api.get(`${path}?limit=2&${query}${cursor ? `&cursor=${cursor}` : ""}`);
            assert.equal(r.status, 200, JSON.stringify(r.body));
            seen.push(...r.body.data.map((x) => x.id));
            cursor = r.body.next_cursor;
          } while (cursor);
          return seen;
        };
        for (const [path, scope] of [
          ["/v1/events", "event_type=call.started"],
          ["/v1/deliveries", `endpoint_id=${ep.id}`],
        ] as const) {
          const all = (await server.api.get(`${path}?limit=100&${scope}`)).body.data as Item[];
          assert.ok(all.length >= 4, `${path}: ${all.length} items`);
          const pivot = all[2]!.created_at;
          const older = all.filter((x) => x.created_at < pivot).map((x) => x.id);
          const newer = all.filter((x) => x.created_at >= pivot).map((x) => x.id);
          assert.ok(older.length > 0 && newer.length > 0);
          assert.deepEqual(await walk(path, `${scope}&before=${pivot}`), older, `${path} before ${pivot}`);
          assert.deepEqual(await walk(path, `${scope}&after=${pivot}`), newer, `${path} after ${pivot}`);
          // Both: the instant itself up to the newest, given as an offset from UTC.
          const newest = new Date(Date.parse(all[0]!.created_at) + 1).toISOString().replace("Z", "+00:00");
          assert.deepEqual(
            await walk(path, `${scope}&after=${pivot}&before=${encodeURIComponent(newest)}`),
            newer,
          );
          assert.deepEqual(await walk(path, `${scope}&before=${pivot}&after=${pivot}`), []);
          // Empty: no bound.
          assert.deepEqual(
            await walk(path, `${scope}&before=&after=`),
            all.map((x) => x.id),
          );
        }
        expectError(
          await server.api.get("/v1/events?before=2026-13-01T00:00:00Z"),
          400,
          "invalid_request",
          "before",
        );
        const yesterday = await server.api.get("/v1/deliveries?after=yesterday");
        expectError(yesterday, 400, "invalid_request", "after");
        assert.match(
          yesterday.body.error.message,
          /^"after" is not an ISO-8601 timestamp/,
          "not the pattern",
        );
        expectError(
          await server.api.get("/v1/events?after=1969-12-31T23:59:59Z"),
          400,
          "invalid_request",
          "after",
        );
      } finally {
        await rx.close();
      }
    });
  });
}

for (const backend of backends()) {
  describe(`NUL in a JSON string (${backend.name})`, () => {
    let db: Awaited<ReturnType<typeof backend.fresh>>;
    let server: ServerProcess;
    before(async () => {
      db = await backend.fresh();
      server = await spawnServer({ dataDir: db.dataDir, env: { KLEN_DATABASE_URL: db.databaseUrl } });
    });
    after(async () => {
      await server.kill();
      await db.cleanup();
    });

    test("is a 400 naming the field, and nothing is stored", async () => {
      const { agentId } = await setupAccount(server.api);
      const call = await server.api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: "+15551234567",
      });
      assert.equal((await server.api.post(`/v1/calls/${call.body.id}/start`, {})).status, 200);
      const cases: Array<[string, unknown, string]> = [
        ["/v1/agents", { name: "a\u0000b" }, "name"],
        ["/v1/contacts", { name: "Ann", email: "ann\u0000@example.com" }, "email"],
        [
          "/v1/calls",
          { agent_id: agentId, type: "inbound", phone_number: "+15551234567", klen_call_id: "k\u0000" },
          "klen_call_id",
        ],
        [`/v1/calls/${call.body.id}/end`, { summary: "s\u0000" }, "summary"],
        ["/v1/endpoints", { url: "http://127.0.0.1:9/x", headers: { "x-a": "v\u0000" } }, "headers.x-a"],
      ];
      for (const [path, body, field] of cases) {
        expectError(await server.api.post(path, body), 400, "invalid_request", field);
      }
      expectError(
        await server.api.patch("/v1/account", { name: "acc\u0000" }),
        400,
        "invalid_request",
        "name",
      );
      assert.equal((await server.api.get("/v1/agents")).body.data.length, 1);
      assert.equal((await server.api.get("/v1/calls")).body.data.length, 1);
      assert.equal((await server.api.get(`/v1/calls/${call.body.id}`)).body.status, "in-progress");
    });

    test("bytes that are not UTF-8, or an escaped half of a surrogate pair, are a 400; nothing is stored", async () => {
      const before = (await server.api.get("/v1/agents")).body.data.length;
      // \xff\xfe is no UTF-8: it used to become U+FFFD U+FFFD and a 201.
      const bytes = Buffer.concat([
        Buffer.from('{"name":"'),
        Buffer.from([0xff, 0xfe]),
        Buffer.from(' abc"}'),
      ]);
      const res = await fetch(`${server.url}/v1/agents`, {
        method: "POST",
        headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
        body: bytes,
      });
      const body = (await res.json()) as {
        error: { code: string; message: string; details?: { field?: string } };
      };
      assert.equal(res.status, 400, JSON.stringify(body));
      assert.equal(body.error.code, "invalid_json");
      assert.equal(body.error.message, "the body is not valid UTF-8");
      assert.equal(body.error.details?.field, "body");
      for (const name of ['"\\ud800x"', '"x\\udc00"', '"\\udc00\\ud800"']) {
        const r = await server.api.raw("POST", "/v1/agents", `{"name":${name}}`);
        expectError(r, 400, "invalid_request", "name");
      }
      // A whole pair, escaped or not, is one character and welcome.
      const pair = await server.api.raw("POST", "/v1/agents", '{"name":"\\ud83d\\ude00 \u{1F600}"}');
      assert.equal(pair.status, 201, JSON.stringify(pair.body));
      assert.equal(pair.body.name, "\u{1F600} \u{1F600}");
      assert.equal((await server.api.get("/v1/agents")).body.data.length, before + 1);
    });

    test("in a path id it is not found, like any id that cannot exist", async () => {
      for (const [method, path] of [
        ["GET", "/v1/endpoints/ep_%00"],
        ["DELETE", "/v1/endpoints/ep_%00"],
        ["GET", "/v1/deliveries/dlv_%00"],
        ["POST", "/v1/deliveries/dlv_%00/retry"],
        ["GET", "/v1/events/evt_%00"],
      ] as const) {
        const r = await server.api.raw(method, path);
        expectError(r, 404, "not_found");
      }
    });
  });
}
