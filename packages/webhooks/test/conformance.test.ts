/**
 * Every case of the shared Standard Webhooks conformance vectors, through `verifySignature`
 * (sync, node:crypto) and `verifySignatureAsync` (WebCrypto), and the key-parsing cases
 * through `new Webhook(key)`.
 */
import * as assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, test } from "node:test";
import { Webhook, WebhookVerificationError } from "../src/index.js";
import { repoRoot, sharedDir } from "./helpers.js";

interface VerifyVector {
  name: string;
  category: string;
  scheme: "v1" | "v1a";
  secret: string | null;
  public_key: string | null;
  signing_key: string | null;
  msg_id: string;
  timestamp: string;
  payload: string | null;
  payload_repeat?: { char: string; count: number };
  expected_signature: string | null;
  expected_signature_is_literal: boolean;
  headers: Record<string, string>;
  now: number | null;
  should_verify: boolean;
  expected_error: string | null;
  divergent: boolean;
}
interface KeyVector {
  name: string;
  category: "key_parsing";
  key: string;
  should_parse: boolean;
}

// The shared vectors beside the repository when they are there (CI), else the copy in
// test/vectors/, so that a clone on its own runs them too.
const SHARED_VECTORS = resolve(sharedDir, "conformance/standard-webhooks-vectors.json");
const vectors = JSON.parse(
  readFileSync(
    existsSync(SHARED_VECTORS)
      ? SHARED_VECTORS
      : resolve(repoRoot, "packages/webhooks/test/vectors/standard-webhooks-vectors.json"),
    "utf8",
  ),
) as (VerifyVector | KeyVector)[];
const keyVectors = vectors.filter((v): v is KeyVector => v.category === "key_parsing");
const verifyVectors = vectors.filter((v): v is VerifyVector => v.category !== "key_parsing");

function payloadOf(v: VerifyVector): string {
  if (v.payload !== null) return v.payload;
  assert.ok(v.payload_repeat, `${v.name}: payload is null without payload_repeat`);
  return v.payload_repeat.char.repeat(v.payload_repeat.count);
}

/** The verifier's key: the HMAC secret for v1, the public key for v1a. */
function verifierKey(v: VerifyVector): string {
  const key = v.scheme === "v1a" ? v.public_key : v.secret;
  assert.ok(key, `${v.name}: no verifier key`);
  return key;
}

function outcome(run: () => void): string {
  try {
    run();
    return "verified";
  } catch (err) {
    if (err instanceof WebhookVerificationError) return err.code;
    throw err;
  }
}

async function outcomeAsync(run: () => Promise<void>): Promise<string> {
  try {
    await run();
    return "verified";
  } catch (err) {
    if (err instanceof WebhookVerificationError) return err.code;
    throw err;
  }
}

function expected(v: VerifyVector): string {
  return v.should_verify ? "verified" : (v.expected_error ?? "an error");
}

test("the vector file has both kinds of cases", () => {
  assert.ok(verifyVectors.length >= 100, `only ${verifyVectors.length} verify vectors`);
  assert.ok(keyVectors.length >= 10, `only ${keyVectors.length} key vectors`);
});

describe("conformance: verifySignature", () => {
  for (const v of verifyVectors) {
    test(`${v.name}${v.divergent ? " (divergent)" : ""}`, async () => {
      const wh = new Webhook(verifierKey(v));
      const body = payloadOf(v);
      const opts = v.now === null ? {} : { now: v.now };
      assert.equal(
        outcome(() => wh.verifySignature(body, v.headers, opts)),
        expected(v),
        "sync",
      );
      assert.equal(
        await outcomeAsync(() => wh.verifySignatureAsync(body, v.headers, opts)),
        expected(v),
        "async",
      );
      // The same case with the body as bytes and the headers as a Fetch Headers.
      const bytes = new TextEncoder().encode(body);
      assert.equal(
        outcome(() => wh.verifySignature(bytes, new Headers(v.headers), opts)),
        expected(v),
        "Headers",
      );
    });
  }
});

// This vector pairs svix's signing key with Signet's public key on purpose; its
// expected_signature is not made with the signing key it lists.
const MISMATCHED_KEY_PAIRS = new Set(["v1a-wrong-public-key"]);

describe("conformance: signing reproduces expected_signature", () => {
  for (const v of verifyVectors) {
    const signer = v.scheme === "v1a" ? v.signing_key : v.secret;
    if (!signer || !v.expected_signature || MISMATCHED_KEY_PAIRS.has(v.name)) continue;
    test(v.name, async () => {
      const wh = new Webhook(signer);
      const ts = Number(v.timestamp);
      assert.equal(wh.sign(v.msg_id, ts, payloadOf(v)), v.expected_signature);
      assert.equal(await wh.signAsync(v.msg_id, ts, payloadOf(v)), v.expected_signature);
    });
  }
});

describe("conformance: new Webhook(key)", () => {
  for (const v of keyVectors) {
    test(`${v.name} ${v.should_parse ? "parses" : "is rejected"}`, () => {
      let parsed = true;
      try {
        new Webhook(v.key);
      } catch {
        parsed = false;
      }
      assert.equal(parsed, v.should_parse);
    });
  }
});
