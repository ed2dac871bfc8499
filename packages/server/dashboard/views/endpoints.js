import { ApiError, api, describe, withQuery } from "../api.js";
import { ago, badge, fmtTime, h, mount, note, uid } from "../dom.js";
import {
  card,
  cardHead,
  confirmFirst,
  copyButton,
  field,
  localInputValue,
  mono,
  pagedTable,
  pageHeader,
  refreshButton,
  select,
  setTitle,
} from "./common.js";
import { deliveryTable, parked, rememberEndpoint } from "./deliveries.js";
import { testCallButton } from "./test-call.js";

export const EVENT_TYPES = [
  "call.started",
  "call.ended",
  "call.failed",
  "call.transcript",
  "call.recording",
  "call.summary",
];

/** `Name: value` lines ⇄ a headers object. */
function headersText(headers) {
  return Object.entries(headers ?? {})
    .map(([k, v]) => `${k}: ${v}`)
    .join("\n");
}
function parseHeaders(text) {
  const out = {};
  for (const [i, line] of text.split("\n").entries()) {
    if (!line.trim()) continue;
    const at = line.indexOf(":");
    if (at <= 0) throw new Error(`Custom headers, line ${i + 1}: use "Name: value"`);
    out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return out;
}

/** A whole number written plainly: no sign, exponent, hex or leading zero. */
const WHOLE = /^[1-9][0-9]*$/;

function parseAgentIds(text) {
  const parts = text
    .split(/[\s,]+/)
    .map((p) => p.trim())
    .filter(Boolean);
  return parts.map((p) => {
    // Digits only: Number() would take "0x1" or "1e0" as 1, which the API refuses in its own
    // query parameters for the same reason.
    if (!WHOLE.test(p)) throw new Error(`Agent ids: "${p}" is not an agent id`);
    return Number(p);
  });
}

/** The rate limit field: empty is none, else a whole number of attempts per second. */
function parseRateLimit(text) {
  const t = text.trim();
  if (t === "") return null;
  // The upper bound (100,000) is the API's to say: its error marks the field too.
  if (!WHOLE.test(t))
    throw new Error(`Rate limit: "${t}" is not a whole number of attempts per second (1 or more)`);
  return Number(t);
}

function filterSummary(e) {
  const types = e.event_types.length === 0 ? "All events" : e.event_types.join(", ");
  const rate = e.rate_limit ? ` · at most ${e.rate_limit}/s` : "";
  return `${e.agent_ids.length ? `${types} · agents ${e.agent_ids.join(", ")}` : types}${rate}`;
}

/** Disabled, failing (every attempt since `failing_since` failed; retried) or enabled. */
export function endpointStatus(e) {
  if (e.disabled) return badge("disabled");
  if (e.failing_since)
    return h(
      "span",
      { class: "badge badge-warn", title: `every attempt failed since ${fmtTime(e.failing_since)}` },
      "failing",
    );
  return badge("enabled");
}

/**
 * The create / edit form: URL, description, event type checkboxes, agent ids, custom headers, rate
 * limit.
 * `submit(body)` sends it; the form shows the API's error, naming the field. With `cancelHref`
 * a Cancel link leads there without saving.
 */
function endpointForm(initial, submitLabel, submit, cancelHref) {
  const url = h("input", {
    name: "url",
    type: "url",
    required: true,
    value: initial.url ?? "",
    placeholder: "https://example.com/webhooks/klen",
  });
  const description = h("input", {
    name: "description",
    type: "text",
    value: initial.description ?? "",
    maxlength: "1000",
  });
  const boxes = EVENT_TYPES.map((t) =>
    h("input", {
      type: "checkbox",
      name: "event_types",
      value: t,
      checked: (initial.event_types ?? []).includes(t),
    }),
  );
  const agents = h("input", {
    name: "agent_ids",
    type: "text",
    value: (initial.agent_ids ?? []).join(", "),
    placeholder: "e.g. 1, 2",
    inputmode: "numeric",
  });
  const headers = h(
    "textarea",
    { name: "headers", rows: "3", placeholder: "X-Team: voice", spellcheck: "false" },
    headersText(initial.headers),
  );
  const rate = h("input", {
    name: "rate_limit",
    type: "text",
    value: initial.rate_limit ?? "",
    placeholder: "no limit",
    inputmode: "numeric",
  });
  const status = h("p", { class: "note", role: "status", id: uid("s") });
  const button = h("button", { class: "btn btn-primary", type: "submit" }, submitLabel);
  const controls = { url, description, event_types: boxes[0], agent_ids: agents, headers, rate_limit: rate };
  // The field at fault is marked invalid, described by the error line and focused, so a screen
  // reader hears which field and why, and the user is at it.
  const flag = (name, message) => {
    note(status, message, "error");
    const control = controls[name];
    if (!control) return;
    control.setAttribute("aria-invalid", "true");
    const described = (control.getAttribute("aria-describedby") ?? "").split(" ").filter(Boolean);
    if (!described.includes(status.id))
      control.setAttribute("aria-describedby", [...described, status.id].join(" "));
    control.focus();
  };
  const unflag = () => {
    for (const control of Object.values(controls)) {
      control.removeAttribute("aria-invalid");
      const rest = (control.getAttribute("aria-describedby") ?? "")
        .split(" ")
        .filter((id) => id && id !== status.id);
      if (rest.length) control.setAttribute("aria-describedby", rest.join(" "));
      else control.removeAttribute("aria-describedby");
    }
  };
  /** Reads one field, or flags it with its parse error. */
  const read = (name, parse) => {
    try {
      return parse();
    } catch (err) {
      flag(name, err.message);
      throw err;
    }
  };

  return h(
    "form",
    {
      class: "form",
      onsubmit: async (ev) => {
        ev.preventDefault();
        unflag();
        let body;
        try {
          body = {
            url: url.value.trim(),
            description: description.value,
            event_types: boxes.filter((b) => b.checked).map((b) => b.value),
            agent_ids: read("agent_ids", () => parseAgentIds(agents.value)),
            headers: read("headers", () => parseHeaders(headers.value)),
            rate_limit: read("rate_limit", () => parseRateLimit(rate.value)),
          };
        } catch {
          return;
        }
        button.disabled = true;
        try {
          await submit(body, status);
        } catch (err) {
          const name = err instanceof ApiError ? String(err.details?.field ?? "").split(".")[0] : "";
          if (name in controls) flag(name, describe(err));
          else note(status, describe(err), "error");
        } finally {
          button.disabled = false;
        }
      },
    },
    field("Endpoint URL", url),
    field("Description", description),
    h(
      "fieldset",
      { class: "field" },
      h("legend", {}, "Event types"),
      h("p", { class: "hint" }, "Leave all unchecked to receive every event type."),
      h(
        "div",
        { class: "checks" },
        boxes.map((b) => h("label", { class: "check" }, b, h("span", {}, b.value))),
      ),
    ),
    field("Agent ids", agents, "Only calls of these agents; empty for all agents."),
    field("Custom headers", headers, "One per line, sent with every delivery."),
    field(
      "Rate limit",
      rate,
      "Attempts per second at most, retries included; empty for no limit. Deliveries over it wait their turn; a call's events stay in order.",
    ),
    status,
    h(
      "div",
      { class: "form-actions" },
      button,
      cancelHref ? h("a", { class: "btn btn-secondary", href: cancelHref }, "Cancel") : null,
    ),
  );
}

/** `#/endpoints` */
export async function renderEndpoints(main) {
  const table = pagedTable({
    label: "Endpoints",
    columns: ["Endpoint", "Events", "Status", "Created"],
    empty: "No endpoints yet. Add one to start receiving call events.",
    load: (cursor) => api("GET", withQuery("/v1/endpoints", { cursor, limit: 50 })),
    row: (e) =>
      h(
        "tr",
        { dataset: { endpoint: e.id } },
        h(
          "td",
          { class: "endpoint-cell" },
          h("a", { href: `#/endpoints/${e.id}`, class: "strong clamp-2", title: e.url }, e.url),
          e.description
            ? h("div", { class: "muted small clamp-2", title: e.description }, e.description)
            : null,
        ),
        h("td", { class: "small" }, filterSummary(e)),
        h("td", {}, endpointStatus(e)),
        h("td", { class: "nowrap" }, ago(e.created_at)),
      ),
  });
  mount(
    main,
    pageHeader(
      "Endpoints",
      "Where Klen sends your call events, signed and retried.",
      h("a", { class: "btn btn-primary", href: "#/endpoints/new" }, "Add endpoint"),
    ),
    card(null, table.el),
  );
  await table.reload();
}

/** `#/endpoints/new` */
export async function renderNewEndpoint(main) {
  mount(
    main,
    pageHeader("Add endpoint", "Klen signs every delivery with the endpoint's secret (Standard Webhooks)."),
    card(
      null,
      endpointForm(
        {},
        "Create endpoint",
        async (body) => {
          const e = await api("POST", "/v1/endpoints", body);
          location.hash = `#/endpoints/${e.id}`;
        },
        "#/endpoints",
      ),
    ),
  );
}

function secretCard(e) {
  const masked = "whsec_••••••••••••••••••••••••";
  const value = h("code", { class: "secret mono", "aria-label": "Signing secret" }, masked);
  let shown = false;
  const status = h("p", { class: "note", role: "status" });
  const reveal = h("button", { class: "btn btn-secondary btn-sm", type: "button" }, "Reveal");
  reveal.addEventListener("click", async () => {
    if (shown) {
      mount(value, masked);
      mount(reveal, "Reveal");
      shown = false;
      return;
    }
    try {
      const r = await api("GET", `/v1/endpoints/${e.id}/secret`);
      mount(value, r.secret);
      mount(reveal, "Hide");
      shown = true;
      note(
        status,
        r.previous_secret_expires_at
          ? `Secrets rotated out are also valid, the last of them until ${fmtTime(r.previous_secret_expires_at)}.`
          : "",
      );
    } catch (err) {
      note(status, describe(err), "error");
    }
  });
  const grace = select("grace", [
    ["86400", "Keep old secret 24 hours"],
    ["3600", "Keep old secret 1 hour"],
    ["604800", "Keep old secret 7 days"],
    ["0", "Expire old secret now"],
  ]);
  grace.setAttribute("aria-label", "Grace period for the old secret");
  const rotate = h("button", { class: "btn btn-secondary", type: "button" }, "Rotate secret");
  confirmFirst(rotate, {
    // Keeping the old secret for a while needs no confirming; expiring it at once breaks every
    // receiver that has not got the new one.
    needed: () => grace.value === "0",
    armedLabel: "Confirm rotate",
    warn: (message) => note(status, message, "warn"),
    warning: () =>
      "Click Confirm rotate to rotate with no grace period: receivers still on the current secret fail to verify from then on.",
    action: async () => {
      rotate.disabled = true;
      try {
        const seconds = Number(grace.value);
        const r = await api("POST", `/v1/endpoints/${e.id}/rotate-secret`, { grace_seconds: seconds });
        mount(value, r.secret);
        mount(reveal, "Hide");
        shown = true;
        note(
          status,
          r.previous_secret_expires_at
            ? `Secret rotated. Deliveries are also signed with the secrets rotated out, the last of them until ${fmtTime(r.previous_secret_expires_at)}.`
            : "Secret rotated. Earlier secrets no longer verify.",
        );
      } catch (err) {
        note(status, describe(err), "error");
      } finally {
        rotate.disabled = false;
      }
    },
  });
  return card(
    "Signing secret",
    h(
      "p",
      { class: "muted small" },
      "Verify the webhook-signature header with this secret, e.g. with @klen/webhooks.",
    ),
    h(
      "div",
      { class: "secret-row" },
      value,
      reveal,
      // Copies without revealing: the secret is fetched when it is not on the page.
      copyButton(
        "Copy signing secret",
        async () => (shown ? value.textContent : (await api("GET", `/v1/endpoints/${e.id}/secret`)).secret),
        status,
      ),
    ),
    h("div", { class: "inline-form" }, grace, rotate),
    status,
  );
}

/** Deleting the endpoint, with a second click to confirm; then back to the list. */
function deleteCard(e) {
  const status = h("p", { class: "note", role: "status" });
  const button = h("button", { class: "btn btn-danger", type: "button" }, "Delete endpoint");
  confirmFirst(button, {
    armedLabel: "Confirm delete",
    warn: (message) => note(status, message, "warn"),
    warning: () =>
      "Click Confirm delete to delete this endpoint: it gets no more events, and its deliveries still waiting are not sent. Its delivery log stays.",
    action: async () => {
      button.disabled = true;
      try {
        await api("DELETE", `/v1/endpoints/${e.id}`);
        location.hash = "#/endpoints";
      } catch (err) {
        note(status, describe(err), "error");
        button.disabled = false;
      }
    },
  });
  return card(
    "Delete",
    h("p", { class: "muted small" }, "Stop sending this endpoint anything, for good."),
    button,
    status,
  );
}

const countDeliveries = (n) => `${n.toLocaleString()} ${n === 1 ? "delivery" : "deliveries"}`;
const countEvents = (n) => `${n.toLocaleString()} ${n === 1 ? "event" : "events"}`;

/**
 * The card's two actions over the same time range: what each calls, and its words for what it did,
 * in the request (`queued`) or as a background job (`started`, `running`, `stopped`).
 */
const RANGE_ACTIONS = {
  recover: {
    label: "Recover failed deliveries",
    verb: "recover",
    queued: (n) => `Queued ${countDeliveries(n)} for another attempt.`,
    started: (r) => `Found ${countDeliveries(r.queued)}: queuing them in the background…`,
    running: (job) => `Queued ${job.queued.toLocaleString()} of ${countDeliveries(job.found)} so far…`,
    stopped: (job) =>
      `Stopped after queuing ${countDeliveries(job.queued)} of ${job.found.toLocaleString()}: the endpoint was disabled or deleted meanwhile.`,
  },
  replay: {
    label: "Replay missing events",
    verb: "replay",
    // `filtered`: the endpoint takes only some event types or agents, and so is replayed only those.
    queued: (n, since, filtered) =>
      n === 0
        ? `Nothing missing: this endpoint has a delivery for every event${filtered ? " its filter takes" : ""} since ${fmtTime(since)}.`
        : `Queued ${countEvents(n)} this endpoint never had.`,
    // A replay does not count its events in advance: no total to show.
    started: () => "Queuing the missing events in the background…",
    running: (job) => `${countEvents(job.queued)} queued so far…`,
    stopped: (job) =>
      `Stopped after queuing ${countEvents(job.queued)}: the endpoint was disabled or deleted meanwhile.`,
  },
};

/**
 * A recover or replay larger than the server's KLEN_RECOVER_BATCH runs in the background (202 with
 * a `job_id`): its progress, from GET /v1/recover-jobs/{id} each second while the page shows it,
 * in the words of `action` (RANGE_ACTIONS).
 */
async function followRecoverJob(status, jobId, action, since, filtered) {
  while (status.isConnected) {
    await new Promise((r) => setTimeout(r, 1000));
    if (!status.isConnected) return;
    let job;
    try {
      job = await api("GET", `/v1/recover-jobs/${jobId}`);
    } catch (err) {
      // A server restarting: the job goes on there; try again.
      if (err instanceof ApiError && err.status > 0 && err.status < 500)
        return note(status, describe(err), "error");
      continue;
    }
    if (job.status === "finished") return note(status, action.queued(job.queued, since, filtered));
    if (job.status === "stopped") return note(status, action.stopped(job), "error");
    note(status, action.running(job));
  }
}

/**
 * Recover and replay over a time range since a time: one field, a button for each, one status line.
 * `current()` is the endpoint as the page last read it (its filter, for the replay's words).
 */
function recoverCard(current, done) {
  const id = current().id;
  const since = h("input", { type: "datetime-local", name: "since", required: true, step: "1" });
  since.value = localInputValue(new Date(Date.now() - 24 * 3600 * 1000));
  const status = h("p", { class: "note", role: "status" });
  const buttons = Object.entries(RANGE_ACTIONS).map(([kind, action]) =>
    h("button", { class: "btn btn-secondary", type: "submit", value: kind }, action.label),
  );
  return card(
    "Recover and replay",
    h(
      "p",
      { class: "muted small" },
      "Recover gives the failed deliveries since a time one more attempt. Replay sends the events never sent to this endpoint at all: made while it was disabled, before it existed, or outside its filter then.",
    ),
    h(
      "form",
      {
        class: "inline-form",
        onsubmit: async (ev) => {
          ev.preventDefault();
          // Enter in the field submits with the first button: Recover, as before Replay was added.
          const kind = ev.submitter?.value === "replay" ? "replay" : "recover";
          const action = RANGE_ACTIONS[kind];
          const when = new Date(since.value);
          if (Number.isNaN(when.getTime()))
            return note(status, `Pick a time to ${action.verb} from.`, "error");
          const e = current();
          const filtered = e.event_types.length > 0 || e.agent_ids.length > 0;
          const from = when.toISOString();
          for (const b of buttons) b.disabled = true;
          try {
            const r = await api("POST", `/v1/endpoints/${id}/${kind}`, { since: from });
            // The buttons stay off while a background job is followed: a second press would start
            // a second job writing to the same line.
            if (r.job_id) {
              note(status, action.started(r));
              await followRecoverJob(status, r.job_id, action, from, filtered);
            } else note(status, action.queued(r.queued, from, filtered));
            // A reload that fails says so in its table; the action's line stays as it is.
            if (status.isConnected) await done().catch(() => {});
          } catch (err) {
            // The API's words name its routes; the dashboard's say where to go.
            const text =
              err instanceof ApiError && err.code === "endpoint_disabled"
                ? `This endpoint is disabled: enable it (at the top of this page), then ${action.verb}.`
                : describe(err);
            note(status, text, "error");
          } finally {
            for (const b of buttons) b.disabled = false;
          }
        },
      },
      field("Since", since),
      buttons,
    ),
    status,
  );
}

// After a test call the recent deliveries are reloaded until its deliveries are all there and
// none is pending, every 1.5 s and at most 12 times: a test call's five events are usually
// delivered within a few seconds; an endpoint that fails keeps them pending for its retries.
const FOLLOW_EVERY_MS = 1500;
const FOLLOW_TIMES = 12;

/**
 * Reloads the deliveries until the call's are all there and finished, telling `seen` the call's
 * deliveries after each reload.
 */
async function followTestCall(table, callId, expected, also, seen) {
  for (let i = 0; i < FOLLOW_TIMES; i++) {
    await new Promise((r) => setTimeout(r, FOLLOW_EVERY_MS));
    if (!table.el.isConnected) return; // the page was left
    const [rows] = await Promise.all([table.reload(), also()]);
    const mine = (rows ?? []).filter((d) => d.call_id === callId);
    seen(mine);
    if (mine.length >= expected && mine.every((d) => d.status !== "pending")) return;
  }
}

/**
 * Not one of the call's deliveries answered 2xx, and each was tried or waits behind one that was
 * (a call's later events are held back while an earlier one is being retried).
 */
function noneArrived(deliveries) {
  const ok = (a) => a.status_code !== null && a.status_code >= 200 && a.status_code < 300;
  const tried = (d) => d.status === "failed" || d.attempts.length > 0;
  return (
    deliveries.some(tried) &&
    !deliveries.some((d) => d.attempts.some(ok)) &&
    deliveries.every((d) => tried(d) || parked(d))
  );
}

/** `#/endpoints/{id}` */
export async function renderEndpoint(main, id) {
  let e = await api("GET", `/v1/endpoints/${encodeURIComponent(id)}`);
  rememberEndpoint(e);
  const status = h("p", { class: "note", role: "status" });
  const clearWarning = () => {
    if (!status.classList.contains("note-warn")) return;
    status.replaceChildren();
    status.className = "note";
    status.hidden = true;
  };

  const testButton = testCallButton(e.id, status, (callId, expected) =>
    followTestCall(deliveries, callId, expected, refreshEndpoint, (mine) => {
      // The green "started" banner of this call, while none of its events got through.
      const ours = status.classList.contains("note-ok") && status.textContent.includes(`call #${callId}.`);
      if (!ours || !noneArrived(mine)) return;
      note(
        status,
        `No event of test call #${callId} has reached this endpoint: every attempt so far failed (its deliveries are below, with each response).`,
        "warn",
      );
    }),
  );

  /**
   * The Enable / Disable button for the endpoint as the header shows it, made anew with the
   * header: it does what it says, even when the endpoint changed behind the page since (the worker
   * disables one that answered 410).
   */
  const toggleFor = (shownDisabled) => {
    const toggle = h(
      "button",
      { class: shownDisabled ? "btn btn-primary" : "btn btn-danger", type: "button" },
      shownDisabled ? "Enable endpoint" : "Disable endpoint",
    );
    confirmFirst(toggle, {
      // Enabling needs no confirming; disabling stops deliveries, and events meanwhile never arrive.
      needed: () => !shownDisabled,
      armedLabel: "Confirm disable",
      warn: (message) => note(status, message, "warn"),
      warning: () =>
        "Click Confirm disable to stop deliveries to this endpoint: events created while it is disabled are never sent to it.",
      action: async () => {
        toggle.disabled = true;
        try {
          await api("PATCH", `/v1/endpoints/${e.id}`, { disabled: !shownDisabled });
          await renderEndpoint(main, id);
          // The page is drawn anew: focus on its new Enable / Disable button, not lost.
          main.querySelector(".page-header .actions button:last-child")?.focus();
        } catch (err) {
          note(status, describe(err), "error");
          toggle.disabled = false;
        }
      },
    });
    return toggle;
  };

  const deliveries = deliveryTable(
    { endpoint_id: e.id },
    { showEndpoint: false, label: "Deliveries to this endpoint" },
  );

  // The title and the facts under it, drawn again when the form saves the endpoint, and when a
  // reload finds it changed (disabled by the worker, failing since, edited elsewhere).
  const header = h("div");
  const drawHeader = () =>
    mount(
      header,
      pageHeader(
        e.description ? h("span", { class: "clamp-2", title: e.description }, e.description) : "Endpoint",
        null,
        testButton,
        toggleFor(Boolean(e.disabled)),
      ),
      h(
        "div",
        { class: "endpoint-meta" },
        h("span", { class: "mono url clamp-3", title: e.url }, e.url),
        endpointStatus(e),
        e.disabled && e.disabled_reason ? h("span", { class: "muted small" }, e.disabled_reason) : null,
        h("span", { class: "muted small" }, "ID ", mono(e.id)),
        // Its filters, when it has any: what a test call or a new event reaches it with.
        e.event_types.length || e.agent_ids.length
          ? h(
              "span",
              { class: "muted small endpoint-filters" },
              `only ${e.event_types.length ? e.event_types.join(", ") : "all events"}`,
              e.agent_ids.length ? ` of agents ${e.agent_ids.join(", ")}` : "",
            )
          : null,
        e.failing_since
          ? h("span", { class: "muted small" }, "every attempt failed since ", fmtTime(e.failing_since))
          : null,
        e.rate_limit
          ? h("span", { class: "muted small" }, `at most ${e.rate_limit} attempts a second`)
          : null,
      ),
    );
  drawHeader();
  // Read again with the deliveries; the header is drawn again only if the endpoint changed, so a
  // refresh does not take the focus from its buttons for nothing.
  const refreshEndpoint = async () => {
    // A failure shows in the deliveries table, reloaded beside it; the header stays as it was.
    const fresh = await api("GET", `/v1/endpoints/${encodeURIComponent(id)}`).catch(() => undefined);
    if (!fresh || !header.isConnected || JSON.stringify(fresh) === JSON.stringify(e)) return;
    e = fresh;
    rememberEndpoint(e);
    drawHeader();
  };

  mount(
    main,
    h("a", { href: "#/endpoints", class: "back" }, "← Endpoints"),
    header,
    status,
    h(
      "div",
      { class: "grid-2" },
      h(
        "div",
        { class: "stack" },
        secretCard(e),
        // The recent deliveries show what a recover or replay queued once it is done.
        recoverCard(
          () => e,
          () => deliveries.reload(),
        ),
        deleteCard(e),
      ),
      card(
        "Settings and filters",
        endpointForm(e, "Save changes", async (body, st) => {
          const { url, ...rest } = body;
          e = await api("PATCH", `/v1/endpoints/${e.id}`, url === e.url ? rest : body);
          rememberEndpoint(e);
          // A warning about the endpoint as it was (a test call its filters left out) is stale now.
          clearWarning();
          drawHeader();
          setTitle(e.description || "Endpoint");
          note(st, "Saved.");
        }),
      ),
    ),
    card(
      null,
      cardHead(
        "Recent deliveries",
        refreshButton(
          () => {
            clearWarning();
            return Promise.all([deliveries.reload(), refreshEndpoint()]);
          },
          { small: true },
        ),
      ),
      deliveries.el,
    ),
  );
  await deliveries.reload();
}
