/* HakuRiver dashboard, part 1: the shell shared by every page.
 *
 * API calls (JSON, the login cookie sent along), the session (login form, logout), hash routing,
 * the one live EventSource of the current page, the error banner, the in-page confirmation, and
 * small formatting helpers. The pages themselves are in pages.js and register in HR.pages.
 * Everything that comes from the host is written with textContent, never as markup.
 */
"use strict";

const HR = {
  me: null,          // {name, admin} once logged in
  pages: {},         // name -> {enter(arg, params, gen) -> leave function or undefined}
  gen: 0,            // bumped on every navigation: a late reply of an old page is dropped
  events: null,      // the page's EventSource
  leave: null,       // the current page's clean-up
  retryTimer: null,
  confirmResolve: null,
};

const FINAL_STATES = new Set(["completed", "failed", "killed", "lost", "timeout"]);
const STATES = ["pending", "assigning", "running", "completed", "failed", "killed", "lost", "timeout"];

// ---- DOM helpers ---------------------------------------------------------------------------

function $(id) {
  return document.getElementById(id);
}

/** A new element: props "class" and "text" are special, any other is an attribute; kids are nodes or text. */
function el(tag, props = {}, ...kids) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, String(value));
  }
  for (const kid of kids) {
    if (kid !== null && kid !== undefined) node.append(kid);
  }
  return node;
}

function stateBadge(state) {
  return el("span", { class: `badge state-${state}`, "data-state": state, text: state });
}

function setBadge(node, state) {
  node.className = `badge state-${state}`;
  node.dataset.state = state;
  node.textContent = state;
}

function taskLink(taskId, text) {
  return el("a", { href: `#/task/${encodeURIComponent(taskId)}`, text: text || shortId(taskId) });
}

// ---- formatting ----------------------------------------------------------------------------

function shortId(id) {
  return id ? String(id).slice(0, 8) : "";
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h === 0) return `${m}m${String(r).padStart(2, "0")}s`;
  if (h < 48) return `${h}h${String(m).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, "0")}h`;
}

function fmtAgo(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "never";
  const s = Math.max(0, Math.round(seconds));
  return s < 120 ? `${s}s ago` : `${fmtDuration(s)} ago`;
}

function pad2(n) {
  return String(n).padStart(2, "0");
}

/** Epoch seconds as local time: the time alone for today, else with the date. */
function fmtTime(epoch, full = false) {
  if (epoch === null || epoch === undefined) return "–";
  const d = new Date(epoch * 1000);
  const time = `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  const date = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
  if (full || d.toDateString() !== new Date().toDateString()) return `${date} ${time}`;
  return time;
}

function runtimeOf(task) {
  if (!task.started_at) return null;
  return (task.finished_at || Date.now() / 1000) - task.started_at;
}

/** The command line as a shell would read it back. */
function shellJoin(words) {
  return words.map((w) => (/^[A-Za-z0-9_./:=@%+,-]+$/.test(w) ? w : `'${w.replace(/'/g, "'\\''")}'`)).join(" ");
}

// ---- the API -------------------------------------------------------------------------------

async function errorLine(resp) {
  try {
    const body = await resp.json();
    if (body && typeof body.error === "string") return body.error;
  } catch (_) { /* not JSON: fall through */ }
  return `${resp.status} ${resp.statusText || "error"}`;
}

/** One call: its JSON, or null after the error is shown (a 401 opens the login form). */
async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    showError(`the host cannot be reached (${err.message})`);
    return null;
  }
  if (resp.status === 401) {
    showLogin();
    return null;
  }
  if (!resp.ok) {
    showError(await errorLine(resp));
    return null;
  }
  try {
    return await resp.json();
  } catch (_) {
    showError(`${method} ${path}: the reply is not JSON`);
    return null;
  }
}

/** A query string of the non-empty values only (the host refuses empty parameters). */
function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && String(value) !== "") q.set(key, String(value));
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

// ---- error banner and confirmation ----------------------------------------------------------

function showError(line) {
  const banner = $("error-banner");
  banner.textContent = line;
  banner.hidden = false;
}

function hideError() {
  $("error-banner").hidden = true;
}

function showNotice(node, line) {
  node.textContent = line;
  node.hidden = !line;
}

/** Ask in the page (not window.confirm): resolves true when "Yes" is clicked. */
function confirmAction(question) {
  settleConfirm(false);
  $("confirm-text").textContent = question;
  $("confirm").hidden = false;
  $("confirm-yes").focus();
  return new Promise((resolve) => { HR.confirmResolve = resolve; });
}

function settleConfirm(answer) {
  $("confirm").hidden = true;
  const resolve = HR.confirmResolve;
  HR.confirmResolve = null;
  if (resolve) resolve(answer);
}

// ---- live events ---------------------------------------------------------------------------

function setLive(on) {
  const dot = $("live");
  dot.classList.toggle("on", on);
  dot.title = on ? "live updates: on" : "live updates: off";
}

/** The page's one EventSource; handlers get the parsed data of their event. */
function openEvents(url, handlers) {
  closeEvents();
  const source = new EventSource(url, { withCredentials: false });
  HR.events = source;
  for (const [name, handler] of Object.entries(handlers)) {
    source.addEventListener(name, (ev) => {
      if (HR.events !== source) return;
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      handler(data);
    });
  }
  source.addEventListener("open", () => setLive(true));
  source.addEventListener("error", () => {
    setLive(false);
    // a network error reconnects by itself; a refusal (401, 404...) closes the source for good
    if (source.readyState === EventSource.CLOSED) eventsRefused(url, handlers, source);
  });
}

async function eventsRefused(url, handlers, source) {
  const me = await api("GET", "/api/me");
  if (!me || HR.events !== source) return;
  showError("live updates were refused by the host; trying again in 5 s");
  HR.retryTimer = setTimeout(() => {
    if (HR.events === source) openEvents(url, handlers);
  }, 5000);
}

function closeEvents() {
  clearTimeout(HR.retryTimer);
  if (HR.events) HR.events.close();
  HR.events = null;
  setLive(false);
}

/** fn at most once per `ms`; calls while it runs make it run once more afterwards. */
function throttled(fn, ms = 1000) {
  let last = 0, timer = null, running = false, again = false;
  const run = async () => {
    timer = null;
    if (running) {
      again = true;
      return;
    }
    running = true;
    last = Date.now();
    try {
      await fn();
    } finally {
      running = false;
      if (again) {
        again = false;
        poke();
      }
    }
  };
  const poke = () => {
    if (timer === null) timer = setTimeout(run, Math.max(0, last + ms - Date.now()));
  };
  poke.cancel = () => {
    clearTimeout(timer);
    timer = null;
    again = false;
  };
  return poke;
}

// ---- routing -------------------------------------------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const cut = raw.indexOf("?");
  const path = cut < 0 ? raw : raw.slice(0, cut);
  const params = new URLSearchParams(cut < 0 ? "" : raw.slice(cut + 1));
  let parts;
  try {
    parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  } catch (_) {
    parts = [];
  }
  return { page: parts[0] || "cluster", arg: parts[1] || "", params };
}

function showSection(id) {
  for (const section of document.querySelectorAll("main > .page")) section.hidden = section.id !== id;
}

function leavePage() {
  settleConfirm(false);
  closeEvents();
  if (HR.leave) HR.leave();
  HR.leave = null;
  HR.gen += 1;
}

function route() {
  if (!HR.me) return;
  leavePage();
  hideError();
  const { page, arg, params } = parseHash();
  const handler = HR.pages[page];
  if (!handler || (handler.needsArg && !arg)) {
    location.replace("#/cluster");
    return;
  }
  showSection(`page-${page}`);
  for (const link of document.querySelectorAll("[data-nav]")) link.classList.toggle("active", link.dataset.nav === page);
  HR.leave = handler.enter(arg, params, HR.gen) || null;
}

/** Whether the page that started a call is still the one shown. */
function current(gen) {
  return gen === HR.gen && HR.me !== null;
}

// ---- session -------------------------------------------------------------------------------

function showLogin() {
  if (HR.me === null && !$("page-login").hidden) return;
  HR.me = null;
  leavePage();
  hideError();
  $("topbar").hidden = true;
  showSection("page-login");
  $("login-token").focus();
}

function signedIn(me) {
  HR.me = me;
  $("whoami").textContent = me.name;
  $("admin-badge").hidden = !me.admin;
  $("topbar").hidden = false;
  $("login-error").textContent = "";
  route();
}

async function logIn(event) {
  event.preventDefault();
  const input = $("login-token");
  const button = $("login-submit");
  $("login-error").textContent = "";
  button.disabled = true;
  try {
    const resp = await fetch("/api/login", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ token: input.value.trim() }),
    });
    if (!resp.ok) {
      $("login-error").textContent = await errorLine(resp);
      return;
    }
    input.value = "";
    signedIn(await resp.json());
  } catch (err) {
    $("login-error").textContent = `the host cannot be reached (${err.message})`;
  } finally {
    button.disabled = false;
  }
}

async function logOut() {
  await api("POST", "/api/logout");
  showLogin();
}

// ---- start ---------------------------------------------------------------------------------

function wireShell() {
  $("login-form").addEventListener("submit", logIn);
  $("logout").addEventListener("click", logOut);
  $("error-banner").addEventListener("click", hideError);
  $("confirm-yes").addEventListener("click", () => settleConfirm(true));
  $("confirm-no").addEventListener("click", () => settleConfirm(false));
  $("confirm").addEventListener("click", (ev) => { if (ev.target.id === "confirm") settleConfirm(false); });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !$("confirm").hidden) settleConfirm(false); });
  window.addEventListener("hashchange", route);
}

async function start() {
  wireShell();
  for (const page of Object.values(HR.pages)) if (page.wire) page.wire();
  const me = await api("GET", "/api/me");
  if (me) signedIn(me);
}

document.addEventListener("DOMContentLoaded", start);
