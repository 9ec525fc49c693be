//! The repository endpoints of the JSON API (`docs/admin-api.md`): every client's stored
//! bytes against its quotas, and the scrub's state with the objects it found damaged.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::AdminState;
use super::api::{error, internal};
use crate::catalog::format_rfc3339;

/// Most corrupt objects of each kind one answer lists.
const MAX_CORRUPT_LISTED: u32 = 1000;

pub(crate) fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/repositories", get(repositories))
        .route("/api/v1/scrub", get(scrub))
}

/// Each client with a repository: packs, stored bytes, quotas, corrupt packs, and whether it
/// is above its soft quota.
async fn repositories(State(state): State<Arc<AdminState>>) -> Response {
    let (usage, clients) = match (
        state.catalog.repo_usage().await,
        state.catalog.list_clients().await,
    ) {
        (Ok(usage), Ok(clients)) => (usage, clients),
        (Err(err), _) | (_, Err(err)) => return internal("reading repository usage", err),
    };
    let names: BTreeMap<_, _> = clients.into_iter().map(|c| (c.id, c.name)).collect();
    let quotas = state.config.quotas();
    let rows: Vec<_> = usage
        .into_iter()
        .map(|u| {
            let name = names.get(&u.client_id).cloned().unwrap_or_default();
            let limits = quotas.for_client(&name);
            let over = |limit: Option<u64>| limit.is_some_and(|l| u.stored_bytes > l);
            json!({
                "id": hex::encode(u.client_id),
                "name": String::from_utf8_lossy(&name),
                "packs": u.packs,
                "stored_bytes": u.stored_bytes,
                "soft_quota_bytes": limits.soft_bytes,
                "hard_quota_bytes": limits.hard_bytes,
                "over_soft_quota": over(limits.soft_bytes),
                "corrupt_packs": u.corrupt_packs,
            })
        })
        .collect();
    Json(rows).into_response()
}

/// Query of `/api/v1/scrub`.
#[derive(Debug, Deserialize)]
struct ScrubQuery {
    /// Only this client's corrupt objects (by name).
    client: Option<String>,
}

/// The scrub's settings and counters, its latest full cycle, and the corrupt objects.
async fn scrub(State(state): State<Arc<AdminState>>, Query(query): Query<ScrubQuery>) -> Response {
    let client = match &query.client {
        None => None,
        Some(name) => match state.catalog.list_clients().await {
            Ok(clients) => match clients.into_iter().find(|c| c.name == name.as_bytes()) {
                Some(found) => Some(found.id),
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!("no client is named {name:?} — see /api/v1/clients"),
                    );
                }
            },
            Err(err) => return internal("listing clients", err),
        },
    };
    let objects = match state
        .catalog
        .corrupt_objects(client, MAX_CORRUPT_LISTED)
        .await
    {
        Ok(objects) => objects,
        Err(err) => return internal("listing corrupt objects", err),
    };
    let status = state.live.scrub();
    let last_cycle = status.last_cycle().map(|cycle| {
        json!({
            "finished_at": format_rfc3339(cycle.finished_at),
            "duration_ms": u64::try_from(cycle.duration.as_millis()).unwrap_or(u64::MAX),
            "report": cycle.report,
        })
    });
    let running = status.running().map(|r| {
        json!({
            "started_at": format_rfc3339(r.started_at),
            "report": r.report,
        })
    });
    let objects: Vec<_> = objects
        .into_iter()
        .map(|o| {
            let found_at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(o.found_at);
            json!({
                "client_id": hex::encode(o.client_id),
                "client_name": String::from_utf8_lossy(&o.client_name),
                "kind": o.kind,
                "object": o.object,
                "file_name": o.file.as_ref().map(|(name, _)| String::from_utf8_lossy(name).into_owned()),
                "version": o.file.as_ref().map(|(_, version)| version),
                "size": o.size,
                "found_at": format_rfc3339(found_at),
                "reason": o.reason,
            })
        })
        .collect();
    Json(json!({
        "enabled": state.config.scrub_bytes_per_sec > 0,
        "bytes_per_sec": state.config.scrub_bytes_per_sec,
        "interval_secs": state.config.scrub_interval_secs,
        "cycles": status.cycles(),
        "bytes_scrubbed": status.bytes_scrubbed(),
        "objects_scrubbed": status.objects_scrubbed(),
        "last_cycle": last_cycle,
        "running": running,
        "corrupt_objects": objects,
    }))
    .into_response()
}
