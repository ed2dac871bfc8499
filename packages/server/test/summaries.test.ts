import assert from "node:assert/strict";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { after, before, describe, test } from "node:test";
import { pino } from "pino";
import { loadConfig } from "../src/config.js";
import type { Logger } from "../src/log.js";
import { purgeExpired } from "../src/retention/purge.js";
import { type Running, startServer } from "../src/server.js";
import { generateConversation } from "../src/simulator/conversation.js";
import { MAX_RUN_ATTEMPTS, MAX_RUN_TAKEOVERS, resumeDueTestCalls } from "../src/simulator/run.js";
import { sentences, summarizeExtractive } from "../src/summaries/extractive.js";
import { failureMessage, JOB_BACKOFF_MS, runDueSummaries, summarizeCallNow } from "../src/summaries/jobs.js";
import { chatSummary, completionsUrl, MAX_ANSWER_BYTES } from "../src/summaries/openai.js";
import { DETAILED } from "../src/summaries/summarizer.js";
import { SummaryWorker } from "../src/summaries/worker.js";
import { type ApiClient, apiClient } from "./helpers/api.js";
import { backends } from "./helpers/backends.js";
import { onServer } from "./helpers/content.js";
import { type Receiver, startReceiver } from "./helpers/receiver.js";
import { type ServerProcess, spawnServer, spawnWorkers, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

const TRANSCRIPT = [
  "Agent: Thank you for calling Acme Internet, how can I help you today?",
  "Customer: Hi. My internet connection has been dropping every evening since Monday.",
  "Agent: I am sorry to hear that. Let me run a line test on your connection.",
  "Customer: Sure, go ahead.",
  "Agent: The line test shows packet loss on your connection after 6 PM.",
  "Agent: I will send a technician to replace the modem on Thursday between 9 and 11 AM.",
  "Customer: Thursday morning works. Will the technician call before coming?",
  "Agent: Yes, the technician will call 30 minutes before arriving.",
  "Customer: Great, thanks.",
  "Agent: You are welcome. Have a nice evening.",
].join("\n");

describe("built-in extractive summarizer", () => {
  test("picks the key sentences, in order, within its bounds, deterministically", () => {
    const s = summarizeExtractive(TRANSCRIPT, { maxChars: 400, maxSentences: 3 });
    assert.equal(s, summarizeExtractive(TRANSCRIPT, { maxChars: 400, maxSentences: 3 }));
    assert.ok(s.length <= 400);
    assert.match(s, /internet connection has been dropping/, "why the customer called");
    assert.match(s, /connection/);
    assert.doesNotMatch(s, /Sure, go ahead|Great, thanks/, "no filler");
    const picked = s.split(/ (?=Agent:|Customer:)/);
    assert.ok(picked.length >= 2 && picked.length <= 3, s);
    const order = picked.map((p) => TRANSCRIPT.indexOf(p.replace(/^(Agent|Customer): /, "")));
    assert.ok(order.every((i) => i >= 0));
    assert.deepEqual(
      order,
      [...order].sort((a, b) => a - b),
      "original order",
    );
  });

  test("long repetitive conversations are summarized without repeating themselves", () => {
    const { transcript } = generateConversation({ seed: 42, agentName: "Acme", minBytes: 200_000 });
    const s = summarizeExtractive(transcript, DETAILED);
    assert.ok(s.length <= DETAILED.maxChars && s.length > 100);
    const normalized = s.split(/ (?=Agent:|Customer:)/).map((p) => p.replace(/[0-9$.,]+/g, "#"));
    assert.equal(new Set(normalized).size, normalized.length);
  });

  test("very long transcripts are read at their start and end only", () => {
    const opening = "Customer: I am calling because my refrigerator stopped cooling overnight.";
    const closing = "Agent: A refrigerator technician will come tomorrow morning to repair the cooling.";
    const filler = "Agent: Let me check that for you.\nCustomer: Okay.\n".repeat(60_000);
    const s = summarizeExtractive(`${opening}\n${filler}${closing}`, DETAILED);
    assert.match(s, /refrigerator stopped cooling/);
    assert.match(s, /technician will come tomorrow/);
    assert.ok(
      summarizeExtractive("refrigerator cooling ".repeat(100_000)).length <= 800,
      "no line breaks at all",
    );
  });

  test("a short call is summarized by what was said, not its greeting; turns on one line are told apart", () => {
    const oneLine = "Agent: Hello. Customer: I want to cancel my plan. Agent: Done, cancelled.";
    assert.deepEqual(
      sentences(oneLine).map((x) => [x.speaker, x.text]),
      [
        ["Agent", "Hello."],
        ["Customer", "I want to cancel my plan."],
        ["Agent", "Done, cancelled."],
      ],
    );
    assert.equal(summarizeExtractive(oneLine, DETAILED), "Customer: I want to cancel my plan.");
    // A label inside a turn that no line starts with, and no usual role, is not a speaker.
    assert.deepEqual(
      sentences("Agent: Please note the following. Note: refunds take five business days.").map(
        (x) => x.speaker,
      ),
      ["Agent", "Agent"],
    );
    assert.deepEqual(
      sentences("Maria: Hi. Ops Lead: Hello. Total: two.\nOps Lead: Yes.").map((x) => x.speaker),
      ["Maria", "Ops Lead", "Ops Lead", "Ops Lead"],
    );
    const outage = [
      "Agent: Hello, thanks for calling Acme Internet.",
      "Customer: Hi, my internet has been down since this morning.",
      "Agent: Let me check your account.",
      "Agent: I see an outage in your area.",
      "Agent: A technician is fixing it and service should be back by 5 PM.",
      "Customer: Okay, thank you.",
      "Agent: Have a good day.",
    ].join("\n");
    const s = summarizeExtractive(outage, DETAILED);
    assert.match(s, /internet has been down since this morning/, "why they called");
    assert.match(s, /back by 5 PM/, "how it ended");
    assert.doesNotMatch(s, /thanks for calling|Have a good day/, "no greeting");
    // Nothing long enough to score: the caller's words rather than the agent's greeting.
    assert.equal(summarizeExtractive("Agent: Hello.\nCustomer: Cancel it."), "Customer: Cancel it.");
  });

  test("edge cases: empty, one line, no speakers", () => {
    assert.equal(summarizeExtractive(""), "");
    assert.equal(summarizeExtractive("Customer: Hi."), "Customer: Hi.");
    assert.equal(sentences("First one. Second one!\nThird?").length, 3);
    assert.ok(summarizeExtractive("word ".repeat(5000), { maxChars: 100 }).length <= 100);
  });

  test("a model's answer or error holding NUL comes back without it (PostgreSQL's text cannot hold NUL)", async () => {
    const model = createServer((req, res) => {
      if (req.url === "/bad/chat/completions") {
        res.writeHead(500, { "content-type": "text/plain" });
        res.end("upstream\u0000down");
        return;
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ choices: [{ message: { content: "Billing\u0000 question." } }] }));
    });
    await new Promise<void>((r) => model.listen(0, "127.0.0.1", r));
    const base = `http://127.0.0.1:${(model.address() as AddressInfo).port}`;
    try {
      const cfg = { url: base, model: "m", apiKey: "k" };
      assert.equal(await chatSummary(cfg, "Agent: hi"), "Billing\uFFFD question.");
      await assert.rejects(
        chatSummary({ ...cfg, url: `${base}/bad` }, "Agent: hi", { attempts: 1 }),
        (err: Error) => {
          assert.equal(err.message, "HTTP 500: upstream\uFFFDdown");
          return true;
        },
      );
    } finally {
      model.close();
    }
  });

  test("an error answer that echoes the request's key back is told without the key", async () => {
    const model = createServer((req, res) => {
      res.writeHead(401, { "content-type": "text/plain" });
      res.end(`bad credentials: ${req.headers.authorization}`);
    });
    await new Promise<void>((r) => model.listen(0, "127.0.0.1", r));
    const base = `http://127.0.0.1:${(model.address() as AddressInfo).port}`;
    try {
      await assert.rejects(
        chatSummary({ url: base, model: "m", apiKey: "sk-SUMMARYKEY-abc123" }, "Agent: hi", { attempts: 1 }),
        (err: Error) => {
          assert.equal(err.message, "HTTP 401: bad credentials: Bearer [redacted]");
          return true;
        },
      );
    } finally {
      model.close();
    }
  });

  test("an answer larger than MAX_ANSWER_BYTES is a retryable failure and is not read to its end", async () => {
    let written = 0;
    let closed = false;
    const model = createServer((req, res) => {
      req.resume();
      if (req.url?.startsWith("/missing")) {
        res.writeHead(404, { "content-type": "text/plain" });
        res.end(`not here ${"x".repeat(2 * 1024 * 1024)}`);
        return;
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.write('{"choices":[{"message":{"content":"');
      const chunk = "x".repeat(64 * 1024);
      // Writes for as long as the client reads: 64 MiB at most.
      const pump = () => {
        while (written < 64 * 1024 * 1024 && !closed) {
          written += chunk.length;
          if (!res.write(chunk)) return void res.once("drain", pump);
        }
        res.end('"}}]}');
      };
      res.on("close", () => {
        closed = true;
      });
      pump();
    });
    await new Promise<void>((r) => model.listen(0, "127.0.0.1", r));
    try {
      const url = `http://127.0.0.1:${(model.address() as AddressInfo).port}`;
      await assert.rejects(
        chatSummary({ url, model: "m", apiKey: "k" }, "Agent: hi", { attempts: 1 }),
        (err: Error) => {
          assert.equal(err.message, `the answer is larger than ${MAX_ANSWER_BYTES} bytes`);
          assert.equal((err as { retryable?: boolean }).retryable, true);
          return true;
        },
      );
      await waitFor("the model's connection closed", () => closed);
      assert.ok(written < 16 * 1024 * 1024, `${written} bytes written before the client stopped reading`);
      // An error status says so whatever the size of its body: a 404 is not retried for hours.
      await assert.rejects(
        chatSummary({ url: `${url}/missing`, model: "m", apiKey: "k" }, "Agent: hi", { attempts: 1 }),
        (err: Error) => {
          assert.match(err.message, /^HTTP 404: not here/);
          assert.equal((err as { retryable?: boolean }).retryable, false);
          return true;
        },
      );
    } finally {
      model.closeAllConnections();
      model.close();
    }
  });

  test("a summarizer's failure is told in words whatever it rejected with", () => {
    assert.equal(failureMessage(new Error("model unavailable")), "model unavailable");
    assert.equal(failureMessage("quota exceeded"), "quota exceeded");
    assert.equal(failureMessage({ message: "from a plain object" }), "from a plain object");
    assert.equal(failureMessage({ status: 429 }), '{"status":429}');
    assert.equal(failureMessage(42), "42");
    const silent = "the summarizer failed without saying why";
    assert.equal(failureMessage(Symbol("s")), "Symbol(s)");
    for (const nothing of [undefined, null, "", new Error(""), 10n]) {
      assert.equal(failureMessage(nothing), silent, String(nothing));
    }
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    assert.equal(failureMessage(cyclic), silent);
    const hostile = Object.defineProperty({}, "message", {
      get() {
        throw new Error("no");
      },
    });
    assert.equal(failureMessage(hostile), silent);
    assert.equal(failureMessage(Object.create(null)), "{}");
    assert.equal(failureMessage("x".repeat(2000)).length, 500);
  });

  test("KLEN_SUMMARY_URL is a base URL: /chat/completions is appended", () => {
    assert.equal(completionsUrl("https://api.openai.com/v1"), "https://api.openai.com/v1/chat/completions");
    assert.equal(completionsUrl("http://127.0.0.1:8000/v1/"), "http://127.0.0.1:8000/v1/chat/completions");
  });
});

const prepared = new WeakMap<Receiver, (transcript?: string) => Promise<number>>();

/**
 * Sets up (once per receiver) an endpoint at `rx` and an agent, and returns a helper that runs
 * a call up to its transcript.
 */
async function prepare(srv: ServerProcess, rx: Receiver) {
  const known = prepared.get(rx);
  if (known) return known;
  const ep = await srv.api.post("/v1/endpoints", { url: `${rx.url}/hooks` });
  rx.setSecret(ep.body.secret);
  const agent = await srv.api.post("/v1/agents", { name: "Support" });
  const run = async (transcript = TRANSCRIPT) => {
    const c = await srv.api.post("/v1/calls", {
      agent_id: agent.body.id,
      type: "inbound",
      phone_number: "+15551234567",
    });
    const id = c.body.id as number;
    for (const [step, body] of [
      ["start", {}],
      ["end", { summary: "Evening outages; technician booked." }],
      ["transcript", { transcript }],
    ] as const) {
      assert.equal((await srv.api.post(`/v1/calls/${id}/${step}`, body)).status, 200);
    }
    return id;
  };
  prepared.set(rx, run);
  return run;
}
const typesOf = (rx: Receiver, callId: number) =>
  rx.requests.filter((q) => q.json?.call?.id === callId).map((q) => q.json.event_type as string);

describe("auto-summary with the built-in summarizer", () => {
  const dir = tempDir();
  let srv: ServerProcess;
  let rx: Receiver;
  before(async () => {
    srv = await spawnServer({ dataDir: dir.path });
    rx = await startReceiver();
  });
  after(async () => {
    await srv.kill();
    await rx.close();
    dir.remove();
  });

  test("off by default; on, call.summary follows call.transcript", async () => {
    const run = await prepare(srv, rx);
    assert.equal((await srv.api.get("/v1/account")).body.auto_summary, false);
    const off = await run();
    assert.equal((await srv.api.patch("/v1/account", { auto_summary: true })).body.auto_summary, true);
    const on = await run();
    await waitFor("call.summary", () => typesOf(rx, on).includes("call.summary"));
    assert.deepEqual(typesOf(rx, on), ["call.started", "call.ended", "call.transcript", "call.summary"]);
    const body = rx.requests.find((q) => q.json.call.id === on && q.json.event_type === "call.summary")!.json;
    assert.equal(body.call.summary, summarizeExtractive(TRANSCRIPT, DETAILED));
    assert.deepEqual(rx.verifyFailures, []);
    // The call with auto-summary off got no summary (its transcript queued nothing).
    await waitFor("off call's transcript", () => typesOf(rx, off).length === 3);
    assert.equal(
      (await srv.api.get(`/v1/events?call_id=${off}&event_type=call.summary`)).body.data.length,
      0,
    );
    assert.equal((await srv.api.get(`/v1/calls/${off}`)).body.has_summary, false);
    // A summary posted by the client is still possible for it, once.
    assert.equal((await srv.api.post(`/v1/calls/${off}/summary`, { summary: "Manual." })).status, 200);
  });
});

describe("auto-summary through an OpenAI-compatible endpoint", () => {
  const dir = tempDir();
  let srv: ServerProcess;
  let rx: Receiver;
  let llm: ReturnType<typeof createServer>;
  const seen: Array<{ path: string; auth: string | undefined; body: any }> = [];
  let failuresLeft = 2;

  before(async () => {
    llm = createServer((req: IncomingMessage, res) => {
      let raw = "";
      req.on("data", (c: Buffer) => {
        raw += c;
      });
      req.on("end", () => {
        seen.push({ path: req.url ?? "", auth: req.headers.authorization, body: JSON.parse(raw) });
        if (failuresLeft > 0) {
          failuresLeft--;
          res
            .writeHead(500, { "content-type": "application/json" })
            .end('{"error":{"message":"overloaded"}}');
          return;
        }
        res.writeHead(200, { "content-type": "application/json" }).end(
          JSON.stringify({
            id: "chatcmpl-1",
            object: "chat.completion",
            model: "tiny-summarizer",
            choices: [
              {
                index: 0,
                finish_reason: "stop",
                message: {
                  role: "assistant",
                  content: "  The customer reported evening outages; a technician visit was booked.  ",
                },
              },
            ],
          }),
        );
      });
    });
    await new Promise<void>((r) => llm.listen(0, "127.0.0.1", r));
    const port = (llm.address() as AddressInfo).port;
    srv = await spawnServer({
      dataDir: dir.path,
      env: {
        KLEN_SUMMARY_URL: `http://127.0.0.1:${port}/v1`,
        KLEN_SUMMARY_MODEL: "tiny-summarizer",
        KLEN_SUMMARY_API_KEY: "sk-test-123",
        LOG_LEVEL: "warn",
      },
    });
    rx = await startReceiver();
  });
  after(async () => {
    await srv.kill();
    await rx.close();
    await new Promise((r) => llm.close(r));
    dir.remove();
  });

  test("two 500s are retried and logged, then call.summary carries the model's summary", async () => {
    const run = await prepare(srv, rx);
    await srv.api.patch("/v1/account", { auto_summary: true });
    const id = await run();
    await waitFor("call.summary", () => typesOf(rx, id).includes("call.summary"));
    assert.deepEqual(typesOf(rx, id), ["call.started", "call.ended", "call.transcript", "call.summary"]);
    const body = rx.requests.find((q) => q.json.call.id === id && q.json.event_type === "call.summary")!.json;
    assert.equal(body.call.summary, "The customer reported evening outages; a technician visit was booked.");
    assert.equal(seen.length, 3);
    for (const s of seen) {
      assert.equal(s.path, "/v1/chat/completions");
      assert.equal(s.auth, "Bearer sk-test-123");
      assert.equal(s.body.model, "tiny-summarizer");
      assert.equal(s.body.messages[0].role, "system");
      assert.ok(s.body.messages.at(-1).content.includes("dropping every evening"));
    }
    assert.match(srv.output(), /summarizer request failed; retrying/);
    // Each retry's warning names its call: several jobs run at once.
    const retries = srv
      .output()
      .split("\n")
      .filter((l) => l.includes("summarizer request failed; retrying"));
    assert.ok(retries.length > 0);
    for (const line of retries) assert.equal(JSON.parse(line).call_id, id, line);
    assert.doesNotMatch(srv.output(), /sk-test-123/, "the API key is never logged");
  });

  test("a failing summarizer is retried by the durable job, not dropped", async () => {
    failuresLeft = 3; // one whole job run (three tries) fails; the job's next run succeeds
    const run = await prepare(srv, rx);
    const id = await run();
    await waitFor("job failure logged", () => /summary generation failed; will retry/.test(srv.output()));
    // The job waits its backoff (5 s) and runs again.
    await waitFor("call.summary after job retry", () => typesOf(rx, id).includes("call.summary"), 20_000);
    assert.equal(typesOf(rx, id).at(-1), "call.summary");
  });
});

for (const backend of backends())
  describe(`a summary survives the death of the process that received the transcript (${backend.name})`, () => {
    let db: Awaited<ReturnType<typeof backend.fresh>>;
    let rx: Receiver;
    before(async () => {
      db = await backend.fresh();
      rx = await startReceiver();
    });
    after(async () => {
      await rx.close();
      await db.cleanup();
    });

    test("transcript on an API-only process that is killed; a worker started later emits call.summary", async () => {
      const env = { KLEN_DATABASE_URL: db.databaseUrl };
      // An API-only process runs no summary worker, so the job is queued and nothing more.
      const api = await spawnServer({ dataDir: db.dataDir, role: "api", env });
      const run = await prepare(api, rx);
      await api.api.patch("/v1/account", { auto_summary: true });
      const id = await run();
      await api.kill("SIGKILL");
      const all = await spawnServer({ dataDir: db.dataDir, env });
      try {
        await waitFor("call.summary", () => typesOf(rx, id).includes("call.summary"));
        assert.deepEqual(typesOf(rx, id), ["call.started", "call.ended", "call.transcript", "call.summary"]);
        assert.deepEqual(rx.verifyFailures, []);
      } finally {
        await all.kill();
      }
    });

    test("a worker without KLEN_PUBLIC_URL makes its URLs with the API process's, which serves them", async () => {
      // Small enough an inline limit that the generated summary goes behind summary_url.
      const env = { KLEN_DATABASE_URL: db.databaseUrl, KLEN_INLINE_LIMIT: "600B" };
      const own = await startReceiver();
      const api = await spawnServer({ dataDir: db.dataDir, role: "api", env });
      let worker: ServerProcess | undefined;
      try {
        [worker] = await spawnWorkers(1, { dataDir: db.dataDir, env: { ...env, LOG_LEVEL: "info" } });
        await api.api.patch("/v1/account", { auto_summary: true });
        const id = await (await prepare(api, own))(`${TRANSCRIPT} ${TRANSCRIPT}`);
        await waitFor("call.summary", () => typesOf(own, id).includes("call.summary"));
        const event = own.requests.find(
          (q) => q.json?.call?.id === id && q.json.event_type === "call.summary",
        );
        const url = event!.json.call.summary_url as string;
        assert.ok(url.startsWith(`http://localhost:${new URL(api.url).port}/v1/blobs/`), url);
        const text = await fetch(onServer(api.url, url));
        assert.equal(text.status, 200);
        assert.ok((await text.text()).length > 0);
        assert.match(
          worker!.output(),
          /KLEN_PUBLIC_URL is not set: using the one the API processes serve at/,
        );
        assert.doesNotMatch(worker!.output(), /KLEN_PUBLIC_URL differs/);
      } finally {
        await worker?.kill();
        await api.kill();
        await own.close();
      }
    });
  });

describe("summary jobs: retried on a schedule, then the built-in summary instead, logged (injected clock)", () => {
  const dir = tempDir();
  let running: Running;
  let api: ApiClient;
  const logs: string[] = [];

  before(async () => {
    const config = loadConfig({
      PORT: "0",
      KLEN_DATA_DIR: dir.path,
      KLEN_API_KEY: "klen_test_key_jobs",
      KLEN_DEV: "1",
    });
    const sink = new Writable({
      write(chunk, _enc, done) {
        logs.push(String(chunk));
        done();
      },
    });
    // API role: no summary worker of its own, so this test alone decides when jobs run.
    running = await startServer(config, pino({ level: "info" }, sink) as unknown as Logger, { role: "api" });
    api = apiClient(running.address!, "klen_test_key_jobs");
    await api.patch("/v1/account", { auto_summary: true });
  });
  after(async () => {
    await running.stop(1000);
    dir.remove();
  });

  async function transcribed(): Promise<number> {
    const agent = await api.post("/v1/agents", { name: "Support" });
    const c = await api.post("/v1/calls", {
      agent_id: agent.body.id,
      type: "inbound",
      phone_number: "+15551234567",
    });
    for (const [step, body] of [
      ["start", {}],
      ["end", {}],
      ["transcript", { transcript: TRANSCRIPT }],
    ] as const)
      assert.equal((await api.post(`/v1/calls/${c.body.id}/${step}`, body)).status, 200);
    return c.body.id;
  }

  test("every failure reschedules by the backoff; after the last the built-in summary is sent instead, and the failure logged", async () => {
    const id = await transcribed();
    let now = Date.now();
    const ctx = { ...running.ctx, clock: { now: () => now } };
    let asked = 0;
    const failing = async () => {
      asked++;
      throw new Error("model unavailable");
    };
    for (const delay of [...JOB_BACKOFF_MS, undefined]) {
      assert.equal(await runDueSummaries(ctx, failing), 1);
      // Not due again before its delay is over.
      assert.equal(await runDueSummaries(ctx, failing), 0);
      if (delay !== undefined) now += delay;
    }
    assert.equal(asked, JOB_BACKOFF_MS.length + 1);
    const job = await running.ctx.store.db
      .selectFrom("summary_jobs")
      .selectAll()
      .where("call_id", "=", id)
      .executeTakeFirst();
    assert.equal(job, undefined, "the job is done");
    now += 365 * 86_400_000;
    assert.equal(await runDueSummaries(ctx, failing), 0, "nothing is run again");
    assert.equal(logs.filter((l) => l.includes("will retry")).length, JOB_BACKOFF_MS.length);
    assert.ok(
      logs.some(
        (l) =>
          l.includes('"level":50') &&
          l.includes("sending the built-in extractive summary instead") &&
          l.includes(`"call_id":${id}`) &&
          l.includes("model unavailable"),
      ),
    );
    // call.summary followed the transcript after all, with what the built-in summarizer makes of it.
    assert.equal((await api.get(`/v1/calls/${id}`)).body.has_summary, true);
    const events = await api.get(`/v1/events?call_id=${id}&event_type=call.summary`);
    assert.equal(events.status, 200);
    const [summaryEvent] = events.body.data;
    assert.equal(summaryEvent.payload.call.summary, summarizeExtractive(TRANSCRIPT, DETAILED));
  });

  test("a job whose transcript gives the built-in summarizer nothing either is failed and logged", async () => {
    const id = await transcribed();
    // Not possible through the API (a blank transcript is a 400): a job written by hand.
    await running.ctx.store.db
      .insertInto("summary_jobs")
      .values({
        call_id: id,
        account_id: Number(
          (
            await running.ctx.store.db
              .selectFrom("calls")
              .select("account_id")
              .where("id", "=", id)
              .executeTakeFirstOrThrow()
          ).account_id,
        ),
        transcript: "   ",
        status: "pending",
        attempts: JOB_BACKOFF_MS.length,
        next_attempt_at: 0,
        last_error: null,
        created_at: 0,
        updated_at: 0,
      })
      .onConflict((oc) =>
        oc
          .column("call_id")
          .doUpdateSet({ transcript: "   ", attempts: JOB_BACKOFF_MS.length, next_attempt_at: 0 }),
      )
      .execute();
    const failing = async () => {
      throw new Error("model unavailable");
    };
    assert.equal(await runDueSummaries(running.ctx, failing), 1);
    const job = await running.ctx.store.db
      .selectFrom("summary_jobs")
      .selectAll()
      .where("call_id", "=", id)
      .executeTakeFirstOrThrow();
    assert.equal(job.status, "failed");
    assert.ok(logs.some((l) => l.includes("giving up") && l.includes(`"call_id":${id}`)));
    assert.equal((await api.get(`/v1/calls/${id}`)).body.has_summary, false);
  });

  test("a summarizer that rejects with something other than an Error is rescheduled like any failure", async () => {
    const id = await transcribed();
    let now = Date.now();
    const ctx = { ...running.ctx, clock: { now: () => now } };
    const job = () =>
      running.ctx.store.db
        .selectFrom("summary_jobs")
        .selectAll()
        .where("call_id", "=", id)
        .executeTakeFirstOrThrow();
    for (const rejection of [undefined, "rate limited", { status: 429 }]) {
      const before = await job();
      assert.equal(await runDueSummaries(ctx, () => Promise.reject(rejection)), 1);
      const after = await job();
      const attempts = Number(after.attempts);
      assert.equal(attempts, Number(before.attempts) + 1);
      assert.equal(after.status, "pending");
      assert.equal(
        Number(after.next_attempt_at),
        now + JOB_BACKOFF_MS[attempts - 1]!,
        "rescheduled by the backoff",
      );
      assert.equal(after.last_error, failureMessage(rejection));
      now += JOB_BACKOFF_MS[attempts - 1]!;
    }
    assert.equal(await runDueSummaries(ctx, async () => "Customer asked about billing."), 1);
    assert.equal((await api.get(`/v1/calls/${id}`)).body.has_summary, true, "and it still succeeds later");
  });

  test("test-call runs: takeovers after crashes are not failures; too many of either give the run up", async () => {
    const account = (await api.get("/v1/account")).body.id as number;
    const agent = await api.post("/v1/agents", { name: "Support" });
    const db = running.ctx.store.db;
    const runFor = async (counts: { attempts: number; takeovers: number }) => {
      const c = await api.post("/v1/calls", {
        agent_id: agent.body.id,
        type: "outbound",
        phone_number: "+15551234567",
      });
      await db
        .insertInto("test_call_runs")
        .values({
          call_id: c.body.id,
          account_id: account,
          agent_name: "Support",
          outcome: "busy",
          transcript_bytes: null,
          ...counts,
          leased_until: 1, // its process died long ago
          created_at: Date.now(),
        })
        .execute();
      return c.body.id as number;
    };
    const carried = await runFor({ attempts: MAX_RUN_ATTEMPTS - 1, takeovers: MAX_RUN_TAKEOVERS - 1 });
    const crashedOut = await runFor({ attempts: 0, takeovers: MAX_RUN_TAKEOVERS });
    const failedOut = await runFor({ attempts: MAX_RUN_ATTEMPTS, takeovers: 0 });
    assert.equal(await resumeDueTestCalls(running.ctx), 1, "one run carried on");
    assert.deepEqual(await db.selectFrom("test_call_runs").select("call_id").execute(), [], "each settled");
    assert.equal((await api.get(`/v1/calls/${carried}`)).body.status, "failed", "busy: call.failed made");
    for (const id of [crashedOut, failedOut]) {
      assert.equal((await api.get(`/v1/calls/${id}`)).body.status, "queued", "given up: nothing made");
      assert.ok(logs.some((l) => l.includes("given up") && l.includes(`"call_id":${id}`)));
    }
  });

  /** A summarizer whose first request hangs until `release()`; every later one answers at once. */
  function firstHangs() {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let calls = 0;
    const summarize = async () => {
      if (++calls === 1) await held;
      return "Generated.";
    };
    return { summarize, release, started: () => calls > 0 };
  }
  const hasSummary = async (id: number) => (await api.get(`/v1/calls/${id}`)).body.has_summary as boolean;

  test("a summarizer that hangs holds its own job only: the worker runs other calls' summaries beside it", async () => {
    const llm = firstHangs();
    const worker = new SummaryWorker(running.ctx, llm.summarize);
    worker.start();
    try {
      const stuck = await transcribed();
      await waitFor("the first job at the summarizer", () => llm.started());
      const other = await transcribed();
      await waitFor("the other call's summary", () => hasSummary(other));
      assert.equal(await hasSummary(stuck), false);
      llm.release();
      await waitFor("the first call's summary once answered", () => hasSummary(stuck));
    } finally {
      llm.release();
      await worker.stop(1000);
    }
  });

  test("a test call waits for its summary no longer than its deadline; the job finishes on its own", async () => {
    const llm = firstHangs();
    const id = await transcribed();
    try {
      assert.equal(await summarizeCallNow(running.ctx, llm.summarize, id, 300), false);
      assert.ok(llm.started(), "the job was run, and is still at the summarizer");
      assert.equal(await hasSummary(id), false);
      llm.release();
      await waitFor("the summary made after all", () => hasSummary(id));
    } finally {
      llm.release();
    }
  });

  test("retention keeps a test-call run a stopping process handed over (lease 0), however old", async () => {
    // This server runs no resumer (API role), so the run stays as handed over.
    const account = (await api.get("/v1/account")).body.id as number;
    const agent = await api.post("/v1/agents", { name: "Handed" });
    const c = await api.post("/v1/calls", {
      agent_id: agent.body.id,
      type: "outbound",
      phone_number: "+15551234567",
    });
    const db = running.ctx.store.db;
    await db
      .insertInto("test_call_runs")
      .values({
        call_id: c.body.id,
        account_id: account,
        agent_name: "Handed",
        outcome: "busy",
        transcript_bytes: null,
        attempts: 0,
        takeovers: 0,
        leased_until: 0,
        created_at: Date.now(),
      })
      .execute();
    await purgeExpired(running.ctx, Date.now() + 31 * 86_400_000);
    const left = await db
      .selectFrom("test_call_runs")
      .select("call_id")
      .where("call_id", "=", c.body.id)
      .execute();
    assert.equal(left.length, 1);
    await db.deleteFrom("test_call_runs").where("call_id", "=", c.body.id).execute();
  });

  test("a summary posted meanwhile wins: the job is dropped, no second call.summary", async () => {
    const id = await transcribed();
    assert.equal((await api.post(`/v1/calls/${id}/summary`, { summary: "By hand." })).status, 200);
    assert.equal(await runDueSummaries(running.ctx, async () => "Generated."), 1);
    const left = await running.ctx.store.db
      .selectFrom("summary_jobs")
      .select("call_id")
      .where("call_id", "=", id)
      .execute();
    assert.deepEqual(left, []);
    const events = await api.get(`/v1/events?call_id=${id}&event_type=call.summary`);
    assert.equal(events.body.data.length, 1);
    assert.equal(events.body.data[0].payload.call.summary, "By hand.");
  });
});
