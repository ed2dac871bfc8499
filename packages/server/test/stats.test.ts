import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, describe, test } from "node:test";
import { openStore } from "../src/storage/store.js";
import { apiClient, runCall, setupAccount } from "./helpers/api.js";
import { backends } from "./helpers/backends.js";
import { stopPostgres } from "./helpers/postgres.js";
import { startReceiver } from "./helpers/receiver.js";
import { CLI, spawnServer } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

// GET /v1/stats/deliveries aggregates in SQL (window functions, integer bucket arithmetic); these
// tests recompute the same figures in JavaScript from the attempts the API lists, on real
// deliveries, and require an exact match on both backends.

after(() => stopPostgres());

interface Attempt {
  started_at: string;
  status_code: number | null;
  duration_ms: number;
  error: string | null;
}

/** Nearest-rank percentile: the value at rank ceil(p·n) of the sorted durations. */
function nearestRank(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  return sorted[Math.ceil((p * sorted.length) / 100) - 1]!;
}

function expected(attempts: Attempt[]) {
  // A lease_expired attempt's duration is its lease, not a response time: failed, not ranked.
  const durations = attempts
    .filter((a) => a.error !== "lease_expired")
    .map((a) => a.duration_ms)
    .sort((x, y) => x - y);
  const ok = attempts.filter((a) => a.error === null && a.status_code !== null && a.status_code < 300).length;
  return {
    succeeded: ok,
    failed: attempts.length - ok,
    p50_ms: nearestRank(durations, 50),
    p95_ms: nearestRank(durations, 95),
  };
}

for (const backend of backends()) {
  describe(`delivery stats (${backend.name})`, () => {
    test("per-bucket and total counts and percentiles equal those computed from the attempt log", async () => {
      const db = await backend.fresh();
      const server = await spawnServer({ dataDir: db.dataDir, env: { KLEN_DATABASE_URL: db.databaseUrl } });
      const good = await startReceiver();
      const bad = await startReceiver({ respond: () => 500 });
      try {
        const api = server.api;
        const { agentId, endpoint } = await setupAccount(api, { endpointUrl: good.url });
        const failing = await api.post("/v1/endpoints", { url: bad.url, event_types: ["call.ended"] });
        assert.equal(failing.status, 201);
        await runCall(api, agentId);
        await runCall(api, agentId, "+15557654321");
        // 2 calls × 4 events to the good endpoint, 2 call.ended to the failing one (4 attempts each).
        type Listed = { id: string; status: string; endpoint_id: string; attempts: Attempt[] };
        const finished = await waitFor("every delivery finished", async () => {
          const r = await api.get("/v1/deliveries?limit=100");
          const all = r.body.data as Listed[];
          return all.length === 10 && all.every((d) => d.status !== "pending") ? all : undefined;
        });
        // A worker killed mid-attempt: its takeover logged the lost attempt with the lease's length.
        const lostOn = finished.find((d) => d.endpoint_id === endpoint.id)!;
        const store = await openStore(db.databaseUrl);
        await store.db
          .insertInto("attempts")
          .values({
            delivery_id: lostOn.id,
            number: 9,
            started_at: Date.parse(lostOn.attempts[0]!.started_at),
            url: good.url,
            request_headers: "{}",
            status_code: null,
            response_body: null,
            duration_ms: 45_000,
            error: "lease_expired: its process stopped",
          })
          .execute();
        await store.close();
        const deliveries = (await api.get("/v1/deliveries?limit=100")).body.data as Listed[];
        const attempts = deliveries.flatMap((d) => d.attempts);
        const badAttempts = deliveries
          .filter((d) => d.endpoint_id === failing.body.id)
          .flatMap((d) => d.attempts);
        assert.equal(badAttempts.length, 8);

        const times = attempts.map((a) => Date.parse(a.started_at));
        const since = Math.floor(Math.min(...times) / 1000) * 1000 - 3000;
        const until = Math.ceil((Math.max(...times) + 1) / 1000) * 1000 + 2000;
        const q = `since=${new Date(since).toISOString()}&until=${new Date(until).toISOString()}`;
        const r = await api.get(`/v1/stats/deliveries?${q}&bucket=1s`);
        assert.equal(r.status, 200, JSON.stringify(r.body));
        assert.equal(r.body.bucket_seconds, 1);
        assert.equal(r.body.since, new Date(since).toISOString());
        assert.deepEqual(r.body.totals, expected(attempts));
        assert.equal(r.body.totals.failed, 9);
        assert.equal(r.body.totals.succeeded, 8);
        assert.ok(r.body.totals.p95_ms < 45_000, "the lease is not a response time");

        // Every bucket is present, in order; each one matches the attempts that started in it.
        assert.equal(r.body.buckets.length, (until - since) / 1000);
        r.body.buckets.forEach((b: any, i: number) => {
          const start = since + i * 1000;
          assert.equal(b.start, new Date(start).toISOString());
          const inBucket = attempts.filter((a) => {
            const t = Date.parse(a.started_at);
            return t >= start && t < start + 1000;
          });
          assert.deepEqual({ ...b, start: undefined }, { ...expected(inBucket), start: undefined }, b.start);
        });

        // One endpoint only.
        const one = await api.get(`/v1/stats/deliveries?${q}&bucket=1m&endpoint_id=${failing.body.id}`);
        assert.equal(one.status, 200);
        assert.deepEqual(one.body.totals, expected(badAttempts));
        const other = await api.get(`/v1/stats/deliveries?${q}&bucket=1m&endpoint_id=${endpoint.id}`);
        assert.deepEqual(other.body.totals.failed, 1, "the lost attempt");

        // A range without attempts: zero counts, null percentiles.
        const empty = await api.get(
          `/v1/stats/deliveries?since=2020-01-01T00:00:00Z&until=2020-01-01T01:00:00Z&bucket=30m`,
        );
        assert.deepEqual(empty.body.totals, { succeeded: 0, failed: 0, p50_ms: null, p95_ms: null });
        assert.deepEqual(
          empty.body.buckets.map((b: any) => b.start),
          ["2020-01-01T00:00:00.000Z", "2020-01-01T00:30:00.000Z"],
        );

        // Another account sees none of this account's attempts.
        const created = JSON.parse(
          execFileSync(process.execPath, [CLI, "accounts", "create", "--name", "Other", "--json"], {
            env: { ...process.env, KLEN_DATABASE_URL: db.databaseUrl, KLEN_DATA_DIR: db.dataDir },
            encoding: "utf8",
          }),
        );
        const otherApi = apiClient(server.url, created.api_key);
        const theirs = await otherApi.get(`/v1/stats/deliveries?${q}&bucket=1m`);
        assert.equal(theirs.status, 200);
        assert.deepEqual(theirs.body.totals, { succeeded: 0, failed: 0, p50_ms: null, p95_ms: null });
      } finally {
        await server.kill();
        await good.close();
        await bad.close();
        await db.cleanup();
      }
    });
  });
}

describe("delivery stats input", () => {
  test("bad ranges and buckets are 400s naming the field; no key is 401", async () => {
    const db = await backends()[0]!.fresh();
    const server = await spawnServer({ dataDir: db.dataDir, env: { KLEN_DATABASE_URL: db.databaseUrl } });
    try {
      const api = server.api;
      const cases: Array<[string, string]> = [
        ["bucket=abc", "bucket"],
        ["bucket=500ms", "bucket"],
        ["since=2026-01-01T00:00:00Z&bucket=1s", "bucket"], // far more than 1000 buckets
        ["since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", "since"],
        ["since=yesterday", "since"],
      ];
      for (const [query, field] of cases) {
        const r = await api.get(`/v1/stats/deliveries?${query}`);
        assert.equal(r.status, 400, query);
        assert.equal(r.body.error.details?.field, field, `${query}: ${JSON.stringify(r.body)}`);
      }
      // The hint names only buckets it accepts (whole seconds).
      const hint = (await api.get("/v1/stats/deliveries?bucket=1hour")).body.error.message;
      assert.equal(hint, 'not a duration: "1hour" (use e.g. 60s, 5m, 1h, 1d)');
      const unknown = await api.get("/v1/stats/deliveries?colour=red");
      assert.equal(unknown.status, 400);
      const defaults = await api.get("/v1/stats/deliveries");
      assert.equal(defaults.status, 200);
      assert.equal(defaults.body.bucket_seconds, 3600);
      assert.equal(defaults.body.buckets.length, 24);
      const anonymous = await fetch(`${server.url}/v1/stats/deliveries`);
      assert.equal(anonymous.status, 401);
    } finally {
      await server.kill();
      await db.cleanup();
    }
  });
});
