//! Retention policies: which snapshots to keep, in restic's vocabulary (`forget --keep-last`,
//! `--keep-hourly`, `-daily`, `-weekly`, `-monthly`, `-yearly`, `--keep-within`, `--keep-tag`).
//!
//! Pure: the caller passes each snapshot's time, the UTC offset to put it on a calendar (the
//! client its local zone's offset at that time, the server 0), a group key and its tags, and
//! gets one [`Decision`] per snapshot, in input order. No clock and no time zone database are
//! read here; calendar arithmetic is `jiff`'s civil dates at fixed offsets.
//!
//! Semantics (restic's `forget`, `internal/restic/snapshot_policy.go`):
//! - snapshots are grouped by their group key and each group is evaluated on its own, newest
//!   first (equal times: the larger ID counts as newer, so every caller decides alike);
//! - `keep_last` keeps the newest N;
//! - each calendar rule keeps the newest snapshot of each of the newest N hours, days, ISO
//!   weeks, months or years that have snapshots; when a rule still has a count left at the
//!   group's oldest snapshot, that one is kept too ("oldest", so the history kept is as long
//!   as the counts allow);
//! - `keep_within` keeps every snapshot newer than the group's newest snapshot minus the
//!   duration (years, months and days on the calendar like Go's `AddDate`, then hours); the
//!   newest snapshot is taken among those not after `now`, when the caller gives `now`;
//! - `keep_tags` keeps every snapshot carrying all tags of any one of the tag sets;
//! - the rules combine as a union, and a kept snapshot lists every rule that kept it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Span;
use jiff::civil::{Date, DateTime};
use jiff::tz::Offset;

use super::id::SnapshotId;
use super::tree::Timestamp;

/// Which snapshots to keep. The rules combine as a union.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep the newest N snapshots.
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the newest N hours that have snapshots.
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the newest N days that have snapshots.
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the newest N ISO weeks that have snapshots.
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the newest N months that have snapshots.
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the newest N years that have snapshots.
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot within this duration before the group's newest snapshot.
    pub keep_within: Option<KeepWithin>,
    /// Keep every snapshot that carries all tags of one of these sets.
    pub keep_tags: Vec<Vec<Vec<u8>>>,
    /// With no rule at all, remove every snapshot instead of refusing the policy (restic
    /// refuses an empty policy; this is the caller's explicit opt-in).
    pub allow_empty: bool,
}

/// A `keep_within` duration: calendar years, months and days, then hours (restic's
/// `1y5m7d2h`; `w` is accepted as 7 days).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeepWithin {
    /// Calendar years.
    pub years: u32,
    /// Calendar months.
    pub months: u32,
    /// Days.
    pub days: u32,
    /// Hours.
    pub hours: u32,
}

/// One snapshot as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionSnapshot<'a, G> {
    /// Its ID (also the tie-break between equal times).
    pub id: SnapshotId,
    /// When it was made (the envelope's time).
    pub time: Timestamp,
    /// The UTC offset, in seconds, that puts `time` on the calendar (hours, days, weeks,
    /// months, years): the caller's local offset at `time`, or 0 for UTC.
    pub utc_offset_secs: i32,
    /// The group it is evaluated in (host and paths, the envelope's group, or `()`).
    pub group: G,
    /// Its tags (empty when the caller does not know them).
    pub tags: &'a [Vec<u8>],
}

/// The outcome for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The snapshot.
    pub id: SnapshotId,
    /// Every rule that keeps it, in policy order; empty when it is to be removed.
    pub reasons: Vec<KeepReason>,
}

impl Decision {
    /// Whether some rule keeps the snapshot.
    #[must_use]
    pub fn is_kept(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Why a snapshot is kept. `Display` gives restic-like text: `last 1/3`, `daily 2026-11-30`,
/// `weekly 2026-W48 (oldest)`, `within 7d`, `tag important`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeepReason {
    /// Among the newest `of`, the `nth` (1 = newest).
    Last {
        /// Position, 1 = the newest.
        nth: u32,
        /// The policy's `keep_last`.
        of: u32,
    },
    /// The newest snapshot of a calendar bucket.
    Bucket {
        /// The calendar rule.
        rule: BucketRule,
        /// The bucket it is the newest of.
        bucket: Bucket,
        /// Kept as the group's oldest snapshot while the rule had counts left, although
        /// a newer snapshot of the same bucket is kept already.
        oldest: bool,
    },
    /// Within the policy's duration of the group's newest snapshot.
    Within(KeepWithin),
    /// Carries every tag of this set.
    Tag(Vec<Vec<u8>>),
}

/// The calendar rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BucketRule {
    /// `keep_hourly`.
    Hourly,
    /// `keep_daily`.
    Daily,
    /// `keep_weekly` (ISO 8601 weeks, Monday first; week 1 holds the year's first Thursday).
    Weekly,
    /// `keep_monthly`.
    Monthly,
    /// `keep_yearly`.
    Yearly,
}

/// A calendar bucket, at the snapshot's UTC offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bucket {
    /// One hour of one day.
    Hour {
        /// Year.
        year: i16,
        /// Month, 1..=12.
        month: i8,
        /// Day of the month.
        day: i8,
        /// Hour, 0..=23.
        hour: i8,
    },
    /// One day.
    Day {
        /// Year.
        year: i16,
        /// Month, 1..=12.
        month: i8,
        /// Day of the month.
        day: i8,
    },
    /// One ISO week.
    Week {
        /// The ISO week-numbering year (differs from the calendar year near 1 January).
        year: i16,
        /// Week, 1..=53.
        week: i8,
    },
    /// One month.
    Month {
        /// Year.
        year: i16,
        /// Month, 1..=12.
        month: i8,
    },
    /// One year.
    Year {
        /// Year.
        year: i16,
    },
}

/// A policy that cannot be applied, or a snapshot time it cannot place on the calendar.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetentionError {
    /// No rule: restic refuses such a policy, since it would remove everything.
    #[error(
        "the retention policy has no rule, so it would remove every snapshot: give at least one keep rule"
    )]
    EmptyPolicy,
    /// A count of zero (leave the rule out instead).
    #[error("{rule} must be a positive number")]
    ZeroCount {
        /// The rule's name (`keep-daily`).
        rule: &'static str,
    },
    /// A `keep_within` of zero.
    #[error("keep-within must be a positive duration such as 7d, 2w3d or 1y6m")]
    ZeroWithin,
    /// A tag set without tags (it would keep every snapshot).
    #[error("keep-tag needs at least one tag")]
    EmptyTagSet,
    /// A duration that is not `<number><y|m|w|d|h>…`.
    #[error("invalid duration {text:?}: {reason} (examples: 7d, 2w3d, 1y6m, 12h)")]
    BadDuration {
        /// What was given.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A snapshot time or UTC offset outside the calendar's range (years -9999..=9999,
    /// offsets within ±25:59:59).
    #[error(
        "snapshot {id}: time {secs} s with UTC offset {utc_offset_secs} s is outside the calendar's range"
    )]
    TimeOutOfRange {
        /// The snapshot.
        id: SnapshotId,
        /// Its time, Unix seconds.
        secs: i64,
        /// The offset given for it.
        utc_offset_secs: i32,
    },
}

impl RetentionPolicy {
    /// Whether the policy has no rule.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.counts().iter().all(|(_, count)| count.is_none())
            && self.keep_within.is_none()
            && self.keep_tags.is_empty()
    }

    /// Checks the policy.
    ///
    /// # Errors
    /// [`RetentionError::EmptyPolicy`] (unless `allow_empty`), [`RetentionError::ZeroCount`],
    /// [`RetentionError::ZeroWithin`], [`RetentionError::EmptyTagSet`].
    pub fn validate(&self) -> Result<(), RetentionError> {
        if self.is_empty() && !self.allow_empty {
            return Err(RetentionError::EmptyPolicy);
        }
        if let Some((rule, _)) = self
            .counts()
            .into_iter()
            .find(|(_, count)| *count == Some(0))
        {
            return Err(RetentionError::ZeroCount { rule });
        }
        if self.keep_within == Some(KeepWithin::default()) {
            return Err(RetentionError::ZeroWithin);
        }
        if self.keep_tags.iter().any(Vec::is_empty) {
            return Err(RetentionError::EmptyTagSet);
        }
        Ok(())
    }

    /// Decides, for each snapshot, keep (with every reason) or remove. The result is in the
    /// order of `snapshots`. `now`, when given, keeps snapshots dated after it from being
    /// the newest snapshot that `keep_within` counts back from (restic's guard against a
    /// clock that was ahead); it is never compared with anything else.
    ///
    /// # Errors
    /// As [`Self::validate`]; [`RetentionError::TimeOutOfRange`] when a calendar rule or
    /// `keep_within` needs a snapshot's calendar time and it is out of range.
    pub fn apply<G: Ord>(
        &self,
        snapshots: &[RetentionSnapshot<'_, G>],
        now: Option<Timestamp>,
    ) -> Result<Vec<Decision>, RetentionError> {
        self.validate()?;
        let calendar = self.keep_within.is_some()
            || self.counts()[1..].iter().any(|(_, count)| count.is_some());
        let civil = snapshots
            .iter()
            .map(|snapshot| calendar.then(|| civil_time(snapshot)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let mut groups: BTreeMap<&G, Vec<usize>> = BTreeMap::new();
        for (index, snapshot) in snapshots.iter().enumerate() {
            groups.entry(&snapshot.group).or_default().push(index);
        }
        let mut decisions: Vec<Decision> = snapshots
            .iter()
            .map(|snapshot| Decision {
                id: snapshot.id,
                reasons: Vec::new(),
            })
            .collect();
        for mut members in groups.into_values() {
            members.sort_by(|&a, &b| {
                let key = |i: usize| (snapshots[i].time, snapshots[i].id);
                key(b).cmp(&key(a))
            });
            self.apply_group(snapshots, &civil, &members, now, &mut decisions);
        }
        Ok(decisions)
    }

    /// One group, `members` newest first.
    fn apply_group<G>(
        &self,
        snapshots: &[RetentionSnapshot<'_, G>],
        civil: &[Option<DateTime>],
        members: &[usize],
        now: Option<Timestamp>,
        decisions: &mut [Decision],
    ) {
        let mut last_left = self.keep_last.unwrap_or(0);
        let rules = [
            (BucketRule::Hourly, self.keep_hourly),
            (BucketRule::Daily, self.keep_daily),
            (BucketRule::Weekly, self.keep_weekly),
            (BucketRule::Monthly, self.keep_monthly),
            (BucketRule::Yearly, self.keep_yearly),
        ];
        let mut buckets: Vec<(BucketRule, u32, Option<Bucket>)> = rules
            .into_iter()
            .filter_map(|(rule, count)| Some((rule, count?, None)))
            .collect();
        // Inner `None`: every snapshot is within (all are after `now`, like restic's zero
        // "latest", or the threshold is before the calendar's range).
        let within_after = self.keep_within.map(|within| {
            members
                .iter()
                .find(|&&i| now.is_none_or(|now| snapshots[i].time <= now))
                .and_then(|&anchor| civil[anchor])
                .and_then(|newest| within.before(newest))
        });
        for (position, &index) in members.iter().enumerate() {
            let is_oldest = position + 1 == members.len();
            let reasons = &mut decisions[index].reasons;
            if last_left > 0 {
                last_left -= 1;
                let of = self.keep_last.unwrap_or(0);
                reasons.push(KeepReason::Last {
                    nth: of - last_left,
                    of,
                });
            }
            if let Some(time) = civil[index] {
                for (rule, left, last) in &mut buckets {
                    if *left == 0 {
                        continue;
                    }
                    let bucket = rule.bucket_of(time);
                    let repeated = *last == Some(bucket);
                    if repeated && !is_oldest {
                        continue;
                    }
                    *left -= 1;
                    *last = Some(bucket);
                    reasons.push(KeepReason::Bucket {
                        rule: *rule,
                        bucket,
                        oldest: repeated,
                    });
                }
            }
            if let (Some(within), Some(after)) = (self.keep_within, within_after) {
                let inside = match (after, civil[index]) {
                    (Some(after), Some(time)) => time > after,
                    _ => true,
                };
                if inside {
                    reasons.push(KeepReason::Within(within));
                }
            }
            let tags = snapshots[index].tags;
            for set in &self.keep_tags {
                if set.iter().all(|tag| tags.contains(tag)) {
                    reasons.push(KeepReason::Tag(set.clone()));
                }
            }
        }
    }

    fn counts(&self) -> [(&'static str, Option<u32>); 6] {
        [
            ("keep-last", self.keep_last),
            ("keep-hourly", self.keep_hourly),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
            ("keep-yearly", self.keep_yearly),
        ]
    }
}

impl KeepWithin {
    /// The civil time `self` before `newest`: years, months and days first, normalised like
    /// Go's `AddDate` (31 March minus one month is 3 March, not 28 February), then hours.
    /// `None` when that is before the calendar's range.
    fn before(self, newest: DateTime) -> Option<DateTime> {
        let months = i64::from(newest.year()) * 12 + i64::from(newest.month())
            - 1
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let year = i16::try_from(months.div_euclid(12)).ok()?;
        let month = i8::try_from(months.rem_euclid(12) + 1).ok()?;
        let days = i64::from(newest.day()) - 1 - i64::from(self.days);
        let date = Date::new(year, month, 1)
            .ok()?
            .checked_add(Span::new().try_days(days).ok()?)
            .ok()?;
        date.to_datetime(newest.time())
            .checked_sub(Span::new().try_hours(self.hours).ok()?)
            .ok()
    }
}

impl FromStr for KeepWithin {
    type Err = RetentionError;

    /// Parses `<number><unit>…` with units `y`, `m` (months), `w` (7 days), `d`, `h`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason| RetentionError::BadDuration {
            text: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let mut within = Self::default();
        let mut number: Option<u32> = None;
        for c in text.chars() {
            if let Some(digit) = c.to_digit(10) {
                let value = number
                    .unwrap_or(0)
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(digit))
                    .ok_or_else(|| bad("a number is too large"))?;
                number = Some(value);
                continue;
            }
            let (field, factor) = match c {
                'y' => (&mut within.years, 1),
                'm' => (&mut within.months, 1),
                'w' => (&mut within.days, 7),
                'd' => (&mut within.days, 1),
                'h' => (&mut within.hours, 1),
                _ => return Err(bad("units are y, m, w, d and h")),
            };
            let value = number.take().ok_or_else(|| bad("a unit has no number"))?;
            *field = value
                .checked_mul(factor)
                .and_then(|value| field.checked_add(value))
                .ok_or_else(|| bad("a number is too large"))?;
        }
        if number.is_some() {
            return Err(bad("the last number has no unit"));
        }
        Ok(within)
    }
}

impl fmt::Display for KeepWithin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ];
        if parts.iter().all(|(value, _)| *value == 0) {
            return f.write_str("0h");
        }
        for (value, unit) in parts {
            if value > 0 {
                write!(f, "{value}{unit}")?;
            }
        }
        Ok(())
    }
}

impl BucketRule {
    /// The bucket `time` falls in.
    fn bucket_of(self, time: DateTime) -> Bucket {
        let (year, month, day) = (time.year(), time.month(), time.day());
        match self {
            Self::Hourly => Bucket::Hour {
                year,
                month,
                day,
                hour: time.hour(),
            },
            Self::Daily => Bucket::Day { year, month, day },
            Self::Weekly => {
                let week = time.date().iso_week_date();
                Bucket::Week {
                    year: week.year(),
                    week: week.week(),
                }
            }
            Self::Monthly => Bucket::Month { year, month },
            Self::Yearly => Bucket::Year { year },
        }
    }

    /// The rule's word in reasons (`daily`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Hourly => "hourly",
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::Yearly => "yearly",
        }
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Hour {
                year,
                month,
                day,
                hour,
            } => write!(f, "{year:04}-{month:02}-{day:02} {hour:02}:00"),
            Self::Day { year, month, day } => write!(f, "{year:04}-{month:02}-{day:02}"),
            Self::Week { year, week } => write!(f, "{year:04}-W{week:02}"),
            Self::Month { year, month } => write!(f, "{year:04}-{month:02}"),
            Self::Year { year } => write!(f, "{year:04}"),
        }
    }
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Last { nth, of } => write!(f, "last {nth}/{of}"),
            Self::Bucket {
                rule,
                bucket,
                oldest,
            } => {
                write!(f, "{} {bucket}", rule.name())?;
                if *oldest {
                    f.write_str(" (oldest)")?;
                }
                Ok(())
            }
            Self::Within(within) => write!(f, "within {within}"),
            Self::Tag(set) => {
                f.write_str("tag ")?;
                for (i, tag) in set.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(&String::from_utf8_lossy(tag))?;
                }
                Ok(())
            }
        }
    }
}

/// The snapshot's civil (wall-clock) time at its UTC offset.
fn civil_time<G>(snapshot: &RetentionSnapshot<'_, G>) -> Result<DateTime, RetentionError> {
    let out_of_range = || RetentionError::TimeOutOfRange {
        id: snapshot.id,
        secs: snapshot.time.secs,
        utc_offset_secs: snapshot.utc_offset_secs,
    };
    let nanos = i32::try_from(snapshot.time.nanos).map_err(|_| out_of_range())?;
    let instant = jiff::Timestamp::new(snapshot.time.secs, nanos).map_err(|_| out_of_range())?;
    let offset = Offset::from_seconds(snapshot.utc_offset_secs).map_err(|_| out_of_range())?;
    Ok(offset.to_datetime(instant))
}
