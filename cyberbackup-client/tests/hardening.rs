//! The real `cyberbackup-client` binary against the reference server (in-process, real
//! sockets on 127.0.0.1, real SQLite and storage): the CLI items of the hardening issue
//! (issue 12). Names the server would refuse fail alone over v3; output to a closed pipe
//! ends the run normally; a taken name can be replaced by another `--name`; `restore
//! --output DIR` writes into the directory; `list` escapes control characters and aligns
//! wide names.
//!
//! Runtime (debug test build): a few seconds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::cast_possible_truncation
)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::{RealServer, client_binary};

fn client(dir: &Path) -> Command {
    let mut command = Command::new(client_binary());
    command
        .current_dir(dir)
        .env_remove("CYBERBACKUP_SERVER")
        .env_remove("CYBERBACKUP_NAME")
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdin(Stdio::null());
    command
}

/// `backup PATHS` as `name` over protocol v3 with `me.info` in `dir`.
fn backup_v3(dir: &Path, server: &RealServer, name: &str, paths: &[&str]) -> Command {
    let mut command = client(dir);
    command
        .arg("upload")
        .args(paths)
        .args(["--server", &server.server(), "--name", name])
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

/// `backup PATHS` as `name` over protocol v4 with the identity `identity` in `dir`.
fn backup_v4(
    dir: &Path,
    server: &RealServer,
    name: &str,
    identity: &str,
    paths: &[&str],
) -> Command {
    let mut command = client(dir);
    command
        .arg("upload")
        .args(paths)
        .args(["--server", &server.server(), "--name", name])
        .args(["--v4-identity", identity, "--retries", "0"]);
    command
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{err}: {}", text(output)))
}

/// Item 12: `C:notes.txt` and `back\slash.txt` are legal Linux names the server refuses.
/// Over v3 they used to abort the whole run (the server closes on an invalid name: 0 of 5
/// files backed up); now the client checks them with the server's validator first, reports
/// them failed and backs up the other three — over v3 and v4 alike.
#[test]
fn names_the_server_refuses_fail_alone_and_the_rest_is_backed_up() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let names = ["a.txt", "C:notes.txt", "b.txt", "back\\slash.txt", "c.txt"];
    for (i, name) in names.iter().enumerate() {
        std::fs::write(dir.path().join(name), format!("file {i}\n")).unwrap();
    }

    for (protocol, mut command) in [
        ("v3", backup_v3(dir.path(), &server, "alice", &names)),
        (
            "v4",
            backup_v4(dir.path(), &server, "bob", "bob-v4.json", &names),
        ),
    ] {
        let output = command.arg("--json").output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(1),
            "{protocol}: {}",
            text(&output)
        );
        let value = json(&output);
        let files = value["report"]["files"].as_array().unwrap();
        assert_eq!(files.len(), 5, "{protocol}: {value:#}");
        for (file, name) in files.iter().zip(names) {
            let refused = name.contains(':') || name.contains('\\');
            assert_eq!(file["verified"], !refused, "{protocol} {name}: {file:#}");
            if refused {
                let failure = file["failure"].as_str().unwrap();
                assert!(
                    failure.contains("the server would refuse the name") && failure.contains(name),
                    "{protocol}: {failure}"
                );
                assert_eq!(file["attempts"], 0, "{protocol}: nothing was sent");
            }
        }
    }
}

/// Runs `command` with its stdout a pipe whose reader is already gone (what `| head -1`
/// leaves behind once it has its line): every write gets EPIPE.
fn output_to_a_closed_pipe(command: &mut Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

/// Item 17: `list | head -2` and `backup … | head -1` used to panic with "failed printing
/// to stdout: Broken pipe" (exit 101). A reader that goes away is a normal end.
#[test]
fn a_closed_stdout_pipe_ends_list_and_backup_normally() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "a\n").unwrap();
    std::fs::write(dir.path().join("b.txt"), "b\n").unwrap();

    let output = output_to_a_closed_pipe(&mut backup_v4(
        dir.path(),
        &server,
        "alice",
        "alice-v4.json",
        &["a.txt", "b.txt"],
    ));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(!stderr.contains("panicked"), "{stderr}");

    let output = output_to_a_closed_pipe(&mut backup_v3(
        dir.path(),
        &server,
        "carol",
        &["a.txt", "b.txt"],
    ));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    let output = output_to_a_closed_pipe(client(dir.path()).args([
        "files",
        "--server",
        &server.server(),
        "--v4-identity",
        "alice-v4.json",
    ]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Item 17: a taken name used to lock the user in a loop (`NAME_TAKEN … choose another
/// --name`, then `--name alice2` → "the identity file belongs to alice"). The message names
/// the fix, and following it works: the identity was never registered, so it takes the
/// new name.
#[test]
fn a_taken_name_can_be_replaced_by_another_name() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "a\n").unwrap();
    let first = backup_v4(dir.path(), &server, "alice", "first.json", &["a.txt"])
        .output()
        .unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));

    let taken = backup_v4(dir.path(), &server, "alice", "second.json", &["a.txt"])
        .output()
        .unwrap();
    assert_eq!(taken.status.code(), Some(4), "{}", text(&taken));
    let stderr = String::from_utf8_lossy(&taken.stderr);
    assert!(
        stderr.contains("NAME_TAKEN") && stderr.contains("run again with another --name"),
        "{stderr}"
    );

    let renamed = backup_v4(dir.path(), &server, "alice2", "second.json", &["a.txt"])
        .output()
        .unwrap();
    assert_eq!(renamed.status.code(), Some(0), "{}", text(&renamed));
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("second.json")).unwrap()).unwrap();
    assert_eq!(identity["name"], "alice2");
    // A registered identity still refuses another name, and says what to pass.
    let other = backup_v4(dir.path(), &server, "alice3", "second.json", &["a.txt"])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(4), "{}", text(&other));
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("pass --name \"alice2\""),
        "{}",
        text(&other)
    );
}

/// Item 17: `restore NAME --output DIR` failed with "Is a directory"; it writes DIR/NAME.
#[test]
fn restore_into_a_directory_writes_the_file_inside_it() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "my notes\n").unwrap();
    let backup = backup_v4(
        dir.path(),
        &server,
        "alice",
        "alice-v4.json",
        &["notes.txt"],
    )
    .output()
    .unwrap();
    assert_eq!(backup.status.code(), Some(0), "{}", text(&backup));
    let out = dir.path().join("restored");
    std::fs::create_dir(&out).unwrap();

    let restore = client(dir.path())
        .args(["download", "notes.txt", "--server", &server.server()])
        .args(["--v4-identity", "alice-v4.json", "--output"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(restore.status.code(), Some(0), "{}", text(&restore));
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "my notes\n"
    );
    assert!(
        String::from_utf8_lossy(&restore.stdout)
            .contains(&format!("to {}", out.join("notes.txt").display())),
        "{}",
        text(&restore)
    );
}

/// Item 17: `list` printed names with newlines and escape sequences raw (one entry over two
/// lines, or colours and cursor moves on the user's terminal) and misaligned wide names.
#[test]
fn list_escapes_control_characters_and_aligns_wide_names() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "two\nlines.txt",
        "\u{1b}[31mred.txt",
        "报告.txt",
        "plain.txt",
    ];
    for name in names {
        std::fs::write(dir.path().join(name), name).unwrap();
    }
    let backup = backup_v4(dir.path(), &server, "alice", "alice-v4.json", &names)
        .output()
        .unwrap();
    assert_eq!(backup.status.code(), Some(0), "{}", text(&backup));

    let list = client(dir.path())
        .args([
            "files",
            "--server",
            &server.server(),
            "--v4-identity",
            "alice-v4.json",
        ])
        .output()
        .unwrap();
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    let stdout = String::from_utf8(list.stdout).unwrap();
    assert!(!stdout.contains('\u{1b}'), "{stdout:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    // A header, one line per version, the count.
    assert_eq!(lines.len(), 1 + names.len() + 1, "{stdout}");
    assert!(
        lines.iter().any(|l| l.starts_with("two\\nlines.txt ")),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("\\u{1b}[31mred.txt ")),
        "{stdout}"
    );
    // Every row's SHA-256 starts in the same terminal column.
    let sha_column = |line: &str| {
        let at = line.rfind(' ').unwrap() + 1;
        unicode_width::UnicodeWidthStr::width(&line[..at])
    };
    let columns: Vec<usize> = lines[..=names.len()]
        .iter()
        .map(|l| sha_column(l))
        .collect();
    assert!(
        columns.windows(2).all(|w| w[0] == w[1]),
        "{columns:?}\n{stdout}"
    );
}
