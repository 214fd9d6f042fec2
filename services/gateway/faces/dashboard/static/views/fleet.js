// Fleet (administrators): the system's problems, every live transcoder with its slots, jobs,
// pipelines and GPU state, each GPU's health, the pools and the fleet-wide transcoding settings.
// Heartbeat data changes without events, so it is read every 5 s, and soon after worker, pool
// and rendition events.

import { api } from "../lib/api.js";
import { append, clear, facts, h, heading, table } from "../lib/dom.js";
import { gpuCard, gpuState } from "../lib/fleet-gpus.js";
import { keepFresh, single } from "../lib/fleet-live.js";
import { PoolsSection } from "../lib/fleet-pools.js";
import { syncRows } from "../lib/fleet-rows.js";
import { SettingsSection } from "../lib/fleet-settings.js";
import { ago, seconds } from "../lib/format.js";

export const title = "Fleet";

const HEADERS = ["Transcoder", "Pool", "Status", "Slots", "Jobs", "Pipelines", "GPU", "ffmpeg", "Last seen"];
const NARROW = new Set([5, 7, 8]);

function ffmpegVersion(text) {
  return text.match(/ffmpeg version (\S+)/)?.[1] ?? (text || "—");
}

function slots(machine) {
  const bar = h("span");
  bar.style.width = `${machine.slots ? Math.min(100, (100 * machine.busy) / machine.slots) : 0}%`;
  return [h("span", { class: "slots" }, `${machine.busy} of ${machine.slots} slots`),
    h("div", { class: "meter", "aria-hidden": "true" }, bar)];
}

function jobs(machine) {
  if (!machine.jobs.length) return h("span", { class: "muted" }, "None");
  return h("ul", { class: "plain" }, machine.jobs.map((id) =>
    h("li", {}, h("a", { href: `#/jobs/${encodeURIComponent(id)}`, title: id }, id.slice(0, 8)))));
}

function transcoderCells(machine, gpus) {
  return [
    [h("code", { class: "transcoder-id" }, machine.id), h("div", { class: "muted small-text" }, machine.name)],
    machine.pool,
    h("span", { class: ["badge", machine.status === "draining" ? "draining" : "active"] }, machine.status === "draining" ? "Draining" : "Active"),
    slots(machine),
    jobs(machine),
    { content: machine.pipelines.join(", ") || "—", class: "hide-narrow" },
    gpuState(machine, gpus),
    { content: h("span", { title: machine.ffmpeg }, ffmpegVersion(machine.ffmpeg)), class: "hide-narrow" },
    { content: ago(machine.seen_at), class: "hide-narrow" },
  ];
}

function statusFacts(status) {
  const pipelines = Object.entries(status.pipelines).map(([name, n]) => `${name}: ${n}`).join(", ");
  return facts([
    ["Status", h("span", { class: ["badge", status.status === "ok" ? "healthy" : "degraded"] }, status.status === "ok" ? "OK" : status.status)],
    ["Transcoders", String(status.transcoders)],
    ["Capability probes done", `${status.capabilities_ready} of ${status.transcoders}`],
    ["Pipelines offered", pipelines || "None"],
    ["ffmpeg", status.ffmpeg_versions.map(ffmpegVersion).join(", ") || "—"],
    ["Gateway up for", seconds(status.gateway_uptime_s)],
  ]);
}

export function mount(main, ctx) {
  const updated = h("span", { class: "muted" });
  const problems = h("div", { "aria-live": "polite" });
  const summary = h("div", { class: "card" }, h("p", { class: "loading" }, "Loading…"));
  const error = h("div", { role: "alert" });
  const transcoders = table("Transcoders", HEADERS, []);
  transcoders.querySelectorAll("th").forEach((th, i) => { if (NARROW.has(i)) th.className = "hide-narrow"; });
  const tbody = transcoders.querySelector("tbody");
  const gpuGrid = h("div", { class: "grid" });
  const pools = new PoolsSection(ctx);
  const settings = new SettingsSection(ctx);
  let problemsText = null;

  main.append(
    heading("Fleet", updated),
    error,
    problems,
    h("section", { "aria-labelledby": "system-heading" }, h("h2", { id: "system-heading" }, "System"), summary),
    h("section", { "aria-labelledby": "transcoders-heading" },
      h("h2", { id: "transcoders-heading" }, "Transcoders"), transcoders),
    h("section", { "aria-labelledby": "gpus-heading" }, h("h2", { id: "gpus-heading" }, "GPUs"), gpuGrid),
    pools.el,
    settings.el);

  function showProblems(list) {
    const text = list.join("\n");
    if (text === problemsText) return;
    problemsText = text;
    append(clear(problems), [list.length
      ? h("div", { class: "error-box" }, h("h2", { class: "box-title" }, list.length === 1 ? "1 problem" : `${list.length} problems`),
        h("ul", {}, list.map((p) => h("li", {}, p))))
      : null]);
  }

  function showGpus(fleet) {
    const cpuOnly = fleet.nodes.filter((n) => n.gpu_state === "none");
    clear(gpuGrid).append(...fleet.gpus.map(gpuCard));
    if (!fleet.gpus.length) {
      gpuGrid.append(h("div", { class: "card" },
        h("p", {}, "No GPU in the fleet: every transcoder runs on the CPU."),
        cpuOnly.length ? h("ul", {}, cpuOnly.map((n) => h("li", {}, `${n.worker} (${n.host}): ${n.gpu_reason || "no GPU"}`))) : null));
    }
  }

  const read = single(async () => {
    const [machines, gpus, status] = await Promise.allSettled([
      api("/api/machines"),
      api("/api/admin/transcoding/gpus"),
      api("/api/admin/system/status"),
    ]);
    const failed = [["transcoders", machines], ["GPUs", gpus], ["system status", status]].filter(([, r]) => r.status === "rejected");
    append(clear(error), [failed.length
      ? h("p", { class: "error-box" }, `Could not read ${failed.map(([what, r]) => `the ${what} (${r.reason.message})`).join(", ")}. Retrying every 5 seconds.`)
      : null]);
    const gpuList = gpus.status === "fulfilled" ? gpus.value.gpus : [];
    if (machines.status === "fulfilled") {
      syncRows(tbody, machines.value, {
        key: (m) => m.id,
        cells: (m) => transcoderCells(m, gpuList),
        empty: "No transcoder is running: jobs wait in the queue.",
        columns: HEADERS.length,
      });
    }
    if (gpus.status === "fulfilled") showGpus(gpus.value);
    if (status.status === "fulfilled") {
      showProblems(status.value.problems);
      clear(summary).append(statusFacts(status.value));
    }
    if (!failed.length) updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  });

  settings.load();
  const stopFleet = keepFresh({ read, feed: ctx.feed, types: ["worker.", "rendition.", "pool."] });
  const stopPools = keepFresh({ read: single(() => pools.load()), feed: ctx.feed, types: ["pool.", "worker.", "rendition."] });
  return () => {
    stopFleet();
    stopPools();
  };
}
