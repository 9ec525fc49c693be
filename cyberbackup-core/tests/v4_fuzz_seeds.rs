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

/// The input format of the repository targets: per message a `u16` LE length, then it.
fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for message in messages {
        out.extend_from_slice(&u16::try_from(message.len()).unwrap().to_le_bytes());
        out.extend_from_slice(message);
    }
    out
}

fn request(request: RepoRequest) -> Vec<u8> {
    let mut out = Vec::new();
    ClientMessage::Repo(request).encode(&mut out);
    out
}

fn reply(message: ServerMessage) -> Vec<u8> {
    let mut out = Vec::new();
    message.encode(&mut out);
    out
}

/// A client `DATA` message (type 0x02).
fn data(bytes: &[u8]) -> Vec<u8> {
    [&[0x02][..], bytes].concat()
}

/// Seeds of `repo_requests_v4` (messages from a client) and `repo_replies_v4` (the call's
/// choice byte, then messages from a server), each with how many repository effects /
/// finished calls it must produce: proof that the targets get past the handshake.
fn repo_seeds() -> Vec<(&'static str, &'static str, Vec<u8>, usize)> {
    use cyberbackup_core::repo::{PackId, SnapshotId};
    use cyberbackup_core::v4::repository::{GetTarget, PutTarget, RepoPruneReport, SnapshotEntry};
    use cyberbackup_core::v4::wire::ErrorCode;
    let small = || Bytes::from_static(b"object");
    let session = framed(&[
        request(RepoRequest::Open),
        request(RepoRequest::Create {
            config: small(),
            key: small(),
        }),
        request(RepoRequest::Have {
            ids: vec![BlobId([1; 32]), BlobId([2; 32])],
        }),
        request(RepoRequest::Snapshots),
        request(RepoRequest::Usage),
        request(RepoRequest::Damaged { after: None }),
        request(RepoRequest::Prune),
    ]);
    let put_pack = framed(&[
        request(RepoRequest::Put {
            target: PutTarget::Pack(PackId([3; 32])),
            size: 100,
        }),
        data(&[7; 60]),
        data(&[7; 40]),
        request(RepoRequest::PutEnd),
        request(RepoRequest::Get {
            target: GetTarget::Blob(BlobId([4; 32])),
        }),
        request(RepoRequest::Forget {
            id: SnapshotId([5; 32]),
        }),
    ]);
    let put_snapshot = framed(&[
        request(RepoRequest::Put {
            target: PutTarget::Snapshot(SnapshotId([6; 32])),
            size: 10,
        }),
        data(&[1; 10]),
        request(RepoRequest::PutEnd),
        request(RepoRequest::AddKey { key: small() }),
        request(RepoRequest::RemoveKey { key: small() }),
    ]);
    let replies = |choice: u8, messages: &[Vec<u8>]| {
        let mut out = vec![choice];
        out.extend_from_slice(&framed(messages));
        out
    };
    let repo = |r: RepoReply| reply(ServerMessage::Repo(r));
    vec![
        ("repo_requests_v4", "open-create-have-list", session, 7),
        ("repo_requests_v4", "put-pack-get-forget", put_pack, 3),
        ("repo_requests_v4", "put-snapshot-keys", put_snapshot, 3),
        (
            "repo_replies_v4",
            "open-state",
            replies(
                0,
                &[repo(RepoReply::State {
                    config: Some(small()),
                    keys: vec![small()],
                })],
            ),
            1,
        ),
        (
            "repo_replies_v4",
            "create-exists",
            replies(
                1,
                &[reply(ServerMessage::Error {
                    code: ErrorCode::EXISTS,
                    fatal: false,
                    message: "the repository already exists".into(),
                })],
            ),
            1,
        ),
        (
            "repo_replies_v4",
            "have-result",
            replies(3, &[repo(RepoReply::HaveResult { stored: vec![true] })]),
            1,
        ),
        (
            "repo_replies_v4",
            "put-ready-done",
            replies(4, &[repo(RepoReply::PutReady), repo(RepoReply::PutDone)]),
            1,
        ),
        (
            "repo_replies_v4",
            "get-object",
            replies(
                6,
                &[
                    repo(RepoReply::Object { size: 5 }),
                    reply(ServerMessage::Data(Bytes::from_static(b"12345"))),
                    repo(RepoReply::ObjectEnd),
                ],
            ),
            1,
        ),
        (
            "repo_replies_v4",
            "snapshots",
            replies(
                8,
                &[
                    repo(RepoReply::SnapshotEntry(SnapshotEntry {
                        id: SnapshotId([8; 32]),
                        size: 300,
                        stored_unix_secs: 1_700_000_000,
                    })),
                    repo(RepoReply::SnapshotsEnd { count: 1 }),
                ],
            ),
            1,
        ),
        (
            "repo_replies_v4",
            "damaged-page",
            replies(
                10,
                &[repo(RepoReply::Damaged {
                    ids: vec![BlobId([1; 32]), BlobId([2; 32])],
                    more: false,
                })],
            ),
            1,
        ),
        (
            "repo_replies_v4",
            "usage",
            replies(
                11,
                &[repo(RepoReply::Usage(RepoUsage {
                    stored_bytes: 10,
                    soft_quota_bytes: 0,
                    hard_quota_bytes: 0,
                }))],
            ),
            1,
        ),
        (
            "repo_replies_v4",
            "pruned",
            replies(13, &[repo(RepoReply::Pruned(RepoPruneReport::default()))]),
            1,
        ),
    ]
}

#[test]
fn repository_target_seeds_are_current_and_reach_the_repository_paths() {
    let write = std::env::var_os("CB_WRITE_V4_SEEDS").is_some();
    for (target, file, bytes, expected) in repo_seeds() {
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
        let reached = match target {
            "repo_requests_v4" => fuzzing::repo_requests_v4_effects(&bytes),
            _ => fuzzing::repo_replies_v4_results(&bytes),
        };
        assert_eq!(reached, expected, "{target}/{file}");
    }
    // Past the handshake, mutations reach the decoders: a malformed request (HAVE of 0 IDs)
    // ends the session (no effect after it); a malformed reply (a HAVE_RESULT of 9 answers
    // to 1 ID) is fatal to the client session, so the call never ends with a result.
    let bad_request = framed(&[vec![0x13, 0, 0], request(RepoRequest::Open)]);
    assert_eq!(fuzzing::repo_requests_v4_effects(&bad_request), 0);
    let bad_reply = [vec![3u8], framed(&[vec![0x52, 9, 0, 0]])].concat();
    assert_eq!(fuzzing::repo_replies_v4_results(&bad_reply), 0);
}
