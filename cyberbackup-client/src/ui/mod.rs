//! `cyberbackup-client ui`: a local web UI (axum) over the [`Client`](crate::Client) library.
//!
//! A single-page app, embedded in the binary (no CDN), served on 127.0.0.1:9090 by default.
//! The user keeps a server address and name, adds files by drag and drop or the file picker
//! (uploaded to this server and staged in a temporary directory, within a size limit, deleted
//! after the backup) or by typing a local path (file or directory), starts a backup and
//! watches per-file and overall progress pushed over Server-Sent Events (`/api/events`; each
//! new stream starts with the whole current state, so a reconnecting page catches up).
//! Cancel stops the backup in-process. Finished backups go to a small history file
//! ([`store`]).
//!
//! Backups use protocol v4 ([`crate::v4::backup`], identity `cyberbackup-v4.json`) unless the
//! settings choose v3 for a legacy server ([`crate::Client`], `me.info`). Over v4 the page
//! also lists the user's files and versions on the server (`GET /api/versions`) and restores
//! one: `POST /api/restores` has the library download it into the staging directory and
//! verify its size and SHA-256, and the page then downloads it once from
//! `GET /api/restores/{id}`, streamed from that verified file (`ui/remote.rs`).
//!
//! Off loopback a token is required (`--token`): `Authorization: Bearer <token>` or
//! `?token=<token>`, compared in constant time. Requests that change anything must carry the
//! header `X-CyberBackup-UI: 1` (a cross-site page cannot send it without a CORS preflight,
//! which this server never grants), and without a token the `Host` header must name
//! `localhost` or a loopback address (no DNS rebinding; the rule is
//! [`cyberbackup_core::web::host_allowed`], shared with the server's dashboard). Every answer
//! carries [`cyberbackup_core::web::SECURITY_HEADERS`] (no framing, no MIME sniffing).

mod job;
mod remote;
mod snapshots;
mod sources;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use cyberbackup_core::web;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::ClientError;
use crate::identity::IdentityFile;
use store::{HistoryEntry, Settings, Store, StoreData, UiProtocol};

/// Default listening address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9090";
/// Default staging limit for uploaded files (MiB).
pub const DEFAULT_MAX_STAGING_MB: u64 = 1024;
/// File name of the UI's settings and history in the data directory.
pub const STORE_FILE: &str = "ui-history.json";
/// Header every state-changing request must carry.
pub const UI_HEADER: &str = "x-cyberbackup-ui";

const INDEX_HTML: &str = include_str!("assets/index.html");
const UI_JS: &str = include_str!("assets/ui.js");
const SNAPSHOTS_JS: &str = include_str!("assets/snapshots.js");
const SOURCES_JS: &str = include_str!("assets/sources.js");
const UI_CSS: &str = include_str!("assets/ui.css");

/// How the UI server runs.
#[derive(Debug, Clone)]
pub struct UiOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Token required from every request (mandatory off loopback).
    pub token: Option<String>,
    /// Largest total size of uploaded files staged at once.
    pub max_staging_bytes: u64,
    /// History and settings file.
    pub store_path: PathBuf,
    /// Identity file used for protocol v3 backups (`me.info`).
    pub identity: IdentityFile,
    /// Identity file used for protocol v4 (backups, list, restore).
    pub v4_identity: PathBuf,
    /// Reconnects after network errors during a backup.
    pub retries: u32,
    /// Server address proposed when the store has none.
    pub default_server: Option<String>,
    /// Client name proposed when the store has none.
    pub default_name: Option<String>,
}

impl UiOptions {
    /// Options with the defaults: 127.0.0.1:9090, 1 GiB staging, 2 retries, and the v4
    /// identity `cyberbackup-v4.json` beside the v3 `identity` (as the CLI does with
    /// `--identity`).
    #[must_use]
    pub fn new(store_path: PathBuf, identity: IdentityFile) -> Self {
        let v4_identity = crate::v4::identity_beside(identity.path());
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
            max_staging_bytes: DEFAULT_MAX_STAGING_MB * 1024 * 1024,
            store_path,
            identity,
            v4_identity,
            retries: 2,
            default_server: None,
            default_name: None,
        }
    }

    /// `$XDG_DATA_HOME/cyberbackup/ui-history.json`, else
    /// `~/.local/share/cyberbackup/ui-history.json`.
    ///
    /// # Errors
    /// [`ClientError::Usage`] when neither variable is set.
    pub fn default_store_path() -> Result<PathBuf, ClientError> {
        Ok(Self::default_data_dir()?.join(STORE_FILE))
    }

    /// The client's data directory (UI history, sources, schedule state):
    /// `$XDG_DATA_HOME/cyberbackup`, else `~/.local/share/cyberbackup`.
    ///
    /// # Errors
    /// [`ClientError::Usage`] when neither variable is set.
    pub fn default_data_dir() -> Result<PathBuf, ClientError> {
        let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let base = match (from_env("XDG_DATA_HOME"), from_env("HOME")) {
            (Some(data), _) => PathBuf::from(data),
            (None, Some(home)) => PathBuf::from(home).join(".local").join("share"),
            (None, None) => {
                return Err(ClientError::Usage {
                    message: "cannot find a place for the client's data: set HOME or XDG_DATA_HOME, or pass --data-dir".into(),
                });
            }
        };
        Ok(base.join("cyberbackup"))
    }
}

/// One file or directory the next backup will send.
#[derive(Debug, Clone, Serialize)]
struct Item {
    id: u64,
    /// Stored name (base name).
    name: String,
    /// Local path (the staged copy for uploads).
    path: PathBuf,
    size: u64,
    /// `upload` or `path`.
    source: &'static str,
}

struct Inner {
    settings: Settings,
    history: Vec<HistoryEntry>,
    items: Vec<Item>,
    next_item: u64,
    staged_bytes: u64,
    job: Option<job::JobView>,
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
    next_job: u64,
    notice: Option<String>,
    /// Verified restores waiting for the page to download them, by id.
    restores: std::collections::BTreeMap<String, remote::Prepared>,
    /// The last restore of a snapshot path to a folder on this machine.
    snapshot_restore: Option<snapshots::RestoreView>,
    /// The latest progress of each scheduled backup running in this process.
    schedule_progress: std::collections::BTreeMap<String, crate::schedule::ScheduleEvent>,
}

/// Shared state of the UI server.
struct Ui {
    options: UiOptions,
    store: Store,
    staging: tempfile::TempDir,
    inner: Mutex<Inner>,
    state_tx: watch::Sender<Arc<serde_json::Value>>,
    shutdown: watch::Sender<bool>,
    /// The repository connection the snapshot browser shares (opened on first use).
    repository: tokio::sync::Mutex<Option<snapshots::Browser>>,
    /// A passphrase the page gave for the repository, in memory only.
    passphrase: tokio::sync::Mutex<Option<zeroize::Zeroizing<Vec<u8>>>>,
    /// The scheduler of the data directory's sources (set once the `Ui` exists, since it
    /// reads the settings and reports progress through it).
    scheduler: std::sync::OnceLock<crate::schedule::Scheduler>,
}

impl Ui {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends the current state to every event stream.
    fn publish(&self) {
        let snapshot = {
            let inner = self.lock();
            self.snapshot(&inner)
        };
        self.state_tx.send_replace(Arc::new(snapshot));
    }

    fn snapshot(&self, inner: &Inner) -> serde_json::Value {
        let history: Vec<&HistoryEntry> = inner.history.iter().rev().take(50).collect();
        let settings = &inner.settings;
        json!({
            "settings": {
                "server": settings.server,
                "name": settings.name,
                "protocol": settings.protocol,
                "server_fingerprint": settings.server_fingerprint,
                "enroll_token_set": settings.enroll_token.is_some(),
            },
            "items": inner.items,
            "staging": { "used": inner.staged_bytes, "limit": self.options.max_staging_bytes },
            "job": inner.job.as_ref().map(job::JobView::to_json),
            "history": history,
            "notice": inner.notice,
            "snapshot_restore": inner.snapshot_restore,
        })
    }

    fn save_store(&self, inner: &Inner) -> Result<(), String> {
        self.store.save(&StoreData {
            settings: inner.settings.clone(),
            history: inner.history.clone(),
        })
    }
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui")
            .field("listen", &self.options.listen)
            .finish_non_exhaustive()
    }
}

/// Limits of the UI's HTTP listener: a request's headers (and a kept-alive connection's next
/// request) within 10 s, 64 connections at once, 5 s for open requests at shutdown.
pub const UI_HTTP_LIMITS: cyberbackup_http::HttpLimits = cyberbackup_http::HttpLimits {
    header_read_timeout: Duration::from_secs(10),
    max_connections: 64,
    shutdown_grace: Duration::from_secs(5),
};

/// The UI server, bound and ready to [`serve`](Self::serve).
#[derive(Debug)]
pub struct UiServer {
    listener: TcpListener,
    ui: Arc<Ui>,
}

impl UiServer {
    /// Loads the store, creates the staging directory and binds `options.listen`.
    ///
    /// # Errors
    /// [`ClientError::Usage`] when the address is not loopback and no token is given, when
    /// the store is damaged, or when the address cannot be bound.
    pub async fn bind(options: UiOptions) -> Result<Self, ClientError> {
        let usage = |message: String| ClientError::Usage { message };
        if !options.listen.ip().is_loopback() && options.token.is_none() {
            return Err(usage(format!(
                "the UI would listen on {}, which other machines can reach: give --token (or CYBERBACKUP_UI_TOKEN), or listen on 127.0.0.1",
                options.listen
            )));
        }
        if options.token.as_deref() == Some("") {
            return Err(usage("the UI token must not be empty".into()));
        }
        let store = Store::new(&options.store_path);
        let mut data = store.load().map_err(usage)?;
        if data.settings.server.is_empty() {
            data.settings.server = options.default_server.clone().unwrap_or_default();
        }
        if data.settings.name.is_empty() {
            data.settings.name = options.default_name.clone().unwrap_or_default();
        }
        let staging = tempfile::Builder::new()
            .prefix("cyberbackup-ui-")
            .tempdir()
            .map_err(|err| {
                usage(format!(
                    "cannot create a staging directory for uploads: {err} — check TMPDIR"
                ))
            })?;
        let listener = TcpListener::bind(options.listen).await.map_err(|err| {
            usage(format!(
                "cannot listen on {}: {err} — is another UI running? choose another address with --listen",
                options.listen
            ))
        })?;
        let next_job = data.history.iter().map(|h| h.id).max().unwrap_or(0) + 1;
        let (state_tx, _) = watch::channel(Arc::new(serde_json::Value::Null));
        let (shutdown, _) = watch::channel(false);
        let ui = Arc::new(Ui {
            options,
            store,
            staging,
            inner: Mutex::new(Inner {
                settings: data.settings,
                history: data.history,
                items: Vec::new(),
                next_item: 1,
                staged_bytes: 0,
                job: None,
                cancel: None,
                next_job,
                notice: None,
                restores: std::collections::BTreeMap::new(),
                snapshot_restore: None,
                schedule_progress: std::collections::BTreeMap::new(),
            }),
            state_tx,
            shutdown,
            repository: tokio::sync::Mutex::new(None),
            passphrase: tokio::sync::Mutex::new(None),
            scheduler: std::sync::OnceLock::new(),
        });
        let _first = ui.scheduler.set(scheduler_of(&ui));
        ui.publish();
        Ok(Self { listener, ui })
    }

    /// The bound address.
    ///
    /// # Errors
    /// The socket's error, as [`ClientError::Usage`].
    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        self.listener
            .local_addr()
            .map_err(|err| ClientError::Usage {
                message: format!("cannot read the UI address: {err}"),
            })
    }

    /// Serves until `shutdown` completes (within [`UI_HTTP_LIMITS`]); then cancels a running
    /// backup, ends the event streams and removes the staging directory.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for listener failures.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ClientError> {
        let ui = Arc::clone(&self.ui);
        let app = router(Arc::clone(&self.ui));
        let scheduled = self.ui.scheduler.get().cloned().map(|scheduler| {
            let mut stopped = self.ui.shutdown.subscribe();
            tokio::spawn(async move {
                scheduler
                    .run(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                    .await;
            })
        });
        cyberbackup_http::serve(self.listener, app, UI_HTTP_LIMITS, async move {
            shutdown.await;
            ui.shutdown.send_replace(true);
            if let Some(cancel) = ui.lock().cancel.take() {
                let _ = cancel.send(());
            }
        })
        .await;
        if let Some(task) = scheduled {
            let _ = task.await;
        }
        Ok(())
    }
}

/// The UI's scheduler: the sources of the store's directory, backed up with the settings
/// the page saved and this UI's v4 identity; its events go to the page.
fn scheduler_of(ui: &Arc<Ui>) -> crate::schedule::Scheduler {
    let data_dir = ui
        .options
        .store_path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let for_settings = Arc::downgrade(ui);
    let for_events = Arc::downgrade(ui);
    crate::schedule::Scheduler::new(
        data_dir,
        ui.options.v4_identity.clone(),
        Arc::new(move || {
            for_settings
                .upgrade()
                .map(|ui| ui.lock().settings.clone())
                .ok_or_else(|| "the UI is stopping".to_owned())
        }),
        Arc::new(move |event| {
            if let Some(ui) = for_events.upgrade() {
                sources::record_event(&ui, event);
            }
        }),
    )
}

fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/assets/ui.js",
            get(|| async { asset(UI_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/snapshots.js",
            get(|| async { asset(SNAPSHOTS_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/sources.js",
            get(|| async { asset(SOURCES_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/ui.css",
            get(|| async { asset(UI_CSS, "text/css; charset=utf-8") }),
        )
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .route("/api/history", get(history))
        .route("/api/settings", put(settings))
        .route(
            "/api/uploads",
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/paths", post(add_path))
        .route("/api/items/{id}", delete(remove_item))
        .route("/api/backup", post(start_backup))
        .route("/api/cancel", post(cancel))
        .route("/api/versions", get(remote::versions))
        .route("/api/restores", post(remote::prepare))
        .route("/api/restores/{id}", get(remote::download))
        .route("/api/snapshots", get(snapshots::list))
        .route("/api/snapshots/{id}/dir", get(snapshots::dir))
        .route("/api/snapshots/{id}/search", get(snapshots::search))
        .route("/api/snapshots/{id}/diff", get(snapshots::diff))
        .route("/api/snapshots/{id}/restore", post(snapshots::restore))
        .route("/api/snapshots/{id}/download", get(snapshots::download))
        .route("/api/repository/passphrase", post(snapshots::passphrase))
        .route("/api/repository/key", post(snapshots::set_passphrase))
        .route("/api/sources", get(sources::list).post(sources::save))
        .route("/api/sources/{name}", delete(sources::remove))
        .route("/api/sources/{name}/run", post(sources::run_now))
        .route("/api/sources/{name}/pause", post(sources::pause))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such page — open / for the backup UI",
            )
        })
        .layer(middleware::from_fn_with_state(Arc::clone(&ui), guard))
        .layer(middleware::map_response(security_headers))
        .with_state(ui)
}

async fn security_headers(mut response: Response) -> Response {
    for (name, value) in web::SECURITY_HEADERS {
        response.headers_mut().insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Token, `Host` and `X-CyberBackup-UI` checks (see the module docs).
async fn guard(State(ui): State<Arc<Ui>>, request: Request, next: Next) -> Response {
    if let Some(token) = &ui.options.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
            .or_else(|| query_token(request.uri()));
        let valid = presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(token.as_bytes())));
        if !valid {
            return error(
                StatusCode::UNAUTHORIZED,
                "this UI needs its token — open the address printed by `cyberbackup-client ui`, which ends in ?token=…",
            );
        }
    } else if !host_is_loopback(&request, ui.options.listen) {
        return error(
            StatusCode::FORBIDDEN,
            "this UI only answers requests addressed to 127.0.0.1 or localhost — open http://127.0.0.1:<port>/",
        );
    }
    if request.method() != Method::GET && !request.headers().contains_key(UI_HEADER) {
        return error(
            StatusCode::FORBIDDEN,
            "changes need the X-CyberBackup-UI header (sent by the UI page itself); cross-site requests are refused",
        );
    }
    next.run(request).await
}

/// Without a token the UI listens on loopback only (`cyberbackup-client ui` refuses
/// otherwise), so the names it answers are `localhost` and loopback addresses.
fn host_is_loopback(request: &Request, listen: SocketAddr) -> bool {
    request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| web::host_allowed(host, listen.ip(), &[]))
}

/// The `token` parameter of the URL's query, percent-decoded.
fn query_token(uri: &axum::http::Uri) -> Option<String> {
    #[derive(Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    axum::extract::Query::<TokenQuery>::try_from_uri(uri)
        .ok()?
        .0
        .token
}

async fn state(State(ui): State<Arc<Ui>>) -> Response {
    Json(ui.state_tx.borrow().as_ref().clone()).into_response()
}

async fn history(State(ui): State<Arc<Ui>>) -> Response {
    let history = ui.lock().history.clone();
    Json(history).into_response()
}

/// The state stream: the current state at once, then every change (at most ten a second).
async fn events(State(ui): State<Arc<Ui>>) -> Response {
    let rx = ui.state_tx.subscribe();
    let stop = ui.shutdown.subscribe();
    let stream =
        futures_util::stream::unfold((rx, stop, true), |(mut rx, mut stop, first)| async move {
            if *stop.borrow() {
                return None;
            }
            if !first {
                tokio::time::sleep(Duration::from_millis(100)).await;
                tokio::select! {
                    changed = rx.changed() => changed.ok()?,
                    _ = stop.changed() => return None,
                }
            }
            let snapshot = Arc::clone(&rx.borrow_and_update());
            let event = Event::default()
                .event("state")
                .json_data(snapshot.as_ref())
                .unwrap_or_else(|_| Event::default().event("state").data("null"));
            Some((Ok::<_, std::convert::Infallible>(event), (rx, stop, false)))
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Debug, Deserialize)]
struct SettingsBody {
    server: String,
    name: String,
    /// Absent: keep the current protocol.
    protocol: Option<UiProtocol>,
    /// Absent: keep; empty: no pin.
    server_fingerprint: Option<String>,
    /// Absent: keep; empty: forget the token.
    enroll_token: Option<String>,
}

async fn settings(State(ui): State<Arc<Ui>>, Json(body): Json<SettingsBody>) -> Response {
    let server = body.server.trim().to_owned();
    let name = body.name.trim().to_owned();
    if let Err(why) = crate::legacy::parse_address(&server) {
        return error(StatusCode::BAD_REQUEST, format!("server address: {why}"));
    }
    if name.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "enter a client name (the name this computer registers with on the server)",
        );
    }
    let fingerprint = body
        .server_fingerprint
        .map(|f| f.trim().to_owned())
        .map(|f| (!f.is_empty()).then_some(f));
    if let Some(Some(text)) = &fingerprint {
        if text
            .parse::<cyberbackup_core::v4::noise::Fingerprint>()
            .is_err()
        {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "server fingerprint {text:?} is not sha256: followed by 64 hex digits — copy it from `cyberbackup-server fingerprint`, or leave the field empty to trust the server's key on first use"
                ),
            );
        }
    }
    let token = body
        .enroll_token
        .map(|t| t.trim().to_owned())
        .map(|t| (!t.is_empty()).then_some(t));
    let saved = {
        let mut inner = ui.lock();
        let old = inner.settings.clone();
        inner.settings = Settings {
            server,
            name,
            protocol: body.protocol.unwrap_or(old.protocol),
            server_fingerprint: fingerprint.unwrap_or(old.server_fingerprint),
            enroll_token: token.unwrap_or(old.enroll_token),
        };
        ui.save_store(&inner)
    };
    snapshots::forget_repository(&ui).await;
    ui.publish();
    match saved {
        Ok(()) => Json(json!({ "ok": true })).into_response(),
        Err(message) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
}

/// Streams each uploaded file to the staging directory, chunk by chunk, within the limit.
async fn upload(State(ui): State<Arc<Ui>>, mut multipart: Multipart) -> Response {
    let mut added = Vec::new();
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(err) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the upload was cut off or malformed ({err}) — try adding the file again"
                    ),
                );
            }
        };
        let Some(name) = field.file_name().map(base_name) else {
            continue;
        };
        if name.is_empty() || name == "." || name == ".." {
            return error(
                StatusCode::BAD_REQUEST,
                "an uploaded file has no usable name",
            );
        }
        let id = {
            let mut inner = ui.lock();
            let id = inner.next_item;
            inner.next_item += 1;
            id
        };
        let dir = ui.staging.path().join(id.to_string());
        let path = dir.join(&name);
        let written = stage(&ui, &mut field, &dir, &path).await;
        match written {
            Ok(size) => {
                let item = Item {
                    id,
                    name,
                    path,
                    size,
                    source: "upload",
                };
                ui.lock().items.push(item.clone());
                added.push(item);
            }
            Err(response) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                ui.publish();
                return response;
            }
        }
    }
    ui.publish();
    Json(json!({ "added": added })).into_response()
}

async fn stage(
    ui: &Ui,
    field: &mut axum::extract::multipart::Field<'_>,
    dir: &Path,
    path: &Path,
) -> Result<u64, Response> {
    let io_fail = |err: std::io::Error| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "cannot stage the upload in {}: {err} — check free space in the temporary directory",
                ui.staging.path().display()
            ),
        )
    };
    tokio::fs::create_dir_all(dir).await.map_err(io_fail)?;
    let mut file = tokio::fs::File::create(path).await.map_err(io_fail)?;
    let mut size = 0u64;
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(err) => {
                release(ui, size);
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("the upload was interrupted ({err}) — try adding the file again"),
                ));
            }
        };
        let len = chunk.len() as u64;
        {
            let mut inner = ui.lock();
            if inner.staged_bytes + len > ui.options.max_staging_bytes {
                inner.staged_bytes -= size;
                drop(inner);
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the uploaded files exceed the staging limit of {} MiB — add large files by typing their path instead, or restart the UI with a larger --max-staging-mb",
                        ui.options.max_staging_bytes / (1024 * 1024)
                    ),
                ));
            }
            inner.staged_bytes += len;
        }
        size += len;
        if let Err(err) = file.write_all(&chunk).await {
            release(ui, size);
            return Err(io_fail(err));
        }
    }
    if let Err(err) = file.flush().await {
        release(ui, size);
        return Err(io_fail(err));
    }
    Ok(size)
}

fn release(ui: &Ui, bytes: u64) {
    let mut inner = ui.lock();
    inner.staged_bytes = inner.staged_bytes.saturating_sub(bytes);
}

fn base_name(name: &str) -> String {
    name.rsplit(['/', '\\']).next().unwrap_or("").to_owned()
}

#[derive(Debug, Deserialize)]
struct PathBody {
    path: String,
}

async fn add_path(State(ui): State<Arc<Ui>>, Json(body): Json<PathBody>) -> Response {
    let path = PathBuf::from(body.path.trim());
    if path.as_os_str().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "type the path of a file or directory",
        );
    }
    if !path.is_absolute() {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{} is not an absolute path — type the full path, e.g. /home/me/notes.txt",
                path.display()
            ),
        );
    }
    let files = match tokio::task::spawn_blocking(move || {
        crate::cli::expand_paths(std::slice::from_ref(&path), &[], &[]).map(|files| (path, files))
    })
    .await
    {
        Ok(Ok((path, files))) => {
            if !path.exists() {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("{} does not exist — check the path", path.display()),
                );
            }
            files
        }
        Ok(Err(err)) => return error(StatusCode::BAD_REQUEST, err.to_string()),
        Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    };
    if files.is_empty() {
        return error(StatusCode::BAD_REQUEST, "that directory holds no files");
    }
    let mut added = Vec::new();
    {
        let mut inner = ui.lock();
        for file in files {
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            let id = inner.next_item;
            inner.next_item += 1;
            let item = Item {
                id,
                name: file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                path: file,
                size,
                source: "path",
            };
            inner.items.push(item.clone());
            added.push(item);
        }
    }
    ui.publish();
    Json(json!({ "added": added })).into_response()
}

async fn remove_item(State(ui): State<Arc<Ui>>, UrlPath(id): UrlPath<u64>) -> Response {
    let removed = {
        let mut inner = ui.lock();
        if inner.job.as_ref().is_some_and(job::JobView::is_running) {
            return error(
                StatusCode::CONFLICT,
                "a backup is running — cancel it or wait before changing the file list",
            );
        }
        let position = inner.items.iter().position(|i| i.id == id);
        let removed = position.map(|p| inner.items.remove(p));
        if let Some(item) = removed.as_ref().filter(|i| i.source == "upload") {
            inner.staged_bytes = inner.staged_bytes.saturating_sub(item.size);
        }
        removed
    };
    let Some(item) = removed else {
        return error(StatusCode::NOT_FOUND, "that file is no longer in the list");
    };
    if item.source == "upload" {
        if let Some(dir) = item.path.parent() {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
    }
    ui.publish();
    Json(json!({ "ok": true })).into_response()
}

async fn start_backup(State(ui): State<Arc<Ui>>) -> Response {
    match job::start(&ui) {
        Ok(id) => Json(json!({ "job": id })).into_response(),
        Err((status, message)) => error(status, message),
    }
}

async fn cancel(State(ui): State<Arc<Ui>>) -> Response {
    let cancel = ui.lock().cancel.take();
    match cancel {
        Some(cancel) => {
            let _ = cancel.send(());
            Json(json!({ "ok": true })).into_response()
        }
        None => error(StatusCode::CONFLICT, "no backup is running"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_names_lose_their_directories() {
        assert_eq!(base_name("C:\\Users\\me\\a.txt"), "a.txt");
        assert_eq!(base_name("dir/b.txt"), "b.txt");
        assert_eq!(base_name("c.txt"), "c.txt");
    }

    #[test]
    fn token_query_is_decoded() {
        let uri = |text: &str| text.parse::<axum::http::Uri>().unwrap();
        assert_eq!(
            query_token(&uri("/?a=1&token=x%2By+z")),
            Some("x+y z".into())
        );
        assert_eq!(query_token(&uri("/?a=1")), None);
        assert_eq!(query_token(&uri("/")), None);
    }
}
