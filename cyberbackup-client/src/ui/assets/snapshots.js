// The snapshots view: a paged timeline, a lazy folder browser (one page of one folder at a
// time, fetched and decrypted by the client process when opened), search by name, the
// changes since the previous snapshot, and restore of a file or folder to a path or as a
// download. Uses call(), rows(), bytes(), withToken() and showError() from ui.js.
"use strict";

const TIMELINE_PAGE = 10;
const FOLDER_PAGE = 100;
const view = {
  snapshots: [], timelinePage: 0,
  snapshot: null, folder: "", folderName: "/", offset: 0, total: 0,
  sort: "name", order: "asc",
  selected: null, // { key, name, kind } of what the restore form acts on
  mode: "folder", // "folder", "search" or "changes"
};

function when(text) {
  return String(text).replace("T", " ").replace(/(\.\d+)?Z$/, "");
}

function mtime(secs) {
  return new Date(secs * 1000).toISOString().slice(0, 19).replace("T", " ");
}

function snapshotsStatus(text, isError) {
  const status = document.getElementById("snapshots-status");
  status.textContent = text;
  status.className = isError ? "error" : "hint";
}

function browseStatus(text, isError) {
  const status = document.getElementById("browse-status");
  status.textContent = text;
  status.className = isError ? "error" : "hint";
}

async function loadSnapshots() {
  const button = document.getElementById("snapshots-refresh");
  button.disabled = true;
  snapshotsStatus("asking the server for your snapshots…", false);
  try {
    const answer = await call("GET", "/api/snapshots");
    view.snapshots = answer.snapshots;
    view.timelinePage = 0;
    snapshotsStatus(answer.note || answer.warning ||
      (answer.snapshots.length + " snapshot(s), newest first"), Boolean(answer.warning));
    renderTimeline();
  } catch (err) {
    snapshotsStatus(err.message, true);
    view.snapshots = [];
    renderTimeline();
  } finally {
    button.disabled = false;
  }
}

function renderTimeline() {
  const pages = Math.max(1, Math.ceil(view.snapshots.length / TIMELINE_PAGE));
  view.timelinePage = Math.min(view.timelinePage, pages - 1);
  const start = view.timelinePage * TIMELINE_PAGE;
  rows("timeline", view.snapshots.slice(start, start + TIMELINE_PAGE), (s, tr) => {
    tr.dataset.id = s.id;
    if (view.snapshot && view.snapshot.id === s.id) tr.className = "selected";
    const browse = document.createElement("button");
    browse.type = "button";
    browse.className = "browse";
    browse.textContent = "Browse";
    browse.onclick = () => openSnapshot(s);
    return [when(s.time), s.hostname, s.paths.join(", "), String(s.files), bytes(s.bytes),
      bytes(s.added_bytes), browse];
  }, "no snapshot yet");
  document.getElementById("timeline-page").textContent = "page " + (view.timelinePage + 1) + " of " + pages;
  document.getElementById("timeline-newer").disabled = view.timelinePage === 0;
  document.getElementById("timeline-older").disabled = view.timelinePage >= pages - 1;
}

function openSnapshot(snapshot) {
  view.snapshot = snapshot;
  document.getElementById("browser").hidden = false;
  document.getElementById("browse-id").textContent = snapshot.short_id;
  document.getElementById("browse-when").textContent = when(snapshot.time) + " · " + snapshot.hostname;
  renderTimeline();
  openFolder("", "/");
}

function select(key, name, kind) {
  view.selected = { key, name, kind };
  document.getElementById("restore-what").textContent = name;
  const url = "/api/snapshots/" + view.snapshot.id + "/download?path=" + key;
  const link = document.getElementById("download-selected");
  link.href = withToken(url);
  link.textContent = kind === "file" ? "Download the file" : "Download .tar";
  const zip = document.getElementById("download-zip");
  zip.style.display = kind === "file" ? "none" : "";
  zip.href = withToken(url + "&format=zip");
}

function showMode(mode) {
  view.mode = mode;
  document.getElementById("entries").hidden = mode === "changes";
  document.getElementById("entries-pager").hidden = mode !== "folder";
  document.getElementById("changes").hidden = mode !== "changes";
  document.getElementById("back-to-folder").hidden = mode === "folder";
  for (const th of document.querySelectorAll("#entries th[data-sort]")) {
    th.className = "sortable" + (mode === "folder" && th.dataset.sort === view.sort ? " sorted-" + view.order : "");
  }
}

function renderCrumbs(path, key) {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren();
  const root = document.createElement("button");
  root.type = "button";
  root.textContent = "/";
  root.onclick = () => openFolder("", "/");
  nav.appendChild(root);
  // The key is hex of the path's bytes: component i ends before the (i+1)-th "/" byte.
  const pairs = key.match(/../g) || [];
  const ends = [];
  pairs.forEach((pair, i) => { if (pair === "2f" && i > 0) ends.push(i); });
  ends.push(pairs.length);
  const parts = path.split("/").filter((p) => p !== "");
  parts.forEach((part, i) => {
    const partKey = pairs.slice(0, ends[i]).join("");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = part;
    const partPath = "/" + parts.slice(0, i + 1).join("/");
    button.onclick = () => openFolder(partKey, partPath);
    if (i > 0) nav.append(" / ");
    nav.appendChild(button);
  });
}

function entryRow(entry, tr) {
  tr.dataset.name = entry.name;
  tr.dataset.kind = entry.kind;
  tr.dataset.key = entry.key;
  let name = entry.name;
  if (entry.kind === "dir") {
    name = document.createElement("button");
    name.type = "button";
    name.className = "link open";
    name.textContent = entry.name + "/";
    name.onclick = () => openFolder(entry.key, entry.path);
  } else if (view.mode === "search") {
    name = entry.path;
  }
  const pick = document.createElement("button");
  pick.type = "button";
  pick.className = "pick-entry";
  pick.textContent = "Restore…";
  pick.onclick = () => {
    select(entry.key, entry.path, entry.kind);
    document.getElementById("restore-target").focus();
  };
  const cell = document.createElement("span");
  cell.appendChild(pick);
  const size = entry.kind === "dir" ? "" : bytes(entry.size);
  return [name, size, mtime(entry.mtime), entry.mode, cell];
}

async function openFolder(key, path, offset) {
  view.folder = key;
  view.folderName = path;
  view.offset = offset || 0;
  showMode("folder");
  renderCrumbs(path, key);
  select(key, path, "dir");
  browseStatus("opening " + path + "…", false);
  const query = "path=" + key + "&offset=" + view.offset + "&limit=" + FOLDER_PAGE +
    "&sort=" + view.sort + "&order=" + view.order;
  try {
    const page = await call("GET", "/api/snapshots/" + view.snapshot.id + "/dir?" + query);
    view.total = page.total;
    rows("entries", page.entries, entryRow, "this folder is empty");
    const last = Math.min(page.offset + page.entries.length, page.total);
    document.getElementById("entries-page").textContent = page.total === 0 ? "" :
      (page.offset + 1) + "–" + last + " of " + page.total;
    document.getElementById("entries-prev").disabled = page.offset === 0;
    document.getElementById("entries-next").disabled = last >= page.total;
    browseStatus(page.path, false);
  } catch (err) {
    browseStatus(err.message, true);
    rows("entries", [], () => [], "nothing listed");
  }
}

async function search(text) {
  showMode("search");
  browseStatus("searching…", false);
  try {
    const found = await call("GET", "/api/snapshots/" + view.snapshot.id + "/search?q=" + encodeURIComponent(text));
    rows("entries", found.hits, entryRow, "no name matches " + JSON.stringify(text));
    browseStatus(found.hits.length + " match(es)" +
      (found.truncated ? " — only the first " + found.limit + "; type more of the name" : ""), false);
  } catch (err) {
    browseStatus(err.message, true);
  }
}

async function showChanges() {
  showMode("changes");
  browseStatus("comparing with the previous snapshot…", false);
  try {
    const diff = await call("GET", "/api/snapshots/" + view.snapshot.id + "/diff");
    rows("changes", diff.changes, (c, tr) => {
      tr.dataset.kind = c.kind;
      const kind = document.createElement("span");
      kind.className = "kind-" + c.kind;
      kind.textContent = c.kind;
      return [kind, c.path];
    }, diff.against ? "nothing changed" : "this is the first snapshot of these paths");
    browseStatus(diff.against === null ? "no earlier snapshot of the same host and paths" :
      diff.total + " change(s) since " + diff.against.slice(0, 8) + ": " + diff.added + " added, " +
      diff.removed + " removed, " + diff.modified + " modified" +
      (diff.total > diff.changes.length ? " (the first " + diff.changes.length + " are listed)" : ""), false);
  } catch (err) {
    browseStatus(err.message, true);
  }
}

// Called by ui.js with every state update.
function renderSnapshotRestore(restore) {
  const box = document.getElementById("snap-restore");
  box.hidden = !restore;
  if (!restore) return;
  const percent = restore.bytes_total > 0 ? 100 * restore.bytes_written / restore.bytes_total :
    (restore.state === "running" ? 0 : 100);
  document.getElementById("snap-restore-bar").value = percent;
  document.getElementById("snap-restore-percent").textContent = Math.floor(percent) + "%";
  const text = document.getElementById("snap-restore-text");
  text.dataset.state = restore.state;
  text.className = restore.state === "failed" ? "error" : "";
  text.textContent = restore.state === "running" ?
    "restoring " + restore.path + " into " + restore.target + ": " + restore.files_done + " of " +
      restore.files_total + " file(s), " + bytes(restore.bytes_written) + " of " + bytes(restore.bytes_total) :
    restore.state + ": " + (restore.message || "");
}

document.getElementById("snapshots-refresh").addEventListener("click", () => loadSnapshots());
document.getElementById("timeline-newer").addEventListener("click", () => { view.timelinePage--; renderTimeline(); });
document.getElementById("timeline-older").addEventListener("click", () => { view.timelinePage++; renderTimeline(); });
document.getElementById("entries-prev").addEventListener("click", () =>
  openFolder(view.folder, view.folderName, Math.max(0, view.offset - FOLDER_PAGE)));
document.getElementById("entries-next").addEventListener("click", () =>
  openFolder(view.folder, view.folderName, view.offset + FOLDER_PAGE));
for (const th of document.querySelectorAll("#entries th[data-sort]")) {
  th.addEventListener("click", () => {
    if (view.mode !== "folder") return;
    view.order = view.sort === th.dataset.sort && view.order === "asc" ? "desc" : "asc";
    view.sort = th.dataset.sort;
    openFolder(view.folder, view.folderName, 0);
  });
}
document.getElementById("snap-search").addEventListener("submit", (e) => {
  e.preventDefault();
  search(document.getElementById("search-text").value);
});
document.getElementById("back-to-folder").addEventListener("click", () =>
  openFolder(view.folder, view.folderName, view.offset));
document.getElementById("diff-show").addEventListener("click", () => showChanges());
document.getElementById("restore-to").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await call("POST", "/api/snapshots/" + view.snapshot.id + "/restore", {
      path: view.selected.key, target: document.getElementById("restore-target").value,
    });
    showError(null);
  } catch (err) {
    showError(err);
  }
});
document.getElementById("set-passphrase").addEventListener("submit", async (e) => {
  e.preventDefault();
  const fresh = document.getElementById("new-passphrase");
  const again = document.getElementById("new-passphrase-again");
  const current = document.getElementById("current-passphrase");
  if (fresh.value !== again.value) {
    showError(new Error("the two new passphrases differ — type the same one twice"));
    return;
  }
  try {
    const answer = await call("POST", "/api/repository/key", { new: fresh.value, current: current.value });
    for (const input of [fresh, again, current]) input.value = "";
    showError(null);
    snapshotsStatus(answer.message, false);
    document.getElementById("set-passphrase-box").open = false;
  } catch (err) {
    showError(err);
  }
});
document.getElementById("unlock").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = document.getElementById("passphrase");
  try {
    await call("POST", "/api/repository/passphrase", { passphrase: input.value });
    input.value = "";
    await loadSnapshots();
  } catch (err) {
    showError(err);
  }
});
loadSnapshots();
