import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, request, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import pg from "pg";
import { drained, MAX_STREAMS_PER_ACCOUNT } from "../src/api/routes/stream.js";
import { type SseMessage, SseParser } from "../src/cli/sse.js";
import { type ApiClient, runCall, setupAccount, startedCall } from "./helpers/api.js";
import { backends } from "./helpers/backends.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

const ORIGIN = `evt_${"0".repeat(26)}`;

/** Opens `GET /v1/events/stream` with fetch and records every message until closed. */
async function openStream(server: ServerProcess, query = "", headers: Record<string, string> = {}) {
  const ctl = new AbortController();
  const res = await fetch(`${server.url}/v1/events/stream${query}`, {
    headers: { authorization: `Bearer ${server.apiKey}`, ...headers },
    signal: ctl.signal,
  });
  assert.equal(res.status, 200, await (res.status === 200 ? "" : res.text()));
  assert.match(res.headers.get("content-type") ?? "", /^text\/event-stream/);
  const messages: SseMessage[] = [];
  const parser = new SseParser((m) => messages.push(m));
  let ended = false;
  const pump = (async () => {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>)
        parser.push(decoder.decode(chunk, { stream: true }));
    } catch {
      /* aborted */
    }
    ended = true;
  })();
  return {
    messages,
    /** Messages that are events (not the `ready` frame). */
    events: () => messages.filter((m) => m.event !== "ready"),
    ended: () => ended,
    async close() {
      ctl.abort();
      await pump;
    },
  };
}

/** The account's events oldest first, as the API lists them. */
async function eventsOf(api: ApiClient, callId: number) {
  const r = await api.get(`/v1/events?call_id=${callId}&limit=100`);
  assert.equal(r.status, 200);
  return (r.body.data as Array<{ id: string; event_type: string; payload: unknown }>).reverse();
}

/**
 * Inserts an event in a transaction left open on `client`: it takes the next seq but stays
 * invisible until COMMIT, like a slow transition.
 */
async function beginHeldEvent(client: pg.Client, accountId: number, id: string, body: string): Promise<void> {
  await client.query("BEGIN");
  await client.query(
    "INSERT INTO events (id, account_id, call_id, event_type, payload, created_at) VALUES ($1, $2, 1, 'call.started', $3, $4)",
    [id, accountId, body, Date.now()],
  );
}

for (const backend of backends()) {
  describe(`GET /v1/events/stream (${backend.name})`, () => {
    const dir = tempDir();
    let db: Awaited<ReturnType<typeof backend.fresh>>;
    let server: ServerProcess;
    let agentId: number;
    before(async () => {
      db = await backend.fresh();
      server = await spawnServer({ dataDir: dir.path, env: { KLEN_DATABASE_URL: db.databaseUrl } });
      ({ agentId } = await setupAccount(server.api));
    });
    after(async () => {
      await server?.kill();
      await db?.cleanup();
      dir.remove();
    });

    test("requires the API key", async () => {
      const none = await fetch(`${server.url}/v1/events/stream`);
      assert.equal(none.status, 401);
      assert.equal(((await none.json()) as any).error.code, "unauthorized");
      const wrong = await fetch(`${server.url}/v1/events/stream`, {
        headers: { authorization: "Bearer nope" },
      });
      assert.equal(wrong.status, 401);
    });

    test("bad query or cursor is a 400 naming the field", async () => {
      const get = async (q: string, headers: Record<string, string> = {}) => {
        const r = await fetch(`${server.url}/v1/events/stream${q}`, {
          headers: { authorization: `Bearer ${server.apiKey}`, ...headers },
        });
        return { status: r.status, body: (await r.json()) as any };
      };
      for (const [q, field, headers] of [
        ["?event_types=call.ended,call.nope", "event_types", {}],
        ["?after=evt_nope", "after", {}],
        ["?after=", "after", {}],
        ["?since=yesterday", "since", {}],
        ["", "Last-Event-ID", { "last-event-id": "42" }],
      ] as const) {
        const r = await get(q, headers);
        assert.equal(r.status, 400, `${q} ${JSON.stringify(r.body)}`);
        assert.equal(r.body.error.code, "invalid_request");
        assert.equal(r.body.error.details.field, field, JSON.stringify(r.body));
      }
      // The static route does not shadow GET /v1/events/{id}, nor the other way round.
      const one = await server.api.get(`/v1/events/${ORIGIN}`);
      assert.equal(one.status, 404);
    });

    test("starts at the tail, then streams new events with the stored body byte for byte", async () => {
      const earlier = await runCall(server.api, agentId);
      const before = await eventsOf(server.api, earlier);
      const s = await openStream(server);
      try {
        await waitFor("ready frame", () => s.messages.length >= 1);
        const ready = s.messages[0]!;
        assert.equal(ready.event, "ready");
        assert.equal(ready.id, before[before.length - 1]!.id, "ready carries the newest event id");
        const callId = await runCall(server.api, agentId);
        const stored = await eventsOf(server.api, callId);
        assert.equal(stored.length, 4);
        await waitFor("4 streamed events", () => s.events().length >= 4);
        const got = s.events();
        assert.deepEqual(
          got.map((m) => m.id),
          stored.map((e) => e.id),
          "only the new call's events, in order",
        );
        for (const [i, m] of got.entries()) {
          assert.equal(m.event, stored[i]!.event_type);
          assert.equal(m.data, JSON.stringify(stored[i]!.payload));
          const one = await server.api.get(`/v1/events/${m.id}`);
          assert.equal(one.status, 200, "GET /v1/events/{id} still works beside /stream");
        }
      } finally {
        await s.close();
      }
    });

    test("revoking the stream's API key ends it with an error frame, before any later event", async () => {
      const made = await server.api.post("/v1/api-keys");
      assert.equal(made.status, 201);
      const s = await openStream(server, "", { authorization: `Bearer ${made.body.key}` });
      try {
        await waitFor("ready frame", () => s.messages.length >= 1);
        assert.equal((await server.api.del(`/v1/api-keys/${made.body.id}`)).status, 200);
        await runCall(server.api, agentId);
        await waitFor("the stream ended", () => s.ended());
        assert.deepEqual(
          s.messages.map((m) => m.event),
          ["ready", "error"],
          "no event after the revocation reached the stream",
        );
        assert.equal(JSON.parse(s.messages[1]!.data).error.code, "unauthorized");
        const again = await fetch(`${server.url}/v1/events/stream`, {
          headers: { authorization: `Bearer ${made.body.key}` },
        });
        assert.equal(again.status, 401);
      } finally {
        await s.close();
      }
    });

    test("resumes after Last-Event-ID or ?after, skipping what was seen", async () => {
      const callId = await runCall(server.api, agentId);
      const stored = await eventsOf(server.api, callId);
      const second = stored[1]!.id;
      const byHeader = await openStream(server, "", { "last-event-id": second });
      const byQuery = await openStream(server, `?after=${second}`);
      try {
        for (const s of [byHeader, byQuery]) {
          await waitFor("the events after the cursor", () => s.events().length >= 2);
          assert.equal(s.messages[0]!.event, "call.transcript", "no ready frame when resuming");
          assert.deepEqual(
            s.events().map((m) => m.id),
            stored.slice(2).map((e) => e.id),
          );
        }
        // The origin id means "from the beginning": every event of the account, oldest first.
        const all = await openStream(server, `?after=${ORIGIN}`);
        try {
          const total = (await server.api.get("/v1/events?limit=100")).body.data.length as number;
          await waitFor("every event", () => all.events().length >= total);
          assert.equal(all.events()[all.events().length - 1]!.id, stored[3]!.id);
        } finally {
          await all.close();
        }
      } finally {
        await byHeader.close();
        await byQuery.close();
      }
    });

    test("event_types filters the stream", async () => {
      const s = await openStream(server, "?event_types=call.ended,call.summary,call.failed");
      try {
        await waitFor("ready", () => s.messages.length >= 1);
        const callId = await runCall(server.api, agentId);
        const failed = await server.api.post("/v1/calls", {
          agent_id: agentId,
          type: "outbound",
          phone_number: "+15557654321",
        });
        const fail = await server.api.post(`/v1/calls/${failed.body.id}/fail`, { failure_reason: "busy" });
        assert.equal(fail.status, 200);
        const wanted = [
          ...(await eventsOf(server.api, callId)),
          ...(await eventsOf(server.api, failed.body.id)),
        ].filter((e) => e.event_type !== "call.started" && e.event_type !== "call.transcript");
        assert.deepEqual(
          wanted.map((e) => e.event_type),
          ["call.ended", "call.summary", "call.failed"],
        );
        // call.failed is the newest event: once it arrived the stream has caught up, so the
        // absence of call.started and call.transcript is meaningful.
        await waitFor("the call.failed", () => s.events().some((m) => m.event === "call.failed"));
        assert.deepEqual(
          s.events().map((m) => [m.event, m.id]),
          wanted.map((e) => [e.event_type, e.id]),
        );
      } finally {
        await s.close();
      }
    });

    if (backend.name === "postgres")
      test("streams whose client left while the stream was opening give their slot back", async () => {
        const locker = new pg.Client({ connectionString: db.databaseUrl });
        await locker.connect();
        try {
          // The cursor lookup waits on the lock; each client gives up meanwhile.
          await locker.query("BEGIN");
          await locker.query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE");
          const abandoned = Array.from({ length: MAX_STREAMS_PER_ACCOUNT }, () =>
            fetch(`${server.url}/v1/events/stream`, {
              headers: { authorization: `Bearer ${server.apiKey}` },
              signal: AbortSignal.timeout(300),
            }).catch((err: unknown) => err),
          );
          for (const r of await Promise.all(abandoned)) assert.ok(r instanceof Error, "the client gave up");
          await locker.query("COMMIT");
          const gauge = async () =>
            Number(
              /^klen_event_streams_open (\d+)$/m.exec(
                await (await fetch(`${server.url}/metrics`)).text(),
              )?.[1],
            );
          await waitFor("the abandoned streams closed", async () => (await gauge()) === 0);
          const streams = [];
          for (let i = 0; i < MAX_STREAMS_PER_ACCOUNT; i++) streams.push(await openStream(server));
          for (const st of streams) await st.close();
        } finally {
          await locker.end();
        }
      });

    if (backend.name === "postgres")
      test("an event whose transaction commits after a later one's is still sent (seq holes)", async () => {
        const s = await openStream(server);
        const held = new pg.Client({ connectionString: db.databaseUrl });
        await held.connect();
        try {
          await waitFor("ready", () => s.messages.length >= 1);
          const account = (await server.api.get("/v1/account")).body as { id: number };
          const heldId = `evt_${"h".repeat(26)}`;
          const body = '{"event_type":"call.started","held":true}';
          await beginHeldEvent(held, account.id, heldId, body);
          await startedCall(server.api, agentId, "+15550002222", "outbound");
          await waitFor("the later event", () => s.events().length >= 1);
          assert.equal(s.events()[0]!.event, "call.started");
          assert.notEqual(s.events()[0]!.id, heldId);
          await held.query("COMMIT");
          await waitFor("the held event once committed", () => s.events().find((m) => m.id === heldId));
          assert.equal(s.events().find((m) => m.id === heldId)!.data, body);
          assert.equal(s.events().length, 2);
        } finally {
          await held.end();
          await s.close();
        }
      });

    if (backend.name === "postgres")
      test("an event committed late is still sent after a replay over a long run of missing seqs, and to a client that resumed past it", async () => {
        const admin = new pg.Client({ connectionString: db.databaseUrl });
        await admin.connect();
        const account = (await server.api.get("/v1/account")).body as { id: number };
        // 20,000 seqs that will never fill (purged history, rolled-back inserts), then an event.
        await admin.query(
          "SELECT setval(pg_get_serial_sequence('events', 'seq'), nextval(pg_get_serial_sequence('events', 'seq')) + 20000)",
        );
        const first = await startedCall(server.api, agentId, "+15550003333", "outbound");
        const replay = await openStream(server, `?after=${ORIGIN}`);
        let resumed: Awaited<ReturnType<typeof openStream>> | undefined;
        try {
          const firstEvent = (await eventsOf(server.api, first))[0]!.id;
          await waitFor("the replay to reach the new event", () =>
            replay.events().find((m) => m.id === firstEvent),
          );
          const heldId = `evt_${"k".repeat(26)}`;
          const body = '{"event_type":"call.started","held":"late"}';
          await beginHeldEvent(admin, account.id, heldId, body);
          const later = await startedCall(server.api, agentId, "+15550004444", "outbound");
          const laterEvent = (await eventsOf(server.api, later))[0]!.id;
          await waitFor("the later event", () => replay.events().find((m) => m.id === laterEvent));
          // A client that saw the later event and reconnects with it, before the held one commits.
          resumed = await openStream(server, "", { "last-event-id": laterEvent });
          await admin.query("COMMIT");
          for (const [name, st] of [
            ["the replaying stream", replay],
            ["the resumed stream", resumed],
          ] as const) {
            const got = await waitFor(`${name} to send the late event`, () =>
              st.events().find((m) => m.id === heldId),
            );
            assert.equal(got.data, body);
          }
          assert.deepEqual(
            resumed.events().map((m) => m.id),
            [heldId],
            "the resumed stream sends nothing it had sent before",
          );
        } finally {
          await admin.end();
          await replay.close();
          await resumed?.close();
        }
      });

    if (backend.name === "postgres")
      test("a replay over sparse old history (1,000 seqs between events) sends it all, and a late event behind 600 rolled-back seqs is sent", async () => {
        const admin = new pg.Client({ connectionString: db.databaseUrl });
        await admin.connect();
        const account = (await server.api.get("/v1/account")).body as { id: number };
        let replay: Awaited<ReturnType<typeof openStream>> | undefined;
        const tail = await openStream(server);
        try {
          // What retention leaves of a day-old history: 2,000 events, 1,000 seqs apart.
          const { rows } = await admin.query<{ s: string }>(
            "SELECT nextval(pg_get_serial_sequence('events', 'seq')) AS s",
          );
          const base = Number(rows[0]!.s) + 1;
          const old = Array.from({ length: 2_000 }, (_, i) => `evt_${`0old${i}`.padStart(26, "0")}`);
          await admin.query(
            `INSERT INTO events (seq, id, account_id, call_id, event_type, payload, created_at)
             SELECT $1::bigint + i * 1000, 'evt_' || lpad('0old' || i, 26, '0'), $2, 1, 'call.started', '{"old":true}', $3::bigint
             FROM generate_series(0, 1999) AS i`,
            [base, account.id, Date.now() - 86_400_000],
          );
          await admin.query("SELECT setval(pg_get_serial_sequence('events', 'seq'), $1)", [base + 2_000_000]);
          replay = await openStream(server, `?after=${ORIGIN}`);
          await waitFor(
            "the replay to send every old event",
            () => {
              const got = new Set(replay!.events().map((m) => m.id));
              return old.every((id) => got.has(id));
            },
            30_000,
          );
          // An event whose transaction stays open while 600 later seqs are handed out and rolled
          // back, and one more event commits.
          await waitFor("ready", () => tail.messages.length >= 1);
          const heldId = `evt_${"m".repeat(26)}`;
          const body = '{"event_type":"call.started","held":"behind rollbacks"}';
          const held = new pg.Client({ connectionString: db.databaseUrl });
          await held.connect();
          try {
            await beginHeldEvent(held, account.id, heldId, body);
            await admin.query("BEGIN");
            await admin.query(
              "SELECT nextval(pg_get_serial_sequence('events', 'seq')) FROM generate_series(1, 600)",
            );
            await admin.query("ROLLBACK");
            const call = await startedCall(server.api, agentId, "+15550005555", "outbound");
            const laterEvent = (await eventsOf(server.api, call))[0]!.id;
            await waitFor("the later event", () => tail.events().find((m) => m.id === laterEvent));
            await held.query("COMMIT");
          } finally {
            await held.end();
          }
          const got = await waitFor("the late event", () => tail.events().find((m) => m.id === heldId));
          assert.equal(got.data, body);
        } finally {
          await admin.end();
          await tail.close();
          await replay?.close();
        }
      });

    test(`more than ${MAX_STREAMS_PER_ACCOUNT} open streams of one account: 429 too_many_streams, until one closes`, async () => {
      const streams = [];
      for (let i = 0; i < MAX_STREAMS_PER_ACCOUNT; i++) streams.push(await openStream(server));
      const gauge = async () => {
        const text = await (await fetch(`${server.url}/metrics`)).text();
        return Number(/^klen_event_streams_open (\d+)$/m.exec(text)?.[1]);
      };
      try {
        assert.equal(await gauge(), MAX_STREAMS_PER_ACCOUNT);
        const refused = await fetch(`${server.url}/v1/events/stream`, {
          headers: { authorization: `Bearer ${server.apiKey}` },
        });
        assert.equal(refused.status, 429);
        assert.equal(refused.headers.get("retry-after"), "5");
        assert.equal(((await refused.json()) as { error: { code: string } }).error.code, "too_many_streams");
        await streams.pop()!.close();
        await waitFor(
          "the gauge counts the closed stream out",
          async () => (await gauge()) === MAX_STREAMS_PER_ACCOUNT - 1,
        );
        const again = await waitFor("a stream slot is free again", async () => {
          const r = await fetch(`${server.url}/v1/events/stream`, {
            headers: { authorization: `Bearer ${server.apiKey}` },
            signal: AbortSignal.timeout(5_000),
          }).catch(() => undefined);
          if (r?.status === 200) return r;
          await r?.body?.cancel();
          return undefined;
        });
        await again.body?.cancel();
      } finally {
        for (const st of streams) await st.close();
        // The server counts a stream out when it sees the connection go, a moment after the
        // client closes it: the next test's stream was once refused with 429 meanwhile (CI).
        await waitFor("the server to count the streams out", async () => (await gauge()) === 0);
      }
    });

    test("a server stopping with open streams ends them and exits", async () => {
      const s = await openStream(server);
      await waitFor("ready", () => s.messages.length >= 1);
      await server.kill("SIGTERM");
      await waitFor("the stream to end", () => s.ended());
      assert.notEqual(server.proc.exitCode ?? server.proc.signalCode, null);
      await s.close();
    });
  });
}

test("drained: false for a client that stops reading (the stream then cuts it off), true once it reads; no listener left behind", async () => {
  let res!: ServerResponse;
  const server = createServer((_req, r) => {
    res = r;
    r.writeHead(200, { "content-type": "text/event-stream" });
    r.flushHeaders();
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  const req = request({ host: "127.0.0.1", port, path: "/" });
  req.end();
  const [incoming] = (await once(req, "response")) as [import("node:http").IncomingMessage];
  incoming.pause(); // a client that reads nothing
  try {
    const chunk = "x".repeat(64 * 1024);
    // Fill Node's buffer and the kernel's: writing goes on while a drain still comes.
    do while (res.write(chunk));
    while (await drained(res, 200));
    for (let i = 0; i < 15; i++) assert.equal(await drained(res, 20), false);
    assert.ok(
      res.listenerCount("close") <= 2 && res.listenerCount("drain") <= 1,
      "listeners removed each time",
    );
    const resumed = drained(res, 10_000);
    incoming.resume();
    assert.equal(await resumed, true);
  } finally {
    req.destroy();
    server.closeAllConnections();
    server.close();
  }
});
