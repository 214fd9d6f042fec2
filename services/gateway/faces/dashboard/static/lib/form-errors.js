// An API error shown next to the form that caused it: its message in the form's alert line, and
// the control its `details` names (a JSON path like `$.spec.video.quality`, or a `field`) marked
// invalid and focused, so the person sees which value to change.

import { h } from "./dom.js";

let lineCount = 0;

/** The line a form shows its error in (empty, so hidden, until there is one). */
export function errorLine() {
  return h("p", { class: "form-error", role: "alert", id: `form-error-${++lineCount}` });
}

/** The dotted path an error names: `$.spec.video.quality`, `{"field": "video.codec"}`, or "at `$.x`" in the message. */
function pathOf(exc) {
  const d = exc.details ?? {};
  const raw = d.path ?? d.field ?? exc.message?.match(/at `(\$[^`]*)`/)?.[1] ?? "";
  return String(raw).replace(/^\$\.?/, "").replace(/\[(\d+)\]/g, ".$1");
}

/** The control for `path` in `controls` ({"spec.video.codec": input}), trying shorter prefixes and a `prefix`. */
function controlFor(path, controls, prefix) {
  const parts = path.split(".").filter(Boolean);
  for (let n = parts.length; n > 0; n -= 1) {
    const key = parts.slice(0, n).join(".");
    const found = controls[key] ?? controls[`${prefix}${key}`];
    if (found) return found;
  }
  return null;
}

export function clearError(line, controls = {}) {
  line.textContent = "";
  for (const control of Object.values(controls)) {
    control.removeAttribute("aria-invalid");
    control.removeAttribute("aria-errormessage");
  }
}

/** Show `exc` in `line`; mark and focus the control it names. `prefix` is tried before a relative path ("spec."). */
export function showError(line, exc, controls = {}, prefix = "") {
  clearError(line, controls);
  line.textContent = exc.message;
  const control = controlFor(pathOf(exc), controls, prefix);
  if (!control) return;
  control.setAttribute("aria-invalid", "true");
  control.setAttribute("aria-errormessage", line.id);
  control.focus();
}

/** Run `work` with `button` disabled; an error goes to `onError` (a toast or an inline line). */
export async function whileBusy(button, work, onError) {
  button.disabled = true;
  try {
    return await work();
  } catch (exc) {
    onError(exc);
    return undefined;
  } finally {
    button.disabled = false;
  }
}
