import { api, withQuery } from "../api.js";
import { ago, h, jsonBlock, mount } from "../dom.js";
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
import { EVENT_TYPES } from "./endpoints.js";

/**
 * One event: a summary row and a row with its JSON body, collapsed unless `expanded` or in `open`
 * (a table's open events, kept across reloads).
 */
export function eventRows(e, expanded = false, open = new Set()) {
  if (open.has(e.id)) expanded = true;
  const toggle = h(
    "button",
    { class: "expander", type: "button", "aria-expanded": String(expanded), "aria-label": `Body of ${e.id}` },
    "▸",
  );
  const detail = h(
    "tr",
    { class: "detail", hidden: !expanded },
    h(
      "td",
      { colspan: "4" },
      h(
        "div",
        { class: "detail-body" },
        h(
          "div",
          { class: "detail-head" },
          h("span", { class: "muted small" }, "Body as delivered (", mono("webhook-id: "), mono(e.id), ")"),
          h("span", { class: "spacer" }),
          h("a", { class: "btn btn-secondary btn-sm", href: `#/deliveries?event_id=${e.id}` }, "Deliveries"),
        ),
        jsonBlock(e.payload, `Body of ${e.id}`),
      ),
    ),
  );
  const row = h(
    "tr",
    { class: "event", dataset: { event: e.id, type: e.event_type } },
    h("td", { class: "nowrap" }, toggle, h("span", { class: "event-type" }, e.event_type)),
    h("td", {}, mono(e.id)),
    h("td", {}, h("a", { href: `#/calls/${e.call_id}` }, `#${e.call_id}`)),
    h("td", { class: "nowrap" }, ago(e.created_at)),
  );
  row.classList.toggle("open", expanded);
  toggle.addEventListener("click", () => {
    const opening = detail.hidden;
    detail.hidden = !opening;
    toggle.setAttribute("aria-expanded", String(opening));
    row.classList.toggle("open", opening);
    if (opening) open.add(e.id);
    else open.delete(e.id);
  });
  return [row, detail];
}

/** A paged events table, optionally filtered. */
export function eventTable(filters, label = "Events") {
  const open = tableMemory(label).open;
  return pagedTable({
    label,
    columns: ["Event", "ID", "Call", "Created"],
    empty: "No events match.",
    load: (cursor) => api("GET", withQuery("/v1/events", { ...filters, cursor, limit: 25 })),
    row: (e) => eventRows(e, false, open),
  });
}

/** `#/events?event_type=…&call_id=…&before=…` (or `?event_id=…` for one event, opened). */
export async function renderEvents(main, query) {
  const eventId = query.get("event_id");
  if (eventId) {
    const e = await api("GET", `/v1/events/${encodeURIComponent(eventId)}`);
    mount(
      main,
      h("a", { href: "#/events", class: "back" }, "← Events"),
      pageHeader(e.event_type, null),
      card(
        null,
        // In the wrap every list has (common.js), so a long row scrolls inside the card, not the page.
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "table", "aria-label": "Event" },
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                ["Event", "ID", "Call", "Created"].map((c) => h("th", { scope: "col" }, c)),
              ),
            ),
            h("tbody", {}, eventRows(e, true)),
          ),
        ),
      ),
    );
    return;
  }
  const filters = {
    event_type: query.get("event_type") ?? "",
    call_id: query.get("call_id") ?? "",
    before: query.get("before") ?? "",
  };
  const type = select(
    "event_type",
    [["", "All event types"], ...EVENT_TYPES.map((t) => [t, t])],
    filters.event_type,
  );
  const callId = h("input", {
    name: "call_id",
    type: "number",
    min: "1",
    value: filters.call_id,
    placeholder: "Any call",
  });
  const before = beforeInput(filters.before);
  const apply = (ev) => {
    ev?.preventDefault();
    const q = new URLSearchParams();
    if (type.value) q.set("event_type", type.value);
    if (callId.value) q.set("call_id", callId.value);
    const instant = beforeValue(before);
    if (instant) q.set("before", instant);
    location.hash = `#/events${q.toString() ? `?${q}` : ""}`;
  };
  type.addEventListener("change", apply);
  const table = eventTable(filters);
  mount(
    main,
    pageHeader(
      "Events",
      "Every call event generated for your account, newest first.",
      refreshButton(table.reload),
    ),
    h(
      "form",
      { class: "filters", onsubmit: apply },
      field("Event type", type),
      field("Call id", callId),
      field("Created before", before),
      h("button", { class: "btn btn-secondary", type: "submit" }, "Filter"),
    ),
    card(null, table.el),
  );
  await table.reload();
}
