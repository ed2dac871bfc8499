import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Ajv } from "ajv";
import { synthesizeWav } from "../src/simulator/wav.js";
import { type Receiver, startReceiver } from "./helpers/receiver.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

/**
 * `/openapi.json` against the real server: every `/v1` operation is called over HTTP, and each
 * 2xx answer must be one the document declares for that operation and status, its JSON body valid
 * against the declared schema. The documented objects are closed (`additionalProperties: false`),
 * so a field a route adds without documenting it fails here.
 */

type Doc = {
  paths: Record<string, Record<string, Operation>>;
  components: { schemas: Record<string, unknown> };
};
type Operation = {
  parameters?: Array<{ name: string; in: string; required?: boolean; schema?: Record<string, unknown> }>;
  requestBody?: { required?: boolean; content: Record<string, unknown> };
  responses: Record<string, { content?: Record<string, unknown> }>;
};
type Answer = { status: number; type: string; body: any; text: string };

const pointer = (s: string) => s.replaceAll("~", "~0").replaceAll("/", "~1");
const essence = (type: string | null) => (type ?? "").split(";")[0]!.trim().toLowerCase();
/** Whether a media-type key of the document (`audio/*`, `text/plain`) covers `type`. */
const covers = (key: string, type: string) =>
  key.endsWith("/*") ? type.startsWith(key.slice(0, -1)) : key === type;

describe("the OpenAPI document describes every operation's real answers", () => {
  const dir = tempDir();
  let server: ServerProcess;
  let ok: Receiver;
  let failing: Receiver;
  let doc: Doc;
  let ajv: Ajv;
  /** `method path` → the statuses it was seen to answer with here. */
  const exercised = new Map<string, Set<number>>();
  /** Operations called here without any request body. */
  const bodiless = new Map<string, number>();

  before(async () => {
    // A fast schedule, so that the failing endpoint's deliveries fail in well under a second; a
    // recover of more than one delivery runs in the background.
    server = await spawnServer({
      dataDir: dir.path,
      env: { KLEN_RETRY_SCHEDULE: "50ms,50ms,50ms", KLEN_RECOVER_BATCH: "1" },
    });
    ok = await startReceiver();
    failing = await startReceiver({ respond: () => ({ status: 500, body: "down for maintenance" }) });
    doc = (await (await fetch(`${server.url}/openapi.json`)).json()) as Doc;
    ajv = new Ajv({ strict: false, allErrors: true });
    ajv.addFormat("date-time", (s: string) => !Number.isNaN(Date.parse(s)));
    ajv.addSchema({ ...doc, $id: "openapi.json" });
  });
  after(async () => {
    await server.kill();
    await ok.close();
    await failing.close();
    dir.remove();
  });

  /** Calls an operation of the document (`path` as the document spells it) and checks a 2xx answer. */
  async function op(
    method: string,
    path: string,
    o: {
      id?: string | number;
      query?: string;
      json?: unknown;
      raw?: { type: string; data: Buffer };
      headers?: Record<string, string>;
      auth?: boolean;
    } = {},
  ): Promise<Answer> {
    const url = `${server.url}${path.replace("{id}", String(o.id))}${o.query ?? ""}`;
    const headers: Record<string, string> = { ...(o.headers ?? {}) };
    if (o.auth !== false) headers.authorization = `Bearer ${server.apiKey}`;
    let body: string | Uint8Array<ArrayBuffer> | undefined;
    if (o.json !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(o.json);
    } else if (o.raw) {
      headers["content-type"] = o.raw.type;
      body = new Uint8Array(o.raw.data);
    }
    const key = `${method} ${path}`;
    const res = await fetch(url, { method: method.toUpperCase(), headers, body });
    const type = essence(res.headers.get("content-type"));
    const text = type.startsWith("audio/") ? "" : await res.text();
    if (type.startsWith("audio/")) await res.arrayBuffer();
    const answer: Answer = {
      status: res.status,
      type,
      text,
      body: type === "application/json" ? JSON.parse(text) : text,
    };
    if (body === undefined && method !== "get" && method !== "delete") bodiless.set(key, res.status);
    if (res.status >= 200 && res.status < 300) check(method, path, answer);
    return answer;
  }

  /** A 2xx answer must be declared for its operation, with its media type and (JSON) schema. */
  function check(method: string, path: string, a: Answer): void {
    const key = `${method} ${path}`;
    const operation = doc.paths[path]?.[method];
    assert.ok(operation, `${key} is in the document`);
    const declared = operation.responses[String(a.status)];
    assert.ok(
      declared,
      `${key} answered ${a.status}, which the document does not declare: ${a.text.slice(0, 300)}`,
    );
    const media = Object.keys(declared.content ?? {}).find((k) => covers(k, a.type));
    assert.ok(
      media,
      `${key} ${a.status} answered ${a.type}; the document declares ${Object.keys(declared.content ?? {})}`,
    );
    if (media === "application/json") {
      const where = `openapi.json#/paths/${pointer(path)}/${method}/responses/${a.status}/content/${pointer(media)}/schema`;
      const validate = ajv.getSchema(where);
      assert.ok(validate, `${key}: no schema at ${where}`);
      assert.ok(
        validate(a.body),
        `${key} ${a.status}: the body does not match the documented schema: ${JSON.stringify(validate.errors?.slice(0, 5))}\n${a.text.slice(0, 2000)}`,
      );
    }
    exercised.set(key, (exercised.get(key) ?? new Set()).add(a.status));
  }

  const expect = (a: Answer, status: number) => assert.equal(a.status, status, a.text.slice(0, 500));

  test("every operation has a 2xx answer with a schema or a media type", () => {
    for (const [path, ops] of Object.entries(doc.paths)) {
      if (!path.startsWith("/v1/")) continue;
      for (const [method, operation] of Object.entries(ops)) {
        const key = `${method} ${path}`;
        const ok2xx = Object.entries(operation.responses).filter(([s]) => s.startsWith("2"));
        assert.ok(ok2xx.length > 0, `${key} declares a 2xx answer`);
        for (const [status, r] of ok2xx) {
          const content = r.content ?? {};
          if (key === "get /v1/events/stream") assert.deepEqual(Object.keys(content), ["text/event-stream"]);
          else if (key === "get /v1/blobs/{id}")
            assert.deepEqual(Object.keys(content), ["text/plain", "audio/*"]);
          else {
            const schema = (content["application/json"] as { schema?: { $ref?: string } } | undefined)
              ?.schema;
            assert.ok(schema?.$ref, `${key} ${status} has a JSON schema`);
            assert.ok(doc.components.schemas[schema.$ref.split("/").pop()!], `${key}: ${schema.$ref} exists`);
          }
        }
        // A prefixed id of the wrong form is a 404, not a 400: no pattern promises otherwise.
        for (const p of operation.parameters ?? [])
          if (p.in === "path")
            assert.equal(p.schema?.pattern, undefined, `${key}: path ${p.name} has no pattern`);
      }
    }
    // Every documented object is closed, so an undocumented field is an error.
    const open: string[] = [];
    const walk = (s: unknown, at: string): void => {
      if (typeof s !== "object" || s === null) return;
      const o = s as Record<string, unknown>;
      if (o.type === "object" && o.properties && o.additionalProperties !== false) open.push(at);
      for (const [k, v] of Object.entries(o)) walk(v, `${at}/${k}`);
    };
    for (const [name, s] of Object.entries(doc.components.schemas)) if (name !== "error") walk(s, name);
    assert.deepEqual(open, []);
  });

  test("the blob route's and the stream's own inputs are documented", () => {
    const names = (path: string) =>
      (doc.paths[path]!.get!.parameters ?? []).map((p) => `${p.in}:${p.name}${p.required ? "!" : ""}`);
    assert.deepEqual(names("/v1/blobs/{id}"), ["path:id!", "query:expires!", "query:signature!"]);
    assert.ok(names("/v1/events/stream").includes("header:Last-Event-ID"));
    const stream = Object.keys(doc.paths["/v1/events/stream"]!.get!.responses);
    assert.ok(stream.includes("429") && stream.includes("503"), String(stream));
  });

  test("every operation, called for real, answers as documented", async () => {
    // Account and API keys.
    expect(await op("get", "/v1/account"), 200);
    expect(await op("patch", "/v1/account"), 200);
    expect(await op("patch", "/v1/account", { json: { auto_summary: false } }), 200);
    const idem = { "idempotency-key": "openapi-test-key" };
    const key = await op("post", "/v1/api-keys", { headers: idem });
    expect(key, 201);
    const replay = await op("post", "/v1/api-keys", { headers: idem });
    expect(replay, 201);
    assert.equal(replay.body.key, null);
    expect(await op("get", "/v1/api-keys"), 200);
    expect(await op("delete", "/v1/api-keys/{id}", { id: key.body.id }), 200);

    // Agents and contacts.
    const agent = await op("post", "/v1/agents", { json: { name: "Support", assistant_id: "asst_1" } });
    expect(agent, 201);
    const spare = await op("post", "/v1/agents", { json: { name: "Spare" } });
    expect(await op("get", "/v1/agents"), 200);
    expect(await op("get", "/v1/agents/{id}", { id: agent.body.id }), 200);
    expect(await op("patch", "/v1/agents/{id}", { id: agent.body.id }), 200);
    expect(await op("delete", "/v1/agents/{id}", { id: spare.body.id }), 200);
    const contact = await op("post", "/v1/contacts", {
      json: { name: "Jo", email: "jo@example.com", phone_number: "+15551230000" },
    });
    expect(contact, 201);
    const other = await op("post", "/v1/contacts", { json: { name: "Nobody" } });
    expect(await op("get", "/v1/contacts"), 200);
    expect(await op("get", "/v1/contacts/{id}", { id: contact.body.id }), 200);
    expect(await op("patch", "/v1/contacts/{id}", { id: contact.body.id }), 200);
    expect(await op("delete", "/v1/contacts/{id}", { id: other.body.id }), 200);

    // Endpoints: one that takes everything, one that always fails (attempts with errors).
    const good = await op("post", "/v1/endpoints", { json: { url: `${ok.url}/hook`, description: "ok" } });
    expect(good, 201);
    const bad = await op("post", "/v1/endpoints", {
      json: {
        url: `${failing.url}/hook`,
        event_types: ["call.started", "call.ended"],
        agent_ids: [agent.body.id],
        headers: { "x-team": "voice" },
        rate_limit: 100,
      },
    });
    expect(bad, 201);
    const spareEndpoint = await op("post", "/v1/endpoints", {
      json: { url: `${ok.url}/spare`, disabled: true },
    });
    expect(await op("get", "/v1/endpoints"), 200);
    expect(await op("get", "/v1/endpoints/{id}", { id: good.body.id }), 200);
    expect(await op("patch", "/v1/endpoints/{id}", { id: good.body.id }), 200);
    expect(await op("get", "/v1/endpoints/{id}/secret", { id: good.body.id }), 200);
    const rotated = await op("post", "/v1/endpoints/{id}/rotate-secret", { id: good.body.id });
    expect(rotated, 200);
    assert.ok(rotated.body.previous_secret_expires_at, "the old secret still signs for a while");
    expect(await op("get", "/v1/endpoints/{id}/secret", { id: good.body.id }), 200);
    expect(await op("delete", "/v1/endpoints/{id}", { id: spareEndpoint.body.id }), 200);

    // Calls: a whole lifecycle with a recording, and a failed one.
    const call = await op("post", "/v1/calls", {
      json: { agent_id: agent.body.id, type: "inbound", phone_number: "+15551230000", klen_call_id: "c_1" },
    });
    expect(call, 201);
    assert.equal(call.body.contact_id, contact.body.id);
    const id = call.body.id;
    expect(await op("post", "/v1/calls/{id}/start", { id }), 200);
    expect(await op("post", "/v1/calls/{id}/end", { id, json: { summary: "Billing question." } }), 200);
    expect(await op("post", "/v1/calls/{id}/transcript", { id, json: { transcript: "Agent: Hello." } }), 200);
    expect(
      await op("post", "/v1/calls/{id}/summary", { id, json: { summary: "They asked about billing." } }),
      200,
    );
    const wav = synthesizeWav({ seconds: 1, sampleRate: 8000, seed: 1 });
    const recorded = await op("post", "/v1/calls/{id}/recording", {
      id,
      raw: { type: "audio/wav", data: wav },
    });
    expect(recorded, 200);
    const lost = await op("post", "/v1/calls", {
      json: { agent_id: agent.body.id, type: "outbound", phone_number: "+15551230001" },
    });
    expect(
      await op("post", "/v1/calls/{id}/fail", { id: lost.body.id, json: { failure_reason: "no-answer" } }),
      200,
    );
    // `start` and `end` take no body at all.
    const quiet = await op("post", "/v1/calls", {
      json: { agent_id: agent.body.id, type: "outbound", phone_number: "+15551230002" },
    });
    expect(await op("post", "/v1/calls/{id}/start", { id: quiet.body.id }), 200);
    expect(await op("post", "/v1/calls/{id}/end", { id: quiet.body.id }), 200);
    expect(await op("get", "/v1/calls"), 200);
    expect(await op("get", "/v1/calls/{id}", { id }), 200);
    const media = await op("get", "/v1/calls/{id}/media", { id });
    expect(media, 200);
    assert.equal(media.body.data.length, 1, "the recording");
    const testCall = await op("post", "/v1/test-calls");
    expect(testCall, 202);

    // Events, each type's payload included, and one by id.
    // Waited for unchecked (a failed check must not be retried until the deadline), then checked.
    await waitFor(
      "the test call's six events",
      async () => {
        const data = (await server.api.get("/v1/events?limit=100")).body.data as Array<{
          call_id: number;
          event_type: string;
        }>;
        const ran = data.some((e) => e.call_id === testCall.body.call_id && e.event_type === "call.summary");
        return ran && new Set(data.map((e) => e.event_type)).size === 6;
      },
      30_000,
      100,
    );
    const page = await op("get", "/v1/events", { query: "?limit=100" });
    expect(page, 200);
    const events = page.body.data;
    expect(await op("get", "/v1/events/{id}", { id: events[0].id }), 200);

    // The recording's pre-signed URL: whole, and a range.
    const recording = events.find((e: any) => e.call_id === id && e.event_type === "call.recording");
    const blob = new URL(recording.payload.call.recording_url);
    const blobId = blob.pathname.split("/").pop();
    expect(await op("get", "/v1/blobs/{id}", { id: blobId, query: blob.search, auth: false }), 200);
    const part = await op("get", "/v1/blobs/{id}", {
      id: blobId,
      query: blob.search,
      auth: false,
      headers: { range: "bytes=0-3" },
    });
    expect(part, 206);

    // The stream, resuming after an event; its first frames are enough.
    const ctl = new AbortController();
    const res = await fetch(`${server.url}/v1/events/stream`, {
      headers: { authorization: `Bearer ${server.apiKey}`, "last-event-id": events.at(-1).id },
      signal: ctl.signal,
    });
    ctl.abort();
    check("get", "/v1/events/stream", {
      status: res.status,
      type: essence(res.headers.get("content-type")),
      body: "",
      text: "",
    });

    // Deliveries: succeeded ones, and failed ones whose attempts carry the receiver's answer.
    const settled = (endpoint: string, status: string) =>
      waitFor(
        `a ${status} delivery to ${endpoint}`,
        async () =>
          (await server.api.get(`/v1/deliveries?endpoint_id=${endpoint}&status=${status}`)).body.data[0],
        30_000,
        100,
      );
    await settled(bad.body.id, "failed");
    const done = await settled(good.body.id, "succeeded");
    const failedPage = await op("get", "/v1/deliveries", {
      query: `?endpoint_id=${bad.body.id}&status=failed`,
    });
    expect(failedPage, 200);
    const failed = failedPage.body.data[0];
    assert.equal(failed.attempts[0].status_code, 500);
    expect(await op("get", "/v1/deliveries", { query: "?limit=100" }), 200);
    expect(await op("get", "/v1/deliveries/{id}", { id: failed.id }), 200);
    expect(await op("post", "/v1/deliveries/{id}/retry", { id: done.id }), 202);
    const since = new Date(Date.now() - 3_600_000).toISOString();
    await waitFor(
      "two failed deliveries to recover",
      async () =>
        (await server.api.get(`/v1/deliveries?endpoint_id=${bad.body.id}&status=failed`)).body.data.length >=
        2,
      30_000,
      100,
    );
    // More than KLEN_RECOVER_BATCH (1 here): a background job, which the recover-jobs routes show.
    const recovery = await op("post", "/v1/endpoints/{id}/recover", { id: bad.body.id, json: { since } });
    expect(recovery, 202);
    assert.ok(recovery.body.job_id, `a recover job: ${JSON.stringify(recovery.body)}`);
    expect(await op("get", "/v1/recover-jobs", { query: `?endpoint_id=${bad.body.id}` }), 200);
    expect(await op("get", "/v1/recover-jobs/{id}", { id: recovery.body.job_id }), 200);
    // An endpoint made now never had the events before it: replaying them is a background job too.
    const late = await server.api.post("/v1/endpoints", { url: "http://127.0.0.1:9/late" });
    assert.equal(late.status, 201);
    const replayed = await op("post", "/v1/endpoints/{id}/replay", { id: late.body.id, json: { since } });
    expect(replayed, 202);
    assert.equal(replayed.body.queued, null, `a replay job: ${JSON.stringify(replayed.body)}`);
    const replayJob = await op("get", "/v1/recover-jobs/{id}", { id: replayed.body.job_id });
    expect(replayJob, 200);
    assert.equal(replayJob.body.kind, "replay");
    expect(await op("get", "/v1/stats/deliveries", { query: "?bucket=10m" }), 200);

    // Every operation of the document was called and answered with its documented success.
    const missing: string[] = [];
    for (const [path, ops] of Object.entries(doc.paths))
      for (const method of Object.keys(ops))
        if (path.startsWith("/v1/") && !exercised.has(`${method} ${path}`)) missing.push(`${method} ${path}`);
    assert.deepEqual(missing, []);
  });

  test("a request body is documented as required exactly where a bodiless request is refused", async () => {
    const ids = {
      agent: (await op("post", "/v1/agents", { json: { name: "Body" } })).body.id,
      contact: (await op("post", "/v1/contacts", { json: { name: "Body" } })).body.id,
      call: (await op("get", "/v1/calls")).body.data[0].id,
      endpoint: (await op("get", "/v1/endpoints")).body.data[0].id,
    };
    const idFor = (path: string) =>
      path.startsWith("/v1/agents")
        ? ids.agent
        : path.startsWith("/v1/contacts")
          ? ids.contact
          : path.startsWith("/v1/calls")
            ? ids.call
            : ids.endpoint;
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const [method, operation] of Object.entries(ops)) {
        if (!operation.requestBody) continue;
        const key = `${method} ${path}`;
        // Answers already seen without a body (above); the others are tried here, where only the
        // required ones are left: they are refused by validation, whatever state the call is in.
        let status = bodiless.get(key);
        if (status === undefined) status = (await op(method, path, { id: idFor(path) })).status;
        const required = operation.requestBody.required === true;
        if (required)
          assert.ok([400, 415].includes(status), `${key} requires a body, but bodiless answered ${status}`);
        else
          assert.ok(
            status >= 200 && status < 300,
            `${key} documents an optional body, but bodiless answered ${status}`,
          );
      }
    }
  });

  test("a path id of the wrong form is a 404, as documented", async () => {
    const res = await op("get", "/v1/events/{id}", { id: "evt_123" });
    expect(res, 404);
    assert.ok(doc.paths["/v1/events/{id}"]!.get!.responses["404"]);
  });
});
