/**
 * The SDK README's PostgreSQL idempotency store, as printed there, against a real PostgreSQL
 * server: the code users copy is run, not a version of it kept beside the README.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, test } from "node:test";
import { createIdempotency, type IdempotencyStore, IdempotencyTimeoutError } from "@klen/webhooks";
import pg from "pg";
import { startPostgres, stopPostgres } from "./helpers/postgres.js";
import { waitFor } from "./helpers/wait.js";

after(() => stopPostgres());

const README = readFileSync(new URL("../../../webhooks/README.md", import.meta.url), "utf8");

/** The README's `CREATE TABLE` and its `sqlStore`, built over `pool`. */
function readmeStore(pool: pg.Pool): { ddl: string; store: IdempotencyStore } {
  const section = README.slice(README.indexOf("**PostgreSQL**"));
  const ddl = /```sql\n([\s\S]*?)```/.exec(section)?.[1];
  const code = /```ts\n(const sqlStore[\s\S]*?)```/.exec(section)?.[1];
  assert.ok(ddl && code, "the README has the PostgreSQL table and store");
  // The one TypeScript annotation in the block; the rest is plain JavaScript.
  const js = code.replace("const sqlStore: IdempotencyStore =", "const sqlStore =");
  assert.notEqual(js, code, "the store is declared as the README shows");
  const store = new Function("pool", `${js}\nreturn sqlStore;`)(pool) as IdempotencyStore;
  return { ddl, store };
}

test("the SDK README's PostgreSQL idempotency store: one run per webhook-id, a failed run frees it, a run past its lease cannot free the one that took over", async () => {
  const server = await startPostgres();
  const db = await server.freshDatabase();
  const pool = new pg.Pool({ connectionString: db.url, max: 4 });
  try {
    const { ddl, store } = readmeStore(pool);
    await pool.query(ddl);
    let runs = 0;

    // Two processes receive the same event at once: one runs the handler, the other waits for it.
    const a = createIdempotency({ store, pollIntervalMs: 5 });
    const b = createIdempotency({ store, pollIntervalMs: 5 });
    const both = await Promise.all([a.run("evt_1", async () => ++runs), b.run("evt_1", async () => ++runs)]);
    assert.equal(runs, 1);
    assert.deepEqual(both.map((r) => r.duplicate).sort(), [false, true]);

    // A failed handler releases the id, so the sender's retry runs it.
    await assert.rejects(
      a.run("evt_2", () => {
        throw new Error("db down");
      }),
      /db down/,
    );
    assert.deepEqual(await b.run("evt_2", () => "retried"), { duplicate: false, value: "retried" });

    // A run outlives its lease; another process takes the id over; then the first one fails.
    const short = createIdempotency({ store, leaseMs: 20, waitTimeoutMs: 0 });
    let releaseSlow!: () => void;
    let releaseTakeover!: () => void;
    const slow = short.run("evt_3", async () => {
      runs++;
      await new Promise<void>((r) => {
        releaseSlow = r;
      });
      throw new Error("slow run failed");
    });
    const expired = async () =>
      (await pool.query("SELECT 1 FROM webhook_idempotency WHERE key = 'evt_3' AND expires_at <= now()"))
        .rowCount === 1;
    await waitFor("the first run's lease to end", expired);
    const takeover = createIdempotency({ store, leaseMs: 60_000 }).run("evt_3", async () => {
      runs++;
      await new Promise<void>((r) => {
        releaseTakeover = r;
      });
      return "took over";
    });
    await waitFor("the takeover to run", async () => releaseTakeover !== undefined);
    releaseSlow();
    await assert.rejects(slow, /slow run failed/);
    // The takeover still holds the id: a third delivery does not run the handler beside it.
    await assert.rejects(
      createIdempotency({ store, waitTimeoutMs: 0 }).run("evt_3", async () => ++runs),
      IdempotencyTimeoutError,
    );
    releaseTakeover();
    assert.deepEqual(await takeover, { duplicate: false, value: "took over" });
    assert.deepEqual(await a.run("evt_3", async () => ++runs), { duplicate: true, value: undefined });
    assert.equal(runs, 3);
  } finally {
    await pool.end();
    await db.drop();
  }
});
