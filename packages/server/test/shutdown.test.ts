import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

// Stopping `serve` (SIGTERM, Ctrl-C): what is in flight gets the grace period (the delivery
// timeout), nothing the clients hold open can stop the process from exiting, and an operator's
// second signal ends it at once.

/** A connection to the server that has sent nothing yet (a client that connected and waits). */
async function idleConnection(port: number): Promise<Socket> {
  const socket = connect(port, "127.0.0.1");
  await once(socket, "connect");
  // Cut by the server in the end (a reset): that is the point, not an error of the test's.
  socket.on("error", () => {});
  return socket;
}

/** Whether the server still accepts new connections. */
async function accepting(port: number): Promise<boolean> {
  const socket = connect(port, "127.0.0.1");
  try {
    await once(socket, "connect");
    return true;
  } catch {
    return false;
  } finally {
    socket.destroy();
  }
}

test("SIGTERM: a connection that never sent a request does not keep the server up; a request on it meanwhile gets the API's 503", async () => {
  const dir = tempDir();
  // The grace period must outlast the wait for the listener to close (polled) and the request
  // written after it, which on a loaded machine could take longer than 3 s.
  const server = await spawnServer({ dataDir: dir.path, env: { KLEN_DELIVERY_TIMEOUT: "10s" } });
  try {
    const idle = await idleConnection(server.port);
    const silent = await idleConnection(server.port);
    const answer: Buffer[] = [];
    idle.on("data", (b) => answer.push(b));
    const closed = once(idle, "close");
    const exited = once(server.proc, "exit");
    server.proc.kill("SIGTERM");
    // Stopped listening: the server is closing, and waits for the connection it still has.
    await waitFor("the server stops accepting connections", async () => !(await accepting(server.port)));
    idle.write(`GET /v1/account HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${server.apiKey}\r\n\r\n`);
    await closed;
    const response = Buffer.concat(answer).toString();
    assert.match(response, /^HTTP\/1\.1 503 /);
    assert.match(response, /\r\nretry-after: 1\r\n/i);
    assert.match(response, /\r\nconnection: close\r\n/i);
    const body = JSON.parse(response.slice(response.indexOf("\r\n\r\n") + 4));
    assert.equal(body.error.code, "shutting_down");
    assert.doesNotMatch(server.output(), /"level":50/, "turning a request away is not logged as an error");

    // And one that never sends anything is cut after the grace period: the process exits.
    const [code] = await exited;
    assert.equal(code, 0);
    if (!silent.destroyed) await once(silent, "close");
    assert.equal(silent.destroyed, true, "the silent connection was cut");
  } finally {
    await server.kill("SIGKILL");
    dir.remove();
  }
});

test("a second signal stops the server at once (exit status 1) instead of waiting out the grace period", async () => {
  const dir = tempDir();
  // A grace period far longer than the test: only the second signal can end it in time.
  const server = await spawnServer({ dataDir: dir.path, env: { KLEN_DELIVERY_TIMEOUT: "10m" } });
  const idle = await idleConnection(server.port);
  try {
    const exited = once(server.proc, "exit");
    server.proc.kill("SIGTERM");
    await waitFor("the server stops accepting connections", async () => !(await accepting(server.port)));
    assert.equal(server.proc.exitCode, null, "the idle connection holds the first stop");
    server.proc.kill("SIGINT");
    const [code] = await exited;
    assert.equal(code, 1);
    assert.match(server.output(), /stopping at once: a second signal/);
  } finally {
    idle.destroy();
    await server.kill("SIGKILL");
    dir.remove();
  }
});

test("a stop in the first moments, while the sender thread comes up, runs the whole shutdown", async () => {
  const dir = tempDir();
  try {
    // A process of its own, in which nothing else keeps the event loop alive: the stop must not
    // leave it with nothing to wait on half-way (it would exit 0 without closing the database).
    const script = `
      import { loadConfig } from ${JSON.stringify(new URL("../src/config.js", import.meta.url).href)};
      import { startServer } from ${JSON.stringify(new URL("../src/server.js", import.meta.url).href)};
      import pino from "pino";
      const config = loadConfig({ ...process.env, PORT: "0", KLEN_HOST: "127.0.0.1", KLEN_DATA_DIR: ${JSON.stringify(dir.path)}, KLEN_SENDER_THREAD: "1", KLEN_API_KEY: "klen_test_key_0123456789" });
      const running = await startServer(config, pino({ level: "silent" }));
      await running.stop(1000);
      console.log("stopped");
    `;
    const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], {
      cwd: new URL("..", import.meta.url).pathname,
      encoding: "utf8",
      timeout: 60_000,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), "stopped", r.stderr);
    // SQLite removes the write-ahead log when its last connection closes.
    assert.equal(existsSync(join(dir.path, "klen.db-wal")), false, "the database was closed");
  } finally {
    dir.remove();
  }
});
