//! The admin HTTP listener: the dashboard (embedded static pages), the JSON API under
//! `/api/v1/`, `/health`, `/ready` and `/metrics` (Prometheus text format).
//!
//! It runs on its own address (`admin_listen`, default 127.0.0.1:9091), separate from the
//! backup port. Requests from other hosts need the configured `admin_token`
//! (`Authorization: Bearer <token>` or `?token=<token>`, compared in constant time); without
//! a token only loopback peers are served. `/health` and `/ready` never need the token, so
//! probes work without secrets. Every other request must name this listener in its `Host`
//! header (`localhost`, an IP address, or a name in `admin_hosts`; else 421), so a
//! DNS-rebinding page cannot read the API through a browser on the server's machine. Every
//! answer carries the security headers of [`cyberbackup_core::web::SECURITY_HEADERS`]. See
//! `docs/admin-api.md`.

mod accounts;
mod api;
mod diagnostics;
mod health;
mod process;
mod repo_api;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cyberbackup_core::web;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::live::{
    ActiveTransfer, LiveState, THROUGHPUT_SAMPLE_SECS, ThroughputSample, failure_reason,
};
pub use crate::telemetry::{RecentEvent, RecentEvents, RecentLayer};

use crate::catalog::{Catalog, CatalogStats};
use crate::config::{AdminToken, ServerConfig};
use crate::error::ServerError;
use crate::shared::{Shared, Stats};
use crate::storage::Storage;

/// Time a client of the admin listener has to send a request's headers (and, on a kept-alive
/// connection, to start its next request).
pub const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the admin listener serves at once; more wait in its backlog. The listener
/// shares the backup server's descriptors, so it must not take them all.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// How long catalog totals (a count over the whole `files` table) are reused.
const STATS_CACHE: Duration = Duration::from_secs(5);

const INDEX_HTML: &str = include_str!("assets/index.html");
const ADMIN_JS: &str = include_str!("assets/admin.js");
const ADMIN_CSS: &str = include_str!("assets/admin.css");

/// The wall clock the dashboard ages backups by: real time unless a test injects its own
/// ([`AdminServer::set_clock`]), so a test can move time instead of waiting.
#[derive(Clone)]
pub struct AdminClock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl AdminClock {
    /// A clock that reads `now`.
    pub fn new(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The current time by this clock.
    #[must_use]
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl Default for AdminClock {
    /// The system clock.
    fn default() -> Self {
        Self::new(SystemTime::now)
    }
}

impl std::fmt::Debug for AdminClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AdminClock").field(&self.now()).finish()
    }
}

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct AdminState {
    pub(crate) config: ServerConfig,
    pub(crate) catalog: Catalog,
    pub(crate) storage: Storage,
    pub(crate) stats: Arc<Stats>,
    pub(crate) live: Arc<LiveState>,
    pub(crate) repo: crate::repository::RepoStore,
    /// The time backups are aged by (accounts, their status and metrics).
    pub(crate) clock: AdminClock,
    token: Option<AdminToken>,
    /// The address the listener is bound to (the `Host` check accepts it).
    listen: SocketAddr,
    stats_cache: Mutex<Option<(Instant, CatalogStats)>>,
    /// The checks `/ready` found failing last time (their details are logged on a change).
    ready_failing: Mutex<Vec<&'static str>>,
}

impl AdminState {
    /// Catalog totals, cached for [`STATS_CACHE`].
    pub(crate) async fn catalog_stats(&self) -> Result<CatalogStats, crate::CatalogError> {
        if let Some((at, stats)) = *self
            .stats_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            if at.elapsed() < STATS_CACHE {
                return Ok(stats);
            }
        }
        let stats = self.catalog.stats().await?;
        *self
            .stats_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), stats));
        Ok(stats)
    }

    /// Records the checks `/ready` found failing now; whether that differs from last time.
    fn ready_failing_changed(&self, failing: &[&'static str]) -> bool {
        let mut last = self
            .ready_failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.as_slice() == failing {
            return false;
        }
        *last = failing.to_vec();
        true
    }
}

/// The admin listener, bound and ready to [`serve`](Self::serve).
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    state: AdminState,
}

impl AdminServer {
    /// Binds the admin listener of the server whose state is `shared` at `address`
    /// (through [`crate::Server::bind_admin`]).
    pub(crate) async fn bind(shared: &Shared, address: SocketAddr) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(address).await.map_err(|source| {
            ServerError::io(
                format!(
                    "cannot listen for the admin dashboard on {address} (is the port in use? set admin_listen, or admin_enabled = false)"
                ),
                source,
            )
        })?;
        let listen = listener
            .local_addr()
            .map_err(|source| ServerError::io("cannot read the admin listening address", source))?;
        Ok(Self {
            listener,
            state: AdminState {
                config: shared.config.clone(),
                catalog: shared.catalog.clone(),
                storage: shared.storage.clone(),
                stats: Arc::clone(&shared.stats),
                live: Arc::clone(&shared.live),
                repo: shared.repo.clone(),
                clock: AdminClock::default(),
                token: shared.config.admin_token.clone(),
                listen,
                stats_cache: Mutex::new(None),
                ready_failing: Mutex::new(Vec::new()),
            },
        })
    }

    /// Replaces the clock the dashboard ages backups by (the system clock by default).
    pub fn set_clock(&mut self, clock: AdminClock) {
        self.state.clock = clock;
    }

    /// The bound address.
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener
            .local_addr()
            .map_err(|source| ServerError::io("cannot read the admin listening address", source))
    }

    /// Serves until `shutdown` is cancelled (open requests then get `shutdown_grace_secs`);
    /// also samples the throughput every [`THROUGHPUT_SAMPLE_SECS`]. Connections are capped
    /// at [`ADMIN_MAX_CONNECTIONS`] and closed when a request's headers do not arrive within
    /// [`ADMIN_HEADER_READ_TIMEOUT`].
    ///
    /// # Errors
    /// None today; the `Result` leaves room for listener failures.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let sampler = tokio::spawn(sample_throughput(
            Arc::clone(&self.state.stats),
            Arc::clone(&self.state.live),
            shutdown.clone(),
        ));
        let limits = cyberbackup_http::HttpLimits {
            header_read_timeout: ADMIN_HEADER_READ_TIMEOUT,
            max_connections: ADMIN_MAX_CONNECTIONS,
            shutdown_grace: self.state.config.shutdown_grace(),
        };
        let app = router(Arc::new(self.state));
        cyberbackup_http::serve(self.listener, app, limits, async move {
            shutdown.cancelled().await;
        })
        .await;
        sampler.abort();
        Ok(())
    }
}

fn router(state: Arc<AdminState>) -> Router {
    let protected = Router::new()
        .route(
            "/",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/assets/admin.js",
            get(|| async { page(ADMIN_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/admin.css",
            get(|| async { page(ADMIN_CSS, "text/css; charset=utf-8") }),
        )
        .route("/metrics", get(health::metrics))
        .route("/diagnostics", get(diagnostics::diagnostics))
        .merge(api::routes())
        .merge(repo_api::routes())
        .merge(accounts::routes())
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_own_host,
        ));
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .merge(protected)
        .fallback(not_found)
        .layer(middleware::map_response(security_headers))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            observe_latency,
        ))
        .with_state(state)
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

/// A request must name this listener in its `Host` header (see the module docs).
async fn require_own_host(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if web::host_allowed(host, state.listen.ip(), &state.config.admin_hosts) {
        return next.run(request).await;
    }
    api::error(
        StatusCode::MISDIRECTED_REQUEST,
        format!(
            "this dashboard answers requests addressed to localhost, an IP address of this server or a name in admin_hosts, not Host: {host:?} — open http://127.0.0.1:{}/ (or through an SSH tunnel), or add the name to admin_hosts in the server config",
            state.listen.port()
        ),
    )
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    api::error(
        StatusCode::NOT_FOUND,
        "no such page or endpoint — the API lives under /api/v1/ (see docs/admin-api.md)",
    )
}

/// Records `cyberbackup_http_request_duration_seconds{path, status}`.
async fn observe_latency(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed().as_secs_f64();
    state.live.record(|| {
        metrics::histogram!(
            "cyberbackup_http_request_duration_seconds",
            "path" => path,
            "status" => status
        )
        .record(elapsed);
    });
    response
}

/// Off loopback, or whenever a token is configured for a non-loopback listener, the request
/// must carry the token.
async fn require_token(
    State(state): State<Arc<AdminState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let loopback = peer.ip().is_loopback();
    let Some(token) = &state.token else {
        if loopback {
            return next.run(request).await;
        }
        return api::error(
            StatusCode::FORBIDDEN,
            "the admin dashboard only answers loopback clients when no admin_token is configured — set admin_token in the server config",
        );
    };
    if loopback && state.config.admin_listen.ip().is_loopback() {
        return next.run(request).await;
    }
    if presents_token(&request, token) {
        next.run(request).await
    } else {
        api::error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token — send \"Authorization: Bearer <admin_token>\" or add ?token=<admin_token> to the URL",
        )
    }
}

/// Whether `request` carries `token` (bearer header or `?token=`), compared in constant time.
fn presents_token(request: &Request, token: &AdminToken) -> bool {
    let presented = bearer(request).or_else(|| query_token(request));
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(token.expose().as_bytes())))
}

fn bearer(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    value.strip_prefix("Bearer ").map(str::to_owned)
}

/// The `token` parameter of the URL's query, percent-decoded.
fn query_token(request: &Request) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    Query::<TokenQuery>::try_from_uri(request.uri())
        .ok()?
        .0
        .token
}

async fn sample_throughput(stats: Arc<Stats>, live: Arc<LiveState>, shutdown: CancellationToken) {
    let interval = Duration::from_secs(THROUGHPUT_SAMPLE_SECS);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last = stats.bytes_received();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = stats.bytes_received();
        let at = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        live.push_throughput(ThroughputSample {
            at,
            bytes_per_sec: now.saturating_sub(last) as f64 / interval.as_secs_f64(),
        });
        last = now;
    }
}
