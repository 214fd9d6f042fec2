// The dashboard's entry: the session, the shell (navigation, connection state, sign out), the
// live feed and a router over `#/...` addresses. Each page is a module in views/ with
// `mount(main, ctx)` returning its cleanup; `ctx` gives it the user, the feed and toasts.

import { api, onSignedOut, signOut } from "./lib/api.js";
import { clear, fill, h } from "./lib/dom.js";
import { Feed } from "./lib/feed.js";
import * as session from "./lib/session.js";

const ROUTES = [
  { match: /^#\/jobs\/([^/?#]+)$/, load: () => import("./views/job.js"), role: "user" },
  { href: "#/jobs", match: /^#\/jobs$/, load: () => import("./views/jobs.js"), nav: "Jobs", role: "user" },
  { href: "#/fleet", match: /^#\/fleet$/, load: () => import("./views/fleet.js"), nav: "Fleet", role: "admin" },
  { href: "#/queues", match: /^#\/queues$/, load: () => import("./views/queues.js"), nav: "Queues", role: "admin" },
  { href: "#/presets", match: /^#\/presets$/, load: () => import("./views/presets.js"), nav: "Presets", role: "user" },
  { href: "#/keys", match: /^#\/keys$/, load: () => import("./views/keys.js"), nav: "API keys", role: "user" },
  { href: "#/webhooks", match: /^#\/webhooks$/, load: () => import("./views/webhooks.js"), nav: "Webhooks", role: "user" },
  { href: "#/settings", match: /^#\/settings$/, load: () => import("./views/settings.js"), nav: "Settings", role: "admin" },
];
const HOME = "#/jobs";
const STATES = {
  connecting: "Connecting…",
  live: "Live",
  lost: "Connection lost: reconnecting…",
};

const main = document.getElementById("main");
let feed = null;
let user = null;
let unmount = null;
let rendering = 0;

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const item = h("div", { class: ["toast", kind], role: kind === "error" ? "alert" : null }, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 9000 : 4000);
}

function navigate(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function showConnection(state) {
  const el = document.getElementById("connection");
  el.textContent = STATES[state] ?? "";
  el.className = `connection ${state}`;
  el.title = state === "live" ? `Live updates over ${feed.transport === "sse" ? "Server-Sent Events" : "WebSocket"}` : (feed.lostReason ?? "");
  el.dataset.state = state;
  el.dataset.transport = feed.transport ?? "";
}

function buildShell() {
  const nav = document.getElementById("nav");
  fill(nav, h("ul", {}, ROUTES.filter((r) => r.nav && session.atLeast(user, r.role)).map((r) =>
    h("li", {}, h("a", { href: r.href }, r.nav)))));
  document.getElementById("whoami").textContent = `${user.username} (${user.role})`;
  document.getElementById("topbar").hidden = false;
}

function markCurrent() {
  for (const a of document.querySelectorAll("#nav a")) {
    const current = location.hash === a.getAttribute("href") || location.hash.startsWith(`${a.getAttribute("href")}/`);
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

async function render() {
  const token = ++rendering;
  unmount?.();
  unmount = null;
  if (!user) return;
  const hash = location.hash || HOME;
  const route = ROUTES.find((r) => r.match.test(hash));
  if (!route) { navigate(HOME); return; }
  markCurrent();
  if (!session.atLeast(user, route.role)) {
    fill(main, h("h1", { tabIndex: -1 }, "Not allowed"), h("p", {}, "This page is for administrators."));
    return;
  }
  const params = hash.match(route.match).slice(1).map(decodeURIComponent);
  let view;
  try {
    view = await route.load();
  } catch {
    // The server is away, or it runs a newer release than this page (whose modules it no
    // longer serves): a reload fetches the page that goes with it.
    if (token !== rendering) return;
    fill(main, h("h1", { tabIndex: -1 }, "This page could not be loaded"),
      h("p", { role: "alert" }, "The server may have been updated, or it cannot be reached just now."),
      h("button", { type: "button", class: "primary", on: { click: () => location.reload() } }, "Reload"));
    main.querySelector("h1").focus();
    return;
  }
  if (token !== rendering) return;
  clear(main);
  document.title = `${view.title ?? route.nav ?? "vidmesh"} · vidmesh`;
  unmount = view.mount(main, { user, feed, toast, navigate, params }) ?? null;
  // Keyboard and screen reader users land on the new page's heading.
  (main.querySelector("h1") ?? main).focus({ preventScroll: false });
}

function showSignIn(message) {
  rendering += 1; // a page still loading is not shown over the sign-in form
  feed?.stop();
  feed = null;
  user = null;
  unmount?.();
  unmount = null;
  document.getElementById("topbar").hidden = true;
  document.title = "Sign in · vidmesh";
  import("./views/login.js").then((login) => {
    clear(main);
    login.mount(main, { message, signedIn: start });
  });
}

async function start() {
  const s = session.load();
  if (!s) { showSignIn(); return; }
  try {
    user = await api("/api/users/me");
  } catch (exc) {
    if (exc.status === 401 || exc.status === 403) { session.forget(); showSignIn("Your session has ended; sign in again."); return; }
    fill(main, h("h1", {}, "vidmesh"), h("p", { role: "alert" }, exc.message),
      h("button", { type: "button", on: { click: start } }, "Try again"));
    return;
  }
  buildShell();
  feed = new Feed();
  feed.addEventListener("state", (e) => showConnection(e.detail.state));
  showConnection("connecting");
  feed.start();
  if (!location.hash) history.replaceState(null, "", HOME);
  render();
}

const signOutButton = document.getElementById("sign-out");
signOutButton.addEventListener("click", async () => {
  signOutButton.disabled = true;
  await signOut();
  signOutButton.disabled = false;
  showSignIn("Signed out.");
});
window.addEventListener("hashchange", () => { if (user) render(); });
onSignedOut(() => showSignIn("Your session has ended; sign in again."));
start();
