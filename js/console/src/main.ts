/**
 * The operator console's page: sign in (the api-secret once, for a session cookie), then the
 * calls list and one call's live view. Served by the gateway at /console.
 */
import { type CallInfo, ConsoleApi, GatewayError, type SessionInfo } from "./api.js";
import { CallsBoard } from "./board.js";
import { CallView } from "./call.js";
import { CallsList } from "./calls.js";
import { field, h } from "./dom.js";

const api = new ConsoleApi(location.href);
const root = document.getElementById("app") as HTMLElement;
let signedIn: { calls: CallsList; view: CallView | null } | null = null;

async function boot(): Promise<void> {
  try {
    const session = await api.session();
    if (session) showConsole(session);
    else showSignIn();
  } catch (error) {
    showSignIn(error instanceof GatewayError ? `${error.code}: ${error.message}` : "The gateway could not be reached.");
  }
}

function showSignIn(message?: string): void {
  void leave();
  document.title = "Sign in · imaginex console";
  const secret = h("input", { attrs: { type: "password", name: "api-secret", autocomplete: "current-password", required: true, spellcheck: "false" } });
  const error = h("p", { class: "error", attrs: { role: "alert" }, text: message ?? "" });
  const button = h("button", { class: "primary wide", attrs: { type: "submit" }, text: "Sign in" });
  const form = h(
    "form",
    { class: "signin-card", attrs: { "aria-labelledby": "signin-title" } },
    brand(),
    h("h1", { id: "signin-title", text: "Operator console" }),
    h("p", { class: "lead", text: "Watch and steer your live calls." }),
    field("API secret", secret, "Exchanged once for a session cookie; never stored by this page."),
    error,
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    error.textContent = "";
    try {
      const session = await api.login(secret.value);
      secret.value = "";
      showConsole(session);
    } catch (failure) {
      error.textContent = failure instanceof GatewayError ? `${failure.code}: ${failure.message}` : "Sign-in failed.";
      secret.select();
    } finally {
      button.disabled = false;
    }
  });
  root.replaceChildren(h("main", { class: "signin" }, form));
  secret.focus();
}

function showConsole(session: SessionInfo): void {
  document.title = "Live calls · imaginex console";
  const main = h("main", { id: "main", class: "layout" });
  const board = new CallsBoard((call) => open(call));
  const calls = new CallsList(api, (call) => open(call), (list) => refreshed(list), () => showSignIn("Your session has ended; sign in again."));
  signedIn = { calls, view: null };
  const codes = session.agent_codes ? session.agent_codes.join(", ") : "all agent codes";
  const until = new Date(session.expires_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const signOut = h("button", { class: "secondary", attrs: { type: "button" }, text: "Sign out", on: { click: () => void signOutNow() } });
  root.replaceChildren(
    h("a", { class: "skip", attrs: { href: "#main" }, text: "Skip to the calls" }),
    h(
      "header",
      { class: "topbar" },
      brand(),
      h("p", { class: "tenant" }, h("span", { text: session.tenant }), h("span", { class: "muted", text: ` · ${codes} · session until ${until}` })),
      signOut,
    ),
    main,
  );
  main.append(calls.element, board.element);
  calls.start();
  (calls.element.querySelector("#calls-title") as HTMLElement).focus();

  function open(call: CallInfo): void {
    if (!signedIn) return;
    if (signedIn.view?.room === call.room) return signedIn.view.focus();
    void signedIn.view?.stop();
    const view = new CallView(api, call, () => showSignIn("Your session has ended; sign in again."));
    signedIn.view = view;
    main.lastElementChild!.replaceWith(view.element);
    calls.select(call.room);
    document.title = `${call.room} · imaginex console`;
    view.start();
    view.focus();
  }

  function refreshed(list: CallInfo[]): void {
    board.update(list);
    const view = signedIn?.view;
    if (!view) return;
    const call = list.find((c) => c.room === view.room);
    if (call) view.update(call);
    else view.missing();
  }
}

async function signOutNow(): Promise<void> {
  await leave();
  try {
    await api.logout();
  } finally {
    showSignIn("Signed out.");
  }
}

async function leave(): Promise<void> {
  const current = signedIn;
  signedIn = null;
  current?.calls.stop();
  await current?.view?.stop();
}

function brand(): HTMLElement {
  return h("div", { class: "brand" }, h("img", { attrs: { src: "console/assets/favicon.svg", alt: "", width: 22, height: 22 } }), h("span", { text: "imaginex" }), h("span", { class: "muted", text: "console" }));
}

void boot();
