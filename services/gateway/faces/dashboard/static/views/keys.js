// API keys: the person's keys for scripts and clients (`Authorization: Bearer vmk_...` or
// `x-api-key`). A new key is shown once. GET/POST /api/account/api-keys, DELETE .../{id}.

import { api } from "../lib/api.js";
import { clear, field, h, heading } from "../lib/dom.js";
import { clearError, errorLine, showError, whileBusy } from "../lib/form-errors.js";
import { secretBox } from "../lib/form-secret.js";
import { narrow, narrowTable } from "../lib/form-table.js";
import { ago, time } from "../lib/format.js";

export const title = "API keys";

export function mount(main, ctx) {
  const name = h("input", { name: "name", maxLength: 100, autocomplete: "off", placeholder: "e.g. backup script" });
  const error = errorLine();
  const create = h("button", { type: "submit", class: "primary" }, "Create key");
  const secret = h("div", {});
  const list = h("div", {}, h("p", { class: "loading" }, "Loading keys…"));
  main.append(
    heading("API keys"),
    h("p", { class: "muted" }, "A key signs a script or client in as you, with your role. Send it as ",
      h("code", {}, "Authorization: Bearer vmk_…"), " or ", h("code", {}, "x-api-key"), "."),
    h("form", { class: "card", "aria-label": "New API key", on: { submit } },
      h("h2", {}, "New key"),
      h("div", { class: "form-row" }, field("Name", name, "What the key is for (up to 100 characters)"),
        h("div", { class: "field" }, create)),
      error),
    secret,
    h("h2", {}, "Your keys"),
    list);

  async function submit(event) {
    event.preventDefault();
    clearError(error, { name });
    await whileBusy(create, async () => {
      const made = await api("/api/account/api-keys", { method: "POST", body: { name: name.value.trim() } });
      name.value = "";
      const box = secretBox(`Your new API key${made.name ? ` “${made.name}”` : ""}`, made.key,
        { note: "Copy it now and keep it somewhere safe: it will not be shown again (only a hash is stored).",
          onDone: () => name.focus() });
      clear(secret).append(box);
      box.querySelector("h2").focus();
      await load();
    }, (exc) => showError(error, exc, { name }));
  }

  async function load() {
    try {
      render(await api("/api/account/api-keys"));
    } catch (exc) {
      clear(list).append(h("p", { class: "error-box", role: "alert" }, `The keys could not be read: ${exc.message}`));
    }
  }

  function render(keys) {
    if (!keys.length) {
      clear(list).append(h("p", { class: "empty" }, "You have no API keys."));
      return;
    }
    const rows = keys.map((k) => h("tr", {},
      h("td", {}, k.name || h("span", { class: "muted" }, "(no name)")),
      h("td", {}, h("code", {}, `${k.prefix}_…`)),
      h("td", { class: "hide-narrow", title: time(k.created_at) }, ago(k.created_at)),
      h("td", {}, h("button", { type: "button", class: "small danger", "aria-label": `Delete key ${k.name || k.prefix}`,
        on: { click: (e) => remove(k, e.currentTarget) } }, "Delete"))));
    clear(list).append(narrowTable("Your API keys", ["Name", "Key starts with", narrow("Created"), "Actions"], rows));
  }

  async function remove(key, button) {
    if (!confirm(`Delete the key “${key.name || key.prefix}”? Whatever uses it stops working at once.`)) return;
    await whileBusy(button, async () => {
      await api(`/api/account/api-keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      ctx.toast(`Deleted the key “${key.name || key.prefix}”.`, "ok");
      await load();
    }, (exc) => ctx.toast(`The key could not be deleted: ${exc.message}`, "error"));
  }

  const resync = () => load();
  ctx.feed?.addEventListener("resync", resync);
  load();
  return () => ctx.feed?.removeEventListener("resync", resync);
}
