import { api, describe, withQuery } from "../api.js";
import { ago, badge, fmtTime, h, mount } from "../dom.js";
import { card, cardHead, field, mono, pagedTable, pageHeader, refreshButton, select } from "./common.js";
import { eventTable } from "./events.js";

// Agent names for display, fetched once per page (first 100 agents; others show their id).
const agentNames = new Map();
async function loadAgents() {
  try {
    const r = await api("GET", "/v1/agents?limit=100");
    for (const a of r.data) agentNames.set(a.id, a.name);
  } catch {
    /* names are a nicety: ids still show */
  }
}
const agentLabel = (id) => agentNames.get(id) ?? `Agent ${id}`;

function duration(c) {
  if (c.duration_seconds === null || c.duration_seconds === undefined) return "—";
  const m = Math.floor(c.duration_seconds / 60);
  const s = c.duration_seconds % 60;
  return m ? `${m}m ${String(s).padStart(2, "0")}s` : `${s}s`;
}

/** `#/calls?status=…` */
export async function renderCalls(main, query) {
  await loadAgents();
  const status = select(
    "status",
    [
      ["", "All statuses"],
      ["queued", "Queued"],
      ["in-progress", "In progress"],
      ["completed", "Completed"],
      ["failed", "Failed"],
    ],
    query.get("status") ?? "",
  );
  status.addEventListener("change", () => {
    location.hash = status.value ? `#/calls?status=${status.value}` : "#/calls";
  });
  const table = pagedTable({
    label: "Calls",
    columns: ["Call", "Status", "Type", "Phone number", "Agent", "Started", "Duration"],
    empty: "No calls match.",
    load: (cursor) => api("GET", withQuery("/v1/calls", { status: status.value, cursor, limit: 25 })),
    row: (c) =>
      h(
        "tr",
        { class: "call", dataset: { call: String(c.id) } },
        h(
          "td",
          {},
          h("a", { href: `#/calls/${c.id}`, class: "strong" }, `#${c.id}`),
          c.klen_call_id
            ? h("div", { class: "muted small mono clamp-2 id-under", title: c.klen_call_id }, c.klen_call_id)
            : null,
        ),
        h("td", {}, badge(c.status)),
        h("td", {}, c.type),
        h("td", { class: "mono nowrap" }, c.phone_number),
        h("td", {}, h("bdi", { class: "clamp-2", title: agentLabel(c.agent_id) }, agentLabel(c.agent_id))),
        h("td", { class: "nowrap" }, c.started_at ? ago(c.started_at) : h("span", { class: "muted" }, "—")),
        h("td", { class: "nowrap" }, duration(c)),
      ),
  });
  mount(
    main,
    pageHeader(
      "Calls",
      "Calls reported by your agents, and the events each one produced.",
      refreshButton(table.reload),
    ),
    h("div", { class: "filters" }, field("Status", status)),
    card(null, table.el),
  );
  await table.reload();
}

const KIND_LABEL = { recording: "Recording", transcript: "Transcript", summary: "Summary" };

/** "1.6 KB" for 1,644 bytes: enough to tell a short clip from a long call. */
function fmtSize(bytes) {
  if (bytes < 1000) return `${bytes} bytes`;
  const units = ["KB", "MB", "GB"];
  let n = bytes / 1000;
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n < 10 ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

/**
 * A pre-signed URL on this page's own origin: the blob route is served by the server that serves
 * the dashboard, while KLEN_PUBLIC_URL (what the URL names) may be another name for it, which the
 * page's content security policy would refuse to play from.
 */
function sameOrigin(url) {
  const u = new URL(url);
  const at = u.pathname.indexOf("/v1/blobs/");
  return at < 0 ? url : `${u.pathname.slice(at)}${u.search}`;
}

/**
 * The call's stored content (`GET /v1/calls/{id}/media`): its recording, to play, and the texts too
 * long to go inline in their events; each link is made by this request, so it works even when the
 * event's own URL has expired.
 */
async function mediaCard(callId) {
  let data;
  try {
    ({ data } = await api("GET", `/v1/calls/${encodeURIComponent(callId)}/media`));
  } catch (err) {
    // The call and its events are worth showing without it (a server of an older version, a
    // passing failure): the card says what went wrong.
    return card(
      "Recording and stored texts",
      h("p", { class: "note note-error", role: "status" }, `Could not load them: ${describe(err)}`),
    );
  }
  if (data.length === 0)
    return card(
      "Recording and stored texts",
      h("p", { class: "muted" }, "No recording yet, and no transcript or summary too long to go inline."),
    );
  const label = (m) => (m.event_type === "call.ended" ? "Brief summary" : (KIND_LABEL[m.kind] ?? m.kind));
  return card(
    "Recording and stored texts",
    h(
      "ul",
      { class: "media-list" },
      data.map((m) => {
        const href = sameOrigin(m.url);
        return h(
          "li",
          { class: "media", dataset: { kind: m.kind } },
          h(
            "div",
            { class: "media-head" },
            h("strong", {}, label(m)),
            h("span", { class: "muted small" }, ` ${m.content_type} · ${fmtSize(m.size)}`),
            m.event_id ? h("span", { class: "muted small mono" }, ` · ${m.event_id}`) : null,
          ),
          m.kind === "recording"
            ? h("audio", {
                controls: true,
                preload: "none",
                src: href,
                "aria-label": `${label(m)} of call ${callId}`,
              })
            : null,
          h(
            "div",
            { class: "small" },
            h("a", { href, target: "_blank", rel: "noopener" }, "Open"),
            " · ",
            h("a", { href, download: "" }, "Download"),
            h("span", { class: "muted" }, ` · link valid until ${fmtTime(m.expires_at)}`),
          ),
        );
      }),
    ),
  );
}

/** `#/calls/{id}`: the call, its stored content and its events. */
export async function renderCall(main, id) {
  const [c, media] = await Promise.all([
    api("GET", `/v1/calls/${encodeURIComponent(id)}`),
    mediaCard(id),
    loadAgents(),
  ]);
  const facts = [
    ["Status", badge(c.status)],
    ["Type", c.type],
    ["Phone number", h("span", { class: "mono" }, c.phone_number)],
    // The name isolated: right-to-left characters in it cannot reorder the "(id …)" after it.
    ["Agent", [h("bdi", {}, agentLabel(c.agent_id)), ` (id ${c.agent_id})`]],
    ["Klen call id", c.klen_call_id ? mono(c.klen_call_id) : "—"],
    ["Started", fmtTime(c.started_at)],
    ["Ended", fmtTime(c.ended_at)],
    ["Duration", duration(c)],
    ...(c.failure_reason ? [["Failure reason", c.failure_reason]] : []),
    ...(c.ended_reason ? [["Ended reason", h("bdi", {}, c.ended_reason)]] : []),
    ...(c.summary ? [["Summary", c.summary]] : []),
  ];
  const events = eventTable({ call_id: c.id }, `Events of call ${c.id}`);
  mount(
    main,
    h("a", { href: "#/calls", class: "back" }, "← Calls"),
    pageHeader(`Call #${c.id}`, `Created ${fmtTime(c.created_at)}`),
    card(
      null,
      h(
        "dl",
        { class: "facts" },
        facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))),
      ),
    ),
    media,
    card(null, cardHead("Events", refreshButton(events.reload, { small: true })), events.el),
  );
  await events.reload();
}
