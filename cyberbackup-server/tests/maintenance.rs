#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Maintenance against a real server's data: the in-process server on 127.0.0.1, the
//! `cyberbackup_client::v4` library, the real catalog file, and `maintenance::run_once` (what
//! the server's periodic task runs) on a second catalog handle.
//!
//! - Issue 5 property 5: an abandoned v4 partial upload (a real upload cut mid-way) is left
//!   alone while younger than the configured age and removed — file, catalog row, resume
//!   record — once older, while verified files and kept versions stay; the client then starts
//!   the upload afresh.
//! - A v4 upload cut before the server restarts resumes after the restart from its durable
//!   offset (start-up recovery keeps resumable uploads; a stray partial file is removed).
//! - Orphaned kept versions (`<name>.~<v>~` without a catalog row, as a crash between a
//!   commit's catalog write and its deletion of superseded files leaves them) are deleted by
//!   the reconcile step of maintenance and of start-up recovery; kept versions, also one a
//!   crash left mid-move and ones with shortened names, stay.
//!
//! Runtime: about 1 s (debug).

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use cyberbackup_client::v4::{V4Client, V4Options, upload_resuming};
use cyberbackup_server::catalog::{FileFilter, FileState};
use cyberbackup_server::faults::Faults;
use cyberbackup_server::maintenance::{MaintenanceReport, run_once};
use cyberbackup_server::{Catalog, ServerConfig, Storage};
use support::{all_files, cutting_proxy, partials, pattern, start_with, test_config};

fn options(addr: std::net::SocketAddr, dir: &Path) -> V4Options {
    V4Options::new(addr.to_string(), dir.join("alice-v4.json")).with_name("alice")
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Names of the files in `dir`.
fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Rows of the v4 resume bookkeeping table.
fn resume_records(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM v4_uploads", [], |r| r.get(0))
        .unwrap()
}

/// `(version, state, path)` of every row of `name`, discarded ones included.
async fn rows_of(catalog: &Catalog, name: &[u8]) -> Vec<(u32, FileState, String)> {
    let filter = FileFilter {
        name_contains: Some(name.to_vec()),
        include_discarded: true,
        ..FileFilter::default()
    };
    let mut rows: Vec<_> = catalog
        .list_files(filter)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| f.file_name == name)
        .map(|f| (f.version, f.state, f.path_name))
        .collect();
    rows.sort_by_key(|(version, _, _)| *version);
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_v4_partial_upload_is_removed_after_the_configured_age() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = ServerConfig {
        keep_versions: 3,
        checkpoint_interval_bytes: 64 * 1024,
        ..test_config(&data)
    };
    let server = start_with(config, Faults::none()).await;
    let kept = dir.path().join("kept.txt");
    let mut client = V4Client::connect(&options(server.addr, dir.path()))
        .await
        .unwrap();
    let id = client.client_id().unwrap();
    let hex = id.to_hex();
    for seed in [1, 2] {
        std::fs::write(&kept, pattern(50_000, seed)).unwrap();
        client.upload(&kept, None).await.unwrap();
    }
    client.close().await.unwrap();
    let big = dir.path().join("big.bin");
    let big_data = pattern(1024 * 1024, 3);
    std::fs::write(&big, &big_data).unwrap();

    // The upload is cut after the handshake and about 600 KiB of the file.
    let proxy = cutting_proxy(server.addr, 200 + 600 * 1024).await;
    let mut cut = options(proxy, dir.path());
    cut.response_timeout = Duration::from_secs(5);
    let mut client = V4Client::connect(&cut).await.unwrap();
    let err = client.upload(&big, None).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    drop(client);

    let db = data.join("defensive.db");
    let catalog = Catalog::open(&db).await.unwrap();
    let storage = Storage::open(&data).unwrap();
    // The server keeps the partial for resume, checkpointed.
    let partial = checkpointed_partial(&catalog, id.0, b"big.bin").await;
    let partial_file = storage.resolve(&partial.temp_path).unwrap();
    assert!(partial.durable < big_data.len() as u64);
    assert!(partial_file.is_file());
    tokio::time::sleep(Duration::from_millis(20)).await;

    let young = run_once(&catalog, &storage, Duration::from_secs(3600))
        .await
        .unwrap();
    let survived = partial_file.is_file();
    let old = run_once(&catalog, &storage, Duration::ZERO).await.unwrap();

    assert_eq!(young, MaintenanceReport::default(), "younger than the age");
    assert!(
        survived,
        "a partial younger than the age is kept for resume"
    );
    assert_eq!(old.discarded_rows, 1, "{old:?}");
    assert_eq!(old.removed_temp_files, 1, "{old:?}");
    assert!(
        !partial_file.exists(),
        "partial file left: {partial_file:?}"
    );
    assert!(partials(&data).is_empty(), "{:?}", partials(&data));
    assert!(
        catalog
            .v4_partial(id.0, b"big.bin".to_vec())
            .await
            .unwrap()
            .is_none()
    );
    let big_rows = rows_of(&catalog, b"big.bin").await;
    assert_eq!(
        big_rows,
        [(1, FileState::Discarded, format!("{hex}/big.bin"))]
    );
    assert_eq!(resume_records(&db), 0, "the resume record is removed too");
    // Verified versions are untouched, on disk and in the catalog.
    assert_eq!(
        rows_of(&catalog, b"kept.txt").await,
        [
            (1, FileState::Verified, format!("{hex}/kept.txt.~1~")),
            (2, FileState::Verified, format!("{hex}/kept.txt"))
        ]
    );
    assert_eq!(
        all_files(&data),
        [format!("{hex}/kept.txt"), format!("{hex}/kept.txt.~1~")]
    );
    let files = data.join("files").join(&hex);
    assert_eq!(
        std::fs::read(files.join("kept.txt")).unwrap(),
        pattern(50_000, 2)
    );
    assert_eq!(
        std::fs::read(files.join("kept.txt.~1~")).unwrap(),
        pattern(50_000, 1)
    );

    // The client starts that upload again from the beginning.
    let outcome = upload_resuming(&options(server.addr, dir.path()), &big, None, 3)
        .await
        .unwrap();
    assert_eq!(outcome.resumed_from, 0);
    assert_eq!(std::fs::read(files.join("big.bin")).unwrap(), big_data);
    catalog.close().await.unwrap();
    server.stop().await;
}

/// Waits until the server recorded a checkpoint of the partial upload of `name`.
async fn checkpointed_partial(
    catalog: &Catalog,
    client: [u8; 16],
    name: &[u8],
) -> cyberbackup_server::catalog::v4::V4Partial {
    for _ in 0..500 {
        let found = catalog.v4_partial(client, name.to_vec()).await.unwrap();
        if let Some(partial) = found.filter(|p| p.durable > 0) {
            return partial;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no checkpointed partial upload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v4_upload_cut_before_a_restart_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = ServerConfig {
        checkpoint_interval_bytes: 64 * 1024,
        ..test_config(&data)
    };
    let server = start_with(config.clone(), Faults::none()).await;
    let big = dir.path().join("big.bin");
    let big_data = pattern(1024 * 1024, 7);
    std::fs::write(&big, &big_data).unwrap();
    let client = V4Client::connect(&options(server.addr, dir.path()))
        .await
        .unwrap();
    let id = client.client_id().unwrap();
    client.close().await.unwrap();
    let proxy = cutting_proxy(server.addr, 200 + 600 * 1024).await;
    let mut cut = options(proxy, dir.path());
    cut.response_timeout = Duration::from_secs(5);
    let err = V4Client::connect(&cut)
        .await
        .unwrap()
        .upload(&big, None)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    let catalog = Catalog::open(data.join("defensive.db")).await.unwrap();
    let partial = checkpointed_partial(&catalog, id.0, b"big.bin").await;
    catalog.close().await.unwrap();
    let files = data.join("files").join(id.to_hex());
    std::fs::write(files.join(".cb-partial-v4-stray"), b"x").unwrap();

    server.stop().await;
    let server = start_with(config, Faults::none()).await;
    let after_restart = names_in(&files);
    let outcome = upload_resuming(&options(server.addr, dir.path()), &big, None, 3)
        .await
        .unwrap();

    let partial_name = partial.temp_path.rsplit('/').next().unwrap();
    assert_eq!(
        after_restart,
        names(&[partial_name]),
        "stray removed, partial kept"
    );
    // From the offset the server made durable when the cut connection ended.
    assert!(
        outcome.resumed_from >= partial.durable && outcome.resumed_from <= 600 * 1024,
        "{outcome:?}"
    );
    assert_eq!(std::fs::read(files.join("big.bin")).unwrap(), big_data);
    assert_eq!(names_in(&files), names(&["big.bin"]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_kept_versions_are_swept_and_kept_versions_stay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = ServerConfig {
        keep_versions: 2,
        ..test_config(&data)
    };
    let server = start_with(config.clone(), Faults::none()).await;
    let mut client = V4Client::connect(&options(server.addr, dir.path()))
        .await
        .unwrap();
    let hex = client.client_id().unwrap().to_hex();
    // A name whose mapping is shortened (`%C3%A9` × 60 is over 240 bytes).
    let long = "\u{e9}".repeat(60);
    let source = dir.path().join("source");
    let mut upload = async |name: &str, seed: u32| {
        std::fs::write(&source, pattern(20_000, seed)).unwrap();
        client.upload(&source, Some(name)).await.unwrap();
    };
    for seed in 1..=3 {
        upload("a.txt", seed).await;
    }
    upload("b.txt", 4).await;
    upload(&long, 5).await;
    upload(&long, 6).await;
    let files = data.join("files").join(&hex);
    let mapped_long = all_files(&data)
        .into_iter()
        .filter_map(|p| p.strip_prefix(&format!("{hex}/")).map(str::to_owned))
        .find(|p| p.contains('~') && !p.ends_with('~'))
        .expect("the shortened name is stored");
    let long_kept = format!("{mapped_long}.~1~");
    let mut expected = names(&["a.txt", "a.txt.~2~", "b.txt", &mapped_long, &long_kept]);
    assert_eq!(names_in(&files), expected);

    // Orphans: version 1 of a.txt (its row went when version 3 was committed), a name with
    // no rows at all, a shortened name's version that has no row.
    std::fs::write(files.join("a.txt.~1~"), b"orphan a").unwrap();
    std::fs::write(files.join("gone.txt.~4~"), b"orphan gone").unwrap();
    std::fs::write(files.join(format!("{mapped_long}.~9~")), b"orphan long").unwrap();
    // A crash between the two renames of a commit: b.txt moved to its kept name while its
    // row still says b.txt (reconciliation finishes or rolls back the commit; the sweep
    // must not take the only copy of version 1 meanwhile).
    std::fs::rename(files.join("b.txt"), files.join("b.txt.~1~")).unwrap();
    // Not kept-version names: left alone.
    std::fs::write(files.join("c.txt.~x~"), b"not a version").unwrap();

    let catalog = Catalog::open(data.join("defensive.db")).await.unwrap();
    let storage = Storage::open(&data).unwrap();
    let report = run_once(&catalog, &storage, Duration::from_secs(3600))
        .await
        .unwrap();
    catalog.close().await.unwrap();

    assert_eq!(report.removed_orphan_versions, 3, "{report:?}");
    expected.remove("b.txt");
    expected.extend(names(&["b.txt.~1~", "c.txt.~x~"]));
    assert_eq!(names_in(&files), expected);
    let read = |name: &str| std::fs::read(files.join(name)).unwrap();
    assert_eq!(read("a.txt"), pattern(20_000, 3));
    assert_eq!(read("a.txt.~2~"), pattern(20_000, 2));
    assert_eq!(read("b.txt.~1~"), pattern(20_000, 4));
    assert_eq!(read(&mapped_long), pattern(20_000, 6));
    assert_eq!(read(&long_kept), pattern(20_000, 5));
    let out = dir.path().join("restored");
    client.restore("a.txt", Some(2), &out).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), pattern(20_000, 2));
    client.restore(&long, Some(1), &out).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), pattern(20_000, 5));
    client.close().await.unwrap();

    // Start-up recovery sweeps too, before the server serves.
    std::fs::rename(files.join("b.txt.~1~"), files.join("b.txt")).unwrap();
    std::fs::write(files.join("a.txt.~1~"), b"orphan again").unwrap();
    server.stop().await;
    let server = start_with(config, Faults::none()).await;
    expected.remove("b.txt.~1~");
    expected.insert("b.txt".to_owned());
    assert_eq!(names_in(&files), expected);
    server.stop().await;
}
