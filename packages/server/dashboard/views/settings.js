import { api, describe, session } from "../api.js";
import { ago, badge, h, mount, note } from "../dom.js";
import { card, confirmFirst, copyButton, field, mono, pageHeader } from "./common.js";

/** The account's name and generated summaries (`PATCH /v1/account`). */
function accountCard(account, onSaved) {
  const name = h("input", {
    name: "name",
    type: "text",
    value: account.name,
    required: true,
    maxlength: "200",
  });
  const auto = h("input", { type: "checkbox", name: "auto_summary", checked: account.auto_summary });
  const status = h("p", { class: "note", role: "status" });
  const save = h("button", { class: "btn btn-primary", type: "submit" }, "Save account");
  return card(
    "Account",
    h(
      "form",
      {
        class: "form",
        onsubmit: async (ev) => {
          ev.preventDefault();
          save.disabled = true;
          try {
            const saved = await api("PATCH", "/v1/account", {
              name: name.value.trim(),
              auto_summary: auto.checked,
            });
            onSaved(saved);
            note(status, "Saved.");
          } catch (err) {
            note(status, describe(err), "error");
          } finally {
            save.disabled = false;
          }
        },
      },
      field("Account name", name),
      h(
        "label",
        { class: "check check-plain" },
        auto,
        " Generate a call.summary when a transcript arrives (auto summary)",
      ),
      h("div", { class: "form-actions" }, save),
      status,
    ),
  );
}

/**
 * The account's API keys: only prefixes are listed (keys are stored hashed); a new key is shown
 * once; revoking asks for a second click, and revoking the key in use signs this tab out.
 */
function apiKeysCard() {
  const body = h("tbody");
  const status = h("p", { class: "note", role: "status" });
  const shown = h("div", { class: "new-key", hidden: true });

  const revokeButton = (k) => {
    const button = h(
      "button",
      { class: "btn btn-secondary btn-sm", type: "button", "aria-label": `Revoke key ${k.prefix}` },
      "Revoke",
    );
    return confirmFirst(button, {
      armedLabel: "Confirm revoke",
      warn: (message) => note(status, message, "warn"),
      warning: () =>
        k.current
          ? `${k.prefix}… is the key this tab is signed in with: revoking it signs you out.`
          : `Click Confirm revoke to revoke ${k.prefix}…; clients using it get 401 from then on.`,
      action: async () => {
        button.disabled = true;
        try {
          await api("DELETE", `/v1/api-keys/${k.id}`);
          if (k.current) {
            session.clear();
            location.reload();
            return;
          }
          // The new key shown above, if it is this one: it no longer works, so it is not offered.
          if (shown.dataset.keyId === String(k.id)) {
            shown.replaceChildren();
            shown.hidden = true;
            delete shown.dataset.keyId;
          }
          note(status, `Key ${k.prefix}… revoked: it no longer signs in or calls the API.`);
          await load();
        } catch (err) {
          note(status, describe(err), "error");
          button.disabled = false;
        }
      },
    });
  };

  const load = async () => {
    // A first page of 100 holds every key of any account that rolls its keys.
    const { data } = await api("GET", "/v1/api-keys?limit=100");
    mount(
      body,
      data.map((k) =>
        h(
          "tr",
          { class: "api-key", "data-key": String(k.id) },
          h("td", {}, mono(`${k.prefix}…`), k.current ? [" ", badge("this session", "neutral")] : null),
          h("td", {}, ago(k.created_at)),
          h("td", { class: "cell-actions" }, data.length > 1 ? revokeButton(k) : null),
        ),
      ),
    );
  };

  const create = h("button", { class: "btn btn-primary", type: "button" }, "Create API key");
  create.addEventListener("click", async () => {
    create.disabled = true;
    try {
      const made = await api("POST", "/v1/api-keys");
      mount(
        shown,
        h(
          "p",
          { class: "small" },
          "Your new API key. Copy it now: it is stored only hashed and is not shown again.",
        ),
        h(
          "div",
          { class: "secret-row" },
          h("code", { class: "secret mono", "aria-label": "New API key" }, made.key),
          copyButton("Copy API key", made.key, status),
        ),
      );
      shown.hidden = false;
      shown.dataset.keyId = String(made.id);
      note(status, "");
      await load();
    } catch (err) {
      note(status, describe(err), "error");
    } finally {
      create.disabled = false;
    }
  });

  const el = card(
    "API keys",
    h(
      "p",
      { class: "muted small" },
      "To roll a key: create a new one, move your clients to it, then revoke the old one. The account's only key cannot be revoked.",
    ),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "table", "aria-label": "API keys" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Key", "Created", ""].map((c) => h("th", { scope: "col" }, c)),
          ),
        ),
        body,
      ),
    ),
    shown,
    h("div", { class: "inline-form" }, create),
    status,
  );
  return { el, load };
}

/** `#/settings`: the account and its API keys. */
export async function renderSettings(main, account, onAccount) {
  const keys = apiKeysCard();
  mount(
    main,
    pageHeader("Settings", "Your account and the API keys that reach it."),
    accountCard(account, onAccount),
    keys.el,
  );
  await keys.load();
}
