import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { RESPONSE_BODY_LIMIT, Sender } from "../src/delivery/send.js";

/**
 * The attempt sender against real loopback servers: what it keeps of a response, what it does
 * with answers it must not follow or cannot read, and its one timeout for the whole attempt.
 */
describe("Sender", () => {
  let server: Server;
  let base = "";
  const seen: string[] = [];
  const held: ServerResponse[] = [];

  before(async () => {
    server = createServer((req: IncomingMessage, res: ServerResponse) => {
      seen.push(req.url ?? "");
      req.resume();
      req.on("end", () => {
        switch (req.url) {
          case "/big":
            res.end("x".repeat(20 * 1024));
            return;
          case "/huge":
            // Far past what is drained: the sender drops the connection, the 200 stands.
            res.end("y".repeat(1024 * 1024));
            return;
          case "/redirect":
            res.writeHead(302, { location: `${base}/elsewhere` }).end();
            return;
          case "/busy":
            res.writeHead(429, { "retry-after": "7" }).end("slow down");
            return;
          case "/processing":
            res.writeProcessing();
            res.end("done");
            return;
          case "/never":
            held.push(res);
            return;
          default:
            res.end("ok");
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    for (const r of held) r.destroy();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  const post = (sender: Sender, path: string) =>
    sender.send(`${base}${path}`, { "content-type": "application/json" }, '{"type":"call.started"}');

  /** A sender for one test, closed after it whatever happens. */
  async function withSender(
    opts: ConstructorParameters<typeof Sender>[0],
    fn: (sender: Sender) => Promise<void>,
  ): Promise<void> {
    const sender = new Sender(opts);
    try {
      await fn(sender);
    } finally {
      await sender.close();
    }
  }

  test("keeps the first 8 KiB of a body, and a body too large to drain leaves the answer standing", async () => {
    await withSender({ dev: true, timeoutMs: 5_000 }, async (sender) => {
      const big = await post(sender, "/big");
      assert.equal(big.statusCode, 200);
      assert.equal(big.error, null);
      assert.equal(big.responseBody, "x".repeat(RESPONSE_BODY_LIMIT));
      const huge = await post(sender, "/huge");
      assert.equal(huge.statusCode, 200);
      assert.equal(huge.error, null);
      assert.equal(huge.responseBody?.length, RESPONSE_BODY_LIMIT);
      // The dropped connection is replaced: the next attempt goes through.
      const next = await post(sender, "/ok");
      assert.equal(next.statusCode, 200);
      assert.equal(next.responseBody, "ok");
    });
  });

  test("a redirect is a failed attempt and is not followed", async () => {
    await withSender({ dev: true, timeoutMs: 5_000 }, async (sender) => {
      const before = seen.length;
      const r = await post(sender, "/redirect");
      assert.equal(r.statusCode, 302);
      assert.equal(r.error, "redirect");
      assert.equal(r.errorMessage, "HTTP 302");
      assert.deepEqual(seen.slice(before), ["/redirect"]);
    });
  });

  test("response headers reach the caller (Retry-After), and a 1xx is not the answer", async () => {
    await withSender({ dev: true, timeoutMs: 5_000 }, async (sender) => {
      const busy = await post(sender, "/busy");
      assert.equal(busy.statusCode, 429);
      assert.equal(busy.error, "http_status");
      assert.equal(busy.responseHeaders["retry-after"], "7");
      assert.equal(busy.responseBody, "slow down");
      const processing = await post(sender, "/processing");
      assert.equal(processing.statusCode, 200);
      assert.equal(processing.responseBody, "done");
    });
  });

  test("one timeout covers the attempt, including the wait for a free connection", async () => {
    // One connection per origin: the second attempt waits behind the first, which never ends.
    await withSender({ dev: true, timeoutMs: 300, connectionsPerOrigin: 1 }, async (sender) => {
      const [first, second] = await Promise.all([post(sender, "/never"), post(sender, "/never")]);
      for (const r of [first, second]) {
        assert.equal(r.error, "timeout");
        assert.equal(r.statusCode, null);
        assert.equal(r.errorMessage, "no response within 300 ms");
      }
      // The connection the first one held is gone; a healthy path answers again.
      const ok = await post(sender, "/ok");
      assert.equal(ok.error, null);
    });
  });

  test("a closed port is connection_refused; a malformed URL is a network error", async () => {
    await withSender({ dev: true, timeoutMs: 2_000 }, async (sender) => {
      const closed = createServer();
      await new Promise<void>((r) => closed.listen(0, "127.0.0.1", r));
      const port = (closed.address() as AddressInfo).port;
      await new Promise((r) => closed.close(r));
      const refused = await sender.send(`http://127.0.0.1:${port}/x`, {}, "{}");
      assert.equal(refused.error, "connection_refused");
      const bad = await sender.send("not a url", {}, "{}");
      assert.equal(bad.error, "network");
      assert.equal(bad.errorMessage, "invalid URL");
    });
  });
});
