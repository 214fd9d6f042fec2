// Presets: the built-in ones (read-only) and the person's own, which they create, edit and
// delete here. GET/POST /api/presets, PUT/DELETE /api/presets/{id}.

import { api } from "../lib/api.js";
import { clear, h, heading } from "../lib/dom.js";
import { clearError, errorLine, showError, whileBusy } from "../lib/form-errors.js";
import { presetForm, specSummary } from "../lib/form-preset.js";
import { narrow, narrowTable } from "../lib/form-table.js";
import { ago } from "../lib/format.js";

export const title = "Presets";

export function mount(main, ctx) {
  const list = h("div", {}, h("p", { class: "loading" }, "Loading presets…"));
  const editor = h("div", {});
  const newButton = h("button", { type: "button", class: "primary", on: { click: () => openForm(null) } }, "New preset");
  main.append(
    heading("Presets", newButton),
    h("p", { class: "muted" }, "A preset is what a job's output will be. The built-in ones are read-only; copy one to start your own."),
    editor,
    list);

  let presets = [];

  async function load() {
    try {
      presets = await api("/api/presets");
      render();
    } catch (exc) {
      clear(list).append(h("p", { class: "error-box", role: "alert" }, `The presets could not be read: ${exc.message}`));
    }
  }

  function render() {
    const rows = presets.map((p) => h("tr", {},
      h("td", { class: "nowrap" }, h("strong", {}, p.name), p.active ? null : [" ", h("span", { class: "badge paused" }, "inactive")]),
      h("td", { class: "hide-narrow" }, p.description),
      h("td", {}, specSummary(p.spec)),
      h("td", {}, p.builtin ? "Built in" : "Yours"),
      h("td", { class: "hide-narrow" }, p.builtin ? "—" : ago(p.updated_at ?? p.created_at)),
      h("td", {}, h("div", { class: "actions" },
        p.builtin ? null : h("button", { type: "button", class: "small", on: { click: () => openForm(p) },
          "aria-label": `Edit ${p.name}` }, "Edit"),
        h("button", { type: "button", class: "small", on: { click: () => openForm(p, { copy: true }) },
          "aria-label": `Copy ${p.name} as a new preset` }, "Copy"),
        p.builtin ? null : h("button", { type: "button", class: "small danger",
          on: { click: (e) => remove(p, e.currentTarget) }, "aria-label": `Delete ${p.name}` }, "Delete")))));
    clear(list).append(presets.length
      ? narrowTable("Presets: built-in and yours", ["Name", narrow("Description"), "Output", "Kind", narrow("Changed"),
        "Actions"], rows)
      : h("p", { class: "empty" }, "No presets."));
  }

  async function remove(preset, button) {
    if (!confirm(`Delete the preset “${preset.name}”? Jobs that used it keep their spec.`)) return;
    await whileBusy(button, async () => {
      await api(`/api/presets/${encodeURIComponent(preset.id)}`, { method: "DELETE" });
      ctx.toast(`Deleted “${preset.name}”.`, "ok");
      if (editing?.id === preset.id) closeForm();
      await load();
    }, (exc) => ctx.toast(`The preset could not be deleted: ${exc.message}`, "error"));
  }

  let editing = null; // the preset the form edits (null: a new one)

  function openForm(preset, { copy = false } = {}) {
    editing = copy ? null : preset;
    const start = copy ? { ...preset, name: `${preset.name}-copy`.slice(0, 64), description: preset.description } : preset;
    const form = presetForm(start);
    const error = errorLine();
    const save = h("button", { type: "submit", class: "primary" }, editing ? "Save preset" : "Create preset");
    const formTitle = editing ? `Edit preset “${preset.name}”` : copy ? `New preset from “${preset.name}”` : "New preset";
    const el = h("form", { class: "card", "aria-label": formTitle, on: { submit } },
      h("h2", { tabIndex: -1 }, formTitle),
      form.fields,
      error,
      h("div", { class: "actions" }, save, h("button", { type: "button", on: { click: closeForm } }, "Cancel")));

    async function submit(event) {
      event.preventDefault();
      clearError(error, form.controls);
      await whileBusy(save, async () => {
        const body = form.read();
        const saved = editing
          ? await api(`/api/presets/${encodeURIComponent(editing.id)}`, { method: "PUT", body })
          : await api("/api/presets", { method: "POST", body });
        ctx.toast(editing ? `Saved “${saved.name}”.` : `Created “${saved.name}”.`, "ok");
        closeForm();
        await load();
      }, (exc) => showError(error, exc, form.controls, "spec."));
    }

    clear(editor).append(el);
    newButton.hidden = true;
    el.querySelector("h2").focus();
    el.scrollIntoView({ block: "start" });
  }

  function closeForm() {
    editing = null;
    clear(editor);
    newButton.hidden = false;
    newButton.focus();
  }

  const resync = () => load();
  ctx.feed?.addEventListener("resync", resync);
  load();
  return () => ctx.feed?.removeEventListener("resync", resync);
}
