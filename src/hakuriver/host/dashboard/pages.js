/* HakuRiver dashboard, part 2: the four pages (Cluster, Tasks, Task, Batch).
 *
 * Each page registers in HR.pages with enter(arg, params, gen), which fills its <section> of
 * index.html, opens the page's one EventSource and returns a clean-up function; wire() attaches
 * its event listeners once. Helpers (el, api, openEvents, throttled, fmt*) come from app.js.
 */
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const LOG_CAP = 1024 * 1024;  // characters of each log stream kept in the page
// the order of a batch's progress bar: what is over first, then what runs, then what waits
const BAR_ORDER = ["completed", "failed", "timeout", "lost", "killed", "running", "assigning", "pending"];

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function mayControl(owner) {
  return Boolean(HR.me && (HR.me.admin || HR.me.name === owner));
}

function emptyRow(columns, text) {
  return el("tr", { class: "empty" }, el("td", { colspan: columns, text }));
}

/** One row of a task table (Tasks page, Batch page); fillTaskRow writes its values. */
function taskRow(t) {
  return el("tr", { "data-task": t.task_id, class: "clickable" },
    el("td", { class: "mono" }, taskLink(t.task_id)), el("td", { class: "name" }), el("td", {}, el("span")),
    el("td"), el("td", { class: "num" }), el("td"), el("td"), el("td", { class: "num" }));
}

function fillTaskRow(row, t) {
  const cells = row.cells;
  cells[1].textContent = t.name || "–";
  setBadge(cells[2].firstChild, t.state);
  cells[3].textContent = t.node || "–";
  cells[4].textContent = t.cores;
  cells[5].textContent = t.owner || "–";
  cells[6].textContent = fmtTime(t.submitted_at);
  cells[6].title = fmtTime(t.submitted_at, true);
  cells[7].textContent = fmtDuration(runtimeOf(t));
}

/** Rows keyed by task ID, kept when the task is still listed (a reload moves no focus, breaks
 * no reference to a row), made for new tasks, removed for the others; `empty` when none. */
function syncRows(table, items, make, fill, empty) {
  const body = table.tBodies[0];
  const old = new Map([...body.rows].filter((r) => r.dataset.task).map((r) => [r.dataset.task, r]));
  const rows = items.map((item) => old.get(item.task_id) || make(item));
  rows.forEach((row, i) => fill(row, items[i]));
  const keep = new Set(rows);
  for (const row of [...body.rows]) if (!keep.has(row)) row.remove();
  rows.forEach((row, i) => { if (body.rows[i] !== row) body.insertBefore(row, body.rows[i] || null); });
  if (!rows.length) body.append(emptyRow(table.tHead.rows[0].cells.length, empty));
}

/** A click anywhere on a row opens its task (unless the user is selecting text). */
function openClickedRow(ev) {
  const row = ev.target.closest("tr[data-task]");
  if (!row || ev.target.closest("a") || String(window.getSelection())) return;
  location.hash = `#/task/${encodeURIComponent(row.dataset.task)}`;
}

// ==== Cluster ===============================================================================

const clusterView = { throughputKey: "" };

function renderCluster(snap) {
  const stats = {
    "stat-cores-used": snap.cores_used, "stat-cores-free": snap.cores_free, "stat-cores-total": snap.cores_total,
    "stat-queue": snap.queue_length, "stat-nodes-online": snap.nodes_online, "stat-finished-hour": snap.finished_last_hour,
  };
  for (const [id, value] of Object.entries(stats)) $(id).textContent = value ?? "–";
  renderThroughput(snap.throughput || []);
  renderNodes(snap.nodes || [], snap.now);
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

/** Bars of finished tasks per minute, oldest left; rebuilt only when the numbers change. */
function renderThroughput(points) {
  const key = JSON.stringify(points);
  if (key === clusterView.throughputKey) return;
  clusterView.throughputKey = key;
  const width = 600, height = 100, peak = Math.max(1, ...points.map((p) => p[1]));
  const step = width / Math.max(1, points.length);
  const chart = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img",
    "aria-label": "tasks finished per minute over the last hour" });
  points.forEach(([minute, count], i) => {
    const h = (count / peak) * (height - 4);
    const bar = svgEl("rect", { x: i * step + 1, y: height - h, width: Math.max(1, step - 2), height: h,
      class: count ? "tp-bar" : "tp-bar zero", "data-minute": minute });
    const title = svgEl("title", {});
    title.textContent = `${fmtTime(minute)}: ${count} finished`;
    bar.append(title);
    chart.append(bar);
  });
  chart.append(svgEl("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "tp-axis" }));
  $("throughput").replaceChildren(
    el("div", { class: "chart-peak", text: `peak ${peak === 1 && !points.some((p) => p[1]) ? 0 : peak}/min` }),
    chart,
    el("div", { class: "chart-axis" }, el("span", { text: "60 min ago" }), el("span", { text: "now" })));
}

function renderNodes(nodes, now) {
  const box = $("nodes");
  const names = new Set(nodes.map((n) => n.name));
  for (const card of [...box.children]) if (!names.has(card.dataset.node)) card.remove();
  nodes.forEach((node, i) => {
    let card = box.querySelector(`[data-node="${CSS.escape(node.name)}"]`);
    if (!card) card = nodeCard(node.name);
    if (box.children[i] !== card) box.insertBefore(card, box.children[i] || null);
    fillNodeCard(card, node, now);
  });
  $("no-nodes").hidden = nodes.length > 0;
}

function nodeCard(name) {
  return el("div", { class: "card node", "data-node": name },
    el("div", { class: "node-head" }, el("h3", { text: name }), el("span", { class: "badge", "data-field": "state" })),
    el("div", { class: "node-facts" },
      el("span", { "data-field": "cores" }), el("span", { "data-field": "memory" }),
      el("span", { "data-field": "heartbeat" })),
    el("div", { class: "cores" }));
}

function fillNodeCard(card, node, now) {
  const field = (name) => card.querySelector(`[data-field="${name}"]`);
  const badge = field("state");
  const shown = node.leaving ? "leaving" : node.state; // its runner said it stops: nothing new goes there
  badge.className = `badge node-${shown}`;
  badge.textContent = shown;
  card.classList.toggle("offline", node.state !== "online");
  field("cores").textContent =
    `${node.total_cores - node.free_cores}/${node.total_cores} cores busy · ${plural(node.running_tasks, "task")}`;
  field("memory").textContent = `memory ${fmtBytes(node.memory_bytes)}`;
  const age = node.last_heartbeat ? now - node.last_heartbeat : null;
  field("heartbeat").textContent = `heartbeat ${fmtAgo(age)}`;
  fillCores(card.querySelector(".cores"), node.cores || []);
}

function fillCores(grid, cores) {
  while (grid.children.length > cores.length) grid.lastChild.remove();
  while (grid.children.length < cores.length) grid.append(el("div", { class: "core" }));
  cores.forEach((core, i) => fillCore(grid.children[i], core));
}

function fillCore(cell, core) {
  cell.dataset.core = core.id;
  cell.textContent = core.id;
  const busy = Boolean(core.task_id);
  cell.classList.toggle("busy", busy);
  if (busy) {
    cell.dataset.task = core.task_id;
    cell.title = `core ${core.id}: ${core.name ? `${core.name} ` : ""}(${core.task_id})`;
    cell.tabIndex = 0;
    cell.setAttribute("role", "link");
    cell.style.backgroundColor = taskColour(core.task_id);
  } else {
    delete cell.dataset.task;
    cell.title = `core ${core.id}: free`;
    cell.removeAttribute("tabindex");
    cell.removeAttribute("role");
    cell.style.backgroundColor = "";
  }
}

/** A dark blue-to-violet of its own for each task, so the cores one task holds read as a group. */
function taskColour(taskId) {
  let hash = 0;
  for (const ch of taskId) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${190 + (hash % 90)} 60% ${30 + ((hash >>> 8) % 12)}%)`;
}

function openCoreTask(ev) {
  if (ev.type === "keydown" && ev.key !== "Enter" && ev.key !== " ") return;
  const cell = ev.target.closest(".core.busy");
  if (!cell) return;
  ev.preventDefault();
  location.hash = `#/task/${encodeURIComponent(cell.dataset.task)}`;
}

HR.pages.cluster = {
  wire() {
    $("nodes").addEventListener("click", openCoreTask);
    $("nodes").addEventListener("keydown", openCoreTask);
  },
  enter() {
    clusterView.throughputKey = "";
    openEvents("/api/events", { cluster: renderCluster });
  },
};

// ==== Tasks =================================================================================

const FILTER_TEXTS = ["node", "batch", "name", "user"];
const tasksView = { filters: null };

/** The filters of the URL hash, with the defaults filled in. */
function filtersFrom(params) {
  const number = (name, fallback) => (/^\d+$/.test(params.get(name) || "") ? Number(params.get(name)) : fallback);
  const filters = { state: (params.get("state") || "").split(",").filter((s) => STATES.includes(s)).join(",") };
  for (const name of FILTER_TEXTS) filters[name] = (params.get(name) || "").trim();
  filters.limit = Math.min(number("limit", 50), 1000) || 50;
  filters.offset = number("offset", 0);
  return filters;
}

function tasksHash(filters) {
  const shown = { ...filters };
  if (shown.limit === 50) delete shown.limit;
  if (!shown.offset) delete shown.offset;
  return `#/tasks${query(shown)}`;
}

function fillFilterForm(filters) {
  const form = $("task-filters");
  const states = new Set(filters.state.split(","));
  for (const box of form.querySelectorAll('input[name="state"]')) box.checked = states.has(box.value);
  for (const name of FILTER_TEXTS) form.elements[name].value = filters[name];
  const select = form.elements.limit;
  if (![...select.options].some((o) => o.value === String(filters.limit))) {
    select.append(el("option", { text: filters.limit }));
  }
  select.value = String(filters.limit);
}

function filtersOfForm() {
  const form = $("task-filters");
  const states = [...form.querySelectorAll('input[name="state"]:checked')].map((box) => box.value);
  const filters = { state: states.join(","), offset: 0, limit: Number(form.elements.limit.value) || 50 };
  for (const name of FILTER_TEXTS) filters[name] = form.elements[name].value.trim();
  return filters;
}

function applyFilters(ev) {
  if (ev) ev.preventDefault();
  location.hash = tasksHash(filtersOfForm());
}

function turnPage(direction) {
  const f = tasksView.filters;
  if (!f) return;
  location.hash = tasksHash({ ...f, offset: Math.max(0, f.offset + direction * f.limit) });
}

async function loadTasks(filters, gen) {
  const list = await api("GET", `/api/tasks${query(filters)}`);
  if (!list || !current(gen)) return;
  syncRows($("task-table"), list.tasks, taskRow, fillTaskRow, filters.offset ? "No tasks on this page." : "No tasks match.");
  renderPaging(list, filters);
}

function renderPaging(list, filters) {
  const first = list.offset + 1, last = list.offset + list.tasks.length;
  const total = list.total_exact ? `${list.total}` : `more than ${list.total}`;
  $("task-range").textContent = list.tasks.length ? `${first}–${last} of ${total}` : `0 of ${total}`;
  $("task-prev").disabled = filters.offset === 0;
  $("task-next").disabled = list.total_exact ? last >= list.total : list.tasks.length < filters.limit;
}

HR.pages.tasks = {
  wire() {
    const form = $("task-filters");
    form.addEventListener("submit", applyFilters);
    form.addEventListener("change", (ev) => { if (ev.target.matches('input[type="checkbox"], select')) applyFilters(); });
    $("filter-clear").addEventListener("click", () => { location.hash = "#/tasks"; });
    $("task-prev").addEventListener("click", () => turnPage(-1));
    $("task-next").addEventListener("click", () => turnPage(1));
    $("task-table").addEventListener("click", openClickedRow);
  },
  enter(_arg, params, gen) {
    const filters = filtersFrom(params);
    tasksView.filters = filters;
    fillFilterForm(filters);
    $("task-range").textContent = "";
    const reload = throttled(() => loadTasks(filters, gen), 1000);
    reload();
    openEvents("/api/events", { tasks: () => reload() });
    return () => reload.cancel();
  },
};

// ==== Task ==================================================================================

const taskView = { task: null, logs: {} };

function resetTaskPage(id) {
  taskView.task = null;
  $("task-title").textContent = `Task ${shortId(id)}`;
  $("task-state").textContent = "";
  $("task-state").className = "badge";
  for (const node of ["task-batch-link", "kill-task", "task-pending-reason", "task-message"]) $(node).hidden = true;
  $("task-record").replaceChildren();
  $("task-usage").replaceChildren();
  $("task-attempts").tBodies[0].replaceChildren();
  for (const stream of ["stdout", "stderr"]) clearLog(stream);
}

function renderTask(t) {
  taskView.task = t;
  $("task-title").textContent = t.name ? t.name : `Task ${shortId(t.task_id)}`;
  $("task-title").title = t.task_id;
  setBadge($("task-state"), t.state);
  const batch = $("task-batch-link");
  batch.hidden = !t.batch_id;
  if (t.batch_id) {
    batch.href = `#/batch/${encodeURIComponent(t.batch_id)}`;
    batch.textContent = `batch ${shortId(t.batch_id)}`;
  }
  $("kill-task").hidden = FINAL_STATES.has(t.state) || !mayControl(t.owner);
  const reason = $("task-pending-reason");
  reason.hidden = t.state !== "pending";
  reason.textContent = `Pending: ${t.pending_reason || "waiting in the queue"}`;
  fillRecord($("task-record"), recordRows(t));
  fillRecord($("task-usage"), usageRows(t));
  renderAttempts(t.attempts || []);
  for (const pre of document.querySelectorAll("pre.log")) pre.classList.toggle("final", FINAL_STATES.has(t.state));
  for (const stream of ["stdout", "stderr"]) {
    document.querySelector(`[data-raw="${stream}"]`).href =
      `/api/tasks/${encodeURIComponent(t.task_id)}/logs?stream=${stream}`;
    // the host sends a log only to its task's owner or an admin
    if (!mayControl(t.owner)) $(`log-${stream}`).textContent = `Only ${t.owner || "an admin"} or an admin may read this log.`;
  }
}

/** A running task's runtime counts up between its events. */
function tickRuntime() {
  const t = taskView.task;
  const field = document.querySelector('#task-record [data-field="runtime"]');
  if (t && field && t.started_at && !t.finished_at) field.textContent = fmtDuration(runtimeOf(t));
}

function afterLinks(ids) {
  if (!ids || !ids.length) return "–";
  const span = el("span");
  ids.forEach((id, i) => span.append(i ? ", " : "", taskLink(id)));
  return span;
}

/** [field, label, value] of the task's record; a value is text or a node. */
function recordRows(t) {
  const rows = [
    ["task_id", "ID", t.task_id],
    ["command", "Command", el("code", { text: shellJoin([t.command, ...(t.args || [])]) })],
    ["owner", "Owner", t.owner || "–"],
    ["unix_user", "Unix user", t.unix_user || "–"],
    ["node", "Node", t.node ? `${t.node} · cores ${(t.core_ids || []).join(", ") || "–"}` : "–"],
    ["cores", "Cores", String(t.cores)],
    ["submitted_at", "Submitted", fmtTime(t.submitted_at, true)],
    ["started_at", "Started", fmtTime(t.started_at, true)],
    ["finished_at", "Finished", fmtTime(t.finished_at, true)],
    ["runtime", "Runtime", fmtDuration(runtimeOf(t))],
    ["exit_code", "Exit code", t.exit_code ?? "–"],
    ["signal", "Signal", t.signal ?? "–"],
    ["error", "Error", t.error || "–"],
    ["time_limit", "Time limit", t.time_limit ? fmtDuration(t.time_limit) : "none"],
    ["retries", "Retries", `${t.retries} (attempt ${t.attempt} of ${t.retries + 1})`],
    ["after", "After", afterLinks(t.after)],
    ["cwd", "Working dir", t.cwd || "–"],
  ];
  if (t.target_node) rows.push(["target_node", "Target node", t.target_node]);
  if (t.throttle) rows.push(["throttle", "Throttle", `${t.throttle} at a time`]);
  if (t.kill_requested) rows.push(["kill_requested", "Kill", "requested"]);
  const env = Object.entries(t.env || {});
  if (env.length) rows.push(["env", "Environment", el("code", { text: env.map(([k, v]) => `${k}=${v}`).join("\n") })]);
  return rows;
}

function usageRows(t) {
  const cpu = t.cpu_user_seconds === null || t.cpu_user_seconds === undefined
    ? null : t.cpu_user_seconds + (t.cpu_system_seconds || 0);
  const wall = runtimeOf(t);
  const load = cpu !== null && wall > 0 ? `${Math.round((cpu / (wall * Math.max(1, t.cores))) * 100)}% of ${plural(t.cores, "core")}` : "–";
  const secs = (s) => (s === null || s === undefined ? "–" : `${s.toFixed(2)} s`);
  return [
    ["cpu_user_seconds", "CPU user", secs(t.cpu_user_seconds)],
    ["cpu_system_seconds", "CPU system", secs(t.cpu_system_seconds)],
    ["cpu_load", "CPU use", load],
    ["max_rss_bytes", "Peak memory", fmtBytes(t.max_rss_bytes)],
  ];
}

function fillRecord(dl, rows) {
  dl.replaceChildren(...rows.flatMap(([field, label, value]) =>
    [el("dt", { text: label }), el("dd", { "data-field": field }, typeof value === "object" ? value : String(value))]));
}

function renderAttempts(attempts) {
  const body = $("task-attempts").tBodies[0];
  body.replaceChildren(...attempts.map((a) => el("tr", { "data-attempt": a.attempt },
    el("td", { class: "num", text: a.attempt }),
    el("td", {}, stateBadge(a.state)),
    el("td", { text: a.node || "–" }),
    el("td", { text: (a.core_ids || []).join(", ") || "–" }),
    el("td", { text: a.unix_user || "–" }),
    el("td", { text: fmtTime(a.started_at) }),
    el("td", { text: fmtTime(a.finished_at) }),
    el("td", { class: "num", text: a.exit_code ?? "–" }),
    el("td", { class: "num", text: a.signal ?? "–" }),
    el("td", { class: "error-cell", text: a.error || "" }))));
  if (!attempts.length) body.append(emptyRow(10, "Not started yet."));
}

function clearLog(stream, start = 0) {
  $(`log-${stream}`).textContent = "";
  // `next`: the byte offset the next piece must start at; a piece elsewhere starts the pane over
  taskView.logs[stream] = { chars: 0, trimmed: start > 0, following: true, next: start };
  updateLogNote(stream);
}

function updateLogNote(stream) {
  const log = taskView.logs[stream];
  const parts = [];
  if (log.trimmed) parts.push("older output trimmed");
  if (!log.following) parts.push("paused: scroll to the bottom to follow");
  document.querySelector(`[data-note="${stream}"]`).textContent = parts.join(" · ");
}

function atBottom(pre) {
  return pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
}

const utf8 = new TextEncoder();

/** A `log` event: the next text of a stream. One that does not continue where the pane ends
 * (offset 0 of a new attempt, or the host starting afresh after a reconnect) starts it over. */
function appendLog(piece) {
  const pre = $(`log-${piece.stream}`);
  if (!pre || typeof piece.text !== "string") return;
  const current = taskView.logs[piece.stream];
  if (piece.offset === 0 || !current || piece.offset !== current.next) clearLog(piece.stream, piece.offset);
  const log = taskView.logs[piece.stream];
  log.next = piece.offset + utf8.encode(piece.text).length;
  const stick = atBottom(pre);
  pre.append(piece.text);
  log.chars += piece.text.length;
  if (log.chars > LOG_CAP) trimLog(pre, log);
  if (stick) pre.scrollTop = pre.scrollHeight;
  updateLogNote(piece.stream);
}

function trimLog(pre, log) {
  const text = pre.textContent;
  let kept = text.slice(text.length - Math.floor(LOG_CAP * 0.75));
  const newline = kept.indexOf("\n");
  if (newline >= 0 && newline < 4096) kept = kept.slice(newline + 1);
  pre.textContent = kept;
  log.chars = kept.length;
  log.trimmed = true;
}

function followLog(ev) {
  const stream = ev.target.id.replace("log-", "");
  const log = taskView.logs[stream];
  const following = atBottom(ev.target);
  if (log && log.following !== following) {
    log.following = following;
    updateLogNote(stream);
  }
}

async function killTask() {
  const t = taskView.task;
  if (!t) return;
  const gen = HR.gen;
  if (!(await confirmAction(`Kill task ${t.name || shortId(t.task_id)} (${shortId(t.task_id)})?`))) return;
  const reply = await api("POST", `/api/tasks/${encodeURIComponent(t.task_id)}/kill`);
  if (reply && current(gen)) showNotice($("task-message"), reply.message);
}

HR.pages.task = {
  needsArg: true,
  wire() {
    $("kill-task").addEventListener("click", killTask);
    for (const stream of ["stdout", "stderr"]) $(`log-${stream}`).addEventListener("scroll", followLog);
  },
  enter(id, _params, gen) {
    resetTaskPage(id);
    const ticker = setInterval(tickRuntime, 1000);
    (async () => {
      const task = await api("GET", `/api/tasks/${encodeURIComponent(id)}`);
      if (!task || !current(gen)) return;
      renderTask(task);
      openEvents(`/api/events?task=${encodeURIComponent(task.task_id)}`, { task: renderTask, log: appendLog });
    })();
    return () => clearInterval(ticker);
  },
};

// ==== Batch =================================================================================

const batchView = { id: "", fullId: "", owner: "" };

function resetBatchPage(id) {
  Object.assign(batchView, { id, fullId: "", owner: "" });
  $("batch-title").textContent = `Batch ${shortId(id)}`;
  for (const node of ["batch-done", "batch-message", "kill-batch", "retry-failed", "batch-tasks-more"]) $(node).hidden = true;
  for (const node of ["batch-bar", "batch-counts"]) $(node).replaceChildren();
  $("batch-problems").tBodies[0].replaceChildren();
  $("batch-tasks").tBodies[0].replaceChildren();
  $("batch-all-tasks").href = `#/tasks${query({ batch: id })}`;
}

async function loadBatch(gen) {
  const id = encodeURIComponent(batchView.fullId || batchView.id);
  const [view, list] = await Promise.all([
    api("GET", `/api/batches/${id}`),
    api("GET", `/api/tasks${query({ batch: batchView.fullId || batchView.id, limit: 50 })}`),
  ]);
  if (!current(gen)) return;
  if (view) renderBatch(view);
  if (list) renderBatchTasks(list);
  const controls = Boolean(view) && mayControl(batchView.owner);
  $("kill-batch").hidden = !controls;
  $("retry-failed").hidden = !controls;
  if (view) $("kill-batch").disabled = view.done;
}

function renderBatch(v) {
  batchView.fullId = v.batch_id;
  $("batch-title").textContent = `Batch ${v.batch_id}`;
  const done = $("batch-done");
  done.hidden = false;
  done.textContent = v.done ? "done" : "in progress";
  done.className = `badge ${v.done ? "state-completed" : "state-running"}`;
  const present = BAR_ORDER.filter((s) => v.counts[s]);
  $("batch-bar").replaceChildren(...present.map((s) => {
    const seg = el("div", { class: `seg state-${s}`, "data-state": s, title: `${s}: ${v.counts[s]}` });
    seg.style.width = `${(v.counts[s] / Math.max(1, v.total)) * 100}%`;
    return seg;
  }));
  const finished = present.filter((s) => FINAL_STATES.has(s)).reduce((n, s) => n + v.counts[s], 0);
  $("batch-counts").replaceChildren(
    ...present.map((s) => el("li", { "data-state": s }, stateBadge(s), ` ${v.counts[s]}`)),
    el("li", { class: "total", text: `${finished} of ${v.total} finished` }));
  syncRows($("batch-problems"), v.problems || [], problemRow, fillProblemRow, "No problems so far.");
}

function problemRow(p) {
  return el("tr", { "data-task": p.task_id, class: "clickable" },
    el("td", { class: "mono" }, taskLink(p.task_id)), el("td", { class: "name" }), el("td", { class: "num" }),
    el("td", {}, el("span")), el("td", { class: "num" }), el("td", { class: "error-cell" }));
}

function fillProblemRow(row, p) {
  const cells = row.cells;
  cells[1].textContent = p.name || "–";
  cells[2].textContent = p.array_index ?? "–";
  setBadge(cells[3].firstChild, p.state);
  cells[4].textContent = p.exit_code ?? "–";
  cells[5].textContent = p.error || "";
}

function renderBatchTasks(list) {
  if (list.tasks.length) batchView.owner = list.tasks[0].owner;
  syncRows($("batch-tasks"), list.tasks, taskRow, fillTaskRow, "No tasks.");
  const more = list.total > list.tasks.length;
  $("batch-tasks-more").hidden = !more;
  $("batch-tasks-more").textContent =
    `Showing the newest ${list.tasks.length} of ${list.total_exact ? "" : "more than "}${list.total}.`;
}

async function killBatch() {
  const gen = HR.gen, id = batchView.fullId || batchView.id;
  if (!(await confirmAction(`Kill every unfinished task of batch ${shortId(id)}?`))) return;
  const reply = await api("POST", `/api/batches/${encodeURIComponent(id)}/kill`);
  if (reply && current(gen)) showNotice($("batch-message"), reply.message);
}

async function retryFailed() {
  const gen = HR.gen, id = batchView.fullId || batchView.id;
  if (!(await confirmAction(`Submit again the tasks of batch ${shortId(id)} that did not complete?`))) return;
  const reply = await api("POST", `/api/batches/${encodeURIComponent(id)}/retry-failed`);
  if (!reply || !current(gen)) return;
  if (reply.batch_id) location.hash = `#/batch/${encodeURIComponent(reply.batch_id)}`;
  else showNotice($("batch-message"), `${reply.task_ids.length} tasks submitted again`);
}

HR.pages.batch = {
  needsArg: true,
  wire() {
    $("kill-batch").addEventListener("click", killBatch);
    $("retry-failed").addEventListener("click", retryFailed);
    $("batch-problems").addEventListener("click", openClickedRow);
    $("batch-tasks").addEventListener("click", openClickedRow);
  },
  enter(id, _params, gen) {
    resetBatchPage(id);
    const reload = throttled(() => loadBatch(gen), 1000);
    reload();
    const ours = (change) => change.batch_id && change.batch_id === batchView.fullId;
    openEvents("/api/events", { tasks: (d) => { if (d.truncated || (d.changed || []).some(ours)) reload(); } });
    return () => reload.cancel();
  },
};
