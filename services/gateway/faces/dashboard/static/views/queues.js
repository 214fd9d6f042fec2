// Queues (administrators): each pool now (queue, slots, speed), charts of the last 5 minutes
// from the telemetry live buffer (queue depth, jobs completed per minute, encoding fps, slots
// busy) and a live count of the jobs that ended in the last minute, from the feed.

import { api } from "../lib/api.js";
import { LineChart } from "../lib/chart.js";
import { clear, h, heading, table } from "../lib/dom.js";
import { keepFresh, single } from "../lib/fleet-live.js";
import { syncRows } from "../lib/fleet-rows.js";
import { number } from "../lib/format.js";

export const title = "Queues";

const MINUTE_MS = 60_000;
const POOL_HEADERS = ["Pool", "Queued", "Running", "Slots busy", "Transcoders", "fps", "Speed", "Done last hour", "Median speed"];
const NARROW = new Set([4, 8]);

/** Each series of a metric, named by its pool (or by `name` when it has no labels). */
function byPool(series = [], name = "all") {
  return series.map((s) => ({ name: s.labels.pool ?? name, points: s.points }));
}

/**
 * A cumulative counter as "how many in the minute before each sample": its rise since the last
 * sample at least 60 s older (as a rate per minute), or since the first sample while the history
 * is younger than a minute (a count, never scaled up from a few seconds).
 */
export function perMinute(points) {
  const sorted = [...points].sort((a, b) => a[0] - b[0]);
  const out = [];
  let j = 0;
  for (let i = 1; i < sorted.length; i += 1) {
    const [t, v] = sorted[i];
    while (j + 1 < i && sorted[j + 1][0] <= t - 60) j += 1;
    const [t0, v0] = sorted[j];
    if (v < v0) continue; // the counter restarted
    out.push([t, t - t0 >= 60 ? ((v - v0) / (t - t0)) * 60 : v - v0]);
  }
  return out;
}

function times(value) {
  return value === null || value === undefined ? "—" : `${number(value, 2)}×`;
}

function poolCells(p) {
  return [
    h("strong", {}, p.pool),
    { content: String(p.queue_depth), class: "num" },
    { content: String(p.running), class: "num" },
    { content: `${p.busy} of ${p.slots} slots`, class: "num" },
    { content: String(p.transcoders), class: "num hide-narrow" },
    { content: p.fps === null || p.fps === undefined ? "—" : number(p.fps, 1), class: "num" },
    { content: times(p.speed), class: "num" },
    { content: String(p.completed_last_hour ?? 0), class: "num" },
    { content: p.median_speed_sessions ? `${times(p.median_speed)} (${p.median_speed_sessions} ${p.median_speed_sessions === 1 ? "session" : "sessions"})` : "—", class: "num hide-narrow" },
  ];
}

export function mount(main, ctx) {
  const updated = h("span", { class: "muted" });
  const counter = h("p", { class: "live-counter" });
  const notice = h("div");
  const error = h("div", { role: "alert" });
  const poolError = h("div", { role: "alert" });
  const poolTable = table("Pools now", POOL_HEADERS, []);
  poolTable.querySelectorAll("th").forEach((th, i) => { if (NARROW.has(i)) th.className = "hide-narrow"; });
  const tbody = poolTable.querySelector("tbody");
  const charts = {
    queue: new LineChart({ title: "Queue depth per pool", unit: "jobs" }),
    jobs: new LineChart({ title: "Jobs completed per minute", unit: "per min", digits: 1 }),
    fps: new LineChart({ title: "Encoding fps per pool", unit: "fps", digits: 1 }),
    busy: new LineChart({ title: "Slots busy per pool", unit: "slots" }),
  };
  const ended = []; // [ms, "completed" | "failed"] of the feed's job events, the last minute
  const openedAt = Date.now();
  let interval = 10;

  main.append(
    heading("Queues", updated),
    counter,
    error,
    notice,
    h("section", { "aria-labelledby": "pools-now-heading" }, h("h2", { id: "pools-now-heading" }, "Pools now"), poolError, poolTable),
    h("h2", {}, "The last 5 minutes"),
    h("div", { class: "grid charts" }, Object.values(charts).map((c) => c.el)));

  function showCounter() {
    const since = Date.now() - MINUTE_MS;
    while (ended.length && ended[0][0] < since) ended.shift();
    const completed = ended.filter(([, kind]) => kind === "completed").length;
    const failed = ended.length - completed;
    const partial = Date.now() - openedAt < MINUTE_MS ? " (counting since this page opened)" : "";
    counter.textContent = `Last minute: ${completed} ${completed === 1 ? "job" : "jobs"} completed, ${failed} failed${partial}.`;
  }

  function onEvent(event) {
    if (event.type === "job.completed" || event.type === "job.failed") {
      ended.push([Date.now(), event.type.slice(4)]);
      showCounter();
    }
  }

  function showTelemetryOff(enabled) {
    if (enabled) { clear(notice); return; }
    if (notice.firstChild) return;
    const button = h("button", { type: "button", class: "primary", on: { click: async () => {
      button.disabled = true;
      try {
        await api("/api/admin/settings/telemetry", { method: "PUT", body: { enabled: true } });
        ctx.toast("Telemetry is on; the charts fill in as samples arrive.", "ok");
        clear(notice);
        readBuffer();
      } catch (exc) {
        ctx.toast(exc.message, "error");
        button.disabled = false;
      }
    } } }, "Turn telemetry on");
    notice.append(h("div", { class: "card notice" },
      h("h2", { class: "box-title" }, "Telemetry is off"),
      h("p", {}, "The statistics service is not sampling the fleet, so these charts get no new points. ",
        "The table of pools below still shows each pool now. Turn sampling on here or in ",
        h("a", { href: "#/settings" }, "Settings"), " (telemetry)."),
      button));
  }

  const readBuffer = single(async () => {
    let buffer;
    try {
      buffer = await api("/api/admin/telemetry/live-buffer");
    } catch (exc) {
      clear(error).append(h("p", { class: "error-box" }, `Could not read the telemetry: ${exc.message}`));
      return;
    }
    clear(error);
    interval = buffer.interval_seconds || interval;
    showTelemetryOff(buffer.enabled);
    const m = buffer.metrics;
    const frame = { start: buffer.start, end: buffer.end, gap: Math.max(2.5 * interval, 15) };
    charts.queue.update({ ...frame, series: byPool(m.pool_queue_depth) });
    charts.jobs.update({ ...frame, series: [
      ...(m.jobs_completed_total ?? []).map((s) => ({ name: "Completed", points: perMinute(s.points) })),
      ...(m.jobs_failed_total ?? []).map((s) => ({ name: "Failed", points: perMinute(s.points) })),
    ] });
    charts.fps.update({ ...frame, series: byPool(m.transcode_fps) });
    charts.busy.update({ ...frame, series: byPool(m.pool_slots_busy) });
  });

  const readPools = single(async () => {
    try {
      const answer = await api("/api/admin/telemetry/pool-metrics");
      clear(poolError);
      syncRows(tbody, answer.pools, { key: (p) => p.pool, cells: poolCells, empty: "No pools.", columns: POOL_HEADERS.length });
      updated.textContent = `Updated ${new Date(answer.at * 1000).toLocaleTimeString()}`;
    } catch (exc) {
      clear(poolError).append(h("p", { class: "error-box" }, `Could not read the pools: ${exc.message}`));
    }
  });

  showCounter();
  const tick = setInterval(showCounter, 1000);
  const stopBuffer = keepFresh({ read: readBuffer, every: () => Math.max(5, interval) * 1000, feed: ctx.feed, types: ["job."] });
  const stopPools = keepFresh({ read: readPools, feed: ctx.feed, types: ["job.", "rendition.", "pool.", "worker."], onEvent });
  return () => {
    clearInterval(tick);
    stopBuffer();
    stopPools();
    for (const chart of Object.values(charts)) chart.destroy();
  };
}
