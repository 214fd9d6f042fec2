// The native API, as this page calls it: JSON in and out, the access token in the Authorization
// header, one refresh with the refresh token when it has expired, errors as ApiError.

import * as session from "./session.js";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

const signedOut = new EventTarget(); // "signed-out": the session ended (refresh refused)

export function onSignedOut(fn) {
  signedOut.addEventListener("signed-out", fn);
}

let refreshing = null;

/** Trade the refresh token for new tokens once, however many requests found theirs expired. */
export function refresh() {
  refreshing ??= (async () => {
    const current = session.load();
    if (!current) return false;
    const r = await fetch("/api/auth/refresh", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ refresh_token: current.refresh }),
      credentials: "omit",
    }).catch(() => null);
    if (r?.ok) {
      session.keep(await r.json());
      return true;
    }
    if (r && (r.status === 401 || r.status === 403)) {
      session.forget();
      signedOut.dispatchEvent(new Event("signed-out"));
    }
    return false;
  })().finally(() => { refreshing = null; });
  return refreshing;
}

async function errorOf(r) {
  let body = null;
  try { body = await r.json(); } catch { /* not JSON */ }
  const e = body?.error ?? {};
  return new ApiError(r.status, e.code ?? "http_error", e.message ?? `${r.status} ${r.statusText}`, e.details);
}

/**
 * api("/api/jobs", {method: "POST", body: {...}, query: {status: "running"}})
 * Resolves to the decoded JSON (null for 204); with {response: true}, to {body, response}.
 */
export async function api(path, options = {}) {
  const { method = "GET", body, query, response: wantResponse = false } = options;
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const send = () => {
    const headers = { Accept: "application/json" };
    const s = session.load();
    if (s) headers.Authorization = `Bearer ${s.access}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(url, {
      method, headers, credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  };
  let r;
  try {
    r = await send();
    if (r.status === 401 && session.load() && (await refresh())) r = await send();
  } catch (exc) {
    throw new ApiError(0, "network", "The server cannot be reached. Check the connection and try again.", String(exc));
  }
  if (!r.ok) throw await errorOf(r);
  const decoded = r.status === 204 ? null : (r.headers.get("Content-Type") ?? "").includes("json") ? await r.json() : await r.text();
  return wantResponse ? { body: decoded, response: r } : decoded;
}

/** Sign in: POST /api/auth/login; keeps the session. */
export async function signIn(username, password) {
  const r = await fetch("/api/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ username, password }),
    credentials: "omit",
  }).catch((exc) => { throw new ApiError(0, "network", "The server cannot be reached.", String(exc)); });
  if (!r.ok) throw await errorOf(r);
  return session.keep(await r.json());
}

/** Sign out: end this session on the server (its access and refresh tokens stop working on
 * every gateway), then forget it here, whatever the server answered. */
export async function signOut() {
  const s = session.load();
  try {
    if (s) await api("/api/auth/logout", { method: "POST", body: { refresh_token: s.refresh } });
  } catch { /* the session ends here all the same */ }
  session.forget();
}

/** The URL of the next page from a `Link: <...>; rel="next"` header, or null. */
export function nextLink(response) {
  const link = response.headers.get("Link") ?? "";
  const m = link.match(/<([^>]+)>\s*;\s*rel="?next"?/);
  return m ? m[1] : null;
}
