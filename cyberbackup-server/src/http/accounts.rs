//! The accounts endpoints of the JSON API (`docs/admin-api.md`): one row per account (a
//! registered client and its repository) with its devices, its last backup and how old it
//! is against `backup_warn_after_secs` / `backup_alert_after_secs`, its snapshots, stored
//! bytes and quota; and one account's snapshots. Envelope data only: the server cannot know
//! the names of files, hosts or paths, and these answers carry none.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;

use super::AdminState;
use super::api::{error, internal};
use crate::catalog::{CatalogError, format_rfc3339};
use crate::config::ServerConfig;

/// What the snapshots page says about names (also in the API's answer).
const NAMES_NOTE: &str = "The server stores snapshots encrypted: it knows their times, sizes and counts, never the names of files, hosts or paths. Browse them with the client (cyberbackup-client ui).";

pub(crate) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/accounts", get(accounts))
        .route("/api/v1/accounts/{name}/snapshots", get(snapshots))
}

/// How overdue an account's backup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BackupStatus {
    /// Backed up within `backup_warn_after_secs`.
    Ok,
    /// Last backup older than `backup_warn_after_secs`.
    Warn,
    /// Last backup older than `backup_alert_after_secs`.
    Alert,
}

impl BackupStatus {
    /// The status of a last backup `age` old under `config`'s thresholds.
    pub(crate) fn of(age: Duration, config: &ServerConfig) -> Self {
        let secs = age.as_secs();
        if secs > config.backup_alert_after_secs {
            Self::Alert
        } else if secs > config.backup_warn_after_secs {
            Self::Warn
        } else {
            Self::Ok
        }
    }
}

/// One device of an account.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AccountDevice {
    fingerprint: String,
    role: &'static str,
    added_at: String,
}

/// One account as `/api/v1/accounts` and the per-account metrics show it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AccountRow {
    pub(crate) id: String,
    pub(crate) name: String,
    registered_at: String,
    devices: Vec<AccountDevice>,
    /// The newest snapshot stored or single-file version verified (RFC 3339).
    last_backup_at: Option<String>,
    /// The same as Unix seconds (for the metrics).
    #[serde(skip)]
    pub(crate) last_backup_unix: Option<u64>,
    /// Seconds since the last backup (since registration when there was none).
    age_secs: u64,
    status: BackupStatus,
    pub(crate) snapshots: u64,
    /// Verified single-file versions (`upload`, v3).
    single_files: u64,
    /// Their plaintext bytes.
    single_file_bytes: u64,
    /// Bytes of the repository's packs (what the quotas apply to).
    pub(crate) stored_bytes: u64,
    /// Sum of the snapshots' content sizes (envelope `total_bytes`); `None` when a snapshot
    /// was recorded before the catalog kept it.
    snapshot_content_bytes: Option<u64>,
    /// `snapshot_content_bytes` / the packs' bytes: what deduplication and compression
    /// saved together (the server cannot tell the two apart without a key).
    dedup_compression_ratio: Option<f64>,
    pub(crate) soft_quota_bytes: Option<u64>,
    pub(crate) hard_quota_bytes: Option<u64>,
    /// Packs' bytes as a percentage of the hard quota (else the soft one).
    quota_used_percent: Option<f64>,
}

/// Every account, ordered by name, aged against the admin clock.
///
/// # Errors
/// The catalog's error.
pub(crate) async fn account_rows(state: &AdminState) -> Result<Vec<AccountRow>, CatalogError> {
    let clients = state.catalog.list_clients().await?;
    let devices = state.catalog.list_devices().await?;
    let usage: BTreeMap<_, _> = state
        .catalog
        .repo_usage()
        .await?
        .into_iter()
        .map(|u| (u.client_id, u))
        .collect();
    let summaries = state.catalog.snapshot_summaries().await?;
    let singles = state.catalog.client_totals().await?;
    let mut by_client: BTreeMap<_, Vec<AccountDevice>> = BTreeMap::new();
    for d in devices {
        by_client
            .entry(d.client_id)
            .or_default()
            .push(AccountDevice {
                fingerprint: crate::catalog::v4::device_fingerprint(&d.key),
                role: d.role.as_str(),
                added_at: d.added_at,
            });
    }
    let now = state.clock.now();
    let quotas = state.config.quotas();
    let mut rows: Vec<AccountRow> = clients
        .into_iter()
        .map(|c| {
            let summary = summaries.get(&c.id);
            let single = singles.get(&c.id).cloned().unwrap_or_default();
            let pack_bytes = usage.get(&c.id).map_or(0, |u| u.stored_bytes);
            let last_snapshot = summary.map(|s| UNIX_EPOCH + Duration::from_secs(s.last_stored_at));
            let last_single = single.last_verified_at.as_deref().and_then(parse_rfc3339);
            let last_backup = last_snapshot.max(last_single);
            let since = last_backup.or_else(|| parse_rfc3339(&c.registered_at));
            let age = since.map_or(Duration::MAX, |t| now.duration_since(t).unwrap_or_default());
            let content = summary.and_then(|s| s.total_bytes);
            let limits = quotas.for_client(&c.name);
            let ratio =
                |num: u64, den: Option<u64>| den.filter(|&d| d > 0).map(|d| num as f64 / d as f64);
            AccountRow {
                id: hex::encode(c.id),
                name: String::from_utf8_lossy(&c.name).into_owned(),
                registered_at: c.registered_at,
                devices: by_client.remove(&c.id).unwrap_or_default(),
                last_backup_at: last_backup.map(format_rfc3339),
                last_backup_unix: last_backup
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                age_secs: age.as_secs(),
                status: BackupStatus::of(age, &state.config),
                snapshots: summary.map_or(0, |s| s.snapshots),
                single_files: single.files,
                single_file_bytes: single.bytes,
                stored_bytes: pack_bytes,
                snapshot_content_bytes: content,
                dedup_compression_ratio: content.and_then(|c| ratio(c, Some(pack_bytes))),
                soft_quota_bytes: limits.soft_bytes,
                hard_quota_bytes: limits.hard_bytes,
                quota_used_percent: ratio(pack_bytes, limits.hard_bytes.or(limits.soft_bytes))
                    .map(|r| r * 100.0),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

async fn accounts(State(state): State<Arc<AdminState>>) -> Response {
    match account_rows(&state).await {
        Ok(rows) => Json(json!({
            "warn_after_secs": state.config.backup_warn_after_secs,
            "alert_after_secs": state.config.backup_alert_after_secs,
            "accounts": rows,
        }))
        .into_response(),
        Err(err) => internal("listing accounts", err),
    }
}

/// One account's snapshots, newest first: times, sizes and counts from the envelopes.
async fn snapshots(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    let client = match state.catalog.list_clients().await {
        Ok(clients) => clients.into_iter().find(|c| c.name == name.as_bytes()),
        Err(err) => return internal("listing clients", err),
    };
    let Some(client) = client else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no account is named {name:?} — see /api/v1/accounts"),
        );
    };
    let records = match state.catalog.list_snapshots(client.id).await {
        Ok(records) => records,
        Err(err) => return internal("listing snapshots", err),
    };
    let rows: Vec<_> = records
        .iter()
        .rev()
        .map(|s| {
            let nanos = Duration::from_nanos(u64::from(s.time.nanos));
            let time = u64::try_from(s.time.secs)
                .ok()
                .map(|secs| format_rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + nanos));
            json!({
                "id": hex::encode(s.id.0),
                "time": time,
                "stored_at": format_rfc3339(UNIX_EPOCH + Duration::from_secs(s.stored_at)),
                "object_bytes": s.size,
                "content_bytes": s.total_bytes,
                "blobs": s.blob_count,
                "group": s.group.map(|g| hex::encode(&g[..4])),
            })
        })
        .collect();
    Json(json!({
        "account": String::from_utf8_lossy(&client.name),
        "id": hex::encode(client.id),
        "note": NAMES_NOTE,
        "snapshots": rows,
    }))
    .into_response()
}

/// A catalog timestamp (`format_rfc3339`) back as a time.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_thresholds() {
        let config = ServerConfig {
            backup_warn_after_secs: 100,
            backup_alert_after_secs: 200,
            ..ServerConfig::default()
        };
        let of = |secs| BackupStatus::of(Duration::from_secs(secs), &config);

        assert_eq!(
            [of(0), of(100), of(101), of(200), of(201), of(u64::MAX)],
            [
                BackupStatus::Ok,
                BackupStatus::Ok,
                BackupStatus::Warn,
                BackupStatus::Warn,
                BackupStatus::Alert,
                BackupStatus::Alert
            ]
        );
    }
}
