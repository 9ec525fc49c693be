//! When a source's next backup is due: the [`Schedule`] a user picks (hourly, every N
//! minutes, daily at a local time, at login), the retry back-off after a failure, and the
//! catch-up rule. Pure functions of the times they are given (no clock is read here), so
//! every case is a unit test.
//!
//! Catch-up: a source is due when the first scheduled time after its last successful run
//! has passed. A laptop that slept through 02:30, or a machine that was off, runs the
//! backup once when the daemon next looks — not once per missed slot.

use std::fmt;
use std::str::FromStr;

use jiff::tz::TimeZone;
use jiff::{Timestamp, civil};

/// Shortest interval a schedule may have (a test schedule; the UI offers minutes).
pub const MIN_INTERVAL_SECS: u64 = 1;
/// First retry delay after a failed run; it doubles with each failure in a row.
pub const FIRST_RETRY_SECS: i64 = 60;
/// Longest retry delay after failures in a row.
pub const MAX_RETRY_SECS: i64 = 3600;

/// How often a source is backed up.
///
/// Written and read as text, the form the command line and the sources file use:
/// `hourly`, `every 15m` (also `90s`, `2h`), `daily 02:30`, `login`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Schedule {
    /// Every `secs` seconds after the last successful run (hourly is 3600).
    Interval {
        /// Seconds between runs.
        secs: u64,
    },
    /// Every day at a local wall-clock time.
    Daily {
        /// Hour, 0–23.
        hour: i8,
        /// Minute, 0–59.
        minute: i8,
    },
    /// Once each time the daemon starts: at login, when `schedule install` set it up.
    AtLogin,
}

impl Schedule {
    /// When a source with this schedule is next due. `last_success` is its last successful
    /// run's start, `added` when the source was created, `daemon_started` when this daemon
    /// started. `None`: not due again in this daemon's life (an at-login source that ran).
    #[must_use]
    pub fn next_due(
        self,
        last_success: Option<Timestamp>,
        added: Timestamp,
        daemon_started: Timestamp,
        tz: &TimeZone,
    ) -> Option<Timestamp> {
        match self {
            Self::Interval { secs } => Some(match last_success {
                // A new source runs at once: its first snapshot is the baseline.
                None => added,
                Some(last) => last
                    .saturating_add(jiff::SignedDuration::from_secs(
                        i64::try_from(secs).unwrap_or(i64::MAX),
                    ))
                    .unwrap_or(Timestamp::MAX),
            }),
            Self::Daily { hour, minute } => Some(next_wall_clock(
                last_success.unwrap_or(added),
                hour,
                minute,
                tz,
            )),
            Self::AtLogin => match last_success {
                Some(last) if last >= daemon_started => None,
                _ => Some(daemon_started),
            },
        }
    }
}

/// The first instant strictly after `after` whose local time in `tz` is `hour:minute`. A
/// time the clocks skip (spring forward) runs at the first instant after the gap; a time
/// that occurs twice runs at its first occurrence.
fn next_wall_clock(after: Timestamp, hour: i8, minute: i8, tz: &TimeZone) -> Timestamp {
    let mut date = tz.to_datetime(after).date();
    // Two days always reach a later occurrence; a third guards a zone that skips a day.
    for _ in 0..3 {
        // `to_timestamp` resolves a gap forward and a fold to its first instant.
        let candidate = tz.to_timestamp(date.to_datetime(civil::time(hour, minute, 0, 0)));
        if let Ok(candidate) = candidate {
            if candidate > after {
                return candidate;
            }
        }
        match date.tomorrow() {
            Ok(next) => date = next,
            Err(_) => break,
        }
    }
    Timestamp::MAX
}

/// When a source whose last runs failed may be tried again: the schedule's time, but not
/// before a back-off of 1, 2, 4 … minutes (at most an hour) after the last failed attempt.
#[must_use]
pub fn retry_due(
    scheduled: Option<Timestamp>,
    last_attempt: Option<Timestamp>,
    failures_in_a_row: u32,
) -> Option<Timestamp> {
    let (Some(scheduled), Some(attempt)) = (scheduled, last_attempt) else {
        return scheduled;
    };
    if failures_in_a_row == 0 {
        return Some(scheduled);
    }
    let exponent = failures_in_a_row.saturating_sub(1).min(16);
    let delay = FIRST_RETRY_SECS
        .saturating_mul(1_i64 << exponent)
        .min(MAX_RETRY_SECS);
    let earliest = attempt
        .saturating_add(jiff::SignedDuration::from_secs(delay))
        .unwrap_or(Timestamp::MAX);
    Some(scheduled.max(earliest))
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Interval { secs: 3600 } => f.write_str("hourly"),
            Self::Interval { secs } if secs % 3600 == 0 => write!(f, "every {}h", secs / 3600),
            Self::Interval { secs } if secs % 60 == 0 => write!(f, "every {}m", secs / 60),
            Self::Interval { secs } => write!(f, "every {secs}s"),
            Self::Daily { hour, minute } => write!(f, "daily {hour:02}:{minute:02}"),
            Self::AtLogin => f.write_str("login"),
        }
    }
}

impl From<Schedule> for String {
    fn from(schedule: Schedule) -> Self {
        schedule.to_string()
    }
}

impl TryFrom<String> for Schedule {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl FromStr for Schedule {
    type Err = String;

    /// Parses `hourly`, `every 15m` / `every 90s` / `every 2h`, `daily HH:MM`, `login`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "schedule {text:?} is not understood: give hourly, every 15m (or 90s, 2h), daily 02:30, or login"
            )
        };
        let text_lower = text.trim().to_ascii_lowercase();
        let mut words = text_lower.split_whitespace();
        let schedule = match (words.next(), words.next(), words.next()) {
            (Some("hourly"), None, None) => Self::Interval { secs: 3600 },
            (Some("login" | "at-login"), None, None) => Self::AtLogin,
            (Some("every"), Some(amount), None) => {
                let split = amount.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
                let (number, unit) = amount.split_at(split);
                let number: u64 = number.parse().map_err(|_| bad())?;
                let scale = match unit {
                    "s" => 1,
                    "m" | "min" => 60,
                    "h" => 3600,
                    _ => return Err(bad()),
                };
                let secs = number.checked_mul(scale).ok_or_else(bad)?;
                if secs < MIN_INTERVAL_SECS {
                    return Err(format!(
                        "schedule {text:?}: the interval must be at least {MIN_INTERVAL_SECS} s"
                    ));
                }
                Self::Interval { secs }
            }
            (Some("daily"), Some(time), None) => {
                let (hour, minute) = time.split_once(':').ok_or_else(bad)?;
                let hour: i8 = hour.parse().map_err(|_| bad())?;
                let minute: i8 = minute.parse().map_err(|_| bad())?;
                if !(0..=23).contains(&hour) || !(0..=59).contains(&minute) {
                    return Err(format!(
                        "schedule {text:?}: the time must be HH:MM between 00:00 and 23:59"
                    ));
                }
                Self::Daily { hour, minute }
            }
            _ => return Err(bad()),
        };
        Ok(schedule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn paris() -> TimeZone {
        TimeZone::get("Europe/Paris").unwrap()
    }

    #[test]
    fn schedules_round_trip_through_their_text() {
        for text in [
            "hourly",
            "every 15m",
            "every 90s",
            "every 2h",
            "daily 02:30",
            "login",
        ] {
            let schedule: Schedule = text.parse().unwrap();
            assert_eq!(schedule.to_string(), text);
        }
        assert_eq!(
            "every 60m".parse::<Schedule>().unwrap(),
            Schedule::Interval { secs: 3600 }
        );
        for bad in [
            "weekly",
            "every",
            "every 0s",
            "every 5x",
            "daily 24:00",
            "daily 7",
            "",
        ] {
            let err = bad.parse::<Schedule>().unwrap_err();
            assert!(err.contains("schedule"), "{bad}: {err}");
        }
    }

    #[test]
    fn an_interval_runs_a_new_source_at_once_then_after_each_success() {
        let added = at("2026-12-01T10:00:00Z");
        let hourly = Schedule::Interval { secs: 3600 };
        assert_eq!(
            hourly.next_due(None, added, added, &TimeZone::UTC),
            Some(added)
        );
        assert_eq!(
            hourly.next_due(
                Some(at("2026-12-01T10:00:05Z")),
                added,
                added,
                &TimeZone::UTC
            ),
            Some(at("2026-12-01T11:00:05Z"))
        );
    }

    #[test]
    fn daily_catches_up_once_after_missed_days() {
        let daily = Schedule::Daily {
            hour: 2,
            minute: 30,
        };
        let tz = paris();
        // Added in the afternoon: the first run is tonight, not now.
        let added = at("2026-12-01T15:00:00Z");
        assert_eq!(
            daily.next_due(None, added, added, &tz),
            Some(at("2026-12-02T01:30:00Z"))
        );
        // Last run three days ago: due at the first 02:30 after it, long past, so the
        // daemon runs it once now; after that run the next is tomorrow's.
        let last = at("2026-11-28T01:30:10Z");
        let due = daily.next_due(Some(last), added, added, &tz).unwrap();
        assert_eq!(due, at("2026-11-29T01:30:00Z"));
        let caught_up = at("2026-12-01T08:00:00Z");
        assert_eq!(
            daily.next_due(Some(caught_up), added, added, &tz),
            Some(at("2026-12-02T01:30:00Z"))
        );
    }

    #[test]
    fn daily_follows_the_local_clock_across_daylight_saving() {
        let daily = Schedule::Daily {
            hour: 2,
            minute: 30,
        };
        let tz = paris();
        // 2027-03-28: clocks jump from 02:00 to 03:00; 02:30 does not exist and the run is
        // at the first instant after the gap (03:30 CEST = 01:30 UTC).
        let before = at("2027-03-27T12:00:00Z");
        assert_eq!(
            daily.next_due(Some(before), before, before, &tz),
            Some(at("2027-03-28T01:30:00Z"))
        );
        // The day after, 02:30 CEST is 00:30 UTC.
        let after = at("2027-03-28T12:00:00Z");
        assert_eq!(
            daily.next_due(Some(after), after, after, &tz),
            Some(at("2027-03-29T00:30:00Z"))
        );
    }

    #[test]
    fn at_login_runs_once_per_daemon_start() {
        let added = at("2026-12-01T08:00:00Z");
        let started = at("2026-12-01T09:00:00Z");
        let login = Schedule::AtLogin;
        assert_eq!(
            login.next_due(None, added, started, &TimeZone::UTC),
            Some(started)
        );
        let earlier_session = at("2026-11-30T09:00:00Z");
        assert_eq!(
            login.next_due(Some(earlier_session), added, started, &TimeZone::UTC),
            Some(started)
        );
        let this_session = at("2026-12-01T09:00:01Z");
        assert_eq!(
            login.next_due(Some(this_session), added, started, &TimeZone::UTC),
            None
        );
    }

    #[test]
    fn failures_back_off_from_one_minute_to_an_hour() {
        let scheduled = Some(at("2026-12-01T10:00:00Z"));
        let attempt = Some(at("2026-12-01T10:00:00Z"));
        assert_eq!(retry_due(scheduled, attempt, 0), scheduled);
        assert_eq!(
            retry_due(scheduled, attempt, 1),
            Some(at("2026-12-01T10:01:00Z"))
        );
        assert_eq!(
            retry_due(scheduled, attempt, 3),
            Some(at("2026-12-01T10:04:00Z"))
        );
        assert_eq!(
            retry_due(scheduled, attempt, 40),
            Some(at("2026-12-01T11:00:00Z"))
        );
        // A schedule later than the back-off wins.
        let later = Some(at("2026-12-02T10:00:00Z"));
        assert_eq!(retry_due(later, attempt, 2), later);
        assert_eq!(retry_due(None, attempt, 2), None);
    }
}
