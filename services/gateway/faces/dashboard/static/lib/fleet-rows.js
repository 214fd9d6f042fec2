// Live tables that change in place: a row per item (by key), and only the cells whose text
// changed are rebuilt, so a focused button or a selection in an unchanged cell survives the
// 5-second refresh.

import { clear, h } from "./dom.js";

/** A cell: a string or node, or {content, class} for a cell with a class (num, hide-narrow). */
function cellOf(spec) {
  if (spec && typeof spec === "object" && !(spec instanceof Node) && "content" in spec) return spec;
  return { content: spec, class: null };
}

function signature(content) {
  const holder = h("div", {}, content);
  return holder.textContent + "\u0000" + holder.querySelectorAll("*").length;
}

/**
 * syncRows(tbody, items, {key: (item) => id, cells: (item) => [cell...], empty: "No pools"})
 * Rows whose key is gone are removed, new ones added, the order follows `items`.
 */
export function syncRows(tbody, items, { key, cells, empty, columns }) {
  const existing = new Map([...tbody.rows].filter((r) => r.dataset.key !== undefined).map((r) => [r.dataset.key, r]));
  const wanted = [];
  for (const item of items) {
    const id = String(key(item));
    let row = existing.get(id);
    if (!row) row = h("tr", { dataset: { key: id } });
    existing.delete(id);
    cells(item).forEach((spec, i) => {
      const { content, class: cls } = cellOf(spec);
      const sig = signature(content);
      let td = row.cells[i];
      if (!td) { td = h("td"); row.append(td); }
      if (td.dataset.sig !== sig) {
        clear(td).append(...[content].flat().filter((x) => x !== null && x !== undefined));
        td.dataset.sig = sig;
      }
      td.className = cls ?? "";
    });
    wanted.push(row);
  }
  for (const row of existing.values()) row.remove();
  for (const row of tbody.querySelectorAll("tr.empty-row")) row.remove();
  wanted.forEach((row, i) => { if (tbody.rows[i] !== row) tbody.insertBefore(row, tbody.rows[i] ?? null); });
  if (!items.length && empty) {
    tbody.append(h("tr", { class: "empty-row" }, h("td", { colSpan: columns ?? 1, class: "empty" }, empty)));
  }
}
