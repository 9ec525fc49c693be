#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Protocol v4 over real sockets on 127.0.0.1: the in-process server and the
//! `cyberbackup_client::v4` library. Restore of 3 versions, isolation of two clients,
//! resume after the connection is cut at 20 random offsets, downgrade protection
//! (a v4-registered client over v3, `legacy_v3 = false`), pinning and enrollment.
//!
//! Default run: about 10 s (debug). The resume test uploads 8 MiB; set
//! `CB_V4_RESUME_MB=100` for the full-size 100 MiB run of the acceptance criterion.

mod support;

use std::path::Path;

use cyberbackup_client::v4::{V4Client, V4ClientError, V4Options, upload_resuming};
use cyberbackup_core::names::ClientId;
use cyberbackup_core::v3::frame::Request;
use cyberbackup_core::v4::V4Error;
use cyberbackup_core::v4::wire::ErrorCode;
use cyberbackup_server::ServerConfig;
use cyberbackup_server::faults::Faults;
use rand_chacha_free::Lcg;
use support::{Raw, cutting_proxy, name, request, start_with, test_config};

/// A tiny deterministic generator (tests only; no crypto use).
mod rand_chacha_free {
    pub(crate) struct Lcg(pub(crate) u64);
    impl Lcg {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 11
        }
    }
}

fn config(data: &Path) -> ServerConfig {
    ServerConfig {
        keep_versions: 5,
        checkpoint_interval_bytes: 256 * 1024,
        ..test_config(data)
    }
}

fn options(addr: std::net::SocketAddr, dir: &Path, who: &str) -> V4Options {
    V4Options::new(addr.to_string(), dir.join(format!("{who}-v4.json"))).with_name(who)
}

fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Lcg(seed);
    (0..len).map(|_| rng.next().to_le_bytes()[0]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_versions_round_trip_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(config(&dir.path().join("data")), Faults::none()).await;
    let versions = [content(300_000, 1), content(0, 2), content(70_000, 3)];
    let source = dir.path().join("notes.txt");

    let mut client = V4Client::connect(&options(server.addr, dir.path(), "alice"))
        .await
        .unwrap();
    assert!(client.registered());
    let mut committed = Vec::new();
    for data in &versions {
        std::fs::write(&source, data).unwrap();
        committed.push(client.upload(&source, None).await.unwrap());
    }
    let listed = client.list().await.unwrap();
    for (i, data) in versions.iter().enumerate() {
        let out = dir.path().join(format!("restored-{i}"));
        let record = client
            .restore("notes.txt", Some(committed[i].version), &out)
            .await
            .unwrap();
        assert_eq!(
            &std::fs::read(&out).unwrap(),
            data,
            "version {}",
            record.version
        );
    }
    let newest = dir.path().join("newest");
    client.restore("notes.txt", None, &newest).await.unwrap();
    client.close().await.unwrap();

    let numbers: Vec<u32> = committed.iter().map(|c| c.version).collect();
    assert_eq!(numbers, [1, 2, 3]);
    let sizes: Vec<(u32, u64)> = listed.iter().map(|r| (r.version, r.size)).collect();
    assert_eq!(sizes, [(1, 300_000), (2, 0), (3, 70_000)]);
    assert_eq!(std::fs::read(&newest).unwrap(), versions[2]);
    // The identity file was saved with the server pin and the id, mode 0600.
    let identity = cyberbackup_client::v4::V4Identity::load(&dir.path().join("alice-v4.json"))
        .unwrap()
        .unwrap();
    assert!(identity.client_id.is_some() && identity.server_fingerprint.is_some());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_see_or_fetch_each_others_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(config(&dir.path().join("data")), Faults::none()).await;
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, b"alice's secret").unwrap();
    let mut alice = V4Client::connect(&options(server.addr, dir.path(), "alice"))
        .await
        .unwrap();
    alice.upload(&secret, None).await.unwrap();

    let mut bob = V4Client::connect(&options(server.addr, dir.path(), "bob"))
        .await
        .unwrap();
    let listed = bob.list().await.unwrap();
    let out = dir.path().join("stolen");
    let fetched = bob.restore("secret.txt", None, &out).await.unwrap_err();
    let bobs = dir.path().join("bob").join("secret.txt");
    std::fs::create_dir_all(bobs.parent().unwrap()).unwrap();
    std::fs::write(&bobs, b"bob's own").unwrap();
    bob.upload(&bobs, None).await.unwrap();
    bob.close().await.unwrap();
    let mine = dir.path().join("mine");
    alice.restore("secret.txt", None, &mine).await.unwrap();
    let alice_list = alice.list().await.unwrap();
    alice.close().await.unwrap();

    assert!(listed.is_empty(), "{listed:?}");
    assert_eq!(fetched.code(), Some(ErrorCode::NOT_FOUND), "{fetched}");
    assert!(!out.exists());
    assert_eq!(std::fs::read(&mine).unwrap(), b"alice's secret");
    assert_eq!(alice_list.len(), 1, "bob's upload is not alice's version");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_at_20_random_offsets_resumes_to_an_identical_file() {
    let megabytes: usize = std::env::var("CB_V4_RESUME_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let size = megabytes * 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(config(&dir.path().join("data")), Faults::none()).await;
    let source = dir.path().join("big.bin");
    let data = content(size, 42);
    std::fs::write(&source, &data).unwrap();
    // Register first so every cut connection is a login.
    V4Client::connect(&options(server.addr, dir.path(), "alice"))
        .await
        .unwrap()
        .close()
        .await
        .unwrap();

    let mut rng = Lcg(7);
    let mut offsets: Vec<usize> = (0..20)
        .map(|_| usize::try_from(rng.next() % size as u64).unwrap())
        .collect();
    offsets.sort_unstable();
    let mut previous = 0;
    for offset in offsets {
        // Handshake and UPLOAD (≈ 200 bytes) plus the file bytes up to this offset.
        let budget = 200 + offset.saturating_sub(previous);
        previous = offset;
        // Until the server saw the previous connection end, the file is BUSY: retry.
        let mut busy = 0;
        loop {
            let proxy = cutting_proxy(server.addr, budget).await;
            let mut cut = options(proxy, dir.path(), "alice");
            cut.response_timeout = std::time::Duration::from_secs(5);
            let result = match V4Client::connect(&cut).await {
                Ok(mut client) => client.upload(&source, None).await.map(|_| ()),
                Err(err) => Err(err),
            };
            let err = result.expect_err("the cut connection cannot finish the upload");
            assert!(err.is_transient(), "{err}");
            if err.code() != Some(ErrorCode::BUSY) {
                break;
            }
            busy += 1;
            assert!(
                busy < 100,
                "the previous connection never released the upload"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let outcome = upload_resuming(&options(server.addr, dir.path(), "alice"), &source, None, 3)
        .await
        .unwrap();
    let out = dir.path().join("restored.bin");
    let mut client = V4Client::connect(&options(server.addr, dir.path(), "alice"))
        .await
        .unwrap();
    client.restore("big.bin", None, &out).await.unwrap();
    let versions = client.list().await.unwrap();
    client.close().await.unwrap();

    assert!(outcome.resumed_from > 0, "the last attempt resumed");
    assert_eq!(outcome.version, 1);
    assert_eq!(versions.len(), 1);
    assert!(
        std::fs::read(&out).unwrap() == data,
        "restored file differs"
    );
    let leftovers = walk_partials(&dir.path().join("data").join("files"));
    assert_eq!(leftovers, 0, "partial files left after commit");
    server.stop().await;
}

fn walk_partials(root: &Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        if entry.path().is_dir() {
            count += walk_partials(&entry.path());
        } else if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".cb-partial-")
        {
            count += 1;
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v4_registered_client_is_refused_over_v3() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(config(&dir.path().join("data")), Faults::none()).await;
    let client = V4Client::connect(&options(server.addr, dir.path(), "alice"))
        .await
        .unwrap();
    let id: ClientId = client.client_id().unwrap();
    client.close().await.unwrap();

    // v3 reconnect with the v4 client's id and name: refused (1606), and the name stays
    // taken for a v3 registration (1601).
    let mut raw = Raw::connect(server.addr).await;
    raw.send(&request(
        id,
        &Request::Reconnect {
            name: name(b"alice"),
        },
    ))
    .await;
    let reconnect = raw.reply().await.unwrap();
    raw.send(&request(
        ClientId::ZERO,
        &Request::Register {
            name: name(b"alice"),
        },
    ))
    .await;
    let register = raw.reply().await.unwrap();

    assert_eq!(reconnect.code, support::RECONNECT_REFUSED);
    assert_eq!(register.code, support::NAME_TAKEN);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_v3_false_refuses_every_v3_connection_but_serves_v4() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(
        ServerConfig {
            legacy_v3: false,
            ..config(&dir.path().join("data"))
        },
        Faults::none(),
    )
    .await;

    let mut raw = Raw::connect(server.addr).await;
    raw.send(&request(
        ClientId::ZERO,
        &Request::Register { name: name(b"old") },
    ))
    .await;
    let reply = raw.reply().await.unwrap();
    let closed = raw.closed_within(std::time::Duration::from_secs(5)).await;
    let v4 = V4Client::connect(&options(server.addr, dir.path(), "new")).await;

    assert_eq!(reply.code, support::SERVER_ERROR);
    assert!(closed, "the server closes after refusing v3");
    assert!(v4.is_ok(), "{:?}", v4.err());
    v4.unwrap().close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_server_key_is_refused_with_both_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_with(config(&dir.path().join("a")), Faults::none()).await;
    let client = V4Client::connect(&options(first.addr, dir.path(), "alice"))
        .await
        .unwrap();
    let pinned = client.server_fingerprint().unwrap();
    client.close().await.unwrap();
    let other = start_with(config(&dir.path().join("b")), Faults::none()).await;

    let err = V4Client::connect(&options(other.addr, dir.path(), "alice"))
        .await
        .unwrap_err();

    let V4ClientError::Session(V4Error::ServerKeyChanged { expected, found }) = &err else {
        panic!("expected a changed-key error, got {err}");
    };
    assert_eq!(*expected, pinned);
    assert_ne!(*found, pinned);
    assert!(err.to_string().contains(&pinned.to_string()));
    assert_eq!(err.exit_code(), 4);
    first.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_tokens_gate_registration_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_with(
        ServerConfig {
            enrollment_required: true,
            ..config(&data)
        },
        Faults::none(),
    )
    .await;
    let catalog = cyberbackup_server::Catalog::open(data.join("defensive.db"))
        .await
        .unwrap();
    let (token, _) =
        cyberbackup_server::v4::enroll(&catalog, std::time::Duration::from_secs(60), None)
            .await
            .unwrap();

    let without = V4Client::connect(&options(server.addr, dir.path(), "a"))
        .await
        .unwrap_err();
    let mut with = options(server.addr, dir.path(), "b");
    with.enroll_token = Some(token.clone());
    let accepted = V4Client::connect(&with).await.unwrap();
    accepted.close().await.unwrap();
    let mut reuse = options(server.addr, dir.path(), "c");
    reuse.enroll_token = Some(token);
    let reused = V4Client::connect(&reuse).await.unwrap_err();

    assert_eq!(
        without.code(),
        Some(ErrorCode::ENROLLMENT_REQUIRED),
        "{without}"
    );
    assert!(without.to_string().contains("cyberbackup-server enroll"));
    assert_eq!(
        reused.code(),
        Some(ErrorCode::ENROLLMENT_INVALID),
        "{reused}"
    );
    catalog.close().await.unwrap();
    server.stop().await;
}
