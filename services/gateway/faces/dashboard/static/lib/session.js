// The signed-in session: the tokens from POST /api/auth/login, kept in this tab's sessionStorage
// so a reload keeps the session and closing the tab ends it. Tokens never go into a URL.

const KEY = "vidmesh.session";

export function load() {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY) ?? "null");
    return s && s.access && s.refresh && s.user ? s : null;
  } catch {
    return null;
  }
}

/** Keep what POST /api/auth/login or /api/auth/refresh answered. */
export function keep(answer) {
  const s = { access: answer.access_token, refresh: answer.refresh_token, user: answer.user };
  sessionStorage.setItem(KEY, JSON.stringify(s));
  return s;
}

export function forget() {
  sessionStorage.removeItem(KEY);
}

const RANK = { user: 0, moderator: 1, admin: 2 };

export function atLeast(user, role) {
  return (RANK[user?.role] ?? -1) >= RANK[role];
}
