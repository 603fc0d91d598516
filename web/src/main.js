// The page: sign in, the caller's sessions, create, close, and one session's terminal and
// live logs. Routes live in the fragment (#/ and #/sessions/ID), so a reload keeps the view.
// Everything the service sends is shown as text (textContent), never as markup.

import "./nonce.js";
import "@xterm/xterm/css/xterm.css";
import "./style.css";
import { ApiError, json, request, setToken, token } from "./api.js";
import { followLogs } from "./logs.js";
import { openTerminal } from "./terminal.js";

const main = document.getElementById("main");
const who = document.getElementById("who");
const signOut = document.getElementById("sign-out");
/** What the current view must stop when it goes (a terminal, a log stream, a timer). */
let teardown = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value != null) node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child == null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...nodes) {
  for (const stop of teardown) stop();
  teardown = [];
  main.replaceChildren(...nodes);
}

function age(created) {
  const seconds = Math.max(0, Math.floor(Date.now() / 1000 - Number(created)));
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}

function errorLine(err) {
  return el("p", { class: "error", role: "alert" }, err instanceof ApiError ? err.message : String(err));
}

// --- Signing in ---------------------------------------------------------------------------

async function signedIn() {
  try {
    await json("/v1/sessions");
    return true;
  } catch (err) {
    if (err.status === 401) return false;
    throw err;
  }
}

async function signInView(problem) {
  who.textContent = "";
  signOut.hidden = true;
  const input = el("input", {
    id: "token",
    type: "password",
    autocomplete: "off",
    placeholder: "API token (cubbi serve token create)",
    "aria-label": "API token",
  });
  const form = el(
    "form",
    { id: "token-form", class: "card" },
    el("h2", {}, "Sign in with an API token"),
    el("p", { class: "muted" }, "The token stays in this tab only (sessionStorage)."),
    input,
    el("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    if (await signedIn().catch(() => false)) return route();
    setToken(null);
    show(await signInView("The service does not accept this token."));
  });
  const parts = [el("h1", {}, "Sign in")];
  if (problem) parts.push(errorLine(problem));
  try {
    const config = await json("/auth/config");
    if (config.oidc && config.oidc.flows.includes("browser")) {
      parts.push(
        el(
          "div",
          { class: "card" },
          el("h2", {}, "Sign in with your organisation"),
          el("button", { type: "button", id: "oidc", onclick: oidcLogin }, `Sign in with ${config.oidc.issuer}`),
        ),
      );
    }
  } catch {
    // No login offer known: the token form stays.
  }
  parts.push(form);
  return parts;
}

async function oidcLogin() {
  try {
    const started = await json("/auth/login", { method: "POST", body: { flow: "browser" } });
    if (started.authorize_url) location.assign(started.authorize_url);
  } catch (err) {
    show(...(await signInView(err)));
  }
}

signOut.addEventListener("click", async () => {
  if (!token()) await request("/auth/logout", { method: "POST", body: {} }).catch(() => {});
  setToken(null);
  location.hash = "#/";
  route();
});

// --- The sessions -------------------------------------------------------------------------

function sessionRow(session, refresh) {
  const link = el("a", { href: `#/sessions/${encodeURIComponent(session.id)}` }, session.name);
  const close = el("button", { type: "button", class: "danger" }, "Close");
  close.addEventListener("click", async () => {
    if (!confirm(`Close session ${session.name}? Its container and workspace go.`)) return;
    close.disabled = true;
    try {
      await request(`/v1/sessions/${encodeURIComponent(session.id)}`, { method: "DELETE" });
    } catch (err) {
      alert(err.message);
    }
    refresh();
  });
  return el(
    "tr",
    { "data-session": session.id },
    el("td", {}, link),
    el("td", { class: `state state-${session.state}` }, session.state),
    el("td", {}, session.image),
    el("td", {}, age(session.created)),
    el("td", { class: "muted" }, session.workspace ?? "—"),
    el("td", {}, close),
  );
}

/** A runtime's label in the form: Sysbox isolates, plain runc does NOT. */
function runtimeLabel(name) {
  if (name === "sysbox-runc") return "Sysbox (isolated)";
  if (name === "runc") return "runc (NOT isolated from the host)";
  return name;
}

async function createForm(refresh) {
  // What failed to load is said in the form, with what to do next, never an empty picker.
  const problems = [];
  const load = (path, what, fallback) =>
    json(path).catch((err) => {
      problems.push(
        el(
          "p",
          { class: "error", role: "alert", "data-failed": path },
          `Cannot load ${what}: ${err instanceof ApiError ? err.message : String(err)}. `,
          err instanceof ApiError && err.status >= 500
            ? "The service or its Docker engine may be down: reload the page in a moment, or tell the service's administrator if it persists."
            : "Reload the page; if it persists, sign in again or tell the service's administrator.",
        ),
      );
      return fallback;
    });
  const [images, projects, runtimes] = await Promise.all([
    load("/v1/images", "the images", []),
    load("/v1/projects", "your projects", []),
    load("/v1/runtimes", "the runtimes this service offers", { runtimes: [] }),
  ]);
  // Only built images boot: the first of them is the default choice.
  const firstBuilt = images.find((item) => item.built);
  const image = el(
    "select",
    { id: "create-image", required: true, "aria-label": "Image" },
    images.map((item) =>
      el(
        "option",
        { value: item.name, selected: item === firstBuilt },
        `${item.name}${item.built ? "" : " (not built)"}`,
      ),
    ),
  );
  // Only the runtimes the service lets a create ask for (GET /v1/runtimes), its default
  // first: Sysbox where the engine has it, plain runc (NOT a sandbox) only where the admin
  // allows it (allow_unsafe_runc).
  const offered = Array.isArray(runtimes.runtimes) ? runtimes.runtimes : [];
  const runtime = el(
    "select",
    { id: "create-runtime", required: true, "aria-label": "Runtime" },
    offered.map((name, index) => el("option", { value: name, selected: index === 0 }, runtimeLabel(name))),
  );
  if (!offered.length && !problems.length) {
    problems.push(
      el(
        "p",
        { class: "error", role: "alert", id: "no-runtime" },
        "This service can boot no session: its Docker engine has no Sysbox and plain runc is not allowed. Ask the service's administrator to install Sysbox, or to set allow_unsafe_runc = true in service.toml.",
      ),
    );
  }
  if (!images.length && !problems.length) {
    problems.push(el("p", { class: "muted" }, "This service offers no images: ask its administrator to build one."));
  }
  const project = el(
    "select",
    { id: "create-project", "aria-label": "Project" },
    el("option", { value: "" }, "no project"),
    projects.map((item) => el("option", { value: item.name }, `${item.name} (${item.url})`)),
  );
  const name = el("input", { id: "create-name", placeholder: "name (optional)", maxlength: 63, "aria-label": "Name" });
  const button = el("button", { type: "submit", id: "create" }, "Create");
  const note = el("p", { class: "muted", id: "create-status" });
  const form = el(
    "form",
    { class: "card create" },
    el("h2", {}, "New session"),
    el("div", { id: "create-problems" }, problems),
    image,
    runtime,
    project,
    name,
    button,
    note,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    note.textContent = "Creating… (booting the session can take a minute)";
    const body = { image: image.value };
    if (runtime.value) body.runtime = runtime.value;
    if (project.value) body.project = project.value;
    if (name.value.trim()) body.name = name.value.trim();
    try {
      const session = await json("/v1/sessions", { method: "POST", body });
      location.hash = `#/sessions/${encodeURIComponent(session.id)}`;
    } catch (err) {
      note.replaceChildren(errorLine(err));
      button.disabled = false;
      refresh();
    }
  });
  return form;
}

async function listView() {
  const body = el("tbody");
  const problem = el("div");
  const refresh = async () => {
    try {
      const sessions = await json("/v1/sessions");
      sessions.sort((a, b) => b.created - a.created);
      body.replaceChildren(
        ...(sessions.length
          ? sessions.map((session) => sessionRow(session, refresh))
          : [el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No sessions yet."))]),
      );
      problem.replaceChildren();
    } catch (err) {
      problem.replaceChildren(errorLine(err));
    }
  };
  await refresh();
  const table = el(
    "table",
    { id: "sessions" },
    el("thead", {}, el("tr", {}, ["Name", "State", "Image", "Age", "Project", ""].map((h) => el("th", {}, h)))),
    body,
  );
  show(el("h1", {}, "Sessions"), problem, table, await createForm(refresh));
  const timer = setInterval(refresh, 10_000);
  teardown.push(() => clearInterval(timer));
}

// --- One session --------------------------------------------------------------------------

function notFoundView(id) {
  document.title = "404 · cubbi";
  show(
    el(
      "section",
      { class: "card", id: "not-found" },
      el("h1", {}, "404 — no such session"),
      el("p", {}, `You have no session ${id}.`),
      el("a", { href: "#/" }, "Back to your sessions"),
    ),
  );
}

async function sessionView(id) {
  let session;
  try {
    session = await json(`/v1/sessions/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err.status === 404) return notFoundView(id);
    throw err;
  }
  document.title = `${session.name} · cubbi`;
  const status = el("span", { id: "terminal-status", class: "muted" });
  const logStatus = el("span", { class: "muted" });
  const screen = el("div", { id: "terminal" });
  const logs = el("pre", { id: "logs", hidden: true });
  const shell = session.command.length === 0 || sessionStorage.getItem(`cubbi.shell.${id}`) === "yes";
  const runLabel = shell ? "shell" : session.command.join(" ");
  const tabs = el(
    "div",
    { class: "tabs" },
    el("button", { type: "button", id: "tab-terminal", class: "active" }, "Terminal"),
    el("button", { type: "button", id: "tab-logs" }, "Logs"),
    session.command.length && !shell
      ? el("button", { type: "button", id: "open-shell", onclick: () => {
          sessionStorage.setItem(`cubbi.shell.${id}`, "yes");
          route();
        } }, "Open a shell instead")
      : null,
  );
  show(
    el(
      "div",
      { class: "session-head" },
      el("h1", {}, session.name),
      el("span", { class: `state state-${session.state}` }, session.state),
      el("span", { class: "muted" }, `${session.image} · ${runLabel} · ${age(session.created)} old`),
      status,
    ),
    tabs,
    screen,
    el("div", { class: "logs-wrap" }, logStatus, logs),
  );
  teardown.push(openTerminal(session.id, screen, status, { shell }));
  let stopLogs = null;
  teardown.push(() => stopLogs && stopLogs());
  const [termTab, logsTab] = tabs.querySelectorAll("button");
  termTab.addEventListener("click", () => {
    termTab.classList.add("active");
    logsTab.classList.remove("active");
    screen.hidden = false;
    logs.hidden = true;
  });
  logsTab.addEventListener("click", () => {
    logsTab.classList.add("active");
    termTab.classList.remove("active");
    screen.hidden = true;
    logs.hidden = false;
    stopLogs ??= followLogs(session.id, logs, logStatus);
  });
}

// --- Routing ------------------------------------------------------------------------------

async function route() {
  document.title = "cubbi";
  try {
    if (!(await signedIn())) return show(...(await signInView()));
    who.textContent = token() ? "signed in with a token" : "signed in";
    signOut.hidden = false;
    const match = location.hash.match(/^#\/sessions\/([A-Za-z0-9._-]{1,128})$/);
    if (match) await sessionView(match[1]);
    else await listView();
  } catch (err) {
    show(el("h1", {}, "Something went wrong"), errorLine(err), el("a", { href: "#/" }, "Back"));
  }
}

window.addEventListener("hashchange", route);
route();
