//! What the real `cyberbackup-client` binary shows, against the reference server
//! (in-process, real sockets): live progress bars with speed and ETA under a pseudo-terminal
//! (the byte stream replayed through a terminal emulator, `vt100`, frame by frame), plain
//! lines without a terminal, JSON with `--json`, and the partial report of a run stopped by a
//! fatal error, in both forms. The bar and line/JSON cases run over protocol v3
//! (`--protocol v3`) and over v4 (the default).
//!
//! Runtime (debug test build, optimised dependencies): about 15 s, most of it the two
//! 64 MiB files of the pty tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::cast_possible_truncation
)]

mod support;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::num::NonZeroU16;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cyberbackup_server::faults::{FaultInjector, FaultPoint};
use rustix::fs::{Mode, OFlags};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};
use support::{RealServer, cksum_of, client_binary, same_contents, write_pattern};

const MIB: u64 = 1024 * 1024;
const ROWS: u16 = 100;
const COLS: u16 = 150;

fn client(dir: &Path, server: &RealServer, paths: &[&str]) -> Command {
    let mut command = Command::new(client_binary());
    command
        .current_dir(dir)
        .env_remove("CYBERBACKUP_SERVER")
        .env_remove("CYBERBACKUP_NAME")
        .env("TERM", "xterm-256color")
        .arg("upload")
        .args(paths)
        .args(["--server", &server.server(), "--name", "alice"])
        .args([
            "--protocol",
            "v3",
            "--identity",
            "me.info",
            "--retries",
            "0",
        ]);
    command
}

/// `backup` over the default protocol (v4), its identity in `dir`.
fn client_v4(dir: &Path, server: &RealServer, paths: &[&str]) -> Command {
    let mut command = Command::new(client_binary());
    command
        .current_dir(dir)
        .env_remove("CYBERBACKUP_SERVER")
        .env_remove("CYBERBACKUP_NAME")
        .env("TERM", "xterm-256color")
        .arg("upload")
        .args(paths)
        .args(["--server", &server.server(), "--name", "alice"])
        .args(["--v4-identity", "alice-v4.json", "--retries", "0"]);
    command
}

/// The SHA-256 of a file, as the system's `sha256sum` computes it (an oracle independent
/// of the code under test).
fn sha256sum(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(output.status.success(), "sha256sum failed: {output:?}");
    String::from_utf8(output.stdout).unwrap()[..64].to_owned()
}

/// What the terminal showed while the program ran.
struct Screens {
    /// Every distinct text of a screen row showing a progress bar (`ETA` in it).
    bar_rows: BTreeSet<String>,
    /// The most bar rows visible at once.
    max_bar_rows_at_once: usize,
    /// The raw bytes written to the terminal.
    raw: Vec<u8>,
    /// The screen when the program ended.
    last: String,
}

/// Runs `command` with stdin, stdout and stderr on a new pseudo-terminal of ROWS×COLS and
/// replays everything it writes through a terminal emulator.
fn run_in_pty(command: Command) -> (std::process::ExitStatus, Screens) {
    run_in_pty_watching(command, |_, _| {})
}

/// [`run_in_pty`], calling `watch` with the child's pid and the bar rows after every write.
fn run_in_pty_watching(
    mut command: Command,
    mut watch: impl FnMut(u32, &[String]),
) -> (std::process::ExitStatus, Screens) {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    tcsetwinsize(
        &master,
        Winsize {
            ws_row: ROWS,
            ws_col: COLS,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .unwrap();
    let slave_path = ptsname(&master, Vec::new()).unwrap();
    let slave = rustix::fs::open(
        slave_path.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    command
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    let mut child = command.spawn().unwrap();
    // The parent's copies of the slave are gone with `command`: reads of the master end
    // (EIO) once the child has exited.
    drop(command);

    let mut master = File::from(master);
    let mut parser = vt100::Parser::new(
        NonZeroU16::new(ROWS).unwrap(),
        NonZeroU16::new(COLS).unwrap(),
        0,
    );
    let mut screens = Screens {
        bar_rows: BTreeSet::new(),
        max_bar_rows_at_once: 0,
        raw: Vec::new(),
        last: String::new(),
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            // Linux answers EIO once no process holds the slave side open.
            Err(_) => break,
        };
        screens.raw.extend_from_slice(&buf[..n]);
        parser.process(&buf[..n]);
        let rows: Vec<String> = parser
            .screen()
            .rows(0, COLS)
            .filter(|row| row.contains("ETA"))
            .collect();
        screens.max_bar_rows_at_once = screens.max_bar_rows_at_once.max(rows.len());
        watch(child.id(), &rows);
        screens.bar_rows.extend(rows);
    }
    let status = child.wait().unwrap();
    screens.last = parser.screen().contents();
    (status, screens)
}

#[test]
fn backup_on_a_terminal_shows_live_bars_with_speed_and_eta() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_pattern(&dir.path().join("big.bin"), 64 * MIB, 5);

    let (status, screens) = run_in_pty(client(dir.path(), &server, &["big.bin"]));
    assert!(status.success(), "{status:?}\n{}", screens.last);
    assert_live_bars(&screens);
}

#[test]
fn v4_backup_on_a_terminal_shows_the_same_live_bars() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_pattern(&dir.path().join("big.bin"), 64 * MIB, 7);

    let (status, screens) = run_in_pty(client_v4(dir.path(), &server, &["big.bin"]));
    assert!(status.success(), "{status:?}\n{}", screens.last);
    assert_live_bars(&screens);
    // The v4 result line: the version and the SHA-256 the server verified.
    let sha = sha256sum(&dir.path().join("big.bin"));
    assert!(
        screens.last.contains("version 1") && screens.last.contains(&sha),
        "{}",
        screens.last
    );
    assert!(screens.last.contains("(protocol v4)"), "{}", screens.last);
}

/// The file and overall bars were live (redrawn with bytes, rate and ETA), stayed in place
/// and were gone at the end, where the result lines are.
fn assert_live_bars(screens: &Screens) {
    let raw = String::from_utf8_lossy(&screens.raw);

    // Live: the file bar was drawn at several positions, each with bytes, a rate and an ETA.
    let file_frames: Vec<&String> = screens
        .bar_rows
        .iter()
        .filter(|row| row.trim_start().starts_with("file [") && row.contains("big.bin"))
        .collect();
    eprintln!(
        "{} distinct file-bar frames, e.g. {:?}",
        file_frames.len(),
        file_frames.first()
    );
    assert!(
        file_frames.len() >= 2,
        "the bar was not redrawn while sending: {:?}",
        screens.bar_rows
    );
    for row in &file_frames {
        assert!(row.contains("/64.00 MiB"), "no byte counts: {row:?}");
        assert!(row.contains("/s ETA "), "no rate and ETA: {row:?}");
    }
    assert!(
        file_frames.iter().any(|row| row.contains("MiB/s")),
        "no MiB/s rate in {file_frames:?}"
    );
    assert!(
        screens
            .bar_rows
            .iter()
            .any(|row| row.trim_start().starts_with("overall [")),
        "no overall bar: {:?}",
        screens.bar_rows
    );
    // Redrawn in place (cursor moves and line clears), not printed as new lines: never more
    // than the two bars on screen, and none left once the run ended.
    assert!(raw.contains("\x1b[2K") || raw.contains('\r'), "{raw:?}");
    assert!(
        screens.max_bar_rows_at_once <= 2,
        "bars piled up as lines: {}",
        screens.max_bar_rows_at_once
    );
    assert!(!screens.last.contains("ETA"), "{}", screens.last);
    assert!(
        screens.last.contains("verified \"big.bin\"") || screens.last.contains("verified big.bin"),
        "{}",
        screens.last
    );
    assert!(
        screens.last.contains("1 of 1 files backed up"),
        "{}",
        screens.last
    );
}

fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn without_a_terminal_progress_is_plain_lines_and_json_is_valid() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_pattern(&dir.path().join("mid.bin"), 3 * MIB + 1, 6);
    std::fs::write(dir.path().join("small.txt"), "hello\n").unwrap();

    let output = run(&mut client(dir.path(), &server, &["mid.bin"]));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert!(
        !stderr.contains('\x1b') && !stdout.contains('\x1b'),
        "{}",
        text(&output)
    );
    assert!(!stderr.contains('\r'), "{}", text(&output));
    let lines: Vec<&str> = stderr.lines().collect();
    let sending = format!("sending mid.bin ({} bytes)", 3 * MIB + 1);
    assert!(lines.contains(&sending.as_str()), "{}", text(&output));
    assert!(
        lines.contains(&"waiting for the server to verify mid.bin"),
        "{}",
        text(&output)
    );
    assert!(
        stdout.contains("1 of 1 files backed up"),
        "{}",
        text(&output)
    );

    let output = run(client(dir.path(), &server, &["mid.bin", "small.txt"]).arg("--json"));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(!output.stdout.contains(&0x1b), "{}", text(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["exit_code"], 0);
    assert!(json["error"].is_null());
    let report = &json["report"];
    assert_eq!(report["registered"], false, "second run reconnects");
    let id = report["client_id"].as_str().unwrap();
    let files = report["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    for (file, name) in files.iter().zip(["mid.bin", "small.txt"]) {
        let local = dir.path().join(name);
        assert_eq!(file["stored_name"], name);
        assert_eq!(file["verified"], true);
        assert_eq!(file["attempts"], 1);
        assert!(file["failure"].is_null());
        assert_eq!(file["len"], local.metadata().unwrap().len());
        assert_eq!(file["cksum"], cksum_of(&local));
        assert!(same_contents(&local, &server.stored(id, name)));
    }
}

#[test]
fn v4_without_a_terminal_progress_is_plain_lines_and_json_has_the_v4_results() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_pattern(&dir.path().join("mid.bin"), 3 * MIB + 1, 8);
    std::fs::write(dir.path().join("small.txt"), "hello\n").unwrap();
    std::fs::write(dir.path().join("empty"), "").unwrap();

    let output = run(&mut client_v4(dir.path(), &server, &["mid.bin"]));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert!(
        !stderr.contains('\x1b') && !stdout.contains('\x1b') && !stderr.contains('\r'),
        "{}",
        text(&output)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    let sending = format!("sending mid.bin ({} bytes)", 3 * MIB + 1);
    for expected in [sending.as_str(), "waiting for the server to verify mid.bin"] {
        assert!(lines.contains(&expected), "{expected:?}\n{}", text(&output));
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("trusting the server key sha256:")),
        "first contact pins the server key and says so\n{}",
        text(&output)
    );
    assert!(
        lines.iter().any(|l| l.starts_with("registered as client ")),
        "{}",
        text(&output)
    );
    assert!(
        stdout.contains("1 of 1 files backed up") && stdout.contains("(protocol v4)"),
        "{}",
        text(&output)
    );

    // Second run: logs in with the saved identity; mid.bin becomes version 2.
    let output =
        run(client_v4(dir.path(), &server, &["mid.bin", "small.txt", "empty"]).arg("--json"));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(!output.stdout.contains(&0x1b), "{}", text(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["exit_code"], 0);
    assert!(json["error"].is_null());
    let report = &json["report"];
    assert_eq!(report["protocol"], "v4");
    assert_eq!(report["registered"], false, "second run logs in");
    assert!(
        report["server_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let id = report["client_id"].as_str().unwrap();
    let files = report["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    for (file, (name, version)) in
        files
            .iter()
            .zip([("mid.bin", 2), ("small.txt", 1), ("empty", 1)])
    {
        let local = dir.path().join(name);
        assert_eq!(file["stored_name"], name);
        assert_eq!(file["verified"], true, "{file}");
        assert_eq!(file["attempts"], 1);
        assert!(file["failure"].is_null());
        assert_eq!(file["len"], local.metadata().unwrap().len());
        assert_eq!(file["cksum"], cksum_of(&local));
        assert_eq!(file["sha256"], sha256sum(&local));
        assert_eq!(file["version"], version);
        assert_eq!(file["resumed_from"], 0);
        assert!(same_contents(&local, &server.stored(id, name)));
    }
}

/// Fails `CreateTemp` (the server answers 1607) for every file after the first.
#[derive(Debug)]
struct FailAfterFirst(AtomicUsize);

impl FaultInjector for FailAfterFirst {
    fn check(&self, point: FaultPoint) -> Option<io::Error> {
        (point == FaultPoint::CreateTemp && self.0.fetch_add(1, Ordering::SeqCst) >= 1)
            .then(|| io::Error::other("injected: no space left"))
    }
}

#[test]
fn a_fatal_error_prints_and_reports_the_files_already_verified() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("first.txt"), "first\n").unwrap();
    std::fs::write(dir.path().join("second.txt"), "second\n").unwrap();

    let server = RealServer::start_with_injector(Arc::new(FailAfterFirst(AtomicUsize::new(0))));
    let output = run(&mut client(
        dir.path(),
        &server,
        &["first.txt", "second.txt"],
    ));
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("verified first.txt"), "{}", text(&output));
    assert!(
        stdout.contains("FAILED second.txt: not sent"),
        "{}",
        text(&output)
    );
    assert!(
        stderr.contains("1 of 2 files were backed up before this"),
        "{}",
        text(&output)
    );
    drop(server);

    std::fs::remove_file(dir.path().join("me.info")).unwrap();
    let server = RealServer::start_with_injector(Arc::new(FailAfterFirst(AtomicUsize::new(0))));
    let output = run(client(dir.path(), &server, &["first.txt", "second.txt"]).arg("--json"));
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["error"]["kind"], "server_error");
    let files = json["report"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["stored_name"], "first.txt");
    assert_eq!(files[0]["verified"], true);
    assert_eq!(files[1]["verified"], false);
    let id = json["report"]["client_id"].as_str().unwrap();
    assert!(same_contents(
        &dir.path().join("first.txt"),
        &server.stored(id, "first.txt")
    ));
}

/// A proxy to `target` that forwards the client's first `budget` bytes and then stops
/// reading them (a server that went quiet mid-upload), keeping the connection open.
fn stalling_proxy(target: std::net::SocketAddr, budget: usize) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let mut client = client.unwrap();
            let mut upstream = std::net::TcpStream::connect(target).unwrap();
            let (mut down_from, mut down_to) =
                (upstream.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || io::copy(&mut down_from, &mut down_to));
            let mut buf = vec![0u8; 64 * 1024];
            let mut forwarded = 0;
            while forwarded < budget {
                let n = client.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                io::Write::write_all(&mut upstream, &buf[..n]).unwrap();
                forwarded += n;
            }
            // Hold both sockets open without reading: the client's writes back up.
            std::thread::park();
        }
    });
    addr
}

/// Issue 12 item 17: Ctrl-C in the middle of an upload left frozen bars and no message.
/// Now the bars are cleared, a line says what happened and what to do, and the exit code is
/// 130.
#[test]
fn ctrl_c_clears_the_bars_and_says_so() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    write_pattern(&dir.path().join("big.bin"), 64 * MIB, 9);
    let proxy = stalling_proxy(server.addr, 1 << 20);
    let mut command = Command::new(client_binary());
    command
        .current_dir(dir.path())
        .env_remove("CYBERBACKUP_SERVER")
        .env_remove("CYBERBACKUP_NAME")
        .env("TERM", "xterm-256color")
        .args([
            "upload",
            "big.bin",
            "--server",
            &proxy.to_string(),
            "--name",
            "alice",
        ])
        .args(["--v4-identity", "alice-v4.json", "--retries", "0"]);

    let mut interrupted = false;
    let (status, screens) = run_in_pty_watching(command, |pid, rows| {
        if !interrupted && rows.iter().any(|row| row.contains("big.bin")) {
            interrupted = true;
            let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
        }
    });
    assert!(interrupted, "no bar was drawn: {}", screens.last);
    assert_eq!(status.code(), Some(130), "{status:?}\n{}", screens.last);
    assert!(
        !screens.last.contains("ETA"),
        "bars left behind:\n{}",
        screens.last
    );
    assert!(
        screens.last.contains("interrupted (Ctrl-C)")
            && screens.last.contains("Run the same command again"),
        "{}",
        screens.last
    );
}
