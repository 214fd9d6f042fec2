// Building DOM from data. Every string becomes a text node or a property, never HTML:
// whatever a user typed (a source URL, a preset name, an error) is shown, not run.

const PROPS = new Set(["value", "checked", "disabled", "hidden", "selected", "type", "name",
  "href", "id", "min", "max", "step", "required", "placeholder", "htmlFor", "tabIndex",
  "autocomplete", "multiple", "open", "readOnly", "rows", "title", "download", "inputMode",
  "pattern", "maxLength", "scope", "colSpan", "spellcheck"]);

/** h("button", {class: "x", on: {click}}, "text", child...) -> Element */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    else if (key === "on") for (const [name, fn] of Object.entries(value)) el.addEventListener(name, fn);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "text") el.textContent = String(value);
    else if (PROPS.has(key)) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

/** SVG elements (charts). */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** A labelled form field: <div class="field"><label for=id>Label</label><input id=id></div> */
let fieldCount = 0;
export function field(label, control, hint) {
  if (!control.id) control.id = `f${++fieldCount}`;
  const hintEl = hint ? h("small", { class: "hint", id: `${control.id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { htmlFor: control.id }, label), control, hintEl);
}

/** A <select> of [value, label] pairs (or plain values). */
export function select(options, props = {}) {
  return h("select", props, options.map((o) => {
    const [value, label] = Array.isArray(o) ? o : [o, o];
    return h("option", { value, selected: String(value) === String(props.value ?? "") }, label);
  }));
}

/** Definition list from [term, value] pairs; values may be nodes. Empty values are skipped. */
export function facts(pairs) {
  return h("dl", { class: "facts" }, pairs
    .filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

/** A table with a caption (for screen readers), headers and rows of cells (strings or nodes). */
export function table(caption, headers, rows, props = {}) {
  return h("div", { class: "table-wrap" }, h("table", props,
    h("caption", { class: caption.visible ? "" : "visually-hidden" }, caption.text ?? caption),
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows)));
}

export function heading(text, ...rest) {
  return h("div", { class: "page-head" }, h("h1", { tabIndex: -1 }, text), ...rest);
}

/** Replace `el`'s children (null, false and undefined are left out, as in h()). */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}
