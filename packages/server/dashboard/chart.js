import { fmtMs, h, s } from "./dom.js";

// Inline SVG drawn from GET /v1/stats/deliveries: attempts per bucket as stacked bars (succeeded
// below, failed on top) and p50/p95 attempt latency as lines underneath, on a shared time axis.
// It is drawn as wide as its box, one SVG unit per CSS pixel, so that its labels keep their size
// on a phone (a fixed 760-wide drawing shrunk them to 5 px at 390 px) and the time axis shows as
// many labels as fit.

/** Narrower boxes scale the drawing down rather than squeeze the plot. */
const MIN_W = 300;
const PAD_L = 52;
const PAD_R = 16;
const BARS_TOP = 28;
const BARS_H = 130;
const LAT_TOP = BARS_TOP + BARS_H + 44;
const LAT_H = 80;
const H = LAT_TOP + LAT_H + 26;

/**
 * A value axis from 0 in two equal whole steps (1, 2, 2.5, 3, 4, 5, 6 or 8 × 10^k when whole; at least
 * 1), a little above `dataMax` so the tallest bar does not touch the top: `{max, ticks}`. Whole
 * steps keep the labels whole and distinct at low volume, where halves of a maximum of 1 read
 * "0.5" attempts, and "1 ms" twice once rounded.
 */
export function axis(dataMax) {
  const half = (Math.max(0, dataMax) * 1.05) / 2;
  let step = 1;
  if (half > 1) {
    const p = 10 ** Math.floor(Math.log10(half));
    step = [1, 2, 2.5, 3, 4, 5, 6, 8, 10].map((m) => m * p).find((v) => v >= half && Number.isInteger(v));
  }
  return { max: 2 * step, ticks: [0, step, 2 * step] };
}

function timeLabel(iso, bucketSeconds) {
  const d = new Date(iso);
  if (bucketSeconds >= 86400) return d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
  const hm = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });
  if (bucketSeconds >= 3600)
    return `${d.toLocaleDateString(undefined, { day: "numeric", month: "short" })} ${hm}`;
  if (bucketSeconds < 60)
    return d.toLocaleTimeString(undefined, {
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
      hour12: false,
    });
  return hm;
}

function bucketName(seconds) {
  if (seconds % 3600 === 0) return seconds === 3600 ? "hour" : `${seconds / 3600} hours`;
  if (seconds % 60 === 0) return seconds === 60 ? "minute" : `${seconds / 60} minutes`;
  return seconds === 1 ? "second" : `${seconds} seconds`;
}

/**
 * The delivery chart.
 * @param {{bucket_seconds: number, buckets: Array<{start: string, succeeded: number, failed: number, p50_ms: number|null, p95_ms: number|null}>}} stats
 * @param {number} [width] of its box in CSS pixels
 * @returns {SVGElement}
 */
export function deliveryChart(stats, width = 760) {
  const W = Math.max(MIN_W, Math.round(width));
  const buckets = stats.buckets;
  const n = Math.max(buckets.length, 1);
  const plotW = W - PAD_L - PAD_R;
  const step = plotW / n;
  const barW = Math.max(1, Math.min(step * 0.72, 28));
  const x = (i) => PAD_L + i * step + step / 2;

  const counts = axis(Math.max(0, ...buckets.map((b) => b.succeeded + b.failed)));
  const latencies = axis(Math.max(0, ...buckets.map((b) => b.p95_ms ?? 0)));
  const yCount = (v) => BARS_TOP + BARS_H - (v / counts.max) * BARS_H;
  const yLat = (v) => LAT_TOP + LAT_H - (v / latencies.max) * LAT_H;

  const grid = [];
  const gridLine = (y, label) =>
    grid.push(
      s("line", { class: "grid", x1: PAD_L, x2: W - PAD_R, y1: y, y2: y }),
      s("text", { class: "axis", x: PAD_L - 8, y: y + 4, "text-anchor": "end" }, label),
    );
  for (const v of counts.ticks) gridLine(yCount(v), String(v));
  // Ticks are round values: "8 s" and "16 s", not "8.00 s" and "16.0 s" (fmtMs keeps a measured
  // figure's precision).
  for (const l of latencies.ticks)
    gridLine(yLat(l), l < 1000 ? fmtMs(l) : `${Number((l / 1000).toFixed(2))} s`);
  const empty = buckets.every((b) => b.succeeded + b.failed === 0);

  const bars = buckets.map((b, i) => {
    const total = b.succeeded + b.failed;
    const label = `${timeLabel(b.start, stats.bucket_seconds)} — ${b.succeeded} succeeded, ${b.failed} failed${
      b.p50_ms === null ? "" : `, p50 ${fmtMs(b.p50_ms)}, p95 ${fmtMs(b.p95_ms)}`
    }`;
    const okTop = yCount(b.succeeded);
    const failTop = yCount(total);
    return s(
      "g",
      { class: "bucket" },
      s("title", {}, label),
      // A full-height transparent column makes the tooltip easy to hit on thin bars.
      s("rect", {
        class: "hit",
        x: x(i) - step / 2,
        y: BARS_TOP,
        width: step,
        height: LAT_TOP + LAT_H - BARS_TOP,
      }),
      b.succeeded > 0
        ? s("rect", {
            class: "bar-ok",
            x: x(i) - barW / 2,
            y: okTop,
            width: barW,
            height: BARS_TOP + BARS_H - okTop,
          })
        : null,
      b.failed > 0
        ? s("rect", {
            class: "bar-fail",
            x: x(i) - barW / 2,
            y: failTop,
            width: barW,
            height: okTop - failTop,
          })
        : null,
    );
  });

  const line = (key, cls) => {
    const segments = [];
    let cur = [];
    buckets.forEach((b, i) => {
      if (b[key] === null) {
        if (cur.length) segments.push(cur);
        cur = [];
      } else cur.push(`${x(i).toFixed(1)},${yLat(b[key]).toFixed(1)}`);
    });
    if (cur.length) segments.push(cur);
    return segments.map((pts) =>
      pts.length === 1
        ? s("circle", { class: `${cls}-dot`, cx: pts[0].split(",")[0], cy: pts[0].split(",")[1], r: 2.5 })
        : s("polyline", { class: cls, points: pts.join(" ") }),
    );
  };

  // At most 6 time labels, fewer when they would not fit (about 7 px a character, 20 px apart).
  const ticks = [];
  const labelW = 7 * (buckets.length ? timeLabel(buckets[0].start, stats.bucket_seconds).length : 5) + 20;
  const every = Math.max(1, Math.ceil(n / Math.max(2, Math.min(6, Math.floor(plotW / labelW)))));
  for (let i = 0; i < buckets.length; i += every) {
    ticks.push(
      s(
        "text",
        { class: "axis", x: x(i), y: H - 6, "text-anchor": "middle" },
        timeLabel(buckets[i].start, stats.bucket_seconds),
      ),
    );
  }

  const sum = (key) => buckets.reduce((a, b) => a + b[key], 0);
  const peak = buckets.reduce((m, b) => (b.failed > (m?.failed ?? 0) ? b : m), undefined);
  return s(
    "svg",
    {
      class: "chart",
      viewBox: `0 0 ${W} ${H}`,
      role: "img",
      // What the bars add up to, for a reader that cannot see them (the tooltips need a mouse).
      "aria-label": `Delivery attempts per ${bucketName(stats.bucket_seconds)}: ${sum("succeeded")} succeeded and ${sum("failed")} failed in this range${
        peak ? `, the most failures (${peak.failed}) at ${timeLabel(peak.start, stats.bucket_seconds)}` : ""
      }; with their latency, p50 and p95, over time`,
      preserveAspectRatio: "xMidYMid meet",
    },
    grid,
    s("text", { class: "panel-title", x: PAD_L, y: 12 }, `Attempts per ${bucketName(stats.bucket_seconds)}`),
    s("text", { class: "panel-title", x: PAD_L, y: LAT_TOP - 16 }, "Attempt latency (p50, p95)"),
    bars,
    empty
      ? s(
          "text",
          { class: "empty", x: PAD_L + plotW / 2, y: BARS_TOP + BARS_H / 2, "text-anchor": "middle" },
          "No attempts in this range",
        )
      : null,
    line("p95_ms", "lat-p95"),
    line("p50_ms", "lat-p50"),
    ticks,
  );
}

/** The chart's legend, as HTML so it wraps on narrow screens. */
export function chartLegend() {
  return h(
    "div",
    { class: "legend" },
    h("span", { class: "key key-ok" }, "Succeeded"),
    h("span", { class: "key key-fail" }, "Failed"),
    h("span", { class: "key key-p50" }, "p50 latency"),
    h("span", { class: "key key-p95" }, "p95 latency"),
  );
}
