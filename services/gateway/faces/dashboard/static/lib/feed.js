// The live feed: GET /api/ws (the token in the first frame, never in the URL), or, where a
// WebSocket cannot open, GET /api/events read with fetch (the token in the Authorization
// header). Views listen for "event" ({seq, event}), "progress" (a job's live progress) and
// "resync" (the feed was away: what was missed must be read again); "state" says whether it
// is live, connecting or lost.

import { refresh } from "./api.js";
import * as session from "./session.js";

const TYPES = ["job.*", "rendition.*", "worker.*", "pool.*", "webhook.*", "job.progress"];
const MAX_BACKOFF_MS = 15000;

async function serverAnswers() {
  try {
    return (await fetch("/healthz", { cache: "no-store", credentials: "omit" })).ok;
  } catch {
    return false;
  }
}

export class Feed extends EventTarget {
  constructor() {
    super();
    this.state = "connecting"; // connecting | live | lost | stopped
    this.transport = null; // "websocket" | "sse"
    this.lastSeq = 0;
    this._attempt = 0;
    this._wsFailures = 0;
    this._timer = null;
    this._socket = null;
    this._abort = null;
    this._wasLive = false;
  }

  start() {
    this.state = "connecting";
    this._connect();
    this._online = () => { if (this.state === "lost") this._reconnectNow(); };
    window.addEventListener("online", this._online);
  }

  stop() {
    this._setState("stopped");
    clearTimeout(this._timer);
    window.removeEventListener("online", this._online);
    this._socket?.close(1000);
    this._abort?.abort();
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, transport: this.transport } }));
  }

  _connect() {
    if (this.state === "stopped") return;
    if (this._wsFailures >= 2 || !("WebSocket" in window)) this._connectSse();
    else this._connectWs();
  }

  _reconnectNow() {
    clearTimeout(this._timer);
    this._attempt = 0;
    this._connect();
  }

  _retry(reason) {
    if (this.state === "stopped") return;
    this._setState(this._wasLive || this._attempt > 0 ? "lost" : "connecting");
    this.lostReason = reason;
    const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** this._attempt) * (0.75 + Math.random() / 2);
    this._attempt += 1;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._connect(), delay);
  }

  _live(transport) {
    this.transport = transport;
    this._attempt = 0;
    const resume = this._wasLive;
    this._wasLive = true;
    this._setState("live");
    // Whatever happened while the feed was away is read again by each view.
    if (resume) this.dispatchEvent(new Event("resync"));
  }

  _deliver(frame) {
    if (frame.type === "s2c_event") {
      this.lastSeq = Math.max(this.lastSeq, frame.payload.seq);
      this.dispatchEvent(new CustomEvent("event", { detail: frame.payload }));
    } else if (frame.type === "s2c_progress") {
      this.dispatchEvent(new CustomEvent("progress", { detail: frame.payload }));
    }
  }

  _connectWs() {
    const s = session.load();
    if (!s) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let authorized = false;
    const ws = new WebSocket(`${scheme}//${location.host}/api/ws`);
    this._socket = ws;
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ type: "c2s_auth", payload: { token: session.load()?.access ?? "" } }));
    });
    ws.addEventListener("message", (m) => {
      let frame;
      try { frame = JSON.parse(m.data); } catch { return; }
      if (frame.type === "s2c_auth_ok") {
        authorized = true;
        this._wsFailures = 0;
        ws.send(JSON.stringify({ type: "c2s_subscribe", payload: { types: TYPES } }));
        this._live("websocket");
      } else {
        this._deliver(frame);
      }
    });
    ws.addEventListener("close", async (c) => {
      if (this._socket !== ws || this.state === "stopped") return;
      if (c.code === 4401 || c.code === 1008) {
        // The token expired or was refused: a fresh one, then connect again at once.
        const again = Date.now() - (this._refreshedAt ?? 0) < 10000; // refused twice: back off
        if (await refresh()) {
          this._refreshedAt = Date.now();
          if (again) this._retry("signing in again");
          else this._connectWs();
          return;
        }
        if (!session.load()) { this.stop(); return; }
      }
      // A WebSocket that cannot open while the server answers HTTP (a proxy that does not pass
      // WebSockets) counts toward the SSE fallback; a server that is away does not.
      if (!authorized && (await serverAnswers())) this._wsFailures += 1;
      this._retry(c.reason || "the connection closed");
    });
  }

  async _connectSse() {
    const s = session.load();
    if (!s) return;
    const abort = new AbortController();
    this._abort = abort;
    const url = `/api/events?types=${encodeURIComponent(TYPES.join(","))}`;
    const headers = { Accept: "text/event-stream", Authorization: `Bearer ${s.access}` };
    if (this.lastSeq) headers["Last-Event-ID"] = String(this.lastSeq);
    let r;
    try {
      r = await fetch(url, { headers, signal: abort.signal, credentials: "omit", cache: "no-store" });
    } catch {
      this._retry("the server cannot be reached");
      return;
    }
    if (r.status === 401 && (await refresh())) { this._connect(); return; }
    if (!r.ok || !r.body) { this._retry(`the feed answered ${r.status}`); return; }
    this._live("sse");
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          this._sseMessage(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch { /* aborted or dropped */ }
    if (this._abort === abort) this._retry("the connection closed");
  }

  _sseMessage(text) {
    let id = null; let type = "message"; const data = [];
    for (const line of text.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (name === "id") id = Number(value);
      else if (name === "event") type = value;
      else if (name === "data") data.push(value);
    }
    if (!data.length) return;
    let payload;
    try { payload = JSON.parse(data.join("\n")); } catch { return; }
    if (type === "job.progress") this._deliver({ type: "s2c_progress", payload });
    else if (type === "error") this._retry(payload?.reason ?? "the feed ended");
    else if (id !== null) this._deliver({ type: "s2c_event", payload: { seq: id, event: payload } });
  }
}
