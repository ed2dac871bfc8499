import { api, describe, withQuery } from "../api.js";
import { h, mount, note } from "../dom.js";

// POST /v1/test-calls with an endpoint_id sends the call's events to that endpoint only, through
// its filters as for any call. Without agent_id the call runs as the account's "Test Agent" (the
// lowest id of that name, created by the first test call; src/api/routes/test-calls.ts), and a
// completed call emits these events (src/simulator/run.ts).
const TEST_CALL_TYPES = ["call.started", "call.ended", "call.transcript", "call.summary", "call.recording"];
const TEST_AGENT = "Test Agent";
// Agents are listed newest first, so finding the lowest-id "Test Agent" reads every page: bounded.
const AGENT_PAGES = 10;

/**
 * The account's "Test Agent": `{agent}` (null when there is none yet), or `{agent: undefined}`
 * when the account has more agents than the pages read.
 */
async function findTestAgent() {
  let found = null;
  let cursor;
  for (let i = 0; i < AGENT_PAGES; i++) {
    const r = await api("GET", withQuery("/v1/agents", { limit: 100, cursor }));
    for (const a of r.data) if (a.name === TEST_AGENT && (!found || a.id < found.id)) found = a;
    cursor = r.next_cursor;
    if (!cursor) return { agent: found };
  }
  return { agent: undefined };
}

/**
 * What a test call would bring this endpoint: the event types that pass its filter, or why none
 * would (`blocked`). `agent` is the Test Agent (null: not created yet; undefined: unknown).
 */
export function testCallReach(e, agent) {
  if (e.disabled)
    return { blocked: "This endpoint is disabled, so a test call would send it nothing. Enable it first." };
  const types = e.event_types.length
    ? TEST_CALL_TYPES.filter((t) => e.event_types.includes(t))
    : TEST_CALL_TYPES;
  if (types.length === 0)
    return {
      blocked: `This endpoint's event types (${e.event_types.join(", ")}) include none of a test call's events (${TEST_CALL_TYPES.join(", ")}), so a test call would send it nothing.`,
    };
  if (e.agent_ids.length && agent && !e.agent_ids.includes(agent.id))
    return {
      blocked: `This endpoint's agent filter (agents ${e.agent_ids.join(", ")}) leaves out test calls, which run as agent ${agent.id} (${TEST_AGENT}). Add ${agent.id} to Agent ids to receive them.`,
    };
  return { types, newAgent: e.agent_ids.length > 0 && agent === null };
}

/**
 * The "Send test call" button of an endpoint page. Before starting a call it reads the endpoint
 * afresh and says why nothing would arrive instead of starting one that sends nothing.
 * @param {string} endpointId
 * @param {HTMLElement} status the page's status line
 * @param {(callId: number, expected: number) => void} onStarted called with the number of
 *   deliveries the call should bring this endpoint
 */
export function testCallButton(endpointId, status, onStarted) {
  const button = h("button", { class: "btn btn-secondary", type: "button" }, "Send test call");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const e = await api("GET", `/v1/endpoints/${endpointId}`);
      const { agent } = e.agent_ids.length ? await findTestAgent() : { agent: undefined };
      const reach = testCallReach(e, agent);
      if (reach.blocked) return note(status, reach.blocked, "warn");

      const r = await api("POST", "/v1/test-calls", { endpoint_id: endpointId });
      const link = h("a", { href: `#/calls/${r.call_id}` }, `call #${r.call_id}`);
      // The first test call creates the Test Agent: only then is its id known.
      const call = reach.newAgent ? await api("GET", `/v1/calls/${r.call_id}`) : null;
      if (call && !e.agent_ids.includes(call.agent_id)) {
        mount(
          status,
          "Test call started: ",
          link,
          `. It runs as the new agent ${call.agent_id} (${TEST_AGENT}), which this endpoint's agent filter leaves out, so none of its events arrive here. Add ${call.agent_id} to Agent ids to receive test calls.`,
        );
        status.className = "note note-warn";
      } else {
        const some = reach.types.length < TEST_CALL_TYPES.length;
        mount(
          status,
          "Test call started: ",
          link,
          some
            ? `. Its ${reach.types.join(", ")} ${reach.types.length === 1 ? "event arrives" : "events arrive"} here in a few seconds; this endpoint's event types leave out the others.`
            : ". Its events arrive here in a few seconds.",
        );
        status.className = "note note-ok";
        onStarted(r.call_id, reach.types.length);
      }
      status.hidden = false;
    } catch (err) {
      note(status, describe(err), "error");
    } finally {
      button.disabled = false;
    }
  });
  return button;
}
