//! The real binary as a child process: legacy mode, JSON output, bad input, exit codes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use common::{Behaviour, FakeServer, content};

fn client(dir: &Path) -> Command {
    let mut command = Command::cargo_bin("cyberbackup-client").unwrap();
    command
        .current_dir(dir)
        .env_remove("CYBERBACKUP_SERVER")
        .env_remove("CYBERBACKUP_NAME");
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

fn legacy_dir(server: &str, files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut info = format!("{server}\nMichael Jackson\n");
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        info.push_str(name);
        info.push('\n');
    }
    std::fs::write(dir.path().join("transfer.info"), info).unwrap();
    dir
}

#[test]
fn plain_invocation_with_transfer_info_is_legacy_mode() {
    let server = FakeServer::start(Behaviour::default());
    let data = content(20_000, 4);
    let dir = legacy_dir(
        &server.server(),
        &[("legacy.bin", &data), ("two.txt", b"2")],
    );

    let output = client(dir.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("2 of 2 files backed up"),
        "{}",
        text(&output)
    );
    assert_eq!(server.file("legacy.bin").unwrap(), data);
    let me_info = std::fs::read_to_string(dir.path().join("me.info")).unwrap();
    assert!(me_info.starts_with("Michael Jackson\n"));

    // Second run: reconnect with the me.info written by the first.
    let output = client(dir.path()).arg("legacy").output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let connections = server.connections();
    assert_eq!(connections[1][0], 1027);
    assert!(!connections[1].contains(&1025));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("me.info")).unwrap(),
        me_info
    );
}

#[test]
fn json_output_is_machine_readable() {
    let server = FakeServer::start(Behaviour::default());
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("docs")).unwrap();
    std::fs::write(dir.path().join("docs/a.txt"), b"a").unwrap();
    std::fs::write(dir.path().join("docs/b.log"), b"b").unwrap();
    let output = client(dir.path())
        .args([
            "upload",
            "docs",
            "--server",
            &server.server(),
            "--name",
            "jay",
        ])
        .args([
            "--identity",
            "id/me.info",
            "--include",
            "*.txt",
            "--json",
            "--packet-size",
            "1024",
            // The fake server speaks v3; v4 is the default protocol.
            "--protocol",
            "v3",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["ok"], true);
    assert_eq!(value["exit_code"], 0);
    let files = value["report"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "--include *.txt");
    assert_eq!(files[0]["stored_name"], "a.txt");
    assert_eq!(files[0]["verified"], true);
    assert_eq!(files[0]["cksum"], 1_220_704_766u32, "POSIX cksum of \"a\"");
    assert!(dir.path().join("id/me.info").is_file());
}

#[test]
fn transfer_info_with_two_lines_or_a_bad_port_is_a_usage_error() {
    for (info, expected) in [
        ("127.0.0.1:1256\nalice\n", "only 2 lines"),
        ("127.0.0.1:12x56\nalice\nfile.txt\n", "is not a port"),
        ("localhost\nalice\nfile.txt\n", "the port is missing"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("transfer.info"), info).unwrap();
        let output = client(dir.path()).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("transfer.info"), "{}", text(&output));
        assert!(stderr.contains(expected), "{}", text(&output));
        assert!(!dir.path().join("me.info").exists());
    }
}

#[test]
fn a_bad_me_info_is_an_identity_error_and_stays_untouched() {
    let server = FakeServer::start(Behaviour::default());
    for (me_info, expected) in [
        ("Michael Jackson\nnot-a-uuid\nMIIB\n", "not-a-uuid"),
        (
            "Michael Jackson\n0123456789abcdef0123456789abcdef\n!!!notbase64!!!\n",
            "Base64",
        ),
        (
            "Michael Jackson\n0123456789abcdef0123456789abcdef\nAAAA\n",
            "private key",
        ),
    ] {
        let dir = legacy_dir(&server.server(), &[("a.txt", b"a")]);
        std::fs::write(dir.path().join("me.info"), me_info).unwrap();
        let output = client(dir.path()).output().unwrap();
        assert_eq!(output.status.code(), Some(4), "{}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("me.info"), "{}", text(&output));
        assert!(stderr.contains(expected), "{}", text(&output));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("me.info")).unwrap(),
            me_info
        );
    }
    assert!(
        server.connections().is_empty(),
        "no connection with a bad identity"
    );
}

#[test]
fn a_missing_file_fails_with_its_name_and_exit_1() {
    let server = FakeServer::start(Behaviour::default());
    let dir = legacy_dir(&server.server(), &[]);
    std::fs::write(
        dir.path().join("transfer.info"),
        format!("{}\nbob\nnope.txt\n", server.server()),
    )
    .unwrap();
    let output = client(dir.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let all = text(&output);
    assert!(
        all.contains("nope.txt") && all.contains("No such file"),
        "{all}"
    );
    assert!(!dir.path().join("me.info").exists());
}

#[test]
fn an_unreadable_file_fails_with_its_name() {
    use std::os::unix::fs::PermissionsExt;
    let server = FakeServer::start(Behaviour::default());
    let dir = legacy_dir(&server.server(), &[("secret.txt", b"s"), ("ok.txt", b"o")]);
    let secret = dir.path().join("secret.txt");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&secret).is_ok() {
        eprintln!("skipped: running as root, mode 000 does not stop reads");
        return;
    }
    let output = client(dir.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let all = text(&output);
    assert!(
        all.contains("secret.txt") && all.contains("ermission denied"),
        "{all}"
    );
    assert!(all.contains("1 of 2 files backed up"), "{all}");
    assert_eq!(server.file("ok.txt").unwrap(), b"o");
}

#[test]
fn a_server_closing_mid_transfer_is_a_network_error_and_me_info_stays() {
    let server = FakeServer::start(Behaviour::default());
    let dir = legacy_dir(&server.server(), &[("a.txt", b"first")]);
    let output = client(dir.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let me_info = std::fs::read(dir.path().join("me.info")).unwrap();

    let dropping = FakeServer::start(Behaviour {
        kill_every_transfer: true,
        ..Behaviour::default()
    });
    // The new server knows nobody: registering again would rewrite me.info, so point the
    // old identity at it only after seeding its catalogue with the same client.
    let seeded = server.shared.lock().unwrap().clients.clone();
    dropping.shared.lock().unwrap().clients = seeded;
    std::fs::write(
        dir.path().join("transfer.info"),
        format!("{}\nMichael Jackson\na.txt\n", dropping.server()),
    )
    .unwrap();
    let output = client(dir.path())
        .args(["legacy", "--retries", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("closed the connection") || stderr.contains("connection to"),
        "{}",
        text(&output)
    );
    assert!(
        stderr.contains("sending a.txt") || stderr.contains("a.txt"),
        "{}",
        text(&output)
    );
    assert_eq!(std::fs::read(dir.path().join("me.info")).unwrap(), me_info);
}

#[test]
fn no_arguments_without_transfer_info_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = client(dir.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("transfer.info"));
}

#[test]
fn connection_refused_exits_3_with_a_hint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), b"a").unwrap();
    let output = client(dir.path())
        .args([
            "upload",
            "a.txt",
            "--server",
            &format!("127.0.0.1:{port}"),
            "--name",
            "n",
        ])
        .args(["--identity", "me.info", "--retries", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("error: cannot connect to 127.0.0.1:{port}"))
            && stderr.contains("is the server running"),
        "{}",
        text(&output)
    );
}

#[test]
fn help_describes_the_v4_client() {
    let dir = tempfile::tempdir().unwrap();

    let output = client(dir.path()).arg("--help").output().unwrap();

    let help = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(!help.contains("v3 client"), "{help}");
    assert!(help.contains("protocol v4"), "{help}");
}
