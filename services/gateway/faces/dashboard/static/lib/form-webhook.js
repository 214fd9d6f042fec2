// The new-webhook form: URL, description, enabled, and the event types as checkboxes grouped by
// family (GET .../webhooks/event-types), each family with an "all" box (`job.*`) and the whole
// list with one (`*`). A family or "*" box checked stands for its types, which are then disabled.

import { field, h } from "./dom.js";

// Sent to the tested subscription whenever asked for; nobody subscribes to it.
const NOT_CHOSEN = new Set(["webhook.test"]);

const checkbox = (value, label, hint) => {
  const input = h("input", { type: "checkbox", value });
  return { input, el: h("div", { class: "check-item" }, h("label", { class: "check" }, input, label),
    hint ? h("small", { class: "hint" }, hint) : null) };
};

/** webhookForm(eventTypes, {admin}) -> {fields, controls, read() -> WebhookRequest body, chosen()} */
export function webhookForm(eventTypes, { admin }) {
  const url = h("input", { type: "url", name: "url", required: true, maxLength: 2048, placeholder: "https://example.com/hooks/vidmesh",
    autocomplete: "off", spellcheck: false });
  const description = h("input", { name: "description", maxLength: 500 });
  const enabled = h("input", { type: "checkbox", checked: true });

  const families = new Map();
  for (const t of eventTypes) {
    if (NOT_CHOSEN.has(t.type)) continue;
    const family = t.type.split(".")[0];
    if (!families.has(family)) families.set(family, []);
    families.get(family).push(t);
  }
  const every = checkbox("*", admin ? "Every event (*)" : "Every event of your jobs (*)");
  const groups = [...families].map(([family, types]) => {
    const all = checkbox(`${family}.*`, `All ${family} events (${family}.*)`);
    const each = types.map((t) => checkbox(t.type, h("code", {}, t.type), t.description.replaceAll("`", "")));
    return { all, each, el: h("fieldset", { class: "event-family" }, h("legend", {}, `${family} events`),
      all.el, h("div", { class: "check-list" }, each.map((c) => c.el))) };
  });

  // A wider box checked covers the narrower ones: they cannot be changed, and are not sent.
  const sync = () => {
    for (const g of groups) {
      const covered = every.input.checked;
      g.all.input.disabled = covered;
      for (const c of g.each) c.input.disabled = covered || g.all.input.checked;
    }
  };
  const box = h("fieldset", { class: "event-types", on: { change: sync } },
    h("legend", {}, "Events to send"),
    every.el,
    groups.map((g) => g.el));
  sync();

  function chosen() {
    if (every.input.checked) return ["*"];
    return groups.flatMap((g) => (g.all.input.checked ? [g.all.input.value]
      : g.each.filter((c) => c.input.checked).map((c) => c.input.value)));
  }

  const fields = [
    h("div", { class: "form-row" },
      field("Receiver URL", url, "An http(s) address that answers 2xx; it gets a signed POST for each event"),
      field("Description", description, "Optional: what it is for")),
    h("div", { class: "field" }, h("label", { class: "check" }, enabled, "Enabled: send deliveries now")),
    box,
  ];
  return {
    fields,
    controls: { url, description, event_types: every.input, enabled },
    chosen,
    read: () => ({ url: url.value.trim(), description: description.value.trim(), enabled: enabled.checked, event_types: chosen() }),
  };
}
