// One job: what it is and where it stands (live), the source's probe, how it ran (each
// attempt's pipeline and ffmpeg command), its event history and, when it failed, why.

import { api } from "../lib/api.js";
import { facts, fill, h, heading, table } from "../lib/dom.js";
import * as fmt from "../lib/format.js";
import {
  UNFINISHED, actionsFor, confirmAction, fetchJob, jobName, progressBar, startDownload, statusBadge,
} from "../lib/jobs.js";

export const title = "Job";

export function mount(main, ctx) {
  const { user, feed, toast, params } = ctx;
  const jobId = params[0];
  const id = encodeURIComponent(jobId);
  let job = null;
  let timer = null;

  const head = h("div", {});
  const overview = h("section", { class: "card", "aria-labelledby": "overview-title" });
  const probe = h("section", { class: "card", "aria-labelledby": "probe-title" });
  const attempts = h("section", { class: "card", "aria-labelledby": "attempts-title" });
  const history = h("section", { class: "card", "aria-labelledby": "history-title" });
  main.append(h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")), head, overview, probe, attempts, history);

  function actionBar() {
    const acts = actionsFor(user, job);
    const button = (kind, label, cls) => acts[kind] && h("button", {
      type: "button", class: cls, dataset: { action: kind }, on: { click: (e) => act(kind, e.currentTarget) },
    }, label);
    return h("div", { class: "actions" }, button("download", "Download", "primary"),
      button("cancel", "Cancel", "danger"), button("retry", "Retry"), button("remove", "Delete", "danger"));
  }

  function renderOverview() {
    document.title = `${jobName(job)} · vidmesh`;
    const focusedAction = document.activeElement?.dataset?.action;
    fill(head, heading(jobName(job), actionBar()));
    if (focusedAction) head.querySelector(`[data-action="${focusedAction}"]`)?.focus();
    const output = job.output;
    fill(overview,
      h("h2", { id: "overview-title" }, "Overview"),
      job.error ? h("div", { class: "error-box", role: "alert" },
        h("strong", {}, "Failed: "), job.error.reason, " ", h("span", { class: "muted" }, `(${job.error.code})`)) : null,
      facts([
        ["Status", statusBadge(job)],
        ["Progress", progressBar(job)],
        ["Speed", job.speed ? `${fmt.number(job.speed, 2)}× real time` : null],
        ["Frames per second", job.fps ? fmt.number(job.fps, 0) : null],
        ["Time left", job.status === "running" && job.eta_seconds != null ? fmt.seconds(job.eta_seconds) : null],
        ["Source", h("span", { class: "mono" }, job.source)],
        ["Preset", job.preset],
        ["Output", output ? `${output.name} · ${fmt.bytes(output.size)} · ${output.container ?? ""} · ${output.mode ?? ""}` : null],
        ["SHA-256", output?.sha256 ? h("span", { class: "mono", dataset: { sha256: output.sha256 } }, output.sha256) : null],
        ["Attempts", String(job.attempts ?? 0)],
        ["Priority", String(job.priority ?? 0)],
        ["Created", fmt.time(job.created_at)],
        ["Started", job.started_at ? fmt.time(job.started_at) : null],
        ["Finished", job.finished_at ? fmt.time(job.finished_at) : null],
        ["Kept until", job.keep_until ? fmt.time(job.keep_until) : null],
        ["Job id", h("span", { class: "mono" }, job.id)],
      ]));
  }

  function renderProbe() {
    const p = job.probe;
    fill(probe, h("h2", { id: "probe-title" }, "Source probe"));
    if (!p) { probe.append(h("p", { class: "empty" }, "The source has not been probed yet.")); return; }
    probe.append(
      facts([["Container", p.container], ["Duration", fmt.seconds(p.duration)], ["Bit rate", p.bit_rate ? `${Math.round(p.bit_rate / 1000)} kb/s` : null], ["Size", p.size ? fmt.bytes(p.size) : null]]),
      table("Streams of the source", ["#", "Kind", "Codec", "Details", "Language"], (p.streams ?? []).map((s) => h("tr", {},
        h("td", {}, String(s.index)), h("td", {}, s.kind), h("td", {}, [s.codec, s.profile].filter(Boolean).join(" · ")),
        h("td", {}, s.kind === "video"
          ? [s.width && `${s.width}×${s.height}`, s.frame_rate && `${fmt.number(s.frame_rate, 3)} fps`, s.pix_fmt, s.hdr && "HDR", s.interlaced && "interlaced"].filter(Boolean).join(" · ")
          : [s.channels && `${s.channels} ch`, s.sample_rate && `${s.sample_rate} Hz`].filter(Boolean).join(" · ")),
        h("td", {}, s.language ?? "")))));
  }

  async function renderAttempts() {
    let sessions;
    try {
      sessions = await api(`/api/jobs/${id}/sessions`);
    } catch (exc) {
      fill(attempts, h("h2", { id: "attempts-title" }, "How it ran"), h("p", { class: "empty" }, exc.status === 404 ? "Not available." : exc.message));
      return;
    }
    fill(attempts, h("h2", { id: "attempts-title" }, "How it ran"));
    if (!sessions.length) { attempts.append(h("p", { class: "empty" }, "No transcode has started yet.")); return; }
    for (const { session: s } of sessions) {
      attempts.append(h("article", { class: "attempt" },
        h("h3", {}, partLabel(s), " ", h("span", { class: ["badge", s.state] }, s.state)),
        facts([
          ["Pipeline", [s.pipeline, s.pipeline_reason].filter(Boolean).join(": ")],
          ["Fell back from", s.fell_back_from || null],
          ["Transcoder", [s.host, s.worker].filter(Boolean).join(" · ")],
          ["Pool", s.pool],
          ["Started", fmt.time(s.started_at)],
          ["Ended", s.ended_at ? fmt.time(s.ended_at) : null],
          ["Error", s.error || null],
        ]),
        s.argv?.length ? h("details", { open: true }, h("summary", {}, "ffmpeg command"), h("pre", { class: "argv" }, s.argv.map(quoteArg).join(" "))) : null,
        s.stderr_tail ? h("details", {}, h("summary", {}, "ffmpeg output (last lines)"), h("pre", {}, s.stderr_tail)) : null));
    }
  }

  async function renderHistory() {
    fill(history, h("h2", { id: "history-title" }, "Event history"));
    let items;
    try {
      items = await api(`/api/jobs/${id}/events`, { query: { limit: 500 } });
    } catch (exc) {
      history.append(h("p", { class: "empty" }, exc.status === 404 ? "The history is shown to the job's owner." : exc.message));
      return;
    }
    const tbody = h("tbody", {}, items.map(historyRow));
    history.append(h("div", { class: "table-wrap" }, h("table", { id: "job-history" },
      h("caption", { class: "visually-hidden" }, "Events of this job, oldest first"),
      h("thead", {}, h("tr", {}, ["Time", "Event", "Status", "Details"].map((x) => h("th", { scope: "col" }, x)))), tbody)));
  }

  function historyRow({ event }) {
    const details = event.error?.reason ?? event.reason ?? (event.output ? fmt.bytes(event.output.size) : "");
    return h("tr", {}, h("td", {}, fmt.time(event.time)), h("td", {}, event.type), h("td", {}, event.status ?? ""), h("td", {}, details));
  }

  async function refresh({ all = false } = {}) {
    try {
      job = await fetchJob(user, jobId);
    } catch (exc) {
      fill(head, heading("Job not found"));
      fill(overview, h("p", { role: "alert" }, exc.status === 404 ? "There is no such job, or it is not yours." : exc.message));
      return;
    }
    renderOverview();
    if (all || !probe.childNodes.length || job.probe) renderProbe();
    if (all) { renderAttempts(); renderHistory(); }
  }

  async function act(kind, button) {
    if (!confirmAction(kind, job)) return;
    button.disabled = true;
    try {
      const answer = await actionsFor(user, job)[kind]();
      if (kind === "download") { startDownload(answer, job); return; }
      if (kind === "remove") { toast(`Deleted: ${jobName(job)}`, "ok"); ctx.navigate("#/jobs"); return; }
      toast(`${kind === "cancel" ? "Cancelling" : "Retrying"}: ${jobName(job)}`, "ok");
      refresh();
    } catch (exc) {
      toast(exc.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  function onEvent(e) {
    const ev = e.detail.event;
    if (ev.job_id !== jobId) return;
    history.querySelector("tbody")?.append(historyRow(e.detail));
    clearTimeout(timer);
    timer = setTimeout(() => refresh({ all: ["job.completed", "job.failed", "job.cancelled", "job.started"].includes(ev.type) }), 150);
  }

  function onProgress(e) {
    const p = e.detail;
    if (p.job_id !== jobId || !job || p.status !== "running" || !UNFINISHED.has(job.status)) return;
    job = { ...job, status: p.status, stage: p.stage ?? job.stage, progress: Math.max(job.progress ?? 0, p.progress ?? 0), speed: p.speed, fps: p.fps, eta_seconds: p.eta_seconds };
    renderOverview();
  }

  const resync = () => refresh({ all: true });
  feed.addEventListener("event", onEvent);
  feed.addEventListener("progress", onProgress);
  feed.addEventListener("resync", resync);
  refresh({ all: true });
  return () => {
    clearTimeout(timer);
    feed.removeEventListener("event", onEvent);
    feed.removeEventListener("progress", onProgress);
    feed.removeEventListener("resync", resync);
  };
}

/** What one session did: the whole transcode, or one part of a job encoded in segments. */
function partLabel(s) {
  const part = !s.part ? "" : s.part === "join" ? "Join · " : s.part === "audio" ? "Audio · "
    : `Segment ${Number(s.part.slice(1)) + 1} · `;
  const split = s.split ? ` (split into ${s.split} segments)` : "";
  return `${part}Attempt ${s.attempt}${split}`;
}

/** An argument as a shell would need it, so the command can be copied and run. */
function quoteArg(arg) {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${String(arg).replace(/'/g, "'\\''")}'`;
}
