// What the job pages share: what a reader may do with a job and through which routes, and how
// a job's status and progress are shown.

import { api } from "./api.js";
import { h } from "./dom.js";
import { atLeast } from "./session.js";

export const UNFINISHED = new Set(["queued", "paused", "held", "running"]);
export const STATUSES = ["queued", "paused", "held", "running", "completed", "failed", "cancelled", "removed"];

/** Whether `user` reads every job (moderators, administrators) rather than their own. */
export function seesAll(user) {
  return atLeast(user, "moderator");
}

/** What `user` may do with `job`, each as a function that calls the API. The job routes serve
 * the owner and administrators alike (moderators read and download any job, change none); a
 * cancel of a job that has just finished is refused (409), never taken for a delete. */
export function actionsFor(user, job) {
  const own = job.owner === user.id;
  const act = own || atLeast(user, "admin");
  const read = own || seesAll(user);
  const id = encodeURIComponent(job.id);
  const acts = {};
  if (act && UNFINISHED.has(job.status)) acts.cancel = () => api(`/api/jobs/${id}/cancel`, { method: "POST" });
  if (act && (job.status === "failed" || job.status === "cancelled")) {
    acts.retry = () => api(`/api/jobs/${id}/retry`, { method: "POST" });
  }
  if (read && job.status === "completed" && job.output) acts.download = () => api(`/api/jobs/${id}/url`, { method: "POST" });
  if (act && !UNFINISHED.has(job.status)) acts.remove = () => api(`/api/jobs/${id}`, { method: "DELETE" });
  return acts;
}

/** The job as its reader may read it. */
export function fetchJob(user, jobId) {
  const id = encodeURIComponent(jobId);
  return seesAll(user) ? api(`/api/admin/jobs/${id}`) : api(`/api/jobs/${id}`);
}

/** Follow a signed download URL: the browser saves the file under its own name. */
export function startDownload(signed, job) {
  const a = h("a", { href: signed.url, download: job.filename ?? "", hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
}

export function statusBadge(job) {
  const label = job.status === "running" && job.stage && job.stage !== "running" ? `${job.status} · ${job.stage}` : job.status;
  return h("span", { class: ["badge", job.status] }, label);
}

/** A progress bar with its number, labelled for assistive technology. */
export function progressBar(job) {
  const value = job.status === "completed" ? 100 : Math.max(0, Math.min(100, Number(job.progress ?? 0)));
  const shown = `${Math.floor(value)} %`;
  return h("div", { class: "progress" },
    h("progress", { max: 100, value, "aria-label": `Progress of ${job.filename ?? job.id}`, "aria-valuetext": shown }),
    h("span", { class: "pct" }, shown));
}

/** The job's name as a person reads it: its output file name, else its id. */
export function jobName(job) {
  return job.filename || job.id;
}

/** Ask before an action that cannot be undone. */
export function confirmAction(kind, job) {
  const name = jobName(job);
  const question = {
    cancel: `Cancel ${name}?`,
    remove: `Delete ${name}? Its output is let go.`,
  }[kind];
  return question ? window.confirm(question) : true;
}
