import assert from "node:assert/strict";
import { describe, type TestContext, test } from "node:test";
import { type ContentEvent, type ContentFetchError, fetchContent } from "@klen/webhooks";
import BetterSqlite3 from "better-sqlite3";
import { createAccount } from "../src/accounts/accounts.js";
import { purgeExpired } from "../src/retention/purge.js";
import { synthesizeWav } from "../src/simulator/wav.js";
import { apiClient } from "./helpers/api.js";
import { type Backend, backends } from "./helpers/backends.js";
import { onServer } from "./helpers/content.js";
import { inProcessApi } from "./helpers/in-process.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { uploadRecording } from "./helpers/upload.js";
import { waitFor } from "./helpers/wait.js";

const DAY = 86_400_000;
const KEY = "klen_test_key_media";

/** A server in this process (so a purge can be run with a later "now") on a fresh database. */
async function server(t: TestContext, backend: Backend, env: Record<string, string> = {}) {
  const db = await backend.fresh();
  const { running, base, api } = await inProcessApi({ ...db, apiKey: KEY, env });
  t.after(async () => {
    await running.stop(1000);
    await db.cleanup();
  });
  const agent = await api.post("/v1/agents", { name: "Support" });
  assert.equal(agent.status, 201);
  return { running, base, api, agentId: agent.body.id as number };
}

type Server = Awaited<ReturnType<typeof server>>;

async function finishedCall(s: Server, steps: Array<[string, Record<string, unknown>]>): Promise<number> {
  const c = await s.api.post("/v1/calls", {
    agent_id: s.agentId,
    type: "inbound",
    phone_number: "+15551234567",
  });
  assert.equal(c.status, 201);
  // Started and ended (with the given body, or none), then the other steps.
  const end: Array<[string, Record<string, unknown>]> = steps[0]?.[0] === "end" ? [] : [["end", {}]];
  for (const [step, body] of [["start", {}], ...end, ...steps] as Array<[string, Record<string, unknown>]>) {
    const r = await s.api.post(`/v1/calls/${c.body.id}/${step}`, body);
    assert.equal(r.status, 200, `${step}: ${JSON.stringify(r.body)}`);
  }
  return c.body.id;
}

const bytesAt = async (url: string) => {
  const r = await fetch(url);
  assert.equal(r.status, 200, url);
  return Buffer.from(await r.arrayBuffer());
};

/** The blob id a pre-signed URL names. */
const blobOf = (url: string) => new URL(url).pathname.split("/").pop();

for (const backend of backends()) {
  describe(`GET /v1/calls/{id}/media (${backend.name})`, () => {
    test("lists every stored content of a call with the event that carried it and a URL made now", async (t) => {
      const s = await server(t, backend);
      const brief = `Brief: ${"b".repeat(3000)}`;
      const transcript = `Agent: Hello!\n${"Customer: words. ".repeat(300)}`;
      const summary = `Summary: ${"s".repeat(4000)}`;
      const wav = synthesizeWav({ seconds: 1, sampleRate: 8000, seed: 5 });
      const id = await finishedCall(s, [
        ["end", { summary: brief }],
        ["transcript", { transcript }],
        ["summary", { summary }],
      ]);
      await uploadRecording(s.base, KEY, id, wav);

      const before = Date.now();
      const res = await s.api.get(`/v1/calls/${id}/media`);
      const after = Date.now();
      assert.equal(res.status, 200);
      const media = res.body.data as Array<Record<string, any>>;
      assert.equal(media.length, 4);
      // Oldest first.
      const times = media.map((m) => Date.parse(m.created_at));
      assert.deepEqual(
        times,
        [...times].sort((a, b) => a - b),
      );

      // Each event's URL names one listed blob; the listing says which event, and both URLs serve
      // the content the step was given.
      const events = (await s.api.get(`/v1/events?call_id=${id}`)).body.data as Array<Record<string, any>>;
      const expected: Array<[string, string, string, Buffer, string]> = [
        ["call.ended", "summary_url", "summary", Buffer.from(brief), "text/plain; charset=utf-8"],
        [
          "call.transcript",
          "transcript_url",
          "transcript",
          Buffer.from(transcript),
          "text/plain; charset=utf-8",
        ],
        ["call.summary", "summary_url", "summary", Buffer.from(summary), "text/plain; charset=utf-8"],
        ["call.recording", "recording_url", "recording", wav, "audio/wav"],
      ];
      for (const [type, field, kind, content, contentType] of expected) {
        const event = events.find((e) => e.event_type === type);
        assert.ok(event, type);
        const eventUrl = event.payload.call[field] as string;
        const item = media.find((m) => m.id === blobOf(eventUrl));
        assert.ok(item, `${type}'s ${field} is listed`);
        assert.equal(item.kind, kind);
        assert.equal(item.event_id, event.id, type);
        assert.equal(item.event_type, type);
        assert.equal(item.content_type, contentType);
        assert.equal(item.size, content.length);
        assert.equal(blobOf(item.url), item.id);
        assert.ok((await bytesAt(onServer(s.base, item.url))).equals(content), type);
        assert.ok((await bytesAt(onServer(s.base, eventUrl))).equals(content), type);
        // Valid for KLEN_URL_TTL (7 days) from this request, in whole seconds as signed.
        const expires = Number(new URL(item.url).searchParams.get("expires"));
        assert.equal(item.expires_at, new Date(expires * 1000).toISOString().replace(".000Z", "Z"));
        assert.ok(expires >= Math.floor((before + 7 * DAY) / 1000), `${expires} from ${before}`);
        assert.ok(expires <= Math.floor((after + 7 * DAY) / 1000), `${expires} from ${after}`);
      }

      // Steps of one call sent together can store their content in the same millisecond (on
      // PostgreSQL a summary's time is taken before it waits for the end's lock): each content is
      // still given the event whose body has its URL.
      const same = await s.running.ctx.store.db
        .updateTable("blobs")
        .set({ created_at: Date.parse(media[0]!.created_at) })
        .where("call_id", "=", id)
        .execute();
      assert.equal(Number(same[0]!.numUpdatedRows), 4);
      const again = (await s.api.get(`/v1/calls/${id}/media`)).body.data as Array<Record<string, any>>;
      assert.deepEqual(
        again.map((m) => [m.id, m.event_id, m.event_type]).sort(),
        media.map((m) => [m.id, m.event_id, m.event_type]).sort(),
      );
    });

    test("a call with nothing stored lists nothing; an unknown call or another account's is 404", async (t) => {
      const s = await server(t, backend);
      // Short texts go inline: nothing is stored behind a URL.
      const inline = await finishedCall(s, [
        ["end", { summary: "Short." }],
        ["transcript", { transcript: "Agent: Hi." }],
      ]);
      const none = await s.api.get(`/v1/calls/${inline}/media`);
      assert.equal(none.status, 200);
      assert.deepEqual(none.body, { data: [] });

      const other = await s.running.ctx.store.db
        .transaction()
        .execute((trx) => createAccount(trx, "Other", "klen_test_key_media_other"));
      const otherApi = apiClient(s.base, other.apiKey);
      const agent = await otherApi.post("/v1/agents", { name: "Theirs" });
      const theirs = await otherApi.post("/v1/calls", {
        agent_id: agent.body.id,
        type: "outbound",
        phone_number: "+15557654321",
      });
      await otherApi.post(`/v1/calls/${theirs.body.id}/start`, {});
      await otherApi.post(`/v1/calls/${theirs.body.id}/end`, {});
      await uploadRecording(
        s.base,
        other.apiKey,
        theirs.body.id,
        synthesizeWav({ seconds: 1, sampleRate: 8000, seed: 6 }),
      );
      assert.equal((await otherApi.get(`/v1/calls/${theirs.body.id}/media`)).body.data.length, 1);
      // Not this account's: 404 as for an unknown call, nothing said about what it holds.
      for (const callId of [theirs.body.id, 999_999]) {
        const r = await s.api.get(`/v1/calls/${callId}/media`);
        assert.equal(r.status, 404);
        assert.equal(r.body.error.code, "not_found");
        assert.equal(r.body.error.message, `call ${callId} not found`);
      }
      const bad = await s.api.get("/v1/calls/abc/media");
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error.details.field, "id");
      const anonymous = await fetch(`${s.base}/v1/calls/${inline}/media`);
      assert.equal(anonymous.status, 401);
    });

    test("content purged by retention is no longer listed", async (t) => {
      const s = await server(t, backend);
      const id = await finishedCall(s, [["transcript", { transcript: `Agent: ${"long ".repeat(1000)}` }]]);
      await uploadRecording(s.base, KEY, id, synthesizeWav({ seconds: 1, sampleRate: 8000, seed: 7 }));
      const listed = (await s.api.get(`/v1/calls/${id}/media`)).body.data;
      assert.deepEqual(
        listed.map((m: any) => m.kind),
        ["transcript", "recording"],
      );
      const counts = await purgeExpired(s.running.ctx, Date.now() + 31 * DAY);
      assert.equal(counts.blobs, 2);
      assert.deepEqual((await s.api.get(`/v1/calls/${id}/media`)).body, { data: [] });
      // The URL listed before the purge now finds nothing.
      assert.equal((await fetch(onServer(s.base, listed[1].url))).status, 404);
    });
  });
}

test("after an event's URL has expired, the media URL serves the same bytes, and the SDK finds it", async (t) => {
  const [sqlite] = backends();
  // URLs last 3 s (and are signed in whole seconds): long enough for this test's requests.
  const s = await server(t, sqlite!, { KLEN_URL_TTL: "3s", KLEN_RETENTION: "1d" });
  const wav = synthesizeWav({ seconds: 1, sampleRate: 8000, seed: 8 });
  const transcript = `Agent: ${"a long call. ".repeat(500)}`;
  const id = await finishedCall(s, [["transcript", { transcript }]]);
  await uploadRecording(s.base, KEY, id, wav);
  const events = (await s.api.get(`/v1/events?call_id=${id}`)).body.data as Array<Record<string, any>>;
  const recording = events.find((e) => e.event_type === "call.recording")!;
  const eventUrl = onServer(s.base, recording.payload.call.recording_url);
  await waitFor(
    "the event's recording_url to expire",
    async () => {
      const r = await fetch(eventUrl);
      if (r.status !== 403) return false;
      return (await r.json()).error.details.reason === "expired";
    },
    10_000,
    100,
  );
  const media = (await s.api.get(`/v1/calls/${id}/media`)).body.data as Array<Record<string, any>>;
  const item = media.find((m) => m.kind === "recording")!;
  assert.equal(item.event_id, recording.id);
  assert.ok((await bytesAt(onServer(s.base, item.url))).equals(wav));

  // The receiver SDK, given the API, gets the transcript through a URL made now; without it, the
  // expired URL's reason. (The URLs name KLEN_PUBLIC_URL, localhost:0 here: sent to this server.)
  const viaServer: typeof fetch = (url, init) => fetch(onServer(s.base, String(url)), init);
  const payload = events.find((e) => e.event_type === "call.transcript")!.payload as ContentEvent;
  assert.equal(await fetchContent(payload, { fetch: viaServer, api: { url: s.base, key: KEY } }), transcript);
  await assert.rejects(fetchContent(payload, { fetch: viaServer }), (err: ContentFetchError) => {
    assert.equal(err.reason, "expired");
    return true;
  });
});

test("processes that share a database but not KLEN_DATA_DIR are told so: at start, and when a blob's bytes are missing", async () => {
  const shared = tempDir();
  const own = tempDir();
  const later = tempDir();
  const databaseUrl = `sqlite:${shared.path}/klen.db`;
  const a = await spawnServer({ dataDir: shared.path, env: { KLEN_DATABASE_URL: databaseUrl } });
  let b: ServerProcess | undefined;
  let c: ServerProcess | undefined;
  try {
    const agent = await a.api.post("/v1/agents", { name: "Support" });
    const call = await a.api.post("/v1/calls", {
      agent_id: agent.body.id,
      type: "inbound",
      phone_number: "+15551234567",
    });
    await a.api.post(`/v1/calls/${call.body.id}/start`, {});
    await a.api.post(`/v1/calls/${call.body.id}/end`, {});
    const wav = synthesizeWav({ seconds: 1, sampleRate: 8000, seed: 10 });
    await uploadRecording(a.url, a.apiKey, call.body.id, wav);
    // A second process on the same database with a folder of its own: the URL it lists (signed
    // with the shared key) serves on the process that stored the bytes, and not on it.
    b = await spawnServer({ dataDir: own.path, env: { KLEN_DATABASE_URL: databaseUrl } });
    const [item] = (await b.api.get(`/v1/calls/${call.body.id}/media`)).body.data;
    assert.equal((await fetch(onServer(a.url, item.url))).status, 200);
    const missing = await fetch(onServer(b.url, item.url));
    assert.equal(missing.status, 404);
    assert.equal((await missing.json()).error.message, "this content does not exist or was purged");
    const server = b;
    await waitFor("the error naming KLEN_DATA_DIR", () =>
      server.output().includes("a stored blob's bytes are not in this process's KLEN_DATA_DIR"),
    );
    // Once the blob is older than a minute, a process started with yet another folder says so at start.
    const db = new BetterSqlite3(`${shared.path}/klen.db`);
    db.prepare("UPDATE blobs SET created_at = created_at - 120000").run();
    db.close();
    c = await spawnServer({ dataDir: later.path, env: { KLEN_DATABASE_URL: databaseUrl } });
    const third = c;
    await waitFor("the start-up warning", () =>
      third.output().includes("none of the latest stored blobs is in this process's KLEN_DATA_DIR"),
    );
    // The process that has the bytes does not warn when started again.
    await a.kill();
    const again = await spawnServer({ dataDir: shared.path, env: { KLEN_DATABASE_URL: databaseUrl } });
    try {
      // Its own answer to a media request comes after the start-up check has run.
      assert.equal((await again.api.get(`/v1/calls/${call.body.id}/media`)).status, 200);
      await new Promise((r) => setTimeout(r, 500));
      assert.doesNotMatch(again.output(), /none of the latest stored blobs/);
    } finally {
      await again.kill();
    }
  } finally {
    await a.kill();
    await b?.kill();
    await c?.kill();
    for (const d of [shared, own, later]) d.remove();
  }
});
