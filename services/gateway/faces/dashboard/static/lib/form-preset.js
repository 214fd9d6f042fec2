// The preset form: a name and a structured spec (schemas/openapi.json PresetRequest and
// PresetSpecInput). Every spec field has a control, so editing a preset keeps what the form
// does not show up front (profile, level... sit under "More video options").

import { field, h, select } from "./dom.js";

const CONTAINERS = [
  ["mp4", "mp4 (faststart)"], ["fmp4", "fmp4 (fragmented MP4)"], ["mkv", "mkv"],
  ["webm", "webm (av1 + opus)"], ["ts", "ts (MPEG-TS: h264/hevc + aac)"], ["m4a", "m4a (aac audio only)"],
];
const VIDEO_CODECS = [["h264", "h264 (x264)"], ["hevc", "hevc (x265)"], ["av1", "av1 (SVT-AV1)"]];
const SPEEDS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"];
const PROFILES = [["", "Default (high)"], "baseline", "main", "high"];
const LEVELS = [["", "Default (the lowest that holds the height)"], "1.0", "1.1", "1.2", "1.3", "2.0", "2.1", "2.2",
  "3.0", "3.1", "3.2", "4.0", "4.1", "4.2", "5.0", "5.1", "5.2", "6.0", "6.1", "6.2"];
const AUDIO_CODECS = ["aac", "opus"];
const CHANNELS = [["1", "1 (mono)"], ["2", "2 (stereo)"], ["6", "6 (5.1)"]];

export const DEFAULT_SPEC = {
  container: "mp4",
  video: { codec: "h264", quality: 23, max_bitrate_kbps: null, max_height: 1080, max_fps: null, speed: "veryfast",
    deinterlace: false, profile: null, level: null, keyframe_interval: null, buffer_kbps: null },
  audio: { codec: "aac", channels: 2, bitrate_kbps: 160 },
  subtitles: false,
  copy_when_compatible: true,
};

/** "mp4 · h264 CRF 23, ≤1080p, ≤8000 kb/s · aac 2 ch 160 kb/s" */
export function specSummary(spec) {
  const v = spec.video;
  const a = spec.audio;
  const video = v ? [`${v.codec} CRF ${v.quality}`, `≤${v.max_height}p`,
    v.max_bitrate_kbps ? `≤${v.max_bitrate_kbps} kb/s` : null, v.max_fps ? `≤${v.max_fps} fps` : null]
    .filter(Boolean).join(", ") : "no video";
  const audio = a ? `${a.codec} ${a.channels} ch ${a.bitrate_kbps} kb/s` : "no audio";
  return [spec.container, video, audio].join(" · ");
}

const number = (props) => h("input", { type: "number", inputMode: "numeric", ...props });
const check = (label, control, hint) => h("div", { class: "field" },
  h("label", { class: "check" }, control, label), hint ? h("small", { class: "hint" }, hint) : null);
const wide = (el) => { el.classList.add("wide"); return el; };
const optional = (value) => (value === null || value === undefined ? "" : String(value));
const numberOrNull = (input) => (input.value.trim() === "" ? null : Number(input.value));

/**
 * presetForm(preset or null) -> {fields (nodes), controls ({"spec.video.quality": input...}),
 * read() -> PresetRequest body, invalid() -> the first control the browser finds invalid}.
 */
export function presetForm(preset) {
  const spec = preset?.spec ?? DEFAULT_SPEC;
  const v = spec.video ?? DEFAULT_SPEC.video;
  const a = spec.audio ?? DEFAULT_SPEC.audio;
  const c = {
    name: h("input", { name: "name", required: true, maxLength: 64, value: preset?.name ?? "",
      pattern: "[A-Za-z0-9][A-Za-z0-9 _.\\-]*", autocomplete: "off" }),
    description: h("input", { name: "description", maxLength: 500, value: preset?.description ?? "" }),
    active: h("input", { type: "checkbox", checked: preset?.active ?? true }),
    "spec.container": select(CONTAINERS, { value: spec.container }),
    "spec.video": h("input", { type: "checkbox", checked: spec.video !== null }),
    "spec.video.codec": select(VIDEO_CODECS, { value: v.codec }),
    "spec.video.quality": number({ min: 1, max: 63, required: true, value: v.quality }),
    "spec.video.max_height": number({ min: 144, max: 4320, required: true, value: v.max_height }),
    "spec.video.max_bitrate_kbps": number({ min: 100, max: 200000, value: optional(v.max_bitrate_kbps) }),
    "spec.video.max_fps": number({ min: 0.001, max: 240, step: "any", inputMode: "decimal", value: optional(v.max_fps) }),
    "spec.video.speed": select(SPEEDS, { value: v.speed }),
    "spec.video.deinterlace": h("input", { type: "checkbox", checked: v.deinterlace }),
    "spec.video.profile": select(PROFILES, { value: optional(v.profile) }),
    "spec.video.level": select(LEVELS, { value: optional(v.level) }),
    "spec.video.keyframe_interval": number({ min: 1, max: 1000, value: optional(v.keyframe_interval) }),
    "spec.video.buffer_kbps": number({ min: 100, max: 400000, value: optional(v.buffer_kbps) }),
    "spec.audio": h("input", { type: "checkbox", checked: spec.audio !== null }),
    "spec.audio.codec": select(AUDIO_CODECS, { value: a.codec }),
    "spec.audio.channels": select(CHANNELS, { value: String(a.channels) }),
    "spec.audio.bitrate_kbps": number({ min: 32, max: 512, required: true, value: a.bitrate_kbps }),
    "spec.subtitles": h("input", { type: "checkbox", checked: spec.subtitles }),
    "spec.copy_when_compatible": h("input", { type: "checkbox", checked: spec.copy_when_compatible }),
  };

  const videoBox = h("div", {},
    h("div", { class: "form-row" },
      field("Video codec", c["spec.video.codec"]),
      field("Quality (CRF)", c["spec.video.quality"], "Lower is better: 1-51 for h264/hevc, 10-63 for av1"),
      field("Max height (px)", c["spec.video.max_height"], "Never upscales; 144-4320"),
      field("Max bitrate (kb/s)", c["spec.video.max_bitrate_kbps"], "Empty: no cap"),
      field("Max frame rate (fps)", c["spec.video.max_fps"], "Empty: no cap"),
      field("Encoder speed", c["spec.video.speed"])),
    check("Deinterlace frames marked interlaced", c["spec.video.deinterlace"]),
    h("details", {}, h("summary", {}, "More video options"),
      h("p", { class: "hint" }, "A copied stream keeps its own; these need “Copy streams that already fit” off."),
      h("div", { class: "form-row" },
        field("H.264 profile", c["spec.video.profile"], "h264 only"),
        field("H.264 level", c["spec.video.level"], "h264 only"),
        field("Keyframe interval (frames)", c["spec.video.keyframe_interval"], "Empty: the encoder's"),
        field("Rate buffer (kb)", c["spec.video.buffer_kbps"], "With a max bitrate; empty: twice the cap"))));
  const audioBox = h("div", { class: "form-row" },
    field("Audio codec", c["spec.audio.codec"]),
    field("Channels", c["spec.audio.channels"], "A source with fewer is not upmixed to 5.1"),
    field("Audio bitrate (kb/s)", c["spec.audio.bitrate_kbps"], "32-512; opus at most 256 a channel"));
  // A part left out is hidden and its controls disabled (the browser does not check them then).
  const show = (box, on) => {
    box.hidden = !on;
    for (const el of box.querySelectorAll("input, select")) el.disabled = !on;
  };
  const sync = () => {
    show(videoBox, c["spec.video"].checked);
    show(audioBox, c["spec.audio"].checked);
  };
  c["spec.video"].addEventListener("change", sync);
  c["spec.audio"].addEventListener("change", sync);
  sync();

  const fields = [
    h("div", { class: "form-row" },
      field("Name", c.name, "Letters, digits, space and _ . - (up to 64)"),
      wide(field("Description", c.description))),
    check("Active: new jobs may use it", c.active),
    field("Container", c["spec.container"], "webm takes av1 + opus; ts h264/hevc + aac; m4a is audio only"),
    h("fieldset", {}, h("legend", {}, "Video"), check("Include video", c["spec.video"], "Off: an audio-only rendition"), videoBox),
    h("fieldset", {}, h("legend", {}, "Audio"), check("Include audio", c["spec.audio"], "Off: a rendition without sound"), audioBox),
    check("Keep the source's subtitles (mkv only)", c["spec.subtitles"]),
    check("Copy streams that already fit (same codec, within every cap)", c["spec.copy_when_compatible"]),
  ];

  function read() {
    const video = c["spec.video"].checked ? {
      codec: c["spec.video.codec"].value,
      quality: Number(c["spec.video.quality"].value),
      max_height: Number(c["spec.video.max_height"].value),
      max_bitrate_kbps: numberOrNull(c["spec.video.max_bitrate_kbps"]),
      max_fps: numberOrNull(c["spec.video.max_fps"]),
      speed: c["spec.video.speed"].value,
      deinterlace: c["spec.video.deinterlace"].checked,
      profile: c["spec.video.profile"].value || null,
      level: c["spec.video.level"].value || null,
      keyframe_interval: numberOrNull(c["spec.video.keyframe_interval"]),
      buffer_kbps: numberOrNull(c["spec.video.buffer_kbps"]),
    } : null;
    const audio = c["spec.audio"].checked ? {
      codec: c["spec.audio.codec"].value,
      channels: Number(c["spec.audio.channels"].value),
      bitrate_kbps: Number(c["spec.audio.bitrate_kbps"].value),
    } : null;
    return {
      name: c.name.value.trim(),
      description: c.description.value.trim(),
      active: c.active.checked,
      spec: { container: c["spec.container"].value, video, audio,
        subtitles: c["spec.subtitles"].checked, copy_when_compatible: c["spec.copy_when_compatible"].checked },
    };
  }

  return { fields, controls: c, read };
}
