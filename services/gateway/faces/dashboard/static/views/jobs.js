// Jobs: a live table of the caller's jobs (every job for moderators and administrators), with
// filters and search, a form to submit a job, and the actions each job allows.

import { api } from "../lib/api.js";
import { field, h, heading, select } from "../lib/dom.js";
import * as fmt from "../lib/format.js";
import {
  STATUSES, UNFINISHED, actionsFor, confirmAction, fetchJob, jobName, progressBar, seesAll, startDownload, statusBadge,
} from "../lib/jobs.js";

export const title = "Jobs";

function wide(el) {
  el.classList.add("wide");
  return el;
}
const PAGE = 100;

export function mount(main, ctx) {
  const { user, feed, toast } = ctx;
  const all = seesAll(user);
  const rows = new Map(); // job id -> {job, tr}
  const refetching = new Map(); // job id -> timer (events for one job come in bursts)
  let cursor = null;
  let loadToken = 0;

  // ---- the submit form ---------------------------------------------------------------------
  const source = h("input", { name: "source", required: true, autocomplete: "off", spellcheck: false,
    placeholder: "https://…, s3://bucket/key or a file under a media root" });
  const preset = h("select", { name: "preset", required: true });
  const filename = h("input", { name: "filename", autocomplete: "off", placeholder: "optional" });
  const priority = h("input", { name: "priority", type: "number", min: -10, max: 10, step: 1, value: "0", inputMode: "numeric" });
  const submitError = h("p", { class: "form-error", role: "alert" });
  const submitButton = h("button", { type: "submit", class: "primary" }, "Submit job");
  const form = h("form", { class: "card", "aria-labelledby": "new-job-title", on: { submit: submitJob } },
    h("h2", { id: "new-job-title" }, "New job"),
    h("div", { class: "form-row" },
      wide(field("Source", source, "An http(s) URL, s3://bucket/key of your connected storage, or a path under a media root")),
      field("Preset", preset),
      field("Output file name", filename),
      field("Priority", priority)),
    submitError, submitButton);

  // ---- filters --------------------------------------------------------------------------------
  const statusFilter = select([["", "Any status"], ...STATUSES.map((s) => [s, s])], { name: "status" });
  const presetFilter = h("select", { name: "preset-filter" }, h("option", { value: "" }, "Any preset"));
  const search = h("input", { type: "search", name: "search", placeholder: "Name, source, id…", autocomplete: "off" });
  const filters = h("div", { class: "filters", role: "search" },
    field("Filter by status", statusFilter), field("Filter by preset", presetFilter), field("Search jobs", search));
  statusFilter.addEventListener("change", reload);
  presetFilter.addEventListener("change", reload);
  search.addEventListener("input", applySearch);

  const tbody = h("tbody", {});
  const summary = h("p", { class: "muted", role: "status", "aria-live": "polite" });
  const more = h("button", { type: "button", hidden: true, on: { click: () => load(false) } }, "Load more");
  const headers = ["Job", "Status", "Progress", "Speed", "FPS", "ETA", "Source", "Preset", "Size", "Created", "Actions"];
  const narrow = new Set(["FPS", "Source", "Preset", "Created"]);
  const tableEl = h("div", { class: "table-wrap" }, h("table", { id: "jobs-table" },
    h("caption", { class: "visually-hidden" }, all ? "Every account's jobs" : "Your jobs"),
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col", class: narrow.has(x) ? "hide-narrow" : null }, x)))),
    tbody));

  main.append(heading(all ? "Jobs (every account)" : "Your jobs"), form, filters, summary, tableEl, h("p", {}, more));

  // ---- rows -----------------------------------------------------------------------------------
  function cell(text, cls) { return h("td", { class: cls }, text); }

  function actionButtons(job) {
    const acts = actionsFor(user, job);
    const name = jobName(job);
    const button = (kind, label, cls) => acts[kind] && h("button", {
      type: "button", class: ["small", cls], "aria-label": `${label} ${name}`, dataset: { action: kind },
      on: { click: (e) => act(kind, job, e.currentTarget) },
    }, label);
    return h("div", { class: "actions" },
      button("download", "Download", "primary"), button("cancel", "Cancel", "danger"),
      button("retry", "Retry"), button("remove", "Delete", "danger"));
  }

  function renderRow(job) {
    const tr = h("tr", { dataset: { jobId: job.id, status: job.status } },
      h("td", { class: "job-name" }, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, jobName(job))),
      h("td", {}, statusBadge(job)),
      h("td", {}, progressBar(job)),
      cell(job.speed ? `${fmt.number(job.speed, 2)}×` : fmt.DASH, "num"),
      cell(fmt.number(job.fps, 0), "num hide-narrow"),
      cell(job.status === "running" ? fmt.seconds(job.eta_seconds) : fmt.DASH, "num"),
      h("td", { class: "source hide-narrow", title: job.source }, job.source),
      cell(job.preset, "hide-narrow"),
      cell(job.output ? fmt.bytes(job.output.size) : fmt.DASH, "num"),
      h("td", { class: "hide-narrow", title: fmt.time(job.created_at) }, fmt.ago(job.created_at)),
      h("td", {}, actionButtons(job)));
    return tr;
  }

  function show(job, { prepend = false } = {}) {
    const existing = rows.get(job.id);
    const tr = renderRow(job);
    if (existing) {
      // Keep keyboard focus on the row's control when the row is redrawn.
      const focused = existing.tr.contains(document.activeElement) ? document.activeElement.dataset.action : null;
      existing.tr.replaceWith(tr);
      if (focused) tr.querySelector(`[data-action="${focused}"]`)?.focus();
    } else if (prepend) tbody.prepend(tr);
    else tbody.append(tr);
    rows.set(job.id, { job, tr });
    applySearchTo(job, tr);
  }

  function drop(jobId) {
    rows.get(jobId)?.tr.remove();
    rows.delete(jobId);
    count();
  }

  function matchesFilters(job) {
    return (!statusFilter.value || job.status === statusFilter.value) && (!presetFilter.value || job.preset === presetFilter.value);
  }

  function applySearchTo(job, tr) {
    const q = search.value.trim().toLowerCase();
    tr.hidden = Boolean(q) && ![job.id, job.filename, job.source, job.preset, job.status].some((v) => String(v ?? "").toLowerCase().includes(q));
  }

  function applySearch() {
    for (const { job, tr } of rows.values()) applySearchTo(job, tr);
    count();
  }

  function count() {
    const shown = [...rows.values()].filter((r) => !r.tr.hidden).length;
    const filtered = statusFilter.value || presetFilter.value;
    summary.textContent = rows.size === 0
      ? (filtered ? "No jobs match the filters." : "No jobs yet.")
      : `${shown} of ${rows.size} jobs shown${cursor ? " (more to load)" : ""}.`;
  }

  // ---- reading ----------------------------------------------------------------------------------
  async function load(fresh) {
    const token = fresh ? ++loadToken : loadToken;
    const query = { limit: PAGE, status: statusFilter.value, preset: presetFilter.value, cursor: fresh ? null : cursor };
    try {
      const page = await api(all ? "/api/admin/jobs" : "/api/jobs", { query });
      if (token !== loadToken) return;
      if (fresh) { tbody.replaceChildren(); rows.clear(); }
      for (const job of page.items) show(job);
      cursor = page.next_cursor ?? null;
      more.hidden = !cursor;
      count();
    } catch (exc) {
      summary.textContent = `The jobs could not be read: ${exc.message}`;
    }
  }

  function reload() { cursor = null; load(true); }

  async function refetch(jobId, { insert = false } = {}) {
    clearTimeout(refetching.get(jobId));
    refetching.set(jobId, setTimeout(async () => {
      refetching.delete(jobId);
      try {
        const job = await fetchJob(user, jobId);
        if (rows.has(job.id)) show(job);
        else if (insert && matchesFilters(job)) { show(job, { prepend: true }); count(); }
      } catch (exc) {
        if (exc.status === 404) drop(jobId);
      }
    }, 150));
  }

  async function loadPresets() {
    try {
      const presets = (await api("/api/presets")).filter((p) => p.active !== false);
      preset.replaceChildren(...presets.map((p) => h("option", { value: p.name, selected: p.name === "optimized" }, p.builtin ? p.name : `${p.name} (yours)`)));
      presetFilter.append(...presets.map((p) => h("option", { value: p.name }, p.name)));
    } catch (exc) {
      submitError.textContent = `Presets could not be read: ${exc.message}`;
    }
  }

  // ---- acting ----------------------------------------------------------------------------------
  async function submitJob(event) {
    event.preventDefault();
    submitError.textContent = "";
    submitButton.disabled = true;
    const body = { source: source.value.trim(), preset: preset.value, priority: Number(priority.value || 0) };
    if (filename.value.trim()) body.destination = { filename: filename.value.trim() };
    try {
      const job = await api("/api/jobs", { method: "POST", body });
      toast(`Job submitted: ${jobName(job)}`, "ok");
      source.value = "";
      filename.value = "";
      if (matchesFilters(job)) { show(job, { prepend: true }); count(); }
    } catch (exc) {
      submitError.textContent = exc.message;
    } finally {
      submitButton.disabled = false;
    }
  }

  async function act(kind, job, button) {
    if (!confirmAction(kind, job)) return;
    button.disabled = true;
    try {
      const answer = await actionsFor(user, job)[kind]();
      if (kind === "download") startDownload(answer, job);
      else {
        toast({ cancel: "Cancelling", retry: "Retrying", remove: "Deleted" }[kind] + `: ${jobName(job)}`, "ok");
        refetch(job.id);
      }
    } catch (exc) {
      toast(`${jobName(job)}: ${exc.message}`, "error");
    } finally {
      button.disabled = false;
    }
  }

  // ---- live -------------------------------------------------------------------------------------
  function onEvent(e) {
    const ev = e.detail.event;
    if (!ev.type.startsWith("job.") || !ev.job_id) return;
    if (ev.type === "job.purged") { drop(ev.job_id); return; }
    if (rows.has(ev.job_id)) refetch(ev.job_id);
    else if (ev.type === "job.accepted") refetch(ev.job_id, { insert: true });
  }

  function onProgress(e) {
    const p = e.detail;
    const row = rows.get(p.job_id);
    // A frame that arrives after the job ended (the feed is not ordered with the events) is old.
    if (!row || p.status !== "running" || !UNFINISHED.has(row.job.status)) return;
    const job = { ...row.job, status: p.status, stage: p.stage ?? row.job.stage, progress: Math.max(row.job.progress ?? 0, p.progress ?? 0), speed: p.speed, fps: p.fps, eta_seconds: p.eta_seconds };
    if (row.job.status !== "running") { show(job); return; }
    // In place, so the bar moves smoothly and focus stays where it is.
    row.job = job;
    const cells = row.tr.children;
    cells[1].replaceChildren(statusBadge(job));
    cells[2].replaceChildren(progressBar(job));
    cells[3].textContent = job.speed ? `${fmt.number(job.speed, 2)}×` : fmt.DASH;
    cells[4].textContent = fmt.number(job.fps, 0);
    cells[5].textContent = fmt.seconds(job.eta_seconds);
  }

  feed.addEventListener("event", onEvent);
  feed.addEventListener("progress", onProgress);
  feed.addEventListener("resync", reload);
  loadPresets();
  load(true);
  return () => {
    feed.removeEventListener("event", onEvent);
    feed.removeEventListener("progress", onProgress);
    feed.removeEventListener("resync", reload);
    for (const t of refetching.values()) clearTimeout(t);
  };
}
