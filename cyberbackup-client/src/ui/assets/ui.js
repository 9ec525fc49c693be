// CyberBackup local UI: plain JavaScript, no dependencies. State arrives over SSE
// (/api/events); EventSource reconnects by itself and the server resends the whole state.
"use strict";

const token = new URLSearchParams(location.search).get("token");
let settingsTouched = false;

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
  }
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
      return [f.name, bar(f.percent), bytes(f.sent) + " / " + bytes(f.size) + " (" + Math.floor(f.percent) + "%)",
        f.error ? f.status + ": " + f.error : f.status];
    }, "");
  }
  rows("history", state.history, (h, tr) => {
    tr.className = h.result === "succeeded" ? "ok" : "bad";
    tr.dataset.result = h.result;
    return [h.started_at, h.server + " as " + h.name, h.verified + " of " + h.files + ": " + h.file_names.join(", "),
      bytes(h.bytes), h.result + (h.message ? " — " + h.message : "")];
  }, "no backup yet");
  if (state.notice) showError(new Error(state.notice));
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
    await call("PUT", "/api/settings", {
      server: document.getElementById("server").value,
      name: document.getElementById("name").value,
    });
    settingsTouched = false;
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
    if (settingsTouched) {
      await call("PUT", "/api/settings", {
        server: document.getElementById("server").value,
        name: document.getElementById("name").value,
      });
      settingsTouched = false;
    }
    await call("POST", "/api/backup");
    showError(null);
  } catch (err) {
    showError(err);
  }
});
document.getElementById("cancel").addEventListener("click", () => {
  call("POST", "/api/cancel").then(() => showError(null), showError);
});
connect();
