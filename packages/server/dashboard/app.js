import { ApiError, api, describe, session, setUnauthorizedHandler } from "./api.js";
import { h, keepFocusThroughBusy, mount } from "./dom.js";
import { renderCall, renderCalls } from "./views/calls.js";
import { card, pageHeader, setTitle, visit } from "./views/common.js";
import { renderDeliveries } from "./views/deliveries.js";
import { renderEndpoint, renderEndpoints, renderNewEndpoint } from "./views/endpoints.js";
import { renderEvents } from "./views/events.js";
import { renderOverview } from "./views/overview.js";
import { renderSettings } from "./views/settings.js";

// Hash routes keep the dashboard a set of static files: `#/endpoints/ep_…`, `#/deliveries?status=failed`.
const NAV = [
  ["overview", "Overview"],
  ["endpoints", "Endpoints"],
  ["events", "Events"],
  ["deliveries", "Deliveries"],
  ["calls", "Calls"],
  ["settings", "Settings"],
];

const root = document.getElementById("app");
let account = null;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  // A stray `%` in a hand-edited link is kept as typed: the page then says it was not found.
  const parts = path
    .split("/")
    .filter(Boolean)
    .map((p) => {
      try {
        return decodeURIComponent(p);
      } catch {
        return p;
      }
    });
  return { section: parts[0] || "overview", id: parts[1], query: new URLSearchParams(query) };
}

function signIn(message) {
  account = null;
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "klen_…",
    required: true,
  });
  const error = h("p", { class: "note note-error", role: "alert", hidden: !message }, message ?? "");
  const button = h("button", { class: "btn btn-primary btn-block", type: "submit" }, "Sign in");
  const form = h(
    "form",
    {
      class: "signin-card",
      onsubmit: async (ev) => {
        ev.preventDefault();
        const key = input.value.trim();
        if (!key) return;
        // A key is printable ASCII; anything else could not even be sent in the header.
        if (!/^[\x21-\x7e]+$/.test(key)) {
          error.textContent = "That API key was not accepted. Check it and try again.";
          error.hidden = false;
          input.focus();
          return;
        }
        button.disabled = true;
        try {
          account = await api("GET", "/v1/account", undefined, { key });
          session.set(key);
          // What pages kept for Back belongs to the session before (maybe another account).
          visits.clear();
          shownVisit = null;
          // A hash change routes by itself; otherwise route now.
          if (!location.hash || location.hash === "#/") location.hash = "#/overview";
          else route();
        } catch (err) {
          const text =
            err instanceof ApiError && err.status === 401
              ? "That API key was not accepted. Check it and try again."
              : describe(err);
          error.textContent = text;
          error.hidden = false;
          input.focus();
        } finally {
          button.disabled = false;
        }
      },
    },
    h(
      "div",
      { class: "brand brand-lg" },
      h("span", { class: "logo", "aria-hidden": "true" }, "K"),
      "Klen Webhooks",
    ),
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Use your account's API key. It is kept in this browser tab only."),
    h("label", { for: "api-key" }, "API key"),
    input,
    error,
    button,
  );
  mount(root, h("main", { class: "signin" }, form));
  setTitle("Sign in");
  input.focus();
}

function signOut() {
  session.clear();
  signIn();
}

setUnauthorizedHandler(() => {
  session.clear();
  signIn("Your API key is no longer accepted. Sign in again.");
});

function shell(section) {
  const nav = h(
    "nav",
    { class: "nav", "aria-label": "Sections" },
    NAV.map(([id, label]) =>
      h("a", { href: `#/${id}`, class: "nav-link", "aria-current": id === section ? "page" : false }, label),
    ),
  );
  const main = h("main", { class: "content", id: "content", tabindex: "-1" });
  const frame = h(
    "div",
    { class: "frame" },
    h(
      "aside",
      { class: "sidebar" },
      h(
        "div",
        { class: "sidebar-inner" },
        h(
          "div",
          { class: "brand" },
          h("span", { class: "logo", "aria-hidden": "true" }, "K"),
          "Klen Webhooks",
        ),
        nav,
        h(
          "div",
          { class: "sidebar-foot" },
          h(
            "div",
            { class: "account-name", title: `${account?.name ?? ""} (account ${account?.id ?? ""})` },
            account?.name ?? "",
          ),
          h("button", { class: "btn btn-ghost btn-sm", type: "button", onclick: signOut }, "Sign out"),
        ),
      ),
    ),
    main,
  );
  mount(root, frame);
  return main;
}

// A deep link to something that is not there (`#/endpoints/ep_gone`, `#/calls/abc`): the API's
// 404, or its 400 for a call, agent or contact id that is not an integer, shown as a page that
// leads back to the list.
const FOUND_IN = {
  endpoints: ["Endpoint", "Endpoints"],
  calls: ["Call", "Calls"],
  events: ["Event", "Events"],
};

function notFound(err, section, what) {
  if (!FOUND_IN[section] || !what || !(err instanceof ApiError)) return false;
  return err.status === 404 || (err.status === 400 && err.details?.location === "params");
}

function renderNotFound(main, section, what) {
  const [noun, list] = FOUND_IN[section];
  mount(
    main,
    h("a", { href: `#/${section}`, class: "back" }, `← ${list}`),
    pageHeader(`${noun} not found`, null),
    card(
      null,
      h("p", {}, `This account has no ${noun.toLowerCase()} `, h("code", { class: "mono" }, what), "."),
      h("a", { href: `#/${section}` }, `All ${list.toLowerCase()} →`),
    ),
  );
}

/**
 * After a page is drawn: the tab's title from its heading, and focus on that heading (announced by
 * screen readers, and where Tab goes on from) unless the user has already moved it; a filter that
 * changed the page's query keeps its focus on the same control of the new page.
 */
function settle(main, label, keep) {
  if (!main.isConnected) return; // signed out meanwhile (a 401 inside the page)
  const heading = main.querySelector("h1");
  setTitle(heading?.textContent || label);
  const active = document.activeElement;
  if (active && active !== document.body && active.isConnected) return;
  const control = keep ? main.querySelector(`[name="${CSS.escape(keep)}"]`) : null;
  const target = control ?? heading ?? main;
  if (target === heading) heading.tabIndex = -1;
  target.focus();
}

// Each history entry routed to gets an id in `history.state`; what its page showed (tables' pages
// and open rows, scroll) is kept under that id for a return with Back or Forward. A link makes a
// new entry, without an id: it starts afresh.
history.scrollRestoration = "manual";
const visits = new Map();
const KEPT_VISITS = 50;
let shownVisit = null;

/** Sets `visit` for the current entry; true when it was seen before (Back, Forward). */
function enterVisit() {
  if (shownVisit) shownVisit.scrollY = window.scrollY;
  let id = history.state?.klenVisit;
  const returning = typeof id === "string" && visits.has(id);
  if (!returning) {
    id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
    history.replaceState({ ...(history.state ?? {}), klenVisit: id }, "");
    visits.set(id, { tables: new Map(), scrollY: 0 });
    if (visits.size > KEPT_VISITS) visits.delete(visits.keys().next().value);
  }
  shownVisit = visits.get(id);
  visit.state = shownVisit;
  visit.returning = returning;
  return returning;
}

/** A page that could not be drawn (the server down, say): what went wrong, and a way to try again. */
function failedHere(err) {
  return h(
    "div",
    { class: "failed-here" },
    h("p", { class: "note note-error", role: "alert" }, describe(err)),
    h("button", { class: "btn btn-secondary", type: "button", onclick: () => route() }, "Try again"),
  );
}

let routing = 0;
let shownSection = null;
let shownId;
async function route() {
  if (!session.key) return signIn();
  const seq = ++routing;
  const returning = enterVisit();
  if (!account) {
    try {
      account = await api("GET", "/v1/account");
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      mount(
        root,
        h(
          "main",
          { class: "content" },
          h("h1", { tabindex: "-1" }, "The dashboard could not load"),
          failedHere(err),
        ),
      );
      root.querySelector("h1")?.focus();
      return;
    }
  }
  const { section, id, query } = parseHash();
  // A named control of this section's page that had focus (a filter): focused again once redrawn.
  const was = document.activeElement;
  // Only on the same page: from the new-endpoint form to the endpoint it made, a field of the
  // same name in its edit form is another control.
  const keep =
    section === shownSection && id === shownId && was?.closest?.("#content") && was.getAttribute("name")
      ? was.getAttribute("name")
      : null;
  shownSection = section;
  shownId = id;
  const main = shell(section);
  const label = (NAV.find(([s]) => s === section) ?? NAV[0])[1];
  const views = {
    overview: () => renderOverview(main),
    endpoints: () =>
      id === "new" ? renderNewEndpoint(main) : id ? renderEndpoint(main, id) : renderEndpoints(main),
    events: () => renderEvents(main, query),
    deliveries: () => renderDeliveries(main, query),
    calls: () => (id ? renderCall(main, id) : renderCalls(main, query)),
    settings: () =>
      renderSettings(main, account, (saved) => {
        account = saved;
        const name = root.querySelector(".account-name");
        if (name) {
          name.textContent = saved.name;
          name.title = `${saved.name} (account ${saved.id})`;
        }
      }),
  };
  try {
    await (views[section] ?? views.overview)();
  } catch (err) {
    if (seq !== routing) return;
    if (err instanceof ApiError && err.status === 401) return;
    const what = id ?? query.get("event_id");
    if (notFound(err, section, what)) renderNotFound(main, section, what);
    else {
      // The page's heading, when the view failed before drawing it.
      if (!main.querySelector("h1")) main.appendChild(h("h1", {}, label));
      main.appendChild(failedHere(err));
    }
  }
  if (seq !== routing) return;
  settle(main, label, keep);
  if (returning) window.scrollTo(0, shownVisit.scrollY);
}

window.addEventListener("hashchange", route);
keepFocusThroughBusy();
route();
