// A secret the API shows once (an API key, a webhook's signing secret): in a box with a Copy
// button and a note that it will not be shown again. Copying uses the clipboard where the page
// may (a secure context); elsewhere the text is selected for the person to copy.

import { h } from "./dom.js";

function selectText(el) {
  const range = document.createRange();
  range.selectNodeContents(el);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

async function copy(value, el) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(value);
      return "Copied to the clipboard.";
    } catch { /* refused: select it instead */ }
  }
  selectText(el);
  return "Selected: press Ctrl+C (⌘C on a Mac) to copy it.";
}

/**
 * secretBox("Your new API key", "vmk_...", {onDone}) -> a card with the secret, Copy and Done.
 * The card takes focus-able heading text so a screen reader announces it.
 */
export function secretBox(title, value, { note, onDone } = {}) {
  const text = h("code", { class: "secret", tabIndex: 0, "aria-label": title }, value);
  const status = h("p", { class: "muted", role: "status" });
  const copyButton = h("button", { type: "button", class: "primary", on: { click: async () => {
    status.textContent = await copy(value, text);
  } } }, "Copy");
  const box = h("section", { class: "card secret-card", "aria-label": title },
    h("h2", { tabIndex: -1 }, title),
    h("p", {}, note ?? "Copy it now: it will not be shown again."),
    h("p", {}, text),
    h("div", { class: "actions" }, copyButton,
      h("button", { type: "button", on: { click: () => { box.remove(); onDone?.(); } } }, "Done, I have stored it")),
    status);
  return box;
}
