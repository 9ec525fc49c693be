//! `forget` by policy: the snapshot list is opened (host, paths, tags, time), grouped like
//! restic's `--group-by`, put on this machine's calendar (its time zone's UTC offset at each
//! snapshot's time, so daylight saving time moves no snapshot into another day) and given to
//! the core's retention engine; the snapshots no rule keeps are forgotten unless `dry_run`.
//! Also the local-time helpers `backup --time` uses.

use std::str::FromStr;
use std::time::SystemTime;

use cyberbackup_core::repo::retention::{RetentionError, RetentionPolicy, RetentionSnapshot};
use cyberbackup_core::repo::{SnapshotId, Timestamp};

use super::browse::SnapshotInfo;
use super::remote::RepoRemote;
use super::{Repository, short_hex};
use crate::v4::V4ClientError;

/// What `forget` groups snapshots by (restic's `--group-by host,paths`, `host`, `paths`, ``).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    /// Snapshots of different hosts are in different groups.
    pub host: bool,
    /// Snapshots of different path sets are in different groups.
    pub paths: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        Self {
            host: true,
            paths: true,
        }
    }
}

impl FromStr for GroupBy {
    type Err = String;

    /// Parses a comma-separated list of `host` and `paths` (empty: one group).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut group_by = Self {
            host: false,
            paths: false,
        };
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            match part {
                "host" => group_by.host = true,
                "paths" => group_by.paths = true,
                other => {
                    return Err(format!(
                        "cannot group by {other:?}: give host, paths, host,paths or '' (no grouping)"
                    ));
                }
            }
        }
        Ok(group_by)
    }
}

/// A snapshot's group under a [`GroupBy`]: its host and its paths, each when grouped by it.
type GroupKey<'a> = (Option<&'a [u8]>, Option<&'a [Vec<u8>]>);

/// A `forget` policy run: the rules, the grouping and the snapshot filters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForgetPolicy {
    /// The retention rules.
    pub policy: RetentionPolicy,
    /// How snapshots are grouped before the rules apply.
    pub group_by: GroupBy,
    /// Only snapshots of one of these hosts (none: every host).
    pub hosts: Vec<Vec<u8>>,
    /// Only snapshots whose paths include all of these.
    pub paths: Vec<Vec<u8>>,
    /// Only snapshots carrying all of these tags (a scheduled source's `source:NAME`).
    pub tags: Vec<Vec<u8>>,
}

/// One group of a `forget` run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ForgetGroup {
    /// The group's host (when grouped by host).
    pub host: Option<String>,
    /// The group's paths (when grouped by paths).
    pub paths: Option<Vec<String>>,
    /// Its snapshots, oldest first.
    pub snapshots: Vec<ForgetEntry>,
}

/// One snapshot's decision.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ForgetEntry {
    /// Full ID.
    pub id: String,
    /// First 8 hex digits.
    pub short_id: String,
    /// Local time, `YYYY-MM-DD HH:MM:SS±HH:MM`.
    pub time: String,
    /// Whether some rule keeps it.
    pub keep: bool,
    /// Every rule that keeps it (`last 1/3`, `daily 2026-11-30`, …).
    pub reasons: Vec<String>,
}

impl<R: RepoRemote> Repository<R> {
    /// Applies `plan` to the repository's snapshots and, unless `dry_run`, forgets every
    /// snapshot no rule keeps. Returns the decisions per group.
    ///
    /// # Errors
    /// [`V4ClientError::Usage`] for an invalid policy or a snapshot time outside the
    /// calendar; the remote's errors (snapshots forgotten before one failed stay forgotten).
    pub async fn forget_policy(
        &mut self,
        plan: &ForgetPolicy,
        dry_run: bool,
    ) -> Result<Vec<ForgetGroup>, V4ClientError> {
        plan.policy.validate().map_err(policy_error)?;
        let snapshots: Vec<SnapshotInfo> = self
            .snapshots()
            .await?
            .into_iter()
            .filter(|info| plan.selects(info))
            .collect();
        let input: Vec<RetentionSnapshot<'_, GroupKey<'_>>> = snapshots
            .iter()
            .map(|info| {
                let s = &info.snapshot;
                RetentionSnapshot {
                    id: info.id,
                    time: s.time,
                    utc_offset_secs: local_offset_secs(s.time),
                    group: (
                        plan.group_by.host.then_some(s.host.as_slice()),
                        plan.group_by.paths.then_some(s.paths.as_slice()),
                    ),
                    tags: &s.tags,
                }
            })
            .collect();
        let decisions = plan
            .policy
            .apply(&input, Some(now()))
            .map_err(policy_error)?;
        let mut groups: Vec<ForgetGroup> = Vec::new();
        let mut group_keys = Vec::new();
        let mut remove: Vec<SnapshotId> = Vec::new();
        // `snapshots()` is oldest first, so every group is too.
        for ((info, snapshot), decision) in snapshots.iter().zip(&input).zip(decisions) {
            let position = match group_keys.iter().position(|key| *key == snapshot.group) {
                Some(position) => position,
                None => {
                    let lossy = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
                    group_keys.push(snapshot.group);
                    groups.push(ForgetGroup {
                        host: snapshot.group.0.map(lossy),
                        paths: snapshot
                            .group
                            .1
                            .map(|paths| paths.iter().map(|p| lossy(p)).collect()),
                        snapshots: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            if !decision.is_kept() {
                remove.push(info.id);
            }
            groups[position].snapshots.push(ForgetEntry {
                id: info.id.to_hex(),
                short_id: short_hex(info.id.as_bytes()),
                time: local_display(info.snapshot.time),
                keep: decision.is_kept(),
                reasons: decision.reasons.iter().map(ToString::to_string).collect(),
            });
        }
        if !dry_run {
            for id in remove {
                self.remote.forget(id).await?;
            }
        }
        Ok(groups)
    }
}

impl ForgetPolicy {
    fn selects(&self, info: &SnapshotInfo) -> bool {
        let s = &info.snapshot;
        (self.hosts.is_empty() || self.hosts.contains(&s.host))
            && self.paths.iter().all(|path| s.paths.contains(path))
            && self.tags.iter().all(|tag| s.tags.contains(tag))
    }
}

/// A policy error as the command line names it (`--keep-daily must be a positive number`).
fn policy_error(error: RetentionError) -> V4ClientError {
    let message = match error {
        RetentionError::EmptyPolicy => {
            "give snapshots to forget or a --keep-* policy (e.g. --keep-daily 7)".to_owned()
        }
        RetentionError::TimeOutOfRange { id, .. } => format!(
            "snapshot {} has a time the calendar rules cannot place; forget it by ID or use --keep-last/--keep-tag only",
            short_hex(id.as_bytes())
        ),
        other => format!("--{other}"),
    };
    V4ClientError::Usage { message }
}

/// This machine's time zone (`TZ`, else `/etc/localtime`; UTC when neither is readable).
fn time_zone() -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC)
}

fn to_jiff(time: Timestamp) -> Option<jiff::Timestamp> {
    jiff::Timestamp::new(time.secs, i32::try_from(time.nanos).ok()?).ok()
}

/// The local UTC offset at `time`, in seconds (0 for a time outside the calendar: the
/// engine then reports it).
fn local_offset_secs(time: Timestamp) -> i32 {
    to_jiff(time).map_or(0, |instant| time_zone().to_offset(instant).seconds())
}

/// `time` in local time, `YYYY-MM-DD HH:MM:SS±HH:MM`.
fn local_display(time: Timestamp) -> String {
    match to_jiff(time) {
        Some(instant) => instant
            .to_zoned_datetime(time_zone())
            .strftime("%Y-%m-%d %H:%M:%S%:z")
            .to_string(),
        None => format!("{} s", time.secs),
    }
}

/// Parses `backup --time`: `YYYY-MM-DD HH:MM:SS` in local time (restic's format).
///
/// # Errors
/// [`V4ClientError::Usage`] for another format or a time that does not exist.
pub fn parse_local_time(text: &str) -> Result<Timestamp, V4ClientError> {
    let usage = || V4ClientError::Usage {
        message: format!(
            "--time {text:?}: give the snapshot's local time as \"YYYY-MM-DD HH:MM:SS\""
        ),
    };
    let civil = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", text).map_err(|_| usage())?;
    let instant = time_zone().to_timestamp(civil).map_err(|_| usage())?;
    Ok(Timestamp {
        secs: instant.as_second(),
        nanos: u32::try_from(instant.subsec_nanosecond()).map_err(|_| usage())?,
    })
}

/// Now, for keep-within's guard against snapshots dated in the future.
fn now() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        secs: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: since.subsec_nanos(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_by_parses_restics_values() {
        let parsed = |text: &str| text.parse::<GroupBy>().map(|g| (g.host, g.paths));
        assert_eq!(parsed("host,paths"), Ok((true, true)));
        assert_eq!(parsed("paths,host"), Ok((true, true)));
        assert_eq!(parsed("host"), Ok((true, false)));
        assert_eq!(parsed("paths"), Ok((false, true)));
        assert_eq!(parsed(""), Ok((false, false)));
        assert!(
            parsed("tags")
                .unwrap_err()
                .contains("cannot group by \"tags\"")
        );
    }

    #[test]
    fn policy_errors_name_the_flag() {
        let message = |error| policy_error(error).to_string();
        assert_eq!(
            message(RetentionError::ZeroCount { rule: "keep-daily" }),
            "--keep-daily must be a positive number"
        );
        assert!(message(RetentionError::EmptyPolicy).contains("--keep-*"));
    }

    #[test]
    fn backup_time_is_local_and_checked() {
        assert!(parse_local_time("2026-11-30 10:00:00").is_ok());
        for bad in [
            "2026-11-30",
            "2026-11-30T10:00:00",
            "2026-02-30 10:00:00",
            "yesterday",
        ] {
            assert!(
                matches!(parse_local_time(bad), Err(V4ClientError::Usage { .. })),
                "{bad}"
            );
        }
    }
}
