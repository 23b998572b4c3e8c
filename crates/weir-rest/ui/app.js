// Weir's job page: reads the job's REST API (Flink's paths) every few seconds and renders the
// job graph, the checkpoint history and the exceptions; triggers savepoints and stops.
"use strict";

const api = (path) => "v1/" + path;
let jobId = null;
let refreshMs = 3000;
let commandLine = [];
const history = new Map(); // checkpoint id -> entry, across refreshes (the API shows the last 10)

async function get(path) {
  const r = await fetch(api(path));
  const body = await r.json();
  if (!r.ok) throw new Error((body.errors || [r.statusText]).join("; "));
  return body;
}

async function post(path, body) {
  const r = await fetch(api(path), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await r.json();
  if (!r.ok) throw new Error((answer.errors || [r.statusText]).join("; "));
  return answer;
}

const el = (id) => document.getElementById(id);
const text = (s) => document.createTextNode(s == null ? "" : String(s));
function node(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(typeof c === "string" || typeof c === "number" ? text(c) : c);
  return e;
}
const time = (ms) => (ms > 0 ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "");
function bytes(n) {
  if (n == null || n < 0) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function duration(ms) {
  if (ms < 1000) return ms + " ms";
  const s = Math.floor(ms / 1000);
  if (s < 60) return (ms / 1000).toFixed(1) + " s";
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${s % 60} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}
// An operator's name as Flink's metric ids spell it.
const metricName = (name) => name.replace(/[^A-Za-z0-9_]/g, "_");
const shellQuote = (s) => (/^[A-Za-z0-9_\/.:=,@%+-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\\''") + "'");

function renderHeader(job, overview) {
  el("job-name").textContent = job.name;
  const state = el("job-state");
  state.textContent = job.state;
  state.className = "state " + job.state;
  el("job-id").textContent = job.jid;
  el("job-start").textContent = time(job["start-time"]);
  el("job-duration").textContent = duration(job.duration);
  el("versions").textContent = `Weir ${overview["weir-version"]} (Flink REST API ${overview["flink-version"]})`;
  const running = job.state === "RUNNING";
  el("trigger-savepoint").disabled = !running;
  el("stop-with-savepoint").disabled = !running;
}

async function renderGraph(job) {
  const graph = el("graph");
  const boxes = [];
  for (const [i, v] of job.vertices.entries()) {
    // Records in and out per operator, summed over the subtasks.
    const ids = [];
    for (let s = 0; s < v.parallelism; s++) {
      for (const op of v.operators) {
        ids.push(`${s}.${metricName(op.name)}.numRecordsIn`, `${s}.${metricName(op.name)}.numRecordsOut`);
      }
    }
    let values = [];
    try {
      values = await get(`jobs/${jobId}/vertices/${v.id}/metrics?get=${ids.join(",")}`);
    } catch (_) { /* the job ended meanwhile */ }
    const sum = (op, what) =>
      values.filter((m) => m.id.endsWith(`.${metricName(op.name)}.${what}`)).reduce((a, m) => a + Number(m.value), 0);
    const ops = v.operators.map((op) =>
      node("li", { "data-operator": op.id },
        node("strong", {}, op.name), op.uid ? ` uid "${op.uid}"` : " (no uid)",
        node("br"), `in ${sum(op, "numRecordsIn").toLocaleString("en")} · out ${sum(op, "numRecordsOut").toLocaleString("en")}`));
    if (i > 0) {
      const inputs = (job.plan.nodes.find((n) => n.id === v.id) || {}).inputs || [];
      boxes.push(node("div", { class: "edge" }, "→", node("br"), inputs.map((e) => e.ship_strategy).join(", ")));
    }
    boxes.push(node("div", { class: "vertex", "data-vertex": v.id },
      node("h3", {}, v.name),
      node("div", { class: "p" }, `parallelism ${v.parallelism} / max ${v.maxParallelism} · ${v.status}`),
      node("ul", {}, ...ops)));
  }
  graph.replaceChildren(...boxes);
}

function renderCheckpoints(stats) {
  for (const h of stats.history) history.set(h.id, h);
  while (history.size > 100) history.delete(Math.min(...history.keys()));
  const c = stats.counts;
  el("checkpoint-counts").textContent =
    `${c.completed} completed, ${c.failed} failed, ${c.in_progress} in progress` +
    (stats.latest.restored ? ` · restored from ${stats.latest.restored.external_path}` : "");
  const entries = [...history.values()].sort((a, b) => b.id - a.id);
  const rows = entries.map((h) =>
    node("tr", { class: h.status, "data-checkpoint": h.id },
      node("td", { class: "num" }, h.id),
      node("td", {}, h.is_savepoint ? `savepoint (${(h.savepointFormat || "").toLowerCase()})` : "checkpoint"),
      node("td", {}, h.status),
      node("td", {}, time(h.trigger_timestamp)),
      node("td", { class: "num" }, duration(h.end_to_end_duration)),
      node("td", { class: "num" }, bytes(h.state_size)),
      node("td", { class: "num" }, bytes(h.checkpointed_size)),
      node("td", {}, h.external_path || h.failure_message || "")));
  el("history").tBodies[0].replaceChildren(...rows);
  drawDurations(entries.slice().reverse());
}

// Bars of end-to-end duration over time, oldest left; failed red, savepoints green.
function drawDurations(entries) {
  const svg = el("durations");
  const width = svg.clientWidth || 800, height = 140, pad = 24;
  const max = Math.max(1, ...entries.map((e) => e.end_to_end_duration));
  const w = Math.max(2, Math.min(24, (width - pad) / Math.max(1, entries.length) - 2));
  const ns = "http://www.w3.org/2000/svg";
  const shapes = [];
  entries.forEach((e, i) => {
    const h = Math.max(1, ((height - pad) * e.end_to_end_duration) / max);
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("x", pad + i * (w + 2));
    r.setAttribute("y", height - 14 - h);
    r.setAttribute("width", w);
    r.setAttribute("height", h);
    r.setAttribute("class", e.status === "FAILED" ? "FAILED" : e.is_savepoint ? "SAVEPOINT" : "COMPLETED");
    const title = document.createElementNS(ns, "title");
    title.textContent = `#${e.id} ${e.status} ${duration(e.end_to_end_duration)}`;
    r.append(title);
    shapes.push(r);
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", 0);
  label.setAttribute("y", 10);
  label.textContent = `max ${duration(max)}`;
  shapes.push(label);
  svg.replaceChildren(...shapes);
}

function renderExceptions(ex) {
  const rows = ex.exceptionHistory.entries.map((e) =>
    node("tr", {}, node("td", {}, time(e.timestamp)), node("td", {}, e.taskName || ""),
      node("td", {}, node("pre", {}, e.stacktrace))));
  el("exceptions").tBodies[0].replaceChildren(...rows);
}

async function refresh() {
  try {
    const [overview, job, stats, ex] = await Promise.all([
      get("overview"), get(`jobs/${jobId}`), get(`jobs/${jobId}/checkpoints`), get(`jobs/${jobId}/exceptions`),
    ]);
    renderHeader(job, overview);
    renderCheckpoints(stats);
    renderExceptions(ex);
    await renderGraph(job);
  } catch (e) {
    el("job-state").textContent = "UNREACHABLE";
    el("job-state").className = "state FAILED";
  }
}

// The command that restores the job from `path`: this job's own command line with `-s path`.
function restoreCommand(path) {
  const args = commandLine.slice();
  for (let i = 1; i < args.length; i++) {
    if (["-s", "--fromSavepoint", "--from-savepoint"].includes(args[i])) { args.splice(i, 2); i--; }
  }
  args.splice(1, 0, "-s", path);
  return args.map(shellQuote).join(" ");
}

async function savepoint(stop) {
  const target = el("target").value.trim();
  const format = el("format").value;
  const status = el("operation");
  status.className = "";
  el("restore").hidden = true;
  status.textContent = stop ? `Triggering stop-with-savepoint for job ${jobId}.` : `Triggering savepoint for job ${jobId}.`;
  try {
    const body = stop ? { formatType: format, drain: false } : { formatType: format };
    if (target) body[stop ? "targetDirectory" : "target-directory"] = target;
    const { "request-id": trigger } = await post(`jobs/${jobId}/${stop ? "stop" : "savepoints"}`, body);
    for (;;) {
      const s = await get(`jobs/${jobId}/savepoints/${trigger}`);
      if (s.status.id === "COMPLETED") {
        const op = s.operation;
        if (op["failure-cause"]) throw new Error(op["failure-cause"]["stack-trace"] || op["failure-cause"].class);
        status.textContent = `Savepoint completed. Path: ${op.location}`;
        el("restore-command").textContent = restoreCommand(op.location);
        el("restore").hidden = false;
        break;
      }
      const p = s.progress;
      status.textContent = p
        ? `Savepoint in progress: ${p.num_acknowledged_subtasks}/${p.num_subtasks} subtasks, ${bytes(p.bytes)} written`
        : "Savepoint in progress";
      await new Promise((r) => setTimeout(r, 200));
    }
  } catch (e) {
    status.textContent = `Savepoint failed: ${e.message}`;
    status.className = "failed";
  }
  refresh();
}

async function start() {
  const config = await get("config");
  refreshMs = config["refresh-interval"] || refreshMs;
  jobId = (await get("jobs")).jobs[0].id;
  const jobConfig = await get(`jobs/${jobId}/config`);
  commandLine = jobConfig["weir-command-line"] || [];
  const checkpointConfig = await get(`jobs/${jobId}/checkpoints/config`);
  if (checkpointConfig.savepoint_dir) el("target").placeholder = checkpointConfig.savepoint_dir;
  el("trigger-savepoint").addEventListener("click", () => savepoint(false));
  el("stop-with-savepoint").addEventListener("click", () => {
    if (confirm("Stop the job with a savepoint?")) savepoint(true);
  });
  el("copy-restore").addEventListener("click", async () => {
    const command = el("restore-command").textContent;
    try {
      await navigator.clipboard.writeText(command);
      el("copy-restore").textContent = "Copied";
    } catch (_) {
      // Without clipboard access (plain http on another host), select the text for Ctrl+C.
      const range = document.createRange();
      range.selectNodeContents(el("restore-command"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
    }
  });
  await refresh();
  setInterval(refresh, refreshMs);
}

start();
