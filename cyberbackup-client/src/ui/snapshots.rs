//! The snapshots view over the repository: the timeline, a lazy tree browser, search,
//! changes since the previous snapshot, restore to a path on this machine with progress,
//! and downloads (a file as it is, a folder as a streamed `.tar` or `.zip`).
//!
//! Everything is decrypted here, in the client process, with this machine's device key (or
//! a passphrase the page gives, kept in memory only); the server sees the same sealed
//! blobs a restore fetches and nothing else. Browsing reuses one open repository
//! connection ([`Ui::repository`]) so that opening a folder costs a few tree fetches; a
//! restore and a download each open their own, so browsing stays responsive meanwhile.
//! A download's export runs in its own task and feeds the response through a bounded pipe:
//! when the browser abandons the download, the pipe's next write fails and the task ends,
//! closing its connection. A restore runs in a task that ends when the UI stops, its
//! progress ticking inside it (`cyberbackup-server/tests/snapshot_background.rs`).
//!
//! Paths travel as hex of their bytes (`path=2f686f6d65` for `/home`): a file name need not
//! be UTF-8, and what the page sends back must name exactly the entry it was shown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cyberbackup_core::repo::{EntryKind, KdfParams, TreeEntry};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::remote::{NotReady, content_disposition, failure, ready};
use super::{Ui, error};
use crate::snapshot::{
    ArchiveFormat, KeyOptions, Repository, RestoreFilter, RestoreProgress, SnapshotInfo,
};
use crate::v4::{V4Client, V4ClientError};

/// Entries of one directory page, unless the page asks for fewer.
pub(super) const DEFAULT_PAGE: usize = 100;
/// Most entries one page may ask for.
pub(super) const MAX_PAGE: usize = 500;
/// Most search hits one search returns (it stops walking there).
pub(super) const MAX_HITS: usize = 200;
/// Most changes a diff answer lists (the total is always given).
pub(super) const MAX_CHANGES: usize = 1000;
/// How often a running restore's progress is pushed to the page.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Bytes buffered between a download's export task and the HTTP body.
const DOWNLOAD_BUFFER: usize = 256 * 1024;

/// The repository the browser uses, over the v4 connection.
pub(super) type Browser = Repository<V4Client>;

/// A restore to a path, as the page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct RestoreView {
    id: u64,
    snapshot: String,
    path: String,
    target: String,
    /// `running`, `succeeded` or `failed`.
    state: &'static str,
    files_done: u64,
    files_total: u64,
    bytes_written: u64,
    bytes_total: u64,
    message: Option<String>,
}

/// Opens the repository on a new connection, with the device key, then the passphrase the
/// page gave.
async fn open(ui: &Ui) -> Result<Browser, Response> {
    let options = match ready(ui) {
        Ok(options) => options,
        Err(NotReady::Note(note)) => return Err(error(StatusCode::CONFLICT, note)),
        Err(NotReady::BadSettings(message)) => return Err(error(StatusCode::BAD_REQUEST, message)),
    };
    let mut keys = KeyOptions::new(&options.identity);
    if let Some(passphrase) = ui.passphrase.lock().await.as_ref() {
        keys = keys.with_passphrase(passphrase);
    }
    let opened = async {
        let client = V4Client::connect(&options).await?;
        Repository::open(client, &keys).await
    }
    .await;
    opened.map_err(|err| failure(&options.server, err))
}

/// Runs `op` on the shared open repository, opening it first when needed. A failure on a
/// connection that was already open (the server may have closed it while idle) is retried
/// once on a new one; a failure that recurs is the answer.
async fn with_repository<T>(
    ui: &Ui,
    op: impl for<'a> Fn(
        &'a mut Browser,
    )
        -> std::pin::Pin<Box<dyn Future<Output = Result<T, V4ClientError>> + Send + 'a>>,
) -> Result<T, Response> {
    let mut shared = ui.repository.lock().await;
    let reused = shared.is_some();
    for attempt in 0..2 {
        if shared.is_none() {
            *shared = Some(open(ui).await?);
        }
        let Some(repo) = shared.as_mut() else {
            continue;
        };
        match op(repo).await {
            Ok(value) => return Ok(value),
            Err(err) if reused && attempt == 0 && retryable(&err) => *shared = None,
            Err(err) => {
                let keep = !retryable(&err);
                if !keep {
                    *shared = None;
                }
                let server = ui.lock().settings.server.clone();
                return Err(answer(&server, err));
            }
        }
    }
    Err(error(
        StatusCode::BAD_GATEWAY,
        "the server closed the connection twice — check that it is running, then reload",
    ))
}

/// A failure as a response: 404 for a snapshot or path that is not there, else as
/// [`failure`].
fn answer(server: &str, err: V4ClientError) -> Response {
    match err {
        V4ClientError::SnapshotNotFound { .. } | V4ClientError::PathNotInSnapshot { .. } => {
            error(StatusCode::NOT_FOUND, err.to_string())
        }
        err => failure(server, err),
    }
}

/// Whether an error may be the connection's rather than the request's.
fn retryable(err: &V4ClientError) -> bool {
    !matches!(
        err,
        V4ClientError::Usage { .. }
            | V4ClientError::SnapshotNotFound { .. }
            | V4ClientError::PathNotInSnapshot { .. }
            | V4ClientError::Corrupt { .. }
            | V4ClientError::Repo { .. }
    )
}

/// Drops the shared connection (the settings or the passphrase changed).
pub(super) async fn forget_repository(ui: &Ui) {
    *ui.repository.lock().await = None;
}

/// A path parameter: hex of the path's bytes; empty or absent for the root.
fn path_param(hex_path: Option<&str>) -> Result<Vec<u8>, Box<Response>> {
    let text = hex_path.unwrap_or("");
    let Ok(bytes) = hex::decode(text) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "the path parameter must be the hex of the path's bytes — reload the page",
        )));
    };
    Ok(if bytes.is_empty() {
        b"/".to_vec()
    } else {
        bytes
    })
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn kind_name(entry: &TreeEntry) -> &'static str {
    match entry.kind {
        EntryKind::File { .. } => "file",
        EntryKind::Dir { .. } => "dir",
        EntryKind::Symlink { .. } => "symlink",
        _ => "other",
    }
}

fn entry_json(path: &[u8], entry: &TreeEntry) -> serde_json::Value {
    json!({
        "name": lossy(&entry.name),
        "path": lossy(path),
        "key": hex::encode(path),
        "kind": kind_name(entry),
        "size": entry.meta.size,
        "mtime": entry.meta.mtime.secs,
        "mode": format!("{:o}", entry.meta.mode & 0o7777),
    })
}

fn snapshot_json(info: &SnapshotInfo) -> serde_json::Value {
    let json = info.to_json();
    json!({
        "id": json.id,
        "short_id": json.short_id,
        "time": json.time,
        "hostname": json.hostname,
        "paths": json.paths,
        "tags": json.tags,
        "parent": json.parent,
        "files": json.summary.files,
        "dirs": json.summary.dirs,
        "bytes": json.summary.bytes,
        "added_bytes": json.summary.added_bytes,
    })
}

/// `GET /api/snapshots`: every snapshot, newest first, with the counters of its envelope.
/// Before the first v4 backup, or over v3, the list is empty and `note` says why.
pub(super) async fn list(State(ui): State<Arc<Ui>>) -> Response {
    if let Err(NotReady::Note(note)) = ready(&ui) {
        return Json(json!({ "snapshots": [], "note": note })).into_response();
    }
    let listed = with_repository(&ui, |repo| {
        Box::pin(async move {
            let warning = repo.opened().recovery_warning();
            Ok((repo.snapshots().await?, warning))
        })
    })
    .await;
    match listed {
        Ok((snapshots, warning)) => Json(json!({
            "snapshots": snapshots.iter().rev().map(snapshot_json).collect::<Vec<_>>(),
            "warning": warning,
            "note": null,
        }))
        .into_response(),
        Err(response) => response,
    }
}

/// Query of a directory page.
#[derive(Debug, Deserialize)]
pub(super) struct DirQuery {
    path: Option<String>,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
    /// `name` (folders first, the default), `size` or `mtime`.
    sort: Option<String>,
    /// `asc` (the default) or `desc`.
    order: Option<String>,
}

/// `GET /api/snapshots/{id}/dir?path=HEX&offset=&limit=&sort=&order=`: one page of one
/// directory, sorted.
pub(super) async fn dir(
    State(ui): State<Arc<Ui>>,
    UrlPath(snapshot): UrlPath<String>,
    Query(query): Query<DirQuery>,
) -> Response {
    let path = match path_param(query.path.as_deref()) {
        Ok(path) => path,
        Err(response) => return *response,
    };
    let listed = with_repository(&ui, |repo| {
        let (snapshot, path) = (snapshot.clone(), path.clone());
        Box::pin(async move { repo.dir(&snapshot, &path).await })
    })
    .await;
    let mut listing = match listed {
        Ok(listing) => listing,
        Err(response) => return response,
    };
    let descending = query.order.as_deref() == Some("desc");
    match query.sort.as_deref().unwrap_or("name") {
        "size" => listing.entries.sort_by_key(|e| e.meta.size),
        "mtime" => listing.entries.sort_by_key(|e| e.meta.mtime),
        "name" => listing
            .entries
            .sort_by_key(|e| !matches!(e.kind, EntryKind::Dir { .. })),
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot sort by {other:?}: choose name, size or mtime"),
            );
        }
    }
    if descending {
        listing.entries.reverse();
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let base = listing.path.as_os_str().as_encoded_bytes().to_vec();
    let page: Vec<_> = listing
        .entries
        .iter()
        .skip(query.offset)
        .take(limit)
        .map(|entry| {
            let mut path = base.clone();
            if path.last() != Some(&b'/') {
                path.push(b'/');
            }
            path.extend_from_slice(&entry.name);
            entry_json(&path, entry)
        })
        .collect();
    Json(json!({
        "snapshot": listing.snapshot.to_hex(),
        "path": lossy(&base),
        "key": if base == b"/" { String::new() } else { hex::encode(&base) },
        "total": listing.entries.len(),
        "offset": query.offset,
        "limit": limit,
        "entries": page,
    }))
    .into_response()
}

/// Query of a search.
#[derive(Debug, Deserialize)]
pub(super) struct SearchQuery {
    q: String,
}

/// The matcher of a search: a glob when the text has glob characters, else the text
/// anywhere in the name; case is ignored either way.
fn search_matcher(text: &str) -> Result<globset::GlobMatcher, Box<Response>> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "type part of a file name to search for (or a pattern such as *.pdf)",
        )));
    }
    let pattern = if text.contains(['*', '?', '[', '{']) {
        text.to_owned()
    } else {
        format!("*{}*", globset::escape(text))
    };
    globset::GlobBuilder::new(&pattern)
        .case_insensitive(true)
        .literal_separator(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|err| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("{text:?} is not a valid pattern ({err}) — search for plain text instead"),
            ))
        })
}

/// `GET /api/snapshots/{id}/search?q=TEXT`: entries whose name contains the text (or
/// matches the glob), at most [`MAX_HITS`].
pub(super) async fn search(
    State(ui): State<Arc<Ui>>,
    UrlPath(snapshot): UrlPath<String>,
    Query(query): Query<SearchQuery>,
) -> Response {
    let matcher = match search_matcher(&query.q) {
        Ok(matcher) => matcher,
        Err(response) => return *response,
    };
    let found = with_repository(&ui, |repo| {
        let (snapshot, matcher) = (snapshot.clone(), matcher.clone());
        Box::pin(async move { repo.search(&snapshot, &matcher, MAX_HITS).await })
    })
    .await;
    match found {
        Ok(found) => Json(json!({
            "hits": found.hits.iter().map(|hit| entry_json(&hit.path, &hit.entry)).collect::<Vec<_>>(),
            "truncated": found.truncated,
            "limit": MAX_HITS,
        }))
        .into_response(),
        Err(response) => response,
    }
}

/// `GET /api/snapshots/{id}/diff`: what changed since the previous snapshot of the same
/// host and paths (the first [`MAX_CHANGES`], and the total).
pub(super) async fn diff(
    State(ui): State<Arc<Ui>>,
    UrlPath(snapshot): UrlPath<String>,
) -> Response {
    let changed = with_repository(&ui, |repo| {
        let snapshot = snapshot.clone();
        Box::pin(async move {
            let id = repo.resolve(&snapshot).await?;
            let all = repo.snapshots().await?;
            let Some(at) = all.iter().position(|info| info.id == id) else {
                return Ok(None);
            };
            let this = &all[at].snapshot;
            let previous = all[..at]
                .iter()
                .rev()
                .find(|info| info.snapshot.host == this.host && info.snapshot.paths == this.paths)
                .map(|info| info.id);
            let Some(previous) = previous else {
                return Ok(None);
            };
            let page = repo
                .diff_limited(&previous.to_hex(), &id.to_hex(), MAX_CHANGES)
                .await?;
            Ok(Some((previous, page)))
        })
    })
    .await;
    match changed {
        Ok(None) => Json(json!({ "against": null, "total": 0, "changes": [] })).into_response(),
        Ok(Some((previous, page))) => Json(json!({
            "against": previous.to_hex(),
            "total": page.total,
            "added": page.added,
            "removed": page.removed,
            "modified": page.modified,
            "changes": page.changes.iter().map(|c| json!({
                "kind": c.kind,
                "path": lossy(&c.path),
                "key": hex::encode(&c.path),
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(response) => response,
    }
}

/// Body of a passphrase unlock.
#[derive(Deserialize)]
pub(super) struct PassphraseBody {
    passphrase: String,
}

/// Body of `POST /api/repository/key`.
#[derive(Deserialize)]
pub(super) struct SetPassphraseBody {
    /// The passphrase to replace (needed when the repository has one).
    #[serde(default)]
    current: Option<String>,
    /// The new passphrase.
    new: String,
}

/// `POST /api/repository/key`: sets the repository's passphrase (the first one, or a new
/// one replacing `current`), so that its backups can be restored on another machine.
pub(super) async fn set_passphrase(
    State(ui): State<Arc<Ui>>,
    Json(body): Json<SetPassphraseBody>,
) -> Response {
    let new = Zeroizing::new(body.new);
    let current = body.current.map(Zeroizing::new).filter(|c| !c.is_empty());
    if new.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "enter the new passphrase (and the same again to confirm it)",
        );
    }
    let changed = with_repository(&ui, |repo| {
        let (new, current) = (new.clone(), current.clone());
        Box::pin(async move {
            if current.is_none() && repo.opened().has_passphrase_key() {
                return Err(V4ClientError::Usage {
                    message:
                        "the repository already has a passphrase: enter the current passphrase too"
                            .into(),
                });
            }
            repo.change_passphrase(
                current.as_ref().map(|c| c.as_bytes()),
                new.as_bytes(),
                KdfParams::DEFAULT,
            )
            .await
        })
    })
    .await;
    match changed {
        Ok(replaced) => {
            let message = if replaced == 0 {
                "the repository's first passphrase is set: with it, these backups can be restored on another machine"
            } else {
                "passphrase changed: the old one no longer opens the repository"
            };
            Json(json!({ "replaced": replaced, "message": message })).into_response()
        }
        Err(response) => response,
    }
}

/// `POST /api/repository/passphrase`: keeps a passphrase in memory (never on disk) for
/// opening a repository this machine has no device key for; empty forgets it.
pub(super) async fn passphrase(
    State(ui): State<Arc<Ui>>,
    Json(body): Json<PassphraseBody>,
) -> Response {
    let body = Zeroizing::new(body.passphrase);
    *ui.passphrase.lock().await =
        (!body.is_empty()).then(|| Zeroizing::new(body.as_bytes().to_vec()));
    forget_repository(&ui).await;
    Json(json!({ "ok": true })).into_response()
}

/// Body of a restore to a path.
#[derive(Debug, Deserialize)]
pub(super) struct RestoreBody {
    /// Hex of the path in the snapshot (empty: everything).
    path: Option<String>,
    /// Directory on this machine.
    target: String,
}

/// `POST /api/snapshots/{id}/restore`: restores a file or folder into a directory on this
/// machine in the background; progress arrives in the state stream (`snapshot_restore`).
pub(super) async fn restore(
    State(ui): State<Arc<Ui>>,
    UrlPath(snapshot): UrlPath<String>,
    Json(body): Json<RestoreBody>,
) -> Response {
    let path = match path_param(body.path.as_deref()) {
        Ok(path) => path,
        Err(response) => return *response,
    };
    let target = PathBuf::from(body.target.trim());
    if !target.is_absolute() {
        return error(
            StatusCode::BAD_REQUEST,
            "type the folder to restore into as a full path, such as /home/me/restored",
        );
    }
    let id = {
        let mut inner = ui.lock();
        if inner
            .snapshot_restore
            .as_ref()
            .is_some_and(|view| view.state == "running")
        {
            return error(
                StatusCode::CONFLICT,
                "a restore is already running — wait for it to finish",
            );
        }
        inner.next_job += 1;
        let id = inner.next_job;
        inner.snapshot_restore = Some(RestoreView {
            id,
            snapshot: snapshot.clone(),
            path: lossy(&path),
            target: target.display().to_string(),
            state: "running",
            files_done: 0,
            files_total: 0,
            bytes_written: 0,
            bytes_total: 0,
            message: None,
        });
        id
    };
    ui.publish();
    let task_ui = Arc::clone(&ui);
    let mut stop = ui.shutdown.subscribe();
    // Ends with the UI: dropping the restore stops it between two writes (a file being
    // written stays in its temporary name, as after Ctrl-C on the CLI's restore).
    tokio::spawn(async move {
        tokio::select! {
            () = run_restore(task_ui, snapshot, path, target) => {}
            _ = stop.wait_for(|stopped| *stopped) => {}
        }
    });
    Json(json!({ "id": id })).into_response()
}

async fn run_restore(ui: Arc<Ui>, snapshot: String, path: Vec<u8>, target: PathBuf) {
    let update = |change: &dyn Fn(&mut RestoreView)| {
        if let Some(view) = ui.lock().snapshot_restore.as_mut() {
            change(view);
        }
        ui.publish();
    };
    let Ok(mut repo) = open(&ui).await else {
        update(&|view| {
            view.state = "failed";
            view.message = Some("cannot open the repository — check the server settings and that the server is running".into());
        });
        return;
    };
    let progress = RestoreProgress::default();
    let outcome = async {
        let (files, bytes) = repo.tally(&snapshot, &path).await?;
        update(&|view| {
            view.files_total = files;
            view.bytes_total = bytes;
        });
        let filter = RestoreFilter::default();
        let restored = repo.restore_with_progress(&snapshot, &path, &target, &filter, &progress);
        tokio::pin!(restored);
        // The progress ticks in this future, not a task of its own, so that nothing
        // outlives the restore.
        let mut every = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tokio::select! {
                restored = &mut restored => break restored,
                _ = every.tick() => update(&|view| {
                    view.files_done = progress.files_done();
                    view.bytes_written = progress.bytes_written();
                }),
            }
        }
    }
    .await;
    let server = ui.lock().settings.server.clone();
    let (state, message) = match outcome {
        Ok(summary) => (
            "succeeded",
            format!(
                "{} file(s) restored, {} already in place, into {}",
                summary.files_restored,
                summary.files_skipped,
                target.display()
            ),
        ),
        Err(err) => (
            "failed",
            super::remote::for_the_page(&crate::ClientError::V4 { server, error: err }.to_string()),
        ),
    };
    update(&|view| {
        view.files_done = progress.files_done();
        view.bytes_written = progress.bytes_written();
        view.state = state;
        view.message = Some(message.clone());
    });
    let _ignored = repo.into_remote().close().await;
}

/// Query of a download.
#[derive(Debug, Deserialize)]
pub(super) struct DownloadQuery {
    path: Option<String>,
    /// `tar` (the default) or `zip`: what a folder is archived as.
    format: Option<String>,
}

/// `GET /api/snapshots/{id}/download?path=HEX&format=tar|zip`: a file as it is (with its
/// length), or a folder as a `.tar` or `.zip` streamed while its blobs are fetched and
/// verified (see `snapshot/export_zip.rs` for what the zip holds). A failure midway aborts
/// the response, so the browser reports a failed download rather than saving a short file.
pub(super) async fn download(
    State(ui): State<Arc<Ui>>,
    UrlPath(snapshot): UrlPath<String>,
    Query(query): Query<DownloadQuery>,
) -> Response {
    let path = match path_param(query.path.as_deref()) {
        Ok(path) => path,
        Err(response) => return *response,
    };
    let requested = query.format.as_deref().unwrap_or("tar");
    let Ok(format) = requested.parse::<ArchiveFormat>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("cannot download as {requested:?}: choose format=tar or format=zip"),
        );
    };
    let (extension, archive_type) = (format.extension(), format.media_type());
    let mut repo = match open(&ui).await {
        Ok(repo) => repo,
        Err(response) => return response,
    };
    let server = ui.lock().settings.server.clone();
    let (id, _, entry) = match repo.stat(&snapshot, &path).await {
        Ok(found) => found,
        Err(err) => return answer(&server, err),
    };
    let (name, length) = match &entry {
        None => (format!("snapshot-{}.{extension}", &id.to_hex()[..8]), None),
        Some(
            entry @ TreeEntry {
                kind: EntryKind::File { .. },
                ..
            },
        ) => (lossy(&entry.name), Some(entry.meta.size)),
        Some(entry) => (format!("{}.{extension}", lossy(&entry.name)), None),
    };
    let (mut writer, reader) = tokio::io::duplex(DOWNLOAD_BUFFER);
    let (result_tx, result_rx) = tokio::sync::oneshot::channel();
    let spec = id.to_hex();
    tokio::spawn(async move {
        let dumped = repo.export(&spec, &path, format, &mut writer).await;
        drop(writer);
        let _ = result_tx.send(dumped.map(|_| ()));
        let _ignored = repo.into_remote().close().await;
    });
    // The content, then one last item: nothing when the export succeeded, an error (which
    // aborts the response) when it did not.
    let ending = futures_util::stream::once(async move {
        match result_rx.await {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(Err(std::io::Error::other(err.to_string()))),
            Err(_) => Some(Err(std::io::Error::other("the export stopped"))),
        }
    })
    .filter_map(|item| async move { item });
    let stream = tokio_util::io::ReaderStream::new(reader).chain(ending);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    let content_type = if length.is_some() {
        "application/octet-stream"
    } else {
        archive_type
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&content_disposition(&name)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}
