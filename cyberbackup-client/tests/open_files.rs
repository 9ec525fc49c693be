//! A backup of many files never holds more than a small window of them open: with the
//! process limited to 128 descriptors, 400 files still back up. (Its own test binary: the
//! limit applies to the whole process.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;

use cyberbackup_client::{Client, ClientOptions, IdentityFile, NoProgress};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use support::{RealServer, write_pattern};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_files_back_up_under_a_128_descriptor_limit() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..400u64)
        .map(|i| {
            let path = dir.path().join(format!("f{i:03}.bin"));
            write_pattern(&path, 1000 + i, i);
            path
        })
        .collect();
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(128),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let options = ClientOptions::new(
        server.server(),
        "many",
        IdentityFile::new(dir.path().join("me.info")),
    );
    let mut client = Client::new(options).unwrap();
    let report = client.backup(&paths, &mut NoProgress).await.unwrap();
    client.close(&mut NoProgress).await.unwrap();
    setrlimit(Resource::Nofile, limit).unwrap();
    assert_eq!(report.files.len(), 400);
    assert!(report.all_verified(), "{report:#?}");
}
