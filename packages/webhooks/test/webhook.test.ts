/** Webhook: header shapes, clock handling, rotation, v1a, typed events, misuse. */
import * as assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Webhook, WebhookKeyError, WebhookVerificationError } from "../src/index.js";
import { SECRET, seedBody, seedEvent } from "./helpers.js";

const BODY = '{"test": 2432232314}';
const ID = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const TS = 1614265330;
const SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
const headers = { "webhook-id": ID, "webhook-timestamp": String(TS), "webhook-signature": SIG };

function code(run: () => unknown): string {
  try {
    run();
  } catch (err) {
    if (err instanceof WebhookVerificationError) return err.code;
    throw err;
  }
  return "verified";
}

describe("Webhook", () => {
  const wh = new Webhook(SECRET);

  test("sign matches the reference vector", () => {
    assert.equal(wh.sign(ID, TS, BODY), SIG);
    assert.equal(wh.sign(ID, new Date(TS * 1000), Buffer.from(BODY)), SIG);
  });

  test("headers: plain object in any case, IncomingHttpHeaders arrays, Fetch Headers", () => {
    const now = { now: TS };
    assert.equal(
      code(() =>
        wh.verifySignature(
          BODY,
          { "WEBHOOK-ID": ID, "Webhook-Timestamp": String(TS), "webhook-SIGNATURE": SIG },
          now,
        ),
      ),
      "verified",
    );
    assert.equal(
      code(() => wh.verifySignature(BODY, { ...headers, "webhook-signature": ["v1,bogus", SIG] }, now)),
      "verified",
    );
    assert.equal(
      code(() => wh.verifySignature(BODY, new Headers(headers), now)),
      "verified",
    );
    // Repeated header lines (a proxy split the list): every one is a candidate, the valid one first too.
    assert.equal(
      code(() => wh.verifySignature(BODY, { ...headers, "webhook-signature": [SIG, "v1,bogus"] }, now)),
      "verified",
    );
    assert.equal(
      code(() => wh.verifySignature(BODY, { ...headers, "webhook-signature": `${SIG}, v1,bogus` }, now)),
      "verified",
    );
    const appended = new Headers(headers);
    appended.append("webhook-signature", "v1,bogus");
    assert.equal(
      code(() => wh.verifySignature(BODY, appended, now)),
      "verified",
    );
    assert.equal(
      code(() =>
        wh.verifySignature(BODY, { ...headers, "webhook-signature": ["v1,bogus", "v1,other"] }, now),
      ),
      "no_matching_signature",
    );
    assert.equal(
      code(() => wh.verifySignature(BODY, { ...headers, "webhook-id": undefined }, now)),
      "missing_header",
    );
  });

  test("now: Unix seconds, Date, and 0 is a valid time; bound inclusive both ways", () => {
    assert.equal(
      code(() => wh.verifySignature(BODY, headers, { now: new Date(TS * 1000) })),
      "verified",
    );
    const zero = { ...headers, "webhook-timestamp": "0", "webhook-signature": wh.sign(ID, 0, BODY) };
    assert.equal(
      code(() => wh.verifySignature(BODY, zero, { now: 0 })),
      "verified",
    );
    assert.equal(
      code(() => wh.verifySignature(BODY, zero, { now: 300 })),
      "verified",
    );
    assert.equal(
      code(() => wh.verifySignature(BODY, zero, { now: 301 })),
      "timestamp_too_old",
    );
    assert.equal(
      code(() => wh.verifySignature(BODY, zero, { now: -300 })),
      "verified",
    );
    assert.equal(
      code(() => wh.verifySignature(BODY, zero, { now: -301 })),
      "timestamp_too_new",
    );
    assert.equal(
      code(() => wh.verifySignature(BODY, headers, { now: TS + 10, toleranceSeconds: 10 })),
      "verified",
    );
    assert.equal(
      code(() => wh.verifySignature(BODY, headers, { now: TS + 11, toleranceSeconds: 10 })),
      "timestamp_too_old",
    );
    // Fractional "now" is floored, like the header's whole seconds.
    assert.equal(
      code(() => wh.verifySignature(BODY, headers, { now: TS + 300.9 })),
      "verified",
    );
  });

  test("the default clock is the real one", () => {
    const ts = Math.floor(Date.now() / 1000);
    const h = {
      "webhook-id": "evt_1",
      "webhook-timestamp": String(ts),
      "webhook-signature": wh.sign("evt_1", ts, BODY),
    };
    assert.equal(
      code(() => wh.verifySignature(BODY, h)),
      "verified",
    );
    assert.equal(
      code(() => wh.verifySignature(BODY, headers)),
      "timestamp_too_old",
    );
  });

  test("strict timestamps", () => {
    for (const bad of [
      "1614265330.5",
      "1614265330abc",
      "0x60",
      "1e9",
      "+1614265330",
      "99999999999999999999",
    ]) {
      assert.equal(
        code(() => wh.verifySignature(BODY, { ...headers, "webhook-timestamp": bad }, { now: TS })),
        "invalid_timestamp",
        bad,
      );
    }
  });

  test("rotation: a list of secrets; sign emits one signature per signing key", () => {
    const old = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const both = new Webhook([old, SECRET]);
    const sig = both.sign(ID, TS, BODY);
    assert.equal(sig.split(" ").length, 2);
    assert.equal(
      code(() =>
        new Webhook(old).verifySignature(BODY, { ...headers, "webhook-signature": sig }, { now: TS }),
      ),
      "verified",
    );
    assert.equal(
      code(() => both.verifySignature(BODY, headers, { now: TS })),
      "verified",
    );
    assert.equal(
      code(() => new Webhook([old]).verifySignature(BODY, headers, { now: TS })),
      "no_matching_signature",
    );
  });

  test("v1a: whsk_ signs, whpk_ and whsk_ verify, whpk_ cannot sign; mixed keys", async () => {
    const sk = "whsk_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU=";
    const pk = "whpk_wuzPrKxPfWpJSsXgyg/MEoMGvjs5SjDO4ad6X4ZYqqg=";
    const signer = new Webhook(sk);
    const sig = signer.sign(ID, TS, BODY);
    assert.match(sig, /^v1a,/);
    assert.equal(await signer.signAsync(ID, TS, BODY), sig, "ed25519 is deterministic");
    const h = { ...headers, "webhook-signature": sig };
    assert.equal(
      code(() => new Webhook(pk).verifySignature(BODY, h, { now: TS })),
      "verified",
    );
    assert.equal(
      code(() => signer.verifySignature(BODY, h, { now: TS })),
      "verified",
    );
    await new Webhook(pk).verifySignatureAsync(BODY, h, { now: TS });
    await signer.verifySignatureAsync(BODY, h, { now: TS });
    assert.throws(() => new Webhook(pk).sign(ID, TS, BODY), WebhookKeyError);
    const mixed = new Webhook([SECRET, sk]);
    const both = mixed.sign(ID, TS, BODY);
    assert.match(both, /^v1,\S+ v1a,\S+$/);
    assert.equal(
      code(() =>
        new Webhook(pk).verifySignature(BODY, { ...headers, "webhook-signature": both }, { now: TS }),
      ),
      "verified",
    );
  });

  test("verify returns the typed event, narrowed by event_type", async () => {
    const body = seedBody();
    const h = {
      "webhook-id": "evt_1",
      "webhook-timestamp": String(TS),
      "webhook-signature": wh.sign("evt_1", TS, body),
    };
    const event = wh.verify(body, h, { now: TS });
    assert.deepEqual(event, seedEvent());
    if (event.event_type !== "call.ended") assert.fail("wrong type");
    const duration: number | null = event.call.duration; // compiles only when narrowed
    assert.equal(duration, 267);
    assert.deepEqual(
      await wh.verifyAsync(new TextEncoder().encode(body), new Headers(h), { now: TS }),
      seedEvent(),
    );
  });

  test("a signed body that is not a call event is invalid_body (signature checked first)", () => {
    assert.equal(
      code(() => wh.verify(BODY, headers, { now: TS })),
      "invalid_body",
    );
    const tampered = seedBody().replace("267", "268");
    const h = {
      "webhook-id": "e",
      "webhook-timestamp": String(TS),
      "webhook-signature": wh.sign("e", TS, seedBody()),
    };
    assert.equal(
      code(() => wh.verify(tampered, h, { now: TS })),
      "no_matching_signature",
    );
  });

  test("re-serialised JSON does not verify", () => {
    const body = seedBody();
    const h = {
      "webhook-id": "e",
      "webhook-timestamp": String(TS),
      "webhook-signature": wh.sign("e", TS, body),
    };
    assert.equal(
      code(() => wh.verify(JSON.stringify(JSON.parse(body)), h, { now: TS })),
      "no_matching_signature",
    );
  });

  test("a null header under one spelling does not hide the same header under another", () => {
    const mixed = {
      "webhook-id": null,
      "Webhook-Id": ID,
      "webhook-timestamp": String(TS),
      "webhook-signature": SIG,
    };
    assert.equal(
      code(() => wh.verifySignature(BODY, mixed as never, { now: TS })),
      "verified",
    );
  });

  test("any view of the body's bytes verifies: DataView, a typed array over a slice", () => {
    const bytes = new TextEncoder().encode(`xx${BODY}`);
    const view = new DataView(bytes.buffer, 2, bytes.byteLength - 2);
    assert.equal(
      code(() => wh.verifySignature(view, headers, { now: TS })),
      "verified",
    );
    assert.equal(wh.sign(ID, TS, view), SIG);
    const words = new Uint16Array(new TextEncoder().encode(BODY.length % 2 ? `${BODY} ` : BODY).buffer);
    assert.equal(
      code(() => wh.verifySignature(words, headers, { now: TS })),
      BODY.length % 2 ? "no_matching_signature" : "verified",
    );
  });

  test("a parsed object instead of the raw body is a TypeError naming the fix", () => {
    assert.throws(() => wh.verify(JSON.parse(seedBody()), headers, { now: TS }), /express\.raw/);
  });

  test("toleranceSeconds takes a non-negative number or a string of digits; anything else is a TypeError", () => {
    for (const bad of ["1e3", "", " ", "abc", "-5", true, [600], [], -1, Number.NaN])
      assert.throws(
        () => wh.verifySignature(BODY, headers, { now: TS, toleranceSeconds: bad as never }),
        /`toleranceSeconds` must be a non-negative number/,
        `toleranceSeconds: ${JSON.stringify(bad)}`,
      );
    assert.equal(
      code(() => wh.verifySignature(BODY, headers, { now: TS, toleranceSeconds: 0 })),
      "verified",
    );
    // As an environment variable gives it.
    assert.equal(
      code(() => wh.verifySignature(BODY, headers, { now: TS + 600, toleranceSeconds: "600" })),
      "verified",
    );
    assert.equal(
      code(() => wh.verifySignature(BODY, headers, { now: TS + 601, toleranceSeconds: "600" })),
      "timestamp_too_old",
    );
  });

  test("milliseconds passed as seconds (Date.now()) are a TypeError naming the mistake", async () => {
    const ms = TS * 1000;
    assert.throws(() => wh.sign("e", ms, seedBody()), /timestamp must be Unix seconds.*milliseconds/);
    await assert.rejects(wh.signAsync("e", ms, seedBody()), /milliseconds/);
    assert.throws(
      () => wh.verify(seedBody(), headers, { now: ms }),
      /`now` must be Unix seconds.*milliseconds/,
    );
    // Seconds and Dates are unaffected, 0 included.
    assert.match(wh.sign("e", 0, seedBody()), /^v1,/);
    const h = {
      "webhook-id": "e",
      "webhook-timestamp": String(TS),
      "webhook-signature": wh.sign("e", TS, seedBody()),
    };
    assert.equal(wh.verify(seedBody(), h, { now: new Date(TS * 1000) }).event_type, "call.ended");
  });

  test("keys: errors never print the key", () => {
    try {
      new Webhook("whsec_!!!!secretish");
      assert.fail("accepted");
    } catch (err) {
      assert.ok(err instanceof WebhookKeyError);
      assert.doesNotMatch(err.message, /secretish/);
    }
    assert.throws(() => new Webhook([]), WebhookKeyError);
    // The API key pasted in place of the secret is named as such, still without printing it.
    try {
      new Webhook("klen_sk_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG");
      assert.fail("accepted");
    } catch (err) {
      assert.ok(err instanceof WebhookKeyError);
      assert.match(
        err.message,
        /is an API key, not an endpoint's signing secret: use the endpoint's whsec_ secret/,
      );
      assert.doesNotMatch(err.message, /abcdefg/);
    }
    // A secret pasted with the quotes of a .env file or JSON: said so, still without printing it.
    for (const q of ['"', "'"]) {
      try {
        new Webhook(`${q}whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw${q}`);
        assert.fail("accepted");
      } catch (err) {
        assert.ok(err instanceof WebhookKeyError);
        assert.match(
          err.message,
          new RegExp(
            `^Webhook key "whsec_…" \\(38 chars\\) is wrapped in ${q} quotes: pass the secret without them$`,
          ),
        );
        assert.doesNotMatch(err.message, /MfKQ/);
      }
    }
  });
});
