// The fleet-wide transcoding settings (GET/PUT /api/admin/transcoding/settings): a limit on jobs
// across all pools, the hardware preference and the quality ceilings. A blank limit is no limit.

import { api } from "./api.js";
import { field, h, select } from "./dom.js";
import { time } from "./format.js";

const PREFERENCES = [["auto", "Automatic"], ["gpu", "Prefer GPU"], ["cpu", "CPU only"]];

function limit(name, min, max) {
  return h("input", { name, type: "number", min, max, step: 1, inputMode: "numeric", placeholder: "No limit" });
}

export class SettingsSection {
  constructor({ toast }) {
    this.toast = toast;
    this.global = limit("global_concurrency", 1, 10000);
    this.preference = select(PREFERENCES, { name: "hardware_preference", value: "auto" });
    this.height = limit("max_height", 144, 4320);
    this.bitrate = limit("max_video_bitrate_kbps", 100, 200000);
    this.updated = h("p", { class: "muted" });
    this.error = h("p", { class: "form-error", role: "alert" });
    this.submit = h("button", { type: "submit", class: "primary", disabled: true }, "Save settings");
    this.el = h("section", { "aria-labelledby": "settings-heading" },
      h("h2", { id: "settings-heading" }, "Transcoding settings"),
      h("form", { class: "card", on: { submit: (e) => { e.preventDefault(); this.save(); } } },
        h("div", { class: "form-row" },
          field("Jobs at once, all pools", this.global, "Blank: only each pool's own limit (1–10000)."),
          field("Hardware preference", this.preference, "Automatic: a GPU pipeline where the node's probe found one that works, else the CPU.")),
        h("div", { class: "form-row" },
          field("Highest output height (pixels)", this.height, "New jobs' presets are capped to it. Blank: no cap (144–4320)."),
          field("Highest video bit rate (kbit/s)", this.bitrate, "Blank: no cap (100–200000).")),
        this.updated,
        this.error,
        h("div", { class: "actions" }, this.submit)));
  }

  show(settings) {
    this.global.value = settings.global_concurrency ?? "";
    this.preference.value = settings.hardware_preference;
    this.height.value = settings.max_height ?? "";
    this.bitrate.value = settings.max_video_bitrate_kbps ?? "";
    this.updated.textContent = settings.updated_at ? `Last changed ${time(settings.updated_at)}.` : "Never changed: these are the defaults.";
  }

  /** Read once (not on every refresh: that would undo what someone is typing). */
  async load() {
    try {
      this.show(await api("/api/admin/transcoding/settings"));
      this.error.textContent = "";
      this.submit.disabled = false;
    } catch (exc) {
      this.error.textContent = `Could not read the transcoding settings: ${exc.message}`;
    }
  }

  async save() {
    const number = (input) => (input.value === "" ? null : Number(input.value));
    this.submit.disabled = true;
    this.error.textContent = "";
    try {
      this.show(await api("/api/admin/transcoding/settings", { method: "PUT", body: {
        global_concurrency: number(this.global),
        hardware_preference: this.preference.value,
        max_height: number(this.height),
        max_video_bitrate_kbps: number(this.bitrate),
      } }));
      this.toast("Transcoding settings saved; new jobs follow them.", "ok");
    } catch (exc) {
      this.error.textContent = exc.message;
    } finally {
      this.submit.disabled = false;
    }
  }
}
