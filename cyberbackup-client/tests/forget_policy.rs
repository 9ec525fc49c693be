//! `forget --keep-*` end to end: the real `cyberbackup-client` binary against the reference
//! server (in-process, real sockets, real SQLite). Eight snapshots of two sources made with
//! `backup --time` over five days in a UTC+1 time zone; `--keep-daily 2 --keep-last 1
//! --dry-run` names every decision and its reasons and removes nothing; the real run removes
//! exactly the expected snapshots per group, `snapshots` lists the rest and they restore.
//! One snapshot is made at 00:30 local time (23:30 UTC the day before), so the expected
//! outcome holds only when days are taken in local time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Output;

use cyberbackup_server::catalog::DeviceRole;
use support::{RealServer, client_command, output_text as text};

/// A fixed UTC+1 zone as a POSIX TZ string (no time zone database needed).
const TZ: &str = "XXX-1";

/// (label, source directory, local time), made in this order (not time order).
const SNAPSHOTS: [(&str, &str, &str); 8] = [
    ("a1", "a", "2026-11-26 10:00:00"),
    ("b1", "b", "2026-11-25 12:00:00"),
    ("a3", "a", "2026-11-27 18:00:00"),
    ("a2", "a", "2026-11-27 09:00:00"),
    ("b2", "b", "2026-11-28 08:00:00"),
    ("a4", "a", "2026-11-28 00:30:00"),
    ("b4", "b", "2026-11-29 20:00:00"),
    ("b3", "b", "2026-11-29 08:00:00"),
];

/// What `--keep-daily 2 --keep-last 1` keeps, and why; every other snapshot goes.
const KEPT: [(&str, &str); 4] = [
    ("a4", "last 1/1, daily 2026-11-28"),
    ("a3", "daily 2026-11-27"),
    ("b4", "last 1/1, daily 2026-11-29"),
    ("b2", "daily 2026-11-28"),
];

#[test]
fn forget_by_policy_keeps_exactly_what_the_rules_name_per_group() {
    // Forgetting needs the manage role (new devices are append-only by default).
    let server = RealServer::start_configured(|config| {
        config.default_device_role = DeviceRole::Manage;
    });
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut ids = BTreeMap::new();
    for (label, source, time) in SNAPSHOTS {
        fs::create_dir_all(dir.join(source)).unwrap();
        fs::write(dir.join(source).join("file.txt"), label).unwrap();
        let output = run(
            dir,
            &server,
            &[
                "backup", source, "--time", time, "--name", "alice", "--json",
            ],
        );
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let summary: serde_json::Value = stdout
            .lines()
            .rev()
            .find_map(|line| serde_json::from_str(line).ok())
            .unwrap();
        ids.insert(label, summary["snapshot_id"].as_str().unwrap().to_owned());
    }
    let listed = snapshots(dir, &server);
    assert_eq!(listed.len(), 8);
    let utc_times: Vec<&str> = listed.iter().map(|s| s["time"].as_str().unwrap()).collect();
    assert!(
        utc_times
            .iter()
            .any(|t| t.starts_with("2026-11-27T23:30:00")),
        "a4's 00:30 at UTC+1 is 23:30 UTC the day before: {utc_times:?}"
    );

    let policy = ["forget", "--keep-daily", "2", "--keep-last", "1"];
    let dry = run(dir, &server, &[&policy[..], &["--dry-run"]].concat());
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let table = String::from_utf8_lossy(&dry.stdout);
    let short = |label: &str| ids[label][..8].to_owned();
    for (label, _, _) in SNAPSHOTS {
        let line = table
            .lines()
            .find(|line| line.starts_with(&short(label)))
            .unwrap_or_else(|| panic!("{label} is not in the table:\n{table}"));
        match KEPT.iter().find(|(kept, _)| *kept == label) {
            Some((_, reasons)) => {
                assert!(line.contains(" keep "), "{line}");
                assert!(line.ends_with(reasons), "{label}: {line}");
            }
            None => assert!(line.trim_end().ends_with("remove"), "{label}: {line}"),
        }
    }
    assert!(
        table.contains("4 snapshot(s) kept, would remove 4"),
        "{table}"
    );
    assert_eq!(table.matches("snapshots of host ").count(), 2, "{table}");
    assert_eq!(
        snapshots(dir, &server).len(),
        8,
        "a dry run removes nothing"
    );

    let json = run(
        dir,
        &server,
        &[&policy[..], &["--dry-run", "--json"]].concat(),
    );
    assert_eq!(json.status.code(), Some(0), "{}", text(&json));
    let groups: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let decided: BTreeMap<String, (bool, Vec<String>)> = groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["snapshots"].as_array().unwrap().clone())
        .map(|entry| {
            let reasons = entry["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_owned())
                .collect();
            (
                entry["id"].as_str().unwrap().to_owned(),
                (entry["keep"].as_bool().unwrap(), reasons),
            )
        })
        .collect();
    assert_eq!(decided.len(), 8);
    for (label, reasons) in KEPT {
        let expected: Vec<String> = reasons.split(", ").map(str::to_owned).collect();
        assert_eq!(decided[&ids[label]], (true, expected), "{label}");
    }

    let forget = run(dir, &server, &policy);
    assert_eq!(forget.status.code(), Some(0), "{}", text(&forget));
    assert!(
        String::from_utf8_lossy(&forget.stdout).contains("4 snapshot(s) kept, removed 4"),
        "{}",
        text(&forget)
    );
    let left: BTreeSet<String> = snapshots(dir, &server)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = KEPT.iter().map(|(label, _)| ids[label].clone()).collect();
    assert_eq!(left, expected);

    for (label, _) in KEPT {
        let source = SNAPSHOTS.iter().find(|s| s.0 == label).unwrap().1;
        let target = dir.join(format!("restored-{label}"));
        let restored = run(
            dir,
            &server,
            &["restore", &ids[label], "--target", target.to_str().unwrap()],
        );
        assert_eq!(restored.status.code(), Some(0), "{}", text(&restored));
        let file = dir.canonicalize().unwrap().join(source).join("file.txt");
        let content = fs::read(target.join(file.strip_prefix("/").unwrap())).unwrap();
        assert_eq!(
            content,
            label.as_bytes(),
            "{label} restores its own content"
        );
    }
}

#[test]
fn forget_refuses_unclear_requests_with_usage_errors() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    fs::create_dir_all(dir.join("a")).unwrap();
    fs::write(dir.join("a/file.txt"), b"x").unwrap();
    let made = run(dir, &server, &["backup", "a", "--name", "alice"]);
    assert_eq!(made.status.code(), Some(0), "{}", text(&made));
    for (args, message) in [
        (
            &["forget", "latest", "--keep-last", "1"][..],
            "give snapshots or a --keep-* policy, not both",
        ),
        (
            &["forget"][..],
            "give snapshots to forget or a --keep-* policy",
        ),
        (
            &["forget", "--keep-daily", "0"][..],
            "must be a positive number",
        ),
        (
            &["forget", "--keep-within", "7x"][..],
            "invalid duration \"7x\"",
        ),
        (
            &["forget", "--keep-last", "1", "--group-by", "tags"][..],
            "cannot group by \"tags\"",
        ),
        (
            &["backup", "a", "--time", "yesterday"][..],
            "--time \"yesterday\"",
        ),
    ] {
        let output = run(dir, &server, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(message),
            "{args:?}: {}",
            text(&output)
        );
    }
    assert_eq!(snapshots(dir, &server).len(), 1);
}

/// Runs `cyberbackup-client ARGS --server … --v4-identity alice-v4.json` in `dir`, in the
/// fixed UTC+1 zone.
fn run(dir: &Path, server: &RealServer, args: &[&str]) -> Output {
    client_command(dir, server, "alice", args)
        .env("TZ", TZ)
        .output()
        .unwrap()
}

fn snapshots(dir: &Path, server: &RealServer) -> Vec<serde_json::Value> {
    let listed = run(dir, server, &["snapshots", "--json"]);
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed));
    serde_json::from_slice(&listed.stdout).unwrap()
}
