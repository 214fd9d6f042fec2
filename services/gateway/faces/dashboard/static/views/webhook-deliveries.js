// A webhook's delivery history (part of the Webhooks page): newest first, 20 at a time with
// "Older" following the Link rel=next header, a status filter, a delivery's every attempt, and
// Retry. GET .../webhooks/{id}/deliveries, GET/POST .../webhooks/deliveries/{id}[/retry].

import { api, nextLink } from "../lib/api.js";
import { clear, facts, field, h, select } from "../lib/dom.js";
import { whileBusy } from "../lib/form-errors.js";
import { narrow, narrowTable } from "../lib/form-table.js";
import { ago, number, time } from "../lib/format.js";

const PAGE = 20;
const MAX_PAGE = 200; // the API's largest page
const STATUSES = [["", "All"], ["pending", "Pending"], ["succeeded", "Succeeded"], ["failed", "Failed"]];

const badge = (status) => h("span", { class: ["badge", status] }, status);

/** deliveriesPanel(base, webhook, ctx) -> {el, refresh(), close()}; base: "/api/webhooks" or "/api/admin/webhooks". */
export function deliveriesPanel(base, webhook, ctx, onClose) {
  const status = select(STATUSES, { value: "" });
  const list = h("div", {}, h("p", { class: "loading" }, "Loading deliveries…"));
  const older = h("button", { type: "button", hidden: true, on: { click: loadOlder } }, "Older deliveries");
  const detail = h("div", {});
  const el = h("section", { class: "card", "aria-labelledby": "deliveries-title" },
    h("div", { class: "page-head" },
      h("h2", { id: "deliveries-title", tabIndex: -1 }, "Deliveries to ", h("span", { class: "mono" }, webhook.url)),
      h("button", { type: "button", class: "small", on: { click: () => onClose() } }, "Close history")),
    h("div", { class: "filters" }, field("Status", status)),
    list,
    h("div", { class: "actions" }, older),
    detail);

  let rows = [];
  let next = null;
  let openId = null;

  async function refresh() {
    // Re-read as many as are shown, so a poll keeps the older pages the person opened.
    const limit = Math.min(MAX_PAGE, Math.max(PAGE, rows.length));
    try {
      const { body, response } = await api(`${base}/${encodeURIComponent(webhook.id)}/deliveries`,
        { query: { status: status.value, limit }, response: true });
      rows = body;
      next = nextLink(response);
      render();
      if (openId) showDetail(openId, { quiet: true });
    } catch (exc) {
      clear(list).append(h("p", { class: "error-box", role: "alert" }, `The deliveries could not be read: ${exc.message}`));
    }
  }

  async function loadOlder() {
    if (!next) return;
    await whileBusy(older, async () => {
      const { body, response } = await api(next, { response: true });
      rows = rows.concat(body);
      next = nextLink(response);
      render();
    }, (exc) => ctx.toast(`Older deliveries could not be read: ${exc.message}`, "error"));
  }

  function render() {
    older.hidden = !next;
    if (!rows.length) {
      clear(list).append(h("p", { class: "empty" }, status.value ? `No ${status.value} deliveries.` : "No deliveries yet."));
      return;
    }
    clear(list).append(narrowTable(`Deliveries to ${webhook.url}, newest first`,
      ["Created", "Event", "Status", "Attempts", narrow("Next attempt or finished"), narrow("Reason"), "Actions"],
      rows.map((d) => h("tr", { "aria-current": d.id === openId ? "true" : null },
        h("td", { title: time(d.created_at) }, ago(d.created_at)),
        h("td", {}, h("code", {}, d.event_type)),
        h("td", {}, badge(d.status)),
        h("td", { class: "num" }, d.attempt_count),
        h("td", { class: "hide-narrow" }, d.finished_at ? `finished ${ago(d.finished_at)}` : d.next_attempt_at ? `next ${time(d.next_attempt_at)}` : "—"),
        h("td", { class: "hide-narrow" }, d.reason ?? ""),
        h("td", {}, h("div", { class: "actions" },
          h("button", { type: "button", class: "small", "aria-label": `Attempts of delivery ${d.id}`,
            on: { click: () => showDetail(d.id) } }, "Attempts"),
          d.status === "succeeded" ? null : h("button", { type: "button", class: "small",
            "aria-label": `Retry delivery ${d.id} now`, on: { click: (e) => retry(d.id, e.currentTarget) } }, "Retry")))))));
  }

  async function retry(id, button) {
    await whileBusy(button, async () => {
      await api(`${base}/deliveries/${encodeURIComponent(id)}/retry`, { method: "POST" });
      ctx.toast("One more attempt is on its way.", "ok");
      openId = id;
      await refresh();
    }, (exc) => ctx.toast(`The delivery could not be retried: ${exc.message}`, "error"));
  }

  async function showDetail(id, { quiet = false } = {}) {
    let d;
    try {
      d = await api(`${base}/deliveries/${encodeURIComponent(id)}`);
    } catch (exc) {
      if (!quiet) ctx.toast(`The delivery could not be read: ${exc.message}`, "error");
      return;
    }
    const opening = openId !== id || !detail.firstChild;
    openId = id;
    clear(detail).append(deliveryDetail(d, () => { openId = null; clear(detail); render(); }));
    if (opening && !quiet) { render(); detail.querySelector("h3").focus(); }
  }

  status.addEventListener("change", () => { rows = []; refresh(); });
  refresh();
  return { el, refresh };
}

function attemptRow(a, i) {
  const result = a.status_code !== null ? `HTTP ${a.status_code}` : a.error ?? "no answer";
  const ok = a.status_code !== null && a.status_code >= 200 && a.status_code < 300;
  return h("tr", {},
    h("td", { class: "num" }, i + 1),
    h("td", { title: time(a.at) }, time(a.at)),
    h("td", {}, h("span", { class: ["badge", ok ? "succeeded" : "failed"] }, ok ? "ok" : "failed"), " ", result,
      a.status_code !== null && a.error && a.error !== result ? [h("br"), a.error] : null),
    h("td", { class: "num" }, `${number(a.duration_ms, 0)} ms`),
    h("td", { class: "hide-narrow" }, a.manual ? "retry by hand" : "scheduled"),
    h("td", {},
      h("details", {}, h("summary", {}, "Request and answer"),
        facts([["URL", a.url ?? "(not kept)"]]),
        Object.keys(a.request_headers ?? {}).length
          ? h("pre", {}, Object.entries(a.request_headers).map(([k, v]) => `${k}: ${v}`).join("\n")) : null,
        a.response ? [h("p", {}, "Answer (first bytes):"), h("pre", {}, a.response)] : null)));
}

function deliveryDetail(d, close) {
  return h("section", { class: "delivery-detail", "aria-labelledby": `delivery-${d.id}` },
    h("div", { class: "page-head" },
      h("h3", { id: `delivery-${d.id}`, tabIndex: -1 }, "Delivery ", h("code", {}, d.id)),
      h("button", { type: "button", class: "small", on: { click: close } }, "Close")),
    facts([
      ["Event", h("code", {}, d.event_type)],
      ["Status", badge(d.status)],
      ["Reason", d.reason],
      ["Job", d.job_id],
      ["Created", time(d.created_at)],
      ["Next attempt", d.next_attempt_at ? time(d.next_attempt_at) : null],
      ["Finished", d.finished_at ? time(d.finished_at) : null],
    ]),
    d.attempts.length
      ? narrowTable({ text: `Attempts of delivery ${d.id}`, visible: false },
        ["#", "When", "Result", "Took", narrow("How"), "Details"], d.attempts.map(attemptRow))
      : h("p", { class: "empty" }, "No attempt yet."),
    h("details", {}, h("summary", {}, "Payload sent"), h("pre", {}, JSON.stringify(d.payload, null, 2))));
}
