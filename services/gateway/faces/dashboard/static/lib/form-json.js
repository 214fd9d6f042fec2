// A form generated from a JSON object (a settings group): boolean -> checkbox, number -> number
// input, string -> text, array of strings -> comma-separated text, object -> a fieldset of its
// fields. A null value shows as empty text, and empty text reads back as null. `fields` may
// say more than the value can (a null that is a number, a field that is read-only, a label).

import { field, h } from "./dom.js";

const humanize = (key) => key.replaceAll("_", " ").replace(/^./, (c) => c.toUpperCase());

function kindOf(value) {
  if (typeof value === "boolean") return "boolean";
  if (typeof value === "number") return "number";
  if (Array.isArray(value)) return "list";
  if (value && typeof value === "object") return "object";
  return "text";
}

function control(kind, value, spec) {
  if (kind === "boolean") return h("input", { type: "checkbox", checked: Boolean(value) });
  const text = value === null || value === undefined ? "" : kind === "list" ? value.join(", ") : String(value);
  if (kind === "number" || kind === "integer") {
    return h("input", { type: "number", value: text, min: spec.min, max: spec.max,
      step: kind === "integer" ? 1 : "any", inputMode: kind === "integer" ? "numeric" : "decimal" });
  }
  return h("input", { type: spec.type ?? "text", value: text, maxLength: spec.maxLength, spellcheck: false });
}

/** A control's value as JSON: null for empty (or `undefined`, left out, where null is not allowed). */
function readControl(kind, input, spec) {
  if (kind === "boolean") return input.checked;
  const text = input.value.trim();
  if (text === "") return spec.nullable === false ? (kind === "text" ? "" : undefined) : null;
  if (kind === "number" || kind === "integer") return Number(text);
  if (kind === "list") return text.split(",").map((s) => s.trim()).filter(Boolean);
  return text;
}

/**
 * jsonForm(values, fields) -> {nodes, controls ({"a.b": input}), read() -> the object to send}.
 * fields: {key: {label, hint, kind, nullable, readOnly (not shown, not sent), min, max, fields (for an object)}};
 * a "*" key stands for every key not named.
 */
export function jsonForm(values, fields = {}, path = "") {
  const nodes = [];
  const row = h("div", { class: "form-row" }); // the plain fields, side by side where they fit
  const controls = {};
  const readers = [];
  for (const [key, value] of Object.entries(values)) {
    const spec = fields[key] ?? fields["*"] ?? {};
    const kind = spec.kind ?? kindOf(value);
    const label = spec.label ?? humanize(key);
    const here = path ? `${path}.${key}` : key;
    if (kind === "object") {
      const inner = jsonForm(value ?? {}, spec.fields ?? {}, here);
      Object.assign(controls, inner.controls);
      nodes.push(h("fieldset", {}, h("legend", {}, label), spec.hint ? h("p", { class: "hint" }, spec.hint) : null, inner.nodes));
      readers.push([key, inner.read]);
      continue;
    }
    if (spec.readOnly) continue; // shown by the page (an update time), never sent
    const input = control(kind, value, spec);
    controls[here] = input;
    if (!nodes.includes(row)) nodes.push(row);
    row.append(kind === "boolean"
      ? h("div", { class: "field" }, h("label", { class: "check" }, input, label),
        spec.hint ? h("small", { class: "hint" }, spec.hint) : null)
      : field(label, input, spec.hint));
    readers.push([key, () => readControl(kind, input, spec)]);
  }
  function read() {
    const out = {};
    for (const [key, reader] of readers) {
      const v = reader();
      if (v !== undefined) out[key] = v;
    }
    return out;
  }
  return { nodes, controls, read };
}
