//! What the daemon remembers between runs (`schedule-state.json` beside the sources file):
//! each source's last attempt, last success and result, so that a restarted daemon — after
//! a reboot, or in the UI instead of the systemd unit — knows what is due. And the locks
//! that keep two backups of one source from ever running at once, across processes: an
//! advisory lock (`flock`) on `locks/NAME.lock`, which the kernel releases when the process
//! holding it dies, so a crash never leaves a source locked.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

/// File name of the state file in the data directory.
pub const STATE_FILE: &str = "schedule-state.json";
/// Directory of the per-source locks in the data directory.
pub const LOCK_DIR: &str = "locks";

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    /// The snapshot was saved with every file.
    Succeeded,
    /// The snapshot was saved, but some files could not be read.
    Partial,
    /// No snapshot was saved.
    Failed,
}

/// One source's history, as far as scheduling needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// Start of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<Timestamp>,
    /// Start of the last run that saved a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Timestamp>,
    /// End of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_finished: Option<Timestamp>,
    /// How the last attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<RunResult>,
    /// Failed attempts since the last success.
    #[serde(default)]
    pub failures_in_a_row: u32,
    /// The last saved snapshot's ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<String>,
    /// The last attempt's one-line outcome (the error, when it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The state file, read and rewritten whole (atomically, 0600) under a lock so that a UI
/// and a daemon updating different sources never lose each other's update.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
    lock: PathBuf,
}

impl StateFile {
    /// The state file of a data directory.
    #[must_use]
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(STATE_FILE),
            lock: data_dir.join(LOCK_DIR).join("state.lock"),
        }
    }

    /// Every source's state (a missing file: none ran yet).
    ///
    /// # Errors
    /// A sentence naming the file when it cannot be read or is damaged.
    pub fn load(&self) -> Result<BTreeMap<String, RunState>, String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
                format!(
                    "the schedule state {} is damaged ({err}) — move it away: every source then counts as never run and backs up at its next slot",
                    self.path.display()
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(err) => Err(format!(
                "cannot read the schedule state {}: {err} — check its permissions",
                self.path.display()
            )),
        }
    }

    /// Changes one source's state with `change`, under the state lock; returns the new
    /// state.
    ///
    /// # Errors
    /// The file's, or the lock's.
    pub fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut RunState),
    ) -> Result<RunState, String> {
        let _guard = lock_file(&self.lock, true)?
            .ok_or_else(|| format!("cannot lock the schedule state {}", self.lock.display()))?;
        let mut all = self.load()?;
        let state = all.entry(name.to_owned()).or_default();
        change(state);
        let updated = state.clone();
        let json = serde_json::to_vec_pretty(&all)
            .map_err(|err| format!("cannot encode the schedule state: {err}"))?;
        cyberbackup_fs::write_private(&self.path, &json).map_err(|err| {
            format!(
                "cannot save the schedule state {}: {err} — check that the directory is writable",
                self.path.display()
            )
        })?;
        Ok(updated)
    }

    /// Forgets a removed source's state.
    ///
    /// # Errors
    /// The file's, or the lock's.
    pub fn remove(&self, name: &str) -> Result<(), String> {
        let _guard = lock_file(&self.lock, true)?
            .ok_or_else(|| format!("cannot lock the schedule state {}", self.lock.display()))?;
        let mut all = self.load()?;
        if all.remove(name).is_some() {
            let json = serde_json::to_vec_pretty(&all)
                .map_err(|err| format!("cannot encode the schedule state: {err}"))?;
            cyberbackup_fs::write_private(&self.path, &json).map_err(|err| {
                format!(
                    "cannot save the schedule state {}: {err}",
                    self.path.display()
                )
            })?;
        }
        Ok(())
    }
}

/// A held lock on one source: no other backup of it runs, in any process, until dropped.
#[derive(Debug)]
pub struct SourceLock {
    _file: File,
}

impl SourceLock {
    /// Takes the lock of source `name` in `data_dir`, or `None` when a backup of it is
    /// running (in this process or another).
    ///
    /// # Errors
    /// A sentence when the lock file cannot be created.
    pub fn try_acquire(data_dir: &Path, name: &str) -> Result<Option<Self>, String> {
        let path = data_dir.join(LOCK_DIR).join(format!("{name}.lock"));
        Ok(lock_file(&path, false)?.map(|file| Self { _file: file }))
    }

    /// Whether a backup of source `name` is running now (someone holds its lock).
    ///
    /// # Errors
    /// As [`SourceLock::try_acquire`].
    pub fn is_held(data_dir: &Path, name: &str) -> Result<bool, String> {
        Ok(Self::try_acquire(data_dir, name)?.is_none())
    }
}

/// Opens (creating, 0600) and locks `path` exclusively: waiting when `wait`, else `None`
/// when another holder has it.
fn lock_file(path: &Path, wait: bool) -> Result<Option<File>, String> {
    let fail = |err: std::io::Error| {
        format!(
            "cannot use the lock file {}: {err} — check that the data directory is writable",
            path.display()
        )
    };
    if let Some(dir) = path.parent() {
        cyberbackup_fs::create_private_dir(dir).map_err(fail)?;
    }
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(fail)?
    };
    let operation = if wait {
        FlockOperation::LockExclusive
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    match rustix::fs::flock(&file, operation) {
        Ok(()) => Ok(Some(file)),
        Err(errno) if errno == rustix::io::Errno::WOULDBLOCK => Ok(None),
        Err(errno) => Err(fail(errno.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_lock_excludes_a_second_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = SourceLock::try_acquire(dir.path(), "docs").unwrap();
        assert!(first.is_some());
        assert!(
            SourceLock::try_acquire(dir.path(), "docs")
                .unwrap()
                .is_none()
        );
        assert!(SourceLock::is_held(dir.path(), "docs").unwrap());
        // Another source is independent.
        assert!(
            SourceLock::try_acquire(dir.path(), "photos")
                .unwrap()
                .is_some()
        );
        drop(first);
        assert!(!SourceLock::is_held(dir.path(), "docs").unwrap());
        assert!(
            SourceLock::try_acquire(dir.path(), "docs")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn updates_of_different_sources_keep_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::in_dir(dir.path());
        let when: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let file = file.clone();
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        file.update(&format!("s{i}"), |s| {
                            s.failures_in_a_row += 1;
                            s.last_attempt = Some(when);
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let all = file.load().unwrap();
        assert_eq!(all.len(), 8);
        assert!(all.values().all(|s| s.failures_in_a_row == 10), "{all:?}");
        file.remove("s3").unwrap();
        assert_eq!(file.load().unwrap().len(), 7);
    }
}
