import assert from "node:assert/strict";
import { connect } from "node:net";
import { after, before, describe, test } from "node:test";
import { setupAccount } from "./helpers/api.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";

/**
 * Adversarial review: odd request targets, malformed URLs, impossible timestamps and a sweep of
 * garbage over every route. Nothing may answer 5xx, bypass authentication or leave the API's error
 * shape, and the process must stay up.
 */

/** Sends one raw HTTP/1.1 request (fetch normalises targets, so it cannot send these). */
function rawRequest(
  port: number,
  target: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const s = connect(port, "127.0.0.1", () => {
      const lines = Object.entries({ host: "127.0.0.1", connection: "close", ...headers }).map(
        ([k, v]) => `${k}: ${v}\r\n`,
      );
      s.write(`GET ${target} HTTP/1.1\r\n${lines.join("")}\r\n`);
    });
    let data = "";
    s.setEncoding("latin1");
    s.on("data", (c: string) => {
      data += c;
    });
    s.on("error", reject);
    s.on("end", () => {
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(data)?.[1] ?? 0);
      resolve({ status, body: data.slice(data.indexOf("\r\n\r\n") + 4) });
    });
  });
}

const isApiError = (text: string) => {
  try {
    const j = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } };
    return typeof j.error?.code === "string" && typeof j.error.message === "string";
  } catch {
    return false;
  }
};

describe("review: request targets, URLs and garbage", () => {
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

  test("an absolute-form request target is authenticated like its path", async () => {
    // find-my-way routes `GET http://host/v1/account` to /v1/account; the auth hook must follow.
    for (const path of ["/v1/account", "/v1/calls", "/v1/endpoints"]) {
      const anon = await rawRequest(server.port, `http://127.0.0.1:${server.port}${path}`);
      assert.equal(anon.status, 401, `${path}: ${anon.body}`);
      assert.ok(isApiError(anon.body));
      const authed = await rawRequest(server.port, `http://127.0.0.1:${server.port}${path}`, {
        authorization: `Bearer ${server.apiKey}`,
      });
      assert.equal(authed.status, 200, `${path}: ${authed.body}`);
    }
  });

  test("odd encodings of /v1 paths never reach a route without a key", async () => {
    const targets = [
      "/v1//account",
      "/V1/account",
      "/v1/blobs/../account",
      "/v1/blobs/%2e%2e/account",
      "/v1/blobs/x/..%2f..%2faccount",
      "/v1/blobs/%2F..%2Faccount",
      "//v1/account",
      "/v1/account;x",
      "/v1/account%3F",
      "/./v1/account",
      "http://127.0.0.1/v1/blobs/../account",
    ];
    for (const t of targets) {
      const r = await rawRequest(server.port, t);
      assert.ok([401, 403, 404].includes(r.status), `${t}: ${r.status} ${r.body}`);
      assert.ok(isApiError(r.body), `${t}: ${r.body}`);
      assert.doesNotMatch(r.body, /"name"\s*:/, `${t} leaked an account`);
    }
  });

  test("malformed percent-encoding and over-long ids answer in the API's error shape", async () => {
    const auth = { authorization: `Bearer ${server.apiKey}` };
    const bad = await fetch(`${server.url}/v1/endpoints/%ff`, { headers: auth });
    assert.equal(bad.status, 400);
    assert.equal(((await bad.json()) as any).error.code, "invalid_url");
    const long = await fetch(`${server.url}/v1/events/${"x".repeat(3000)}`, { headers: auth });
    assert.equal(long.status, 414);
    const body = (await long.json()) as any;
    assert.equal(body.error.code, "uri_too_long");
    assert.ok(JSON.stringify(body).length < 300, "the path is not echoed back");
  });

  test("a request Node's parser refuses still gets the API's error shape", async () => {
    const badByte = await rawRequest(server.port, "/v1/account", { "idempotency-key": "a\u0001b" });
    assert.equal(badByte.status, 400, badByte.body);
    assert.ok(isApiError(badByte.body), badByte.body);
    const space = await rawRequest(server.port, "/v1/account", { "bad header name": "x" });
    assert.equal(space.status, 400, space.body);
    assert.ok(isApiError(space.body), space.body);
    assert.equal((await fetch(`${server.url}/healthz`)).status, 200);
  });

  test("a bodiless POST means an empty object, with or without a JSON content-type", async () => {
    for (const headers of [{}, { "content-type": "application/json" }] as Array<Record<string, string>>) {
      const c = await server.api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: "+15551234567",
      });
      const post = (path: string) =>
        fetch(`${server.url}${path}`, {
          method: "POST",
          headers: { authorization: `Bearer ${server.apiKey}`, ...headers },
        });
      const start = await post(`/v1/calls/${c.body.id}/start`);
      assert.equal(start.status, 200, await start.clone().text());
      assert.equal(((await start.json()) as any).status, "in-progress");
      // A step with a required field names it, rather than complaining about the body.
      const transcript = await post(`/v1/calls/${c.body.id}/transcript`);
      assert.equal(transcript.status, 400);
      assert.equal(((await transcript.json()) as any).error.details.field, "transcript");
      const end = await post(`/v1/calls/${c.body.id}/end`);
      assert.equal(end.status, 200, await end.clone().text());
      const test = await post("/v1/test-calls");
      assert.equal(test.status, 202, await test.clone().text());
    }
    // A JSON body that is not an object is still refused, and so is a poisoned one.
    const nul = await server.api.raw("POST", "/v1/agents", "null");
    assert.equal(nul.status, 400);
    const proto = await server.api.raw("POST", "/v1/agents", '{"name":"x","__proto__":{"admin":true}}');
    assert.equal(proto.status, 400);
  });

  test("impossible or out-of-range timestamps are a 400 naming the field, never a 500", async () => {
    const cases: Array<[string, Record<string, string>]> = [
      ["start", { started_at: "2020-02-30T00:00:00Z" }],
      ["start", { started_at: "2020-01-01T24:00:00Z" }],
      ["start", { started_at: "2020-13-01T00:00:00Z" }],
      ["start", { started_at: "2020-01-01T00:00:00+24:00" }],
      ["start", { started_at: "0000-01-01T00:00:00Z" }],
      ["start", { started_at: "9999-12-31T23:59:59-23:59" }],
    ];
    for (const [step, body] of cases) {
      const c = await server.api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: "+15551234567",
      });
      const r = await server.api.post(`/v1/calls/${c.body.id}/${step}`, body);
      assert.equal(r.status, 400, `${JSON.stringify(body)}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.error.details.field, Object.keys(body)[0]);
      assert.equal((await server.api.get(`/v1/events?call_id=${c.body.id}`)).body.data.length, 0);
    }
    // An end far in the future (UTC year 10000 once the offset is applied) used to fail the
    // payload's schema check inside the transaction: a 500 for bad input.
    const c = await server.api.post("/v1/calls", {
      agent_id: agentId,
      type: "inbound",
      phone_number: "+15551234567",
    });
    await server.api.post(`/v1/calls/${c.body.id}/start`, { started_at: "2025-04-23T14:30:45Z" });
    const end = await server.api.post(`/v1/calls/${c.body.id}/end`, {
      ended_at: "9999-12-31T23:59:59-23:59",
    });
    assert.equal(end.status, 400, JSON.stringify(end.body));
    assert.equal(end.body.error.details.field, "ended_at");
    // The last instant of year 9999 is a valid time, but far ahead of the server's clock: refused too.
    const far = await server.api.post(`/v1/calls/${c.body.id}/end`, { ended_at: "9999-12-31T23:59:59Z" });
    assert.equal(far.status, 400, JSON.stringify(far.body));
    assert.equal(far.body.error.details.field, "ended_at");
    const ok = await server.api.post(`/v1/calls/${c.body.id}/end`, { ended_at: new Date().toISOString() });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
  });

  test("garbage over every route: no 5xx, always the error shape", async () => {
    const call = await server.api.post("/v1/calls", {
      agent_id: agentId,
      type: "inbound",
      phone_number: "+15551234567",
    });
    const ep = await server.api.post("/v1/endpoints", { url: "http://127.0.0.1:9/hook" });
    const cid = String(call.body.id);
    const routes: Array<[string, string]> = [
      ["PATCH", "/v1/account"],
      ["POST", "/v1/agents"],
      ["PATCH", `/v1/agents/${agentId}`],
      ["POST", "/v1/contacts"],
      ["PATCH", "/v1/contacts/1"],
      ["POST", "/v1/calls"],
      ...["start", "end", "fail", "transcript", "summary", "recording"].map(
        (a) => ["POST", `/v1/calls/${cid}/${a}`] as [string, string],
      ),
      ["POST", "/v1/test-calls"],
      ["POST", "/v1/endpoints"],
      ["PATCH", `/v1/endpoints/${ep.body.id}`],
      ["POST", `/v1/endpoints/${ep.body.id}/rotate-secret`],
      ["POST", `/v1/endpoints/${ep.body.id}/recover`],
      ["POST", "/v1/deliveries/dlv_00000000000000000000000000/retry"],
    ];
    const bodies = [
      "",
      "null",
      "[]",
      '"s"',
      "1e309",
      '{"a":{"b":[[[[[]]]]]}}',
      '{"agent_id":1e309,"type":"inbound","phone_number":"+15551234567"}',
      '{"agent_id":9223372036854775808,"type":"inbound","phone_number":"+15551234567"}',
      '{"name":"\\ud800"}',
      '{"__proto__":{"admin":true}}',
      '{"url":"http://127.0.0.1/\\r\\nx","headers":{"x-a":"b\\r\\nInjected: 1"}}',
      '{"since":"2020-13-45T99:99Z"}',
      '{"grace_seconds":1e20}',
    ];
    const types = ["application/json", "text/plain", "application/x-www-form-urlencoded", "audio/wav"];
    const failures: string[] = [];
    for (const [method, path] of routes) {
      for (const body of bodies) {
        for (const type of types) {
          const r = await fetch(`${server.url}${path}`, {
            method,
            headers: {
              authorization: `Bearer ${server.apiKey}`,
              "content-type": type,
              "idempotency-key": `${method}${path}${body}${type}`.slice(0, 200),
            },
            body: Buffer.from(body, "latin1"),
          });
          const text = await r.text();
          if (r.status >= 500 || (r.status >= 400 && !isApiError(text)))
            failures.push(`${method} ${path} ${type} ${body} → ${r.status} ${text.slice(0, 120)}`);
        }
      }
    }
    const gets = [
      "/v1/calls?limit=-1",
      "/v1/calls?limit=1e309",
      "/v1/calls?limit=1&limit=2",
      "/v1/calls?agent_id=9223372036854775808",
      "/v1/calls/9223372036854775808",
      "/v1/calls/1e309",
      "/v1/calls/-1",
      "/v1/events?cursor=%ff%fe",
      `/v1/events?cursor=${"A".repeat(199)}`,
      "/v1/events?call_id=1e309",
      "/v1/deliveries?status=x",
      "/v1/deliveries?endpoint_id=%00",
      "/v1/blobs/x?expires=1e10&signature=x",
      `/v1/blobs/x?expires=99999999999&signature=${"A".repeat(43)}`,
      "/v1/blobs/x?expires=1&expires=2&signature=a&signature=b",
    ];
    for (const path of gets) {
      const r = await fetch(`${server.url}${path}`, {
        headers: { authorization: `Bearer ${server.apiKey}` },
      });
      const text = await r.text();
      if (r.status >= 500 || (r.status >= 400 && !isApiError(text)))
        failures.push(`GET ${path} → ${r.status} ${text.slice(0, 120)}`);
    }
    assert.deepEqual(failures, []);
    const health = await fetch(`${server.url}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(server.proc.exitCode, null);
    assert.doesNotMatch(server.output(), /unhandled error/);
  });
});
