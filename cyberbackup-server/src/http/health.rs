//! `/health` (the process answers), `/ready` (database, storage and disk probes) and
//! `/metrics` (Prometheus text format).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::AdminState;
use super::accounts::account_rows;
use super::process::ProcessStats;
use crate::catalog::FileFilter;

pub(crate) async fn health() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

/// One probe's outcome. Only `name` and `ok` reach the unauthenticated `/ready` body; the
/// detail (paths, errors) goes to the log.
#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    #[serde(skip)]
    detail: String,
}

/// 200 when every probe passes, else 503 naming the failing checks. The body says only
/// pass/fail per check (it needs no token, so it must not reveal paths or errors); the
/// details of failing checks are logged when the set of failing checks changes.
///
/// Objects the scrub found damaged do not make the server unready (it still serves every
/// other object; taking it out of a load balancer would help nobody): the body counts them
/// in `corrupt_objects` and lists `"scrub"` in `warnings` (details: the admin API).
pub(crate) async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    let checks = vec![
        database(&state).await,
        storage(&state).await,
        disk(&state).await,
    ];
    let ready = checks.iter().all(|c| c.ok);
    let failing: Vec<&'static str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    if state.ready_failing_changed(&failing) {
        for check in checks.iter().filter(|c| !c.ok) {
            tracing::warn!(check = check.name, detail = %check.detail, "readiness check failed");
        }
        if ready {
            tracing::info!("readiness checks pass again");
        }
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let corrupt = state.catalog.corrupt_object_count().await.ok();
    let warnings: Vec<&str> = corrupt
        .filter(|&count| count > 0)
        .map(|_| "scrub")
        .into_iter()
        .collect();
    (
        status,
        Json(json!({
            "ready": ready,
            "failing": failing,
            "checks": checks,
            "warnings": warnings,
            "corrupt_objects": corrupt,
        })),
    )
        .into_response()
}

/// A read through the read pool, then a round trip through the single writer: an `UPDATE`
/// of the reserved all-zero client id, which takes the write lock and changes no row.
async fn database(state: &AdminState) -> Check {
    let probe = FileFilter {
        limit: 1,
        ..FileFilter::default()
    };
    let detail = match state.catalog.list_files(probe).await {
        Err(err) => Err(format!("catalog read failed: {err}")),
        Ok(_) => match state.catalog.touch_client([0; 16]).await {
            Err(err) => Err(format!("catalog write failed: {err}")),
            Ok(_) => Ok(format!("{} reads and writes", state.catalog.location())),
        },
    };
    check("database", detail)
}

async fn storage(state: &AdminState) -> Check {
    let storage = state.storage.clone();
    let detail = match tokio::task::spawn_blocking(move || storage.probe_writable()).await {
        Ok(Ok(())) => Ok(format!("{} is writable", state.storage.root().display())),
        Ok(Err(err)) => Err(format!(
            "{err} — check that the directory exists and is writable"
        )),
        Err(err) => Err(format!("storage probe did not finish: {err}")),
    };
    check("storage", detail)
}

async fn disk(state: &AdminState) -> Check {
    let dir = state.config.data_dir.clone();
    let min = state.config.min_free_disk_bytes();
    let free = tokio::task::spawn_blocking(move || crate::storage::free_space(&dir)).await;
    let mib = |b: u64| b / (1024 * 1024);
    let detail = match free {
        Ok(Ok(free)) if free >= min => Ok(format!("{} MiB free", mib(free))),
        Ok(Ok(free)) => Err(format!(
            "only {} MiB free on {}, below min_free_disk_mb = {} — free space or lower the threshold",
            mib(free),
            state.config.data_dir.display(),
            state.config.min_free_disk_mb
        )),
        Ok(Err(err)) => Err(format!(
            "cannot read free space of {}: {err}",
            state.config.data_dir.display()
        )),
        Err(err) => Err(format!("disk probe did not finish: {err}")),
    };
    check("disk", detail)
}

fn check(name: &'static str, detail: Result<String, String>) -> Check {
    match detail {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
        },
        Err(detail) => Check {
            name,
            ok: false,
            detail,
        },
    }
}

/// Refreshes the gauges and counters mirrored from [`crate::Stats`] and the catalog, then
/// renders everything the server recorded.
pub(crate) async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let totals = state.catalog_stats().await.ok();
    let corrupt = state.catalog.corrupt_object_count().await.ok();
    let accounts = match account_rows(&state).await {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!(%err, "/metrics: the per-account metrics are left out");
            Vec::new()
        }
    };
    let process = ProcessStats::read();
    let stats = &state.stats;
    let scrub = state.live.scrub();
    let (prune_runs, prune_freed) = state.live.prune().totals();
    state.live.record(|| {
        describe();
        metrics::gauge!("cyberbackup_build_info", "version" => env!("CARGO_PKG_VERSION"))
            .set(1.0);
        for account in &accounts {
            let name = account.name.clone();
            if let Some(at) = account.last_backup_unix {
                metrics::gauge!("cyberbackup_account_last_backup_timestamp_seconds", "account" => name.clone())
                    .set(at as f64);
            }
            metrics::gauge!("cyberbackup_account_snapshots", "account" => name.clone())
                .set(account.snapshots as f64);
            metrics::gauge!("cyberbackup_account_stored_bytes", "account" => name.clone())
                .set(account.stored_bytes as f64);
            for (kind, limit) in [
                ("soft", account.soft_quota_bytes),
                ("hard", account.hard_quota_bytes),
            ] {
                if let Some(limit) = limit {
                    metrics::gauge!("cyberbackup_account_quota_bytes", "account" => name.clone(), "kind" => kind)
                        .set(limit as f64);
                }
            }
        }
        metrics::counter!("cyberbackup_prune_runs_total").absolute(prune_runs);
        metrics::counter!("cyberbackup_prune_freed_bytes_total").absolute(prune_freed);
        if let Some(p) = process {
            metrics::gauge!("process_resident_memory_bytes").set(p.resident_bytes as f64);
            metrics::gauge!("process_open_fds").set(p.open_fds as f64);
            if let Some(max) = p.max_fds {
                metrics::gauge!("process_max_fds").set(max as f64);
            }
            metrics::counter!("process_cpu_seconds_total").absolute(p.cpu_seconds);
            metrics::gauge!("process_start_time_seconds").set(p.start_time_secs);
        }
        metrics::gauge!("cyberbackup_connections").set(stats.connections() as f64);
        metrics::gauge!("cyberbackup_active_transfers").set(stats.active_transfers() as f64);
        metrics::counter!("cyberbackup_bytes_received_total").absolute(stats.bytes_received());
        metrics::counter!("cyberbackup_files_committed_total").absolute(stats.files_committed());
        metrics::counter!("cyberbackup_transfers_discarded_total")
            .absolute(stats.transfers_discarded());
        metrics::gauge!("cyberbackup_uptime_seconds").set(state.live.uptime().as_secs_f64());
        metrics::counter!("cyberbackup_scrub_bytes_total").absolute(scrub.bytes_scrubbed());
        metrics::counter!("cyberbackup_scrub_objects_total").absolute(scrub.objects_scrubbed());
        metrics::counter!("cyberbackup_scrub_cycles_total").absolute(scrub.cycles());
        if let Some(cycle) = scrub.last_cycle() {
            let at = cycle
                .finished_at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            metrics::gauge!("cyberbackup_scrub_last_cycle_timestamp_seconds").set(at.as_secs_f64());
            metrics::gauge!("cyberbackup_scrub_last_cycle_duration_seconds")
                .set(cycle.duration.as_secs_f64());
        }
        if let Some(corrupt) = corrupt {
            metrics::gauge!("cyberbackup_scrub_corrupt_objects").set(corrupt as f64);
        }
        if let Some(totals) = totals {
            metrics::gauge!("cyberbackup_catalog_clients").set(totals.clients as f64);
            metrics::gauge!("cyberbackup_catalog_files").set(totals.files as f64);
            metrics::gauge!("cyberbackup_catalog_bytes").set(totals.bytes_stored as f64);
        }
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.live.render_metrics(),
    )
        .into_response()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("cyberbackup_connections", "Backup connections open now.");
    describe_gauge!("cyberbackup_active_transfers", "Files being received now.");
    describe_counter!(
        "cyberbackup_bytes_received_total",
        Unit::Bytes,
        "Plaintext bytes written to storage since start."
    );
    describe_counter!(
        "cyberbackup_files_committed_total",
        "Files verified and committed since start."
    );
    describe_counter!(
        "cyberbackup_transfers_discarded_total",
        "Transfers discarded since start."
    );
    describe_counter!(
        "cyberbackup_failures_total",
        "Refused requests and failed connections, by reason."
    );
    describe_histogram!(
        "cyberbackup_effect_duration_seconds",
        Unit::Seconds,
        "Time to perform a protocol effect (storage and catalog work), by effect."
    );
    describe_histogram!(
        "cyberbackup_http_request_duration_seconds",
        Unit::Seconds,
        "Admin HTTP request latency, by route and status."
    );
    describe_gauge!("cyberbackup_catalog_clients", "Registered clients.");
    describe_gauge!(
        "cyberbackup_catalog_files",
        "Verified file versions in the catalog."
    );
    describe_gauge!(
        "cyberbackup_catalog_bytes",
        Unit::Bytes,
        "Plaintext bytes of verified file versions."
    );
    describe_counter!(
        "cyberbackup_scrub_bytes_total",
        Unit::Bytes,
        "Bytes the scrub read back and hashed since start."
    );
    describe_counter!(
        "cyberbackup_scrub_objects_total",
        "Stored objects (packs, legacy files) the scrub checked since start."
    );
    describe_counter!(
        "cyberbackup_scrub_cycles_total",
        "Full scrub cycles finished since start."
    );
    describe_gauge!(
        "cyberbackup_scrub_last_cycle_timestamp_seconds",
        Unit::Seconds,
        "Unix time the latest full scrub cycle finished."
    );
    describe_gauge!(
        "cyberbackup_scrub_last_cycle_duration_seconds",
        Unit::Seconds,
        "How long the latest full scrub cycle took."
    );
    describe_gauge!(
        "cyberbackup_scrub_corrupt_objects",
        "Stored objects the latest scrub of each found damaged or missing."
    );
    describe_gauge!(
        "cyberbackup_build_info",
        "Always 1; the server's version in the version label."
    );
    describe_gauge!(
        "cyberbackup_account_last_backup_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the account's newest stored snapshot or verified single-file version."
    );
    describe_gauge!(
        "cyberbackup_account_snapshots",
        "Snapshots recorded for the account."
    );
    describe_gauge!(
        "cyberbackup_account_stored_bytes",
        Unit::Bytes,
        "Bytes of the account's repository packs (what its quotas apply to)."
    );
    describe_gauge!(
        "cyberbackup_account_quota_bytes",
        Unit::Bytes,
        "The account's soft or hard quota (kind label) on its repository's bytes."
    );
    describe_counter!(
        "cyberbackup_prune_runs_total",
        "Prunes of every repository finished since start (scheduled and POST /api/v1/prune)."
    );
    describe_counter!(
        "cyberbackup_prune_freed_bytes_total",
        Unit::Bytes,
        "Bytes those prunes gave back since start."
    );
    describe_gauge!(
        "process_resident_memory_bytes",
        Unit::Bytes,
        "Resident memory size."
    );
    describe_gauge!("process_open_fds", "Open file descriptors.");
    describe_gauge!(
        "process_max_fds",
        "The soft limit on open file descriptors."
    );
    describe_counter!(
        "process_cpu_seconds_total",
        Unit::Seconds,
        "User and system CPU time, whole seconds."
    );
    describe_gauge!(
        "process_start_time_seconds",
        Unit::Seconds,
        "Unix time the process started."
    );
    describe_gauge!(
        "cyberbackup_uptime_seconds",
        Unit::Seconds,
        "Seconds since start."
    );
}
