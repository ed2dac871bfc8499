// DOM helpers. Every piece of API data reaches the page through text nodes or attribute values set
// with setAttribute, never through innerHTML, so a description such as `<img onerror=…>` is shown
// as the text it is.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

function setProps(el, props) {
  for (const [k, v] of Object.entries(props ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.setAttribute("class", v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if ((k === "value" || k === "checked" || k === "selected") && !(el instanceof SVGElement)) el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

/**
 * Creates an HTML element: `h("button", {class: "btn", onclick}, "Save")`.
 * @param {string} tag
 * @param {Record<string, any>} [props]
 * @param {...any} children strings become text nodes
 * @returns {HTMLElement}
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

/**
 * Creates an SVG element (charts).
 * @param {string} tag
 * @param {Record<string, any>} [props]
 * @param {...any} children
 * @returns {SVGElement}
 */
export function s(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  append(el, children);
  return el;
}

/** Replaces the children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/**
 * `2026-11-26T17:43:32.123Z` → `Nov 26, 09:43:32 PST` in the browser's time zone, named, so a time
 * read out to a colleague elsewhere is not an hour or a day off; with the year when it is not this
 * year's.
 */
export function fmtTime(iso, now = new Date()) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, {
    year: d.getFullYear() === now.getFullYear() ? undefined : "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hour12: false,
    timeZoneName: "short",
  });
}

/** A relative time such as `3 min ago`, with the exact time as a tooltip. */
export function ago(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const diff = Date.now() - new Date(iso).getTime();
  const sec = Math.round(diff / 1000);
  let text;
  if (sec < 0) text = `in ${fmtSpan(-sec)}`;
  else if (sec < 5) text = "just now";
  else text = `${fmtSpan(sec)} ago`;
  return h("time", { datetime: iso, title: new Date(iso).toISOString() }, text);
}

function fmtSpan(sec) {
  if (sec < 60) return `${sec}s`;
  if (sec < 3600) return `${Math.floor(sec / 60)} min`;
  if (sec < 86400) return `${Math.floor(sec / 3600)} h`;
  return `${Math.floor(sec / 86400)} d`;
}

/** `1234` → `1.23 s`, `87` → `87 ms`. */
export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

/** A coloured status pill. */
export function badge(text, tone = toneOf(text)) {
  return h("span", { class: `badge badge-${tone}` }, text);
}

function toneOf(status) {
  switch (status) {
    case "succeeded":
    case "completed":
    case "enabled":
      return "ok";
    case "failed":
    case "disabled":
      return "bad";
    case "pending":
    case "in-progress":
      return "warn";
    default:
      return "neutral";
  }
}

/** Pretty JSON in a scrollable, copyable block. */
export function jsonBlock(value, label = "JSON body") {
  return h("pre", { class: "code", tabindex: "0", "aria-label": label }, JSON.stringify(value, null, 2));
}

/**
 * The status line of a form or action: `note(el, "Saved")`, `note(el, err, "error")`. The line
 * (a `role="status"` live region) stays in the page when empty, collapsed by CSS (`.note:empty`):
 * a region hidden until its text is written is not announced by screen readers.
 */
export function note(el, message, tone = "ok") {
  mount(el, message);
  el.className = `note note-${tone}`;
  el.hidden = false;
}

/**
 * A button that disables itself while its request runs loses focus to the page (the browser blurs
 * a disabled control), and a keyboard user is thrown back to the top. Once such a button is
 * enabled again and nothing else has taken focus meanwhile, focus returns to it.
 */
export function keepFocusThroughBusy(doc = document) {
  let blurred = null;
  doc.addEventListener("focusout", (e) => {
    blurred = e.target instanceof HTMLButtonElement ? e.target : null;
  });
  doc.addEventListener("focusin", () => {
    blurred = null;
  });
  new MutationObserver((changes) => {
    for (const c of changes) {
      const el = c.target;
      if (el !== blurred || el.disabled || !el.isConnected) continue;
      if (doc.activeElement && doc.activeElement !== doc.body) continue;
      el.focus();
    }
  }).observe(doc.body, { attributes: true, attributeFilter: ["disabled"], subtree: true });
}

/** An id for an element that another refers to (`for`, `aria-describedby`): `uid("f")` → `f-k3j9x2a`. */
export const uid = (prefix) => `${prefix}-${Math.random().toString(36).slice(2, 9)}`;
