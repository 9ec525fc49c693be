//! The JSON API under `/api/v1/` (documented in `docs/admin-api.md`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AdminState;
use crate::catalog::{FileFilter, FileRecord, FileRowId, format_rfc3339};

/// Largest page the files endpoint returns.
pub(crate) const MAX_PAGE: u32 = 1000;

pub(crate) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/transfers", get(transfers))
        .route("/api/v1/throughput", get(throughput))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/files", get(files))
        .route("/api/v1/files.csv", get(files_csv))
        .route("/api/v1/maintenance", get(maintenance))
        .route("/api/v1/events", get(events))
}

/// A JSON error body `{"error": "..."}` with `status`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn internal(what: &str, err: impl std::fmt::Display) -> Response {
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
            let totals = totals.get(&c.id).copied().unwrap_or_default();
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

#[derive(Debug, Serialize)]
struct FileRow {
    row: i64,
    client_id: String,
    client: String,
    name: String,
    path: String,
    version: u32,
    state: &'static str,
    verified: bool,
    size: Option<u64>,
    cksum: Option<u32>,
    sha256: Option<String>,
    created_at: String,
    verified_at: Option<String>,
}

impl From<FileRecord> for FileRow {
    fn from(f: FileRecord) -> Self {
        Self {
            row: f.row.0,
            client_id: hex::encode(f.client_id),
            client: String::from_utf8_lossy(&f.client_name).into_owned(),
            name: String::from_utf8_lossy(&f.file_name).into_owned(),
            path: f.path_name,
            version: f.version,
            state: f.state.as_str(),
            verified: f.verified,
            size: f.size,
            cksum: f.cksum,
            sha256: f.sha256.map(hex::encode),
            created_at: f.created_at,
            verified_at: f.verified_at,
        }
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
    let rows: Vec<FileRow> = records.into_iter().map(FileRow::from).collect();
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
    let header_line = "row,client,client_id,name,version,state,verified,size,cksum,sha256,created_at,verified_at\n";
    let stream = futures_util::stream::unfold((Some(filter), true), move |(filter, first)| {
        let state = Arc::clone(&state);
        async move {
            let mut filter = filter?;
            let mut out = String::new();
            if first {
                out.push_str(header_line);
            }
            let page = match state.catalog.list_files(filter.clone()).await {
                Ok(page) => page,
                Err(err) => {
                    return Some((Err(std::io::Error::other(err.to_string())), (None, false)));
                }
            };
            for f in &page {
                write_csv_row(&mut out, f);
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

fn write_csv_row(out: &mut String, f: &FileRecord) {
    let opt = |v: Option<String>| v.unwrap_or_default();
    let fields = [
        f.row.0.to_string(),
        String::from_utf8_lossy(&f.client_name).into_owned(),
        hex::encode(f.client_id),
        String::from_utf8_lossy(&f.file_name).into_owned(),
        f.version.to_string(),
        f.state.as_str().to_owned(),
        f.verified.to_string(),
        opt(f.size.map(|s| s.to_string())),
        opt(f.cksum.map(|c| c.to_string())),
        opt(f.sha256.as_ref().map(hex::encode)),
        f.created_at.clone(),
        opt(f.verified_at.clone()),
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if field.contains([',', '"', '\n', '\r']) {
            let _ = write!(out, "\"{}\"", field.replace('"', "\"\""));
        } else {
            out.push_str(field);
        }
    }
    out.push('\n');
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
    Json(json!({
        "interval_secs": state.config.maintenance_interval_secs,
        "abandoned_after_secs": state.config.abandoned_after_secs,
        "last_run": last,
    }))
    .into_response()
}

async fn events(State(state): State<Arc<AdminState>>) -> Response {
    Json(state.live.recent().snapshot()).into_response()
}

/// Parses `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SSZ`.
fn parse_time(text: &str, key: &str) -> Result<SystemTime, String> {
    let bad =
        || format!("{key}={text:?} is not a date — use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)");
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z').ok_or_else(bad)?)),
        None => (text, None),
    };
    let mut parts = date.split('-').map(str::parse::<i64>);
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    if let Some(time) = time {
        let mut hms = time.split(':').map(str::parse::<i64>);
        let (Some(Ok(h)), Some(Ok(mi)), Some(Ok(s)), None) =
            (hms.next(), hms.next(), hms.next(), hms.next())
        else {
            return Err(bad());
        };
        if !(0..24).contains(&h) || !(0..60).contains(&mi) || !(0..61).contains(&s) {
            return Err(bad());
        }
        secs += h * 3600 + mi * 60 + s;
    }
    let secs = u64::try_from(secs).map_err(|_| bad())?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Decodes `%XX` escapes and `+` of a query value.
pub(crate) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
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
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        let mut out = String::new();
        let record = FileRecord {
            row: FileRowId(7),
            client_id: [0xab; 16],
            client_name: b"alice".to_vec(),
            file_name: b"a,\"b\".txt".to_vec(),
            path_name: "x/y".into(),
            version: 1,
            state: crate::catalog::FileState::Verified,
            verified: true,
            size: Some(3),
            ciphertext_size: Some(16),
            cksum: Some(9),
            sha256: None,
            created_at: "t".into(),
            updated_at: "t".into(),
            verified_at: None,
        };

        write_csv_row(&mut out, &record);

        assert!(out.starts_with("7,alice,abab"), "{out}");
        assert!(
            out.contains(",\"a,\"\"b\"\".txt\",1,verified,true,3,9,,t,\n"),
            "{out}"
        );
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b+c%2Fd%zz"), "a b c/d%zz");
    }
}
