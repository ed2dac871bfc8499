import { ApiError, api, describe, withQuery } from "../api.js";
import { ago, badge, fmtMs, fmtTime, h, mount, note } from "../dom.js";
import {
  beforeInput,
  beforeValue,
  card,
  field,
  mono,
  pagedTable,
  pageHeader,
  refreshButton,
  select,
  tableMemory,
} from "./common.js";

// Deliveries carry their event's type but only their endpoint's id: endpoint URLs are looked up
// when a page shows an endpoint not seen yet (at most every 5 s: a deleted endpoint is not listed,
// and would otherwise have every table load them all again), and again when they are a minute old
// (a URL edited elsewhere). The endpoint page tells of its own edits (`rememberEndpoint`).
const endpointUrls = new Map();
let endpointsLoadedAt = 0;
const RELOAD_AFTER_MS = 5_000;
const STALE_AFTER_MS = 60_000;

/** An endpoint as just read or saved: tables show its URL from now on. */
export function rememberEndpoint(e) {
  endpointUrls.set(e.id, e.url);
}
/** Pages of 100 endpoints read for names and the filter: 1,000 endpoints at the most. */
const ENDPOINT_PAGES = 10;

async function lookup(deliveries) {
  const age = Date.now() - endpointsLoadedAt;
  if (
    (deliveries.some((d) => !endpointUrls.has(d.endpoint_id)) && age > RELOAD_AFTER_MS) ||
    age > STALE_AFTER_MS
  )
    await loadEndpoints();
}

/** The account's endpoints (up to 1,000, newest first) for names and filters. */
export async function loadEndpoints() {
  const all = [];
  let cursor;
  for (let page = 0; page < ENDPOINT_PAGES; page++) {
    const r = await api("GET", withQuery("/v1/endpoints", { limit: 100, cursor }));
    all.push(...r.data);
    if (!r.next_cursor) break;
    cursor = r.next_cursor;
  }
  for (const e of all) endpointUrls.set(e.id, e.url);
  endpointsLoadedAt = Date.now();
  return all;
}

/**
 * A pending delivery without a due time is parked: it waits until the earlier events of its call
 * to the same endpoint are finished, so that they arrive in order (docs/api.md, Deliveries).
 */
export const parked = (d) => d.status === "pending" && !d.next_attempt_at;
const sending = (d) => d.status === "pending" && Boolean(d.sending_since);

/** Why a delivery that failed was not sent (again): its endpoint was disabled or deleted. */
const NOT_SENT = {
  endpoint_disabled: "not sent: the endpoint was disabled",
  endpoint_deleted: "not sent: the endpoint was deleted",
};
const notSent = (d) => (d.status === "failed" ? NOT_SENT[d.last_error] : undefined);

function lastResponse(d) {
  const a = d.attempts.at(-1);
  const skipped = notSent(d);
  if (skipped) return h("span", { class: "code-bad" }, skipped);
  if (!a && parked(d))
    return h(
      "span",
      {
        class: "muted",
        title: `Sent after the earlier events of call #${d.call_id} to this endpoint are finished`,
      },
      "waits for an earlier event",
    );
  // Being sent now (a worker holds it): its next_attempt_at is the lease's end, not a due time.
  if (sending(d))
    return h("span", { class: "muted", title: `Being sent since ${fmtTime(d.sending_since)}` }, "sending");
  // Due, with no attempt logged yet.
  if (!a && d.status === "pending")
    return h("span", { class: "muted", title: `First attempt due ${fmtTime(d.next_attempt_at)}` }, "queued");
  if (!a) return h("span", { class: "muted" }, "—");
  if (a.status_code !== null) {
    const ok = a.status_code >= 200 && a.status_code < 300;
    return h("span", { class: ok ? "code-ok" : "code-bad" }, String(a.status_code));
  }
  return h("span", { class: "code-bad" }, (a.error ?? "error").split(":")[0]);
}

function attemptsTable(d) {
  const skipped = notSent(d);
  const table = attemptsOnly(d);
  if (!skipped) return table;
  // Failed without (another) attempt: say so, and what would let it go.
  return h(
    "div",
    {},
    h(
      "p",
      { class: "note note-error" },
      `${skipped[0].toUpperCase()}${skipped.slice(1)} when it came due.`,
      d.last_error === "endpoint_disabled" ? " Enable the endpoint, then retry it." : "",
    ),
    d.attempts.length ? table : null,
  );
}

/** How much of an answer's body the server keeps (delivery/send.ts RESPONSE_BODY_LIMIT). */
const RESPONSE_BODY_KEPT = 8 * 1024;

/**
 * Whether a kept body is shorter than what the server keeps: its bytes as received, where each
 * U+FFFD stood for one invalid byte (send.ts), and a character the 8 KiB cut split left out (up
 * to 3 bytes). Within those 3 bytes of the limit it may have been cut, and is said to be.
 */
function keptWhole(body) {
  let bytes = 0;
  for (const ch of body) {
    const c = ch.codePointAt(0);
    bytes += c === 0xfffd ? 1 : c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
  }
  return bytes < RESPONSE_BODY_KEPT - 3;
}

/**
 * Where an attempt went and what it sent: the URL as it was then (the endpoint's may have
 * changed since), and its request headers, signature included, behind a disclosure.
 */
function requestCell(a) {
  if (!a.url) return h("span", { class: "muted" }, "—");
  const headers = Object.entries(a.request_headers ?? {})
    .map(([k, v]) => `${k}: ${v}`)
    .join("\n");
  return h(
    "details",
    { class: "request" },
    h("summary", { class: "url-cell" }, a.url),
    h("pre", { class: "code code-sm", "aria-label": `Request headers of attempt ${a.number}` }, headers),
  );
}

function attemptsOnly(d) {
  if (d.attempts.length === 0)
    return h(
      "p",
      { class: "muted small" },
      sending(d)
        ? `First attempt being sent since ${fmtTime(d.sending_since)}.`
        : d.next_attempt_at
          ? `First attempt due ${fmtTime(d.next_attempt_at)}.`
          : parked(d)
            ? `No attempt yet: it is sent after the earlier events of call #${d.call_id} to this endpoint.`
            : "No attempt yet.",
    );
  return h(
    "table",
    { class: "table table-inner", "aria-label": `Attempts of ${d.id}` },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["#", "Time", "Sent to", "Status", "Duration", "Error", "Response body"].map((c) =>
          h("th", { scope: "col" }, c),
        ),
      ),
    ),
    h(
      "tbody",
      {},
      d.attempts.map((a) =>
        h(
          "tr",
          { class: "attempt", dataset: { number: String(a.number) } },
          // data-label: the column's name where a narrow screen stacks the cells (styles.css).
          h("td", { "data-label": "Attempt" }, String(a.number)),
          h("td", { class: "nowrap", "data-label": "Time" }, fmtTime(a.started_at)),
          h("td", { class: "small", "data-label": "Sent to" }, requestCell(a)),
          h(
            "td",
            { "data-label": "Status" },
            a.status_code === null
              ? h("span", { class: "muted" }, "—")
              : h(
                  "span",
                  { class: a.status_code >= 200 && a.status_code < 300 ? "code-ok" : "code-bad" },
                  String(a.status_code),
                ),
          ),
          h("td", { class: "nowrap", "data-label": "Duration" }, fmtMs(a.duration_ms)),
          h(
            "td",
            { class: "small", "data-label": "Error" },
            a.error
              ? a.error_message
                ? `${a.error}: ${a.error_message}`
                : a.error
              : h("span", { class: "muted" }, "—"),
          ),
          h(
            "td",
            { "data-label": "Response body" },
            a.response_body
              ? [
                  h("pre", { class: "code code-sm" }, a.response_body),
                  keptWhole(a.response_body)
                    ? null
                    : h(
                        "p",
                        { class: "muted small" },
                        "The first 8 KiB of the answer (the server keeps no more).",
                      ),
                ]
              : h("span", { class: "muted" }, "—"),
          ),
        ),
      ),
    ),
  );
}

/**
 * The two rows of one delivery: the summary and its attempts, collapsed unless the table has
 * them open (`opts.open`, kept across reloads).
 */
function deliveryRows(d, opts) {
  const expanded = opts.open.has(d.id);
  const colspan = opts.showEndpoint ? 7 : 6;
  const toggle = h(
    "button",
    {
      class: "expander",
      type: "button",
      "aria-expanded": String(expanded),
      "aria-label": `Attempts of ${d.id}`,
    },
    "▸",
  );
  const status = h("p", { class: "note", role: "status" });
  // A delivery still on its schedule: Retry now sends an attempt now, and if it fails the next
  // retry stays when and what it was (docs/api.md); a finished one gets one attempt more. A parked one is not
  // offered it: the API refuses it (409 delivery_waiting), as sending it would break the order.
  const retry = h(
    "button",
    {
      class: "btn btn-secondary btn-sm",
      type: "button",
      title:
        d.status !== "pending"
          ? "Sends one more attempt"
          : d.next_attempt_at && Date.parse(d.next_attempt_at) > Date.now()
            ? "Sends an attempt now; if it fails, the next scheduled retry stays as it was"
            : "Sends its attempt, due now",
    },
    "Retry now",
  );
  const detail = h(
    "tr",
    { class: "detail", hidden: !expanded },
    h(
      "td",
      { colspan: String(colspan) },
      h(
        "div",
        { class: "detail-body" },
        h(
          "div",
          { class: "detail-head" },
          h(
            "span",
            { class: "muted small" },
            "Delivery ",
            mono(d.id),
            " · event ",
            h("a", { href: `#/events?event_id=${d.event_id}` }, mono(d.event_id)),
          ),
          h("span", { class: "spacer" }),
          sending(d)
            ? h(
                "span",
                {
                  class: "muted small",
                  title: `If its outcome is lost, it is sent again at ${fmtTime(d.next_attempt_at)}`,
                },
                `being sent since ${fmtTime(d.sending_since)}`,
              )
            : d.next_attempt_at && d.status === "pending"
              ? h("span", { class: "muted small" }, `next attempt ${fmtTime(d.next_attempt_at)}`)
              : parked(d)
                ? h("span", { class: "muted small parked" }, "waits for an earlier event of its call")
                : null,
          // Parked: the API refuses it (delivery_waiting); being sent: it would (delivery_in_flight).
          parked(d) || sending(d) ? null : retry,
        ),
        status,
        attemptsTable(d),
      ),
    ),
  );
  const main = h(
    "tr",
    { class: "delivery", dataset: { delivery: d.id, status: d.status } },
    h("td", { class: "nowrap" }, toggle, badge(d.status)),
    h("td", {}, d.event_type ? h("span", { class: "event-type" }, d.event_type) : mono(d.event_id)),
    opts.showEndpoint
      ? h("td", { class: "small ellipsis" }, endpointUrls.get(d.endpoint_id) ?? d.endpoint_id)
      : null,
    h("td", {}, h("a", { href: `#/calls/${d.call_id}` }, `#${d.call_id}`)),
    h("td", { class: "num" }, String(d.attempts.length)),
    h("td", {}, lastResponse(d)),
    h("td", { class: "nowrap" }, ago(d.created_at)),
  );
  const flip = () => {
    const open = detail.hidden;
    detail.hidden = !open;
    toggle.setAttribute("aria-expanded", String(open));
    if (open) opts.open.add(d.id);
    else opts.open.delete(d.id);
    main.classList.toggle("open", open);
  };
  toggle.addEventListener("click", flip);
  main.classList.toggle("open", expanded);

  retry.addEventListener("click", async () => {
    retry.disabled = true;
    // Attempts made, not the lease_expired row a takeover logs first (the claim of this very retry
    // may log one for a worker that died).
    const made = (x) => x.attempts.filter((a) => a.error !== "lease_expired").length;
    const before = made(d);
    try {
      await api("POST", `/v1/deliveries/${d.id}/retry`);
      note(status, "Retry queued; waiting for the attempt…");
      // Show the new attempt as soon as the dispatcher has logged it, whatever the delivery's
      // status then: a failed attempt with retries left leaves it pending.
      const deadline = Date.now() + 20_000;
      let fresh = d;
      while (Date.now() < deadline && made(fresh) <= before && main.isConnected) {
        await new Promise((r) => setTimeout(r, 400));
        fresh = await api("GET", `/v1/deliveries/${d.id}`);
      }
      if (made(fresh) <= before) {
        // A re-opened delivery waits behind a pending earlier event of its call to this endpoint.
        note(status, "Retry queued, but no attempt has been logged yet. Refresh later to see it.");
        retry.disabled = false;
        return;
      }
      const [m2, d2] = deliveryRows(fresh, opts);
      main.replaceWith(m2);
      detail.replaceWith(d2);
      d2.querySelector(".detail-head button")?.focus(); // the clicked button is gone
    } catch (err) {
      // The API's words name its routes; the dashboard's say where to go.
      const text =
        err instanceof ApiError && err.code === "endpoint_disabled"
          ? "Its endpoint is disabled: enable the endpoint on its page, then retry."
          : err instanceof ApiError && err.code === "endpoint_deleted"
            ? "Its endpoint has been deleted: this delivery cannot be sent again."
            : describe(err);
      note(status, text, "error");
      retry.disabled = false;
    }
  });
  return [main, detail];
}

/**
 * A paged deliveries table with expandable attempts and per-delivery retry.
 * @param {{status?: string, endpoint_id?: string, event_id?: string}} filters
 * @param {{showEndpoint?: boolean, label?: string, limit?: number, paged?: boolean}} [opts]
 */
export function deliveryTable(filters, opts = {}) {
  const o = { showEndpoint: true, label: "Deliveries", ...opts };
  o.open = tableMemory(o.label).open;
  return pagedTable({
    label: o.label,
    columns: [
      "Status",
      "Event",
      ...(o.showEndpoint ? ["Endpoint"] : []),
      "Call",
      "Attempts",
      "Response",
      "Created",
    ],
    empty: "No deliveries match.",
    load: async (cursor) => {
      const page = await api(
        "GET",
        withQuery("/v1/deliveries", { ...filters, cursor, limit: o.limit ?? 20 }),
      );
      return o.paged === false ? { ...page, next_cursor: null } : page;
    },
    after: o.showEndpoint ? lookup : undefined,
    row: (d) => deliveryRows(d, o),
  });
}

/** `text` cut to `max` characters with an ellipsis: a select's options cannot wrap. */
function shorten(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * An endpoint as the filter offers it: URL, description, the end of its id and whether it is
 * disabled, so that two endpoints with one URL differ. An id ends in random characters (its start
 * is the creation time, ids.ts), so six of them tell endpoints apart. An option holds text only,
 * no `<bdi>`: the user's text is isolated with U+2068 … U+2069 instead.
 */
function endpointLabel(e) {
  const isolate = (text) => `\u2068${text}\u2069`;
  return [
    isolate(shorten(e.url, 60)),
    e.description ? ` — ${isolate(shorten(e.description, 30))}` : "",
    ` · …${e.id.slice(-6)}`,
    e.disabled ? " (disabled)" : "",
  ].join("");
}

/** `#/deliveries?status=…&endpoint_id=…&event_id=…&before=…` */
export async function renderDeliveries(main, query) {
  const filters = {
    status: query.get("status") ?? "",
    endpoint_id: query.get("endpoint_id") ?? "",
    event_id: query.get("event_id") ?? "",
    before: query.get("before") ?? "",
  };
  const endpoints = await loadEndpoints();
  const status = select(
    "status",
    [
      ["", "All statuses"],
      ["succeeded", "Succeeded"],
      ["failed", "Failed"],
      ["pending", "Pending"],
    ],
    filters.status,
  );
  // The filter's endpoint missing from the list (deleted, or past the first 1,000) still is the
  // filter: it gets an option of its own rather than the select reading "All endpoints".
  const gone =
    filters.endpoint_id && !endpoints.some((e) => e.id === filters.endpoint_id)
      ? [
          await api("GET", `/v1/endpoints/${encodeURIComponent(filters.endpoint_id)}`).then(
            (e) => [e.id, endpointLabel(e)],
            (err) => [filters.endpoint_id, `${filters.endpoint_id}${err.status === 404 ? " (deleted)" : ""}`],
          ),
        ]
      : [];
  const endpoint = select(
    "endpoint_id",
    [["", "All endpoints"], ...endpoints.map((e) => [e.id, endpointLabel(e)]), ...gone],
    filters.endpoint_id,
  );
  // Applied when the form is sent, not on every change: a date is typed one part at a time.
  const before = beforeInput(filters.before);
  const apply = (ev) => {
    ev?.preventDefault();
    const q = new URLSearchParams();
    if (status.value) q.set("status", status.value);
    if (endpoint.value) q.set("endpoint_id", endpoint.value);
    if (filters.event_id) q.set("event_id", filters.event_id);
    const instant = beforeValue(before);
    if (instant) q.set("before", instant);
    location.hash = `#/deliveries${q.toString() ? `?${q}` : ""}`;
  };
  status.addEventListener("change", apply);
  endpoint.addEventListener("change", apply);
  const table = deliveryTable(filters);
  mount(
    main,
    pageHeader(
      "Deliveries",
      "Every event sent to every endpoint, with each attempt's response.",
      refreshButton(table.reload),
    ),
    h(
      "form",
      { class: "filters", onsubmit: apply },
      field("Status", status),
      field("Endpoint", endpoint),
      field("Created before", before),
      h("button", { class: "btn btn-secondary", type: "submit" }, "Filter"),
      filters.event_id
        ? h(
            "div",
            { class: "chip" },
            "Event ",
            mono(filters.event_id),
            " ",
            h("a", { href: "#/deliveries", "aria-label": "Clear event filter" }, "×"),
          )
        : null,
    ),
    card(null, table.el),
  );
  await table.reload();
}
