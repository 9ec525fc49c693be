// The scheduled backups: the sources this computer backs up by itself (folders, excludes,
// a schedule, what to keep), their last result and next run, "Back up now", and the form
// that adds or edits one. Polls /api/sources; when a run finishes, the snapshot timeline
// is reloaded so the new snapshot shows. Uses call(), rows(), bytes() and showError() from
// ui.js and loadSnapshots() from snapshots.js.
"use strict";

const SOURCES_EVERY_MS = 2000;
let sourcesFinished = null; // the last_finished times seen, to notice a finished run

function localTime(text) {
  if (!text) return "–";
  const date = new Date(text);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function fromNow(text, now) {
  const secs = Math.round((new Date(text) - new Date(now)) / 1000);
  if (secs <= 0) return "now";
  if (secs < 90) return "in " + secs + " s";
  if (secs < 5400) return "in " + Math.round(secs / 60) + " min";
  if (secs < 129600) return "in " + Math.round(secs / 3600) + " h";
  return "in " + Math.round(secs / 86400) + " days";
}

function lastRun(source) {
  const box = document.createElement("div");
  if (source.running) {
    const p = source.progress;
    const text = document.createElement("span");
    text.className = "badge running";
    text.textContent = "running";
    box.appendChild(text);
    if (p && p.event === "progress" && p.total_bytes > 0) {
      box.appendChild(bar(100 * p.bytes_done / p.total_bytes));
      const detail = document.createElement("span");
      detail.className = "hint";
      detail.textContent = " " + p.files_done + " / " + p.total_files + " files, " +
        bytes(p.bytes_done) + " of " + bytes(p.total_bytes);
      box.appendChild(detail);
    }
    return box;
  }
  const state = source.state;
  if (!state.last_attempt) {
    box.textContent = "never";
    return box;
  }
  const badge = document.createElement("span");
  const result = state.last_result || "running";
  badge.className = "badge " + (result === "succeeded" ? "ok" : result === "partial" ? "warn" : "failed");
  badge.textContent = result;
  box.append(localTime(state.last_attempt) + " ", badge);
  if (state.message) {
    const message = document.createElement("div");
    message.className = result === "failed" ? "error" : "hint";
    message.textContent = state.message;
    box.appendChild(message);
  }
  return box;
}

function sourceActions(source) {
  const box = document.createElement("div");
  const run = document.createElement("button");
  run.type = "button";
  run.textContent = "Back up now";
  run.disabled = source.running;
  run.addEventListener("click", async () => {
    run.disabled = true;
    try {
      await call("POST", "/api/sources/" + encodeURIComponent(source.name) + "/run");
      showError(null);
      await loadSources();
    } catch (err) {
      showError(err);
      run.disabled = false;
    }
  });
  const pause = document.createElement("button");
  pause.type = "button";
  pause.textContent = source.paused ? "Resume" : "Pause";
  pause.addEventListener("click", async () => {
    try {
      await call("POST", "/api/sources/" + encodeURIComponent(source.name) + "/pause", { paused: !source.paused });
      showError(null);
      await loadSources();
    } catch (err) {
      showError(err);
    }
  });
  const edit = document.createElement("button");
  edit.type = "button";
  edit.textContent = "Edit";
  edit.addEventListener("click", () => editSource(source));
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Remove";
  remove.addEventListener("click", async () => {
    if (!confirm("Stop backing up " + source.name + "? Its snapshots stay on the server.")) return;
    try {
      await call("DELETE", "/api/sources/" + encodeURIComponent(source.name));
      showError(null);
      await loadSources();
    } catch (err) {
      showError(err);
    }
  });
  box.append(run, " ", pause, " ", edit, " ", remove);
  return box;
}

async function loadSources() {
  let answer;
  try {
    answer = await call("GET", "/api/sources");
  } catch (err) {
    document.getElementById("sources-status").textContent = err.message;
    return;
  }
  const sources = answer.sources;
  document.getElementById("sources-status").textContent = sources.length
    ? sources.length + " source(s); times are this computer's local time"
    : "";
  rows("sources", sources, (s) => [
    s.name,
    s.paths.join("\n"),
    s.schedule_text,
    s.retention_text.replace(/^keep /, ""),
    lastRun(s),
    s.running ? "–" : s.paused ? "paused" : s.next_run ? fromNow(s.next_run, answer.now) + " (" + localTime(s.next_run) + ")" : "at next login",
    sourceActions(s),
  ], "No scheduled backups yet: add a folder below.");
  const finished = sources.map((s) => s.name + "=" + (s.state.last_finished || "")).join(",");
  if (sourcesFinished !== null && finished !== sourcesFinished && typeof loadSnapshots === "function") {
    loadSnapshots();
  }
  sourcesFinished = finished;
}

function showWhenInputs() {
  const when = document.getElementById("source-when").value;
  document.getElementById("source-minutes").hidden = when !== "every";
  document.getElementById("source-time").hidden = when !== "daily";
}

function scheduleText() {
  const when = document.getElementById("source-when").value;
  if (when === "every") return "every " + document.getElementById("source-minutes").value + "m";
  if (when === "daily") return "daily " + document.getElementById("source-time").value;
  return when;
}

function lines(id) {
  return document.getElementById(id).value.split("\n").map((l) => l.trim()).filter(Boolean);
}

function count(id) {
  const value = document.getElementById(id).value;
  return value === "" ? null : Number(value);
}

function editSource(source) {
  const name = document.getElementById("source-name");
  name.value = source.name;
  // The name identifies the source (its lock, its snapshots' tag): edit the rest.
  name.readOnly = true;
  document.getElementById("source-paths").value = source.paths.join("\n");
  document.getElementById("source-exclude").value = source.exclude.join("\n");
  const text = source.schedule;
  const when = document.getElementById("source-when");
  if (text === "hourly" || text === "login") {
    when.value = text;
  } else if (text.startsWith("daily ")) {
    when.value = "daily";
    document.getElementById("source-time").value = text.slice(6);
  } else {
    when.value = "every";
    const match = /^every (\d+)([smh])$/.exec(text);
    const minutes = match ? Number(match[1]) * { s: 1 / 60, m: 1, h: 60 }[match[2]] : 60;
    document.getElementById("source-minutes").value = Math.max(1, Math.round(minutes));
  }
  const retention = source.retention || {};
  for (const rule of ["last", "daily", "weekly", "monthly"]) {
    const value = retention["keep_" + rule];
    document.getElementById("keep-" + rule).value = value === undefined || value === null ? "" : value;
  }
  showWhenInputs();
  document.getElementById("source-editor").open = true;
  document.getElementById("source-editor-title").textContent = "Edit " + source.name;
}

document.getElementById("source-when").addEventListener("change", showWhenInputs);
document.getElementById("source-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const retention = {};
  for (const rule of ["last", "daily", "weekly", "monthly"]) {
    const value = count("keep-" + rule);
    if (value !== null) retention["keep_" + rule] = value;
  }
  try {
    await call("POST", "/api/sources", {
      name: document.getElementById("source-name").value.trim(),
      paths: lines("source-paths"),
      exclude: lines("source-exclude"),
      schedule: scheduleText(),
      retention,
    });
    showError(null);
    document.getElementById("source-editor").open = false;
    document.getElementById("source-editor-title").textContent = "Add a folder to back up on a schedule";
    document.getElementById("source-form").reset();
    document.getElementById("source-name").readOnly = false;
    showWhenInputs();
    await loadSources();
  } catch (err) {
    showError(err);
  }
});
showWhenInputs();
loadSources();
setInterval(loadSources, SOURCES_EVERY_MS);
