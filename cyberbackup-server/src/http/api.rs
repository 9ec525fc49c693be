//! The JSON API under `/api/v1/` (documented in `docs/admin-api.md`).

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AdminState;
use crate::admin::{FileRow, write_files_csv};
use crate::catalog::{FileFilter, FileRowId, format_rfc3339};

/// Largest page the files endpoint returns.
pub(crate) const MAX_PAGE: u32 = 1000;

pub(crate) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/transfers", get(transfers))
        .route("/api/v1/throughput", get(throughput))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/files", get(files))
        .route("/api/v1/files.csv", get(files_csv))
        .route("/api/v1/maintenance", get(maintenance))
        .route("/api/v1/prune", post(prune_now))
        .route("/api/v1/events", get(events))
}

/// A JSON error body `{"error": "..."}` with `status`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

pub(crate) fn internal(what: &str, err: impl std::fmt::Display) -> Response {
    tracing::warn!(%err, "admin API: {what} failed");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("{what} failed: {err} — check the server log and `cyberbackup-server --check`"),
    )
}

async fn overview(State(state): State<Arc<AdminState>>) -> Response {
    let totals = match state.catalog_stats().await {
        Ok(totals) => totals,
        Err(err) => return internal("reading the catalog totals", err),
    };
    let stats = &state.stats;
    Json(json!({
        "uptime_secs": state.live.uptime().as_secs(),
        "started_at": format_rfc3339(state.live.started_at()),
        "clients": totals.clients,
        "files": totals.files,
        "bytes_stored": totals.bytes_stored,
        "connections": stats.connections(),
        "active_transfers": state.live.active_transfers(),
        "bytes_received": stats.bytes_received(),
        "files_committed": stats.files_committed(),
        "transfers_discarded": stats.transfers_discarded(),
        "backup_port": state.config.port,
    }))
    .into_response()
}

async fn transfers(State(state): State<Arc<AdminState>>) -> Response {
    Json(state.live.active_transfers()).into_response()
}

async fn throughput(State(state): State<Arc<AdminState>>) -> Response {
    Json(json!({
        "interval_secs": super::THROUGHPUT_SAMPLE_SECS,
        "samples": state.live.throughput(),
    }))
    .into_response()
}

#[derive(Debug, Serialize)]
struct ClientRow {
    id: String,
    name: String,
    last_seen: Option<String>,
    registered_at: String,
    protocol: Option<u8>,
    files: u64,
    bytes: u64,
}

async fn clients(State(state): State<Arc<AdminState>>) -> Response {
    let records = match state.catalog.list_clients().await {
        Ok(records) => records,
        Err(err) => return internal("listing clients", err),
    };
    let totals = match state.catalog.client_totals().await {
        Ok(totals) => totals,
        Err(err) => return internal("counting files per client", err),
    };
    let rows: Vec<ClientRow> = records
        .into_iter()
        .map(|c| {
            let totals = totals.get(&c.id).cloned().unwrap_or_default();
            ClientRow {
                id: hex::encode(c.id),
                name: String::from_utf8_lossy(&c.name).into_owned(),
                last_seen: c.last_seen,
                registered_at: c.registered_at,
                protocol: c.protocol,
                files: totals.files,
                bytes: totals.bytes,
            }
        })
        .collect();
    Json(rows).into_response()
}

/// One v4 device as `/api/v1/devices` lists it.
#[derive(Debug, Serialize)]
struct DeviceRow {
    client: String,
    client_id: String,
    fingerprint: String,
    role: &'static str,
    added_at: String,
}

async fn devices(State(state): State<Arc<AdminState>>) -> Response {
    match state.catalog.list_devices().await {
        Ok(devices) => Json(
            devices
                .into_iter()
                .map(|d| DeviceRow {
                    client: String::from_utf8_lossy(&d.client_name).into_owned(),
                    client_id: hex::encode(d.client_id),
                    fingerprint: crate::catalog::v4::device_fingerprint(&d.key),
                    role: d.role.as_str(),
                    added_at: d.added_at,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(err) => internal("listing devices", err),
    }
}

/// Query parameters of `/api/v1/files` and `/api/v1/files.csv`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct FilesQuery {
    client: Option<String>,
    name: Option<String>,
    verified: Option<String>,
    since: Option<String>,
    until: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
    all: Option<String>,
}

impl FilesQuery {
    fn filter(&self) -> Result<FileFilter, String> {
        let non_empty = |v: &Option<String>| v.as_ref().filter(|s| !s.is_empty()).cloned();
        let verified = match self.verified.as_deref() {
            None | Some("" | "any") => None,
            Some("true" | "1" | "yes") => Some(true),
            Some("false" | "0" | "no") => Some(false),
            Some(other) => {
                return Err(format!(
                    "verified={other:?} is not understood — use true, false or any"
                ));
            }
        };
        let since = non_empty(&self.since)
            .map(|s| parse_time(&s, "since"))
            .transpose()?;
        let until = non_empty(&self.until)
            .map(|s| parse_time(&s, "until"))
            .transpose()?;
        let limit = self.limit.unwrap_or(crate::catalog::DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(format!(
                "limit={limit} is out of range — use 1 to {MAX_PAGE}"
            ));
        }
        Ok(FileFilter {
            client_name: non_empty(&self.client).map(String::into_bytes),
            name_contains: non_empty(&self.name).map(String::into_bytes),
            verified,
            since,
            until,
            include_discarded: matches!(self.all.as_deref(), Some("true" | "1" | "yes")),
            after_row: self.after.map(FileRowId),
            limit,
        })
    }
}

async fn files(State(state): State<Arc<AdminState>>, query: Query<FilesQuery>) -> Response {
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let limit = filter.limit;
    let records = match state.catalog.list_files(filter).await {
        Ok(records) => records,
        Err(err) => return internal("listing files", err),
    };
    let full_page = u32::try_from(records.len()).is_ok_and(|n| n == limit);
    let next_after = records.last().filter(|_| full_page).map(|r| r.row.0);
    let rows: Vec<FileRow> = records.iter().map(FileRow::from).collect();
    Json(json!({ "files": rows, "next_after": next_after })).into_response()
}

/// Streams every matching row as CSV, one catalog page at a time (never the whole table
/// in memory).
async fn files_csv(State(state): State<Arc<AdminState>>, query: Query<FilesQuery>) -> Response {
    let mut filter = match query.filter() {
        Ok(filter) => filter,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    filter.limit = MAX_PAGE;
    let stream = futures_util::stream::unfold((Some(filter), true), move |(filter, first)| {
        let state = Arc::clone(&state);
        async move {
            let mut filter = filter?;
            let page = match state.catalog.list_files(filter.clone()).await {
                Ok(page) => page,
                Err(err) => {
                    return Some((Err(std::io::Error::other(err.to_string())), (None, false)));
                }
            };
            let mut out = Vec::new();
            if let Err(err) = write_files_csv(&mut out, &page, first) {
                return Some((Err(err.into()), (None, false)));
            }
            let next = if page.len() == MAX_PAGE as usize {
                filter.after_row = page.last().map(|r| r.row);
                Some(filter)
            } else {
                None
            };
            Some((Ok::<_, std::io::Error>(out), (next, false)))
        }
    });
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"cyberbackup-files.csv\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn maintenance(State(state): State<Arc<AdminState>>) -> Response {
    let last = state.live.maintenance().get().map(|run| {
        json!({
            "finished_at": format_rfc3339(run.finished_at),
            "duration_ms": u64::try_from(run.duration.as_millis()).unwrap_or(u64::MAX),
            "discarded_rows": run.report.discarded_rows,
            "removed_temp_files": run.report.removed_temp_files,
            "refused_paths": run.report.refused_paths,
            "finished_commits": run.report.finished_commits,
            "rolled_back_commits": run.report.rolled_back_commits,
            "removed_orphan_versions": run.report.removed_orphan_versions,
            "kept_resumable_uploads": run.report.kept_resumable_uploads,
            "error": run.error,
        })
    });
    let last_prune = state.live.prune().get().map(|run| prune_run_json(&run));
    Json(json!({
        "interval_secs": state.config.maintenance_interval_secs,
        "abandoned_after_secs": state.config.abandoned_after_secs,
        "last_run": last,
        "prune": {
            "interval_secs": state.config.prune_interval_secs,
            "grace_secs": state.config.prune_grace_secs,
            "repack_below_percent": state.config.repack_below_percent,
            "running": state.repo.prune_progress().running(),
            "last_run": last_prune,
        },
    }))
    .into_response()
}

/// Prunes every repository now (the scheduled prune's work, at once) and answers with its
/// run. The body must be JSON (`{}`): a cross-site form cannot send that without a CORS
/// preflight, which this API never grants.
async fn prune_now(
    State(state): State<Arc<AdminState>>,
    Json(_): Json<serde_json::Value>,
) -> Response {
    let (options, retention) = (
        state.config.prune_options(),
        state.config.retention_policies(),
    );
    match state.repo.prune_all(&options, &retention).await {
        Ok(run) => {
            let body = prune_run_json(&run);
            state.live.prune().set(run);
            Json(body).into_response()
        }
        Err(err) => internal("pruning the repositories", err),
    }
}

fn prune_run_json(run: &crate::repository::PruneRun) -> serde_json::Value {
    json!({
        "finished_at": format_rfc3339(run.finished_at),
        "duration_ms": u64::try_from(run.duration.as_millis()).unwrap_or(u64::MAX),
        "repositories": run.repositories,
        "totals": run.totals,
        "failed": run.failed.iter().map(|(client, error)| json!({
            "client_id": client,
            "error": error,
        })).collect::<Vec<_>>(),
    })
}

async fn events(State(state): State<Arc<AdminState>>) -> Response {
    Json(state.live.recent().snapshot()).into_response()
}

/// Parses `YYYY-MM-DD` (midnight UTC) or an RFC 3339 UTC time `YYYY-MM-DDTHH:MM:SSZ`.
fn parse_time(text: &str, key: &str) -> Result<SystemTime, String> {
    let moment = if text.contains('T') {
        humantime::parse_rfc3339(text)
    } else {
        humantime::parse_rfc3339(&format!("{text}T00:00:00Z"))
    };
    moment.map_err(|_| {
        format!("{key}={text:?} is not a date — use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)")
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn dates_parse_as_utc() {
        let day = parse_time("2024-03-01", "since").unwrap();
        let moment = parse_time("2024-03-01T12:30:05Z", "since").unwrap();

        assert_eq!(
            day.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_secs(19_783 * 86_400)
        );
        assert_eq!(
            moment.duration_since(day).unwrap(),
            Duration::from_secs(12 * 3600 + 30 * 60 + 5)
        );
        assert!(
            parse_time("yesterday", "since")
                .unwrap_err()
                .contains("YYYY-MM-DD")
        );
        assert!(parse_time("2024-13-01", "since").is_err());
        assert!(parse_time("2024-02-30", "since").is_err());
        assert!(parse_time("2024-03-01T12:30:05", "since").is_err());
        assert_eq!(
            parse_time("2024-03-01T12:30:05.5Z", "since")
                .unwrap()
                .duration_since(moment)
                .unwrap(),
            Duration::from_millis(500)
        );
    }
}
