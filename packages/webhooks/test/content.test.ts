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
  /** The authorization headers of the requests to the fake Klen API's media route. */
  const apiRequests: Array<string | undefined> = [];
  before(async () => {
    server = createServer((req, res) => {
      if (req.url?.startsWith("/v1/blobs/")) {
        // Every pre-signed URL of this fake server has expired.
        res.statusCode = 403;
        res.end(
          '{"error":{"code":"forbidden","message":"this URL has expired","details":{"reason":"expired"}}}',
        );
      } else if (req.url === "/v1/calls/123/media") {
        // The Klen API: the call's stored content, each with a URL made now.
        apiRequests.push(req.headers.authorization);
        res.setHeader("content-type", "application/json");
        if (req.headers.authorization !== "Bearer klen_sk_good") {
          res.statusCode = 401;
          res.end('{"error":{"code":"unauthorized","message":"invalid API key"}}');
          return;
        }
        res.end(
          JSON.stringify({
            data: [
              { id: "blb_recording", url: `${url}/big` },
              { id: "blb_transcript", url: `${url}/transcript` },
            ],
          }),
        );
      } else if (req.url === "/transcript") {
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
    // A bound that bounds nothing is the caller's mistake, said at once (inline content too):
    // NaN, compared false with every size, read the whole body.
    await assert.rejects(fetchContent(big, { maxBytes: Number.NaN }), TypeError);
    await assert.rejects(
      fetchContent(eventWith("call.transcript", { transcript: "hi" }), { maxBytes: 0 }),
      /maxBytes/,
    );
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

  test("with the Klen API given, an expired URL is replaced by the one the API makes now", async () => {
    const expiredUrl = (id: string) => `${url}/v1/blobs/${id}?expires=1764000000&signature=${"s".repeat(43)}`;
    const transcript = eventWith("call.transcript", { transcript_url: expiredUrl("blb_transcript") });
    const api = { url: `${url}/`, key: "klen_sk_good" };
    apiRequests.length = 0;
    assert.equal(await fetchContent(transcript, { api }), transcriptText);
    assert.deepEqual(apiRequests, ["Bearer klen_sk_good"]);

    const failure = (event: ContentEvent, opts: Parameters<typeof fetchContent>[1]) =>
      fetchContent(event, opts).then(
        () => assert.fail("no error"),
        (err: unknown) => err as ContentFetchError,
      );
    // Without the API: the expired URL's own error.
    const alone = await failure(transcript, {});
    assert.equal(alone.reason, "expired");
    // A key the API refuses: its answer.
    const refused = await failure(transcript, { api: { ...api, key: "klen_sk_bad" } });
    assert.ok(refused instanceof ContentFetchError);
    assert.equal(refused.code, "http_status");
    assert.equal(refused.status, 401);
    assert.equal(refused.message, "The Klen API answered 401: invalid API key");
    assert.equal(refused.reason, "unauthorized");
    // An API that cannot be reached is said to be the API, not the content's URL.
    const closed = createServer();
    closed.listen(0, "127.0.0.1");
    await once(closed, "listening");
    const deadApi = baseUrl(closed.address());
    closed.close();
    const unreachable = await failure(transcript, { api: { url: deadApi, key: "klen_sk_good" } });
    assert.equal(unreachable.code, "network");
    assert.equal(unreachable.message, "Asking the Klen API for a current URL failed");
    // Content the API no longer lists (purged by retention).
    const gone = await failure(eventWith("call.summary", { summary_url: expiredUrl("blb_purged") }), { api });
    assert.equal(gone.status, 404);
    assert.equal(gone.reason, "not_found");
    assert.match(gone.message, /lists no blb_purged for call 123/);
    // Only an expired URL sends it to the API: another refusal is the URL's own.
    apiRequests.length = 0;
    const proxied = await failure(eventWith("call.transcript", { transcript_url: `${url}/proxy-error` }), {
      api,
    });
    assert.equal(proxied.status, 502);
    assert.deepEqual(apiRequests, []);
  });
});
