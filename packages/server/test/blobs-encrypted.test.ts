import assert from "node:assert/strict";
import { readdirSync, readFileSync, readlinkSync, realpathSync, statSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { startedCall } from "./helpers/api.js";
import { onServer } from "./helpers/content.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

/** Recordings at rest under KLEN_ENCRYPTION_KEY: what downloads and uploads cost the server. */
describe("encrypted recordings", () => {
  const dir = tempDir();
  let srv: ServerProcess;
  let agentId: number;
  let blobsDir: string;
  // Large enough that no download fits in the socket buffers: an aborted one is cut off mid-file.
  const audio = Buffer.alloc(8 * 1024 * 1024);
  for (let i = 0; i < audio.length; i++) audio[i] = (i * 131 + (i >> 12)) & 0xff;
  audio.write("RIFF", 0);
  let url: string;

  before(async () => {
    srv = await spawnServer({
      dataDir: dir.path,
      env: { KLEN_ENCRYPTION_KEY: "a-test-encryption-key-0123456789" },
    });
    blobsDir = join(realpathSync(dir.path), "blobs");
    agentId = (await srv.api.post("/v1/agents", { name: "Support" })).body.id;
    url = await uploadRecording(await finishedCall(), audio);
  });
  after(async () => {
    await srv.kill();
    dir.remove();
  });

  async function finishedCall(): Promise<number> {
    const id = await startedCall(srv.api, agentId, "+15551234567");
    await srv.api.post(`/v1/calls/${id}/end`, {});
    return id;
  }

  /** Uploads `bytes` as the call's recording and returns its URL, on the test server's address. */
  async function uploadRecording(callId: number, bytes: Buffer): Promise<string> {
    const res = await fetch(`${srv.url}/v1/calls/${callId}/recording`, {
      method: "POST",
      headers: { authorization: `Bearer ${srv.apiKey}`, "content-type": "audio/wav" },
      body: new Uint8Array(bytes),
    });
    assert.equal(res.status, 200, await res.text());
    const events = await srv.api.get(`/v1/events?call_id=${callId}&event_type=call.recording`);
    return onServer(srv.url, events.body.data[0].payload.call.recording_url);
  }

  /** The server's open file descriptors on blob files (not the database, not sockets). */
  function blobFds(): string[] {
    const fdDir = `/proc/${srv.proc.pid}/fd`;
    const open: string[] = [];
    for (const fd of readdirSync(fdDir)) {
      try {
        const target = readlinkSync(join(fdDir, fd));
        if (target.startsWith(`${blobsDir}/`)) open.push(target);
      } catch {
        // closed between the listing and the readlink
      }
    }
    return open;
  }

  /** Bytes the server process has read (files, sockets, pipes) so far, from /proc. */
  function bytesRead(): number {
    return Number(/^rchar:\s+(\d+)$/m.exec(readFileSync(`/proc/${srv.proc.pid}/io`, "utf8"))?.[1]);
  }

  /** A GET that the client abandons after the first chunk of the body, as a seeking player does. */
  function abortedGet(u: string, headers: Record<string, string> = {}): Promise<number> {
    return new Promise((resolve, reject) => {
      const req = request(u, { headers }, (res) => {
        res.once("data", () => {
          req.destroy();
          resolve(res.statusCode ?? 0);
        });
        res.once("error", () => undefined);
      });
      req.on("error", (err) => {
        if (!req.destroyed) reject(err);
      });
      req.end();
    });
  }

  test("downloads cut off by the client close the file they were reading", async () => {
    assert.deepEqual(blobFds(), []);
    for (let i = 0; i < 10; i++) {
      const status = await abortedGet(url, i % 2 === 0 ? {} : { range: `bytes=${1000 + i * 17}-` });
      assert.equal(status, i % 2 === 0 ? 200 : 206);
    }
    // Each aborted download held a descriptor (and its read buffers) for the life of the process.
    await waitFor("no blob file left open after the aborted downloads", () => blobFds().length === 0);
    const full = Buffer.from(await (await fetch(url)).arrayBuffer());
    assert.ok(full.equals(audio), "a whole download is still the recording, decrypted");
    await waitFor("no blob file left open after a whole download", () => blobFds().length === 0);
  });

  test("HEAD answers the headers of GET without reading the file", async () => {
    const full = await fetch(url, { method: "HEAD" });
    assert.equal(full.status, 200);
    assert.equal(full.headers.get("content-length"), String(audio.length));
    assert.equal(full.headers.get("content-type"), "audio/wav");
    assert.equal(full.headers.get("accept-ranges"), "bytes");
    assert.equal(await full.text(), "");
    // GET is the only method with range handling (RFC 9110 §14.2): a Range on HEAD is ignored.
    for (const range of ["bytes=100-199", `bytes=${audio.length}-`]) {
      const ranged = await fetch(url, { method: "HEAD", headers: { range } });
      assert.equal(ranged.status, 200, range);
      assert.equal(ranged.headers.get("content-length"), String(audio.length));
      assert.equal(ranged.headers.get("content-range"), null);
    }

    // Volume, not time: ten HEADs used to read (and decrypt) the 8 MiB file ten times over, after
    // their answers had gone. The whole GET that follows reads it once; by the time its last byte
    // has arrived, the HEADs' reads, started earlier, would have been counted too.
    const before = bytesRead();
    for (let i = 0; i < 10; i++) {
      const res = await fetch(url, { method: "HEAD" });
      assert.equal(res.status, 200);
    }
    const body = Buffer.from(await (await fetch(url)).arrayBuffer());
    assert.ok(body.equals(audio));
    const read = bytesRead() - before;
    assert.ok(
      read < 2 * audio.length,
      `the server read ${read} bytes for 10 HEADs and one ${audio.length}-byte GET`,
    );
    // Nor does a HEAD on an unknown or badly signed URL say anything more than GET would.
    const forged = new URL(url);
    forged.searchParams.set("signature", "A".repeat(43));
    assert.equal((await fetch(forged, { method: "HEAD" })).status, 403);
  });

  test("an upload is sealed as it streams in, so the transaction only renames the file", async () => {
    const callId = await finishedCall();
    const clear = Buffer.from("RIFF clear-audio-marker ".repeat(48_000)); // 1.1 MB
    const head = 256 * 1024;
    const tmp = join(blobsDir, "tmp");
    const req = request(`${srv.url}/v1/calls/${callId}/recording`, {
      method: "POST",
      headers: { authorization: `Bearer ${srv.apiKey}`, "content-type": "audio/wav" },
    });
    const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
      req.on("response", (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => {
          body += c;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      });
      req.on("error", reject);
    });
    req.write(clear.subarray(0, head));
    // Mid-upload, the temp file already holds ciphertext: no clear copy of the audio on disk.
    const temp = await waitFor("the first part of the upload in its temp file", () => {
      const name = readdirSync(tmp).find((f) => statSync(join(tmp, f)).size >= head);
      return name && join(tmp, name);
    });
    const inode = statSync(temp).ino;
    assert.equal(readFileSync(temp).includes("clear-audio-marker"), false, "the temp file is sealed");
    req.end(clear.subarray(head));
    const res = await answer;
    assert.equal(res.status, 200, res.body);
    const events = await srv.api.get(`/v1/events?call_id=${callId}&event_type=call.recording`);
    const u = onServer(srv.url, events.body.data[0].payload.call.recording_url);
    const blobFile = join(blobsDir, new URL(u).pathname.split("/").pop()!);
    // The same file, renamed: adopting it inside the transaction copied nothing through AES.
    assert.equal(statSync(blobFile).ino, inode);
    assert.equal(readFileSync(blobFile).includes("clear-audio-marker"), false);
    assert.deepEqual(readdirSync(tmp), [], "no second temp file left behind");
    assert.ok(Buffer.from(await (await fetch(u)).arrayBuffer()).equals(clear));
    // Decrypting from any offset: ranges starting and ending on, before and after 16-byte blocks.
    const n = clear.length;
    for (const [a, b] of [
      [0, 15],
      [15, 16],
      [16, 31],
      [17, 47],
      [head - 1, head + 16],
      [n - 17, n - 1],
    ] as const) {
      const part = await fetch(u, { headers: { range: `bytes=${a}-${b}` } });
      assert.equal(part.status, 206);
      assert.ok(Buffer.from(await part.arrayBuffer()).equals(clear.subarray(a, b + 1)), `bytes ${a}-${b}`);
    }
  });
});
