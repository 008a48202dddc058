// TaskiqPg task browser: a small single-page app over the JSON API next to it (./api). No dependencies, no CDN.
"use strict";

const STATES = ["available", "scheduled", "retryable", "running", "completed", "cancelled", "discarded"];
const FINISHED = ["completed", "cancelled", "discarded"];
const REFRESH_MS = 3000;
let config = { readOnly: true, title: "TaskiqPg", schedules: false };
let refreshTimer = null;

const view = () => document.getElementById("view");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, init) {
  const response = await fetch("api/" + path, init);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

async function act(path, confirmText) {
  if (confirmText && !window.confirm(confirmText)) return;
  try {
    const body = await api(path, { method: "POST", headers: { "X-Taskiq-Dashboard": "1" } });
    showStatus(body.message || "Done.");
  } catch (error) {
    showStatus(error.message, true);
  }
  await route();
}

function showStatus(text, isError) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = "show" + (isError ? " error" : "");
  status.dataset.testid = isError ? "status-error" : "status-ok";
}

const fmtTime = (t) => (t ? new Date(t).toLocaleString() : "");
const fmtAge = (s) => (s === null || s === undefined ? "" : s < 60 ? `${s.toFixed(1)} s` : s < 3600 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(1)} h`);
const badge = (state) => el("span", { class: `badge state-${state}`, "data-state": state }, state);
const json = (value) => el("pre", {}, value === null || value === undefined ? "—" : JSON.stringify(value, null, 2));
const params = () => new URLSearchParams(location.hash.split("?")[1] || "");
const taskLink = (id) => el("a", { href: `#/task/${encodeURIComponent(id)}`, "data-testid": "task-link" }, id);

function button(label, onclick, danger, testid) {
  if (config.readOnly) return null;
  return el("button", { onclick, class: danger ? "danger" : null, "data-testid": testid }, label);
}

// ---- Queues ----
async function renderQueues() {
  const data = await api("overview");
  const rows = data.queues.map((q) =>
    el("tr", { "data-queue": q.name },
      el("td", {}, el("a", { href: `#/tasks?queue=${encodeURIComponent(q.name)}` }, q.name)),
      el("td", { "data-testid": "queue-state" }, q.pausedAt ? el("span", { class: "paused" }, "Paused") : "Running"),
      STATES.map((s) => el("td", { class: "num" },
        el("a", { href: `#/tasks?queue=${encodeURIComponent(q.name)}&state=${s}`, "data-count": s },
          (q.estimated.includes(s) ? "~" : "") + q.counts[s]))),
      el("td", { class: "num" }, fmtAge(q.oldestAvailableSeconds)),
      el("td", { class: "num" }, q.finishedLastMinute.completed ?? 0),
      el("td", { class: "num" }, q.finishedLastMinute.discarded ?? 0),
      el("td", { class: "num" }, q.liveWorkers),
      el("td", {}, q.pausedAt
        ? button("Resume", () => act(`queues/${encodeURIComponent(q.name)}/resume`), false, "resume-queue")
        : button("Pause", () => act(`queues/${encodeURIComponent(q.name)}/pause`, `Pause queue '${q.name}'? Workers stop claiming from it.`), true, "pause-queue"))));
  view().replaceChildren(
    el("h2", {}, "Queues"),
    el("table", { "data-testid": "queues" },
      el("thead", {}, el("tr", {}, el("th", {}, "Queue"), el("th", {}, "State"), STATES.map((s) => el("th", { class: "num" }, s)),
        el("th", { class: "num" }, "Oldest due"), el("th", { class: "num" }, "Completed/min"), el("th", { class: "num" }, "Discarded/min"),
        el("th", { class: "num" }, "Live workers"), el("th", {}, ""))),
      el("tbody", {}, rows)));
  scheduleRefresh();
}

// ---- Tasks ----
async function renderTasks() {
  const p = params();
  const state = p.get("state") || "available";
  const overview = await api("overview");
  const queue = p.get("queue") || (overview.queues[0] && overview.queues[0].name) || "";
  const query = new URLSearchParams({ queue, state, limit: "50" });
  for (const key of ["name", "from", "to", "order", "cursor"]) if (p.get(key)) query.set(key, key === "from" || key === "to" ? new Date(p.get(key)).toISOString() : p.get(key));
  const page = await api("tasks?" + query);

  const go = (changes) => {
    const next = new URLSearchParams(p);
    next.set("queue", queue);
    next.delete("cursor");
    for (const [k, v] of Object.entries(changes)) (v ? next.set(k, v) : next.delete(k));
    location.hash = "#/tasks?" + next;
  };
  const tabHref = (s) => {
    const next = new URLSearchParams(p);
    next.set("queue", queue);
    next.set("state", s);
    next.delete("cursor");
    return "#/tasks?" + next;
  };
  const nameInput = el("input", { value: p.get("name") || "", placeholder: "any", "data-testid": "filter-name" });
  const fromInput = el("input", { type: "datetime-local", value: p.get("from") || "" });
  const toInput = el("input", { type: "datetime-local", value: p.get("to") || "" });
  const orderSelect = el("select", {}, el("option", { value: "oldest" }, "Oldest first"), el("option", { value: "newest", selected: p.get("order") === "newest" }, "Newest first"));
  const queueSelect = el("select", { onchange: (e) => go({ queue: e.target.value }), "data-testid": "filter-queue" },
    overview.queues.map((q) => el("option", { value: q.name, selected: q.name === queue }, q.name)));
  const stats = overview.queues.find((q) => q.name === queue);

  view().replaceChildren(
    el("h2", {}, "Tasks"),
    el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); go({ name: nameInput.value.trim(), from: fromInput.value, to: toInput.value, order: orderSelect.value }); } },
      el("label", {}, "Queue", queueSelect),
      el("label", {}, "Task name", nameInput),
      el("label", {}, "From", fromInput),
      el("label", {}, "To", toInput),
      el("label", {}, "Order", orderSelect),
      el("button", { type: "submit", "data-testid": "apply-filters" }, "Apply")),
    stats && stats.pausedAt ? el("p", { class: "paused", "data-testid": "paused-banner" }, `Queue '${queue}' is paused since ${fmtTime(stats.pausedAt)}: workers claim nothing from it until it is resumed.`) : null,
    el("div", { class: "tabs" }, STATES.map((s) => el("a", { href: tabHref(s), class: s === state ? "active" : null, "data-tab": s },
      `${s} ${stats ? (stats.estimated.includes(s) ? "~" : "") + stats.counts[s] : ""}`))),
    el("table", { "data-testid": "tasks" },
      el("thead", {}, el("tr", {}, ["Task id", "Name", "State", "Attempts", FINISHED.includes(state) ? "Finished" : "Due", "Worker", "Last error"].map((h) => el("th", {}, h)))),
      el("tbody", {}, page.tasks.length === 0
        ? el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No tasks."))
        : page.tasks.map((t) => el("tr", { "data-task": t.taskId },
          el("td", {}, taskLink(t.taskId)), el("td", {}, t.taskName), el("td", {}, badge(t.state)),
          el("td", { class: "num" }, `${t.attempts}/${t.maxAttempts}`),
          el("td", {}, fmtTime(FINISHED.includes(state) ? t.finishedAt : t.runAt)),
          el("td", {}, t.worker || ""), el("td", { class: "error-text" }, (t.lastError || "").slice(0, 160)))))),
    el("div", { class: "pager" },
      p.get("cursor") ? el("button", { onclick: () => go({}) }, "First page") : null,
      page.nextCursor ? el("button", { onclick: () => { const next = new URLSearchParams(p); next.set("queue", queue); next.set("cursor", page.nextCursor); location.hash = "#/tasks?" + next; }, "data-testid": "next-page" }, "Next page") : null));
  scheduleRefresh();
}

// ---- One task ----
async function renderTask(taskId) {
  const data = await api("tasks/" + encodeURIComponent(taskId));
  const t = data.task;
  const finished = FINISHED.includes(t.state);
  const timeline = [["Created", t.createdAt], ["Due", t.runAt]];
  for (const a of data.history) {
    if (a.startedAt) timeline.push([`Attempt ${a.attempt} started on ${a.worker || "?"}`, a.startedAt]);
    timeline.push([`Attempt ${a.attempt} ended: ${a.outcome}`, a.endedAt]);
  }
  if (t.finishedAt) timeline.push([`Finished: ${t.state}`, t.finishedAt]);
  timeline.sort((x, y) => new Date(x[1]) - new Date(y[1]));

  view().replaceChildren(
    el("h2", {}, `Task ${t.taskName} `, badge(t.state)),
    el("div", { class: "actions" },
      !finished ? button("Cancel", () => act(`tasks/${encodeURIComponent(t.taskId)}/cancel`, "Cancel this task?"), true, "cancel-task") : null,
      t.state === "discarded" ? button("Retry", () => act(`tasks/${encodeURIComponent(t.taskId)}/retry`), false, "retry-task") : null,
      t.state === "scheduled" || t.state === "retryable" ? button("Run now", () => act(`tasks/${encodeURIComponent(t.taskId)}/run-now`), false, "run-now") : null,
      finished ? button("Delete", () => act(`tasks/${encodeURIComponent(t.taskId)}/delete`, "Delete this task's row?").then(() => { location.hash = `#/tasks?queue=${encodeURIComponent(t.queue)}&state=${t.state}`; }), true, "delete-task") : null),
    el("div", { class: "grid" },
      el("div", {}, el("h2", {}, "Summary"), el("dl", { "data-testid": "task-summary" },
        el("dt", {}, "Task id"), el("dd", {}, t.taskId),
        el("dt", {}, "Queue"), el("dd", {}, el("a", { href: `#/tasks?queue=${encodeURIComponent(t.queue)}&state=${t.state}` }, t.queue)),
        el("dt", {}, "State"), el("dd", { "data-testid": "task-state" }, t.state),
        el("dt", {}, "Attempts"), el("dd", {}, `${t.attempts} of ${t.maxAttempts}`),
        el("dt", {}, "Priority"), el("dd", {}, t.priority),
        el("dt", {}, "Worker"), el("dd", {}, t.worker || "—"),
        el("dt", {}, "Last error"), el("dd", { class: "error-text" }, t.lastError || "—"))),
      el("div", {}, el("h2", {}, "Timeline"), el("table", {}, el("tbody", {},
        timeline.map(([what, when]) => el("tr", {}, el("td", {}, fmtTime(when)), el("td", {}, what))))))),
    el("div", { class: "grid" },
      el("div", {}, el("h2", {}, "Arguments"), json(data.args)),
      el("div", {}, el("h2", {}, "Keyword arguments"), json(data.kwargs)),
      el("div", {}, el("h2", {}, "Labels"), json(data.labels)),
      el("div", {}, el("h2", {}, "Result"), el("div", { "data-testid": "task-result" }, data.result
        ? (data.result.isError ? el("pre", { class: "error-text" }, `${data.result.error?.type}: ${data.result.error?.message}\n\n${data.result.stackTrace || ""}`) : json(data.result.returnValue))
        : el("p", { class: "muted" }, "No result stored."))),
      el("div", {}, el("h2", {}, "Progress"), json(data.progress))),
    el("h2", {}, "Attempts"),
    el("table", { "data-testid": "attempts" },
      el("thead", {}, el("tr", {}, ["#", "Worker", "Started", "Ended", "Outcome", "Error"].map((h) => el("th", {}, h)))),
      el("tbody", {}, data.history.length === 0 ? el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No attempt ended yet."))
        : data.history.map((a) => el("tr", {}, el("td", {}, a.attempt), el("td", {}, a.worker || ""), el("td", {}, fmtTime(a.startedAt)),
          el("td", {}, fmtTime(a.endedAt)), el("td", {}, a.outcome), el("td", { class: "error-text" }, a.error || ""))))),
    el("h2", {}, "Message as stored"), el("pre", {}, data.message));
  if (!finished) scheduleRefresh();
}

// ---- Workers ----
async function renderWorkers() {
  const data = await api("overview");
  view().replaceChildren(el("h2", {}, "Workers"), el("table", { "data-testid": "workers" },
    el("thead", {}, el("tr", {}, ["Worker", "Host", "PID", "Queues", "In flight", "Started", "Heartbeat", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, data.workers.length === 0 ? el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No worker registered."))
      : data.workers.map((w) => el("tr", {}, el("td", {}, w.id), el("td", {}, w.host), el("td", { class: "num" }, w.processId),
        el("td", {}, w.queues.join(", ")), el("td", { class: "num" }, `${w.inFlight}/${w.capacity}`), el("td", {}, fmtTime(w.startedAt)),
        el("td", {}, fmtTime(w.heartbeatAt)), el("td", {}, w.stale ? el("span", { class: "stale" }, "stale") : el("span", { class: "live" }, "live")))))));
  scheduleRefresh();
}

// ---- Schedules ----
async function renderSchedules() {
  const data = await api("schedules");
  view().replaceChildren(el("h2", {}, "Schedules"), el("table", { "data-testid": "schedules" },
    el("thead", {}, el("tr", {}, ["Task", "When", "Kind", "State", "Last fire", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, data.schedules.length === 0 ? el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No schedule."))
      : data.schedules.map((s) => el("tr", { "data-schedule": s.id },
        el("td", {}, s.taskName),
        el("td", {}, s.cron ? `cron ${s.cron}${s.timeZone ? " (" + s.timeZone + ")" : ""}` : s.intervalSeconds ? `every ${s.intervalSeconds} s` : `at ${fmtTime(s.runAt)}`),
        el("td", {}, s.isStatic ? "static" : "runtime"),
        el("td", { "data-testid": "schedule-state" }, s.done ? "done" : s.enabled ? "active" : el("span", { class: "paused" }, "paused" + (s.disabledReason ? `: ${s.disabledReason}` : ""))),
        el("td", {}, fmtTime(s.lastFireAt)),
        el("td", {}, el("div", { class: "actions" },
          s.enabled ? button("Pause", () => act(`schedules/${s.id}/pause`), true, "pause-schedule") : button("Resume", () => act(`schedules/${s.id}/resume`), false, "resume-schedule"),
          button("Fire now", () => act(`schedules/${s.id}/fire`), false, "fire-schedule"))))))));
  scheduleRefresh();
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => route(true), REFRESH_MS);
}

async function route(isRefresh) {
  clearTimeout(refreshTimer);
  const path = location.hash.replace(/^#\/?/, "").split("?")[0] || "queues";
  const [section, ...rest] = path.split("/");
  for (const link of document.querySelectorAll("[data-nav]")) link.classList.toggle("active", link.dataset.nav === (section === "task" ? "tasks" : section));
  // A refresh must not throw away what the user is typing in a filter.
  if (isRefresh && document.activeElement && ["INPUT", "SELECT"].includes(document.activeElement.tagName)) { scheduleRefresh(); return; }
  try {
    if (section === "tasks") await renderTasks();
    else if (section === "task") await renderTask(decodeURIComponent(rest.join("/")));
    else if (section === "workers") await renderWorkers();
    else if (section === "schedules") await renderSchedules();
    else await renderQueues();
    document.body.dataset.loaded = section;
  } catch (error) {
    view().replaceChildren(el("p", { class: "error-text", "data-testid": "load-error" }, error.message));
    scheduleRefresh();
  }
}

async function start() {
  try {
    config = await api("overview");
  } catch (error) {
    showStatus(error.message, true);
  }
  document.title = config.title || "TaskiqPg";
  document.getElementById("title").textContent = config.title || "TaskiqPg";
  if (config.readOnly) document.getElementById("mode").textContent = "read-only";
  window.addEventListener("hashchange", () => route());
  await route();
}

start();
