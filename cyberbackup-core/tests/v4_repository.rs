#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The repository operations of v4 (`docs/protocol-v4.md` §9a), client ⇄ server in memory
//! (`v4::testing::MemStore` keeps the keyless checks the real server makes): create and open
//! a repository, ask which blobs are stored, put packs and commit snapshots, read them back,
//! list and forget; refusals keep the connection; repositories are confined to their
//! client. Malformed and out-of-order repository messages are rows of `v4_errors.rs`.

mod repo_fixture;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cyberbackup_core::names::NameField;
use cyberbackup_core::repo::{BlobId, BlobKind, RepoConfig};
use cyberbackup_core::v4::CloseReason;
use cyberbackup_core::v4::client::{
    ClientConfig, ClientEvent, ClientSession, OpFailure, OpId, RepoCall, RepoResult,
};
use cyberbackup_core::v4::noise::StaticKeypair;
use cyberbackup_core::v4::repository::{GetTarget, PutTarget};
use cyberbackup_core::v4::server::{ServerConfig, ServerEvent, ServerSession};
use cyberbackup_core::v4::testing::{MemClient, MemStore, run_pair};
use cyberbackup_core::v4::wire::{ClientAuth, ErrorCode};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use repo_fixture::fixture;

struct Conn {
    client: ClientSession,
    files: MemClient,
    server: ServerSession<ChaCha20Rng>,
}

fn conn(server_keys: &StaticKeypair, who: u8) -> Conn {
    let now = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(who));
    let auth = ClientAuth::Register {
        name: NameField::new(Bytes::from(format!("client-{who}"))).unwrap(),
        token: String::new(),
    };
    let client = ClientSession::new(
        Arc::new(ClientConfig::default()),
        &StaticKeypair::from_private([who; 32]),
        None,
        auth,
        &mut rng,
        now,
    )
    .unwrap();
    let server = ServerSession::new(
        Arc::new(ServerConfig::default()),
        server_keys.clone(),
        ChaCha20Rng::seed_from_u64(u64::from(who) + 100),
        now,
    );
    Conn {
        client,
        files: MemClient::default(),
        server,
    }
}

impl Conn {
    fn run(&mut self, store: &mut MemStore) -> (Option<CloseReason>, Vec<ServerEvent>) {
        self.client.finish_when_idle();
        let outcome = run_pair(
            &mut self.client,
            &mut self.files,
            &mut self.server,
            store,
            Instant::now(),
            |bytes| bytes,
        );
        (outcome.client_close, outcome.server_events)
    }

    fn result(&self, op: OpId) -> Result<RepoResult, ErrorCode> {
        self.files
            .events
            .iter()
            .find_map(|event| match event {
                ClientEvent::RepoDone { op: done, result } if *done == op => {
                    Some(Ok(result.clone()))
                }
                ClientEvent::OpFailed {
                    op: failed,
                    failure: OpFailure::Refused { code, .. },
                    ..
                } if *failed == op => Some(Err(*code)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no result for {op:?}: {:?}", self.files.events))
    }
}

#[test]
fn create_put_commit_list_read_and_forget_round_trip() {
    let server_keys = StaticKeypair::from_private([9; 32]);
    let mut store = MemStore::default();
    let f = fixture();
    let mut c = conn(&server_keys, 1);
    let empty = c.client.repository(RepoCall::Open);
    let before_create = c.client.repository(RepoCall::Have(f.blob_ids.clone()));
    let create = c.client.repository(RepoCall::Create {
        config: f.config.clone(),
        key: Bytes::from_static(b"key object"),
    });
    let again = c.client.repository(RepoCall::Create {
        config: f.config.clone(),
        key: Bytes::from_static(b"key object"),
    });
    let add = c.client.repository(RepoCall::AddKey {
        key: Bytes::from_static(b"second key"),
    });
    let opened = c.client.repository(RepoCall::Open);
    let lacking = c.client.repository(RepoCall::Have(f.blob_ids.clone()));
    let early_commit = c.client.repository(RepoCall::Put {
        target: PutTarget::Snapshot(f.snapshot.0),
        object: f.snapshot.1.clone(),
    });
    let put_data = c.client.repository(RepoCall::Put {
        target: PutTarget::Pack(f.data_pack.0),
        object: f.data_pack.1.clone(),
    });
    let half_commit = c.client.repository(RepoCall::Put {
        target: PutTarget::Snapshot(f.snapshot.0),
        object: f.snapshot.1.clone(),
    });
    let put_refs = c.client.repository(RepoCall::Put {
        target: PutTarget::Pack(f.ref_pack.0),
        object: f.ref_pack.1.clone(),
    });
    let put_again = c.client.repository(RepoCall::Put {
        target: PutTarget::Pack(f.ref_pack.0),
        object: f.ref_pack.1.clone(),
    });
    let commit = c.client.repository(RepoCall::Put {
        target: PutTarget::Snapshot(f.snapshot.0),
        object: f.snapshot.1.clone(),
    });
    let have = c.client.repository(RepoCall::Have(f.blob_ids.clone()));
    let listed = c.client.repository(RepoCall::Snapshots);
    let blob = c
        .client
        .repository(RepoCall::Get(GetTarget::Blob(f.blob_ids[1])));
    let snapshot = c
        .client
        .repository(RepoCall::Get(GetTarget::Snapshot(f.snapshot.0)));
    let forget = c.client.repository(RepoCall::Forget(f.snapshot.0));
    let forgotten = c.client.repository(RepoCall::Snapshots);
    let (close, events) = c.run(&mut store);
    assert_eq!(close, Some(CloseReason::Done), "{:?}", c.files.events);

    let no_repo = RepoResult::State {
        config: None,
        keys: vec![],
    };
    assert_eq!(c.result(empty), Ok(no_repo));
    assert_eq!(c.result(before_create), Err(ErrorCode::NO_REPOSITORY));
    assert_eq!(c.result(create), Ok(RepoResult::Done));
    assert_eq!(c.result(again), Err(ErrorCode::EXISTS));
    assert_eq!(c.result(add), Ok(RepoResult::Done));
    let state = RepoResult::State {
        config: Some(f.config.clone()),
        keys: vec![
            Bytes::from_static(b"key object"),
            Bytes::from_static(b"second key"),
        ],
    };
    assert_eq!(c.result(opened), Ok(state));
    assert_eq!(c.result(lacking), Ok(RepoResult::Have(vec![false, false])));
    assert_eq!(c.result(early_commit), Err(ErrorCode::MISSING_BLOBS));
    assert_eq!(c.result(put_data), Ok(RepoResult::Stored));
    assert_eq!(
        c.result(half_commit),
        Err(ErrorCode::MISSING_BLOBS),
        "the reference chunk is not stored yet"
    );
    assert_eq!(c.result(put_refs), Ok(RepoResult::Stored));
    assert_eq!(c.result(put_again), Ok(RepoResult::Stored));
    assert_eq!(c.result(commit), Ok(RepoResult::Stored));
    assert_eq!(c.result(have), Ok(RepoResult::Have(vec![true, true])));
    let Ok(RepoResult::Snapshots(entries)) = c.result(listed) else {
        panic!("no listing");
    };
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, f.snapshot.0);
    assert_eq!(entries[0].size, f.snapshot.1.len() as u64);
    let Ok(RepoResult::Object(sealed)) = c.result(blob) else {
        panic!("no blob");
    };
    let mut opener =
        cyberbackup_core::repo::BlobOpener::new(&f.keys, &RepoConfig::new([1; 16])).unwrap();
    let plain = opener
        .open(BlobKind::Data, &f.blob_ids[1], &sealed)
        .unwrap();
    assert_eq!(&plain[..], b"second secret content");
    assert_eq!(
        c.result(snapshot),
        Ok(RepoResult::Object(f.snapshot.1.clone()))
    );
    assert_eq!(c.result(forget), Ok(RepoResult::Done));
    assert_eq!(c.result(forgotten), Ok(RepoResult::Snapshots(vec![])));
    let stored = events
        .iter()
        .filter(|e| matches!(e, ServerEvent::ObjectStored { .. }))
        .count();
    assert_eq!(stored, 4, "two packs, the repeated pack, one snapshot");
}

#[test]
fn a_damaged_pack_is_refused_and_the_connection_goes_on() {
    let server_keys = StaticKeypair::from_private([9; 32]);
    let mut store = MemStore::default();
    let f = fixture();
    let mut c = conn(&server_keys, 1);
    c.client.repository(RepoCall::Create {
        config: f.config.clone(),
        key: Bytes::from_static(b"k"),
    });
    let mut damaged = f.data_pack.1.to_vec();
    damaged[3] ^= 1;
    let bad = c.client.repository(RepoCall::Put {
        target: PutTarget::Pack(f.data_pack.0),
        object: damaged.into(),
    });
    let have = c.client.repository(RepoCall::Have(f.blob_ids));
    let (close, _) = c.run(&mut store);
    assert_eq!(close, Some(CloseReason::Done));
    assert_eq!(c.result(bad), Err(ErrorCode::HASH_MISMATCH));
    assert_eq!(c.result(have), Ok(RepoResult::Have(vec![false, false])));
    assert!(store.repos.values().all(|repo| repo.packs.is_empty()));
}

#[test]
fn a_client_reaches_only_its_own_repository() {
    let server_keys = StaticKeypair::from_private([9; 32]);
    let mut store = MemStore::default();
    let f = fixture();
    let mut alice = conn(&server_keys, 1);
    alice.client.repository(RepoCall::Create {
        config: f.config.clone(),
        key: Bytes::from_static(b"k"),
    });
    for (id, pack) in [&f.data_pack, &f.ref_pack] {
        alice.client.repository(RepoCall::Put {
            target: PutTarget::Pack(*id),
            object: pack.clone(),
        });
    }
    alice.client.repository(RepoCall::Put {
        target: PutTarget::Snapshot(f.snapshot.0),
        object: f.snapshot.1.clone(),
    });
    assert_eq!(alice.run(&mut store).0, Some(CloseReason::Done));

    let mut bob = conn(&server_keys, 2);
    let no_repo = bob.client.repository(RepoCall::Open);
    bob.client.repository(RepoCall::Create {
        config: f.config.clone(),
        key: Bytes::from_static(b"k"),
    });
    let have = bob.client.repository(RepoCall::Have(f.blob_ids.clone()));
    let blob = bob
        .client
        .repository(RepoCall::Get(GetTarget::Blob(f.blob_ids[0])));
    let snapshot = bob
        .client
        .repository(RepoCall::Get(GetTarget::Snapshot(f.snapshot.0)));
    let listed = bob.client.repository(RepoCall::Snapshots);
    let forget = bob.client.repository(RepoCall::Forget(f.snapshot.0));
    assert_eq!(bob.run(&mut store).0, Some(CloseReason::Done));
    assert!(matches!(
        bob.result(no_repo),
        Ok(RepoResult::State { config: None, .. })
    ));
    assert_eq!(bob.result(have), Ok(RepoResult::Have(vec![false, false])));
    assert_eq!(bob.result(blob), Err(ErrorCode::NOT_FOUND));
    assert_eq!(bob.result(snapshot), Err(ErrorCode::NOT_FOUND));
    assert_eq!(bob.result(listed), Ok(RepoResult::Snapshots(vec![])));
    assert_eq!(bob.result(forget), Err(ErrorCode::NOT_FOUND));
    assert_eq!(store.repos.len(), 2);
    assert_eq!(
        store
            .repos
            .values()
            .map(|r| r.snapshots.len())
            .sum::<usize>(),
        1
    );
}

/// `GET`s queued behind a `GET` are sent at once, up to `MAX_GETS_IN_FLIGHT` in flight, and
/// answered in order — a refused one (`NOT_FOUND`) in the middle included, the rest going on.
#[test]
fn queued_gets_are_sent_ahead_and_answered_in_order() {
    use cyberbackup_core::v4::Output;
    use cyberbackup_core::v4::client::MAX_GETS_IN_FLIGHT;

    let server_keys = StaticKeypair::from_private([9; 32]);
    let mut store = MemStore::default();
    let f = fixture();
    let mut c = conn(&server_keys, 4);
    c.client.repository(RepoCall::Create {
        config: f.config.clone(),
        key: Bytes::from_static(b"key object"),
    });
    for (id, bytes) in [&f.data_pack, &f.ref_pack] {
        c.client.repository(RepoCall::Put {
            target: PutTarget::Pack(*id),
            object: bytes.clone(),
        });
    }
    let now = Instant::now();
    run_pair(
        &mut c.client,
        &mut c.files,
        &mut c.server,
        &mut store,
        now,
        |bytes| bytes,
    );

    let missing = BlobId([0xEE; 32]);
    let targets: Vec<GetTarget> = (0..MAX_GETS_IN_FLIGHT + 4)
        .map(|i| match i {
            3 => GetTarget::Blob(missing),
            _ => GetTarget::Blob(f.blob_ids[i % 2]),
        })
        .collect();
    let ops: Vec<OpId> = targets
        .iter()
        .map(|target| c.client.repository(RepoCall::Get(*target)))
        .collect();
    // Before any answer: one frame per GET in flight went out.
    let mut sent = Vec::new();
    while let Some(output) = c.client.poll_output() {
        match output {
            Output::Transmit(bytes) => sent.push(bytes),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sent.len(), MAX_GETS_IN_FLIGHT, "GETs sent ahead");

    let mut pending = Some(sent.concat());
    c.client.finish_when_idle();
    let outcome = run_pair(
        &mut c.client,
        &mut c.files,
        &mut c.server,
        &mut store,
        now,
        |bytes| match pending.take() {
            Some(mut first) => {
                first.extend_from_slice(&bytes);
                first
            }
            None => bytes,
        },
    );
    assert_eq!(
        outcome.client_close,
        Some(CloseReason::Done),
        "{:?}",
        c.files.events
    );

    let mut opener =
        cyberbackup_core::repo::BlobOpener::new(&f.keys, &RepoConfig::new([1; 16])).unwrap();
    for (op, target) in ops.iter().zip(&targets) {
        match (target, c.result(*op)) {
            (GetTarget::Blob(id), Err(code)) if *id == missing => {
                assert_eq!(code, ErrorCode::NOT_FOUND);
            }
            (GetTarget::Blob(id), Ok(RepoResult::Object(sealed))) => {
                opener.open(BlobKind::Data, id, &sealed).unwrap();
            }
            (target, other) => panic!("{target:?}: {other:?}"),
        }
    }
    // The results arrived in the order the operations were queued.
    let finished: Vec<OpId> = c
        .files
        .events
        .iter()
        .filter_map(|event| match event {
            ClientEvent::RepoDone { op, .. } | ClientEvent::OpFailed { op, .. } => Some(*op),
            _ => None,
        })
        .filter(|op| ops.contains(op))
        .collect();
    assert_eq!(finished, ops);
}
