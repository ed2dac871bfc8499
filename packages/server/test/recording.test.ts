import assert from "node:assert/strict";
import { chmodSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { loadConfig } from "../src/config.js";
import { createLogger } from "../src/log.js";
import { startServer } from "../src/server.js";
import { synthesizeWav } from "../src/simulator/wav.js";
import { apiClient, runCall, setupAccount } from "./helpers/api.js";
import { onServer, parseWav } from "./helpers/content.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { streamUpload } from "./helpers/upload.js";

describe("POST /v1/calls/{id}/recording", () => {
  const dir = tempDir();
  let srv: ServerProcess;
  let agentId: number;
  const wav = synthesizeWav({ seconds: 2, sampleRate: 16000, seed: 3 });

  before(async () => {
    srv = await spawnServer({ dataDir: dir.path, env: { KLEN_MAX_RECORDING: "1MiB" } });
    agentId = (await srv.api.post("/v1/agents", { name: "Support" })).body.id;
  });
  after(async () => {
    await srv.kill();
    dir.remove();
  });

  async function call(finished = true): Promise<number> {
    const c = await srv.api.post("/v1/calls", {
      agent_id: agentId,
      type: "outbound",
      phone_number: "+15551234567",
    });
    if (finished) {
      await srv.api.post(`/v1/calls/${c.body.id}/start`, {});
      await srv.api.post(`/v1/calls/${c.body.id}/end`, {});
    }
    return c.body.id;
  }
  const upload = (
    id: number,
    body: Buffer | string,
    type = "audio/wav",
    headers: Record<string, string> = {},
  ) =>
    fetch(`${srv.url}/v1/calls/${id}/recording`, {
      method: "POST",
      headers: { authorization: `Bearer ${srv.apiKey}`, "content-type": type, ...headers },
      body: typeof body === "string" ? body : new Uint8Array(body),
    });
  /** Blob files on disk (recordings and text), and unfinished temp files. */
  const files = () => ({
    blobs: readdirSync(join(dir.path, "blobs"))
      .filter((f) => f.startsWith("blb_"))
      .sort(),
    temp: readdirSync(join(dir.path, "blobs", "tmp")),
  });

  test("an upload emits call.recording whose URL serves the same audio, with ranges", async () => {
    const id = await call();
    const res = await upload(id, wav);
    assert.equal(res.status, 200);
    const updated = await res.json();
    assert.equal(updated.has_recording, true);
    const events = await srv.api.get(`/v1/events?call_id=${id}&event_type=call.recording`);
    assert.equal(events.body.data.length, 1);
    const url = onServer(srv.url, events.body.data[0].payload.call.recording_url);
    const full = await fetch(url);
    assert.equal(full.status, 200);
    assert.equal(full.headers.get("content-type"), "audio/wav");
    assert.equal(full.headers.get("accept-ranges"), "bytes");
    const bytes = Buffer.from(await full.arrayBuffer());
    assert.ok(bytes.equals(wav));
    assert.equal(parseWav(bytes).sampleRate, 16000);
    const part = await fetch(url, { headers: { range: "bytes=44-1043" } });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get("content-range"), `bytes 44-1043/${wav.length}`);
    assert.ok(Buffer.from(await part.arrayBuffer()).equals(wav.subarray(44, 1044)));
    const bad = await fetch(url, { headers: { range: `bytes=${wav.length}-` } });
    assert.equal(bad.status, 416);
    assert.equal(bad.headers.get("content-range"), `bytes */${wav.length}`);
    // A second recording for the same call is an invalid transition.
    const again = await upload(id, wav);
    assert.equal(again.status, 409);
    assert.equal((await again.json()).error.code, "invalid_transition");
  });

  test("content types: audio kinds accepted with their type, anything else 415", async () => {
    const id = await call();
    const mp3 = Buffer.from("ID3\u0003\u0000fake-mpeg-frames");
    const ok = await upload(id, mp3, "audio/mpeg");
    assert.equal(ok.status, 200);
    const ev = await srv.api.get(`/v1/events?call_id=${id}&event_type=call.recording`);
    const served = await fetch(onServer(srv.url, ev.body.data[0].payload.call.recording_url));
    assert.equal(served.headers.get("content-type"), "audio/mpeg");
    const other = await call();
    for (const type of [
      "text/plain",
      "application/json",
      "application/octet-stream",
      "video/mp4",
      "audio/midi",
    ]) {
      const r = await upload(other, type === "application/json" ? "{}" : "RIFF....", type);
      assert.equal(r.status, 415, type);
      const body = await r.json();
      assert.equal(body.error.code, "unsupported_media_type", type);
      // Whether Fastify or the route refused it, the answer says what a recording takes.
      assert.match(
        body.error.message,
        new RegExp(`^a recording must be audio \\(audio/wav, .*\\), not "${type}"$`),
        type,
      );
    }
    const none = await fetch(`${srv.url}/v1/calls/${other}/recording`, {
      method: "POST",
      headers: { authorization: `Bearer ${srv.apiKey}` },
    });
    assert.equal(none.status, 415);
    const empty = await upload(other, Buffer.alloc(0));
    assert.equal(empty.status, 400);
    assert.equal((await srv.api.get(`/v1/calls/${other}`)).body.has_recording, false);
  });

  test("invalid transitions, unknown calls, auth and oversize leave no file behind", async () => {
    const before = files();
    const queued = await call(false);
    const r1 = await upload(queued, wav);
    assert.equal(r1.status, 409);
    // With an Idempotency-Key the body is read first (a replay must see it): still no orphan.
    const r2 = await upload(queued, wav, "audio/wav", { "idempotency-key": "rec-queued" });
    assert.equal(r2.status, 409);
    assert.equal((await upload(999_999, wav)).status, 404);
    const unauth = await fetch(`${srv.url}/v1/calls/${queued}/recording`, {
      method: "POST",
      headers: { "content-type": "audio/wav" },
      body: new Uint8Array(wav),
    });
    assert.equal(unauth.status, 401);
    const finished = await call();
    const big = await streamUpload({
      url: `${srv.url}/v1/calls/${finished}/recording`,
      apiKey: srv.apiKey,
      contentType: "audio/wav",
      totalBytes: 3 * 1024 * 1024,
    });
    // The server answers 413 as soon as the limit is crossed, while the client is still sending.
    assert.equal(big.status, 413, big.body);
    assert.equal(JSON.parse(big.body).error.code, "payload_too_large");
    const declared = await upload(finished, Buffer.alloc(2 * 1024 * 1024, 1), "audio/wav");
    assert.equal(declared.status, 413);
    assert.deepEqual(files(), before);
    assert.equal((await srv.api.get(`/v1/calls/${finished}`)).body.has_recording, false);
    const events = await srv.api.get(`/v1/events?call_id=${queued}`);
    assert.equal(events.body.data.length, 0);
  });

  test("Idempotency-Key: a repeat with the same bytes replays, different bytes are a 422", async () => {
    const id = await call();
    const first = await upload(id, wav, "audio/wav", { "idempotency-key": "rec-1" });
    assert.equal(first.status, 200);
    const count = files().blobs.length;
    const again = await upload(id, wav, "audio/wav", { "idempotency-key": "rec-1" });
    assert.equal(again.status, 200);
    assert.equal(again.headers.get("idempotent-replayed"), "true");
    assert.deepEqual(await again.json(), await first.json());
    const changed = Buffer.from(wav);
    changed[100] = (changed[100]! + 1) & 0xff;
    const other = await upload(id, changed, "audio/wav", { "idempotency-key": "rec-1" });
    assert.equal(other.status, 422);
    assert.equal((await other.json()).error.code, "idempotency_key_reused");
    const events = await srv.api.get(`/v1/events?call_id=${id}&event_type=call.recording`);
    assert.equal(events.body.data.length, 1);
    assert.equal(files().blobs.length, count, "replays store nothing");
    assert.deepEqual(files().temp, []);
  });
});

describe("the data folder's files", () => {
  test("are the user's alone: database, its WAL, blob folder and recordings (umask 077); a folder open to others is warned of", async () => {
    const dir = tempDir();
    // Open to others, as an older version or a hand-made folder may leave it.
    chmodSync(dir.path, 0o755);
    const srv = await spawnServer({ dataDir: dir.path });
    try {
      const id = await runCall(srv.api, (await setupAccount(srv.api)).agentId);
      const up = await fetch(`${srv.url}/v1/calls/${id}/recording`, {
        method: "POST",
        headers: { authorization: `Bearer ${srv.apiKey}`, "content-type": "audio/wav" },
        body: new Uint8Array(synthesizeWav({ seconds: 1, sampleRate: 8000, seed: 4 })),
      });
      assert.equal(up.status, 200);
      const blobs = readdirSync(join(dir.path, "blobs")).filter((f) => f.startsWith("blb_"));
      assert.ok(blobs.length > 0);
      const paths = ["klen.db", "klen.db-wal", "blobs", ...blobs.map((b) => join("blobs", b))];
      for (const p of paths) {
        const mode = statSync(join(dir.path, p)).mode & 0o777;
        assert.equal(mode & 0o077, 0, `${p} is ${mode.toString(8)}`);
      }
      assert.match(srv.output(), /readable by other users of this machine/);
    } finally {
      await srv.kill();
      dir.remove();
    }
  });
});

describe("PORT=0 without KLEN_PUBLIC_URL", () => {
  test("a recording's URL names the port picked, and serves the audio", async (t) => {
    const dir = tempDir();
    const key = "klen_test_key_port_zero";
    const running = await startServer(
      loadConfig({ PORT: "0", KLEN_DATA_DIR: dir.path, KLEN_API_KEY: key }),
      createLogger({ level: "silent" }),
      { role: "api" },
    );
    t.after(async () => {
      await running.stop(1000);
      dir.remove();
    });
    const port = new URL(running.address!).port;
    const api = apiClient(`http://127.0.0.1:${port}`, key);
    const id = await runCall(api, (await setupAccount(api)).agentId);
    const wav = synthesizeWav({ seconds: 1, sampleRate: 8000, seed: 5 });
    const up = await fetch(`http://127.0.0.1:${port}/v1/calls/${id}/recording`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "audio/wav" },
      body: new Uint8Array(wav),
    });
    assert.equal(up.status, 200);
    const events = await api.get(`/v1/events?call_id=${id}&event_type=call.recording`);
    const url: string = events.body.data[0].payload.call.recording_url;
    assert.equal(new URL(url).origin, `http://localhost:${port}`, "not localhost:0");
    // Fetched as a receiver would, not rewritten onto the server's address.
    const served = await fetch(url);
    assert.equal(served.status, 200);
    assert.ok(Buffer.from(await served.arrayBuffer()).equals(wav));
  });
});
