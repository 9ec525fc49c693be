//! Scheduled backups: the sources a user sets up (folders, excludes, a schedule, a
//! retention choice), when each is due, and the daemon that runs them.
//!
//! - [`plan`]: schedules and the due-time rules (catch-up, retry back-off); pure.
//! - [`sources`]: the sources file.
//! - [`state`]: what ran when, and the per-source locks.
//! - [`daemon`]: the [`Scheduler`] loop, used by `cyberbackup-client daemon` and the UI.
//! - [`install`]: the systemd user unit `schedule install` writes.
//! - [`cli`]: the `daemon` and `schedule` commands.

pub mod cli;
pub mod daemon;
pub mod install;
pub mod plan;
pub mod sources;
pub mod state;

pub use daemon::{EventSink, ScheduleEvent, Scheduler, SettingsSource, SourceStatus};
pub use plan::Schedule;
pub use sources::{Retention, Source, SourcesFile};
pub use state::{RunResult, RunState, SourceLock, StateFile};
