// Tables whose less important columns hide at phone width: a header given as narrow("Label")
// marks its whole column (header and cells given class "hide-narrow") to hide there.

import { h, table } from "./dom.js";

/** A header label whose column hides at phone width. */
export function narrow(label) {
  return h("span", { class: "hide-narrow" }, label);
}

/** lib/dom.js table(), with the header cells of narrow() columns hidden with their cells. */
export function narrowTable(caption, headers, rows, props) {
  const wrap = table(caption, headers, rows, props);
  for (const th of wrap.querySelectorAll("th")) {
    if (th.querySelector(":scope > .hide-narrow")) th.classList.add("hide-narrow");
  }
  return wrap;
}
