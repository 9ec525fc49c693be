#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Table-driven tests of the retention engine (`cyberbackup_core::repo::retention`): every rule
//! on fixed snapshot times, restic's documented example, calendar edges (midnight at a non-zero
//! offset, ISO week 53 across the new year, a leap day, Go-style month arithmetic), groups,
//! ties, counts larger than the snapshots, unions of rules and the reasons' text.

use cyberbackup_core::repo::retention::{
    KeepWithin, RetentionError, RetentionPolicy, RetentionSnapshot,
};
use cyberbackup_core::repo::{SnapshotId, Timestamp};
use jiff::civil::DateTime;
use jiff::tz::Offset;

/// One snapshot of a case: a label, its wall-clock time at `offset_h` hours east of UTC,
/// its group and tags.
#[derive(Clone, Copy)]
struct Snap {
    label: &'static str,
    local: &'static str,
    offset_h: i32,
    group: u8,
    tags: &'static [&'static str],
}

const fn snap(label: &'static str, local: &'static str) -> Snap {
    Snap {
        label,
        local,
        offset_h: 0,
        group: 0,
        tags: &[],
    }
}

struct Case {
    name: &'static str,
    policy: RetentionPolicy,
    snapshots: Vec<Snap>,
    now: Option<&'static str>,
    /// Every snapshot's reasons (none: removed), by label.
    expected: &'static [(&'static str, &'static [&'static str])],
}

fn time(local: &str, offset_h: i32) -> Timestamp {
    let civil: DateTime = local.parse().unwrap();
    let instant = Offset::from_seconds(offset_h * 3600)
        .unwrap()
        .to_timestamp(civil)
        .unwrap();
    Timestamp {
        secs: instant.as_second(),
        nanos: u32::try_from(instant.subsec_nanosecond()).unwrap(),
    }
}

/// IDs grow with the label's position in the case, so ties break by it.
fn id(position: usize) -> SnapshotId {
    let mut bytes = [0u8; 32];
    bytes[0] = u8::try_from(position).unwrap();
    SnapshotId(bytes)
}

fn run(case: &Case) -> Result<Vec<(&'static str, Vec<String>)>, RetentionError> {
    let tags: Vec<Vec<Vec<u8>>> = case
        .snapshots
        .iter()
        .map(|s| s.tags.iter().map(|t| t.as_bytes().to_vec()).collect())
        .collect();
    let input: Vec<RetentionSnapshot<'_, u8>> = case
        .snapshots
        .iter()
        .zip(&tags)
        .enumerate()
        .map(|(position, (s, tags))| RetentionSnapshot {
            id: id(position),
            time: time(s.local, s.offset_h),
            utc_offset_secs: s.offset_h * 3600,
            group: s.group,
            tags,
        })
        .collect();
    let decisions = case
        .policy
        .apply(&input, case.now.map(|now| time(now, 0)))?;
    Ok(case
        .snapshots
        .iter()
        .zip(decisions)
        .enumerate()
        .map(|(position, (s, decision))| {
            assert_eq!(decision.id, id(position), "decisions are in input order");
            assert_eq!(decision.is_kept(), !decision.reasons.is_empty());
            let reasons = decision.reasons.iter().map(ToString::to_string).collect();
            (s.label, reasons)
        })
        .collect())
}

fn check(cases: &[Case]) {
    for case in cases {
        let got = run(case).unwrap_or_else(|err| panic!("{}: {err}", case.name));
        let expected: Vec<(&str, Vec<String>)> = case
            .expected
            .iter()
            .map(|(label, reasons)| (*label, reasons.iter().map(|r| (*r).to_owned()).collect()))
            .collect();
        assert_eq!(got, expected, "case {}", case.name);
    }
}

fn policy() -> RetentionPolicy {
    RetentionPolicy::default()
}

fn within(text: &str) -> Option<KeepWithin> {
    Some(text.parse().unwrap())
}

/// restic's documentation (doc/060_forget.rst): one backup every Sunday for 12 weeks;
/// `forget --keep-daily 4` keeps the last four.
#[test]
fn restics_documented_example_keeps_the_last_four_sundays() {
    check(&[Case {
        name: "restic keep-daily 4",
        policy: RetentionPolicy {
            keep_daily: Some(4),
            ..policy()
        },
        snapshots: vec![
            snap("0a1f9759", "2019-09-01 11:00:00"),
            snap("46cfe4d5", "2019-09-08 11:00:00"),
            snap("f6b1f037", "2019-09-15 11:00:00"),
            snap("eb430a5d", "2019-09-22 11:00:00"),
            snap("8cf1cb9a", "2019-09-29 11:00:00"),
            snap("5d33b116", "2019-10-06 11:00:00"),
            snap("b9553125", "2019-10-13 11:00:00"),
            snap("e1a7b58b", "2019-10-20 11:00:00"),
            snap("8f8018c0", "2019-10-27 11:00:00"),
            snap("59403279", "2019-11-03 11:00:00"),
            snap("dfee9fb4", "2019-11-10 11:00:00"),
            snap("e1ae2f40", "2019-11-17 11:00:00"),
        ],
        now: None,
        expected: &[
            ("0a1f9759", &[]),
            ("46cfe4d5", &[]),
            ("f6b1f037", &[]),
            ("eb430a5d", &[]),
            ("8cf1cb9a", &[]),
            ("5d33b116", &[]),
            ("b9553125", &[]),
            ("e1a7b58b", &[]),
            ("8f8018c0", &["daily 2019-10-27"]),
            ("59403279", &["daily 2019-11-03"]),
            ("dfee9fb4", &["daily 2019-11-10"]),
            ("e1ae2f40", &["daily 2019-11-17"]),
        ],
    }]);
}

#[test]
fn keep_last_keeps_the_newest_n_and_all_when_n_is_larger() {
    let five = vec![
        snap("a", "2026-11-26 10:00:00"),
        snap("b", "2026-11-27 10:00:00"),
        snap("c", "2026-11-30 10:00:00"),
        snap("d", "2026-11-28 10:00:00"),
        snap("e", "2026-11-29 10:00:00"),
    ];
    check(&[
        Case {
            name: "last 3 of 5 (input not sorted)",
            policy: RetentionPolicy {
                keep_last: Some(3),
                ..policy()
            },
            snapshots: five.clone(),
            now: None,
            expected: &[
                ("a", &[]),
                ("b", &[]),
                ("c", &["last 1/3"]),
                ("d", &["last 3/3"]),
                ("e", &["last 2/3"]),
            ],
        },
        Case {
            name: "last 7 of 5",
            policy: RetentionPolicy {
                keep_last: Some(7),
                ..policy()
            },
            snapshots: five,
            now: None,
            expected: &[
                ("a", &["last 5/7"]),
                ("b", &["last 4/7"]),
                ("c", &["last 1/7"]),
                ("d", &["last 3/7"]),
                ("e", &["last 2/7"]),
            ],
        },
    ]);
}

#[test]
fn hourly_and_daily_keep_the_newest_of_each_bucket_at_the_hour_and_midnight_edges() {
    check(&[
        Case {
            name: "hourly 2",
            policy: RetentionPolicy {
                keep_hourly: Some(2),
                ..policy()
            },
            snapshots: vec![
                snap("10:05", "2026-11-30 10:05:00"),
                snap("10:40", "2026-11-30 10:40:00"),
                snap("11:10", "2026-11-30 11:10:00"),
                snap("12:59", "2026-11-30 12:59:59"),
                snap("13:00", "2026-11-30 13:00:00"),
            ],
            now: None,
            expected: &[
                ("10:05", &[]),
                ("10:40", &[]),
                ("11:10", &[]),
                ("12:59", &["hourly 2026-11-30 12:00"]),
                ("13:00", &["hourly 2026-11-30 13:00"]),
            ],
        },
        Case {
            name: "daily 3 skips a day without snapshots, midnight starts a day",
            policy: RetentionPolicy {
                keep_daily: Some(3),
                ..policy()
            },
            snapshots: vec![
                snap("26 morning", "2026-11-26 09:00:00"),
                snap("26 evening", "2026-11-26 18:00:00"),
                snap("28", "2026-11-28 08:00:00"),
                snap("29 last second", "2026-11-29 23:59:59"),
                snap("30 midnight", "2026-11-30 00:00:00"),
            ],
            now: None,
            expected: &[
                ("26 morning", &[]),
                ("26 evening", &[]),
                ("28", &["daily 2026-11-28"]),
                ("29 last second", &["daily 2026-11-29"]),
                ("30 midnight", &["daily 2026-11-30"]),
            ],
        },
    ]);
}

#[test]
fn calendar_buckets_are_taken_at_each_snapshots_offset() {
    // The same three instants, 21:00, 22:30 and 23:30 UTC on 29 November, seen at UTC+1 and
    // at UTC.
    let east = |label, local| Snap {
        offset_h: 1,
        ..snap(label, local)
    };
    let daily = RetentionPolicy {
        keep_daily: Some(2),
        ..policy()
    };
    check(&[
        Case {
            name: "UTC+1: the last one is already 30 November",
            policy: daily.clone(),
            snapshots: vec![
                east("21:00Z", "2026-11-29 22:00:00"),
                east("22:30Z", "2026-11-29 23:30:00"),
                east("23:30Z", "2026-11-30 00:30:00"),
            ],
            now: None,
            expected: &[
                ("21:00Z", &[]),
                ("22:30Z", &["daily 2026-11-29"]),
                ("23:30Z", &["daily 2026-11-30"]),
            ],
        },
        Case {
            name: "UTC: one day, so the oldest is kept with the count left",
            policy: daily,
            snapshots: vec![
                snap("21:00Z", "2026-11-29 21:00:00"),
                snap("22:30Z", "2026-11-29 22:30:00"),
                snap("23:30Z", "2026-11-29 23:30:00"),
            ],
            now: None,
            expected: &[
                ("21:00Z", &["daily 2026-11-29 (oldest)"]),
                ("22:30Z", &[]),
                ("23:30Z", &["daily 2026-11-29"]),
            ],
        },
    ]);
}

#[test]
fn weekly_uses_iso_weeks_across_week_53_and_yearly_uses_calendar_years() {
    // 1 January 2026 is a Thursday, so 2026 has an ISO week 53: 28 Dec 2026 - 3 Jan 2027.
    let snapshots = vec![
        snap("Sun 27 Dec", "2026-12-27 12:00:00"),
        snap("Mon 28 Dec", "2026-12-28 12:00:00"),
        snap("Thu 31 Dec", "2026-12-31 12:00:00"),
        snap("Sun 3 Jan", "2027-01-03 12:00:00"),
        snap("Mon 4 Jan", "2027-01-04 12:00:00"),
    ];
    check(&[
        Case {
            name: "weekly 3",
            policy: RetentionPolicy {
                keep_weekly: Some(3),
                ..policy()
            },
            snapshots: snapshots.clone(),
            now: None,
            expected: &[
                ("Sun 27 Dec", &["weekly 2026-W52"]),
                ("Mon 28 Dec", &[]),
                ("Thu 31 Dec", &[]),
                ("Sun 3 Jan", &["weekly 2026-W53"]),
                ("Mon 4 Jan", &["weekly 2027-W01"]),
            ],
        },
        Case {
            name: "yearly 2",
            policy: RetentionPolicy {
                keep_yearly: Some(2),
                ..policy()
            },
            snapshots,
            now: None,
            expected: &[
                ("Sun 27 Dec", &[]),
                ("Mon 28 Dec", &[]),
                ("Thu 31 Dec", &["yearly 2026"]),
                ("Sun 3 Jan", &[]),
                ("Mon 4 Jan", &["yearly 2027"]),
            ],
        },
    ]);
}

#[test]
fn monthly_and_daily_around_a_leap_day() {
    let snapshots = vec![
        snap("31 Jan", "2024-01-31 12:00:00"),
        snap("28 Feb", "2024-02-28 12:00:00"),
        snap("29 Feb", "2024-02-29 12:00:00"),
        snap("1 Mar", "2024-03-01 00:00:00"),
    ];
    check(&[
        Case {
            name: "monthly 2",
            policy: RetentionPolicy {
                keep_monthly: Some(2),
                ..policy()
            },
            snapshots: snapshots.clone(),
            now: None,
            expected: &[
                ("31 Jan", &[]),
                ("28 Feb", &[]),
                ("29 Feb", &["monthly 2024-02"]),
                ("1 Mar", &["monthly 2024-03"]),
            ],
        },
        Case {
            name: "daily 2",
            policy: RetentionPolicy {
                keep_daily: Some(2),
                ..policy()
            },
            snapshots,
            now: None,
            expected: &[
                ("31 Jan", &[]),
                ("28 Feb", &[]),
                ("29 Feb", &["daily 2024-02-29"]),
                ("1 Mar", &["daily 2024-03-01"]),
            ],
        },
    ]);
}

#[test]
fn a_rule_with_counts_left_keeps_the_oldest_too() {
    check(&[Case {
        name: "daily 5 over two days",
        policy: RetentionPolicy {
            keep_daily: Some(5),
            ..policy()
        },
        snapshots: vec![
            snap("29 08:00", "2026-11-29 08:00:00"),
            snap("29 18:00", "2026-11-29 18:00:00"),
            snap("29 12:00", "2026-11-29 12:00:00"),
            snap("30 10:00", "2026-11-30 10:00:00"),
        ],
        now: None,
        expected: &[
            ("29 08:00", &["daily 2026-11-29 (oldest)"]),
            ("29 18:00", &["daily 2026-11-29"]),
            ("29 12:00", &[]),
            ("30 10:00", &["daily 2026-11-30"]),
        ],
    }]);
}

#[test]
fn keep_within_counts_back_from_the_newest_snapshot_on_the_calendar() {
    check(&[
        Case {
            name: "7d: strictly after the threshold, however late `now` is",
            policy: RetentionPolicy {
                keep_within: within("7d"),
                ..policy()
            },
            snapshots: vec![
                snap("20th", "2026-11-20 12:00:00"),
                snap("exactly 7d", "2026-11-23 12:00:00"),
                snap("7d minus 1s", "2026-11-23 12:00:01"),
                snap("newest", "2026-11-30 12:00:00"),
            ],
            now: Some("2030-01-01 00:00:00"),
            expected: &[
                ("20th", &[]),
                ("exactly 7d", &[]),
                ("7d minus 1s", &["within 7d"]),
                ("newest", &["within 7d"]),
            ],
        },
        Case {
            name: "1m from 31 March is 3 March (Go's AddDate), not 28 February",
            policy: RetentionPolicy {
                keep_within: within("1m"),
                ..policy()
            },
            snapshots: vec![
                snap("2 Mar", "2026-03-02 10:00:00"),
                snap("3 Mar 10:00", "2026-03-03 10:00:00"),
                snap("3 Mar 10:00:01", "2026-03-03 10:00:01"),
                snap("newest", "2026-03-31 10:00:00"),
            ],
            now: None,
            expected: &[
                ("2 Mar", &[]),
                ("3 Mar 10:00", &[]),
                ("3 Mar 10:00:01", &["within 1m"]),
                ("newest", &["within 1m"]),
            ],
        },
        Case {
            name: "1y6m2h across a leap day",
            policy: RetentionPolicy {
                keep_within: within("1y6m2h"),
                ..policy()
            },
            snapshots: vec![
                snap("at threshold", "2023-02-28 22:00:00"),
                snap("after threshold", "2023-02-28 22:00:01"),
                snap("newest", "2024-08-29 00:00:00"),
            ],
            now: None,
            expected: &[
                ("at threshold", &[]),
                ("after threshold", &["within 1y6m2h"]),
                ("newest", &["within 1y6m2h"]),
            ],
        },
        Case {
            name: "a snapshot after `now` is kept but is not the newest counted from",
            policy: RetentionPolicy {
                keep_within: within("7d"),
                ..policy()
            },
            snapshots: vec![
                snap("20th", "2026-11-20 12:00:00"),
                snap("30th", "2026-11-30 12:00:00"),
                snap("future", "2026-12-25 12:00:00"),
            ],
            now: Some("2026-12-01 00:00:00"),
            expected: &[
                ("20th", &[]),
                ("30th", &["within 7d"]),
                ("future", &["within 7d"]),
            ],
        },
        Case {
            name: "without `now` the future snapshot is the newest",
            policy: RetentionPolicy {
                keep_within: within("7d"),
                ..policy()
            },
            snapshots: vec![
                snap("20th", "2026-11-20 12:00:00"),
                snap("30th", "2026-11-30 12:00:00"),
                snap("future", "2026-12-25 12:00:00"),
            ],
            now: None,
            expected: &[("20th", &[]), ("30th", &[]), ("future", &["within 7d"])],
        },
    ]);
}

#[test]
fn keep_tag_keeps_snapshots_with_every_tag_of_a_set() {
    let tagged = |label, tags| Snap {
        tags,
        ..snap(label, "2026-11-30 10:00:00")
    };
    check(&[Case {
        name: "tag sets",
        policy: RetentionPolicy {
            keep_tags: vec![
                vec![b"important".to_vec()],
                vec![b"a".to_vec(), b"b".to_vec()],
            ],
            ..policy()
        },
        snapshots: vec![
            tagged("important", &["important"]),
            tagged("a only", &["a"]),
            tagged("a and b", &["b", "a"]),
            tagged("all", &["a", "important", "b"]),
            tagged("none", &[]),
        ],
        now: None,
        expected: &[
            ("important", &["tag important"]),
            ("a only", &[]),
            ("a and b", &["tag a,b"]),
            ("all", &["tag important", "tag a,b"]),
            ("none", &[]),
        ],
    }]);
}

#[test]
fn groups_are_evaluated_apart_and_ties_break_by_id_whatever_the_order() {
    let in_group = |label, local, group| Snap {
        group,
        ..snap(label, local)
    };
    let last_one = RetentionPolicy {
        keep_last: Some(1),
        ..policy()
    };
    check(&[
        Case {
            name: "two groups interleaved",
            policy: last_one.clone(),
            snapshots: vec![
                in_group("g1 old", "2026-11-28 10:00:00", 1),
                in_group("g2 old", "2026-11-29 10:00:00", 2),
                in_group("g1 new", "2026-11-29 11:00:00", 1),
                in_group("g2 new", "2026-11-30 10:00:00", 2),
            ],
            now: None,
            expected: &[
                ("g1 old", &[]),
                ("g2 old", &[]),
                ("g1 new", &["last 1/1"]),
                ("g2 new", &["last 1/1"]),
            ],
        },
        Case {
            name: "a tie: the larger ID (the later position here) is newer",
            policy: last_one.clone(),
            snapshots: vec![
                snap("first", "2026-11-30 10:00:00"),
                snap("second", "2026-11-30 10:00:00"),
            ],
            now: None,
            expected: &[("first", &[]), ("second", &["last 1/1"])],
        },
    ]);
    // The same tie with the input reversed keeps the same snapshot (ID [1, 0, …]).
    let tie = |first: u8, second: u8| {
        let at = time("2026-11-30 10:00:00", 0);
        let make = |n: u8| RetentionSnapshot {
            id: SnapshotId([n; 32]),
            time: at,
            utc_offset_secs: 0,
            group: (),
            tags: &[],
        };
        let decisions = last_one.apply(&[make(first), make(second)], None).unwrap();
        decisions
            .into_iter()
            .find(|d| d.is_kept())
            .map(|d| d.id)
            .unwrap()
    };
    assert_eq!(tie(1, 2), SnapshotId([2; 32]));
    assert_eq!(tie(2, 1), SnapshotId([2; 32]));
}

#[test]
fn rules_combine_as_a_union_and_each_reason_is_listed() {
    let tagged = |label, local, tags| Snap {
        tags,
        ..snap(label, local)
    };
    check(&[Case {
        name: "last 1, daily 2, weekly 2, within 2d, tag",
        policy: RetentionPolicy {
            keep_last: Some(1),
            keep_daily: Some(2),
            keep_weekly: Some(2),
            keep_within: within("2d"),
            keep_tags: vec![vec![b"release".to_vec()]],
            ..policy()
        },
        snapshots: vec![
            tagged("Mon 16 release", "2026-11-16 10:00:00", &["release"]),
            tagged("Sun 22", "2026-11-22 10:00:00", &[]),
            tagged("Sat 28", "2026-11-28 11:00:00", &[]),
            tagged("Sun 29 a", "2026-11-29 09:00:00", &[]),
            tagged("Sun 29 b", "2026-11-29 21:00:00", &[]),
            tagged("Mon 30", "2026-11-30 10:00:00", &[]),
        ],
        now: None,
        expected: &[
            ("Mon 16 release", &["tag release"]),
            ("Sun 22", &[]),
            ("Sat 28", &["within 2d"]),
            ("Sun 29 a", &["within 2d"]),
            (
                "Sun 29 b",
                &["daily 2026-11-29", "weekly 2026-W48", "within 2d"],
            ),
            (
                "Mon 30",
                &[
                    "last 1/1",
                    "daily 2026-11-30",
                    "weekly 2026-W49",
                    "within 2d",
                ],
            ),
        ],
    }]);
}

#[test]
fn the_policy_is_validated_before_it_is_applied() {
    let one = [RetentionSnapshot {
        id: SnapshotId([1; 32]),
        time: time("2026-11-30 10:00:00", 0),
        utc_offset_secs: 0,
        group: (),
        tags: &[],
    }];
    let cases: [(RetentionPolicy, RetentionError, &str); 5] = [
        (
            policy(),
            RetentionError::EmptyPolicy,
            "the retention policy has no rule, so it would remove every snapshot: give at least one keep rule",
        ),
        (
            RetentionPolicy {
                keep_weekly: Some(0),
                ..policy()
            },
            RetentionError::ZeroCount {
                rule: "keep-weekly",
            },
            "keep-weekly must be a positive number",
        ),
        (
            RetentionPolicy {
                keep_within: Some(KeepWithin::default()),
                ..policy()
            },
            RetentionError::ZeroWithin,
            "keep-within must be a positive duration such as 7d, 2w3d or 1y6m",
        ),
        (
            RetentionPolicy {
                keep_tags: vec![Vec::new()],
                ..policy()
            },
            RetentionError::EmptyTagSet,
            "keep-tag needs at least one tag",
        ),
        (
            RetentionPolicy {
                keep_last: Some(1),
                keep_daily: Some(0),
                ..policy()
            },
            RetentionError::ZeroCount { rule: "keep-daily" },
            "keep-daily must be a positive number",
        ),
    ];
    for (policy, error, text) in cases {
        assert_eq!(policy.validate(), Err(error.clone()));
        assert_eq!(policy.apply(&one, None), Err(error.clone()));
        assert_eq!(error.to_string(), text);
    }
    let remove_all = RetentionPolicy {
        allow_empty: true,
        ..policy()
    };
    assert!(remove_all.is_empty());
    assert!(!remove_all.apply(&one, None).unwrap()[0].is_kept());
}

#[test]
fn durations_parse_in_restics_syntax() {
    let parsed = |text: &str| text.parse::<KeepWithin>().map(|w| w.to_string());
    for (text, shown) in [
        ("7d", "7d"),
        ("2w3d", "17d"),
        ("1y6m", "1y6m"),
        ("1y5m7d2h", "1y5m7d2h"),
        ("36h", "36h"),
        ("1d1d", "2d"),
    ] {
        assert_eq!(parsed(text).as_deref(), Ok(shown), "{text}");
    }
    for (text, reason) in [
        ("", "it is empty"),
        ("7", "the last number has no unit"),
        ("d", "a unit has no number"),
        ("7x", "units are y, m, w, d and h"),
        ("-7d", "units are y, m, w, d and h"),
        ("99999999999d", "a number is too large"),
        ("999999999w", "a number is too large"),
    ] {
        assert_eq!(
            text.parse::<KeepWithin>(),
            Err(RetentionError::BadDuration {
                text: text.to_owned(),
                reason
            }),
            "{text}"
        );
    }
}

#[test]
fn times_outside_the_calendar_fail_only_when_the_calendar_is_needed() {
    let far = [RetentionSnapshot {
        id: SnapshotId([9; 32]),
        time: Timestamp {
            secs: i64::MAX,
            nanos: 0,
        },
        utc_offset_secs: 0,
        group: (),
        tags: &[],
    }];
    let last = RetentionPolicy {
        keep_last: Some(1),
        ..policy()
    };
    assert!(last.apply(&far, None).unwrap()[0].is_kept());
    let daily = RetentionPolicy {
        keep_daily: Some(1),
        ..policy()
    };
    assert_eq!(
        daily.apply(&far, None),
        Err(RetentionError::TimeOutOfRange {
            id: SnapshotId([9; 32]),
            secs: i64::MAX,
            utc_offset_secs: 0,
        })
    );
    let bad_offset = [RetentionSnapshot {
        utc_offset_secs: 30 * 3600,
        time: Timestamp::default(),
        ..far[0]
    }];
    assert!(matches!(
        daily.apply(&bad_offset, None),
        Err(RetentionError::TimeOutOfRange { .. })
    ));
    let huge = RetentionPolicy {
        keep_within: Some(KeepWithin {
            years: u32::MAX,
            ..KeepWithin::default()
        }),
        ..policy()
    };
    let epoch = [RetentionSnapshot {
        time: Timestamp::default(),
        ..far[0]
    }];
    assert!(
        huge.apply(&epoch, None).unwrap()[0].is_kept(),
        "a threshold before the calendar keeps everything"
    );
}
