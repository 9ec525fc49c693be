//! The Sources view: the folders this machine backs up on a schedule, each with excludes,
//! a schedule and a retention choice, their last result and next run, and "Back up now".
//! The UI runs the [`Scheduler`](crate::schedule::Scheduler) itself while it is open (the
//! `daemon` or its systemd unit runs it otherwise); sources and their state live in the
//! data directory, so the UI, `schedule list` and the daemon show and run the same ones.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;

use super::{Ui, error};
use crate::schedule::{Retention, Schedule, ScheduleEvent, Scheduler, Source, SourceLock};

/// The scheduler's progress events, as the page shows a running backup.
pub(super) fn record_event(ui: &Ui, event: &ScheduleEvent) {
    let mut inner = ui.lock();
    match event {
        ScheduleEvent::Progress { source, .. } | ScheduleEvent::Started { source } => {
            inner
                .schedule_progress
                .insert(source.clone(), event.clone());
        }
        ScheduleEvent::Finished { source, .. } => {
            inner.schedule_progress.remove(source);
        }
        ScheduleEvent::Skipped { .. } | ScheduleEvent::Problem { .. } => {}
    }
}

fn scheduler(ui: &Ui) -> Result<&Scheduler, Box<Response>> {
    ui.scheduler.get().ok_or_else(|| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduler is not running yet — reload the page",
        ))
    })
}

/// `GET /api/sources`: every source with its last run, next run and live progress.
pub(super) async fn list(State(ui): State<Arc<Ui>>) -> Response {
    let scheduler = match scheduler(&ui) {
        Ok(scheduler) => scheduler,
        Err(response) => return *response,
    };
    let statuses = match scheduler.overview() {
        Ok(statuses) => statuses,
        Err(message) => return error(StatusCode::INTERNAL_SERVER_ERROR, message),
    };
    let progress = ui.lock().schedule_progress.clone();
    let sources: Vec<serde_json::Value> = statuses
        .iter()
        .map(|status| {
            let mut value = json!(status);
            value["schedule_text"] = json!(status.source.schedule.to_string());
            value["retention_text"] = json!(status.source.retention.to_string());
            value["progress"] = json!(progress.get(&status.source.name));
            value
        })
        .collect();
    Json(json!({ "now": Timestamp::now(), "sources": sources })).into_response()
}

/// Body of `POST /api/sources`.
#[derive(Debug, Deserialize)]
pub(super) struct SourceBody {
    name: String,
    paths: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    schedule: String,
    #[serde(default)]
    retention: Retention,
}

/// `POST /api/sources`: adds a source, or replaces the one with its name.
pub(super) async fn save(State(ui): State<Arc<Ui>>, Json(body): Json<SourceBody>) -> Response {
    let scheduler = match scheduler(&ui) {
        Ok(scheduler) => scheduler,
        Err(response) => return *response,
    };
    let schedule: Schedule = match body.schedule.parse() {
        Ok(schedule) => schedule,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let trimmed = |items: Vec<String>| -> Vec<String> {
        items
            .into_iter()
            .map(|item| item.trim().to_owned())
            .filter(|item| !item.is_empty())
            .collect()
    };
    let file = scheduler.sources();
    let name = body.name.trim().to_owned();
    // An edit keeps when the source was added and whether it is paused.
    let (added, paused) = match file.load() {
        Ok(sources) => sources
            .into_iter()
            .find(|source| source.name == name)
            .map_or_else(|| (Timestamp::now(), false), |old| (old.added, old.paused)),
        Err(message) => return error(StatusCode::INTERNAL_SERVER_ERROR, message),
    };
    let source = Source {
        name,
        paths: trimmed(body.paths).into_iter().map(PathBuf::from).collect(),
        exclude: trimmed(body.exclude),
        schedule,
        retention: body.retention,
        added,
        paused,
    };
    if let Some(missing) = source.paths.iter().find(|path| !path.exists()) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "{} does not exist on this computer — check the path (the backup runs here, not in the browser)",
                missing.display()
            ),
        );
    }
    if let Err(message) = file.upsert(source.clone()) {
        return error(StatusCode::BAD_REQUEST, message);
    }
    scheduler.wake();
    Json(json!({ "saved": source.name })).into_response()
}

/// Body of `POST /api/sources/{name}/pause`.
#[derive(Debug, Deserialize)]
pub(super) struct PauseBody {
    paused: bool,
}

/// `POST /api/sources/{name}/pause`: `{paused: true}` stops running the source on its
/// schedule, `false` resumes it.
pub(super) async fn pause(
    State(ui): State<Arc<Ui>>,
    UrlPath(name): UrlPath<String>,
    Json(body): Json<PauseBody>,
) -> Response {
    let scheduler = match scheduler(&ui) {
        Ok(scheduler) => scheduler,
        Err(response) => return *response,
    };
    match scheduler.sources().set_paused(&name, body.paused) {
        Ok(true) => {
            scheduler.wake();
            Json(json!({ "name": name, "paused": body.paused })).into_response()
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("there is no source named {name:?} — reload the page"),
        ),
        Err(message) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
}

/// `DELETE /api/sources/{name}`: removes a source (its snapshots stay).
pub(super) async fn remove(State(ui): State<Arc<Ui>>, UrlPath(name): UrlPath<String>) -> Response {
    let scheduler = match scheduler(&ui) {
        Ok(scheduler) => scheduler,
        Err(response) => return *response,
    };
    match scheduler.sources().remove(&name) {
        Ok(true) => {}
        Ok(false) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("there is no source named {name:?} — reload the page"),
            );
        }
        Err(message) => return error(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
    if let Err(message) = scheduler.forget_state(&name) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, message);
    }
    Json(json!({ "removed": name })).into_response()
}

/// `POST /api/sources/{name}/run`: starts a backup of the source now (answers at once; the
/// list shows its progress and result).
pub(super) async fn run_now(State(ui): State<Arc<Ui>>, UrlPath(name): UrlPath<String>) -> Response {
    let scheduler = match scheduler(&ui) {
        Ok(scheduler) => scheduler.clone(),
        Err(response) => return *response,
    };
    match SourceLock::is_held(scheduler.data_dir(), &name) {
        Ok(false) => {}
        Ok(true) => {
            return error(
                StatusCode::CONFLICT,
                "a backup of this source is already running — wait for it to finish",
            );
        }
        Err(message) => return error(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
    match scheduler.sources().load() {
        Ok(sources) if sources.iter().any(|source| source.name == name) => {}
        Ok(_) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("there is no source named {name:?} — reload the page"),
            );
        }
        Err(message) => return error(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
    let mut stopped = ui.shutdown.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            _ = scheduler.run_now(&name) => {}
            _ = stopped.wait_for(|stop| *stop) => {}
        }
    });
    (StatusCode::ACCEPTED, Json(json!({ "started": true }))).into_response()
}
