import assert from "node:assert/strict";
import { test } from "node:test";
import { EVENT_TYPES, eventSchemas } from "@klen/webhooks/schemas";
import { Ajv } from "ajv";
import { buildPayload, durationSeconds, type PayloadSource } from "../src/calls/payload.js";
import { type CallState, transition } from "../src/calls/transitions.js";

const base: CallState = {
  id: 1,
  status: "queued",
  started_at: null,
  ended_at: null,
  transcript_at: null,
  summary_at: null,
  recording_at: null,
};

test("the lifecycle allows exactly the documented transitions", () => {
  const now = 1_745_418_645_000;
  assert.equal(transition(base, "end", { now }).ok, false, "end before start");
  assert.equal(transition(base, "transcript", { now }).ok, false, "transcript for a queued call");
  const started = transition(base, "start", { now });
  assert.ok(started.ok && started.event === "call.started" && started.patch.status === "in-progress");
  const running = { ...base, status: "in-progress", started_at: now };
  assert.equal(transition(running, "start", { now }).ok, false, "second start");
  const ended = transition(running, "end", { now: now + 267_000 });
  assert.ok(ended.ok && ended.patch.status === "completed");
  const done = { ...running, status: "completed", ended_at: now + 267_000 };
  assert.equal(transition(done, "end", { now }).ok, false, "second end");
  assert.equal(transition(done, "fail", { now, failure_reason: "busy" }).ok, false, "fail after completion");
  for (const step of ["transcript", "summary", "recording"] as const) {
    assert.ok(transition(done, step, { now }).ok, step);
    assert.equal(transition({ ...done, [`${step}_at`]: now }, step, { now }).ok, false, `second ${step}`);
  }
  // failed before connecting: no started_at, and nothing may follow
  const failedEarly = transition(base, "fail", { now, failure_reason: "no-answer" });
  assert.ok(failedEarly.ok && failedEarly.patch.ended_reason === "no-answer");
  const early = { ...base, status: "failed", ended_at: now };
  assert.equal(transition(early, "transcript", { now }).ok, false);
  // failed after it had started: transcript may follow
  assert.ok(transition({ ...running, status: "failed", ended_at: now }, "transcript", { now }).ok);
  const wrongTime = transition(running, "end", { now, ended_at: now - 1000 });
  assert.ok(!wrongTime.ok && wrongTime.status === 400 && wrongTime.field === "ended_at");
});

test("an ended_at equal to the started_at shown (whole seconds) ends a call of 0 seconds", () => {
  // Started at .700 of a second; the API and the events show that second without its fraction.
  const startedAt = Date.parse("2025-04-23T14:30:45.700Z");
  const running = { ...base, status: "in-progress", started_at: startedAt };
  const shown = Date.parse("2025-04-23T14:30:45Z");
  for (const step of ["end", "fail"] as const) {
    const r = transition(running, step, { now: startedAt + 5_000, ended_at: shown, failure_reason: "busy" });
    assert.ok(r.ok, `${step}: ${JSON.stringify(r)}`);
    assert.equal(r.patch.ended_at, shown);
    const body = buildPayload(
      r.event,
      source({ status: r.patch.status as string, started_at: startedAt, ended_at: shown }),
      startedAt + 5_000,
    );
    const call = body.call as Record<string, unknown>;
    assert.equal(call.started_at, "2025-04-23T14:30:45Z");
    assert.equal(call.ended_at, "2025-04-23T14:30:45Z");
    assert.equal(call.duration_seconds, 0);
  }
  // A second earlier than the shown start is still before it.
  const before = transition(running, "end", { now: startedAt, ended_at: shown - 1 });
  assert.ok(!before.ok && before.status === 400 && before.field === "ended_at");
});

const source = (over: Partial<PayloadSource["call"]> = {}): PayloadSource => ({
  call: {
    id: 123,
    klen_call_id: "call_abc123",
    status: "completed",
    type: "inbound",
    phone_number: "+15551234567",
    started_at: Date.parse("2025-04-23T14:30:45Z"),
    ended_at: Date.parse("2025-04-23T14:35:12Z"),
    assistant_id: "assistant_abc123",
    brief_summary: "Brief summary of the call...",
    failure_reason: null,
    ended_reason: null,
    ...over,
  },
  agent: { id: 456, name: "Customer Support" },
  contact: { id: 789, name: "John Doe", email: "john@example.com" },
});

test("call.ended matches the seed's example field by field", () => {
  const body = buildPayload("call.ended", source(), Date.parse("2025-04-23T14:35:15Z"));
  assert.deepEqual(body, {
    event_type: "call.ended",
    call: {
      id: 123,
      klen_call_id: "call_abc123",
      agent_id: 456,
      agent_name: "Customer Support",
      status: "completed",
      type: "inbound",
      phone_number: "+15551234567",
      started_at: "2025-04-23T14:30:45Z",
      ended_at: "2025-04-23T14:35:12Z",
      duration_seconds: 267,
      summary: "Brief summary of the call...",
      duration: 267,
      contact: { id: 789, name: "John Doe", email: "john@example.com" },
    },
    timestamp: "2025-04-23T14:35:15Z",
  });
});

test("event-specific fields appear only on their events, and every body validates", () => {
  const ajv = new Ajv({ strict: false });
  const now = Date.parse("2025-04-23T14:37:00Z");
  const bodies = {
    "call.started": buildPayload("call.started", source({ status: "in-progress", ended_at: null }), now),
    "call.ended": buildPayload("call.ended", { ...source({ brief_summary: null }), contact: null }, now),
    "call.failed": buildPayload(
      "call.failed",
      source({ status: "failed", started_at: null, failure_reason: "no-answer", ended_reason: "no-answer" }),
      now,
    ),
    "call.transcript": buildPayload(
      "call.transcript",
      { ...source(), content: { transcript: "Full transcript text..." } },
      now,
    ),
    "call.recording": buildPayload(
      "call.recording",
      { ...source(), content: { recording_url: "https://x.test/v1/blobs/abc?expires=1&signature=s" } },
      now,
    ),
    "call.summary": buildPayload(
      "call.summary",
      { ...source(), content: { summary_url: "https://x.test/v1/blobs/abc?expires=1&signature=s" } },
      now,
    ),
  };
  for (const t of EVENT_TYPES) {
    const validate = ajv.compile(eventSchemas[t]);
    assert.ok(validate(bodies[t]), `${t}: ${ajv.errorsText(validate.errors)}`);
  }
  const call = (t: keyof typeof bodies) => bodies[t].call as Record<string, unknown>;
  assert.equal(call("call.started").assistant_id, "assistant_abc123");
  assert.equal(call("call.started").ended_at, null);
  assert.equal(call("call.started").duration_seconds, null);
  assert.equal("summary" in call("call.ended"), false, "no brief summary → key omitted");
  assert.equal("contact" in call("call.ended"), false, "no contact → key omitted");
  assert.equal(call("call.failed").started_at, null);
  assert.equal(call("call.failed").duration_seconds, null);
  assert.equal(call("call.failed").ended_reason, "no-answer");
  assert.equal("transcript_url" in call("call.transcript"), false);
  assert.equal("summary" in call("call.summary"), false);
  for (const t of EVENT_TYPES) {
    if (t !== "call.started") assert.equal("assistant_id" in call(t), false, `${t} has no assistant_id`);
    if (t !== "call.ended") assert.equal("duration" in call(t), false, `${t} has no duration`);
  }
  // The schemas reject what the contract forbids: both transcript forms, a bad phone number.
  const both = structuredClone(bodies["call.transcript"]) as { call: Record<string, unknown> };
  both.call.transcript_url = "https://x.test/t";
  assert.equal(ajv.compile(eventSchemas["call.transcript"])(both), false);
  const badPhone = structuredClone(bodies["call.ended"]) as { call: Record<string, unknown> };
  badPhone.call.phone_number = "5551234567";
  assert.equal(ajv.compile(eventSchemas["call.ended"])(badPhone), false);
});

test("duration is whole seconds, rounded down, and null unless both ends exist", () => {
  assert.equal(durationSeconds(0, 267_999), 267);
  assert.equal(durationSeconds(0, null), null);
  assert.equal(durationSeconds(null, 5), null);
});
