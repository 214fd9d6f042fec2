// Sign in with a vidmesh account (the same accounts and roles as the API).

import { signIn } from "../lib/api.js";
import { field, h } from "../lib/dom.js";

export const title = "Sign in";

export function mount(main, { message, signedIn }) {
  const username = h("input", { name: "username", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const status = h("p", { class: "form-error", role: "alert" }, message && message !== "Signed out." ? message : "");
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "card sign-in", on: { submit } },
    h("h1", { tabIndex: -1 }, "Sign in to vidmesh"),
    message === "Signed out." ? h("p", { role: "status" }, "You are signed out.") : null,
    field("Username", username),
    field("Password", password),
    status,
    button);

  async function submit(event) {
    event.preventDefault();
    button.disabled = true;
    status.textContent = "";
    try {
      await signIn(username.value.trim(), password.value);
      signedIn();
    } catch (exc) {
      status.textContent = exc.status === 401 ? "Wrong username or password." : exc.message;
      password.select();
    } finally {
      button.disabled = false;
    }
  }

  main.append(h("div", { class: "centered" }, form));
  username.focus();
}
