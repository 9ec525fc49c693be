#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The seeds of the v4 fuzz targets are real sessions: an honest client recorded against the
//! deterministic server of `v4::fuzzing::fuzz_server` (register, upload across checkpoints,
//! list, restore, bye), so the fuzzer starts past the handshake. This test regenerates them
//! and fails when the committed files differ (the protocol changed: run with
//! `CB_WRITE_V4_SEEDS=1` to rewrite them). Runs in well under a second.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cyberbackup_core::names::{FileName, NameField};
use cyberbackup_core::repo::BlobId;
use cyberbackup_core::v4::client::{ClientConfig, ClientSession, UploadSpec};
use cyberbackup_core::v4::fuzzing::{FUZZ_SERVER_PRIVATE_KEY, fuzz_server};
use cyberbackup_core::v4::noise::StaticKeypair;
use cyberbackup_core::v4::repository::{RepoReply, RepoRequest, RepoUsage};
use cyberbackup_core::v4::testing::{MemClient, MemStore, run_pair};
use cyberbackup_core::v4::wire::{
    ClientAuth, ClientMessage, ServerMessage, encode_frame, hello_header, kind,
};
use cyberbackup_core::v4::{CloseReason, fuzzing};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

fn seeds_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

fn recorded_session() -> Vec<u8> {
    let now = Instant::now();
    let mut server = fuzz_server(now);
    let client_keys = StaticKeypair::from_private([0x11; 32]);
    let pin = StaticKeypair::from_private(FUZZ_SERVER_PRIVATE_KEY)
        .public()
        .fingerprint();
    let auth = ClientAuth::Register {
        name: NameField::new(Bytes::from_static(b"fuzz")).unwrap(),
        token: String::new(),
    };
    let mut client = ClientSession::new(
        Arc::new(ClientConfig::default()),
        &client_keys,
        Some(pin),
        auth,
        &mut ChaCha20Rng::seed_from_u64(1),
        now,
    )
    .unwrap();
    let mut files = MemClient::default();
    let name =
        FileName::validate(NameField::new(Bytes::from_static(b"seed.bin")).unwrap()).unwrap();
    let op = client.upload(UploadSpec {
        name: name.clone(),
        size: 3000,
        restart: false,
    });
    files.sources.insert(op, Bytes::from(vec![0x5A; 3000]));
    client.list();
    client.restore(name, None);
    client.finish_when_idle();
    let mut store = MemStore::default();
    let outcome = run_pair(&mut client, &mut files, &mut server, &mut store, now, |b| b);
    assert_eq!(outcome.server_close, Some(CloseReason::Done));
    assert_eq!(store.commits, 1);
    outcome.c2s
}

fn expected_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    // The handshake target reads its chunk size from the first byte.
    let mut session = vec![0xFF];
    session.extend_from_slice(&recorded_session());
    let mut hello = hello_header().to_vec();
    hello.extend_from_slice(&[9; 32]);
    let mut upload = Vec::new();
    ClientMessage::Upload {
        name: FileName::validate(NameField::new(Bytes::from_static(b"a")).unwrap()).unwrap(),
        size: 10,
        restart: true,
    }
    .encode(&mut upload);
    let mut error = Vec::new();
    ServerMessage::Error {
        code: cyberbackup_core::v4::wire::ErrorCode::NOT_FOUND,
        fatal: false,
        message: "no such file".into(),
    }
    .encode(&mut error);
    let mut damaged = Vec::new();
    ClientMessage::Repo(RepoRequest::Damaged {
        after: Some(BlobId([0x42; 32])),
    })
    .encode(&mut damaged);
    let mut damaged_page = Vec::new();
    ServerMessage::Repo(RepoReply::Damaged {
        ids: vec![BlobId([1; 32]), BlobId([2; 32])],
        more: true,
    })
    .encode(&mut damaged_page);
    let mut usage = Vec::new();
    ServerMessage::Repo(RepoReply::Usage(RepoUsage {
        stored_bytes: 3 << 30,
        soft_quota_bytes: 2 << 30,
        hard_quota_bytes: 4 << 30,
    }))
    .encode(&mut usage);
    let mut frames = encode_frame(kind::HANDSHAKE, &[1; 48]).to_vec();
    frames.extend_from_slice(&encode_frame(kind::TRANSPORT, &[2; 40]));
    frames.extend_from_slice(&encode_frame(kind::NOTICE, b"busy"));
    vec![
        ("handshake_v4", "recorded-session", session),
        ("decode_v4", "hello", hello),
        ("decode_v4", "upload-message", upload),
        ("decode_v4", "error-message", error),
        ("decode_v4", "frames", frames),
        ("decode_v4", "damaged-message", damaged),
        ("decode_v4", "damaged-result-message", damaged_page),
        ("decode_v4", "usage-result-message", usage),
    ]
}

#[test]
fn committed_v4_seeds_match_a_fresh_recording_and_replay() {
    let write = std::env::var_os("CB_WRITE_V4_SEEDS").is_some();
    for (target, file, bytes) in expected_seeds() {
        let path = seeds_dir(target).join(file);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with CB_WRITE_V4_SEEDS=1)", path.display()));
        assert!(
            committed == bytes,
            "{} is stale: run with CB_WRITE_V4_SEEDS=1",
            path.display()
        );
        fuzzing::decode_v4(&bytes);
        fuzzing::handshake_v4(&bytes);
    }
}
