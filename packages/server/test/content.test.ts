import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { validate } from "@klen/webhooks";
import { eventSchemas } from "@klen/webhooks/schemas";
import { onServer } from "./helpers/content.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";

const LIMIT = 8192;

describe("inline limit: transcripts and summaries past KLEN_INLINE_LIMIT go behind a URL", () => {
  const dir = tempDir();
  let srv: ServerProcess;
  let agentId: number;

  before(async () => {
    srv = await spawnServer({ dataDir: dir.path, env: { KLEN_INLINE_LIMIT: `${LIMIT}B` } });
    agentId = (await srv.api.post("/v1/agents", { name: "Support" })).body.id;
  });
  after(async () => {
    await srv.kill();
    dir.remove();
  });

  /** A finished call (ids of one digit count, so body sizes compare exactly). */
  async function finishedCall(): Promise<number> {
    const c = await srv.api.post("/v1/calls", {
      agent_id: agentId,
      type: "inbound",
      phone_number: "+15551234567",
    });
    await srv.api.post(`/v1/calls/${c.body.id}/start`, { started_at: "2025-04-23T14:30:45Z" });
    await srv.api.post(`/v1/calls/${c.body.id}/end`, { ended_at: "2025-04-23T14:35:12Z" });
    return c.body.id;
  }
  async function event(callId: number, type: string) {
    const r = await srv.api.get(`/v1/events?call_id=${callId}&event_type=${type}`);
    assert.equal(r.body.data.length, 1);
    return r.body.data[0].payload;
  }

  test("the body is inline up to exactly the limit, and one byte more moves the text to a URL", async () => {
    const probe = await finishedCall();
    await srv.api.post(`/v1/calls/${probe}/transcript`, { transcript: "x".repeat(100) });
    const overhead = Buffer.byteLength(JSON.stringify(await event(probe, "call.transcript"))) - 100;

    const atLimit = await finishedCall();
    const fits = "y".repeat(LIMIT - overhead);
    await srv.api.post(`/v1/calls/${atLimit}/transcript`, { transcript: fits });
    const inline = await event(atLimit, "call.transcript");
    assert.equal(Buffer.byteLength(JSON.stringify(inline)), LIMIT);
    assert.equal(inline.call.transcript, fits);
    assert.equal("transcript_url" in inline.call, false);

    const over = await finishedCall();
    const tooBig = "z".repeat(LIMIT - overhead + 1);
    await srv.api.post(`/v1/calls/${over}/transcript`, { transcript: tooBig });
    const moved = await event(over, "call.transcript");
    assert.equal("transcript" in moved.call, false, "exactly one of transcript / transcript_url");
    assert.match(
      moved.call.transcript_url,
      /^http:\/\/localhost:\d+\/v1\/blobs\/blb_[\w-]{32}\?expires=\d+&signature=[\w-]{43}$/,
    );
    assert.ok(Buffer.byteLength(JSON.stringify(moved)) < LIMIT);
    const res = await fetch(onServer(srv.url, moved.call.transcript_url));
    assert.equal(res.headers.get("content-type"), "text/plain; charset=utf-8");
    assert.equal(await res.text(), tooBig);
  });

  test("multi-byte text: the exact UTF-8 text comes back from summary_url", async () => {
    const id = await finishedCall();
    const summary = `Résumé — 客户询问账单。 ${"Der Kunde fragte nach der Rechnung; 🙂 ".repeat(400)}`;
    assert.equal((await srv.api.post(`/v1/calls/${id}/summary`, { summary })).status, 200);
    const body = await event(id, "call.summary");
    assert.equal("summary" in body.call, false);
    const res = await fetch(onServer(srv.url, body.call.summary_url));
    assert.equal(res.headers.get("content-length"), String(Buffer.byteLength(summary)));
    assert.equal(await res.text(), summary);
    // The brief summary of call.ended is not the summary step, and a short summary stays inline.
    const other = await finishedCall();
    await srv.api.post(`/v1/calls/${other}/summary`, { summary: "Short and sweet." });
    const short = await event(other, "call.summary");
    assert.equal(short.call.summary, "Short and sweet.");
    assert.equal("summary_url" in short.call, false);
  });

  test("a brief summary too large for call.ended's body goes behind summary_url; a short one stays inline", async () => {
    const call = async () =>
      (await srv.api.post("/v1/calls", { agent_id: agentId, type: "inbound", phone_number: "+15551234567" }))
        .body.id as number;
    const big = await call();
    await srv.api.post(`/v1/calls/${big}/start`);
    const brief = `Kunde möchte die Rechnung prüfen. ${"Brief but long. ".repeat(LIMIT / 16)}`;
    const ended = await srv.api.post(`/v1/calls/${big}/end`, { summary: brief });
    assert.equal(ended.status, 200);
    assert.equal(ended.body.summary, brief, "the call itself keeps the text");
    const body = await event(big, "call.ended");
    assert.equal("summary" in body.call, false, "at most one of summary / summary_url");
    assert.ok(Buffer.byteLength(JSON.stringify(body)) <= LIMIT);
    const res = await fetch(onServer(srv.url, body.call.summary_url));
    assert.equal(await res.text(), brief);
    // The seed's field order holds: the summary's place, then duration.
    assert.deepEqual(Object.keys(body.call).slice(-2), ["summary_url", "duration"]);
    assert.deepEqual(validate(eventSchemas["call.ended"], body), []);

    const small = await call();
    await srv.api.post(`/v1/calls/${small}/start`);
    await srv.api.post(`/v1/calls/${small}/end`, { summary: "Asked about the invoice." });
    const inline = await event(small, "call.ended");
    assert.equal(inline.call.summary, "Asked about the invoice.");
    assert.equal("summary_url" in inline.call, false);
  });

  test("the URL's expiry is fixed in the body: KLEN_URL_TTL after the event's timestamp", async () => {
    const id = await finishedCall();
    await srv.api.post(`/v1/calls/${id}/transcript`, { transcript: "w".repeat(LIMIT) });
    const body = await event(id, "call.transcript");
    const expires = Number(new URL(body.call.transcript_url).searchParams.get("expires"));
    const generated = Date.parse(body.timestamp) / 1000;
    // Default TTL 7 days; the timestamp is whole seconds, the expiry floors (now + ttl).
    assert.ok(
      expires - generated >= 7 * 86400 && expires - generated < 7 * 86400 + 1,
      String(expires - generated),
    );
  });
});
