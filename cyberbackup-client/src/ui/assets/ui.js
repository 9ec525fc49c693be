// CyberBackup local UI: plain JavaScript, no dependencies. State arrives over SSE
// (/api/events); EventSource reconnects by itself and the server resends the whole state.
"use strict";

const token = new URLSearchParams(location.search).get("token");
let settingsTouched = false;
let protocol = "v4";
let lastJob = null;
let versionsLoaded = false;

function withToken(path) {
  return token ? path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : path;
}

async function call(method, path, body, isForm) {
  const headers = { "X-CyberBackup-UI": "1" };
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined && !isForm) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method, headers, body: body === undefined ? undefined : (isForm ? body : JSON.stringify(body)),
  });
  const answer = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(answer.error || ("the UI server answered " + res.status));
  return answer;
}

function showError(err) {
  const box = document.getElementById("error");
  box.hidden = !err;
  box.textContent = err ? (err.message || String(err)) : "";
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function secs(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  return s >= 60 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : s + " s";
}

function rows(tableId, list, cells, empty) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren();
  if (list.length === 0) {
    const td = body.insertRow().insertCell();
    td.colSpan = document.querySelectorAll("#" + tableId + " th").length;
    td.className = "empty";
    td.textContent = empty;
    return;
  }
  for (const item of list) {
    const tr = body.insertRow();
    for (const cell of cells(item, tr)) {
      const td = tr.insertCell();
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell;
    }
  }
}

function bar(percent) {
  const p = document.createElement("progress");
  p.max = 100;
  p.value = percent;
  return p;
}

function render(state) {
  if (!state) return;
  if (!settingsTouched) {
    document.getElementById("server").value = state.settings.server;
    document.getElementById("name").value = state.settings.name;
    document.getElementById("protocol").value = state.settings.protocol;
    document.getElementById("fingerprint").value = state.settings.server_fingerprint || "";
  }
  protocol = state.settings.protocol;
  document.getElementById("token-set").textContent =
    state.settings.enroll_token_set ? "a token is saved (type a new one to replace it)" : "";
  const job = state.job;
  const running = job !== null && job.state === "running";
  rows("items", state.items, (item) => {
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.disabled = running;
    remove.onclick = () => call("DELETE", "/api/items/" + item.id).then(() => showError(null), showError);
    return [item.name, bytes(item.size), item.source === "upload" ? "uploaded" : item.path, remove];
  }, running ? "the backup is sending the files below" : "no file yet");
  document.getElementById("staging").textContent =
    "Uploaded files staged: " + bytes(state.staging.used) + " of " + bytes(state.staging.limit);
  document.getElementById("start").disabled = running || state.items.length === 0;
  document.getElementById("cancel").hidden = !running;

  const panel = document.getElementById("progress-panel");
  panel.hidden = job === null;
  if (job !== null) {
    const badge = document.getElementById("job-state");
    badge.textContent = job.state;
    badge.className = "badge " + job.state;
    const o = job.overall;
    document.getElementById("overall-bar").value = o.percent;
    document.getElementById("overall-percent").textContent = Math.floor(o.percent) + "%";
    document.getElementById("overall-detail").textContent =
      bytes(o.sent) + " of " + bytes(o.total) + " · " + bytes(o.bytes_per_sec) + "/s · ETA " +
      secs(o.eta_secs) + " · " + job.phase;
    document.getElementById("job-message").textContent = job.message || "";
    document.getElementById("job-message").className = job.state === "failed" ? "error" : "";
    rows("job-files", job.files, (f, tr) => {
      tr.dataset.status = f.status;
      const status = f.version ? f.status + " (version " + f.version + ")" : f.status;
      return [f.name, bar(f.percent), bytes(f.sent) + " / " + bytes(f.size) + " (" + Math.floor(f.percent) + "%)",
        f.error ? f.status + ": " + f.error : status];
    }, "");
  }
  rows("history", state.history, (h, tr) => {
    tr.className = h.result === "succeeded" ? "ok" : "bad";
    tr.dataset.result = h.result;
    return [h.started_at, h.server + " as " + h.name + (h.protocol ? " (" + h.protocol + ")" : ""), h.verified + " of " + h.files + ": " + h.file_names.join(", "),
      bytes(h.bytes), h.result + (h.message ? " — " + h.message : "")];
  }, "no backup yet");
  if (state.notice) showError(new Error(state.notice));
  if (typeof renderSnapshotRestore === "function") renderSnapshotRestore(state.snapshot_restore);
  // The restore list: load it once, and again whenever a backup finishes.
  const jobKey = job ? job.id + ":" + job.state : null;
  // A job first seen already finished (it can end between two updates) counts too.
  const finished = job !== null && job.state !== "running" && lastJob !== jobKey;
  lastJob = jobKey;
  if (!versionsLoaded || (finished && protocol === "v4")) {
    versionsLoaded = true;
    loadVersions();
  }
}

function restoreStatus(text, isError) {
  const status = document.getElementById("restore-status");
  status.textContent = text;
  status.className = isError ? "error" : "hint";
}

async function loadVersions() {
  const button = document.getElementById("versions-refresh");
  button.disabled = true;
  restoreStatus("asking the server for your files…", false);
  try {
    const answer = await call("GET", "/api/versions");
    const files = new Set(answer.versions.map((v) => v.name)).size;
    restoreStatus(answer.note ||
      (answer.versions.length + " version(s) of " + files + " file(s) on " + answer.server), false);
    rows("versions", answer.versions, (v, tr) => {
      tr.dataset.name = v.name;
      tr.dataset.version = v.version;
      const restore = document.createElement("button");
      restore.type = "button";
      restore.className = "restore";
      restore.textContent = "Restore";
      restore.onclick = () => restoreVersion(v, restore);
      const hash = document.createElement("span");
      hash.textContent = v.sha256.slice(0, 16) + "…";
      hash.title = v.sha256;
      hash.className = "hash";
      hash.dataset.sha256 = v.sha256;
      return [v.name, String(v.version), bytes(v.size), v.stored.replace("T", " ").replace("Z", ""), hash, restore];
    }, "no file on the server yet");
  } catch (err) {
    restoreStatus(err.message, true);
    rows("versions", [], () => [], "nothing listed");
  } finally {
    button.disabled = false;
  }
}

async function restoreVersion(v, button) {
  button.disabled = true;
  restoreStatus("restoring " + v.name + " version " + v.version + " and checking it…", false);
  try {
    const ready = await call("POST", "/api/restores", { name: v.name, version: v.version });
    const link = document.createElement("a");
    link.href = withToken(ready.url);
    link.download = ready.name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    restoreStatus(ready.name + " version " + ready.version + " restored (" + bytes(ready.size) +
      ", size and SHA-256 verified) — your browser saves it as a download", false);
  } catch (err) {
    restoreStatus(err.message, true);
  } finally {
    button.disabled = false;
  }
}

function settingsBody() {
  const body = {
    server: document.getElementById("server").value,
    name: document.getElementById("name").value,
    protocol: document.getElementById("protocol").value,
    server_fingerprint: document.getElementById("fingerprint").value,
  };
  const enroll = document.getElementById("enroll-token");
  if (enroll.value !== "") body.enroll_token = enroll.value;
  return body;
}

async function saveSettings() {
  await call("PUT", "/api/settings", settingsBody());
  settingsTouched = false;
  document.getElementById("enroll-token").value = "";
  versionsLoaded = false;
}

function connect() {
  const conn = document.getElementById("conn");
  const source = new EventSource(withToken("/api/events"));
  source.addEventListener("state", (e) => {
    conn.textContent = "live";
    conn.className = "conn live";
    render(JSON.parse(e.data));
  });
  source.onerror = () => {
    conn.textContent = "reconnecting…";
    conn.className = "conn";
  };
}

async function upload(files) {
  if (!files || files.length === 0) return;
  const form = new FormData();
  for (const f of files) form.append("file", f, f.name);
  try {
    await call("POST", "/api/uploads", form, true);
    showError(null);
  } catch (err) {
    showError(err);
  }
}

document.getElementById("settings").addEventListener("input", () => { settingsTouched = true; });
document.getElementById("settings").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await saveSettings();
    document.getElementById("settings-saved").textContent = "saved";
    showError(null);
  } catch (err) {
    showError(err);
  }
});
document.getElementById("add-path").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = document.getElementById("path");
  try {
    await call("POST", "/api/paths", { path: input.value });
    input.value = "";
    showError(null);
  } catch (err) {
    showError(err);
  }
});
const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  upload(e.dataTransfer.files);
});
document.getElementById("picker").addEventListener("change", (e) => {
  upload(e.target.files);
  e.target.value = "";
});
document.getElementById("start").addEventListener("click", async () => {
  try {
    if (settingsTouched) await saveSettings();
    await call("POST", "/api/backup");
    showError(null);
  } catch (err) {
    showError(err);
  }
});
document.getElementById("versions-refresh").addEventListener("click", () => loadVersions());
document.getElementById("cancel").addEventListener("click", () => {
  call("POST", "/api/cancel").then(() => showError(null), showError);
});
connect();
