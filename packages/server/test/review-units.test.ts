import assert from "node:assert/strict";
import { test } from "node:test";
import Fastify, { type FastifyRequest } from "fastify";
import { Authenticator, RateLimiter } from "../src/api/auth.js";
import { installErrorHandler } from "../src/api/errors.js";
import { canonicalJson } from "../src/api/idempotency.js";
import { ConfigError, loadConfig } from "../src/config.js";
import { floorPlan, spareForFailing } from "../src/delivery/dispatcher.js";
import { ApiError } from "../src/errors.js";
import { isRefusedContent } from "../src/storage/store.js";
import { idFloor, newId } from "../src/util/ids.js";
import { parseIso } from "../src/util/time.js";

/** Adversarial review: pure pieces whose edge cases the HTTP tests cannot reach cheaply. */

test("a rate below one request per second still lets requests through (KLEN_RATE_LIMIT=0.5)", () => {
  const limiter = new RateLimiter(0.5);
  const t0 = 1_000_000;
  assert.equal(limiter.take("k1", t0), 0, "the first request passes");
  const wait = limiter.take("k1", t0);
  assert.ok(wait >= 1, "the second at once waits");
  // Two seconds later the bucket has refilled one whole token.
  assert.equal(limiter.take("k1", t0 + 2_000), 0);
  assert.ok(limiter.take("k1", t0 + 2_000) > 0);
  // Rates of 1/s and above keep their one-second burst.
  const ten = new RateLimiter(10);
  let passed = 0;
  for (let i = 0; i < 20; i++) if (ten.take("k7", t0) === 0) passed++;
  assert.equal(passed, 10);
});

test("PORT takes decimal digits only", () => {
  for (const bad of ["0x50", "1e3", "80.0", "-1", "65536", " 80"]) {
    assert.throws(
      () => loadConfig({ PORT: bad }),
      (e: unknown) => e instanceof ConfigError && e.variable === "PORT",
      bad,
    );
  }
  assert.equal(loadConfig({ PORT: "0" }).port, 0);
  assert.equal(loadConfig({ PORT: "8081" }).port, 8081);
});

test("parseIso refuses impossible calendar fields and instants without a four-digit UTC year", () => {
  for (const bad of [
    "2020-02-30T00:00:00Z",
    "2021-02-29T00:00:00Z",
    "2020-04-31T00:00:00Z",
    "2020-00-10T00:00:00Z",
    "2020-01-01T24:00:00Z",
    "2020-01-01T23:60:00Z",
    "2020-01-01T23:59:60Z",
    "2020-01-01T00:00:00+24:00",
    "2020-01-01T00:00:00+05:60",
    "1969-12-31T23:59:59Z",
    "9999-12-31T23:59:59-00:01",
    "2020-01-01",
    "yesterday",
  ]) {
    assert.equal(parseIso(bad), undefined, bad);
  }
  assert.equal(parseIso("2020-02-29T12:00:00Z"), Date.UTC(2020, 1, 29, 12));
  assert.equal(parseIso("2025-04-23T14:30:45+02:00"), Date.UTC(2025, 3, 23, 12, 30, 45));
  assert.equal(parseIso("2025-04-23T14:30Z"), Date.UTC(2025, 3, 23, 14, 30));
  assert.equal(parseIso("2025-04-23T14:30:45.123456Z"), Date.UTC(2025, 3, 23, 14, 30, 45, 123));
  assert.equal(parseIso("1970-01-01T00:00:00Z"), 0);
  assert.equal(parseIso("9999-12-31T23:59:59Z"), Date.UTC(9999, 11, 31, 23, 59, 59));
});

test("ids made in the same millisecond sort in the order they were made; time still leads", () => {
  const ms = 1_700_000_000_000;
  const same = Array.from({ length: 1_000 }, () => newId("evt", ms));
  assert.equal(new Set(same).size, same.length, "all distinct");
  assert.deepEqual([...same].sort(), same, "made order is sort order");
  // A later millisecond sorts after all of them whatever its random part; an earlier one before.
  const later = newId("evt", ms + 1);
  const earlier = newId("evt", ms - 1);
  assert.ok(same.every((id) => id < later && id > earlier));
  assert.match(later, /^evt_[0-9a-hjkmnp-tv-z]{26}$/);
});

test("idFloor(ms) sorts above every id made before ms and below every id made at or after it", () => {
  const ms = 1_700_000_000_000;
  const floor = idFloor("dlv", ms);
  for (const t of [0, 1, ms - 86_400_000, ms - 1]) assert.ok(newId("dlv", t) < floor, `made at ${t}`);
  for (const t of [ms, ms + 1, ms + 86_400_000]) assert.ok(newId("dlv", t) > floor, `made at ${t}`);
});

test("failing endpoints borrow slots only while the others leave half of them free, and together at most their share", () => {
  const O = { concurrency: 256, failingShare: 64 };
  const failing = new Set(["dead1", "dead2"]);
  // What each endpoint holds; the process has their sum in flight.
  const lend = (held: Record<string, number>) =>
    spareForFailing(
      new Map(Object.entries(held)),
      failing,
      Object.values(held).reduce((a, b) => a + b, 0),
      O,
    );
  const spare = (held: Record<string, number>) => lend(held).spare;
  const busy = (held: Record<string, number>) => lend(held).busy;
  // Idle apart from the two failing endpoints' 2 + 2: 60 more may be lent out.
  assert.equal(spare({ dead1: 2, dead2: 2 }), 60);
  // Healthy endpoints hold 127 of 256: still under half, the failing ones may borrow.
  assert.equal(spare({ ok: 100, ok2: 27, dead1: 2 }), 62);
  // Healthy endpoints hold half: nothing is lent, whatever is left of the share; the process is busy.
  assert.equal(spare({ ok: 100, ok2: 28, dead1: 2 }), 0);
  assert.equal(busy({ ok: 100, ok2: 28, dead1: 2 }), true);
  assert.equal(busy({ ok: 100, ok2: 27, dead1: 60 }), false);
  // The failing endpoints hold their share already (borrowed earlier): nothing more.
  assert.equal(spare({ dead1: 40, dead2: 30 }), 0);
  assert.equal(spare({ dead1: 40, dead2: 24 }), 0);
  assert.equal(spare({ dead1: 40, dead2: 23, ok: 5 }), 1);
  // Nothing in flight at all.
  assert.equal(spare({}), 64);
});

test("a claim starts at the floor only while every endpoint the floor was found without is still left out", () => {
  const failing = new Set(["dead1", "dead2"]);
  const floor = { value: 50_000, at: 60_000, excluded: new Set(["dead1", "dead2"]), fullAt: 30_000 };
  const O = { floorMs: 1_000, floorSlackMs: 10_000, fullFloorMs: 60_000 };
  // No failing endpoint left out: from the front, no floor needed (healthy ones at their cap come and go).
  assert.deepEqual(floorPlan(floor, ["busy"], failing, 60_100, O), { kind: "none" });
  assert.deepEqual(floorPlan(undefined, [], failing, 60_100, O), { kind: "none" });
  // No floor yet: look it up from the front without the failing endpoints left out (not "busy").
  assert.deepEqual(floorPlan(undefined, ["dead1", "busy"], failing, 60_100, O), {
    kind: "lookup",
    failing: ["dead1"],
    from: 0,
  });
  // Both still left out (and others besides): from the floor.
  assert.deepEqual(floorPlan(floor, ["dead2", "busy", "dead1"], failing, 60_999, O), {
    kind: "use",
    from: 50_000,
  });
  // dead2 is served this time: rows before the floor may be its; from the front, floor kept.
  assert.deepEqual(floorPlan(floor, ["dead1"], failing, 60_100, O), { kind: "front" });
  // dead2 recovered (no longer failing) but sits at its cap: still left out, the floor holds.
  assert.deepEqual(floorPlan(floor, ["dead1", "dead2"], new Set(["dead1"]), 60_100, O), {
    kind: "use",
    from: 50_000,
  });
});

test("a floor looked up again builds on the old one, but not across an endpoint served since or for ever", () => {
  const failing = new Set(["dead1", "dead2", "dead3"]);
  const floor = { value: 50_000, at: 60_000, excluded: new Set(["dead1", "dead2"]), fullAt: 30_000 };
  const O = { floorMs: 1_000, floorSlackMs: 10_000, fullFloorMs: 60_000 };
  // Trusted for floorMs; then looked up from the slack before it, not over the dead backlog again.
  assert.deepEqual(floorPlan(floor, ["dead1", "dead2"], failing, 61_000, O), {
    kind: "lookup",
    failing: ["dead1", "dead2"],
    from: 40_000,
  });
  // New work made it stale (Dispatcher.wake): the same, at once.
  const stale = { ...floor, at: Number.NEGATIVE_INFINITY };
  assert.deepEqual(floorPlan(stale, ["dead2", "dead1"], failing, 60_001, O), {
    kind: "lookup",
    failing: ["dead2", "dead1"],
    from: 40_000,
  });
  // More endpoints left out than the floor was found without: still builds on it.
  assert.deepEqual(floorPlan(stale, ["dead1", "dead2", "dead3"], failing, 60_001, O).kind, "lookup");
  assert.equal(
    (floorPlan(stale, ["dead1", "dead2", "dead3"], failing, 60_001, O) as { from: number }).from,
    40_000,
  );
  // dead2 no longer left out: its rows may lie before the floor, so from the front.
  assert.deepEqual(floorPlan(stale, ["dead1"], failing, 60_001, O), {
    kind: "lookup",
    failing: ["dead1"],
    from: 0,
  });
  // The last lookup from the front was fullFloorMs ago: from the front all the same.
  assert.deepEqual(floorPlan(stale, ["dead1", "dead2"], failing, 90_000, O), {
    kind: "lookup",
    failing: ["dead1", "dead2"],
    from: 0,
  });
});

test("only a write refused for its content sends outcomes one by one, never a database that refuses every write", () => {
  const refused = (code: string) => isRefusedContent(Object.assign(new Error(code), { code }));
  for (const code of [
    "22P05",
    "22021",
    "23505",
    "23514",
    "SQLITE_CONSTRAINT_TRIGGER",
    "SQLITE_CONSTRAINT_CHECK",
    "SQLITE_TOOBIG",
  ])
    assert.equal(refused(code), true, code);
  // Read-only standby, disk full, serialization failure, deadlock, statement timeout, lock wait,
  // connection trouble, a busy or read-only SQLite file: every write would fail alike.
  for (const code of [
    "25006",
    "53100",
    "40001",
    "40P01",
    "57014",
    "55P03",
    "08006",
    "ECONNRESET",
    "SQLITE_BUSY",
    "SQLITE_FULL",
    "SQLITE_READONLY",
  ])
    assert.equal(refused(code), false, code);
  assert.equal(isRefusedContent(new Error("no code")), false);
});

test("the error handler keeps for an Idempotency-Key only refusals of what the client sent", async () => {
  const kept: string[] = [];
  const app = Fastify();
  installErrorHandler(app, async (req, refusal) => {
    kept.push(`${req.url} ${refusal.status}`);
    return undefined;
  });
  app.post("/ours", async () => {
    throw new ApiError(409, "invalid_transition", "no");
  });
  app.post("/schema", { schema: { body: { type: "object", required: ["name"] } } }, async () => ({}));
  // What Fastify reports for a body that never fully arrived (aborted, or shorter than its
  // content-length): a 400 nobody receives, about a request that was never made whole.
  app.post("/aborted", async () => {
    throw Object.assign(new Error("Request body size did not match Content-Length"), {
      statusCode: 400,
      code: "FST_ERR_CTP_INVALID_CONTENT_LENGTH",
    });
  });
  app.post("/cut-off", async () => {
    throw Object.assign(new Error("aborted"), { statusCode: 400 });
  });
  for (const url of ["/ours", "/schema", "/aborted", "/cut-off"]) {
    const r = await app.inject({ method: "POST", url, payload: {} });
    assert.ok(r.statusCode >= 400 && r.statusCode < 500, `${url}: ${r.statusCode}`);
  }
  assert.deepEqual(kept, ["/ours 409", "/schema 400"]);
  await app.close();
});

test("canonicalJson sorts every object's fields, keeps arrays in order, and drops nothing else", () => {
  const a = JSON.parse('{"b":1,"a":{"y":[3,{"d":null,"c":"\\u00e9"}],"x":true},"e":"t"}');
  const b = JSON.parse('{"e":"t","a":{"x":true,"y":[3,{"c":"\\u00e9","d":null}]},"b":1}');
  assert.equal(canonicalJson(a), canonicalJson(b));
  assert.equal(canonicalJson(a), '{"a":{"x":true,"y":[3,{"c":"\u00e9","d":null}]},"b":1,"e":"t"}');
  assert.deepEqual(JSON.parse(canonicalJson(a)), a);
  assert.notEqual(canonicalJson([1, 2]), canonicalJson([2, 1]));
  assert.notEqual(canonicalJson({ a: "1" }), canonicalJson({ a: 1 }));
  assert.equal(canonicalJson({}), "{}");
});

test("a key revoked while its lookup runs is not kept: that request and the next are refused", async () => {
  const account = { id: 7, name: "Acme", auto_summary: false };
  let deleted = false;
  let lookups = 0;
  const auth: Authenticator = new Authenticator(undefined as never, 5_000, async () => {
    lookups++;
    const seen = deleted ? undefined : account; // read before the revocation committed
    if (lookups === 1) {
      deleted = true;
      auth.forget(account.id); // the revoking request finishes meanwhile
    }
    return seen;
  });
  const req = { headers: { authorization: "Bearer klen_key_being_revoked" } } as FastifyRequest;
  await assert.rejects(auth.authenticate(req), { status: 401 });
  await assert.rejects(auth.authenticate(req), { status: 401 });
  assert.equal(lookups, 3, "read again after the revocation, then not served from a cache");
  // A key nobody revoked is looked up once and then served from the cache.
  const other = new Authenticator(undefined as never, 5_000, async () => {
    lookups++;
    return account;
  });
  const ok = { headers: { authorization: "Bearer klen_key_kept" } } as FastifyRequest;
  assert.equal((await other.authenticate(ok)).id, 7);
  assert.equal((await other.authenticate(ok)).id, 7);
  assert.equal(lookups, 4);
});
