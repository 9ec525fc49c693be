// CyberBackup server dashboard: plain JavaScript, no dependencies. Reads /api/v1/*.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const pages = ["overview", "clients", "files", "repositories", "maintenance", "events"];
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

async function loadOverview() {
  const [ov, tp] = await Promise.all([api("/api/v1/overview"), api("/api/v1/throughput")]);
  document.getElementById("ov-uptime").textContent = duration(ov.uptime_secs);
  document.getElementById("ov-clients").textContent = ov.clients;
  document.getElementById("ov-files").textContent = ov.files;
  document.getElementById("ov-bytes").textContent = bytes(ov.bytes_stored);
  document.getElementById("ov-connections").textContent = ov.connections;
  document.getElementById("ov-received").textContent = bytes(ov.bytes_received);
  fillTable("transfers-table", ov.active_transfers, (t) => [
    t.client_id.slice(0, 8) + "…",
    t.file_name,
    bytes(t.bytes),
    bytes(t.bytes_per_sec) + "/s",
    duration(t.elapsed_secs),
  ], "no transfer running");
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
  overview: loadOverview, clients: loadClients, files: loadFiles,
  repositories: loadRepositories, maintenance: loadMaintenance, events: loadEvents,
};

function current() {
  const page = location.hash.slice(1);
  return pages.includes(page) ? page : "overview";
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
    a.classList.toggle("active", a.dataset.page === page);
    if (token) a.href = "?token=" + encodeURIComponent(token) + "#" + a.dataset.page;
  }
  clearInterval(timer);
  refresh();
  // Live pages refresh themselves; the files page only on request (it may be paged).
  if (page === "overview") timer = setInterval(refresh, 1000);
  if (page === "events" || page === "clients" || page === "repositories") {
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
