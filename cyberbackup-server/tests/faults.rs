//! Fault injection over real sockets: the server runs with a `FaultInjector` that fails
//! chosen storage and catalog operations (disk full, EIO, fsync, rename, database busy or
//! failing). Each fault ends the affected transfer with 1607, leaves no temp file and no
//! live catalog row, keeps the previously verified version, and the server goes on serving
//! on the same and on new connections. Runtime: about 3 s in debug.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod support;

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use cyberbackup_core::v3::frame::RequestCode;
use cyberbackup_server::Catalog;
use cyberbackup_server::catalog::{FileFilter, FileRecord, FileState};
use cyberbackup_server::faults::{FaultInjector, FaultPoint, Faults};
use sha2::{Digest, Sha256};
use support::*;

/// Calls left to fail, the error kind, and an errno (which wins over the kind).
type Armed = (u32, io::ErrorKind, Option<i32>);

/// Fails the next `n` calls of each armed point with the armed error.
#[derive(Debug, Default)]
struct Plan {
    armed: Mutex<BTreeMap<FaultPoint, Armed>>,
}

impl Plan {
    fn arm(&self, point: FaultPoint, times: u32, errno: Option<i32>, kind: io::ErrorKind) {
        self.armed
            .lock()
            .unwrap()
            .insert(point, (times, kind, errno));
    }

    fn pending(&self) -> usize {
        self.armed.lock().unwrap().len()
    }
}

impl FaultInjector for Plan {
    fn check(&self, point: FaultPoint) -> Option<io::Error> {
        let mut armed = self.armed.lock().unwrap();
        let (left, kind, errno) = armed.get_mut(&point)?;
        let error = match errno {
            Some(code) => io::Error::from_raw_os_error(*code),
            None => io::Error::new(*kind, "injected"),
        };
        *left -= 1;
        if *left == 0 {
            armed.remove(&point);
        }
        Some(error)
    }
}

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

struct Case {
    label: &'static str,
    point: FaultPoint,
    errno: Option<i32>,
    kind: io::ErrorKind,
    /// Fault before 1603 (the upload gets 1607) or after 1029 (the verdict gets 1607).
    at_commit: bool,
}

fn cases() -> Vec<Case> {
    let io_case = |label, point, errno, at_commit| Case {
        label,
        point,
        errno: Some(errno),
        kind: io::ErrorKind::Other,
        at_commit,
    };
    vec![
        io_case(
            "create temp: disk full",
            FaultPoint::CreateTemp,
            ENOSPC,
            false,
        ),
        io_case("write: disk full", FaultPoint::Write, ENOSPC, false),
        io_case("write: EIO", FaultPoint::Write, EIO, false),
        io_case("fsync: EIO", FaultPoint::Fsync, EIO, false),
        io_case("rename: EIO", FaultPoint::Rename, EIO, true),
        io_case("rename: disk full", FaultPoint::Rename, ENOSPC, true),
        Case {
            label: "catalog begin_file: busy",
            point: FaultPoint::CatalogBeginFile,
            errno: None,
            kind: io::ErrorKind::WouldBlock,
            at_commit: false,
        },
        io_case(
            "catalog mark_received: EIO",
            FaultPoint::CatalogMarkReceived,
            EIO,
            false,
        ),
        Case {
            label: "catalog begin_commit: busy",
            point: FaultPoint::CatalogBeginCommit,
            errno: None,
            kind: io::ErrorKind::WouldBlock,
            at_commit: true,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_ends_the_transfer_with_1607_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let plan = Arc::new(Plan::default());
    let srv = start_with(test_config(&data), Faults::new(plan.clone())).await;
    let keys = keys();
    let mut tried = 0;

    for (i, case) in cases().into_iter().enumerate() {
        let client = format!("faulty-{i}");
        let mut raw = Raw::keyed(srv.addr, client.as_bytes(), &keys).await;
        let v1 = pattern(150_000, i as u32);
        raw.upload_verified(b"doc.bin", &v1).await;
        let v2 = pattern(90_000, 100 + i as u32);

        plan.arm(case.point, 1, case.errno, case.kind);
        let reply = raw.upload(b"doc.bin", &v2, 64 * 1024).await;
        if case.at_commit {
            assert_eq!(reply.code, FILE_RECEIVED, "{}", case.label);
            raw.verdict(RequestCode::CRC_OK, b"doc.bin").await;
        }
        let failed = if case.at_commit {
            raw.reply().await.unwrap()
        } else {
            reply
        };
        assert_eq!(failed.code, SERVER_ERROR, "{}: {failed:?}", case.label);
        assert_eq!(plan.pending(), 0, "{}: fault not reached", case.label);

        // Nothing partial; the previous version is intact on disk and in the catalog.
        assert!(
            partials(&data).is_empty(),
            "{}: {:?}",
            case.label,
            partials(&data)
        );
        let stored = srv.stored_path(raw.id, "doc.bin");
        assert!(
            std::fs::read(&stored).unwrap() == v1,
            "{}: v1 replaced",
            case.label
        );
        let rows = rows_of(&data, &client).await;
        let live: Vec<_> = rows
            .iter()
            .filter(|r| r.state != FileState::Discarded)
            .collect();
        assert_eq!(live.len(), 1, "{}: {rows:?}", case.label);
        assert_eq!(live[0].state, FileState::Verified);
        assert_eq!(live[0].sha256.as_deref(), Some(&Sha256::digest(&v1)[..]));

        // Same connection goes on; so does a new one.
        raw.upload_verified(b"doc.bin", &v2).await;
        assert!(std::fs::read(&stored).unwrap() == v2, "{}", case.label);
        let mut fresh = Raw::keyed(srv.addr, format!("{client}-new").as_bytes(), &keys).await;
        fresh.upload_verified(b"other.bin", &v1).await;
        tried += 1;
    }
    assert_eq!(tried, 9);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_final_catalog_write_is_finished_from_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let plan = Arc::new(Plan::default());
    let srv = start_with(test_config(&data), Faults::new(plan.clone())).await;
    let keys = keys();
    let mut raw = Raw::keyed(srv.addr, b"late", &keys).await;
    let v1 = pattern(10_000, 1);
    let v2 = pattern(20_000, 2);
    raw.upload_verified(b"x.bin", &v1).await;

    // Once: the in-line reconciliation sees the new content in place and finishes (1604).
    plan.arm(
        FaultPoint::CatalogCommit,
        1,
        Some(EIO),
        io::ErrorKind::Other,
    );
    assert_eq!(raw.upload(b"x.bin", &v2, 4096).await.code, FILE_RECEIVED);
    raw.verdict(RequestCode::CRC_OK, b"x.bin").await;
    raw.expect(ACK).await;
    assert!(std::fs::read(srv.stored_path(raw.id, "x.bin")).unwrap() == v2);

    // Persistently: 1607, the row stays `committing` with the new SHA-256, and the restart
    // finishes it (the rename had happened, so rolling back is impossible and unneeded).
    let v3 = pattern(30_000, 3);
    plan.arm(
        FaultPoint::CatalogCommit,
        2,
        None,
        io::ErrorKind::WouldBlock,
    );
    assert_eq!(raw.upload(b"x.bin", &v3, 4096).await.code, FILE_RECEIVED);
    raw.verdict(RequestCode::CRC_OK, b"x.bin").await;
    raw.expect(SERVER_ERROR).await;
    let states: Vec<_> = rows_of(&data, "late")
        .await
        .iter()
        .map(|r| r.state)
        .collect();
    assert!(states.contains(&FileState::Committing), "{states:?}");
    // The server keeps serving meanwhile.
    raw.upload_verified(b"y.bin", b"still here").await;
    let id = raw.id;
    drop(raw);
    srv.stop().await;

    let srv = start(&data).await;
    let rows = rows_of(&data, "late").await;
    let current: Vec<_> = rows
        .iter()
        .filter(|r| {
            r.file_name == b"x.bin" && r.state == FileState::Verified && !r.path_name.contains(".~")
        })
        .collect();
    assert_eq!(current.len(), 1, "{rows:?}");
    assert_eq!(current[0].sha256.as_deref(), Some(&Sha256::digest(&v3)[..]));
    assert!(std::fs::read(srv.stored_path(id, "x.bin")).unwrap() == v3);
    assert!(partials(&data).is_empty());
    srv.stop().await;
}

async fn rows_of(data: &std::path::Path, client: &str) -> Vec<FileRecord> {
    let catalog = Catalog::open(data.join("defensive.db")).await.unwrap();
    catalog
        .list_files(FileFilter {
            client_name: Some(client.as_bytes().to_vec()),
            include_discarded: true,
            ..FileFilter::default()
        })
        .await
        .unwrap()
}

/// v4 checkpoints run in the background (the connection does not wait for their fsync):
/// a checkpoint whose fsync fails must still fail the upload — at the next checkpoint —
/// with the v4 storage error, record no offset beyond what is durable, commit nothing, and
/// leave the server serving: the retry resumes and commits a byte-identical file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_background_checkpoint_fails_the_v4_upload_and_the_retry_resumes() {
    use cyberbackup_client::v4::{V4Client, V4Options};
    use cyberbackup_core::v4::wire::ErrorCode;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let plan = Arc::new(Plan::default());
    let config = cyberbackup_server::ServerConfig {
        checkpoint_interval_bytes: 64 * 1024,
        ..test_config(&data)
    };
    let srv = start_with(config, Faults::new(plan.clone())).await;
    let options = V4Options::new(srv.addr.to_string(), dir.path().join("v4.json")).with_name("cp");
    let source = dir.path().join("big.bin");
    let content = pattern(1024 * 1024, 9);
    std::fs::write(&source, &content).unwrap();

    let mut client = V4Client::connect(&options).await.unwrap();
    plan.arm(FaultPoint::Fsync, 1, Some(EIO), io::ErrorKind::Other);
    let err = client.upload(&source, None).await.unwrap_err();
    assert_eq!(plan.pending(), 0, "the checkpoint's fsync was attempted");
    assert_eq!(err.code(), Some(ErrorCode::STORAGE), "{err}");
    drop(client);

    let catalog = Catalog::open(data.join("defensive.db")).await.unwrap();
    let rows = catalog.list_files(FileFilter::default()).await.unwrap();
    assert!(
        rows.iter().all(|r| r.state != FileState::Verified),
        "nothing committed: {rows:?}"
    );

    // The server keeps serving; the retry resumes from what was made durable.
    let mut client = V4Client::connect(&options).await.unwrap();
    let committed = client.upload(&source, None).await.unwrap();
    let restored = dir.path().join("restored.bin");
    client.restore("big.bin", None, &restored).await.unwrap();
    client.close().await.unwrap();
    assert_eq!(committed.version, 1);
    assert!(
        std::fs::read(&restored).unwrap() == content,
        "restored file differs"
    );
    assert!(
        partials(&data).is_empty(),
        "partial files left after commit"
    );
    srv.stop().await;
}
