//! The client library against the reference server (in-process, real sockets on 127.0.0.1,
//! real SQLite and storage in temp directories): big and small files round-trip byte for
//! byte (compared with the stored file under `files/<client-id-hex>/`), multi-packet and
//! single-packet modes, a directory of 1,000 files, the partial report of a run stopped by
//! a fatal error, and the refusal of two files with one base name.
//!
//! Runtime (debug test build, optimised dependencies, 2 busy cores): 26–54 s in all; the
//! 200 MiB file takes 15–29 s (the unoptimised core encrypts at about 7–11 MiB/s), the
//! 1,000 files about 8.5 s.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::cast_possible_truncation
)]

mod support;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cyberbackup_client::error::EXIT_NETWORK;
use cyberbackup_client::{
    BackupReport, Client, ClientError, ClientOptions, IdentityFile, NoProgress, RetryPolicy, cli,
};
use cyberbackup_server::faults::{FaultInjector, FaultPoint};
use support::{RealServer, cksum_of, same_contents, write_pattern};

const MIB: u64 = 1024 * 1024;

fn options(server: &RealServer, dir: &Path) -> ClientOptions {
    let mut options = ClientOptions::new(
        server.server(),
        "alice",
        IdentityFile::new(dir.join("me.info")),
    );
    options.retry = RetryPolicy {
        max_retries: 1,
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    };
    options
}

async fn backup(options: ClientOptions, paths: &[PathBuf]) -> BackupReport {
    let mut client = Client::new(options).unwrap();
    let report = client.backup(paths, &mut NoProgress).await.unwrap();
    client.close(&mut NoProgress).await.unwrap();
    report
}

/// Every file of `report` is verified, stored byte for byte, with the cksum of the source.
fn assert_stored(server: &RealServer, report: &BackupReport) {
    assert!(report.all_verified(), "{report:#?}");
    let id = report.client_id.as_deref().unwrap();
    for file in &report.files {
        let stored = server.stored(id, &file.stored_name);
        assert!(
            same_contents(&file.path, &stored),
            "{} differs from the stored {}",
            file.path.display(),
            stored.display()
        );
        assert_eq!(
            file.cksum,
            Some(cksum_of(&file.path)),
            "{}",
            file.stored_name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_file_round_trips_byte_identically() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    write_pattern(&big, 200 * MIB + 7, 1);

    let started = Instant::now();
    let report = backup(options(&server, dir.path()), std::slice::from_ref(&big)).await;
    eprintln!("200 MiB backed up in {:?}", started.elapsed());
    assert_stored(&server, &report);
    assert_eq!(report.files[0].len, 200 * MIB + 7);
    assert_eq!(report.files[0].attempts, 1);
    assert!(report.registered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_sizes_multi_packet_and_single_packet_modes_round_trip() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0, 1, 16, MIB + 1];
    let files: Vec<PathBuf> = sizes
        .iter()
        .map(|&len| {
            let path = dir.path().join(format!("f{len}.bin"));
            write_pattern(&path, len, len + 3);
            path
        })
        .collect();
    let report = backup(options(&server, dir.path()), &files).await;
    assert_stored(&server, &report);

    // 1 KiB packets: 3 MiB + 5 bytes is 3 073 packets (the second run reconnects).
    let many = dir.path().join("many-packets.bin");
    write_pattern(&many, 3 * MIB + 5, 11);
    let mut opts = options(&server, dir.path());
    opts.packet_size = 1024;
    opts.read_chunk_len = 100_000;
    let report = backup(opts.clone(), std::slice::from_ref(&many)).await;
    assert_stored(&server, &report);
    assert!(!report.registered, "the second run must reconnect");

    // One packet for 24 MiB + 3 bytes.
    let single = dir.path().join("single.bin");
    write_pattern(&single, 24 * MIB + 3, 12);
    opts.single_packet = true;
    let report = backup(opts, std::slice::from_ref(&single)).await;
    assert_stored(&server, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_1000_small_files_round_trips() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    for index in 0..1000u64 {
        let sub = tree.join(format!("d{:02}", index % 10));
        std::fs::create_dir_all(&sub).unwrap();
        write_pattern(
            &sub.join(format!("file-{index:04}.dat")),
            index * 7 % 3000,
            index,
        );
    }
    let files = cli::expand_paths(&[tree], &[], &[]).unwrap();
    assert_eq!(files.len(), 1000);

    let started = Instant::now();
    let report = backup(options(&server, dir.path()), &files).await;
    eprintln!("1 000 files backed up in {:?}", started.elapsed());
    assert_eq!(report.files.len(), 1000);
    assert_stored(&server, &report);
}

/// Fails `CreateTemp` (the server answers 1607) for every file after the first `allowed`.
#[derive(Debug)]
struct FailAfter {
    allowed: usize,
    seen: AtomicUsize,
}

impl FaultInjector for FailAfter {
    fn check(&self, point: FaultPoint) -> Option<io::Error> {
        if point != FaultPoint::CreateTemp {
            return None;
        }
        let seen = self.seen.fetch_add(1, Ordering::SeqCst);
        (seen >= self.allowed).then(|| io::Error::other("injected: disk on fire"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_after_verified_files_carries_the_partial_report() {
    let server = RealServer::start_with_injector(Arc::new(FailAfter {
        allowed: 2,
        seen: AtomicUsize::new(0),
    }));
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = ["one.txt", "two.txt", "three.txt", "four.txt"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let path = dir.path().join(name);
            write_pattern(&path, 1000 + i as u64, i as u64);
            path
        })
        .collect();
    let mut client = Client::new(options(&server, dir.path())).unwrap();
    let err = client.backup(&paths, &mut NoProgress).await.unwrap_err();

    assert!(
        matches!(err.cause(), ClientError::ServerKeptFailing { .. }),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), EXIT_NETWORK);
    assert_eq!(err.kind(), "server_error");
    let report = err.partial_report().expect("no partial report");
    let verified: Vec<&str> = report
        .files
        .iter()
        .filter(|f| f.verified)
        .map(|f| f.stored_name.as_str())
        .collect();
    assert_eq!(verified, ["one.txt", "two.txt"]);
    assert_eq!(report.files.len(), 4);
    for file in &report.files[2..] {
        let failure = file.failure.as_deref().unwrap();
        assert!(failure.contains("not sent"), "{failure}");
        assert!(
            failure.contains("server responded with an error"),
            "{failure}"
        );
    }
    let id = report.client_id.as_deref().unwrap();
    assert!(same_contents(&paths[1], &server.stored(id, "two.txt")));
    assert!(!server.stored(id, "three.txt").exists());
    let message = err.to_string();
    assert!(
        message.contains("2 of 4 files were backed up before this"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_files_with_one_base_name_are_refused_before_connecting() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    for sub in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        std::fs::write(dir.path().join(sub).join("notes.txt"), sub).unwrap();
    }
    std::fs::write(dir.path().join("a/other.txt"), "x").unwrap();
    let files = cli::expand_paths(&[dir.path().join("a"), dir.path().join("b")], &[], &[]).unwrap();
    let mut client = Client::new(options(&server, dir.path())).unwrap();
    let err = client.backup(&files, &mut NoProgress).await.unwrap_err();
    let ClientError::DuplicateName {
        name,
        first,
        second,
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(name, "notes.txt");
    assert_eq!(first, &dir.path().join("a/notes.txt"));
    assert_eq!(second, &dir.path().join("b/notes.txt"));
    assert_eq!(err.exit_code(), cyberbackup_client::error::EXIT_USAGE);
    assert!(err.to_string().contains("rename one of them"), "{err}");
    // Nothing was sent: no registration, no identity.
    assert!(!dir.path().join("me.info").exists());
    assert!(
        !server
            .data
            .path()
            .join("files")
            .read_dir()
            .is_ok_and(|mut entries| entries.any(|e| e.is_ok()))
    );
}

#[test]
fn client_names_over_100_characters_are_refused_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let long = "é".repeat(101);
    let options = ClientOptions::new(
        "127.0.0.1:9",
        long.clone(),
        IdentityFile::new(dir.path().join("me.info")),
    );
    let err = Client::new(options).unwrap_err();
    assert_eq!(err.exit_code(), cyberbackup_client::error::EXIT_USAGE);
    assert!(
        err.to_string().contains("1 to 100 characters, found 101"),
        "{err}"
    );
    let ok = ClientOptions::new(
        "127.0.0.1:9",
        "é".repeat(100),
        IdentityFile::new(dir.path().join("me.info")),
    );
    assert!(Client::new(ok).is_ok());
    let legacy = cyberbackup_client::legacy::parse_transfer_info(&format!("h:1\n{long}\na\n"));
    assert!(
        legacy
            .unwrap_err()
            .contains("1 to 100 characters, found 101")
    );
}
