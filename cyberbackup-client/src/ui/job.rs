//! One backup started from the UI: runs [`crate::v4::backup`] (protocol v4, the default) or
//! the v3 [`Client`] in-process on its own thread (the progress sink is not `Send`), turns
//! [`ProgressEvent`]s into the per-file and overall view the page shows, and records the
//! result in the history.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::http::StatusCode;
use serde_json::json;

use super::Ui;
use super::store::{HistoryEntry, UiProtocol};
use crate::progress::{Phase, ProgressEvent};
use crate::{Client, ClientError, ClientOptions, RetryPolicy};

/// Least time between two progress publications (file completions are always published).
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug, Clone)]
struct FileView {
    name: String,
    path: PathBuf,
    size: u64,
    sent: u64,
    status: &'static str,
    error: Option<String>,
    /// Protocol v4: the version the file became on the server.
    version: Option<u32>,
}

/// What the page shows of the current (or last) backup.
#[derive(Debug, Clone)]
pub(super) struct JobView {
    id: u64,
    protocol: UiProtocol,
    state: &'static str,
    phase: String,
    files: Vec<FileView>,
    overall_sent: u64,
    overall_total: u64,
    started: Instant,
    started_at: String,
    sending_since: Option<Instant>,
    finished_after: Option<f64>,
    message: Option<String>,
}

impl JobView {
    pub(super) fn is_running(&self) -> bool {
        self.state == "running"
    }

    fn elapsed(&self) -> f64 {
        self.finished_after
            .unwrap_or_else(|| self.started.elapsed().as_secs_f64())
    }

    pub(super) fn to_json(&self) -> serde_json::Value {
        let percent = |sent: u64, total: u64, done: bool| -> f64 {
            if total == 0 {
                if done { 100.0 } else { 0.0 }
            } else {
                (sent as f64 * 100.0 / total as f64).min(100.0)
            }
        };
        // Seconds spent sending: up to now, or up to the end once the job finished.
        let sending = self.sending_since.map_or(0.0, |since| {
            let offset = since.duration_since(self.started).as_secs_f64();
            self.finished_after
                .map_or_else(|| since.elapsed().as_secs_f64(), |end| end - offset)
        });
        let speed = if sending > 0.2 {
            self.overall_sent as f64 / sending
        } else {
            0.0
        };
        let eta = (speed > 0.0 && self.is_running())
            .then(|| self.overall_total.saturating_sub(self.overall_sent) as f64 / speed);
        let all_done = self.files.iter().all(|f| f.status == "verified");
        let files: Vec<_> = self
            .files
            .iter()
            .map(|f| {
                json!({
                    "name": f.name,
                    "path": f.path,
                    "size": f.size,
                    "sent": f.sent,
                    "percent": percent(f.sent, f.size, f.status == "verified"),
                    "status": f.status,
                    "error": f.error,
                    "version": f.version,
                })
            })
            .collect();
        json!({
            "id": self.id,
            "protocol": self.protocol,
            "state": self.state,
            "phase": self.phase,
            "started_at": self.started_at,
            "elapsed_secs": self.elapsed(),
            "files": files,
            "overall": {
                "sent": self.overall_sent,
                "total": self.overall_total,
                "percent": percent(self.overall_sent, self.overall_total, all_done),
                "bytes_per_sec": speed,
                "eta_secs": eta,
            },
            "message": self.message,
        })
    }

    fn file_mut(&mut self, path: &std::path::Path) -> Option<&mut FileView> {
        self.files.iter_mut().find(|f| f.path == path)
    }

    /// Applies one progress event; `true` when it must be published at once.
    fn apply(&mut self, event: &ProgressEvent) -> bool {
        match event {
            ProgressEvent::Connecting { server, attempt } => {
                self.phase = if *attempt <= 1 {
                    format!("connecting to {server}")
                } else {
                    format!("connecting to {server} (attempt {attempt})")
                };
                true
            }
            ProgressEvent::Registered { .. }
            | ProgressEvent::Reconnected { .. }
            | ProgressEvent::LoggedIn { .. } => {
                self.phase = "sending".into();
                true
            }
            ProgressEvent::Transfer(t) => {
                self.sending_since.get_or_insert_with(Instant::now);
                self.overall_sent = t.overall_sent;
                self.overall_total = self.overall_total.max(t.overall_total);
                let phase = match t.phase {
                    Phase::Sending => "sending",
                    Phase::Verifying => "verifying",
                };
                self.phase = format!("{phase} {}", t.name);
                if let Some(file) = self.file_mut(&t.path) {
                    file.sent = t.sent;
                    file.status = phase;
                }
                false
            }
            ProgressEvent::FileDone(report) => {
                if let Some(file) = self.file_mut(&report.path) {
                    if report.verified {
                        file.status = "verified";
                        file.sent = file.size;
                        file.version = report.v4.as_ref().and_then(|v4| v4.version);
                    } else {
                        file.status = "failed";
                        file.error.clone_from(&report.failure);
                    }
                }
                true
            }
            other => {
                if let Some(line) = other.describe() {
                    self.message = Some(line);
                }
                true
            }
        }
    }
}

/// How the backup thread reaches the server.
enum Plan {
    V4(Box<crate::v4::V4Options>, RetryPolicy),
    V3(Box<ClientOptions>),
}

/// Starts a backup of every listed item; returns the job id.
pub(super) fn start(ui: &Arc<Ui>) -> Result<u64, (StatusCode, String)> {
    let (paths, plan, id) = {
        let mut inner = ui.lock();
        if inner.job.as_ref().is_some_and(JobView::is_running) {
            return Err((
                StatusCode::CONFLICT,
                "a backup is already running — wait for it or cancel it".into(),
            ));
        }
        if inner.items.is_empty() {
            return Err((
                StatusCode::BAD_REQUEST,
                "add files first: drop them on the page, pick them, or type a path".into(),
            ));
        }
        if inner.settings.server.is_empty() || inner.settings.name.is_empty() {
            return Err((
                StatusCode::BAD_REQUEST,
                "enter the server address and a client name, then save them".into(),
            ));
        }
        let retry = RetryPolicy::with_retries(ui.options.retries);
        let protocol = inner.settings.protocol;
        let plan = match protocol {
            UiProtocol::V4 => {
                let options = super::remote::v4_options(ui, &inner.settings, true)
                    .map_err(|message| (StatusCode::BAD_REQUEST, message))?;
                Plan::V4(Box::new(options), retry)
            }
            UiProtocol::V3 => {
                if ui.options.v4_identity.exists() {
                    return Err((
                        StatusCode::CONFLICT,
                        format!(
                            "protocol v3 is refused: this computer has a v4 identity ({}) and v4 identities never fall back to v3 — choose protocol v4 in the server settings",
                            ui.options.v4_identity.display()
                        ),
                    ));
                }
                let mut options = ClientOptions::new(
                    inner.settings.server.clone(),
                    inner.settings.name.clone(),
                    ui.options.identity.clone(),
                );
                options.retry = retry;
                Plan::V3(Box::new(options))
            }
        };
        let id = inner.next_job;
        inner.next_job += 1;
        let files: Vec<FileView> = inner
            .items
            .iter()
            .map(|i| FileView {
                name: i.name.clone(),
                path: i.path.clone(),
                size: i.size,
                sent: 0,
                status: "waiting",
                error: None,
                version: None,
            })
            .collect();
        let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        inner.job = Some(JobView {
            id,
            protocol,
            state: "running",
            phase: "starting".into(),
            overall_total: files.iter().map(|f| f.size).sum(),
            files,
            overall_sent: 0,
            started: Instant::now(),
            started_at: now_rfc3339(),
            sending_since: None,
            finished_after: None,
            message: None,
        });
        inner.notice = None;
        (paths, plan, id)
    };
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
    ui.lock().cancel = Some(cancel_tx);
    ui.publish();
    let worker = Arc::clone(ui);
    let spawned = std::thread::Builder::new()
        .name(format!("ui-backup-{id}"))
        .spawn(move || run(&worker, plan, &paths, cancel_rx));
    if let Err(err) = spawned {
        finish(
            ui,
            Outcome::Failed(format!("cannot start the backup: {err}")),
        );
        return Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot start the backup: {err}"),
        ));
    }
    Ok(id)
}

enum Outcome {
    Done(crate::BackupReport),
    Failed(String),
    Cancelled,
}

fn run(ui: &Arc<Ui>, plan: Plan, paths: &[PathBuf], cancel: tokio::sync::oneshot::Receiver<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let outcome = match runtime {
        Err(err) => Outcome::Failed(format!("cannot start the backup runtime: {err}")),
        Ok(runtime) => runtime.block_on(async {
            let mut last_publish = Instant::now();
            let mut sink = |event: &ProgressEvent| {
                let urgent = {
                    let mut inner = ui.lock();
                    inner.job.as_mut().is_some_and(|job| job.apply(event))
                };
                if urgent || last_publish.elapsed() >= PUBLISH_EVERY {
                    last_publish = Instant::now();
                    ui.publish();
                }
            };
            let work = async {
                match plan {
                    Plan::V4(options, retry) => {
                        crate::v4::backup(&options, paths, retry, &mut sink).await
                    }
                    Plan::V3(options) => {
                        let mut client = Client::new(*options)?;
                        let report = client.backup(paths, &mut sink).await?;
                        let _ignored = client.close(&mut sink).await;
                        Ok::<_, ClientError>(report)
                    }
                }
            };
            tokio::select! {
                result = work => match result {
                    Ok(report) => Outcome::Done(report),
                    Err(err) => Outcome::Failed(super::remote::for_the_page(&err.to_string())),
                },
                _ = cancel => Outcome::Cancelled,
            }
        }),
    };
    finish(ui, outcome);
}

/// Records the result, deletes the staged uploads and clears the list.
fn finish(ui: &Arc<Ui>, outcome: Outcome) {
    let staged: Vec<PathBuf> = {
        let mut inner = ui.lock();
        inner.cancel = None;
        let settings = inner.settings.clone();
        let Some(job) = inner.job.as_mut() else {
            return;
        };
        job.finished_after = Some(job.started.elapsed().as_secs_f64());
        match &outcome {
            Outcome::Done(report) => {
                for file in &report.files {
                    job.apply(&ProgressEvent::FileDone(file.clone()));
                }
                let failed = report.files.iter().filter(|f| !f.verified).count();
                if failed == 0 {
                    job.state = "succeeded";
                    job.phase = "done".into();
                    job.overall_sent = job.overall_total;
                    job.message = Some(format!(
                        "{} file(s) backed up to {} and verified",
                        report.files.len(),
                        report.server
                    ));
                } else {
                    job.state = "failed";
                    job.phase = "done".into();
                    job.message = Some(format!(
                        "{failed} of {} file(s) failed — see the reason next to each file",
                        report.files.len()
                    ));
                }
            }
            Outcome::Failed(message) => {
                job.state = "failed";
                job.phase = "stopped".into();
                job.message = Some(message.clone());
            }
            Outcome::Cancelled => {
                job.state = "cancelled";
                job.phase = "cancelled".into();
                job.message = Some(
                    "the backup was cancelled; files not yet verified were not kept by the server"
                        .into(),
                );
            }
        }
        for file in &mut job.files {
            if matches!(file.status, "waiting" | "sending" | "verifying") {
                file.status = "not sent";
            }
        }
        let verified: Vec<&FileView> = job
            .files
            .iter()
            .filter(|f| f.status == "verified")
            .collect();
        let entry = HistoryEntry {
            id: job.id,
            started_at: job.started_at.clone(),
            duration_secs: job.elapsed(),
            server: settings.server,
            name: settings.name,
            files: job.files.len(),
            verified: verified.len(),
            bytes: verified.iter().map(|f| f.size).sum(),
            result: job.state.to_owned(),
            message: job.message.clone(),
            file_names: job.files.iter().map(|f| f.name.clone()).collect(),
            protocol: Some(job.protocol.as_str().to_owned()),
        };
        inner.history.push(entry);
        if let Err(message) = ui.save_store(&inner) {
            inner.notice = Some(message);
        }
        let staged = inner
            .items
            .iter()
            .filter(|i| i.source == "upload")
            .map(|i| i.path.clone())
            .collect();
        inner.items.clear();
        inner.staged_bytes = 0;
        staged
    };
    for path in staged {
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    ui.publish();
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let now = now_rfc3339();

        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'), "{now}");
    }
}
