/** fetchContent against a real loopback server. */
import * as assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import { after, before, describe, test } from "node:test";
import { type ContentEvent, ContentFetchError, fetchContent } from "../src/index.js";
import { baseUrl, deferred, seedEvent } from "./helpers.js";

type Json = Record<string, any>;
const transcriptText = `${"Agent: Bonjour, ici Klen. ".repeat(5000)}Fin — merci ✓`;

function eventWith(type: "call.transcript" | "call.summary", fields: Json): ContentEvent {
  const { summary: _s, duration: _d, ...call } = seedEvent().call as Json;
  return {
    event_type: type,
    call: { ...call, ...fields },
    timestamp: "2025-04-23T14:36:00Z",
  } as ContentEvent;
}

describe("fetchContent", () => {
  let server: Server;
  let url: string;
  const hang = deferred();
  before(async () => {
    server = createServer((req, res) => {
      if (req.url === "/transcript") {
        res.setHeader("content-type", "text/plain; charset=utf-8");
        // Written in two chunks that split a multi-byte character, to test streaming decode.
        const bytes = Buffer.from(transcriptText);
        res.write(bytes.subarray(0, bytes.length - 2));
        res.end(bytes.subarray(bytes.length - 2));
      } else if (req.url === "/big") {
        res.end(Buffer.alloc(4096, 97));
      } else if (req.url === "/expired") {
        // The Klen server's answer to an expired pre-signed URL.
        res.statusCode = 403;
        res.end(
          '{"error":{"code":"forbidden","message":"this URL has expired","details":{"reason":"expired"}}}',
        );
      } else if (req.url === "/proxy-error") {
        res.statusCode = 502;
        res.end("<html>Bad Gateway</html>");
      } else if (req.url === "/hang") {
        res.write("partial");
        hang.promise.then(() => res.end());
      } else {
        res.statusCode = 404;
        res.end();
      }
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    url = baseUrl(server.address());
  });
  after(() => {
    hang.resolve();
    server.closeAllConnections();
    server.close();
  });

  test("inline content is returned as is", async () => {
    assert.equal(await fetchContent(eventWith("call.transcript", { transcript: "hi" })), "hi");
    assert.equal(await fetchContent(eventWith("call.summary", { summary: "résumé" })), "résumé");
    assert.equal(
      await fetchContent(seedEvent() as unknown as ContentEvent),
      (seedEvent().call as Json).summary,
    );
  });

  test("content behind a URL is downloaded and decoded as UTF-8", async () => {
    const event = eventWith("call.transcript", { transcript_url: `${url}/transcript` });
    assert.equal(await fetchContent(event), transcriptText);
    const summary = eventWith("call.summary", { summary_url: `${url}/transcript` });
    assert.equal(await fetchContent(summary), transcriptText);
  });

  test("size bound, HTTP errors, timeout", async () => {
    const code = async (p: Promise<unknown>) => {
      try {
        await p;
      } catch (err) {
        assert.ok(err instanceof ContentFetchError);
        return err.code;
      }
      return "ok";
    };
    const big = eventWith("call.transcript", { transcript_url: `${url}/big` });
    assert.equal(await code(fetchContent(big, { maxBytes: 1000 })), "too_large");
    assert.equal(await code(fetchContent(big, { maxBytes: 4096 })), "ok");
    const expired = eventWith("call.transcript", { transcript_url: `${url}/expired` });
    assert.equal(await code(fetchContent(expired)), "http_status");
    const hanging = eventWith("call.transcript", { transcript_url: `${url}/hang` });
    assert.equal(await code(fetchContent(hanging, { timeoutMs: 50 })), "timeout");
    // The caller's own abort is not a network failure.
    const stop = new AbortController();
    const aborted = fetchContent(hanging, { signal: stop.signal });
    setImmediate(() => stop.abort());
    assert.equal(await code(aborted), "aborted");
  });

  test("a refused URL says why when the server gave a reason: an expired URL is told from an altered one", async () => {
    const failure = async (path: string) =>
      fetchContent(eventWith("call.transcript", { transcript_url: `${url}${path}` })).then(
        () => assert.fail("no error"),
        (err: unknown) => err as ContentFetchError,
      );
    const expired = await failure("/expired");
    assert.equal(expired.code, "http_status");
    assert.equal(expired.status, 403);
    assert.equal(expired.reason, "expired");
    assert.equal(expired.message, "Content URL answered 403: this URL has expired");
    const proxied = await failure("/proxy-error");
    assert.equal(proxied.status, 502);
    assert.equal(proxied.reason, undefined);
    assert.equal(proxied.message, "Content URL answered 502");
  });
});
