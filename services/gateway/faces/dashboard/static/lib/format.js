// Numbers, sizes and times as a person reads them. Every function takes null for "unknown".

const DASH = "—";

export function bytes(n) {
  if (n === null || n === undefined) return DASH;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i === 0 || v >= 100 ? 0 : 1)} ${units[i]}`;
}

export function seconds(s) {
  if (s === null || s === undefined || !Number.isFinite(Number(s))) return DASH;
  s = Math.max(0, Math.round(Number(s)));
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const secs = s % 60;
  if (hours) return `${hours}h ${String(minutes).padStart(2, "0")}m`;
  if (minutes) return `${minutes}m ${String(secs).padStart(2, "0")}s`;
  return `${secs}s`;
}

export function number(n, digits = 1) {
  if (n === null || n === undefined || !Number.isFinite(Number(n))) return DASH;
  return Number(n).toFixed(digits);
}

export function percent(n) {
  if (n === null || n === undefined) return DASH;
  return `${Math.floor(Number(n) * 10) / 10} %`.replace(".0 %", " %");
}

/** ISO string or epoch seconds -> Date (or null). */
export function toDate(t) {
  if (t === null || t === undefined || t === "") return null;
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return Number.isNaN(d.getTime()) ? null : d;
}

export function time(t) {
  const d = toDate(t);
  return d ? d.toLocaleString() : DASH;
}

export function ago(t, now = Date.now()) {
  const d = toDate(t);
  if (!d) return DASH;
  const s = Math.round((now - d.getTime()) / 1000);
  if (s < 5) return "just now";
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return d.toLocaleDateString();
}

export { DASH };
