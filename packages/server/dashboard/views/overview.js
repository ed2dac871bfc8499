import { api, describe, withQuery } from "../api.js";
import { chartLegend, deliveryChart } from "../chart.js";
import { fmtMs, h, mount } from "../dom.js";
import { card, pageHeader, refreshButton, select } from "./common.js";
import { deliveryTable } from "./deliveries.js";
import { endpointStatus } from "./endpoints.js";

// Range → bucket width: about 60 bars whatever the range.
const RANGES = [
  ["5m", "Last 5 minutes", "5s"],
  ["1h", "Last hour", "1m"],
  ["24h", "Last 24 hours", "30m"],
  ["7d", "Last 7 days", "3h"],
];
const RANGE_MS = { "5m": 300_000, "1h": 3_600_000, "24h": 86_400_000, "7d": 604_800_000 };
const RANGE_KEY = "klen.range";

function tile(label, value, sub) {
  return h(
    "div",
    { class: "tile" },
    h("div", { class: "tile-label" }, label),
    h("div", { class: "tile-value" }, value),
    sub ? h("div", { class: "tile-sub" }, sub) : null,
  );
}

async function loadStats(range) {
  const [, , bucket] = RANGES.find((r) => r[0] === range) ?? RANGES[2];
  // Align the window to the bucket width so that bars do not shift between reloads.
  const width = { "5s": 5e3, "1m": 6e4, "30m": 18e5, "3h": 108e5 }[bucket];
  const until = Math.ceil(Date.now() / width) * width;
  const since = until - RANGE_MS[range];
  return api(
    "GET",
    withQuery("/v1/stats/deliveries", {
      since: new Date(since).toISOString(),
      until: new Date(until).toISOString(),
      bucket,
    }),
  );
}

/**
 * A URL shortened in its middle: endpoints of one receiver differ at the end of their paths, which
 * cutting at the end (as the card's width does) hid ("http://127.0.0.…" for all of them).
 */
function middleCut(text, max = 40) {
  if (text.length <= max) return text;
  const tail = Math.floor((max - 1) / 2);
  return `${text.slice(0, max - 1 - tail)}…${text.slice(-tail)}`;
}

/** `#/overview`: delivery health over time, recent failures, endpoints. */
export async function renderOverview(main) {
  const range = select(
    "range",
    RANGES.map(([v, label]) => [v, label]),
    sessionStorage.getItem(RANGE_KEY) ?? "24h",
  );
  range.setAttribute("aria-label", "Time range");
  const tiles = h("div", { class: "tiles" });
  const chartBox = h("div", { class: "chart-box" });
  let shown = null; // the stats drawn, and the width they were drawn for
  const drawChart = (stats) => {
    shown = { stats, width: chartBox.clientWidth };
    mount(chartBox, deliveryChart(stats, shown.width || undefined), chartLegend());
  };
  // The chart is drawn to its box's width: drawn again when that changes (a rotated phone).
  const resized = new ResizeObserver(() => {
    if (!chartBox.isConnected) return resized.disconnect();
    if (shown && Math.abs(chartBox.clientWidth - shown.width) >= 1) drawChart(shown.stats);
  });
  resized.observe(chartBox);
  const draw = async () => {
    sessionStorage.setItem(RANGE_KEY, range.value);
    try {
      const stats = await loadStats(range.value);
      const t = stats.totals;
      const total = t.succeeded + t.failed;
      mount(
        tiles,
        tile(
          "Success rate",
          total ? `${((100 * t.succeeded) / total).toFixed(1)}%` : "—",
          `${t.succeeded} of ${total} attempts`,
        ),
        tile(
          "Failed attempts",
          String(t.failed),
          t.failed
            ? h(
                "span",
                {},
                "deliveries with retries left stay ",
                h("a", { href: "#/deliveries?status=pending" }, "pending"),
              )
            : "none in this range",
        ),
        tile("Median latency", fmtMs(t.p50_ms), "p50 of attempt duration"),
        tile("p95 latency", fmtMs(t.p95_ms), "95th percentile"),
      );
      tiles.classList.remove("stale");
      drawChart(stats);
    } catch (err) {
      shown = null;
      // Figures already shown stay, greyed and said to be old, rather than pass for current.
      const old = tiles.childElementCount > 0;
      tiles.classList.toggle("stale", old);
      mount(
        chartBox,
        h(
          "p",
          { class: "note note-error" },
          old ? `Could not refresh (${describe(err)}): the figures above are from before.` : describe(err),
        ),
      );
    }
  };
  range.addEventListener("change", draw);

  // Failed: no retries left (every attempt of its schedule made, a day and a half by default; or
  // its endpoint disabled or deleted); a delivery still being retried is pending, and its
  // endpoint shows as failing.
  const failed = deliveryTable(
    { status: "failed" },
    { label: "Failed deliveries (no retries left)", limit: 5, paged: false },
  );
  const endpointsList = h("ul", { class: "list" });
  const listEndpoints = async () => {
    try {
      const endpoints = await api("GET", "/v1/endpoints?limit=8");
      mount(
        endpointsList,
        endpoints.data.length
          ? endpoints.data.map((e) =>
              h(
                "li",
                {},
                h(
                  "a",
                  { href: `#/endpoints/${e.id}`, class: "ellipsis", title: e.url },
                  e.description || middleCut(e.url.replace(/^https?:\/\//, "")),
                ),
                endpointStatus(e),
              ),
            )
          : h("li", { class: "muted" }, "No endpoints yet."),
      );
    } catch (err) {
      mount(endpointsList, h("li", { class: "note note-error" }, describe(err)));
    }
  };
  const everything = () => Promise.all([draw(), failed.reload(), listEndpoints()]);

  mount(
    main,
    pageHeader("Overview", "Delivery health across all your endpoints.", range, refreshButton(everything)),
    tiles,
    h(
      "div",
      { class: "grid-2 grid-wide" },
      card("Delivery attempts", chartBox),
      card(
        "Endpoints",
        endpointsList,
        h(
          "div",
          { class: "card-foot card-links" },
          h("a", { href: "#/endpoints", class: "small" }, "All endpoints →"),
          h("a", { href: "#/endpoints/new", class: "small" }, "Add endpoint →"),
        ),
      ),
    ),
    card(
      "Failed deliveries (no retries left)",
      failed.el,
      h(
        "div",
        { class: "card-foot" },
        h("a", { href: "#/deliveries?status=failed", class: "small" }, "All failed deliveries →"),
      ),
    ),
  );
  await everything();
}
