// A small live SVG line chart: several series over a time axis, y-axis labels, a legend that
// names each series with its latest value, and the same numbers as text (the SVG's aria-label
// and a visually hidden table) for those who do not see the lines. Drawn at the width it is
// given, again whenever that width changes.

import { clear, h, svg } from "./dom.js";
import { DASH } from "./format.js";

const HEIGHT = 200;
const MARGIN = { top: 12, right: 14, bottom: 26, left: 46 };
// Lines differ by dash as well as colour, so they stay apart without colour vision.
const DASHES = [null, "7 4", "2 3", "9 3 2 3", "4 4", "12 3"];
const PALETTE = 6;

/** A step of 1, 2, 2.5 or 5 times a power of ten, so that about `count` steps cover `max`. */
function niceStep(max, count) {
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].find((m) => m * power >= raw) * power;
  return step;
}

function clock(epoch) {
  return new Date(epoch * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** Points in time order, split where a gap is longer than `gap` seconds (nothing was sampled). */
function runs(points, gap) {
  const out = [];
  let run = [];
  let last = null;
  for (const [t, v] of [...points].sort((a, b) => a[0] - b[0])) {
    if (v === null || !Number.isFinite(v)) { if (run.length) out.push(run); run = []; last = null; continue; }
    if (last !== null && gap && t - last > gap) { out.push(run); run = []; }
    run.push([t, v]);
    last = t;
  }
  if (run.length) out.push(run);
  return out;
}

function stats(points) {
  const values = points.map((p) => p[1]).filter((v) => v !== null && Number.isFinite(v));
  if (!values.length) return null;
  const latest = [...points].filter((p) => Number.isFinite(p[1])).sort((a, b) => a[0] - b[0]).at(-1);
  return { latest: latest[1], min: Math.min(...values), max: Math.max(...values) };
}

export class LineChart {
  /**
   * new LineChart({title: "Queue depth per pool", unit: "jobs", digits: 0})
   * `chart.el` goes into the page; `chart.update({series: [{name, points: [[epoch, value]]}],
   * start, end, gap})` draws; `chart.destroy()` stops watching its width.
   */
  constructor({ title, unit = "", digits = 0, window = "last 5 minutes" }) {
    this.title = title;
    this.unit = unit;
    this.digits = digits;
    this.window = window;
    this.data = { series: [], start: 0, end: 0, gap: null };
    this.width = 0;
    this.svg = svg("svg", { class: "chart", role: "img", height: HEIGHT });
    this.legend = h("ul", { class: "legend" });
    this.alt = h("table");
    const heading = h("h2", { id: `chart-${Math.random().toString(36).slice(2, 9)}` }, title);
    this.box = h("div", { class: "chart-box" }, this.svg);
    this.el = h("section", { class: "card chart-card", "aria-labelledby": heading.id },
      heading, this.box, this.legend, h("div", { class: "visually-hidden" }, this.alt));
    this.resize = new ResizeObserver(() => {
      const width = Math.floor(this.box.clientWidth);
      if (width && width !== this.width) { this.width = width; this.draw(); }
    });
    this.resize.observe(this.box);
  }

  destroy() {
    this.resize.disconnect();
  }

  format(value) {
    if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
    const text = value.toFixed(this.digits);
    return this.unit ? `${text} ${this.unit}` : text;
  }

  update(data) {
    this.data = { gap: null, ...data };
    this.draw();
    this.describe();
  }

  draw() {
    const width = this.width || 600;
    const { series, start, end, gap } = this.data;
    const plotW = width - MARGIN.left - MARGIN.right;
    const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
    const values = series.flatMap((s) => s.points.map((p) => p[1])).filter(Number.isFinite);
    const top = values.length && Math.max(...values) > 0 ? Math.max(...values) : 1;
    const step = niceStep(top, 4);
    const yMax = Math.ceil(top / step) * step;
    const span = Math.max(1, end - start);
    const x = (t) => MARGIN.left + ((t - start) / span) * plotW;
    const y = (v) => MARGIN.top + plotH - (v / yMax) * plotH;

    const parts = [];
    for (let v = 0; v <= yMax + step / 2; v += step) {
      parts.push(svg("line", { class: v === 0 ? "axis" : "grid-line", x1: MARGIN.left, x2: width - MARGIN.right, y1: y(v), y2: y(v) }));
      const label = String(Number(v.toFixed(4)));
      parts.push(svg("text", { x: MARGIN.left - 6, y: y(v) + 4, "text-anchor": "end" }, label));
    }
    const tickEvery = (plotW < 320 ? 120 : 60);
    for (let t = Math.ceil(start / tickEvery) * tickEvery; t <= end; t += tickEvery) {
      parts.push(svg("line", { class: "axis", x1: x(t), x2: x(t), y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4 }));
      parts.push(svg("text", { x: x(t), y: HEIGHT - 6, "text-anchor": "middle" }, clock(t)));
    }
    parts.push(svg("line", { class: "axis", x1: MARGIN.left, x2: MARGIN.left, y1: MARGIN.top, y2: MARGIN.top + plotH }));

    series.forEach((s, i) => {
      const cls = `series s${i % PALETTE}`;
      const dash = DASHES[i % DASHES.length];
      for (const run of runs(s.points.filter((p) => p[0] >= start - 1 && p[0] <= end + 1), gap)) {
        if (run.length === 1) {
          parts.push(svg("circle", { class: `${cls} dot`, cx: x(run[0][0]), cy: y(run[0][1]), r: 2.5 }));
          continue;
        }
        const d = run.map(([t, v], k) => `${k ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join("");
        parts.push(svg("path", { class: cls, d, "stroke-dasharray": dash }));
      }
    });
    if (!values.length) {
      parts.push(svg("text", { x: MARGIN.left + plotW / 2, y: MARGIN.top + plotH / 2, "text-anchor": "middle" },
        "No data in this window yet"));
    }
    this.svg.setAttribute("viewBox", `0 0 ${width} ${HEIGHT}`);
    this.svg.setAttribute("width", width);
    clear(this.svg).append(svg("title", {}, this.label()), ...parts);
  }

  label() {
    const { series } = this.data;
    const latest = series.map((s) => [s.name, stats(s.points)]).filter(([, st]) => st);
    if (!latest.length) return `${this.title}, ${this.window}: no data yet.`;
    return `${this.title}, ${this.window}. Latest: ${latest.map(([name, st]) => `${name} ${this.format(st.latest)}`).join("; ")}.`;
  }

  describe() {
    const { series } = this.data;
    this.svg.setAttribute("aria-label", this.label());
    clear(this.legend).append(...series.map((s, i) => h("li", {},
      svg("svg", { class: "legend-line", width: 26, height: 10, "aria-hidden": "true" },
        svg("line", { class: `series s${i % PALETTE}`, x1: 1, x2: 25, y1: 5, y2: 5, "stroke-dasharray": DASHES[i % DASHES.length] })),
      ` ${s.name}: `, h("strong", {}, this.format(stats(s.points)?.latest)))));
    if (!series.length) this.legend.append(h("li", { class: "muted" }, "No series yet"));
    clear(this.alt).append(
      h("caption", {}, `${this.title}, ${this.window}`),
      h("thead", {}, h("tr", {}, ["Series", "Latest", "Lowest", "Highest"].map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, series.map((s) => {
        const st = stats(s.points);
        return h("tr", {}, h("th", { scope: "row" }, s.name),
          h("td", {}, this.format(st?.latest)), h("td", {}, this.format(st?.min)), h("td", {}, this.format(st?.max)));
      })));
  }
}
