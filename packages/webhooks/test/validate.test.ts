/** The JSON-Schema subset validator and call-event parsing. */
import * as assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { CallEndedCall, CallEndedCallBase } from "../src/events.js";
import {
  isCallEvent,
  parseCallEvent,
  validate,
  validateCallEvent,
  WebhookVerificationError,
} from "../src/index.js";
import { callEventSchema, eventSchemas } from "../src/schemas.js";
import { seedEvent } from "./helpers.js";

type Json = Record<string, any>;
const clone = (v: unknown): Json => structuredClone(v) as Json;
const common = () => {
  const { summary: _s, duration: _d, ...call } = seedEvent().call as Json;
  return call;
};

/** One valid body per event type, in the seed's shape. */
const validBodies: Json[] = [
  {
    event_type: "call.started",
    call: { ...common(), assistant_id: "assistant_abc123" },
    timestamp: "2025-04-23T14:30:45Z",
  },
  seedEvent(),
  {
    event_type: "call.failed",
    call: {
      ...common(),
      status: "failed",
      started_at: null,
      ended_at: "2025-04-23T14:32:00Z",
      duration_seconds: null,
      failure_reason: "no-answer",
      ended_reason: "no-answer",
    },
    timestamp: "2025-04-23T14:32:00Z",
  },
  {
    event_type: "call.transcript",
    call: { ...common(), transcript: "Agent: Bonjour ! Caller: Hi." },
    timestamp: "2025-04-23T14:36:00Z",
  },
  {
    event_type: "call.transcript",
    call: { ...common(), transcript_url: "https://klen.example/v1/blobs/x?expires=1&signature=y" },
    timestamp: "2025-04-23T14:36:00Z",
  },
  {
    event_type: "call.recording",
    call: { ...common(), recording_url: "https://klen.example/v1/blobs/r" },
    timestamp: "2025-04-23T14:36:30.123Z",
  },
  {
    event_type: "call.summary",
    call: { ...common(), summary: "Detailed AI-generated summary" },
    timestamp: "2025-04-23T14:37:00Z",
  },
];

describe("call event validation", () => {
  for (const body of validBodies) {
    test(`valid ${body.event_type}`, () => {
      assert.deepEqual(validateCallEvent(body), []);
      assert.deepEqual(validate(callEventSchema, body), []);
      assert.deepEqual(parseCallEvent(JSON.stringify(body)), body);
    });
  }

  const invalid: [string, (b: Json) => unknown][] = [
    ["unknown event type", (b) => (b.event_type = "call.exploded")],
    ["missing call.id", (b) => delete b.call.id],
    ["non-integer id", (b) => (b.call.id = 1.5)],
    ["string id", (b) => (b.call.id = "123")],
    ["bad status enum", (b) => (b.call.status = "done")],
    ["phone not E.164", (b) => (b.call.phone_number = "5551234567")],
    ["timestamp without Z", (b) => (b.timestamp = "2025-04-23T14:35:15+00:00")],
    ["negative duration", (b) => (b.call.duration_seconds = -1)],
    ["contact without email", (b) => delete b.call.contact.email],
    ["contact id as string", (b) => (b.call.contact.id = "789")],
    ["ended without duration", (b) => delete b.call.duration],
    ["klen_call_id number", (b) => (b.call.klen_call_id = 5)],
  ];
  for (const [name, mutate] of invalid) {
    test(`rejects: ${name}`, () => {
      const body = clone(seedEvent());
      mutate(body);
      assert.notDeepEqual(validateCallEvent(body), []);
      assert.equal(isCallEvent(body), false);
      assert.throws(
        () => parseCallEvent(JSON.stringify(body)),
        (e: unknown) =>
          e instanceof WebhookVerificationError && e.code === "invalid_body" && e.issues.length > 0,
      );
    });
  }

  test("fields the schema does not know are ignored (a newer server may add some); known ones are still checked", () => {
    const body = clone(seedEvent());
    body.extra = { any: "thing" };
    body.call.added_later = 1;
    body.call.contact.title = "Dr";
    assert.deepEqual(validateCallEvent(body), []);
    assert.equal(isCallEvent(body), true);
    assert.deepEqual(parseCallEvent(JSON.stringify(body)), body);
    // The schema as written, through validate(): its additionalProperties: false still rejects them.
    assert.deepEqual(
      validate(eventSchemas["call.ended"], body).map((i) => i.path),
      ["$.call.contact.title", "$.call.added_later", "$.extra"],
    );
    // Beside an unknown field, a known one of the wrong type is still an issue.
    body.call.id = "123";
    assert.deepEqual(
      validateCallEvent(body).map((i) => i.path),
      ["$.call.id"],
    );
  });

  test("transcript: exactly one of transcript / transcript_url", () => {
    const both = clone(validBodies[3]);
    both.call.transcript_url = "https://x.example/t";
    assert.notDeepEqual(validateCallEvent(both), []);
    const neither = clone(validBodies[3]);
    delete neither.call.transcript;
    assert.notDeepEqual(validateCallEvent(neither), []);
  });

  test("call.ended: its brief summary inline or behind summary_url, never both", () => {
    const ended = clone(seedEvent());
    assert.equal(typeof ended.call.summary, "string");
    const moved = clone(ended);
    delete moved.call.summary;
    moved.call.summary_url = "https://x.example/s";
    assert.deepEqual(validateCallEvent(moved), []);
    delete moved.call.summary_url;
    assert.deepEqual(validateCallEvent(moved), [], "a call.ended without a summary");
    ended.call.summary_url = "https://x.example/s";
    assert.deepEqual(
      validateCallEvent(ended).map((i) => i.path),
      ["$.call"],
    );
  });

  test("call.ended's type says so too: summary or summary_url or neither, never both", () => {
    // The seed's call has a brief summary: taken out, so each case adds what it says.
    const { summary: _seedSummary, ...call } = clone(seedEvent()).call as CallEndedCallBase & {
      summary?: string;
    };
    const inline: CallEndedCall = { ...call, summary: "brief" };
    const behind: CallEndedCall = { ...call, summary_url: "https://x.example/s" };
    const neither: CallEndedCall = { ...call };
    // @ts-expect-error: both is what the schema refuses, and the type now refuses it as well.
    const both: CallEndedCall = { ...call, summary: "brief", summary_url: "https://x.example/s" };
    const body = (c: CallEndedCall) => ({
      event_type: "call.ended",
      call: c,
      timestamp: "2025-04-23T14:35:15Z",
    });
    for (const c of [inline, behind, neither]) assert.deepEqual(validateCallEvent(body(c)), []);
    assert.notDeepEqual(validateCallEvent(body(both)), []);
  });

  test("url fields must be http(s) and non-empty", () => {
    const b = clone(validBodies[5]);
    b.call.recording_url = "";
    assert.notDeepEqual(validateCallEvent(b), []);
    b.call.recording_url = "file:///etc/passwd";
    assert.notDeepEqual(validateCallEvent(b), []);
  });

  test("issues name the path", () => {
    const b = clone(seedEvent());
    delete b.call.agent_id;
    assert.deepEqual(validateCallEvent(b), [
      { path: "$.call.agent_id", message: "is required", keyword: "required" },
    ]);
  });

  test("bodies that are not JSON, not UTF-8 or not objects are invalid_body with a cause", () => {
    const err = (body: string | Uint8Array) => {
      try {
        parseCallEvent(body);
      } catch (e) {
        return e as WebhookVerificationError;
      }
      assert.fail("did not throw");
    };
    assert.ok(err("{not json").cause instanceof SyntaxError);
    assert.ok(err(Uint8Array.of(0x7b, 0xff, 0x7d)).cause instanceof TypeError);
    assert.equal(err("[]").code, "invalid_body");
    assert.equal(err("null").code, "invalid_body");
  });
});

describe("validate (JSON-Schema subset)", () => {
  test("type lists, const, enum, minLength in code points, minimum", () => {
    assert.deepEqual(validate({ type: ["string", "null"] }, null), []);
    assert.equal(validate({ type: ["string", "null"] }, 1).length, 1);
    assert.equal(validate({ const: "a" }, "b").length, 1);
    assert.equal(validate({ enum: [1, 2] }, 3).length, 1);
    assert.deepEqual(validate({ type: "string", minLength: 2 }, "😀😀"), []);
    assert.equal(validate({ type: "string", minLength: 2 }, "😀").length, 1);
    assert.equal(validate({ type: "integer", minimum: 0 }, -1).length, 1);
    assert.equal(validate({ type: "number" }, Number.NaN).length, 1);
  });

  test("oneOf needs exactly one match", () => {
    const s = { oneOf: [{ type: "string" }, { type: "string", minLength: 1 }] };
    assert.equal(validate(s, "x").length, 1);
    assert.deepEqual(validate(s, ""), []);
  });

  test("not rejects what matches it", () => {
    const s = { not: { required: ["a", "b"] } };
    assert.deepEqual(validate(s, { a: 1 }), []);
    assert.deepEqual(
      validate(s, { a: 1, b: 2 }).map((i) => i.message),
      ['must not match {"required":["a","b"]}'],
    );
  });

  test("unsupported keywords throw instead of being ignored", () => {
    assert.throws(() => validate({ type: "string", maxLength: 3 }, "x"), /maxLength/);
    assert.throws(
      () => validate({ type: "object", additionalProperties: { type: "string" } }, {}),
      /additionalProperties/,
    );
  });

  test("the shipped schemas use only supported keywords", () => {
    for (const schema of Object.values(eventSchemas)) validate(schema, {});
  });
});
