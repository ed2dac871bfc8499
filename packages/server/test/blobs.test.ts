import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import BetterSqlite3 from "better-sqlite3";
import { newBlobId } from "../src/blobs/blobs.js";
import { blobEtag, ifRangeHolds, lastModified, noneMatch } from "../src/blobs/conditional.js";
import { parseRange } from "../src/blobs/range.js";
import { blobUrl, checkBlobUrl, expiryOf, signBlob } from "../src/blobs/signing.js";
import { onServer, signingKeyOf } from "./helpers/content.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

describe("blob URL signing (pure)", () => {
  const key = Buffer.alloc(32, 7);
  const id = "blb_0123456789abcdefghijklmnopqrstuv";
  const now = 1_800_000_000_000;
  const exp = expiryOf(now, 3_600_000);

  test("a URL made now is valid until it expires, and not a second after", () => {
    const sig = signBlob(key, id, exp);
    assert.deepEqual(checkBlobUrl(key, id, String(exp), sig, now), { ok: true });
    assert.deepEqual(checkBlobUrl(key, id, String(exp), sig, exp * 1000 - 1), { ok: true });
    assert.deepEqual(checkBlobUrl(key, id, String(exp), sig, exp * 1000), { ok: false, reason: "expired" });
  });

  test("tampering with the signature, the expiry or the id breaks it", () => {
    const sig = signBlob(key, id, exp);
    const flipped = (sig[0] === "A" ? "B" : "A") + sig.slice(1);
    assert.equal(checkBlobUrl(key, id, String(exp), flipped, now).ok, false);
    assert.deepEqual(checkBlobUrl(key, id, String(exp + 86_400), sig, now), {
      ok: false,
      reason: "bad_signature",
    });
    assert.deepEqual(checkBlobUrl(key, `${id.slice(0, -1)}w`, String(exp), sig, now), {
      ok: false,
      reason: "bad_signature",
    });
    assert.equal(checkBlobUrl(Buffer.alloc(32, 8), id, String(exp), sig, now).ok, false);
  });

  test("a well-signed expiry further ahead than the TTL allows is refused", () => {
    const sig = signBlob(key, id, exp);
    assert.deepEqual(checkBlobUrl(key, id, String(exp), sig, now, 3_600_000), { ok: true });
    assert.deepEqual(checkBlobUrl(key, id, String(exp), sig, now, 3_599_000), {
      ok: false,
      reason: "bad_signature",
    });
  });

  test("malformed expiry or signature is refused before any comparison", () => {
    const sig = signBlob(key, id, exp);
    for (const e of ["", "abc", "-1", "+1800000000", "1e10", `0${exp}`, `${exp}.0`, " 1", "9".repeat(13)]) {
      assert.deepEqual(checkBlobUrl(key, id, e, sig, now), { ok: false, reason: "malformed" }, e);
    }
    for (const s of [undefined, "", "x", `${sig}=`, sig.slice(1), ["a", "b"]]) {
      assert.deepEqual(checkBlobUrl(key, id, String(exp), s, now), { ok: false, reason: "malformed" });
    }
    assert.deepEqual(checkBlobUrl(key, id, [String(exp)], sig, now), { ok: false, reason: "malformed" });
  });

  test("blob URLs put id, expiry and signature where the route reads them", () => {
    const u = new URL(blobUrl("https://hooks.example.com", key, id, exp));
    assert.equal(u.pathname, `/v1/blobs/${id}`);
    assert.equal(u.searchParams.get("expires"), String(exp));
    assert.equal(u.searchParams.get("signature"), signBlob(key, id, exp));
  });

  test("blob ids are unguessable: 192 random bits, no repeats", () => {
    const ids = new Set(Array.from({ length: 5000 }, () => newBlobId()));
    assert.equal(ids.size, 5000);
    for (const b of [...ids].slice(0, 50)) assert.match(b, /^blb_[A-Za-z0-9_-]{32}$/); // 32 × 6 bits
    // Not time-ordered or sequential: two consecutive ids share no long prefix after "blb_".
    const [a, c] = [newBlobId(), newBlobId()];
    assert.notEqual(a.slice(4, 10), c.slice(4, 10));
  });

  test("byte ranges", () => {
    assert.deepEqual(parseRange(undefined, 100), { kind: "full" });
    assert.deepEqual(parseRange("bytes=0-9", 100), { kind: "partial", start: 0, end: 9 });
    assert.deepEqual(parseRange("bytes=90-", 100), { kind: "partial", start: 90, end: 99 });
    assert.deepEqual(parseRange("bytes=-10", 100), { kind: "partial", start: 90, end: 99 });
    assert.deepEqual(parseRange("bytes=50-1000", 100), { kind: "partial", start: 50, end: 99 });
    assert.deepEqual(parseRange("bytes=100-", 100), { kind: "unsatisfiable" });
    assert.deepEqual(parseRange("bytes=-0", 100), { kind: "unsatisfiable" });
    assert.deepEqual(parseRange("bytes=0-1,5-6", 100), { kind: "full" });
    assert.deepEqual(parseRange("items=0-1", 100), { kind: "full" });
  });

  test("validators: If-None-Match compares weakly, If-Range strongly or by the exact date", () => {
    const etag = blobEtag(id);
    assert.equal(etag, `"${id}"`);
    const created = Date.UTC(2026, 10, 26, 18, 20, 23, 871);
    assert.equal(lastModified(created), "Thu, 26 Nov 2026 18:20:23 GMT");
    assert.equal(noneMatch(undefined, etag), false);
    assert.equal(noneMatch(etag, etag), true);
    assert.equal(noneMatch(`W/${etag}`, etag), true);
    assert.equal(noneMatch(`"blb_other", ${etag}`, etag), true);
    assert.equal(noneMatch("*", etag), true);
    assert.equal(noneMatch('"blb_other"', etag), false);
    assert.equal(noneMatch(id, etag), false, "an unquoted id is no entity tag");
    assert.equal(ifRangeHolds(undefined, etag, created), true);
    assert.equal(ifRangeHolds(etag, etag, created), true);
    assert.equal(ifRangeHolds(`W/${etag}`, etag, created), false, "a weak tag never validates a range");
    assert.equal(ifRangeHolds('"blb_other"', etag, created), false);
    assert.equal(ifRangeHolds(lastModified(created), etag, created), true);
    assert.equal(ifRangeHolds(lastModified(created - 1000), etag, created), false);
    assert.equal(ifRangeHolds("yesterday", etag, created), false);
  });
});

describe("GET /v1/blobs/{id}", () => {
  const dir = tempDir();
  let srv: ServerProcess;
  const secretText = `Agent: the secret word is pelican.\n${"Customer: and that is all I wanted to know. ".repeat(200)}`;
  let url: string;

  before(async () => {
    srv = await spawnServer({ dataDir: dir.path, env: { KLEN_INLINE_LIMIT: "4KiB" } });
    const agent = await srv.api.post("/v1/agents", { name: "Support" });
    const call = await srv.api.post("/v1/calls", {
      agent_id: agent.body.id,
      type: "inbound",
      phone_number: "+15551234567",
    });
    await srv.api.post(`/v1/calls/${call.body.id}/start`, {});
    await srv.api.post(`/v1/calls/${call.body.id}/end`, {});
    assert.equal(
      (await srv.api.post(`/v1/calls/${call.body.id}/transcript`, { transcript: secretText })).status,
      200,
    );
    const events = await srv.api.get(`/v1/events?call_id=${call.body.id}&event_type=call.transcript`);
    url = onServer(srv.url, events.body.data[0].payload.call.transcript_url);
  });
  after(async () => {
    await srv.kill();
    dir.remove();
  });

  /** Asserts a refusal carries none of the content (the error is a small JSON object). */
  async function refused(u: string, status: number, reason?: string) {
    const res = await fetch(u);
    const text = await res.text();
    assert.equal(res.status, status, u);
    assert.ok(!text.includes("pelican") && !text.includes("Customer:"), "no content bytes in a refusal");
    const body = JSON.parse(text);
    if (reason) assert.equal(body.error.details.reason, reason);
    return body;
  }

  test("a valid URL returns the exact bytes with content type and length", async () => {
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "text/plain; charset=utf-8");
    assert.equal(res.headers.get("content-length"), String(Buffer.byteLength(secretText)));
    assert.equal(await res.text(), secretText);
  });

  test("ETag and Last-Modified: If-None-Match gets a 304, an If-Range for other bytes the whole blob", async () => {
    const id = new URL(url).pathname.split("/").pop()!;
    const res = await fetch(url);
    await res.arrayBuffer();
    assert.equal(res.headers.get("etag"), `"${id}"`);
    const modified = res.headers.get("last-modified")!;
    assert.ok(Math.abs(Date.parse(modified) - Date.now()) < 86_400_000, modified);
    for (const method of ["GET", "HEAD"]) {
      const fresh = await fetch(url, { method, headers: { "if-none-match": `"${id}"` } });
      assert.equal(fresh.status, 304, method);
      assert.equal(fresh.headers.get("etag"), `"${id}"`);
      assert.equal(await fresh.text(), "");
    }
    const stale = await fetch(url, { headers: { "if-none-match": '"blb_something_else_entirely"' } });
    assert.equal(stale.status, 200);
    assert.equal(await stale.text(), secretText);

    const ranged = (ifRange: string) => fetch(url, { headers: { range: "bytes=0-9", "if-range": ifRange } });
    for (const same of [`"${id}"`, modified]) {
      const r = await ranged(same);
      assert.equal(r.status, 206, same);
      assert.equal(await r.text(), secretText.slice(0, 10));
    }
    const lastYear = new Date(Date.parse(modified) - 365 * 86_400_000).toUTCString();
    for (const other of ['"some-old-etag"', `W/"${id}"`, lastYear]) {
      const r = await ranged(other);
      assert.equal(r.status, 200, other);
      assert.equal(r.headers.get("content-range"), null);
      assert.equal(await r.text(), secretText, "the whole blob");
    }
  });

  test("tampered signature, extended or malformed expiry: 403 and no bytes", async () => {
    const u = new URL(url);
    const sig = u.searchParams.get("signature")!;
    const exp = u.searchParams.get("expires")!;
    const withQ = (e: string | null, s: string | null) => {
      const v = new URL(url);
      v.search = "";
      if (e !== null) v.searchParams.set("expires", e);
      if (s !== null) v.searchParams.set("signature", s);
      return v.toString();
    };
    await refused(withQ(exp, (sig[0] === "A" ? "B" : "A") + sig.slice(1)), 403, "bad_signature");
    await refused(
      withQ(exp, sig.slice(0, 20) + (sig[20] === "x" ? "y" : "x") + sig.slice(21)),
      403,
      "bad_signature",
    );
    await refused(withQ(String(Number(exp) + 3600), sig), 403, "bad_signature");
    await refused(withQ(`${exp}0`, sig), 403, "bad_signature");
    await refused(withQ(`0${exp}`, sig), 403, "malformed");
    await refused(withQ("1e12", sig), 403, "malformed");
    await refused(withQ("soon", sig), 403, "malformed");
    await refused(withQ(null, sig), 403, "malformed");
    await refused(withQ(exp, null), 403, "malformed");
    await refused(withQ(null, null), 403, "malformed");
    // No API key makes a bad URL good, and none is needed for a good one.
    const res = await fetch(withQ("soon", sig), { headers: { authorization: `Bearer ${srv.apiKey}` } });
    assert.equal(res.status, 403);
  });

  test("an expired URL is 403; an unknown id with a valid signature is 404", async () => {
    const key = signingKeyOf(join(dir.path, "klen.db"));
    const id = new URL(url).pathname.split("/").pop()!;
    const past = Math.floor(Date.now() / 1000) - 1;
    await refused(onServer(srv.url, blobUrl("http://x", key, id, past)), 403, "expired");
    const future = Math.floor(Date.now() / 1000) + 600;
    assert.equal((await fetch(onServer(srv.url, blobUrl("http://x", key, id, future)))).status, 200);
    const body = await refused(onServer(srv.url, blobUrl("http://x", key, newBlobId(), future)), 404);
    assert.equal(body.error.code, "not_found");
    // An unknown id without a valid signature is a 403, like any other: no probing for ids.
    await refused(`${srv.url}/v1/blobs/${newBlobId()}?expires=${future}&signature=${"A".repeat(43)}`, 403);
  });

  test("the signing key is shared across restarts: an old URL still works", async () => {
    await srv.kill();
    srv = await spawnServer({ dataDir: dir.path, env: { KLEN_INLINE_LIMIT: "4KiB" } });
    url = onServer(srv.url, url);
    const res = await waitFor("blob after restart", async () => {
      const r = await fetch(url);
      return r.status === 200 ? r : undefined;
    });
    assert.equal(await res.text(), secretText);
    const files = readdirSync(join(dir.path, "blobs")).filter((f) => f.startsWith("blb_"));
    assert.equal(files.length, 1);
  });

  test("with KLEN_ENCRYPTION_KEY turned on the signing key is sealed; old URLs work, none past the TTL", async () => {
    const dbFile = join(dir.path, "klen.db");
    const clearKey = signingKeyOf(dbFile);
    await srv.kill();
    srv = await spawnServer({
      dataDir: dir.path,
      env: { KLEN_INLINE_LIMIT: "4KiB", KLEN_ENCRYPTION_KEY: "a-test-encryption-key-0123456789" },
    });
    const raw = new BetterSqlite3(dbFile, { readonly: true });
    const stored = raw.prepare("SELECT value FROM settings WHERE name = 'blob_signing_key'").get() as {
      value: string;
    };
    raw.close();
    assert.match(stored.value, /^enc1:/, "a copy of the database no longer holds the key in clear");
    url = onServer(srv.url, url);
    assert.equal(await (await fetch(url)).text(), secretText, "the same key, so old URLs still work");
    // Whoever still has the key from an older copy cannot make a URL that outlives KLEN_URL_TTL.
    const id = new URL(url).pathname.split("/").pop()!;
    const inTtl = Math.floor(Date.now() / 1000) + 600;
    assert.equal((await fetch(onServer(srv.url, blobUrl("http://x", clearKey, id, inTtl)))).status, 200);
    const beyond = Math.floor(Date.now() / 1000) + 30 * 86_400;
    await refused(onServer(srv.url, blobUrl("http://x", clearKey, id, beyond)), 403, "bad_signature");
  });
});
