import assert from "node:assert/strict";
import { createServer, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { MAX_TEST_CALLS_RUNNING } from "../src/api/routes/test-calls.js";
import { generateConversation } from "../src/simulator/conversation.js";
import { openStore } from "../src/storage/store.js";
import { backends } from "./helpers/backends.js";
import { onServer, parseWav } from "./helpers/content.js";
import { type Receiver, startReceiver } from "./helpers/receiver.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

const WORKFLOW = ["call.started", "call.ended", "call.transcript", "call.summary", "call.recording"];

/**
 * An OpenAI-compatible summarizer on loopback that takes each request and never answers: a run
 * stops there, mid-workflow. `env` points a server at it (with `wait`, how long a new run waits
 * for it: by default long enough to stay there); `held` are the requests it took.
 */
async function hangingSummarizer(wait = "10m") {
  const held: ServerResponse[] = [];
  let released = false;
  const answer = (res: ServerResponse) =>
    res
      .writeHead(200, { "content-type": "application/json" })
      .end(JSON.stringify({ choices: [{ message: { content: "The caller asked about billing." } }] }));
  const llm = createServer((req, res) => {
    req.resume();
    if (released) answer(res);
    else held.push(res);
  });
  await new Promise<void>((r) => llm.listen(0, "127.0.0.1", r));
  return {
    held,
    env: {
      KLEN_SUMMARY_URL: `http://127.0.0.1:${(llm.address() as AddressInfo).port}/v1/chat/completions`,
      KLEN_SUMMARY_MODEL: "hangs",
      KLEN_TEST_CALL_SUMMARY_WAIT: wait,
    },
    /** Answers the held requests and every one after them. */
    release() {
      released = true;
      for (const res of held.splice(0)) answer(res);
    },
    close() {
      llm.closeAllConnections();
      llm.close();
    },
  };
}

for (const backend of backends())
  describe(`POST /v1/test-calls (${backend.name})`, () => {
    let db: Awaited<ReturnType<typeof backend.fresh>>;
    let srv: ServerProcess;
    let rx: Receiver;
    let other: Receiver;
    let endpointId: string;

    before(async () => {
      db = await backend.fresh();
      srv = await spawnServer({ dataDir: db.dataDir, env: { KLEN_DATABASE_URL: db.databaseUrl } });
      rx = await startReceiver();
      other = await startReceiver();
      const ep = await srv.api.post("/v1/endpoints", { url: `${rx.url}/hooks` });
      assert.equal(ep.status, 201);
      rx.setSecret(ep.body.secret);
      endpointId = ep.body.id;
      assert.equal((await srv.api.post("/v1/endpoints", { url: `${other.url}/hooks` })).status, 201);
    });
    after(async () => {
      await srv.kill();
      await rx.close();
      await other.close();
      await db.cleanup();
    });

    const eventsOf = (r: Receiver, callId: number) => r.requests.filter((q) => q.json?.call?.id === callId);

    test("a completed test call delivers the whole workflow, in order, signed, with real content", async (t) => {
      const res = await srv.api.post("/v1/test-calls", { endpoint_id: endpointId, transcript_bytes: 70_000 });
      assert.equal(res.status, 202);
      const callId = res.body.call_id as number;
      assert.equal(typeof callId, "number");
      const t0 = Date.now();
      await waitFor("five events", () => eventsOf(rx, callId).length >= 5, 10_000);
      t.diagnostic(`${backend.name}: 202 to the fifth delivered event in ${Date.now() - t0} ms`);
      const got = eventsOf(rx, callId);
      assert.deepEqual(
        got.map((q) => q.json.event_type),
        WORKFLOW,
      );
      assert.deepEqual(rx.verifyFailures, [], "every delivery verifies with the endpoint's secret");
      assert.equal(new Set(got.map((q) => q.id)).size, 5);
      const [started, ended, transcript, summary, recording] = got.map((q) => q.json.call);
      assert.equal(started.agent_name, "Test Agent");
      assert.equal(started.status, "in-progress");
      assert.equal(ended.status, "completed");
      assert.ok(ended.duration >= 45 && ended.duration === ended.duration_seconds);
      assert.ok(ended.summary.length > 20, "call.ended carries a brief summary");
      assert.match(started.phone_number, /^\+[0-9]{8,15}$/);

      // The oversized transcript is behind a URL and comes back exactly as generated.
      assert.equal("transcript" in transcript, false);
      const text = await (await fetch(onServer(srv.url, transcript.transcript_url))).text();
      const expected = generateConversation({ seed: callId, agentName: "Test Agent", minBytes: 70_000 });
      assert.equal(text, expected.transcript);
      assert.ok(Buffer.byteLength(text) >= 70_000);
      assert.equal(ended.summary, expected.brief);

      // A detailed generated summary, made of the conversation's own sentences, inline.
      assert.ok(summary.summary.length > ended.summary.length);
      for (const sentence of summary.summary.split(/(?<=[.!?]) (?=Agent:|Customer:)/)) {
        assert.ok(text.includes(sentence.replace(/^(Agent|Customer): /, "")), sentence);
      }

      // A real WAV: header, 8 kHz mono 16-bit PCM, a few seconds; and ranges work.
      const url = onServer(srv.url, recording.recording_url);
      const audio = await fetch(url);
      assert.equal(audio.headers.get("content-type"), "audio/wav");
      const wav = Buffer.from(await audio.arrayBuffer());
      const info = parseWav(wav);
      assert.deepEqual(
        { format: info.format, channels: info.channels, rate: info.sampleRate, bits: info.bitsPerSample },
        { format: 1, channels: 1, rate: 8000, bits: 16 },
      );
      assert.ok(info.durationSeconds >= 2 && info.durationSeconds <= 10, String(info.durationSeconds));
      const head = await fetch(url, { headers: { range: "bytes=0-43" } });
      assert.equal(head.status, 206);
      assert.equal(head.headers.get("content-range"), `bytes 0-43/${wav.length}`);
      const header = Buffer.from(await head.arrayBuffer());
      assert.ok(header.equals(wav.subarray(0, 44)));

      // Aimed at one endpoint: the account's other endpoint got none of it.
      assert.equal(eventsOf(other, callId).length, 0);
      const call = await srv.api.get(`/v1/calls/${callId}`);
      assert.equal(call.body.status, "completed");
      assert.deepEqual(
        [call.body.has_transcript, call.body.has_summary, call.body.has_recording],
        [true, true, true],
      );
    });

    test("failures: before connecting only call.failed; cut off mid-call, the rest follows", async () => {
      const early = await srv.api.post("/v1/test-calls", { outcome: "no-answer" });
      const late = await srv.api.post("/v1/test-calls", { outcome: "disconnected" });
      assert.equal(early.status, 202);
      assert.equal(late.status, 202);
      const lateId = late.body.call_id as number;
      const earlyId = early.body.call_id as number;
      // Without endpoint_id, every matching endpoint receives it.
      await waitFor(
        "late call's five events",
        () => eventsOf(other, lateId).length >= 5 && eventsOf(rx, lateId).length >= 5,
      );
      await waitFor("early call's event", () => eventsOf(rx, earlyId).length >= 1);
      const failed = eventsOf(rx, earlyId).map((q) => q.json);
      assert.deepEqual(
        failed.map((e) => e.event_type),
        ["call.failed"],
      );
      assert.equal(failed[0].call.failure_reason, "no-answer");
      assert.equal(failed[0].call.started_at, null);
      assert.equal(typeof failed[0].call.ended_reason, "string");
      const cut = eventsOf(other, lateId).map((q) => q.json);
      assert.deepEqual(
        cut.map((e) => e.event_type),
        ["call.started", "call.failed", "call.transcript", "call.summary", "call.recording"],
      );
      assert.equal(cut[1].call.failure_reason, "disconnected");
      assert.match(cut[2].call.transcript, /\[call disconnected\]$/);
      // Nothing after the failure for the early one, even once the later call has finished.
      assert.equal((await srv.api.get(`/v1/events?call_id=${earlyId}`)).body.data.length, 1);
    });

    test("an agent of the account is used by id; the Test Agent is created once and reused", async () => {
      const agent = await srv.api.post("/v1/agents", { name: "Billing Bot" });
      const a = await srv.api.post("/v1/test-calls", { agent_id: agent.body.id, outcome: "busy" });
      assert.equal(a.status, 202);
      const call = await srv.api.get(`/v1/calls/${a.body.call_id}`);
      assert.equal(call.body.agent_id, agent.body.id);
      const agents = await srv.api.get("/v1/agents?limit=100");
      assert.equal(agents.body.data.filter((x: { name: string }) => x.name === "Test Agent").length, 1);
    });

    test("bad input is a 400 naming the field, and creates no call", async () => {
      const calls = (await srv.api.get("/v1/calls?limit=100")).body.data.length;
      const cases: Array<[unknown, string]> = [
        [{ endpoint_id: "ep_doesnotexist" }, "endpoint_id"],
        [{ agent_id: 987654 }, "agent_id"],
        [{ outcome: "exploded" }, "outcome"],
        [{ transcript_bytes: 0 }, "transcript_bytes"],
        [{ transcript_bytes: 1e9 }, "transcript_bytes"],
        // More than a transcript the API itself takes (KLEN_MAX_BODY, 1 MiB by default).
        [{ transcript_bytes: 1024 * 1024 + 1 }, "transcript_bytes"],
        [{ transcript_bytes: "big" }, "transcript_bytes"],
        [{ color: "red" }, "color"],
      ];
      for (const [body, field] of cases) {
        const r = await srv.api.post("/v1/test-calls", body);
        assert.equal(r.status, 400, JSON.stringify(body));
        assert.equal(r.body.error.details.field, field, JSON.stringify(r.body));
      }
      assert.equal((await srv.api.get("/v1/calls?limit=100")).body.data.length, calls);
    });

    test("a disabled endpoint_id is a 409 naming it, and creates no call", async () => {
      const calls = (await srv.api.get("/v1/calls?limit=100")).body.data.length;
      const ep = await srv.api.post("/v1/endpoints", { url: `${rx.url}/off`, disabled: true });
      const r = await srv.api.post("/v1/test-calls", { endpoint_id: ep.body.id });
      assert.equal(r.status, 409, JSON.stringify(r.body));
      assert.equal(r.body.error.code, "endpoint_disabled");
      assert.equal(r.body.error.details.endpoint_id, ep.body.id);
      assert.equal((await srv.api.get("/v1/calls?limit=100")).body.data.length, calls);
    });

    test("a bodiless POST is a completed test call with defaults", async () => {
      const res = await fetch(`${srv.url}/v1/test-calls`, {
        method: "POST",
        headers: { authorization: `Bearer ${srv.apiKey}` },
      });
      assert.equal(res.status, 202);
      const { call_id } = await res.json();
      await waitFor("the bodiless test call's events", () => eventsOf(rx, call_id).length >= 5);
      assert.deepEqual(
        eventsOf(rx, call_id).map((q) => q.json.event_type),
        WORKFLOW,
      );
    });

    test("Idempotency-Key: a repeat replays the same call id and runs nothing twice", async () => {
      const h = { "idempotency-key": "test-call-1" };
      const first = await srv.api.post("/v1/test-calls", { outcome: "rejected", endpoint_id: endpointId }, h);
      const again = await srv.api.post("/v1/test-calls", { outcome: "rejected", endpoint_id: endpointId }, h);
      assert.equal(again.status, 202);
      assert.equal(again.body.call_id, first.body.call_id);
      await waitFor("rejected event", () => eventsOf(rx, first.body.call_id).length >= 1);
      assert.equal((await srv.api.get(`/v1/events?call_id=${first.body.call_id}`)).body.data.length, 1);
      // A second run of the same call would have failed its first transition and logged it.
      assert.doesNotMatch(srv.output(), /test call failed/);
    });
  });

for (const backend of backends())
  test(`at most ${MAX_TEST_CALLS_RUNNING} test calls of an account run at once, also when asked for together; more are a 429 not kept for replay (${backend.name})`, async () => {
    const llm = await hangingSummarizer();
    const db = await backend.fresh();
    const srv = await spawnServer({
      dataDir: db.dataDir,
      env: { KLEN_DATABASE_URL: db.databaseUrl, ...llm.env },
    });
    try {
      // Each run waits on the summarizer after its transcript, so all of them are still running.
      const burst = await Promise.all(
        Array.from({ length: MAX_TEST_CALLS_RUNNING + 10 }, () =>
          srv.api.post("/v1/test-calls", { outcome: "completed" }),
        ),
      );
      const statuses = burst.map((r) => r.status).sort();
      assert.deepEqual(statuses, [...Array(MAX_TEST_CALLS_RUNNING).fill(202), ...Array(10).fill(429)]);
      const refused = burst.find((r) => r.status === 429)!;
      assert.equal(refused.body.error.code, "too_many_test_calls");
      assert.equal(refused.headers.get("retry-after"), "5");
      assert.equal((await srv.api.get("/v1/calls?limit=100")).body.data.length, MAX_TEST_CALLS_RUNNING);

      // Once runs finish, the same request (and key) is taken: the 429 was not stored as its outcome.
      const key = { "idempotency-key": "one-too-many" };
      assert.equal((await srv.api.post("/v1/test-calls", {}, key)).status, 429);
      llm.release();
      const taken = await waitFor("a test call taken again", async () => {
        const r = await srv.api.post("/v1/test-calls", {}, key);
        return r.status === 202 ? r : undefined;
      });
      assert.equal(taken.headers.get("idempotent-replayed"), null);
    } finally {
      await srv.kill();
      llm.close();
      await db.cleanup();
    }
  });

for (const backend of backends())
  describe(`a test call whose process stops mid-run (${backend.name})`, () => {
    for (const signal of ["SIGKILL", "SIGTERM"] as const)
      test(`${signal}: carried on after a restart, each remaining step once, nothing repeated, the summary before the recording`, async (t) => {
        const db = await backend.fresh();
        const llm = await hangingSummarizer();
        const held = llm.held;
        const rx = await startReceiver();
        const apiKey = "klen_test_call_crash_key";
        // KLEN_LEASE also bounds a test call's run lease: a short one, so the restart carries it on soon.
        const env = { KLEN_DATABASE_URL: db.databaseUrl, KLEN_DELIVERY_TIMEOUT: "500ms", KLEN_LEASE: "1s" };
        let srv = await spawnServer({
          dataDir: db.dataDir,
          apiKey,
          env: { ...env, ...llm.env },
        });
        try {
          const ep = await srv.api.post("/v1/endpoints", { url: `${rx.url}/hooks` });
          rx.setSecret(ep.body.secret);
          const res = await srv.api.post("/v1/test-calls", { endpoint_id: ep.body.id });
          assert.equal(res.status, 202);
          const callId = res.body.call_id as number;
          const typesOf = () => {
            // At-least-once: a delivery cut off by the kill may come twice, with the same webhook-id.
            const byId = new Map(
              rx.requests.filter((q) => q.json?.call?.id === callId).map((q) => [q.id, q.json.event_type]),
            );
            return [...byId.values()];
          };
          await waitFor("the run waiting on the summarizer", () => held.length > 0 && typesOf().length >= 3);
          // Two leases and two looks of the resumer pass: a live run renews its lease while it
          // waits, so its own process does not take it for an interrupted one.
          await new Promise((r) => setTimeout(r, 2_500));
          assert.doesNotMatch(srv.output(), /carrying on an interrupted test call/);
          await srv.kill(signal);
          assert.deepEqual(typesOf(), ["call.started", "call.ended", "call.transcript"]);
          // A graceful stop gives the run's lease back (0: any worker may take it at once); a
          // killed process leaves it to run out.
          const left = await openStore(db.databaseUrl);
          try {
            const [run] = await left.db.selectFrom("test_call_runs").select("leased_until").execute();
            assert.ok(run, "the unfinished run is recorded");
            if (signal === "SIGTERM") assert.equal(Number(run.leased_until), 0);
            else assert.ok(Number(run.leased_until) > 0);
          } finally {
            await left.close();
          }
          assert.doesNotMatch(srv.output(), /test call failed/);

          // Restarted with the built-in summarizer; the stopped process's run lease runs out (or
          // was given back) and the new process carries the call on from its state.
          srv = await spawnServer({ dataDir: db.dataDir, apiKey, env });
          await waitFor("call.recording", () => typesOf().includes("call.recording"), 30_000);
          const types = typesOf();
          t.diagnostic(`${backend.name}, ${signal}: after the restart ${types.join(", ")}`);
          // The summary job the stopped process held comes free when its lease (KLEN_LEASE) runs
          // out; the carried-on run waits for that, runs it, and the workflow keeps its order.
          assert.deepEqual(types, [
            "call.started",
            "call.ended",
            "call.transcript",
            "call.summary",
            "call.recording",
          ]);
          const events = await srv.api.get(`/v1/events?call_id=${callId}&limit=100`);
          assert.equal(events.body.data.length, types.length, "no event made twice");
          assert.match(srv.output(), /carrying on an interrupted test call/);

          const store = await openStore(db.databaseUrl);
          try {
            // The run is done, and so is the summary job.
            assert.equal((await store.db.selectFrom("test_call_runs").selectAll().execute()).length, 0);
            assert.deepEqual(
              await store.db.selectFrom("summary_jobs").select(["call_id", "status"]).execute(),
              [],
            );
          } finally {
            await store.close();
          }
        } finally {
          await srv.kill();
          llm.close();
          await rx.close();
          await db.cleanup();
        }
      });
  });

describe("a test call whose process is killed more often than a run may fail", () => {
  test("kill -9 six times mid-run: each restart carries it on, and it completes", async () => {
    const db = await backends()[0]!.fresh();
    const llm = await hangingSummarizer();
    const held = llm.held;
    const rx = await startReceiver();
    const apiKey = "klen_test_call_many_kills_key";
    const env = { KLEN_DATABASE_URL: db.databaseUrl, KLEN_DELIVERY_TIMEOUT: "500ms", KLEN_LEASE: "1s" };
    const hanging = { ...env, ...llm.env };
    let srv = await spawnServer({ dataDir: db.dataDir, apiKey, env: hanging });
    try {
      const ep = await srv.api.post("/v1/endpoints", { url: `${rx.url}/hooks` });
      rx.setSecret(ep.body.secret);
      const res = await srv.api.post("/v1/test-calls", { endpoint_id: ep.body.id });
      const callId = res.body.call_id as number;
      // Each process gets as far as the summarizer, which never answers, and is killed there.
      // (Each asks once: a request hangs for the summarizer's 30 s timeout before it asks again.)
      for (let kill = 1; kill <= 6; kill++) {
        await waitFor(`process ${kill} waiting on the summarizer`, () => held.length >= kill, 30_000);
        // Past the first, each process has taken the run over (the run's lease ran out) before it dies.
        if (kill > 1)
          await waitFor(`process ${kill} carrying the run on`, () =>
            srv.output().includes("carrying on an interrupted test call"),
          );
        await srv.kill("SIGKILL");
        srv = await spawnServer({ dataDir: db.dataDir, apiKey, env: kill < 6 ? hanging : env });
      }
      // The last process has the built-in summarizer: the run finishes.
      await waitFor(
        "call.recording",
        () => rx.requests.some((q) => q.json?.call?.id === callId && q.json.event_type === "call.recording"),
        30_000,
      );
      const events = await srv.api.get(`/v1/events?call_id=${callId}&limit=100`);
      assert.deepEqual(
        (events.body.data as Array<{ event_type: string }>).map((e) => e.event_type).reverse(),
        WORKFLOW,
      );
      assert.doesNotMatch(srv.output(), /given up/);
    } finally {
      await srv.kill();
      llm.close();
      await rx.close();
      await db.cleanup();
    }
  });
});

// PRODUCT.md §4: a test call completes within ten seconds. A summarizer that fails or is slow
// does not hold the recording back: it follows at once after a failed try, or after
// KLEN_TEST_CALL_SUMMARY_WAIT (8 s) of no answer, and `call.summary` comes when the job succeeds.
describe("a test call beside a summarizer that fails or hangs", () => {
  const recorded = (rx: Receiver, callId: number) =>
    rx.requests.filter((q) => q.json?.call?.id === callId).map((q) => q.json.event_type as string);

  test("failing: the recording follows the first failed try, the summary comes with the job's retry", async () => {
    // One run of the summary job (the summarizer's three tries) fails; the next, 5 s later, succeeds.
    let asked = 0;
    const llm = createServer((req, res) => {
      req.resume();
      if (++asked <= 3) return void res.writeHead(500).end("overloaded");
      res
        .writeHead(200, { "content-type": "application/json" })
        .end(JSON.stringify({ choices: [{ message: { content: "The caller asked about billing." } }] }));
    });
    await new Promise<void>((r) => llm.listen(0, "127.0.0.1", r));
    const rx = await startReceiver();
    const dir = tempDir();
    const srv = await spawnServer({
      dataDir: dir.path,
      env: {
        KLEN_SUMMARY_URL: `http://127.0.0.1:${(llm.address() as AddressInfo).port}/v1`,
        KLEN_SUMMARY_MODEL: "fails",
      },
    });
    try {
      const ep = await srv.api.post("/v1/endpoints", { url: `${rx.url}/hooks` });
      rx.setSecret(ep.body.secret);
      const callId = (await srv.api.post("/v1/test-calls", {})).body.call_id as number;
      await waitFor("call.summary from the job's next run", () => recorded(rx, callId).length === 5, 30_000);
      // The run did not wait for the job's next run: the recording was made before the summary.
      const events = await srv.api.get(`/v1/events?call_id=${callId}&limit=100`);
      const made = (events.body.data as Array<{ event_type: string }>).map((e) => e.event_type).reverse();
      assert.deepEqual(made, [
        "call.started",
        "call.ended",
        "call.transcript",
        "call.recording",
        "call.summary",
      ]);
      assert.deepEqual(recorded(rx, callId), made, "delivered in the order made");
      assert.equal(asked, 4);
    } finally {
      await srv.kill();
      await rx.close();
      llm.closeAllConnections();
      llm.close();
      dir.remove();
    }
  });

  test("hanging: the recording follows after KLEN_TEST_CALL_SUMMARY_WAIT, while the request is still open", async () => {
    const llm = await hangingSummarizer("1s");
    const rx = await startReceiver();
    const dir = tempDir();
    const srv = await spawnServer({ dataDir: dir.path, env: llm.env });
    try {
      const ep = await srv.api.post("/v1/endpoints", { url: `${rx.url}/hooks` });
      rx.setSecret(ep.body.secret);
      const callId = (await srv.api.post("/v1/test-calls", {})).body.call_id as number;
      await waitFor("call.recording", () => recorded(rx, callId).includes("call.recording"), 30_000);
      assert.equal(llm.held.length, 1, "the summarizer's one request is still unanswered");
      llm.release();
      await waitFor(
        "call.summary once answered",
        () => recorded(rx, callId).includes("call.summary"),
        30_000,
      );
      assert.deepEqual(recorded(rx, callId), [
        "call.started",
        "call.ended",
        "call.transcript",
        "call.recording",
        "call.summary",
      ]);
    } finally {
      await srv.kill();
      await rx.close();
      llm.close();
      dir.remove();
    }
  });
});
