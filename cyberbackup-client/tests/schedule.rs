//! Scheduled backups on the real binaries: `schedule add` and `daemon` against the reference
//! server on 127.0.0.1. The daemon backs a source up on a short test schedule, tags the
//! snapshots, applies the retention once the device may, and stops cleanly on SIGTERM; a
//! slot missed while no daemon ran (a reboot) runs at once, once, while a source that ran
//! recently waits for its slot; a source whose lock another process holds is not backed up
//! until the lock is released; `schedule install` writes a unit whose command line starts
//! the daemon.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cyberbackup_client::schedule::{RunResult, SourceLock, StateFile};
use cyberbackup_server::catalog::DeviceRole;
use serde_json::Value;
use support::{RealServer, client_binary, machine_command, output_text, set_role_of};

/// A machine of its own in `dir`: data directory `dir/data`, identity `dir/me.info` (so
/// the v4 identity is `dir/cyberbackup-v4.json`), no settings from the environment.
fn client(dir: &Path, args: &[&str]) -> Command {
    let mut command = machine_command(dir);
    command
        .env("XDG_DATA_HOME", dir.join("xdg-data"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--identity")
        .arg(dir.join("me.info"));
    command
}

/// The snapshot command `args` against `server` with the daemon's v4 identity.
fn repo_command(dir: &Path, server: &RealServer, args: &[&str]) -> Command {
    let mut command = machine_command(dir);
    command
        .args(args)
        .args(["--server", &server.server()])
        .arg("--v4-identity")
        .arg(dir.join("cyberbackup-v4.json"));
    command
}

/// `schedule add NAME TREE --schedule WHEN`, then `extra`.
fn add_source(dir: &Path, name: &str, tree: &Path, when: &str, extra: &[&str]) -> String {
    let mut command = client(
        dir,
        &[
            "schedule",
            "add",
            name,
            tree.to_str().unwrap(),
            "--schedule",
            when,
        ],
    );
    command.args(extra);
    run_ok(command)
}

fn run_ok(mut command: Command) -> String {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", output_text(&output));
    String::from_utf8(output.stdout).unwrap()
}

/// The daemon, its stderr in `dir/daemon.log`.
fn start_daemon(dir: &Path, server: &RealServer) -> Child {
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    client(dir, &["daemon"])
        .args(["--server", &server.server(), "--name", "alice"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn daemon_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
}

/// Stops the daemon as `systemctl stop` does, and checks that it says so and exits 0.
fn stop_daemon(mut daemon: Child, dir: &Path) {
    let pid = rustix::process::Pid::from_child(&daemon);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = daemon.wait().unwrap();
    let log = daemon_log(dir);
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("cyberbackup daemon: stopped"), "{log}");
}

/// `schedule list --json`.
fn sources(dir: &Path) -> Vec<Value> {
    let text = run_ok(client(dir, &["schedule", "list", "--json"]));
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn source<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no source {name} in {list:?}"))
}

/// Waits until `condition` holds for the sources, or fails with the daemon's log.
fn wait_for_sources(dir: &Path, what: &str, condition: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = sources(dir);
        if condition(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {list:#?}\ndaemon log:\n{}",
            daemon_log(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The repository's snapshots, as `snapshots --json` lists them with the daemon's identity.
fn snapshots(dir: &Path, server: &RealServer) -> Vec<Value> {
    let text = run_ok(repo_command(dir, server, &["snapshots", "--json"]));
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn tree(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"scheduled content").unwrap();
    std::fs::write(tree.join("sub/b.txt"), b"more scheduled content").unwrap();
    std::fs::write(tree.join("skip.tmp"), b"excluded").unwrap();
    tree
}

#[test]
fn the_daemon_backs_up_on_schedule_tags_applies_retention_and_stops_on_sigterm() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let tree = tree(dir.path());
    let added = add_source(
        dir.path(),
        "docs",
        &tree,
        "every 1s",
        &["--exclude", "*.tmp", "--keep-last", "2"],
    );
    assert!(added.contains("source docs saved: every 1s"), "{added}");
    let daemon = start_daemon(dir.path(), &server);

    // The first run registers the identity and saves a snapshot tagged with the source.
    wait_for_sources(dir.path(), "the first scheduled backup", |list| {
        source(list, "docs")["state"]["last_result"] == "succeeded"
    });
    // The daemon created the repository with this machine's key only, and says so.
    let list = sources(dir.path());
    let message = source(&list, "docs")["state"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("warning:") && message.contains("key passwd"),
        "{message}"
    );
    let first = snapshots(dir.path(), &server);
    assert!(!first.is_empty());
    for snapshot in &first {
        assert_eq!(
            snapshot["tags"],
            serde_json::json!(["source:docs"]),
            "{snapshot}"
        );
    }
    // The device is append-only: the retention cannot forget, which is said, and the
    // backups still count as done.
    wait_for_sources(
        dir.path(),
        "a run that could not apply the retention",
        |list| {
            let state = &source(list, "docs")["state"];
            state["last_result"] == "succeeded"
                && state["message"].as_str().is_some_and(|m| {
                    m.contains("retention rules were not applied") && m.contains("manage role")
                })
        },
    );
    // With the manage role, later runs forget all but the newest two.
    set_role_of(&server, b"alice", DeviceRole::Manage);
    wait_for_sources(dir.path(), "a run that forgot old snapshots", |list| {
        source(list, "docs")["state"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("forgotten by the retention rules"))
    });
    stop_daemon(daemon, dir.path());
    let kept = snapshots(dir.path(), &server);
    assert_eq!(kept.len(), 2, "{kept:#?}");
    let log = daemon_log(dir.path());
    assert!(log.contains("docs: backup started"), "{log}");
    assert!(log.contains("docs: done: snapshot"), "{log}");

    // The excluded file is not in the snapshot.
    let ls = run_ok(repo_command(dir.path(), &server, &["ls", "latest"]));
    assert!(ls.contains("a.txt") && ls.contains("b.txt"), "{ls}");
    assert!(!ls.contains("skip.tmp"), "{ls}");
}

#[test]
fn a_missed_slot_runs_at_once_and_a_recent_run_waits_for_its_slot() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let tree = tree(dir.path());
    for name in ["missed", "recent"] {
        add_source(dir.path(), name, &tree, "hourly", &[]);
    }
    // As a machine that was off: "missed" last ran two hours ago, "recent" ten minutes ago.
    let state = StateFile::in_dir(&dir.path().join("data"));
    let now = jiff::Timestamp::now();
    let ago = |minutes: i64| now - jiff::SignedDuration::from_mins(minutes);
    for (name, minutes) in [("missed", 120), ("recent", 10)] {
        state
            .update(name, |s| {
                s.last_attempt = Some(ago(minutes));
                s.last_success = Some(ago(minutes));
                s.last_result = Some(RunResult::Succeeded);
            })
            .unwrap();
    }
    let daemon = start_daemon(dir.path(), &server);
    let list = wait_for_sources(dir.path(), "the missed slot to run", |list| {
        source(list, "missed")["state"]["last_success"]
            .as_str()
            .is_some_and(|t| t.parse::<jiff::Timestamp>().unwrap() > now)
    });
    // Its next slot is an hour after this run; "recent" waits for an hour after its own.
    let missed = source(&list, "missed");
    let ran: jiff::Timestamp = missed["state"]["last_success"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let next: jiff::Timestamp = missed["next_run"].as_str().unwrap().parse().unwrap();
    assert_eq!(next, ran + jiff::SignedDuration::from_hours(1));
    std::thread::sleep(Duration::from_secs(2));
    let list = sources(dir.path());
    let recent = source(&list, "recent");
    assert_eq!(
        recent["state"]["last_success"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap(),
        ago(10),
        "the recent source ran again: {recent}"
    );
    let next: jiff::Timestamp = recent["next_run"].as_str().unwrap().parse().unwrap();
    assert_eq!(next, ago(10) + jiff::SignedDuration::from_hours(1));
    stop_daemon(daemon, dir.path());
    assert_eq!(
        snapshots(dir.path(), &server).len(),
        1,
        "only the missed slot ran"
    );
    // `schedule list` shows the next run as a local time.
    let table = run_ok(client(dir.path(), &["schedule", "list"]));
    assert!(
        table.contains("NEXT RUN") && table.contains("missed") && table.contains("ok"),
        "{table}"
    );
}

#[test]
fn a_source_locked_by_another_process_is_not_backed_up_until_released() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let tree = tree(dir.path());
    add_source(dir.path(), "docs", &tree, "every 1s", &[]);
    // This test process is "another backup of docs" for as long as it holds the lock.
    let lock = SourceLock::try_acquire(&dir.path().join("data"), "docs")
        .unwrap()
        .unwrap();
    let daemon = start_daemon(dir.path(), &server);
    std::thread::sleep(Duration::from_secs(3));
    let list = sources(dir.path());
    assert_eq!(source(&list, "docs")["running"], true);
    assert!(
        source(&list, "docs")["state"]["last_attempt"].is_null(),
        "{list:?}"
    );
    // `schedule run` refuses too, saying why.
    let output = client(dir.path(), &["schedule", "run", "docs"])
        .args(["--server", &server.server(), "--name", "alice"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", output_text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("skipped: a backup of this source is already running"),
        "{}",
        output_text(&output)
    );
    drop(lock);
    wait_for_sources(
        dir.path(),
        "the backup after the lock was released",
        |list| source(list, "docs")["state"]["last_result"] == "succeeded",
    );
    stop_daemon(daemon, dir.path());
}

#[test]
fn a_paused_source_waits_until_resumed() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let tree = tree(dir.path());
    add_source(dir.path(), "docs", &tree, "every 1s", &[]);
    let paused = run_ok(client(dir.path(), &["schedule", "pause", "docs"]));
    assert!(paused.contains("source docs paused"), "{paused}");
    let daemon = start_daemon(dir.path(), &server);
    std::thread::sleep(Duration::from_secs(3));
    let list = sources(dir.path());
    assert!(
        source(&list, "docs")["state"]["last_attempt"].is_null(),
        "{list:?}"
    );
    assert!(source(&list, "docs")["next_run"].is_null(), "{list:?}");
    let table = run_ok(client(dir.path(), &["schedule", "list"]));
    assert!(table.contains("paused"), "{table}");
    run_ok(client(dir.path(), &["schedule", "resume", "docs"]));
    wait_for_sources(dir.path(), "the backup after resume", |list| {
        source(list, "docs")["state"]["last_result"] == "succeeded"
    });
    stop_daemon(daemon, dir.path());
}

#[test]
fn an_unusable_lock_directory_is_reported_once_not_at_every_tick() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let tree = tree(dir.path());
    add_source(dir.path(), "docs", &tree, "every 1s", &[]);
    // A file where the lock directory belongs: no lock can be taken (root ignores modes).
    std::fs::write(dir.path().join("data/locks"), b"not a directory").unwrap();
    let daemon = start_daemon(dir.path(), &server);
    std::thread::sleep(Duration::from_secs(3));
    stop_daemon(daemon, dir.path());
    let log = daemon_log(dir.path());
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" error: ")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("lock file"), "{log}");
    assert!(!log.contains("backup started"), "{log}");
}

#[test]
fn schedule_commands_refuse_bad_sources_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let output = client(
        dir.path(),
        &[
            "schedule",
            "add",
            "docs",
            "relative/path",
            "--schedule",
            "hourly",
        ],
    )
    .output()
    .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("give the full path"),
        "{}",
        output_text(&output)
    );
    let output = client(
        dir.path(),
        &["schedule", "add", "docs", "/tmp", "--schedule", "weekly"],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", output_text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("daily 02:30"),
        "{}",
        output_text(&output)
    );
    let output = client(dir.path(), &["schedule", "remove", "nope"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("schedule list"),
        "{}",
        output_text(&output)
    );
    let empty = run_ok(client(dir.path(), &["schedule", "list"]));
    assert!(empty.contains("0 source(s)"), "{empty}");
}

/// Splits an `ExecStart=` value into words as systemd does for the quoting the unit uses.
fn systemd_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => {}
            '"' => {
                let mut word = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        '%' | '$' => {
                            assert_eq!(chars.next(), Some(c), "a lone {c} in {line}");
                            word.push(c);
                        }
                        c => word.push(c),
                    }
                }
                words.push(word);
            }
            other => panic!("unquoted {other:?} in {line}"),
        }
    }
    words
}

#[test]
fn schedule_install_writes_a_unit_that_starts_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(client(dir.path(), &["schedule", "install"]));
    let unit_path = dir
        .path()
        .join("config/systemd/user/cyberbackup-client.service");
    assert!(out.contains(&unit_path.display().to_string()), "{out}");
    assert!(
        out.contains("systemctl --user daemon-reload && systemctl --user enable --now"),
        "{out}"
    );
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert!(unit.contains("WantedBy=default.target"), "{unit}");
    assert!(unit.contains("Restart=on-failure"), "{unit}");
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .unwrap();
    let words = systemd_words(exec);
    assert_eq!(
        PathBuf::from(&words[0]),
        client_binary().canonicalize().unwrap()
    );
    assert_eq!(words[1], "daemon");
    assert_eq!(
        words[2..],
        [
            "--data-dir".to_owned(),
            dir.path().join("data").display().to_string(),
            "--identity".to_owned(),
            dir.path().join("me.info").display().to_string()
        ]
    );
    // `--print` shows the same unit without writing it.
    assert_eq!(
        run_ok(client(dir.path(), &["schedule", "install", "--print"])),
        unit
    );
    // The unit's command line starts the daemon on these files (with no sources and no
    // server it waits), and systemd accepts the unit where systemd-analyze exists.
    let mut daemon = Command::new(&words[0])
        .args(&words[1..])
        .env("HOME", dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stderr = daemon.stderr.take().unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("scheduling the sources of") {
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&seen)
        );
        let mut buf = [0_u8; 256];
        let n = std::io::Read::read(&mut stderr, &mut buf).unwrap();
        assert!(
            n > 0,
            "the daemon ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&seen)
            .contains(&dir.path().join("data/sources.json").display().to_string()),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    // systemd-analyze names the unit file in every complaint about it (a bad value is only
    // a warning, with exit code 0), so none may mention it.
    if let Ok(output) = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
    {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains(&unit_path.display().to_string()),
            "systemd-analyze verify found fault with the unit: {stderr}"
        );
    }
}
