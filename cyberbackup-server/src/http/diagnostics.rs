//! `GET /diagnostics`: what an operator (or a support request) needs to know about this
//! server in one JSON document — versions, the effective configuration without secrets,
//! the catalog and storage backends, and the last warnings and errors.
//!
//! It reveals the configuration, so it is stricter than the rest of the admin API: when an
//! `admin_token` is configured, the token is required even from loopback.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AdminState;
use super::api::{error, internal};
use crate::catalog::CatalogLocation;
use crate::catalog::integrity::schema_status;
use crate::repository::REPOSITORY_DIR;
use crate::storage::{FILES_DIR, free_space};

/// Recent warnings and errors included (newest first).
const RECENT_ERRORS: usize = 20;

pub(crate) async fn diagnostics(
    State(state): State<Arc<AdminState>>,
    request: Request,
) -> Response {
    if let Some(token) = &state.token
        && !super::presents_token(&request, token)
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "/diagnostics needs the admin token, also from loopback — send \"Authorization: Bearer <admin_token>\"",
        );
    }
    let config = &state.config;
    let location = config.catalog_location();
    let schema = match schema_status(location.clone()).await {
        Ok(schema) => schema,
        Err(err) => return internal("reading the catalog schema", err),
    };
    let effective = match serde_json::to_value(config) {
        Ok(value) => value,
        Err(err) => return internal("printing the configuration", err),
    };
    // A SQLite file's size; a PostgreSQL database's is the database server's to report.
    let catalog_bytes = match &location {
        CatalogLocation::Sqlite(path) => std::fs::metadata(path).ok().map(|m| m.len()),
        CatalogLocation::Postgres(_) => None,
    };
    let mut recent = state.live.recent().snapshot();
    recent.truncate(RECENT_ERRORS);
    let mut protocols = vec!["v4"];
    if config.legacy_v3 {
        protocols.insert(0, "v3");
    }
    Json(json!({
        "server": {
            "name": env!("CARGO_PKG_NAME"),
            "version": env!("CARGO_PKG_VERSION"),
            "protocols": protocols,
            "repository_format": cyberbackup_core::repo::RepoConfig::FORMAT_VERSION,
        },
        "uptime_secs": state.live.uptime().as_secs(),
        "config": effective,
        "catalog": {
            "engine": location.engine().to_string(),
            "location": location.to_string(),
            "bytes": catalog_bytes,
            "schema_version": schema.version,
            "schema_latest": schema.latest,
        },
        "storage": {
            "repository": config.storage.describe(&config.data_dir, REPOSITORY_DIR),
            "files": format!("local {}", config.data_dir.join(FILES_DIR).display()),
            "data_dir_free_bytes": free_space(&config.data_dir).ok(),
        },
        "recent_errors": recent,
    }))
    .into_response()
}
