import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { after, before, describe, test } from "node:test";
import type { FastifyInstance } from "fastify";
import { buildApp } from "../src/api/app.js";
import { loadConfig } from "../src/config.js";
import { createLogger } from "../src/log.js";
import { type Running, startServer } from "../src/server.js";
import { synthesizeWav } from "../src/simulator/wav.js";
import { apiClient, runCall, setupAccount } from "./helpers/api.js";
import { tempDir } from "./helpers/server.js";

const KEY = "klen_test_key_slow_bodies";

/** A raw connection: what arrived on it, and whether the server closed it. */
function rawConnection(port: number) {
  const socket: Socket = connect(port, "127.0.0.1");
  let received = "";
  socket.on("data", (d) => {
    received += d.toString();
  });
  socket.on("error", () => {});
  const closed = new Promise<void>((r) => socket.once("close", () => r()));
  return { socket, received: () => received, closed };
}

/** Resolves true when `p` settles within `ms`, false otherwise. */
const within = (p: Promise<unknown>, ms: number) =>
  Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);

describe("request bodies that trickle in", () => {
  const dir = tempDir();
  let running: Running;
  let app: FastifyInstance;
  let port: number;
  const trickles: NodeJS.Timeout[] = [];

  before(async () => {
    running = await startServer(
      loadConfig({ PORT: "0", KLEN_DATA_DIR: dir.path, KLEN_API_KEY: KEY }),
      createLogger({ level: "silent" }),
      { role: "api" },
    );
    // The same server's API with a short grace (30 s in production), checked every 100 ms.
    app = await buildApp(running.ctx, { logger: false, slowBody: { graceMs: 600, checkEveryMs: 100 } });
    await app.listen({ port: 0, host: "127.0.0.1" });
    port = (app.server.address() as { port: number }).port;
  });
  after(async () => {
    for (const t of trickles) clearInterval(t);
    await app.close();
    await running.stop(1000);
    dir.remove();
  });

  /** Announces a 100-byte body and sends one byte of it every 200 ms: 5 bytes/s. */
  function trickle(path: string, headers: string) {
    const c = rawConnection(port);
    c.socket.write(
      `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${headers}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{`,
    );
    const t = setInterval(() => c.socket.writable && c.socket.write(" "), 200);
    trickles.push(t);
    c.closed.then(() => clearInterval(t));
    return c;
  }

  test("with a key: 408 request_timeout, and the connection is closed", async () => {
    const c = trickle("/v1/agents", `Authorization: Bearer ${KEY}\r\n`);
    assert.ok(await within(c.closed, 10_000), "closed by the server");
    assert.match(c.received(), /^HTTP\/1\.1 408 /);
    const body = JSON.parse(c.received().split("\r\n\r\n")[1]!);
    assert.equal(body.error.code, "request_timeout");
  });

  test("without a key: answered 401 at once, and the connection does not stay open", async () => {
    const c = trickle("/v1/agents", "");
    assert.ok(await within(c.closed, 10_000), "closed by the server");
    assert.match(c.received(), /^HTTP\/1\.1 401 /, "the 401 came first");
  });

  test("pipelined behind an event stream: the connection is closed, nothing written into the stream", async () => {
    const c = rawConnection(port);
    c.socket.write(
      `GET /v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${KEY}\r\n\r\n` +
        `POST /v1/agents HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{`,
    );
    const t = setInterval(() => c.socket.writable && c.socket.write(" "), 200);
    trickles.push(t);
    assert.ok(await within(c.closed, 10_000), "closed by the server");
    clearInterval(t);
    assert.match(c.received(), /^HTTP\/1\.1 200 /, "the stream's answer");
    assert.doesNotMatch(c.received(), /408 Request Timeout/, "no answer written into the stream");
  });

  test("a slow upload that keeps its pace (over 1 KiB/s) is stored whole", async () => {
    const api = apiClient(`http://127.0.0.1:${port}`, KEY);
    const id = await runCall(api, (await setupAccount(api)).agentId);
    // 32 KiB in 4 KiB pieces every 150 ms: 1.2 s, twice the grace, at ~27 KiB/s.
    const wav = synthesizeWav({ seconds: 2, sampleRate: 8000, seed: 9 }).subarray(0, 32 * 1024);
    const c = rawConnection(port);
    c.socket.write(
      `POST /v1/calls/${id}/recording HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${KEY}\r\nContent-Type: audio/wav\r\nContent-Length: ${wav.length}\r\nConnection: close\r\n\r\n`,
    );
    for (let at = 0; at < wav.length; at += 4096) {
      c.socket.write(wav.subarray(at, at + 4096));
      await new Promise((r) => setTimeout(r, 150));
    }
    assert.ok(await within(c.closed, 10_000), "answered and closed");
    assert.match(c.received(), /^HTTP\/1\.1 200 /, c.received().slice(0, 300));
    const call = await api.get(`/v1/calls/${id}`);
    assert.equal(call.body.has_recording, true);
  });
});
