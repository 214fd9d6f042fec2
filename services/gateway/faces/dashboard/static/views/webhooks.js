// Webhooks: subscriptions that POST signed events to a receiver. Administrators manage
// /api/admin/webhooks (every event), others /api/webhooks (their jobs' events); the shapes are
// the same. Create (the signing secret shown once), enable or disable, send a test, delete, and
// read a subscription's delivery history (views/webhook-deliveries.js).

import { api } from "../lib/api.js";
import { clear, facts, h, heading } from "../lib/dom.js";
import { clearError, errorLine, showError, whileBusy } from "../lib/form-errors.js";
import { secretBox } from "../lib/form-secret.js";
import { narrow, narrowTable } from "../lib/form-table.js";
import { webhookForm } from "../lib/form-webhook.js";
import { number } from "../lib/format.js";
import { atLeast } from "../lib/session.js";
import { deliveriesPanel } from "./webhook-deliveries.js";

export const title = "Webhooks";

const POLL_MS = 10000; // the open history: deliveries change without feed events

export function mount(main, ctx) {
  const admin = atLeast(ctx.user, "admin");
  const base = admin ? "/api/admin/webhooks" : "/api/webhooks";
  const newButton = h("button", { type: "button", class: "primary", on: { click: openForm } }, "New webhook");
  const editor = h("div", {});
  const secret = h("div", {});
  const list = h("div", {}, h("p", { class: "loading" }, "Loading webhooks…"));
  const testResult = h("div", {});
  const history = h("div", {});
  main.append(
    heading("Webhooks", newButton),
    h("p", { class: "muted" }, admin
      ? "As an administrator, your subscriptions may receive every event: jobs, renditions, workers, pools, storage."
      : "Your subscriptions receive the events of your own jobs."),
    editor, secret, list, testResult, history);

  let hooks = [];
  let panel = null; // the open delivery history: {id, el, refresh}

  async function load() {
    try {
      hooks = await api(base);
      render();
    } catch (exc) {
      clear(list).append(h("p", { class: "error-box", role: "alert" }, `The webhooks could not be read: ${exc.message}`));
    }
  }

  function render() {
    if (!hooks.length) {
      clear(list).append(h("p", { class: "empty" }, "No webhooks yet."));
      return;
    }
    clear(list).append(narrowTable("Webhook subscriptions",
      ["Receiver", "Events", "State", "Deliveries (24 h)", narrow("Failures in a row"), "Actions"], hooks.map(row)));
  }

  function row(w) {
    const d = w.deliveries_24h;
    return h("tr", { "aria-current": panel?.id === w.id ? "true" : null },
      h("td", {}, h("span", { class: "mono" }, w.url), w.description ? [h("br"), h("small", { class: "muted" }, w.description)] : null),
      h("td", {}, w.event_types.map((t, i) => [i ? ", " : "", h("code", {}, t)])),
      h("td", {}, h("span", { class: ["badge", w.enabled ? "enabled" : "disabled"] }, w.enabled ? "enabled" : "disabled"),
        w.disabled_reason ? [h("br"), h("small", {}, w.disabled_reason)] : null),
      h("td", {}, `${d.succeeded} succeeded, ${d.failed} failed, ${d.pending} pending`),
      h("td", { class: "num hide-narrow" }, w.consecutive_failures),
      h("td", {}, h("div", { class: "actions" },
        h("button", { type: "button", class: "small", "aria-label": `Deliveries to ${w.url}`, on: { click: () => openHistory(w) } }, "Deliveries"),
        h("button", { type: "button", class: "small", "aria-label": `Send a test to ${w.url}`, on: { click: (e) => sendTest(w, e.currentTarget) } }, "Send test"),
        h("button", { type: "button", class: "small", "aria-label": `${w.enabled ? "Disable" : "Enable"} ${w.url}`,
          on: { click: (e) => setEnabled(w, !w.enabled, e.currentTarget) } }, w.enabled ? "Disable" : "Enable"),
        h("button", { type: "button", class: "small danger", "aria-label": `Delete ${w.url}`, on: { click: (e) => remove(w, e.currentTarget) } }, "Delete"))));
  }

  async function setEnabled(w, enabled, button) {
    await whileBusy(button, async () => {
      await api(`${base}/${encodeURIComponent(w.id)}`, { method: "PUT", body: { enabled } });
      ctx.toast(`${enabled ? "Enabled" : "Disabled"} ${w.url}.`, "ok");
      await load();
    }, (exc) => ctx.toast(`The webhook could not be ${enabled ? "enabled" : "disabled"}: ${exc.message}`, "error"));
  }

  async function remove(w, button) {
    if (!confirm(`Delete the webhook to ${w.url}? Its delivery history goes with it, and deliveries still owed are dropped.`)) return;
    await whileBusy(button, async () => {
      await api(`${base}/${encodeURIComponent(w.id)}`, { method: "DELETE" });
      ctx.toast(`Deleted the webhook to ${w.url}.`, "ok");
      if (panel?.id === w.id) closeHistory();
      await load();
    }, (exc) => ctx.toast(`The webhook could not be deleted: ${exc.message}`, "error"));
  }

  async function sendTest(w, button) {
    clear(testResult).append(h("p", { class: "loading", role: "status" }, `Sending a test to ${w.url}…`));
    await whileBusy(button, async () => {
      const result = await api(`${base}/${encodeURIComponent(w.id)}/test`, { method: "POST" });
      clear(testResult).append(testCard(w, result));
      testResult.querySelector("h2").focus();
      if (panel?.id === w.id) panel.refresh();
    }, (exc) => clear(testResult).append(h("p", { class: "error-box", role: "alert" }, `The test could not be sent: ${exc.message}`)));
  }

  function testCard(w, t) {
    const r = t.response;
    return h("section", { class: "card", "aria-labelledby": "test-title" },
      h("div", { class: "page-head" },
        h("h2", { id: "test-title", tabIndex: -1 }, "Test delivery to ", h("span", { class: "mono" }, w.url)),
        h("button", { type: "button", class: "small", on: { click: () => clear(testResult) } }, "Close")),
      h("p", { role: "status" }, h("span", { class: ["badge", t.succeeded ? "succeeded" : "failed"] }, t.succeeded ? "succeeded" : "failed"), " ",
        r ? `The receiver answered HTTP ${r.status} in ${number(r.duration_ms, 0)} ms.` : "The receiver did not answer."),
      facts([["Delivery id", h("code", {}, t.delivery_id)], ["Error", t.error === `HTTP ${r?.status}` ? null : t.error]]),
      h("h3", {}, "Request sent"),
      h("pre", {}, `${t.request.method} ${t.request.url}\n`,
        Object.entries(t.request.headers).map(([k, v]) => `${k}: ${v}`).join("\n"), "\n\n", t.request.body),
      r ? [h("h3", {}, "Receiver's answer"),
        h("pre", {}, `HTTP ${r.status} (${number(r.duration_ms, 0)} ms)\n`,
          Object.entries(r.headers).map(([k, v]) => `${k}: ${v}`).join("\n"), "\n\n", r.body)] : null);
  }

  function openHistory(w) {
    panel = { id: w.id, ...deliveriesPanel(base, w, ctx, closeHistory) };
    clear(history).append(panel.el);
    render();
    panel.el.querySelector("h2").focus();
  }

  function closeHistory() {
    panel = null;
    clear(history);
    render();
  }

  async function openForm() {
    newButton.disabled = true;
    let types;
    try {
      types = await api(`${base}/event-types`);
    } catch (exc) {
      ctx.toast(`The event types could not be read: ${exc.message}`, "error");
      newButton.disabled = false;
      return;
    }
    const form = webhookForm(types, { admin });
    const error = errorLine();
    const create = h("button", { type: "submit", class: "primary" }, "Create webhook");
    const el = h("form", { class: "card", "aria-labelledby": "new-webhook", on: { submit } },
      h("h2", { id: "new-webhook", tabIndex: -1 }, "New webhook"),
      form.fields, error,
      h("div", { class: "actions" }, create, h("button", { type: "button", on: { click: closeForm } }, "Cancel")));

    async function submit(event) {
      event.preventDefault();
      clearError(error, form.controls);
      if (!form.chosen().length) {
        showError(error, { message: "Choose at least one event type.", details: { field: "event_types" } }, form.controls);
        return;
      }
      await whileBusy(create, async () => {
        const made = await api(base, { method: "POST", body: form.read() });
        closeForm();
        const box = secretBox(`Signing secret of the webhook to ${made.url}`, made.secret, {
          note: "Verify deliveries with this secret (Standard Webhooks, HMAC-SHA256). Copy it now: it will not be shown again.",
          onDone: () => newButton.focus() });
        clear(secret).append(box);
        box.querySelector("h2").focus();
        await load();
      }, (exc) => showError(error, exc, form.controls));
    }

    clear(editor).append(el);
    newButton.hidden = true;
    newButton.disabled = false;
    el.querySelector("h2").focus();
  }

  function closeForm() {
    clear(editor);
    newButton.hidden = false;
  }

  // The list first: a history whose webhook is gone closes instead of asking for it.
  async function reloadAll() {
    await load();
    if (panel && !hooks.some((w) => w.id === panel.id)) closeHistory();
    else panel?.refresh();
  }
  const onEvent = (e) => { if (e.detail.event.type.startsWith("webhook.")) reloadAll(); };
  const resync = () => reloadAll();
  ctx.feed?.addEventListener("event", onEvent);
  ctx.feed?.addEventListener("resync", resync);
  const timer = setInterval(() => { if (panel && !document.hidden) reloadAll(); }, POLL_MS);
  load();
  return () => {
    clearInterval(timer);
    ctx.feed?.removeEventListener("event", onEvent);
    ctx.feed?.removeEventListener("resync", resync);
  };
}
