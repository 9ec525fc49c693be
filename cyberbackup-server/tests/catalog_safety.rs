//! The catalog is checked before the server starts (issue 12, item 6), with the real binary on
//! damaged data directories: a missing catalog beside stored files, a truncated one, one with a
//! corrupted page, `--check` on a damaged one, the `allow_damaged_catalog` override, and
//! `catalog rebuild` bringing the stored files back; catalog files are private (item 14).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::{Raw, keys, start};

const BINARY: &str = env!("CARGO_BIN_EXE_cyberbackup-server");

/// A data directory holding two versions of `report.txt` for `alice`, stored by a real v3
/// upload, with the server stopped. Returns the contents, oldest first.
async fn data_dir_with_two_versions(data: &Path) -> [Vec<u8>; 2] {
    let first = support::pattern(70_000, 1);
    let second = support::pattern(5_000, 2);
    let server = start(data).await;
    let mut client = Raw::keyed(server.addr, b"alice", &keys()).await;
    client.upload_verified(b"report.txt", &first).await;
    client.upload_verified(b"report.txt", &second).await;
    drop(client);
    server.stop().await;
    [first, second]
}

/// The server binary on `data` (admin listener off, a free port), with `args` after the
/// common flags; `run` exits at once when start-up fails, so a test that expects a refusal
/// gets the output without waiting (a server that starts instead is killed after a minute
/// and the test fails).
fn server(data: &Path, args: &[&str]) -> Output {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_cmd::Command::new(BINARY)
        .timeout(Duration::from_secs(60))
        .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("CYBERBACKUP_ADMIN_ENABLED", "false")
        .env_remove("CYBERBACKUP_ALLOW_DAMAGED_CATALOG")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn remove_catalog(data: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(data.join(format!("defensive.db{suffix}")));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_catalog_beside_stored_files_refuses_to_start_with_the_recovery_steps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    data_dir_with_two_versions(&data).await;
    remove_catalog(&data);

    let run = server(&data, &["run"]);
    let check = server(&data, &["--check"]);

    assert_eq!(run.status.code(), Some(74), "{}", stderr(&run));
    let message = stderr(&run);
    assert!(message.contains("no catalog at"), "{message}");
    assert!(message.contains("catalog rebuild"), "{message}");
    assert!(
        message.contains("restore defensive.db from a backup"),
        "{message}"
    );
    assert!(
        !data.join("defensive.db").exists(),
        "no empty catalog was created"
    );
    assert_eq!(check.status.code(), Some(1), "{}", stdout(&check));
    assert!(
        stdout(&check).contains("FAIL  catalog"),
        "{}",
        stdout(&check)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_v4_key_without_a_catalog_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fingerprint = server(&data, &["fingerprint"]);
    assert!(fingerprint.status.success(), "{}", stderr(&fingerprint));
    remove_catalog(&data);

    let run = server(&data, &["run"]);

    assert_eq!(run.status.code(), Some(74), "{}", stderr(&run));
    assert!(stderr(&run).contains("server-v4.key"), "{}", stderr(&run));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_catalog_is_refused_and_rebuilt_from_the_stored_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let [first, second] = data_dir_with_two_versions(&data).await;
    remove_catalog(&data);
    fs::write(data.join("defensive.db"), b"").unwrap();

    let run = server(&data, &["run"]);
    let rebuild = server(&data, &["catalog", "rebuild"]);
    let files = server(&data, &["files", "--csv"]);
    let check = server(&data, &["--check"]);

    assert_eq!(run.status.code(), Some(74), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("does not know the clients"),
        "{}",
        stderr(&run)
    );
    assert!(rebuild.status.success(), "{}", stderr(&rebuild));
    assert!(
        stdout(&rebuild).contains("2 file version(s)"),
        "{}",
        stdout(&rebuild)
    );
    let listing = stdout(&files);
    let hex = |data: &[u8]| hex::encode(Sha256::digest(data));
    let line_of = |sha: &str| {
        listing
            .lines()
            .find(|line| line.contains(sha))
            .unwrap_or_else(|| panic!("{sha} not listed:\n{listing}"))
            .to_owned()
    };
    let (old, new) = (line_of(&hex(&first)), line_of(&hex(&second)));
    assert!(
        old.contains("report.txt") && new.contains("report.txt"),
        "{listing}"
    );
    assert!(old.contains(",1,verified,"), "version 1:\n{listing}");
    assert!(new.contains(",2,verified,"), "version 2:\n{listing}");
    assert!(
        old.contains(&format!(",{},", support::cksum(&first))),
        "{listing}"
    );
    assert!(
        new.contains(",recovered-"),
        "the name was in the lost catalog: {listing}"
    );
    assert!(
        stdout(&check).contains("ok    catalog"),
        "{}",
        stdout(&check)
    );
    let aside = fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("defensive.db.damaged-")
        });
    assert!(aside, "the old catalog is kept aside");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_page_fails_the_integrity_check_unless_the_operator_accepts_the_risk() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    data_dir_with_two_versions(&data).await;
    let catalog = data.join("defensive.db");
    let mut bytes = fs::read(&catalog).unwrap();
    assert!(bytes.len() >= 4 * 4096, "{} bytes", bytes.len());
    // Page 3 onwards (the header page stays readable): garbage in the middle of the file.
    for byte in &mut bytes[2 * 4096..3 * 4096] {
        *byte = 0xA5;
    }
    fs::write(&catalog, &bytes).unwrap();

    let check = server(&data, &["--check"]);
    let run = server(&data, &["run"]);
    let accepted = server(&data, &["--allow-damaged-catalog", "true", "enroll"]);

    assert_eq!(check.status.code(), Some(1), "{}", stdout(&check));
    assert!(stdout(&check).contains("is damaged"), "{}", stdout(&check));
    assert_eq!(run.status.code(), Some(74), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("allow_damaged_catalog"),
        "{}",
        stderr(&run)
    );
    assert!(
        accepted.status.success(),
        "the override opens it: {}",
        stderr(&accepted)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_files_are_created_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    data_dir_with_two_versions(&data).await;

    let mode = |name: &str| fs::metadata(data.join(name)).unwrap().permissions().mode() & 0o777;

    assert_eq!(mode("defensive.db"), 0o600);
    assert_eq!(mode("server-v4.key"), 0o600);
}
