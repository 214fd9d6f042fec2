// A GPU's health as a card: utilization, encoder, decoder and memory as meters with their numbers,
// temperature, power, throttling, ECC errors and encoder sessions; problems in words.

import { facts, h } from "./dom.js";
import { bytes, DASH } from "./format.js";

function pct(value) {
  return value === null || value === undefined ? DASH : `${Math.round(value)} %`;
}

/** A labelled bar; the number is text beside it, the bar only repeats it for the eye. */
export function gauge(label, value, text = pct(value)) {
  const bar = h("span");
  const known = value !== null && value !== undefined && Number.isFinite(Number(value));
  bar.style.width = `${known ? Math.max(0, Math.min(100, Number(value))) : 0}%`;
  if (known && value >= 90) bar.className = "high";
  return h("div", { class: "gauge" },
    h("div", { class: "gauge-head" }, h("span", {}, label), h("strong", {}, text)),
    h("div", { class: "meter", "aria-hidden": "true" }, bar));
}

function memory(gpu) {
  const used = gpu.memory_used_bytes;
  const total = gpu.memory_total_bytes;
  const share = used !== null && used !== undefined && total ? (100 * used) / total : gpu.memory_utilization_pct;
  const text = total ? `${bytes(used)} of ${bytes(total)}` : pct(share);
  return gauge("Memory", share, text);
}

function power(gpu) {
  if (gpu.power_w === null || gpu.power_w === undefined) return DASH;
  const now = `${Math.round(gpu.power_w)} W`;
  return gpu.power_limit_w ? `${now} of ${Math.round(gpu.power_limit_w)} W` : now;
}

function orNone(value, none = "None") {
  if (value === null || value === undefined) return DASH;
  return value === 0 ? none : String(value);
}

/** One GPU of GET /api/admin/transcoding/gpus (`{worker, host, pool, driver_version, gpu}`). */
export function gpuCard(view) {
  const gpu = view.gpu;
  const id = `gpu-${view.worker}-${gpu.index}`.replace(/[^A-Za-z0-9_-]/g, "_");
  const throttles = gpu.clock_event_reasons ?? [];
  return h("section", { class: "card gpu-card", "aria-labelledby": id, dataset: { worker: view.worker, index: gpu.index } },
    h("div", { class: "gpu-head" },
      h("h3", { id }, `GPU ${gpu.index}: ${gpu.name}`),
      h("span", { class: ["badge", gpu.healthy ? "healthy" : "bad"] }, gpu.healthy ? "Healthy" : "Unhealthy")),
    h("p", { class: "muted" }, `${view.host} · ${view.worker} · pool ${view.pool}`),
    gpu.problems?.length ? h("ul", { class: "error-box" }, gpu.problems.map((p) => h("li", {}, p))) : null,
    h("div", { class: "gauges" },
      gauge("Utilization", gpu.utilization_pct),
      gauge("Encoder", gpu.encoder_utilization_pct),
      gauge("Decoder", gpu.decoder_utilization_pct),
      memory(gpu)),
    facts([
      ["Temperature", gpu.temperature_c === null || gpu.temperature_c === undefined ? DASH : `${gpu.temperature_c} °C`],
      ["Power", power(gpu)],
      ["Encoder sessions", orNone(gpu.encoder_sessions)],
      ["Throttling", throttles.length ? throttles.join(", ") : "None"],
      ["Uncorrected ECC errors", orNone(gpu.ecc_uncorrected_volatile)],
      ["Driver", view.driver_version || DASH],
    ]));
}

/** The GPU column of a transcoder: its state in words, "No GPU" and why on a CPU-only node. */
export function gpuState(machine, gpus) {
  const mine = gpus.filter((g) => g.worker === machine.id);
  if (machine.gpu_state === "none") {
    return [h("span", { class: "badge" }, "No GPU"), machine.gpu_reason ? h("div", { class: "muted small-text" }, machine.gpu_reason) : null];
  }
  const label = { ok: "GPU OK", degraded: "GPU degraded", bad: "GPU unusable" }[machine.gpu_state] ?? machine.gpu_state;
  const names = mine.map((g) => `${g.gpu.name} (${pct(g.gpu.utilization_pct)} busy)`).join(", ");
  return [
    h("span", { class: ["badge", { ok: "healthy", degraded: "degraded", bad: "bad" }[machine.gpu_state]] }, label),
    names ? h("div", {}, names) : null,
    machine.gpu_reason ? h("div", { class: "muted small-text" }, machine.gpu_reason) : null,
  ];
}
