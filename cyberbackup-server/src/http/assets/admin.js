// CyberBackup server dashboard: plain JavaScript, no dependencies. Reads /api/v1/*.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const pages = ["overview", "accounts", "snapshots", "clients", "files", "repositories", "maintenance", "events"];
const PAGE_ROWS = 25;   // rows per page of the accounts and snapshots tables
let timer = null;
let filesCursor = [];   // stack of "after" cursors, for First/Next paging

function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  return fetch(path, { headers }).then(async (res) => {
    const body = await res.json().catch(() => ({}));
    if (!res.ok) {
      throw new Error(body.error || ("the server answered " + res.status + " for " + path));
    }
    return body;
  });
}

function showError(err) {
  const box = document.getElementById("error");
  if (err) {
    box.textContent = err.message || String(err);
    box.hidden = false;
  } else {
    box.hidden = true;
  }
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function duration(secs) {
  secs = Math.floor(secs);
  const d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600);
  const m = Math.floor(secs % 3600 / 60), s = secs % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + s + "s";
  return s + "s";
}

function fillTable(id, rows, cells, empty) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = body.insertRow();
    const td = tr.insertCell();
    td.colSpan = document.querySelectorAll("#" + id + " th").length;
    td.className = "empty";
    td.textContent = empty;
    return;
  }
  for (const row of rows) {
    const tr = body.insertRow();
    for (const value of cells(row)) {
      const td = tr.insertCell();
      if (value instanceof Node) td.appendChild(value); else td.textContent = value;
    }
  }
}

function drawChart(samples, intervalSecs) {
  const svg = document.getElementById("chart");
  const W = 720, H = 180, pad = 24;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const text = (x, y, s, anchor) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x); t.setAttribute("y", y);
    if (anchor) t.setAttribute("text-anchor", anchor);
    t.textContent = s;
    svg.appendChild(t);
  };
  const now = Date.now() / 1000;
  const max = Math.max(1, ...samples.map((s) => s.bytes_per_sec));
  text(4, 14, bytes(max) + "/s");
  text(4, H - 6, "−60 min");
  text(W - 4, H - 6, "now", "end");
  if (samples.length === 0) {
    text(W / 2, H / 2, "no samples yet (one every " + intervalSecs + " s)", "middle");
    return;
  }
  const points = samples.map((s) => {
    const x = pad + (W - 2 * pad) * (1 - Math.min(3600, now - s.at) / 3600);
    const y = H - pad - (H - 2 * pad) * (s.bytes_per_sec / max);
    return x.toFixed(1) + "," + y.toFixed(1);
  });
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
}

// A progress bar with its text: done of total (a fraction), or just done when total is unknown.
function progress(done, total, text) {
  const span = document.createElement("span");
  if (total) {
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = Math.min(100, 100 * done / total).toFixed(1) + "%";
    bar.append(fill);
    span.append(bar, Math.floor(100 * done / total) + " % · ");
  }
  span.append(text);
  return span;
}

function transferObject(t) {
  if (t.kind === "file") return t.file_name;
  return t.kind + " " + t.object_id.slice(0, 16) + "…";
}

async function loadOverview() {
  const [ov, tp, m, scrub] = await Promise.all([api("/api/v1/overview"), api("/api/v1/throughput"),
    api("/api/v1/maintenance"), api("/api/v1/scrub")]);
  document.getElementById("ov-uptime").textContent = duration(ov.uptime_secs);
  document.getElementById("ov-clients").textContent = ov.clients;
  document.getElementById("ov-files").textContent = ov.files;
  document.getElementById("ov-bytes").textContent = bytes(ov.bytes_stored);
  document.getElementById("ov-connections").textContent = ov.connections;
  document.getElementById("ov-received").textContent = bytes(ov.bytes_received);
  fillTable("transfers-table", ov.active_transfers, (t) => [
    t.client_id.slice(0, 8) + "…",
    t.kind,
    transferObject(t),
    progress(t.bytes, t.total_bytes, bytes(t.bytes) + (t.total_bytes ? " of " + bytes(t.total_bytes) : "")),
    bytes(t.bytes_per_sec) + "/s",
    duration(t.elapsed_secs),
  ], "no transfer running");
  const tasks = m.prune.running.map((p) => ({
    task: "prune (" + p.phase + ")", who: p.client_id.slice(0, 8) + "…", started: p.started_at,
    progress: progress(p.done, p.total, p.total ? p.done + " of " + p.total : "running"),
  }));
  if (scrub.running) {
    const r = scrub.running.report;
    tasks.push({
      task: "scrub", who: "every repository", started: scrub.running.started_at,
      progress: progress(0, 0, r.packs + " packs, " + r.files + " files, " + bytes(r.bytes) +
        " read, " + r.damaged + " damaged"),
    });
  }
  fillTable("tasks-table", tasks, (t) => [t.task, t.who, t.progress, t.started], "no prune or scrub running");
  const lastPrune = m.prune.last_run;
  const lastScrub = scrub.last_cycle;
  document.getElementById("tasks-last").textContent =
    "Last prune: " + (lastPrune ? lastPrune.finished_at + ", " + lastPrune.repositories +
      " repositories, " + bytes(lastPrune.totals.bytes_freed) + " given back" +
      (lastPrune.failed.length ? ", " + lastPrune.failed.length + " failed" : "") : "none yet") +
    ". Last scrub cycle: " + (lastScrub ? lastScrub.finished_at + ", " + bytes(lastScrub.report.bytes) +
      " read, " + lastScrub.report.damaged + " damaged" : "none yet") + ".";
  drawChart(tp.samples, tp.interval_secs);
}

async function loadClients() {
  const clients = await api("/api/v1/clients");
  fillTable("clients-table", clients, (c) => [
    c.name, c.id, c.last_seen || "never", c.protocol ?? "–", c.files, bytes(c.bytes),
  ], "no client has registered yet");
  const devices = await api("/api/v1/devices");
  fillTable("devices-table", devices, (d) => [
    d.client, d.fingerprint.slice(0, 16), d.role, d.added_at,
  ], "no v4 device has registered yet");
}

function filesQuery() {
  const form = new FormData(document.getElementById("files-filter"));
  const q = new URLSearchParams();
  for (const [k, v] of form.entries()) {
    if (v && v !== "any") q.set(k, v);
  }
  if (token) q.set("token", token);
  return q;
}

async function loadFiles() {
  const q = filesQuery();
  document.getElementById("csv-link").href = "/api/v1/files.csv?" + q.toString();
  q.delete("token");
  const after = filesCursor[filesCursor.length - 1];
  if (after !== undefined) q.set("after", after);
  q.set("limit", "50");
  const page = await api("/api/v1/files?" + q.toString());
  fillTable("files-table", page.files, (f) => [
    f.row, f.client, f.name, f.version, f.verified ? "verified" : f.state, bytes(f.size), f.created_at,
  ], "no file matches");
  const next = document.getElementById("files-next");
  next.disabled = page.next_after === null;
  next.dataset.after = page.next_after ?? "";
  document.getElementById("files-first").disabled = filesCursor.length === 0;
}

function badge(text, kind) {
  const span = document.createElement("span");
  span.className = "badge " + kind;
  span.textContent = text;
  return span;
}

async function loadRepositories() {
  const [repos, scrub] = await Promise.all([api("/api/v1/repositories"), api("/api/v1/scrub")]);
  const limit = (n) => (n == null ? "none" : bytes(n));
  fillTable("repositories-table", repos, (r) => {
    const status = document.createElement("span");
    if (r.corrupt_packs > 0) status.append(badge(r.corrupt_packs + " corrupt", "bad"));
    if (r.over_soft_quota) status.append(badge("over soft quota", "warn"));
    if (!status.childElementCount) status.textContent = "ok";
    return [r.name, r.packs, bytes(r.stored_bytes), limit(r.soft_quota_bytes),
      limit(r.hard_quota_bytes), status];
  }, "no client has a repository yet");
  const dl = document.getElementById("scrub");
  dl.replaceChildren();
  const item = (k, v) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  };
  item("Rate", scrub.enabled ? bytes(scrub.bytes_per_sec) + "/s" : "disabled");
  item("Cycle every", duration(scrub.interval_secs));
  item("Read since start", bytes(scrub.bytes_scrubbed) + " in " + scrub.objects_scrubbed + " objects");
  const c = scrub.last_cycle;
  item("Last full cycle", c ? c.finished_at + " (" + duration(Math.round(c.duration_ms / 1000)) + ")" : "none yet");
  fillTable("corrupt-table", scrub.corrupt_objects, (o) => [
    o.client_name, o.kind, o.file_name ? o.file_name + " (version " + o.version + ")" : o.object,
    o.found_at, o.reason,
  ], "no corrupt object found");
}

// Client-side sorting and paging of a table whose rows the API sends whole.
const tables = {
  accounts: { sort: "name", dir: 1, page: 0, rows: [] },
  snapshots: { sort: "stored_at", dir: -1, page: 0, rows: [] },
};
const statusRank = { ok: 0, warn: 1, alert: 2 };

function sortValue(key, row) {
  if (key === "status") return statusRank[row.status];
  if (key === "devices") return row.devices.length;
  return row[key];
}

function compare(key, dir) {
  return (a, b) => {
    const x = sortValue(key, a), y = sortValue(key, b);
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;    // unknown values last
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * dir;
  };
}

function renderTable(name, render, empty) {
  const t = tables[name];
  const rows = [...t.rows].sort(compare(t.sort, t.dir));
  const pagesCount = Math.max(1, Math.ceil(rows.length / PAGE_ROWS));
  t.page = Math.min(t.page, pagesCount - 1);
  const shown = rows.slice(t.page * PAGE_ROWS, (t.page + 1) * PAGE_ROWS);
  const body = document.querySelector("#" + name + "-table tbody");
  body.replaceChildren();
  if (shown.length === 0) {
    const td = body.insertRow().insertCell();
    td.colSpan = document.querySelectorAll("#" + name + "-table th").length;
    td.className = "empty";
    td.textContent = empty;
  }
  for (const row of shown) render(body.insertRow(), row);
  for (const th of document.querySelectorAll("#" + name + "-table th[data-sort]")) {
    th.classList.toggle("sorted-asc", th.dataset.sort === t.sort && t.dir === 1);
    th.classList.toggle("sorted-desc", th.dataset.sort === t.sort && t.dir === -1);
  }
  document.getElementById(name + "-pageinfo").textContent =
    "page " + (t.page + 1) + " of " + pagesCount + " (" + rows.length + " rows)";
  document.getElementById(name + "-prev").disabled = t.page === 0;
  document.getElementById(name + "-next").disabled = t.page >= pagesCount - 1;
}

function cells(tr, values) {
  for (const value of values) {
    const td = tr.insertCell();
    if (value instanceof Node) td.appendChild(value); else td.textContent = value;
  }
}

function accountLink(name) {
  const a = document.createElement("a");
  a.href = "#accounts/" + encodeURIComponent(name);
  a.textContent = name;
  return a;
}

// "2026-12-03T11:59:54.841Z" as "2026-12-03 11:59 UTC".
function shortTime(rfc3339) {
  return rfc3339.slice(0, 10) + " " + rfc3339.slice(11, 16) + " UTC";
}

function renderAccount(tr, a) {
  tr.className = "status-" + a.status;
  tr.dataset.status = a.status;
  tr.dataset.name = a.name;
  tr.addEventListener("click", (e) => {
    if (e.target.tagName !== "A") location.hash = "accounts/" + encodeURIComponent(a.name);
  });
  const devices = a.devices.length === 0 ? "none (v3)" :
    a.devices.map((d) => d.fingerprint.slice(0, 16) + " " + d.role).join(", ");
  const last = a.last_backup_at ? shortTime(a.last_backup_at) + " (" + duration(a.age_secs) + " ago)" :
    "never (registered " + duration(a.age_secs) + " ago)";
  const ratio = a.dedup_compression_ratio == null ? "–" : a.dedup_compression_ratio.toFixed(2) + "×";
  const quota = a.quota_used_percent == null ? "no quota" : a.quota_used_percent.toFixed(1) + " %";
  const status = badge(a.status, a.status === "alert" ? "bad" : a.status === "warn" ? "warn" : "ok");
  cells(tr, [accountLink(a.name), devices, last, a.snapshots, bytes(a.stored_bytes), ratio, quota, status]);
}

async function loadAccounts() {
  const answer = await api("/api/v1/accounts");
  document.getElementById("accounts-thresholds").textContent =
    "Amber: no backup for more than " + duration(answer.warn_after_secs) +
    "; red: more than " + duration(answer.alert_after_secs) +
    " (backup_warn_after_secs, backup_alert_after_secs). Click an account for its snapshots.";
  tables.accounts.rows = answer.accounts;
  renderTable("accounts", renderAccount, "no account yet");
}

function renderSnapshot(tr, s) {
  cells(tr, [s.stored_at, s.time ?? "–", bytes(s.content_bytes), bytes(s.object_bytes),
    s.blobs ?? "–", s.group ?? "–", s.id.slice(0, 16)]);
}

async function loadSnapshots() {
  const name = decodeURIComponent(location.hash.slice("#accounts/".length));
  const answer = await api("/api/v1/accounts/" + encodeURIComponent(name) + "/snapshots");
  document.getElementById("snapshots-title").textContent = "Snapshots of " + answer.account;
  document.getElementById("snapshots-note").textContent = answer.note;
  tables.snapshots.rows = answer.snapshots;
  renderTable("snapshots", renderSnapshot, "this account has no snapshot");
}

for (const name of Object.keys(tables)) {
  const render = name === "accounts" ? () => renderTable("accounts", renderAccount, "no account yet") :
    () => renderTable("snapshots", renderSnapshot, "this account has no snapshot");
  for (const th of document.querySelectorAll("#" + name + "-table th[data-sort]")) {
    th.addEventListener("click", () => {
      const t = tables[name];
      t.dir = t.sort === th.dataset.sort ? -t.dir : 1;
      t.sort = th.dataset.sort;
      t.page = 0;
      render();
    });
  }
  document.getElementById(name + "-prev").addEventListener("click", () => { tables[name].page--; render(); });
  document.getElementById(name + "-next").addEventListener("click", () => { tables[name].page++; render(); });
}

async function loadMaintenance() {
  const m = await api("/api/v1/maintenance");
  const dl = document.getElementById("maintenance");
  dl.replaceChildren();
  const item = (k, v) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  };
  item("Runs every", duration(m.interval_secs));
  item("Discards transfers idle for", duration(m.abandoned_after_secs));
  const p = m.prune;
  item("Prune of the snapshot repositories",
    p.interval_secs ? "every " + duration(p.interval_secs) : "not scheduled");
  item("Unreferenced data deleted after", duration(p.grace_secs));
  item("Prune running now", p.running.length ? p.running.map((a) =>
    a.client_id + ": " + a.phase + (a.total ? " " + a.done + "/" + a.total : "") +
    " (since " + a.started_at + ")").join("; ") : "none");
  const pr = p.last_run;
  if (!pr) {
    item("Last prune", "not run yet");
  } else {
    item("Last prune", pr.finished_at + " (" + pr.duration_ms + " ms, " +
      pr.repositories + " repositories" +
      (pr.failed.length ? ", " + pr.failed.length + " failed: " +
        pr.failed.map((f) => f.client_id + ": " + f.error).join("; ") : "") + ")");
    const t = pr.totals;
    item("Space given back", bytes(t.bytes_freed) + " in " + t.packs_deleted + " packs");
    item("Blobs condemned / claimed back / deleted",
      t.condemned + " / " + t.revived + " / " + t.deleted_blobs);
    item("Packs repacked / written / waiting for deletion",
      t.packs_repacked + " / " + t.packs_written + " / " + t.packs_retired);
  }
  const r = m.last_run;
  if (!r) {
    item("Last run", "not run yet");
    return;
  }
  item("Last run", r.finished_at + " (" + r.duration_ms + " ms)");
  item("Result", r.error ? "failed: " + r.error : "ok");
  item("Abandoned transfers discarded", r.discarded_rows);
  item("Temporary files removed", r.removed_temp_files);
  item("Refused paths", r.refused_paths);
  item("Interrupted commits finished / rolled back",
    r.finished_commits + " / " + r.rolled_back_commits);
  item("Orphaned kept versions removed", r.removed_orphan_versions);
  item("Interrupted v4 uploads kept for resume", r.kept_resumable_uploads);
}

async function loadEvents() {
  const events = await api("/api/v1/events");
  fillTable("events-table", events, (e) => [e.time, e.level, e.target, e.message],
    "no warning or error since start");
}

const loaders = {
  overview: loadOverview, accounts: loadAccounts, snapshots: loadSnapshots,
  clients: loadClients, files: loadFiles,
  repositories: loadRepositories, maintenance: loadMaintenance, events: loadEvents,
};

function current() {
  const page = location.hash.slice(1);
  if (page.startsWith("accounts/")) return "snapshots";
  return pages.includes(page) && page !== "snapshots" ? page : "overview";
}

async function refresh() {
  try {
    await loaders[current()]();
    showError(null);
  } catch (err) {
    showError(err);
  }
}

function show() {
  const page = current();
  for (const p of pages) {
    document.getElementById("page-" + p).hidden = p !== page;
  }
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.page === (page === "snapshots" ? "accounts" : page));
    if (token) a.href = "?token=" + encodeURIComponent(token) + "#" + a.dataset.page;
  }
  clearInterval(timer);
  refresh();
  // Live pages refresh themselves; the files page only on request (it may be paged).
  if (page === "overview") timer = setInterval(refresh, 1000);
  if (page === "events" || page === "clients" || page === "repositories" || page === "accounts") {
    timer = setInterval(refresh, 5000);
  }
}

document.getElementById("files-filter").addEventListener("submit", (e) => {
  e.preventDefault();
  filesCursor = [];
  refresh();
});
document.getElementById("files-next").addEventListener("click", (e) => {
  filesCursor.push(e.target.dataset.after);
  refresh();
});
document.getElementById("files-first").addEventListener("click", () => {
  filesCursor = [];
  refresh();
});
window.addEventListener("hashchange", show);
show();
