#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `cyberbackup-client` binary over protocol v4 (its default): `backup` registers and
//! uploads, `list` shows versions (table, `--json`), `restore` writes a verified copy
//! (table, `--json`), `--protocol v3` is refused for a v4 identity, a wrong
//! `--server-fingerprint` fails with both fingerprints, duplicate base names are refused
//! before anything is sent, a connection lost mid-run prints the partial report (human and
//! JSON), and the documented exit codes. The server is the core's v4 `ServerSession` over
//! a real 127.0.0.1 socket with the in-memory store (the real server is covered by
//! cyberbackup-server's v4_e2e and this crate's terminal.rs). Runs in about 3 s.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use assert_cmd::Command;
use bytes::BytesMut;
use cyberbackup_core::v4::Output;
use cyberbackup_core::v4::noise::StaticKeypair;
use cyberbackup_core::v4::server::{ServerConfig, ServerEvent, ServerSession};
use cyberbackup_core::v4::testing::MemStore;
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SERVER_KEY: [u8; 32] = [0x31; 32];

/// Serves v4 connections one at a time with one shared in-memory store.
fn start_server() -> SocketAddr {
    start_server_closing_after(None)
}

/// Like [`start_server`]; with `Some(n)`, once `n` uploads are committed, the next upload
/// that starts has its connection dropped and the server stops listening (a server that
/// dies in the middle of a run).
fn start_server_closing_after(commits: Option<usize>) -> SocketAddr {
    start_server_with(commits, None)
}

/// The test server: `commits` as in [`start_server_closing_after`]; with `cut: Some(n)` the
/// first connection is dropped once it has sent more than `n` bytes (a network cut); what
/// the store received stays durable, so the client can resume.
fn start_server_with(commits: Option<usize>, cut: Option<usize>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let store = Arc::new(Mutex::new(MemStore::default()));
            let mut cut = cut;
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut received = 0;
                let mut session = ServerSession::new(
                    Arc::new(ServerConfig::default()),
                    StaticKeypair::from_private(SERVER_KEY),
                    OsRng,
                    Instant::now(),
                );
                let mut buf = BytesMut::new();
                'conn: loop {
                    loop {
                        let mut answered = false;
                        while let Some(out) = session.poll_output() {
                            match out {
                                Output::Transmit(bytes) => {
                                    if stream.write_all(&bytes).await.is_err() {
                                        break 'conn;
                                    }
                                }
                                Output::Effect(effect) => {
                                    answered |= effect.needs_answer();
                                    let mut store = store.lock().unwrap();
                                    let _ = store.perform(&mut session, effect, Instant::now());
                                }
                                Output::Event(ServerEvent::UploadOpened { .. })
                                    if commits.is_some_and(|n| {
                                        store.lock().unwrap().committed() >= n
                                    }) =>
                                {
                                    return;
                                }
                                Output::Event(_) => {}
                                Output::Close(_) => break 'conn,
                            }
                        }
                        if !answered {
                            break;
                        }
                        let _ = session.handle_bytes(Instant::now(), &mut buf);
                    }
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => session.handle_eof(Instant::now()),
                        Ok(n) => {
                            received += n;
                            if cut.is_some_and(|limit| received > limit) {
                                cut = None;
                                break 'conn;
                            }
                            let _ = session.handle_bytes(Instant::now(), &mut buf);
                        }
                    }
                }
                store.lock().unwrap().end_connection();
            }
        });
    });
    rx.recv().unwrap()
}

fn client(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("cyberbackup-client").unwrap();
    cmd.current_dir(dir)
        .env_remove("CYBERBACKUP_SERVER")
        .env_remove("CYBERBACKUP_NAME")
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"));
    cmd
}

#[test]
fn backup_list_and_restore_over_v4_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let addr = start_server().to_string();
    let file = dir.path().join("report.txt");
    let identity = dir.path().join("id-v4.json");
    let id = identity.to_str().unwrap();

    std::fs::write(&file, b"first version").unwrap();
    let first = client(dir.path())
        .args([
            "upload",
            file.to_str().unwrap(),
            "--server",
            &addr,
            "--name",
            "alice",
        ])
        .args(["--v4-identity", id])
        .output()
        .unwrap();
    std::fs::write(&file, b"second, longer version").unwrap();
    let second = client(dir.path())
        .args([
            "upload",
            file.to_str().unwrap(),
            "--server",
            &addr,
            "--name",
            "alice",
        ])
        .args(["--v4-identity", id])
        .output()
        .unwrap();
    let list = client(dir.path())
        .args(["files", "--server", &addr, "--v4-identity", id, "--json"])
        .output()
        .unwrap();
    let out = dir.path().join("old.txt");
    let restore = client(dir.path())
        .args([
            "download",
            "report.txt",
            "--version",
            "1",
            "--server",
            &addr,
        ])
        .args(["--v4-identity", id, "--output", out.to_str().unwrap()])
        .output()
        .unwrap();
    let missing = client(dir.path())
        .args([
            "download",
            "nope.txt",
            "--server",
            &addr,
            "--v4-identity",
            id,
        ])
        .output()
        .unwrap();

    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("version 1"));
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("version 2"));
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed["ok"], true);
    let versions: Vec<u64> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"first version");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such file"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&identity).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn v3_is_refused_for_a_v4_identity_and_a_wrong_pin_names_both_keys() {
    let dir = tempfile::tempdir().unwrap();
    let addr = start_server().to_string();
    let file = dir.path().join("a.txt");
    std::fs::write(&file, b"x").unwrap();
    let identity = dir.path().join("id-v4.json");
    let id = identity.to_str().unwrap();
    let ok = client(dir.path())
        .args([
            "upload",
            file.to_str().unwrap(),
            "--server",
            &addr,
            "--name",
            "bob",
        ])
        .args(["--v4-identity", id])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let v3 = client(dir.path())
        .args([
            "upload",
            file.to_str().unwrap(),
            "--server",
            &addr,
            "--name",
            "bob",
        ])
        .args(["--v4-identity", id, "--protocol", "v3"])
        .output()
        .unwrap();
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let pinned = client(dir.path())
        .args(["files", "--server", &addr, "--server-fingerprint", &wrong])
        .args([
            "--v4-identity",
            dir.path().join("other.json").to_str().unwrap(),
        ])
        .args(["--name", "carol"])
        .output()
        .unwrap();

    assert_eq!(v3.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&v3.stderr).contains("never fall back to v3"),
        "{}",
        String::from_utf8_lossy(&v3.stderr)
    );
    let real = StaticKeypair::from_private(SERVER_KEY)
        .public()
        .fingerprint();
    let stderr = String::from_utf8_lossy(&pinned.stderr);
    assert_eq!(pinned.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&wrong) && stderr.contains(&real.to_string()),
        "{stderr}"
    );
}

fn text(output: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn backup(dir: &Path, addr: &str, paths: &[&str]) -> Command {
    backup_retrying(dir, addr, paths, 0)
}

fn backup_retrying(dir: &Path, addr: &str, paths: &[&str], retries: u32) -> Command {
    let mut cmd = client(dir);
    cmd.arg("upload")
        .args(paths)
        .args(["--server", addr, "--name", "alice"])
        .args(["--v4-identity", "alice-v4.json"])
        .args(["--retries", &retries.to_string()]);
    cmd
}

#[test]
fn list_and_restore_print_tables_by_default_and_json_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let addr = start_server().to_string();
    std::fs::write(dir.path().join("a.txt"), b"alpha").unwrap();
    std::fs::write(dir.path().join("b.bin"), vec![7u8; 70_000]).unwrap();
    let first = backup(dir.path(), &addr, &["a.txt", "b.bin"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    std::fs::write(dir.path().join("a.txt"), b"alpha, second").unwrap();
    let second = backup(dir.path(), &addr, &["a.txt"]).output().unwrap();
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    let id = ["--v4-identity", "alice-v4.json"];

    let table = client(dir.path())
        .args(["files", "--server", &addr])
        .args(id)
        .output()
        .unwrap();
    assert_eq!(table.status.code(), Some(0), "{}", text(&table));
    let stdout = String::from_utf8(table.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let columns: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        columns,
        ["NAME", "VERSION", "SIZE", "STORED", "(UTC)", "SHA-256"],
        "{stdout}"
    );
    let rows: Vec<Vec<&str>> = lines[1..4]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows.iter().map(|r| (r[0], r[1], r[2])).collect::<Vec<_>>(),
        [
            ("a.txt", "1", "5"),
            ("a.txt", "2", "13"),
            ("b.bin", "1", "70000")
        ],
        "{stdout}"
    );
    assert!(rows.iter().all(|r| r[5].len() == 64), "{stdout}");
    assert_eq!(lines[4], "3 version(s) of 2 file(s)", "{stdout}");
    // Every row's columns start where the header's do.
    let sha_at = lines[0].find("SHA-256").unwrap();
    assert!(
        lines[1..4]
            .iter()
            .all(|l| l.len() > sha_at + 63 && &l[sha_at - 2..sha_at] == "  "),
        "{stdout}"
    );

    let out = dir.path().join("restored.txt");
    let restored = client(dir.path())
        .args(["download", "a.txt", "--version", "1", "--server", &addr])
        .args(id)
        .args(["--output", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(restored.status.code(), Some(0), "{}", text(&restored));
    assert_eq!(std::fs::read(&out).unwrap(), b"alpha");
    let stdout = String::from_utf8(restored.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].ends_with("OUTPUT"),
        "{stdout}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!((row[0], row[1], row[2]), ("a.txt", "1", "5"), "{stdout}");
    assert_eq!(row.last(), Some(&out.to_str().unwrap()), "{stdout}");
    assert!(lines[2].contains("verified"), "{stdout}");

    let json = client(dir.path())
        .args(["download", "a.txt", "--server", &addr, "--json"])
        .args(id)
        .args(["--output", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(0), "{}", text(&json));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["ok"], true);
    assert_eq!(value["restored"]["version"], 2);
    assert_eq!(value["restored"]["size"], 13);
    assert_eq!(value["restored"]["verified"], true);
    assert_eq!(value["restored"]["output"], out.to_str().unwrap());
    assert_eq!(std::fs::read(&out).unwrap(), b"alpha, second");

    let missing = client(dir.path())
        .args([
            "download",
            "a.txt",
            "--version",
            "9",
            "--server",
            &addr,
            "--json",
        ])
        .args(id)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    let value: serde_json::Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(value["ok"], false);
    assert_eq!(value["exit_code"], 1);
    assert_eq!(value["error"]["kind"], "file_failed");
}

#[test]
fn backup_json_over_v4_reports_failed_files_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let addr = start_server().to_string();
    std::fs::write(dir.path().join("ok.txt"), b"fine").unwrap();
    let output = backup(dir.path(), &addr, &["ok.txt", "missing.txt", "--json"])
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["ok"], false);
    assert_eq!(value["exit_code"], 1);
    assert!(value["error"].is_null());
    let files = value["report"]["files"].as_array().unwrap();
    assert_eq!(value["report"]["registered"], true);
    assert_eq!(files[0]["verified"], true);
    assert_eq!(files[0]["version"], 1);
    assert_eq!(files[0]["len"], 4);
    assert_eq!(files[1]["stored_name"], "missing.txt");
    assert_eq!(files[1]["verified"], false);
    assert!(files[1]["sha256"].is_null() && files[1]["version"].is_null());
    let failure = files[1]["failure"].as_str().unwrap();
    assert!(
        failure.contains("missing.txt") && failure.contains("check the path"),
        "{failure}"
    );
}

#[test]
fn duplicate_base_names_are_refused_over_v4_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let addr = start_server().to_string();
    for sub in ["a", "b"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::fs::write(dir.path().join(sub).join("notes.txt"), sub).unwrap();
    }
    let output = backup(dir.path(), &addr, &["a/notes.txt", "b/notes.txt", "--json"])
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["error"]["kind"], "duplicate_name");
    let message = value["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("a/notes.txt") && message.contains("b/notes.txt"),
        "{message}"
    );
    assert!(
        !dir.path().join("alice-v4.json").exists(),
        "nothing happened: no identity was even created"
    );
}

#[test]
fn a_connection_lost_mid_run_prints_the_partial_report_over_v4() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("first.txt"), b"first").unwrap();
    std::fs::write(dir.path().join("second.txt"), b"second").unwrap();

    let addr = start_server_closing_after(Some(1)).to_string();
    let human = backup(dir.path(), &addr, &["first.txt", "second.txt"])
        .output()
        .unwrap();
    assert_eq!(human.status.code(), Some(3), "{}", text(&human));
    let stdout = String::from_utf8_lossy(&human.stdout);
    let stderr = String::from_utf8_lossy(&human.stderr);
    assert!(stdout.contains("verified first.txt"), "{}", text(&human));
    assert!(
        stdout.contains("FAILED second.txt: not sent"),
        "{}",
        text(&human)
    );
    assert!(
        stderr.contains("1 of 2 files were backed up before this")
            && stderr.contains("run the backup again to resume"),
        "{}",
        text(&human)
    );

    // With a reconnect allowed, the dead server refuses it: retries exhausted, still exit 3.
    std::fs::remove_file(dir.path().join("alice-v4.json")).unwrap();
    let addr = start_server_closing_after(Some(1)).to_string();
    let json = backup_retrying(dir.path(), &addr, &["first.txt", "second.txt", "--json"], 1)
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(3), "{}", text(&json));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["ok"], false);
    assert_eq!(value["error"]["kind"], "retries_exhausted");
    let files = value["report"]["files"].as_array().unwrap();
    assert_eq!(files[0]["verified"], true);
    assert_eq!(files[0]["version"], 1);
    assert_eq!(files[1]["verified"], false);
    assert!(
        files[1]["failure"]
            .as_str()
            .unwrap()
            .starts_with("not sent: the run stopped first"),
        "{}",
        files[1]
    );
}

#[test]
fn exit_codes_of_v4_failures_are_the_documented_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), b"x").unwrap();
    // Nothing listens on a port that was just freed: exit 3, kind connect, with a hint.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let refused = backup(dir.path(), &closed, &["a.txt", "--json"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    let value: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(value["error"]["kind"], "connect");
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is the server running"),
        "{value}"
    );

    // An identity of another name: exit 4, naming both and the flag to use.
    let addr = start_server().to_string();
    let ok = backup(dir.path(), &addr, &["a.txt"]).output().unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    let other = client(dir.path())
        .args(["upload", "a.txt", "--server", &addr, "--name", "mallory"])
        .args(["--v4-identity", "alice-v4.json"])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(4), "{}", text(&other));
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("\"alice\"")
            && stderr.contains("\"mallory\"")
            && stderr.contains("--v4-identity"),
        "{stderr}"
    );

    // A bad name is a usage error, as for v3.
    let usage = client(dir.path())
        .args(["upload", "a.txt", "--server", &addr, "--name", ""])
        .args(["--v4-identity", "new.json"])
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2), "{}", text(&usage));
}

#[test]
fn a_cut_connection_is_retried_and_the_upload_resumes_where_the_server_stopped() {
    let dir = tempfile::tempdir().unwrap();
    // Not a multiple of the 64 KiB frame: the last frame is short.
    let data: Vec<u8> = (0..3_000_017u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    std::fs::write(dir.path().join("big.bin"), &data).unwrap();
    let addr = start_server_with(None, Some(1_000_000)).to_string();

    let output = backup_retrying(dir.path(), &addr, &["big.bin", "--json"], 2)
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let file = &value["report"]["files"][0];
    assert_eq!(file["verified"], true, "{file}");
    assert_eq!(file["attempts"], 2, "{file}");
    let resumed = file["resumed_from"].as_u64().unwrap();
    assert!(resumed > 0 && resumed < 1_000_000, "{file}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("resuming big.bin at byte {resumed} of 3000017")),
        "{}",
        text(&output)
    );
    assert!(
        stderr.contains("reconnecting in 0.5 s (retry 1 of 2)"),
        "{}",
        text(&output)
    );
    let out = dir.path().join("back.bin");
    let restore = client(dir.path())
        .args([
            "download",
            "big.bin",
            "--server",
            &addr,
            "--output",
            out.to_str().unwrap(),
        ])
        .args(["--v4-identity", "alice-v4.json"])
        .output()
        .unwrap();
    assert_eq!(restore.status.code(), Some(0), "{}", text(&restore));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "restored bytes differ"
    );
}
