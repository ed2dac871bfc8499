import { ApiError, describe } from "../api.js";
import { h, mount, note, uid } from "../dom.js";

/** A page header: title, optional subtitle and actions on the right. */
export function pageHeader(title, subtitle, ...actions) {
  return h(
    "header",
    { class: "page-header" },
    h("div", {}, h("h1", {}, title), subtitle ? h("p", { class: "muted" }, subtitle) : null),
    actions.length ? h("div", { class: "actions" }, actions) : null,
  );
}

/** The tab's title, e.g. "Deliveries · Klen Webhooks", so that history entries tell pages apart. */
export function setTitle(text) {
  const t = text.length > 60 ? `${text.slice(0, 59)}…` : text;
  document.title = t ? `${t} · Klen Webhooks` : "Klen Webhooks";
}

/** A titled white card. */
export function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", { class: "card-title" }, title) : null, children);
}

/** A card's title with actions on the right, for `card(null, cardHead("Title", button), …)`. */
export function cardHead(title, ...actions) {
  return h("div", { class: "card-head" }, h("h2", { class: "card-title" }, title), actions);
}

/**
 * A "Refresh" button for a page whose data changes: disabled while `run()` reloads it.
 * @param {() => Promise<unknown>} run
 * @param {{small?: boolean}} [opts] `small` in a card's head
 */
export function refreshButton(run, opts = {}) {
  const button = h(
    "button",
    { class: opts.small ? "btn btn-secondary btn-sm" : "btn btn-secondary", type: "button" },
    "Refresh",
  );
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await run();
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

/**
 * What the page of the current history entry keeps for when it is come back to with Back or
 * Forward: per table, how many pages were loaded and which rows were open, and where the window was
 * scrolled. app.js sets it for each entry it routes to; `returning` is true on Back and Forward.
 */
export const visit = { state: { tables: new Map(), scrollY: 0 }, returning: false };

/** Pages reloaded at most when coming back to a table (100 deliveries, 125 events). */
const RESTORE_PAGES = 5;

/** This entry's memory of the table `label`: pages loaded and the ids of its open rows. */
export function tableMemory(label) {
  let m = visit.state.tables.get(label);
  if (!m) {
    m = { pages: 1, open: new Set() };
    visit.state.tables.set(label, m);
  }
  return m;
}

/**
 * A table filled page by page from a list route (`{data, next_cursor}`), with "Load more".
 * `row(item)` returns one or more `<tr>`.
 * @param {{columns: string[], load: (cursor?: string) => Promise<{data: any[], next_cursor: string|null}>, row: (item: any) => Node|Node[], empty: string, label: string, after?: (items: any[]) => Promise<void>}} opts
 */
export function pagedTable(opts) {
  const body = h("tbody");
  const status = h("p", { class: "muted table-status", role: "status", hidden: true });
  // A reload that failed while rows are shown says so above them: under the last row it was out
  // of sight, and the rows looked current.
  const stale = h("p", { class: "note note-error table-stale", role: "status", hidden: true });
  const more = h("button", { class: "btn btn-secondary", type: "button", hidden: true }, "Load more");
  let cursor = null;
  let count = 0;
  // A reload (Refresh, a poll) started later wins over one still in flight and over Load more.
  let generation = 0;
  const memory = tableMemory(opts.label);
  // Come back to with Back: its first load fetches as many pages as were shown (fresh data).
  let restore = visit.returning ? Math.min(memory.pages, RESTORE_PAGES) : 1;

  /** Loads the first page again (`reset`) or the next one; returns the rows it added. */
  const loadPage = async (reset) => {
    const mine = reset ? ++generation : generation;
    more.disabled = true;
    try {
      const page = await opts.load(reset ? undefined : (cursor ?? undefined));
      if (opts.after) await opts.after(page.data);
      if (mine !== generation) return undefined;
      if (reset) {
        body.replaceChildren();
        count = 0;
        stale.hidden = true;
      }
      for (const item of page.data) {
        const r = opts.row(item);
        for (const tr of Array.isArray(r) ? r : [r]) body.appendChild(tr);
      }
      count += page.data.length;
      cursor = page.next_cursor;
      // A page that was navigated away from while it rendered is not on screen: it keeps nothing
      // (its memory, taken when it was built, may already be the next page's).
      const shown = el.isConnected;
      if (shown) memory.pages = reset ? 1 : memory.pages + 1;
      more.hidden = !cursor;
      mount(status, count === 0 ? opts.empty : "");
      status.hidden = count !== 0;
      status.className = "muted table-status";
      if (reset && restore > 1 && shown) {
        const pages = restore;
        restore = 1;
        for (let n = 1; n < pages && cursor && mine === generation; n++) await loadPage(false);
      }
      return page.data;
    } catch (err) {
      if (mine !== generation) return undefined;
      if (reset && count > 0) {
        mount(stale, `Could not refresh (${describe(err)}): the rows below are from before.`);
        stale.hidden = false;
        return undefined;
      }
      // Nothing shown yet: what went wrong, and a way to try again (as a page that failed whole).
      // A Load more that failed keeps its button, which asks for that page again.
      mount(
        status,
        describe(err),
        reset ? " " : null,
        reset
          ? h(
              "button",
              { class: "btn btn-secondary btn-sm", type: "button", onclick: () => loadPage(true) },
              "Try again",
            )
          : null,
      );
      status.className = "note note-error";
      status.hidden = false;
    } finally {
      more.disabled = false;
    }
  };
  more.addEventListener("click", () => loadPage(false));

  const el = h(
    "div",
    { class: "table-wrap" },
    stale,
    h(
      "table",
      { class: "table", "aria-label": opts.label },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          opts.columns.map((c) => h("th", { scope: "col" }, c)),
        ),
      ),
      body,
    ),
    status,
    h("div", { class: "table-foot" }, more),
  );
  return { el, reload: () => loadPage(true), loadMore: () => loadPage(false) };
}

/** A labelled form control. */
export function field(label, control, hint) {
  const id = control.id || uid("f");
  control.id = id;
  // The hint is read with the field, not only seen beside it.
  if (hint) control.setAttribute("aria-describedby", `${id}-hint`);
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    control,
    hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null,
  );
}

/** A `<select>` of [value, label] pairs. */
export function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map(([v, label]) => h("option", { value: v, selected: v === (value ?? "") }, label)),
  );
}

/** `d` as a `datetime-local` control's value, in local time: to the minute, or to the second. */
export function localInputValue(d, seconds = false) {
  return new Date(d.getTime() - d.getTimezoneOffset() * 60_000).toISOString().slice(0, seconds ? 19 : 16);
}

/**
 * A "Created before" control: a local date and time, which the list gives the API as an instant
 * (`before`, docs/api.md Pagination). `iso`: the instant from the page's link, or "".
 */
export function beforeInput(iso) {
  const d = new Date(iso);
  const value = !iso || Number.isNaN(d.getTime()) ? "" : localInputValue(d, true);
  const input = h("input", { name: "before", type: "datetime-local", step: "1", value });
  // What the link said and what the control showed for it: left as shown, the link's instant is
  // kept exactly (its milliseconds; an hour that a change of clocks shows twice).
  input.dataset.linked = value ? iso : "";
  input.dataset.shown = input.value;
  return input;
}

/**
 * The instant a `beforeInput` holds, as ISO-8601 UTC, or "" when it is empty: the link's own if the
 * control was left as it was shown (a date half typed in counts as left).
 */
export function beforeValue(input) {
  if (input.value === input.dataset.shown || (!input.value && input.validity.badInput))
    return input.dataset.linked ?? "";
  const d = new Date(input.value);
  return !input.value || Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

/** Monospace id text. */
export function mono(text) {
  return h("code", { class: "mono" }, text);
}

// A second click on an armed button confirms only after this long: a double-click is one click.
const CONFIRM_AFTER_MS = 600;
// An armed button left alone goes back to its first state.
const DISARM_AFTER_MS = 10_000;

/**
 * Asks for a second click before a destructive action (revoke a key, expire a secret, disable an
 * endpoint), as Stripe's roll and delete do. The first click arms the button: its label becomes
 * `armedLabel` and `warn(message)` says what the second click will do; a click within 600 ms of
 * arming (the rest of a double-click) is ignored (`data-armed="arming"`, then `"ready"`); after
 * 10 s unconfirmed it disarms. `needed()`
 * (default always) tells whether this click needs confirming at all.
 * @param {HTMLButtonElement} button
 * @param {{armedLabel: string, warning: () => string, warn: (message: string) => void, action: () => Promise<void>, needed?: () => boolean}} opts
 */
export function confirmFirst(button, opts) {
  const label = button.textContent;
  // A button named for screen readers (`Revoke key klen_sk_…`) is renamed with its text, so what
  // is heard says what the next press does (WCAG 2.5.3).
  const ariaLabel = button.getAttribute("aria-label");
  let timers = [];
  // `data-armed`: absent, "arming" (clicks ignored), then "ready" (the next click acts).
  const reset = () => {
    for (const t of timers) clearTimeout(t);
    timers = [];
    delete button.dataset.armed;
    mount(button, label);
    if (ariaLabel !== null) button.setAttribute("aria-label", ariaLabel);
    button.classList.remove("btn-danger-armed");
  };
  // Escape takes the question back.
  button.addEventListener("keydown", (e) => {
    if (e.key !== "Escape" || !button.dataset.armed) return;
    reset();
    opts.warn("");
  });
  button.addEventListener("click", async () => {
    if (opts.needed && !opts.needed()) {
      // Armed for a click that needed it (say, no grace period), then changed so that this one
      // does not: disarmed, so that no later single click finds it armed.
      if (button.dataset.armed) {
        reset();
        opts.warn("");
      }
      return opts.action();
    }
    if (!button.dataset.armed) {
      button.dataset.armed = "arming";
      mount(button, opts.armedLabel);
      if (ariaLabel !== null) button.setAttribute("aria-label", `${opts.armedLabel}: ${ariaLabel}`);
      button.classList.add("btn-danger-armed");
      opts.warn(opts.warning());
      timers = [
        setTimeout(() => {
          button.dataset.armed = "ready";
        }, CONFIRM_AFTER_MS),
        setTimeout(() => {
          if (!button.isConnected) return;
          reset();
          opts.warn("");
        }, DISARM_AFTER_MS),
      ];
      return;
    }
    if (button.dataset.armed !== "ready") return;
    reset();
    await opts.action();
  });
  return button;
}

/**
 * A button that copies a value to the clipboard without showing it: `text` may be a string or a
 * function that returns one (or a promise of one, e.g. a secret fetched on demand). The button says
 * "Copied" for two seconds; where the page has no clipboard (plain http to a non-local address) it
 * says so in `status`.
 * @param {string} name the accessible name, e.g. "Copy signing secret"
 * @param {string | (() => string | Promise<string>)} text
 * @param {HTMLElement} [status] a live region for a failure
 */
export function copyButton(name, text, status) {
  const button = h(
    "button",
    { class: "btn btn-secondary btn-sm", type: "button", "aria-label": name },
    "Copy",
  );
  let timer;
  button.addEventListener("click", async () => {
    try {
      const value = typeof text === "function" ? await text() : text;
      if (!navigator.clipboard) throw new Error("no clipboard");
      await navigator.clipboard.writeText(value);
      mount(button, "Copied");
      button.setAttribute("aria-label", `${name}: copied`);
      clearTimeout(timer);
      timer = setTimeout(() => {
        mount(button, "Copy");
        button.setAttribute("aria-label", name);
      }, 2000);
    } catch (err) {
      if (status) {
        note(
          status,
          err instanceof ApiError
            ? `Could not copy: ${describe(err)}`
            : "This browser did not let the page copy; select the text and copy it.",
          "error",
        );
      }
    }
  });
  return button;
}
