// Settings (administrators): the server's settings groups from GET /api/admin/settings, each a
// form generated from its JSON and saved on its own with PUT /api/admin/settings/<group>.
// What the JSON cannot say (a null that is a number, the read-only `updated_at`, the words a
// person reads) comes from FIELDS, after schemas/openapi.json.

import { api } from "../lib/api.js";
import { clear, h, heading } from "../lib/dom.js";
import { clearError, errorLine, showError, whileBusy } from "../lib/form-errors.js";
import { jsonForm } from "../lib/form-json.js";
import { time } from "../lib/format.js";

export const title = "Settings";

const EMPTY_IS_DEFAULT = "Empty: the environment's value";
const SWITCH = { fields: {
  engaged: { label: "Switched off (engaged)" },
  reason: { label: "Reason told to refused callers", nullable: false, maxLength: 500 },
} };

const SECTIONS = {
  general: { title: "General", about: "The server's name and the base URL every generated link starts with.", fields: {
    server_name: { label: "Server name", hint: "The name admin pages show. Empty: none", maxLength: 200 },
    base_url: { label: "Base URL", type: "url", hint: "http(s)://host[:port][/path]. Empty: the address a request came to" },
  } },
  paths: { title: "Paths", about: "Checked when saved: each media root must be a readable folder, the scratch folder writable.", fields: {
    media_roots: { kind: "list", label: "Media roots", hint: `Absolute folders, comma-separated. ${EMPTY_IS_DEFAULT} (VIDMESH_MEDIA_ROOTS)` },
    scratch_dir: { label: "Scratch folder", hint: `${EMPTY_IS_DEFAULT} (VIDMESH_SCRATCH_DIR, else <data dir>/scratch)` },
  } },
  processing: { title: "Processing", about: "How work is dispatched and failed messages retried; applies without a restart.", fields: {
    dispatch_concurrency: { kind: "integer", min: 1, max: 10000, label: "Dispatch concurrency", hint: `Transcodes leased per pool (1-10000). ${EMPTY_IS_DEFAULT} (MAX_CONCURRENT_JOBS)` },
    retry_attempts: { kind: "integer", min: 1, max: 1000, label: "Retry attempts", hint: `1-1000. ${EMPTY_IS_DEFAULT} (VIDMESH_MESSAGE_ATTEMPTS)` },
    retry_backoff_seconds: { kind: "number", min: 0.001, max: 3600, label: "First retry wait (seconds)", hint: "Doubles each retry. Empty: 1 s" },
    ack_wait_seconds: { kind: "number", min: 5, max: 3600, label: "Ack wait (seconds)", hint: "5-3600. Empty: each consumer's own" },
  } },
  killswitches: { title: "Kill switches", about: "An engaged switch refuses new requests of that feature at once (503 with the reason).", fields: {
    native: { ...SWITCH, label: "Native API jobs (/api/jobs)" },
    streamyfin: { ...SWITCH, label: "Streamyfin (/optimize-version)" },
    openencoder: { ...SWITCH, label: "OpenEncoder job routes" },
    webhooks: { ...SWITCH, label: "Webhook deliveries (held, not lost)" },
    registration: { ...SWITCH, label: "Self-service sign-up" },
    "*": SWITCH,
  } },
  telemetry: { title: "Telemetry", about: "Whether the statistics service samples the fleet, how often, and how long samples are kept.", fields: {
    enabled: { label: "Sample telemetry" },
    interval_seconds: { kind: "integer", min: 1, max: 3600, nullable: false, label: "Interval (seconds)", hint: "1-3600" },
    retention_hours: { kind: "integer", min: 1, max: 720, nullable: false, label: "Retention (hours)", hint: "1-720" },
    updated_at: { readOnly: true },
  } },
};

export function mount(main, ctx) {
  const body = h("div", {}, h("p", { class: "loading" }, "Loading settings…"));
  main.append(
    heading("Settings"),
    h("p", { class: "muted" }, "An empty field means the default: the environment's value. Each group saves on its own."),
    body);
  const forms = {}; // group -> {el, dirty}

  async function load() {
    let all;
    try {
      all = await api("/api/admin/settings");
    } catch (exc) {
      clear(body).append(h("p", { class: "error-box", role: "alert" }, `The settings could not be read: ${exc.message}`));
      return;
    }
    if (!Object.keys(forms).length) clear(body);
    for (const [group, values] of Object.entries(all)) {
      if (!values || typeof values !== "object") continue; // the top-level updated_at
      const current = forms[group];
      if (current?.dirty) continue; // never throw away what the person is typing
      const next = section(group, values);
      if (current) current.el.replaceWith(next.el);
      else body.append(next.el);
      forms[group] = next;
    }
  }

  function section(group, values) {
    const meta = SECTIONS[group] ?? { title: group, fields: {} };
    const form = jsonForm(values, meta.fields);
    const error = errorLine();
    const save = h("button", { type: "submit", class: "primary" }, `Save ${meta.title.toLowerCase()}`);
    const changed = values.updated_at ? h("p", { class: "hint" }, `Changed ${time(values.updated_at)}`) : null;
    const state = { dirty: false, el: null };
    state.el = h("form", { class: "card", "aria-labelledby": `settings-${group}`, dataset: { group },
      on: { submit, input: () => { state.dirty = true; } } },
      h("h2", { id: `settings-${group}` }, meta.title),
      meta.about ? h("p", { class: "muted" }, meta.about) : null,
      form.nodes, changed, error,
      h("div", { class: "actions" }, save));

    async function submit(event) {
      event.preventDefault();
      clearError(error, form.controls);
      await whileBusy(save, async () => {
        const saved = await api(`/api/admin/settings/${group}`, { method: "PUT", body: form.read() });
        ctx.toast(`${meta.title} saved.`, "ok");
        const next = section(group, saved);
        state.el.replaceWith(next.el);
        forms[group] = next;
        next.el.querySelector("button[type=submit]").focus();
      }, (exc) => showError(error, exc, form.controls));
    }
    return state;
  }

  const resync = () => load();
  ctx.feed?.addEventListener("resync", resync);
  load();
  return () => ctx.feed?.removeEventListener("resync", resync);
}
