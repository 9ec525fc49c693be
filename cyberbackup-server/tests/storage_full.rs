//! A full disk (issue 12, item 9): below `min_free_disk_mb` new uploads are refused over v3
//! and v4, and `ENOSPC` during a registration is reported to the v4 client as "server storage
//! is full", not as an internal error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use cyberbackup_client::v4::{V4Client, V4Options};
use cyberbackup_server::faults::{FaultInjector, FaultPoint, Faults};
use support::{Raw, SERVER_ERROR, keys, partials, pattern, start_with, test_config};

const ENOSPC: i32 = 28;

/// Fails the next call of each armed point with `ENOSPC`.
#[derive(Debug, Default)]
struct DiskFull(Mutex<BTreeMap<FaultPoint, u32>>);

impl DiskFull {
    fn arm(&self, point: FaultPoint) {
        *self.0.lock().unwrap().entry(point).or_default() += 1;
    }
}

impl FaultInjector for DiskFull {
    fn check(&self, point: FaultPoint) -> Option<io::Error> {
        let mut armed = self.0.lock().unwrap();
        let left = armed.get_mut(&point)?;
        *left -= 1;
        if *left == 0 {
            armed.remove(&point);
        }
        Some(io::Error::from_raw_os_error(ENOSPC))
    }
}

fn options(addr: std::net::SocketAddr, dir: &std::path::Path, who: &str) -> V4Options {
    V4Options::new(addr.to_string(), dir.join(format!("{who}-v4.json"))).with_name(who)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_free_disk_mb_new_uploads_are_refused_over_v3_and_v4() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = test_config(&data);
    // More free space than any disk has: the server is "full" from the start.
    config.min_free_disk_mb = u64::MAX / (1 << 21);
    let srv = start_with(config, Faults::none()).await;
    let source = dir.path().join("notes.txt");
    std::fs::write(&source, pattern(10_000, 1)).unwrap();

    let mut v3 = Raw::keyed(srv.addr, b"v3-user", &keys()).await;
    let v3_reply = v3
        .upload(b"notes.txt", &pattern(10_000, 1), 64 * 1024)
        .await;
    let mut v4 = V4Client::connect(&options(srv.addr, dir.path(), "v4-user"))
        .await
        .unwrap();
    let v4_error = v4.upload(&source, None).await.unwrap_err();
    srv.stop().await;

    assert_eq!(v3_reply.code, SERVER_ERROR, "{v3_reply:?}");
    assert!(
        v4_error.to_string().contains("server storage is full"),
        "{v4_error}"
    );
    assert!(partials(&data).is_empty(), "{:?}", partials(&data));
    assert!(support::all_files(&data).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_during_a_v4_registration_says_storage_full() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(DiskFull::default());
    let srv = start_with(
        test_config(&dir.path().join("data")),
        Faults::new(plan.clone()),
    )
    .await;

    plan.arm(FaultPoint::CatalogRegister);
    let Err(register) = V4Client::connect(&options(srv.addr, dir.path(), "bob")).await else {
        panic!("the registration fails");
    };
    let again = V4Client::connect(&options(srv.addr, dir.path(), "bob")).await;
    srv.stop().await;

    let message = register.to_string();
    assert!(message.contains("server storage is full"), "{message}");
    assert!(!message.contains("could not check your key"), "{message}");
    assert!(again.is_ok(), "space is back: {:?}", again.err());
}

/// `ENOSPC` in the middle of a v4 upload (a write of its temp file fails after the client
/// sent megabytes): the server's fatal `ERROR` reaches the client, which says "server
/// storage is full" — not "connection closed", although its own writes may fail first on
/// the connection the server closed — and that the upload resumes from its checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_in_the_middle_of_a_v4_upload_says_storage_full() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let plan = Arc::new(DiskFull::default());
    let srv = start_with(test_config(&data), Faults::new(plan.clone())).await;
    let source = dir.path().join("big.bin");
    std::fs::write(&source, pattern(48 << 20, 3)).unwrap();
    let mut client = V4Client::connect(&options(srv.addr, dir.path(), "carol"))
        .await
        .unwrap();

    plan.arm(FaultPoint::Write);
    let error = client.upload(&source, None).await.unwrap_err();
    srv.stop().await;

    let message = error.to_string();
    assert!(message.contains("server storage is full"), "{message}");
    assert!(
        message.contains("resumes from the last checkpoint"),
        "{message}"
    );
}
