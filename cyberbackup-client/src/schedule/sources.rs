//! The sources file: the folders a user wants backed up, each with its excludes, schedule
//! and retention (`sources.json` in the client's data directory; JSON, written atomically,
//! mode 0600). The UI and `cyberbackup-client schedule add` write it; the daemon rereads it
//! before each decision, so a change applies without a restart.

use std::path::{Path, PathBuf};

use cyberbackup_core::repo::retention::RetentionPolicy;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::Schedule;

/// File name of the sources file in the data directory.
pub const SOURCES_FILE: &str = "sources.json";
/// Longest source name.
pub const MAX_NAME_LEN: usize = 64;

/// One folder set backed up on a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Unique name: letters, digits, `.`, `_` and `-` (it names the source's lock file and
    /// tags its snapshots `source:NAME`).
    pub name: String,
    /// Absolute paths of the files and folders to back up.
    pub paths: Vec<PathBuf>,
    /// Exclude globs, as `backup --exclude`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// When it runs.
    pub schedule: Schedule,
    /// Which of its snapshots to keep after each backup.
    #[serde(default)]
    pub retention: Retention,
    /// When it was added (a daily source's first run is the first slot after this).
    pub added: Timestamp,
    /// Paused: not run on its schedule until resumed ("Back up now" still runs it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// Snapshots of a source to keep (restic's `--keep-*` counts); none set keeps every
/// snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// The newest N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// The newest of each of the last N hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    /// The newest of each of the last N days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// The newest of each of the last N weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// The newest of each of the last N months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// The newest of each of the last N years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
}

impl Retention {
    /// Whether every snapshot is kept (no rule set).
    #[must_use]
    pub fn keeps_everything(&self) -> bool {
        self.policy() == RetentionPolicy::default()
    }

    /// The repository's retention rules for these counts.
    #[must_use]
    pub fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            ..RetentionPolicy::default()
        }
    }
}

impl std::fmt::Display for Retention {
    /// `keep all`, or the rules as `7 daily, 4 weekly`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules = [
            (self.keep_last, "last"),
            (self.keep_hourly, "hourly"),
            (self.keep_daily, "daily"),
            (self.keep_weekly, "weekly"),
            (self.keep_monthly, "monthly"),
            (self.keep_yearly, "yearly"),
        ];
        let parts: Vec<String> = rules
            .iter()
            .filter_map(|(count, unit)| count.map(|n| format!("{n} {unit}")))
            .collect();
        if parts.is_empty() {
            f.write_str("keep all")
        } else {
            write!(f, "keep {}", parts.join(", "))
        }
    }
}

impl Source {
    /// The tag every snapshot of this source carries.
    #[must_use]
    pub fn tag(&self) -> String {
        format!("source:{}", self.name)
    }

    /// Checks the source as the daemon will use it; the one validator for sources, used by
    /// the UI, the command line and the loader.
    ///
    /// # Errors
    /// A sentence saying what is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        if self.paths.is_empty() {
            return Err(format!(
                "source {:?} has no folder: give at least one absolute path",
                self.name
            ));
        }
        if let Some(relative) = self.paths.iter().find(|path| !path.is_absolute()) {
            return Err(format!(
                "{} is not an absolute path: the daemon does not run in your working directory, so give the full path (starting with /)",
                relative.display()
            ));
        }
        if let Some(bad) = self
            .exclude
            .iter()
            .find_map(|glob| globset::Glob::new(glob).err())
        {
            return Err(format!("exclude pattern is not a valid glob: {bad}"));
        }
        if let Some(zero) = [
            self.retention.keep_last,
            self.retention.keep_hourly,
            self.retention.keep_daily,
            self.retention.keep_weekly,
            self.retention.keep_monthly,
            self.retention.keep_yearly,
        ]
        .into_iter()
        .flatten()
        .find(|count| *count == 0)
        {
            return Err(format!(
                "a retention count of {zero} would keep nothing: leave the field empty to not use that rule"
            ));
        }
        Ok(())
    }
}

/// Checks a source name: 1 to 64 letters, digits, `.`, `_` or `-`, not starting with `.`.
///
/// # Errors
/// A sentence saying which names are allowed.
pub fn validate_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.starts_with('.')
        || !name.chars().all(allowed)
    {
        return Err(format!(
            "source name {name:?} is not allowed: use 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-' (not starting with '.'), e.g. documents"
        ));
    }
    Ok(())
}

/// The sources file.
#[derive(Clone, Debug)]
pub struct SourcesFile {
    path: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SourcesData {
    sources: Vec<Source>,
}

impl SourcesFile {
    /// The sources file of a data directory.
    #[must_use]
    pub fn in_dir(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(SOURCES_FILE),
        }
    }

    /// Where it lives.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every source, in the order added; a missing file is none.
    ///
    /// # Errors
    /// A sentence naming the file when it cannot be read, is damaged, or holds an invalid
    /// source (edited by hand).
    pub fn load(&self) -> Result<Vec<Source>, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => {
                return Err(format!(
                    "cannot read the sources file {}: {err} — check its permissions",
                    self.path.display()
                ));
            }
        };
        let data: SourcesData = serde_json::from_slice(&bytes).map_err(|err| {
            format!(
                "the sources file {} is damaged ({err}) — correct it, or move it away and add the sources again",
                self.path.display()
            )
        })?;
        for source in &data.sources {
            source
                .validate()
                .map_err(|err| format!("the sources file {}: {err}", self.path.display()))?;
        }
        Ok(data.sources)
    }

    /// Adds a source, or replaces the one with its name.
    ///
    /// # Errors
    /// The source's validation error, or the file's.
    pub fn upsert(&self, source: Source) -> Result<(), String> {
        source.validate()?;
        let mut sources = self.load()?;
        match sources.iter_mut().find(|s| s.name == source.name) {
            Some(existing) => *existing = source,
            None => sources.push(source),
        }
        self.save(sources)
    }

    /// Pauses or resumes the source named `name`; returns whether it exists.
    ///
    /// # Errors
    /// The file's.
    pub fn set_paused(&self, name: &str, paused: bool) -> Result<bool, String> {
        let mut sources = self.load()?;
        let Some(source) = sources.iter_mut().find(|s| s.name == name) else {
            return Ok(false);
        };
        source.paused = paused;
        self.save(sources)?;
        Ok(true)
    }

    /// Removes the source named `name`; returns whether it existed.
    ///
    /// # Errors
    /// The file's.
    pub fn remove(&self, name: &str) -> Result<bool, String> {
        let mut sources = self.load()?;
        let before = sources.len();
        sources.retain(|s| s.name != name);
        if sources.len() == before {
            return Ok(false);
        }
        self.save(sources)?;
        Ok(true)
    }

    fn save(&self, sources: Vec<Source>) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(&SourcesData { sources })
            .map_err(|err| format!("cannot encode the sources: {err}"))?;
        cyberbackup_fs::write_private(&self.path, &json).map_err(|err| {
            format!(
                "cannot save the sources file {}: {err} — check that the directory is writable",
                self.path.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str) -> Source {
        Source {
            name: name.into(),
            paths: vec!["/home/me/Documents".into()],
            exclude: vec!["*.tmp".into()],
            schedule: Schedule::Daily {
                hour: 2,
                minute: 30,
            },
            retention: Retention {
                keep_daily: Some(7),
                keep_weekly: Some(4),
                ..Retention::default()
            },
            added: "2026-12-01T10:00:00Z".parse().unwrap(),
            paused: false,
        }
    }

    #[test]
    fn sources_are_added_replaced_and_removed_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = SourcesFile::in_dir(dir.path());
        assert_eq!(file.load().unwrap(), Vec::new());
        file.upsert(source("documents")).unwrap();
        file.upsert(source("photos")).unwrap();
        let mut changed = source("documents");
        changed.schedule = Schedule::AtLogin;
        file.upsert(changed.clone()).unwrap();
        assert_eq!(file.load().unwrap(), vec![changed, source("photos")]);
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(text.contains("\"schedule\": \"login\""), "{text}");
        assert!(file.set_paused("photos", true).unwrap());
        assert!(!file.set_paused("nope", true).unwrap());
        assert!(file.load().unwrap()[1].paused);
        assert!(
            std::fs::read_to_string(file.path())
                .unwrap()
                .contains("\"paused\": true")
        );
        assert!(file.set_paused("photos", false).unwrap());
        assert!(
            !std::fs::read_to_string(file.path())
                .unwrap()
                .contains("paused")
        );
        assert!(file.remove("documents").unwrap());
        assert!(!file.remove("documents").unwrap());
        assert_eq!(file.load().unwrap(), vec![source("photos")]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn invalid_sources_are_refused_with_the_fix() {
        type Breaks = fn(&mut Source);
        let cases: [(Breaks, &str); 6] = [
            (|s| s.name = "my docs".into(), "not allowed"),
            (|s| s.name = ".hidden".into(), "not allowed"),
            (|s| s.paths.clear(), "at least one absolute path"),
            (|s| s.paths = vec!["Documents".into()], "full path"),
            (|s| s.exclude = vec!["a[".into()], "not a valid glob"),
            (|s| s.retention.keep_daily = Some(0), "keep nothing"),
        ];
        for (breaks, expected) in cases {
            let mut bad = source("documents");
            breaks(&mut bad);
            let err = bad.validate().unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        assert_eq!(source("documents").validate(), Ok(()));
    }

    #[test]
    fn a_damaged_or_hand_broken_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let file = SourcesFile::in_dir(dir.path());
        std::fs::write(file.path(), b"{not json").unwrap();
        assert!(file.load().unwrap_err().contains("is damaged"));
        let broken = r#"{"sources":[{"name":"x","paths":["rel"],"schedule":"hourly","added":"2026-12-01T10:00:00Z"}]}"#;
        std::fs::write(file.path(), broken).unwrap();
        let err = file.load().unwrap_err();
        assert!(
            err.contains("sources.json") && err.contains("full path"),
            "{err}"
        );
        let bad_schedule = r#"{"sources":[{"name":"x","paths":["/a"],"schedule":"weekly","added":"2026-12-01T10:00:00Z"}]}"#;
        std::fs::write(file.path(), bad_schedule).unwrap();
        assert!(file.load().unwrap_err().contains("not understood"));
    }

    #[test]
    fn retention_reads_as_the_rules_it_sets() {
        assert_eq!(Retention::default().to_string(), "keep all");
        assert!(Retention::default().keeps_everything());
        let retention = source("d").retention;
        assert_eq!(retention.to_string(), "keep 7 daily, 4 weekly");
        assert!(!retention.keeps_everything());
        assert_eq!(retention.policy().keep_weekly, Some(4));
    }
}
