import assert from "node:assert/strict";
import { test } from "node:test";
import {
  MAX_PREVIOUS_SECRETS,
  previousSecrets,
  previousSecretsExpireAt,
  rotatedOut,
} from "../src/endpoints/secrets.js";

interface Row {
  secret: string;
  previous_secrets: string | null;
  previous_secret: string | null;
  previous_secret_expires_at: number | null;
}
const none = { previous_secrets: null, previous_secret: null, previous_secret_expires_at: null };

test("each rotation keeps the secrets rotated out before it until their own grace ends", () => {
  let e: Row = { ...none, secret: "s1" };
  e = { ...e, ...rotatedOut(e, 1_000, 100), secret: "s2" }; // s1 until 101,000
  e = { ...e, ...rotatedOut(e, 2_000, 10), secret: "s3" }; // s2 until 12,000
  assert.deepEqual(
    previousSecrets(e, 3_000).map((p) => p.secret),
    ["s2", "s1"],
  );
  assert.equal(previousSecretsExpireAt(e, 3_000), 101_000);
  assert.deepEqual(
    previousSecrets(e, 12_000).map((p) => p.secret),
    ["s1"],
    "s2's grace ended first",
  );
  assert.deepEqual(previousSecrets(e, 101_000), []);
  assert.equal(previousSecretsExpireAt(e, 101_000), undefined);
});

test("a rotation with no grace drops every rotated-out secret", () => {
  let e: Row = { ...none, secret: "s1" };
  e = { ...e, ...rotatedOut(e, 1_000, 100), secret: "s2" };
  assert.deepEqual(rotatedOut(e, 2_000, 0), none);
});

test("at most MAX_PREVIOUS_SECRETS sign beside the current one, the newest kept", () => {
  let e: Row = { ...none, secret: "s0" };
  for (let i = 1; i <= MAX_PREVIOUS_SECRETS + 2; i++)
    e = { ...e, ...rotatedOut(e, i, 1_000), secret: `s${i}` };
  const kept = previousSecrets(e, 100).map((p) => p.secret);
  assert.equal(kept.length, MAX_PREVIOUS_SECRETS);
  assert.equal(kept[0], `s${MAX_PREVIOUS_SECRETS + 1}`);
});

test("a previous secret written before migration 7 still signs, and is carried into the list", () => {
  const legacy = {
    previous_secrets: null,
    previous_secret: "old",
    previous_secret_expires_at: 50_000,
    secret: "cur",
  };
  assert.deepEqual(previousSecrets(legacy, 1_000), [{ secret: "old", expires_at: 50_000 }]);
  const next = rotatedOut(legacy, 2_000, 10);
  assert.equal(next.previous_secret, "cur", "the newest is also where code before migration 7 reads it");
  assert.deepEqual(
    previousSecrets(next, 3_000).map((p) => p.secret),
    ["cur", "old"],
  );
  assert.deepEqual(previousSecrets(legacy, 50_000), [], "expired at its time");
});
