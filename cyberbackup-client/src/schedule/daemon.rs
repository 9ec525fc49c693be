//! The scheduler: runs each source's backup when it is due, then applies its retention.
//! `cyberbackup-client daemon` runs it in the foreground (the systemd user unit starts that
//! at login), and the local UI runs it in its own process, so that the sources a user adds
//! are backed up as long as either is running.
//!
//! - One source at a time, in the order added: backups do not compete for the disk and
//!   the uplink. A source is never backed up twice at once, even by a UI and a daemon
//!   together: each run holds the source's lock ([`SourceLock`]) and, once it holds it,
//!   reads the state again, so a slot another process just served is not served twice.
//! - The loop never sleeps longer than [`MAX_NAP`] of monotonic time before reading the
//!   wall clock again: a laptop that slept through a slot notices within that, and runs the
//!   missed backup once ([`super::plan`]).
//! - A failed run (server down, disk unreadable) is retried with a back-off from a minute
//!   to an hour; its sentence is kept in the state for the UI and `schedule list`.
//! - Each snapshot carries the tag `source:NAME`, and the retention rules apply only to
//!   this host's snapshots with that tag. Forgetting needs the device's manage role; on an
//!   append-only device the backup still counts as done, and its message says why the
//!   rules were not applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::Notify;

use super::plan::retry_due;
use super::sources::{Source, SourcesFile};
use super::state::{RunResult, RunState, SourceLock, StateFile};
use crate::ClientError;
use crate::snapshot::{
    BackupEvent, BackupObserver, BackupOptions, ExcludeOptions, ForgetPolicy, KeyOptions,
    Repository,
};
use crate::ui::store::Settings;
use crate::v4::{V4Client, V4ClientError};

/// Longest the loop waits before looking at the wall clock again.
pub const MAX_NAP: Duration = Duration::from_secs(30);

/// Where the scheduler finds the connection settings (the UI's saved server and name, or
/// the command line's); called before each run, so a change applies to the next one.
pub type SettingsSource = Arc<dyn Fn() -> Result<Settings, String> + Send + Sync>;

/// Receives what the scheduler does (the CLI prints it, the UI shows it).
pub type EventSink = Arc<dyn Fn(&ScheduleEvent) + Send + Sync>;

/// Something the scheduler did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ScheduleEvent {
    /// A source's backup started.
    Started {
        /// The source.
        source: String,
    },
    /// A running backup's progress.
    Progress {
        /// The source.
        source: String,
        /// Files done.
        files_done: u64,
        /// Bytes done.
        bytes_done: u64,
        /// Files found by the pre-scan.
        total_files: u64,
        /// Their bytes.
        total_bytes: u64,
    },
    /// A source's backup ended.
    Finished {
        /// The source.
        source: String,
        /// How.
        result: RunResult,
        /// Its one-line outcome.
        message: String,
    },
    /// A due source was not run.
    Skipped {
        /// The source.
        source: String,
        /// Why.
        reason: String,
    },
    /// The sources or state could not be read (the loop goes on, and says so once).
    Problem {
        /// The sentence.
        message: String,
    },
}

/// A source with its state and next run, as the UI and `schedule list` show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceStatus {
    /// The source.
    #[serde(flatten)]
    pub source: Source,
    /// Its runs so far.
    pub state: RunState,
    /// When it runs next (`None`: paused, or an at-login source that already ran in this
    /// session).
    pub next_run: Option<Timestamp>,
    /// Whether a backup of it is running now (here or in another process).
    pub running: bool,
}

/// The scheduler of one data directory.
#[derive(Clone)]
pub struct Scheduler {
    data_dir: PathBuf,
    v4_identity: PathBuf,
    settings: SettingsSource,
    events: EventSink,
    started: Timestamp,
    tz: TimeZone,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("data_dir", &self.data_dir)
            .field("v4_identity", &self.v4_identity)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler over the sources and state in `data_dir`, backing up with the v4
    /// identity `v4_identity` (registered on the first run when it does not exist) and the
    /// settings `settings` gives. Its session (for at-login sources) starts now.
    #[must_use]
    pub fn new(
        data_dir: PathBuf,
        v4_identity: PathBuf,
        settings: SettingsSource,
        events: EventSink,
    ) -> Self {
        Self {
            data_dir,
            v4_identity,
            settings,
            events,
            started: Timestamp::now(),
            tz: TimeZone::try_system().unwrap_or(TimeZone::UTC),
            wake: Arc::new(Notify::new()),
        }
    }

    /// The data directory.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The sources file.
    #[must_use]
    pub fn sources(&self) -> SourcesFile {
        SourcesFile::in_dir(&self.data_dir)
    }

    fn state(&self) -> StateFile {
        StateFile::in_dir(&self.data_dir)
    }

    /// Makes the loop look again now (the sources changed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// When `source`, in `state`, is next due (`None` while it is paused).
    fn next_run(&self, source: &Source, state: &RunState) -> Option<Timestamp> {
        if source.paused {
            return None;
        }
        let scheduled =
            source
                .schedule
                .next_due(state.last_success, source.added, self.started, &self.tz);
        retry_due(scheduled, state.last_attempt, state.failures_in_a_row)
    }

    /// Every source with its state and next run.
    ///
    /// # Errors
    /// The sources file's or the state file's sentence.
    pub fn overview(&self) -> Result<Vec<SourceStatus>, String> {
        let sources = self.sources().load()?;
        let mut states = self.state().load()?;
        sources
            .into_iter()
            .map(|source| {
                let state = states.remove(&source.name).unwrap_or_default();
                Ok(SourceStatus {
                    next_run: self.next_run(&source, &state),
                    running: SourceLock::is_held(&self.data_dir, &source.name)?,
                    source,
                    state,
                })
            })
            .collect()
    }

    /// Forgets a removed source's state.
    ///
    /// # Errors
    /// The state file's sentence.
    pub fn forget_state(&self, name: &str) -> Result<(), String> {
        self.state().remove(name)
    }

    /// Runs due sources until `shutdown` completes (a running backup is then dropped; the
    /// server discards what it did not commit).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::select! {
            () = self.run_forever() => {}
            () = shutdown => {}
        }
    }

    async fn run_forever(&self) {
        let mut last_problem: Option<String> = None;
        loop {
            let nap = match self.run_due().await {
                Ok(nap) => {
                    last_problem = None;
                    nap
                }
                Err(message) => {
                    if last_problem.as_ref() != Some(&message) {
                        (self.events)(&ScheduleEvent::Problem {
                            message: message.clone(),
                        });
                        last_problem = Some(message);
                    }
                    MAX_NAP
                }
            };
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// Runs every source due now, one after the other; returns how long to wait before
    /// looking again.
    async fn run_due(&self) -> Result<Duration, String> {
        for status in self.overview()? {
            let due = status.next_run.is_some_and(|next| next <= Timestamp::now());
            if due && !status.running {
                // A lock or state file that cannot be written fails every source alike: it
                // is reported once by the loop, which then waits, instead of once a moment.
                self.run_source(&status.source, false).await?;
            }
        }
        let next = self
            .overview()?
            .iter()
            .filter(|status| !status.running)
            .filter_map(|status| status.next_run)
            .min();
        let wait = next.map_or(MAX_NAP, |next| {
            let until = Timestamp::now().duration_until(next);
            Duration::try_from(until).unwrap_or(Duration::ZERO)
        });
        // At least a moment, so that a source whose lock another process holds is not
        // polled in a tight loop.
        Ok(wait.clamp(Duration::from_millis(200), MAX_NAP))
    }

    /// Backs up the source named `name` now, whatever its schedule (the UI's "Back up
    /// now", `schedule run`); returns its state afterwards.
    ///
    /// # Errors
    /// A sentence when there is no such source, or it cannot be read.
    pub async fn run_now(&self, name: &str) -> Result<RunState, String> {
        let sources = self.sources().load()?;
        let Some(source) = sources.into_iter().find(|source| source.name == name) else {
            return Err(format!(
                "there is no source named {name:?} — `cyberbackup-client schedule list` shows the sources"
            ));
        };
        self.run_source(&source, true).await
    }

    /// Runs one source's backup under its lock (unless another holder has it, or — when
    /// not `forced` — another process already served this slot); records the outcome and
    /// returns the source's state. `Err`: its lock or state file cannot be used.
    async fn run_source(&self, source: &Source, forced: bool) -> Result<RunState, String> {
        let name = source.name.clone();
        let skip = |reason: String| {
            (self.events)(&ScheduleEvent::Skipped {
                source: name.clone(),
                reason,
            });
        };
        let Some(_lock) = SourceLock::try_acquire(&self.data_dir, &source.name)? else {
            skip("a backup of this source is already running".into());
            return Ok(self.current_state(&source.name));
        };
        let state = self.current_state(&source.name);
        let due = self
            .next_run(source, &state)
            .is_some_and(|next| next <= Timestamp::now());
        if !forced && !due {
            return Ok(state);
        }
        let started = Timestamp::now();
        self.state().update(&source.name, |state| {
            state.last_attempt = Some(started);
        })?;
        (self.events)(&ScheduleEvent::Started {
            source: name.clone(),
        });
        let outcome = self.back_up(source).await;
        let (result, message, snapshot) = match outcome {
            Ok(Done {
                summary,
                retention,
                warning,
            }) => {
                let result = if summary.unreadable.is_empty() {
                    RunResult::Succeeded
                } else {
                    RunResult::Partial
                };
                let mut message = format!(
                    "snapshot {} saved: {} file(s) new, {} changed, {} unmodified; {} bytes added",
                    &summary.snapshot_id[..8.min(summary.snapshot_id.len())],
                    summary.files_new,
                    summary.files_changed,
                    summary.files_unmodified,
                    summary.bytes_added
                );
                if !summary.unreadable.is_empty() {
                    message.push_str(&format!(
                        "; {} entr(ies) could not be read, e.g. {}",
                        summary.unreadable.len(),
                        summary.unreadable[0]
                    ));
                }
                match retention {
                    Retention::NotAsked | Retention::Forgot(0) => {}
                    Retention::Forgot(forgotten) => message.push_str(&format!(
                        "; {forgotten} older snapshot(s) forgotten by the retention rules"
                    )),
                    // The snapshot is saved: a retention that could not run is a warning,
                    // not a failed backup (it is tried again after the next one).
                    Retention::Failed(why) => {
                        message.push_str(&format!("; the retention rules were not applied: {why}"))
                    }
                }
                if let Some(warning) = warning {
                    message.push_str(&format!("; warning: {warning}"));
                }
                (result, message, Some(summary.snapshot_id))
            }
            Err(message) => (RunResult::Failed, message, None),
        };
        let finished = Timestamp::now();
        let recorded = self.state().update(&source.name, |state| {
            state.last_finished = Some(finished);
            state.last_result = Some(result);
            state.message = Some(message.clone());
            if result == RunResult::Failed {
                state.failures_in_a_row = state.failures_in_a_row.saturating_add(1);
            } else {
                state.failures_in_a_row = 0;
                state.last_success = Some(started);
                state.last_snapshot.clone_from(&snapshot);
            }
        });
        (self.events)(&ScheduleEvent::Finished {
            source: name,
            result,
            message,
        });
        recorded
    }

    fn current_state(&self, name: &str) -> RunState {
        self.state()
            .load()
            .ok()
            .and_then(|mut all| all.remove(name))
            .unwrap_or_default()
    }

    /// The backup itself and the retention; returns the summary and what the retention
    /// did, or the sentence of what went wrong (then no snapshot was saved).
    async fn back_up(&self, source: &Source) -> Result<Done, String> {
        let settings = (self.settings)()?;
        if settings.server.is_empty() || settings.name.is_empty() {
            return Err(
                "no server is set: enter the server address and a client name in the UI's server settings (or pass --server and --name to the daemon)".into(),
            );
        }
        let options = settings.v4_options(&self.v4_identity, true)?;
        let server = settings.server.clone();
        let failed = |error: V4ClientError| {
            ClientError::V4 {
                server: server.clone(),
                error,
            }
            .to_string()
        };
        let client = V4Client::connect(&options).await.map_err(failed)?;
        let keys = KeyOptions::new(&options.identity);
        let mut repo = Repository::open(client, &keys).await.map_err(failed)?;
        // A repository with only device keys cannot be restored on another machine: say so
        // on every run until a passphrase is set.
        let warning = repo.opened().recovery_warning();
        let backup = BackupOptions {
            paths: source.paths.clone(),
            tags: vec![source.tag()],
            exclude: ExcludeOptions {
                exclude: source.exclude.clone(),
                ..ExcludeOptions::default()
            },
            ..BackupOptions::default()
        };
        let mut progress = Progress {
            source: source.name.clone(),
            events: Arc::clone(&self.events),
        };
        let summary = repo.backup(&backup, &mut progress).await.map_err(failed)?;
        let retention = if source.retention.keeps_everything() {
            Retention::NotAsked
        } else {
            let plan = ForgetPolicy {
                policy: source.retention.policy(),
                hosts: vec![crate::snapshot::host_name()],
                tags: vec![source.tag().into_bytes()],
                ..ForgetPolicy::default()
            };
            match repo.forget_policy(&plan, false).await {
                Ok(groups) => Retention::Forgot(
                    groups
                        .iter()
                        .flat_map(|group| &group.snapshots)
                        .filter(|entry| !entry.keep)
                        .count(),
                ),
                Err(err) => Retention::Failed(failed(err)),
            }
        };
        // The snapshot is committed; a failed goodbye changes nothing.
        let _ignored = repo.into_remote().close().await;
        Ok(Done {
            summary,
            retention,
            warning,
        })
    }
}

/// What a run that saved a snapshot did.
struct Done {
    /// The backup's summary.
    summary: crate::snapshot::BackupSummary,
    /// What the retention did.
    retention: Retention,
    /// The repository's warning (created with this machine's key only).
    warning: Option<String>,
}

/// What a run's retention did.
enum Retention {
    /// The source keeps every snapshot.
    NotAsked,
    /// It forgot this many snapshots.
    Forgot(usize),
    /// It could not run (e.g. an append-only device); the sentence says why.
    Failed(String),
}

/// Turns a backup's events into the scheduler's.
struct Progress {
    source: String,
    events: EventSink,
}

impl BackupObserver for Progress {
    fn event(&mut self, event: &BackupEvent) {
        if let BackupEvent::Status {
            files_done,
            bytes_done,
            total_files,
            total_bytes,
            ..
        } = event
        {
            (self.events)(&ScheduleEvent::Progress {
                source: self.source.clone(),
                files_done: *files_done,
                bytes_done: *bytes_done,
                total_files: *total_files,
                total_bytes: *total_bytes,
            });
        }
    }
}
