//! Scrub and quotas end to end: the real `cyberbackup-client` binary against the reference
//! server (in-process, real sockets, real SQLite, the local repository backend, its admin
//! listener). A byte flipped in a stored pack and in a legacy flat file is found by the next
//! scrub cycle and reported by `/metrics`, `/ready` (still 200), the admin API and the
//! client's `check`, which names the affected file; a backup that would pass the hard quota
//! is refused at its first pack with the quota's message and leaves nothing behind, and a
//! backup above the soft quota warns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use support::{RealServer, client_command, files_under, output_text as text, write_pattern};

fn run(dir: &Path, server: &RealServer, name: &str, args: &[&str]) -> Output {
    client_command(dir, server, name, args).output().unwrap()
}

const KIB: u64 = 1024;

fn packs(server: &RealServer) -> Vec<PathBuf> {
    files_under(&server.data.path().join("data/repository"))
        .into_iter()
        .filter(|path| path.components().any(|c| c.as_os_str() == "packs"))
        .collect()
}

/// Flips one bit in the middle of `path` (a damaged disk).
fn flip_a_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(path, &bytes).unwrap();
}

/// The value of an unlabelled metric in `/metrics`.
fn metric(server: &RealServer, name: &str) -> Option<f64> {
    let (_, body) = server.admin_get("/metrics");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until the scrub finished two more full cycles than now: the second one began after
/// whatever the caller changed before.
fn two_more_scrub_cycles(server: &RealServer) {
    let start = metric(server, "cyberbackup_scrub_cycles_total").unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(server, "cyberbackup_scrub_cycles_total").unwrap_or(0.0) < start + 2.0 {
        assert!(Instant::now() < deadline, "the scrub did not run");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scrub_every_second(config: &mut cyberbackup_server::ServerConfig) {
    config.scrub_interval_secs = 1;
}

#[test]
fn a_flipped_byte_in_a_pack_and_in_a_legacy_file_is_found_and_reported_everywhere() {
    let server = RealServer::start_configured(scrub_every_second);
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("src")).unwrap();
    write_pattern(&dir.path().join("src/victim.bin"), 300 * KIB, 5);
    let backup = run(
        dir.path(),
        &server,
        "alice",
        &["backup", "src", "--name", "alice"],
    );
    assert_eq!(backup.status.code(), Some(0), "{}", text(&backup));
    two_more_scrub_cycles(&server);
    let clean_ready = server.admin_get("/ready");
    let clean_metric = metric(&server, "cyberbackup_scrub_corrupt_objects");
    let biggest = packs(&server)
        .into_iter()
        .max_by_key(|path| fs::metadata(path).unwrap().len())
        .unwrap();

    flip_a_byte(&biggest);
    two_more_scrub_cycles(&server);

    assert_eq!(clean_metric, Some(0.0));
    assert!(
        clean_ready.1.contains("\"corrupt_objects\":0"),
        "{}",
        clean_ready.1
    );
    assert_eq!(
        metric(&server, "cyberbackup_scrub_corrupt_objects"),
        Some(1.0)
    );
    assert!(metric(&server, "cyberbackup_scrub_bytes_total").unwrap() > 300.0 * 1024.0);
    let (status, ready) = server.admin_get("/ready");
    assert_eq!(
        status, 200,
        "corruption does not make the server unready: {ready}"
    );
    assert!(ready.contains("\"corrupt_objects\":1"), "{ready}");
    assert!(ready.contains("\"warnings\":[\"scrub\"]"), "{ready}");
    let (_, api) = server.admin_get("/api/v1/scrub");
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    let objects = api["corrupt_objects"].as_array().unwrap();
    assert_eq!(objects.len(), 1, "{api}");
    assert_eq!(objects[0]["kind"], "pack");
    assert_eq!(objects[0]["client_name"], "alice");
    let pack_hex = biggest.file_name().unwrap().to_str().unwrap();
    assert_eq!(objects[0]["object"], pack_hex);
    assert!(
        objects[0]["reason"].as_str().unwrap().contains("BLAKE3"),
        "{api}"
    );
    let (_, repositories) = server.admin_get("/api/v1/repositories");
    assert!(
        repositories.contains("\"corrupt_packs\":1"),
        "{repositories}"
    );
    let check = run(dir.path(), &server, "alice", &["check"]);
    assert_ne!(check.status.code(), Some(0), "{}", text(&check));
    let victim = dir.path().canonicalize().unwrap().join("src/victim.bin");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains(victim.to_str().unwrap()) && stderr.contains("damaged"),
        "{}",
        text(&check)
    );

    // A legacy flat file (single-file mode stores it as it came, with its SHA-256).
    let legacy = dir.path().join("notes.txt");
    fs::write(&legacy, b"legacy flat file content\n".repeat(50)).unwrap();
    let upload = run(
        dir.path(),
        &server,
        "alice",
        &["upload", legacy.to_str().unwrap(), "--name", "alice"],
    );
    assert_eq!(upload.status.code(), Some(0), "{}", text(&upload));
    let stored = files_under(&server.data.path().join("data/files"))
        .into_iter()
        .find(|path| path.file_name().is_some_and(|n| n == "notes.txt"))
        .unwrap();
    flip_a_byte(&stored);
    two_more_scrub_cycles(&server);

    assert_eq!(
        metric(&server, "cyberbackup_scrub_corrupt_objects"),
        Some(2.0)
    );
    let (_, api) = server.admin_get("/api/v1/scrub?client=alice");
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    let file = api["corrupt_objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "file")
        .unwrap_or_else(|| panic!("no corrupt file in {api}"));
    assert_eq!(file["file_name"], "notes.txt");
    assert!(
        file["reason"].as_str().unwrap().contains("SHA-256"),
        "{api}"
    );
}

fn quotas(config: &mut cyberbackup_server::ServerConfig) {
    config.client_quotas.insert(
        "hard".into(),
        cyberbackup_server::config::ClientQuota {
            soft_bytes: None,
            hard_bytes: Some(200 * KIB),
        },
    );
    config.client_quotas.insert(
        "soft".into(),
        cyberbackup_server::config::ClientQuota {
            soft_bytes: Some(KIB),
            hard_bytes: None,
        },
    );
}

#[test]
fn a_backup_above_the_hard_quota_is_refused_at_its_first_pack_and_one_above_the_soft_quota_warns() {
    let server = RealServer::start_configured(quotas);
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("big")).unwrap();
    write_pattern(&dir.path().join("big/random.bin"), 2 * 1024 * KIB, 9);
    fs::create_dir_all(dir.path().join("small")).unwrap();
    write_pattern(&dir.path().join("small/random.bin"), 20 * KIB, 10);

    let refused = run(
        dir.path(),
        &server,
        "hard",
        &["backup", "big", "--name", "hard"],
    );
    let warned = run(
        dir.path(),
        &server,
        "soft",
        &["backup", "small", "--name", "soft"],
    );

    assert_ne!(refused.status.code(), Some(0), "{}", text(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("quota exceeded")
            && stderr.contains("200.0 KiB hard quota for client hard")
            && stderr.contains("QUOTA_EXCEEDED"),
        "{}",
        text(&refused)
    );
    let listed = run(dir.path(), &server, "hard", &["snapshots", "--json"]);
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed));
    let snapshots: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(snapshots, serde_json::json!([]), "no snapshot was left");
    let staged = files_under(&server.data.path().join("data/repo-staging"));
    assert!(staged.is_empty(), "staging holds {staged:?}");
    let stored: u64 = packs(&server)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        stored <= 200 * KIB + 30 * KIB,
        "only the soft client's packs may be stored besides what fits: {stored} bytes"
    );
    assert_eq!(warned.status.code(), Some(0), "{}", text(&warned));
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(
        stderr.contains("above its soft quota of 1.0 KiB"),
        "{}",
        text(&warned)
    );
    let (_, repositories) = server.admin_get("/api/v1/repositories");
    let repositories: serde_json::Value = serde_json::from_str(&repositories).unwrap();
    let soft = repositories
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "soft")
        .unwrap();
    assert_eq!(soft["over_soft_quota"], true, "{repositories}");
}
