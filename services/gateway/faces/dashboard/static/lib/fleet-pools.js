// The Fleet page's pools: the list (GET /api/admin/transcoding/pools), a new pool, changing one,
// deleting one (409 while it has leases: the server's words are shown), and re-running the
// capability probe on a pool's transcoders with what each found.

import { api } from "./api.js";
import { clear, field, h, select, table } from "./dom.js";
import { syncRows } from "./fleet-rows.js";
import { ago, time } from "./format.js";

const DEVICES = [["any", "Any (CPU or GPU)"], ["cpu", "CPU"], ["nvidia", "NVIDIA GPU"], ["vaapi", "VA-API"], ["qsv", "Intel Quick Sync"]];
const POOL_ID = "[a-z0-9][a-z0-9\\-]{0,31}";

function check(label, props) {
  const input = h("input", { type: "checkbox", ...props });
  return { input, el: h("div", { class: "check" }, input, h("label", { htmlFor: (input.id = `c-${Math.random().toString(36).slice(2, 9)}`) }, label)) };
}

function concurrencyText(pool) {
  return pool.concurrency === null ? "Not set (scheduler default)" : String(pool.concurrency);
}

export class PoolsSection {
  constructor({ toast }) {
    this.toast = toast;
    this.pools = new Map();
    this.error = h("p", { class: "form-error", role: "alert" });
    this.tbody = null;
    const wrap = table("Pools", ["Pool", "Device", "Concurrency", "State", "Transcoders", "Slots", "Running", "Description", "Actions"], []);
    this.tbody = wrap.querySelector("tbody");
    wrap.querySelectorAll("th")[7].className = "hide-narrow";
    this.newButton = h("button", { type: "button", class: "primary", "aria-expanded": "false", on: { click: () => this.toggleCreate() } }, "New pool");
    this.createForm = this.buildCreate();
    this.editForm = h("div");
    this.probeBox = h("div", { "aria-live": "polite" });
    this.el = h("section", { "aria-labelledby": "pools-heading" },
      h("div", { class: "page-head" }, h("h2", { id: "pools-heading" }, "Pools"), this.newButton),
      h("p", { class: "muted" }, "Each pool's work goes on its own subject; transcoders started with VIDMESH_POOL=<pool> take it."),
      this.error, this.createForm, this.editForm, wrap, this.probeBox);
  }

  async load() {
    try {
      const pools = await api("/api/admin/transcoding/pools");
      this.error.textContent = "";
      this.pools = new Map(pools.map((p) => [p.id, p]));
      syncRows(this.tbody, pools, { key: (p) => p.id, cells: (p) => this.cells(p), empty: "No pools.", columns: 9 });
    } catch (exc) {
      this.error.textContent = `Could not read the pools: ${exc.message}`;
    }
  }

  cells(pool) {
    return [
      h("strong", {}, pool.id),
      DEVICES.find(([d]) => d === pool.device)?.[1] ?? pool.device,
      concurrencyText(pool),
      h("span", { class: ["badge", pool.enabled ? "enabled" : "disabled"] }, pool.enabled ? "Enabled" : "Disabled"),
      { content: String(pool.transcoders), class: "num" },
      { content: String(pool.slots), class: "num" },
      { content: String(pool.running), class: "num" },
      { content: pool.description || "—", class: "hide-narrow" },
      h("div", { class: "actions" },
        h("button", { type: "button", class: "small", "aria-label": `Edit pool ${pool.id}`, on: { click: (e) => this.showEdit(pool.id, e.currentTarget) } }, "Edit"),
        h("button", { type: "button", class: "small", "aria-label": `Probe capabilities of pool ${pool.id}`, on: { click: (e) => this.probe(pool.id, e.currentTarget) } }, "Probe capabilities"),
        pool.id === "default" ? null
          : h("button", { type: "button", class: "small danger", "aria-label": `Delete pool ${pool.id}`, on: { click: (e) => this.remove(pool.id, e.currentTarget) } }, "Delete")),
    ];
  }

  toggleCreate(show = this.createForm.hidden) {
    this.createForm.hidden = !show;
    this.newButton.setAttribute("aria-expanded", String(show));
    if (show) this.createForm.querySelector("input").focus();
    else this.newButton.focus();
  }

  buildCreate() {
    const id = h("input", { name: "id", required: true, pattern: POOL_ID, maxLength: 32, autocomplete: "off", spellcheck: false });
    const device = select(DEVICES, { name: "device", value: "any" });
    const concurrency = h("input", { name: "concurrency", type: "number", min: 1, max: 1000, step: 1, value: "1", required: true, inputMode: "numeric" });
    concurrency.defaultValue = "1"; // what the form's reset goes back to
    const enabled = check("Enabled: give this pool work", { checked: true });
    enabled.input.defaultChecked = true;
    const description = h("input", { name: "description", maxLength: 500 });
    const error = h("p", { class: "form-error", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary" }, "Create pool");
    const form = h("form", { class: "card", hidden: true, "aria-labelledby": "new-pool-heading", on: { submit: async (e) => {
      e.preventDefault();
      submit.disabled = true;
      error.textContent = "";
      try {
        const pool = await api("/api/admin/transcoding/pools", { method: "POST", body: {
          id: id.value.trim(), device: device.value, concurrency: Number(concurrency.value),
          enabled: enabled.input.checked, description: description.value.trim(),
        } });
        this.toast(`Pool ${pool.id} created.`, "ok");
        form.reset();
        this.toggleCreate(false);
        await this.load();
      } catch (exc) {
        error.textContent = exc.message;
      } finally {
        submit.disabled = false;
      }
    } } },
    h("h3", { id: "new-pool-heading" }, "New pool"),
    h("div", { class: "form-row" },
      field("Pool id", id, "Lowercase letters, digits and hyphens, up to 32."),
      field("Device", device),
      field("Concurrency", concurrency, "Jobs the pool runs at once (1–1000).")),
    field("Description", description),
    enabled.el,
    error,
    h("div", { class: "actions" }, submit, h("button", { type: "button", on: { click: () => this.toggleCreate(false) } }, "Cancel")));
    return form;
  }

  showEdit(poolId, opener) {
    const pool = this.pools.get(poolId);
    if (!pool) return;
    const device = select(DEVICES, { name: "device", value: pool.device });
    const concurrency = h("input", { name: "concurrency", type: "number", min: 1, max: 1000, step: 1, value: pool.concurrency ?? "", inputMode: "numeric" });
    const enabled = check("Enabled: give this pool work", { checked: pool.enabled });
    const description = h("input", { name: "description", maxLength: 500, value: pool.description });
    const error = h("p", { class: "form-error", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary" }, "Save pool");
    const close = () => { clear(this.editForm); opener?.isConnected ? opener.focus() : this.newButton.focus(); };
    const body = () => {
      const changes = { device: device.value, enabled: enabled.input.checked, description: description.value.trim() };
      if (concurrency.value !== "") changes.concurrency = Number(concurrency.value);
      return changes;
    };
    const form = h("form", { class: "card", "aria-labelledby": "edit-pool-heading", on: { submit: async (e) => {
      e.preventDefault();
      submit.disabled = true;
      error.textContent = "";
      try {
        await api(`/api/admin/transcoding/pools/${encodeURIComponent(poolId)}`, { method: "PUT", body: body() });
        this.toast(`Pool ${poolId} saved.`, "ok");
        await this.load();
        close();
      } catch (exc) {
        error.textContent = exc.message;
      } finally {
        submit.disabled = false;
      }
    } } },
    h("h3", { id: "edit-pool-heading", tabIndex: -1 }, `Edit pool ${poolId}`),
    h("div", { class: "form-row" },
      field("Device", device),
      field("Concurrency", concurrency, pool.concurrency === null
        ? "Not set: the scheduler's MAX_CONCURRENT_JOBS applies. Leave blank to keep it so."
        : "Jobs the pool runs at once (1–1000).")),
    field("Description", description),
    enabled.el,
    error,
    h("div", { class: "actions" }, submit, h("button", { type: "button", on: { click: close } }, "Cancel")));
    clear(this.editForm).append(form);
    form.querySelector("h3").focus();
  }

  async remove(poolId, button) {
    if (!confirm(`Delete the pool "${poolId}"? Its transcoders will have no pool to take work from.`)) return;
    button.disabled = true;
    try {
      await api(`/api/admin/transcoding/pools/${encodeURIComponent(poolId)}`, { method: "DELETE" });
      this.toast(`Pool ${poolId} deleted.`, "ok");
      this.newButton.focus();
      await this.load();
    } catch (exc) {
      this.error.textContent = `Pool ${poolId} was not deleted: ${exc.message}`;
      this.toast(exc.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  async probe(poolId, button) {
    const label = button.textContent;
    button.disabled = true;
    button.textContent = "Probing…";
    clear(this.probeBox).append(h("p", { class: "loading" }, `Probing the transcoders of pool ${poolId} (up to 30 s)…`));
    try {
      const answer = await api(`/api/admin/transcoding/pools/${encodeURIComponent(poolId)}/probe`, { method: "POST" });
      clear(this.probeBox).append(probeResults(answer, () => clear(this.probeBox)));
      this.probeBox.querySelector("h3").focus();
    } catch (exc) {
      clear(this.probeBox).append(h("p", { class: "error-box", role: "alert" }, `Probe of pool ${poolId} failed: ${exc.message}`));
    } finally {
      button.disabled = false;
      button.textContent = label;
    }
  }
}

/** POST .../probe's answer: per transcoder, every capability tried, whether it worked and why not. */
function probeResults(answer, close) {
  return h("section", { class: "card", "aria-labelledby": "probe-heading" },
    h("div", { class: "page-head" },
      h("h3", { id: "probe-heading", tabIndex: -1 }, `Capabilities of pool ${answer.pool}`),
      h("button", { type: "button", class: "small quiet", on: { click: close } }, "Close")),
    h("p", {}, `${answer.answered} of ${answer.expected} transcoders answered.`),
    answer.results.map((r) => {
      const checks = r.capabilities.checks ?? [];
      const working = checks.filter((c) => c.ok).length;
      return h("details", { open: answer.results.length === 1 },
        h("summary", {}, `${r.host} (${r.worker}): ${working} of ${checks.length} work`),
        h("p", { class: "muted" }, `${r.capabilities.ffmpeg_version} · probed ${ago(r.capabilities.probed_at)} (${time(r.capabilities.probed_at)})`),
        table(`Capabilities of ${r.worker}`, ["Capability", "Kind", "Works", "Why not", "Seconds"], checks.map((c) => h("tr", {},
          h("td", {}, h("code", {}, c.name)),
          h("td", {}, c.kind),
          h("td", {}, h("span", { class: ["badge", c.ok ? "completed" : "failed"] }, c.ok ? "Yes" : "No")),
          h("td", {}, c.reason || ""),
          h("td", { class: "num" }, c.seconds ? c.seconds.toFixed(2) : "")))));
    }));
}
