#![allow(clippy::unwrap_used, clippy::expect_used)]
//! v4 client ⇄ server in memory (`v4::testing`): registration, pinning, relays, tampering
//! (every bit of a recorded session flipped, replayed / reordered / dropped frames), resume
//! after cuts at random offsets, versions, restore and isolation. Runs in about 2 s.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cyberbackup_core::names::{FileName, NameField};
use cyberbackup_core::v4::client::{
    ClientConfig, ClientEvent, ClientSession, OpFailure, OpId, UploadSpec,
};
use cyberbackup_core::v4::noise::{Fingerprint, StaticKeypair};
use cyberbackup_core::v4::server::{ServerConfig, ServerEvent, ServerSession};
use cyberbackup_core::v4::testing::{MemClient, MemStore, PairOutcome, drive_server, run_pair};
use cyberbackup_core::v4::wire::{ClientAuth, ErrorCode, FRAME_HEADER_LEN, HELLO_HEADER_LEN};
use cyberbackup_core::v4::{CloseReason, V4Error};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

const CHECKPOINT: u64 = 4096;

fn server_config() -> Arc<ServerConfig> {
    Arc::new(ServerConfig {
        checkpoint_interval: CHECKPOINT,
        restore_read_len: 3000,
        ..ServerConfig::default()
    })
}

fn client_config() -> Arc<ClientConfig> {
    Arc::new(ClientConfig {
        read_chunk_len: 10_000,
        ..ClientConfig::default()
    })
}

fn keys(seed: u8) -> StaticKeypair {
    StaticKeypair::from_private([seed; 32])
}

fn name(text: &str) -> FileName {
    FileName::validate(NameField::new(Bytes::copy_from_slice(text.as_bytes())).unwrap()).unwrap()
}

fn register(text: &str) -> ClientAuth {
    ClientAuth::Register {
        name: NameField::new(Bytes::copy_from_slice(text.as_bytes())).unwrap(),
        token: String::new(),
    }
}

fn content(len: usize, seed: u64) -> Bytes {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    Bytes::from(data)
}

/// One connection: the client is built with `auth` and `pin`, `ops` queues its work.
struct Conn {
    client: ClientSession,
    files: MemClient,
    server: ServerSession<ChaCha20Rng>,
}

fn conn(
    server_keys: &StaticKeypair,
    client_keys: &StaticKeypair,
    pin: Option<Fingerprint>,
    auth: ClientAuth,
    seed: u64,
) -> Conn {
    let now = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let client =
        ClientSession::new(client_config(), client_keys, pin, auth, &mut rng, now).unwrap();
    let server = ServerSession::new(
        server_config(),
        server_keys.clone(),
        ChaCha20Rng::seed_from_u64(seed + 1000),
        now,
    );
    Conn {
        client,
        files: MemClient::default(),
        server,
    }
}

impl Conn {
    fn upload(&mut self, file: &str, data: &Bytes, restart: bool) -> OpId {
        let op = self.client.upload(UploadSpec {
            name: name(file),
            size: data.len() as u64,
            restart,
        });
        self.files.sources.insert(op, data.clone());
        op
    }

    fn run(&mut self, store: &mut MemStore) -> PairOutcome {
        self.run_tampered(store, |bytes| bytes)
    }

    fn run_tampered(
        &mut self,
        store: &mut MemStore,
        tamper: impl FnMut(Vec<u8>) -> Vec<u8>,
    ) -> PairOutcome {
        self.client.finish_when_idle();
        run_pair(
            &mut self.client,
            &mut self.files,
            &mut self.server,
            store,
            Instant::now(),
            tamper,
        )
    }

    fn committed(&self) -> Vec<(OpId, u32, u64)> {
        self.files
            .events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::UploadCommitted {
                    op,
                    version,
                    resumed_from,
                    ..
                } => Some((*op, *version, *resumed_from)),
                _ => None,
            })
            .collect()
    }

    fn failures(&self) -> Vec<(OpId, OpFailure, u64)> {
        self.files
            .events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::OpFailed {
                    op,
                    failure,
                    resumed_from,
                } => Some((*op, failure.clone(), *resumed_from)),
                _ => None,
            })
            .collect()
    }
}

fn refused_code(failure: &OpFailure) -> Option<ErrorCode> {
    match failure {
        OpFailure::Refused { code, .. } => Some(*code),
        _ => None,
    }
}

/// Registers `client` on `store` (TOFU) and returns the server pin it learned.
fn registered(
    store: &mut MemStore,
    server: &StaticKeypair,
    client: &StaticKeypair,
    who: &str,
) -> Fingerprint {
    let mut c = conn(server, client, None, register(who), 1);
    let outcome = c.run(store);
    assert_eq!(outcome.client_close, Some(CloseReason::Done), "{outcome:?}");
    c.files.trusted.unwrap().fingerprint()
}

#[test]
fn register_upload_versions_list_and_restore_round_trip() {
    let (server, alice) = (keys(1), keys(2));
    let mut store = MemStore::default();
    let versions = [content(10_000, 1), content(0, 2), content(3 * 4096, 3)];

    let mut c = conn(&server, &alice, None, register("alice"), 7);
    for data in &versions {
        c.upload("notes.txt", data, false);
    }
    let list = c.client.list();
    let restores: Vec<OpId> = (1..=3)
        .map(|v| c.client.restore(name("notes.txt"), Some(v)))
        .collect();
    let newest = c.client.restore(name("notes.txt"), None);
    let outcome = c.run(&mut store);

    assert_eq!(outcome.client_close, Some(CloseReason::Done), "{outcome:?}");
    assert_eq!(outcome.server_close, Some(CloseReason::Done));
    assert_eq!(
        c.files.trusted,
        Some(server.public()),
        "TOFU saved the server key"
    );
    let committed: Vec<u32> = c.committed().iter().map(|(_, v, _)| *v).collect();
    assert_eq!(committed, [1, 2, 3]);
    let listed = c
        .files
        .events
        .iter()
        .find_map(|e| match e {
            ClientEvent::Listed { op, entries } if *op == list => Some(entries.clone()),
            _ => None,
        })
        .unwrap();
    let sizes: Vec<(u32, u64)> = listed.iter().map(|r| (r.version, r.size)).collect();
    assert_eq!(sizes, [(1, 10_000), (2, 0), (3, 3 * CHECKPOINT)]);
    for (op, data) in restores.iter().zip(&versions) {
        assert_eq!(c.files.restored.get(op).unwrap(), &data.to_vec());
    }
    assert_eq!(
        c.files.restored.get(&newest).unwrap(),
        &versions[2].to_vec()
    );
    // Checkpoints at every interval boundary strictly inside each file.
    assert_eq!(store.checkpoints, [4096, 8192, 4096, 8192]);
}

#[test]
fn changed_server_key_is_a_hard_error_naming_both_fingerprints() {
    let (server, impostor, alice) = (keys(1), keys(9), keys(2));
    let mut store = MemStore::default();
    let pin = registered(&mut store, &server, &alice, "alice");
    let mut other_store = MemStore::default();

    let mut c = conn(&impostor, &alice, Some(pin), ClientAuth::Login, 3);
    let outcome = c.run(&mut other_store);

    let Some(CloseReason::Error(V4Error::ServerKeyChanged { expected, found })) =
        outcome.client_close.clone()
    else {
        panic!("expected ServerKeyChanged, got {outcome:?}");
    };
    assert_eq!(expected, server.public().fingerprint());
    assert_eq!(found, impostor.public().fingerprint());
    let message = V4Error::ServerKeyChanged { expected, found }.to_string();
    assert!(message.contains(&expected.to_string()) && message.contains(&found.to_string()));
    // The client stopped after the hello: message 3 (its identity) was never sent.
    assert_eq!(outcome.c2s.len(), HELLO_HEADER_LEN + 32);
    assert!(other_store.clients.is_empty());
}

#[test]
fn relay_swapping_the_ephemeral_key_breaks_the_handshake() {
    let (server, alice) = (keys(1), keys(2));
    let mut store = MemStore::default();
    let pin = registered(&mut store, &server, &alice, "alice");
    let relay_ephemeral = keys(77).public();

    let mut c = conn(&server, &alice, Some(pin), ClientAuth::Login, 4);
    c.upload("a", &content(100, 1), false);
    let mut first = true;
    let outcome = c.run_tampered(&mut store, |mut bytes| {
        if first && bytes.len() >= HELLO_HEADER_LEN + 32 {
            bytes[HELLO_HEADER_LEN..HELLO_HEADER_LEN + 32].copy_from_slice(&relay_ephemeral.0);
            first = false;
        }
        bytes
    });

    assert!(
        matches!(
            outcome.client_close,
            Some(CloseReason::Error(V4Error::Handshake { .. }))
        ),
        "{outcome:?}"
    );
    assert_eq!(store.commits, 0);
    assert!(
        !outcome
            .server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::Authenticated { .. }))
    );
}

#[test]
fn a_relay_terminating_noise_cannot_log_in_as_the_victim() {
    // The relay has its own static key: a pinned client refuses it (test above); towards
    // the server it can only log in with its own key, which is not registered.
    let (server, alice, relay) = (keys(1), keys(2), keys(66));
    let mut store = MemStore::default();
    let pin = registered(&mut store, &server, &alice, "alice");

    let mut c = conn(&server, &relay, Some(pin), ClientAuth::Login, 5);
    c.client.list();
    let outcome = c.run(&mut store);

    let Some(CloseReason::Error(V4Error::Refused { code, .. })) = outcome.client_close else {
        panic!("{outcome:?}");
    };
    assert_eq!(code, ErrorCode::UNKNOWN_CLIENT);
    assert_eq!(store.clients.len(), 1);
}

#[test]
fn enrollment_tokens_are_required_and_single_use() {
    let server = keys(1);
    let mut store = MemStore::default();
    store.enrollment_required = true;
    store.tokens = vec!["t0ken".into()];
    let with = |who: &str, token: &str| ClientAuth::Register {
        name: NameField::new(Bytes::copy_from_slice(who.as_bytes())).unwrap(),
        token: token.into(),
    };

    let mut none = conn(&server, &keys(2), None, with("a", ""), 1);
    let refused = none.run(&mut store);
    let mut good = conn(&server, &keys(3), None, with("b", "t0ken"), 2);
    let accepted = good.run(&mut store);
    let mut reuse = conn(&server, &keys(4), None, with("c", "t0ken"), 3);
    let reused = reuse.run(&mut store);

    assert!(
        matches!(refused.client_close, Some(CloseReason::Error(V4Error::Refused { code, .. })) if code == ErrorCode::ENROLLMENT_INVALID)
    );
    assert_eq!(accepted.client_close, Some(CloseReason::Done));
    assert!(
        matches!(reused.client_close, Some(CloseReason::Error(V4Error::Refused { code, .. })) if code == ErrorCode::ENROLLMENT_INVALID)
    );
    assert_eq!(store.clients.len(), 1);
}

#[test]
fn clients_see_and_fetch_only_their_own_files() {
    let (server, alice, bob) = (keys(1), keys(2), keys(3));
    let mut store = MemStore::default();
    let alice_pin = registered(&mut store, &server, &alice, "alice");
    registered(&mut store, &server, &bob, "bob");
    let mut a = conn(&server, &alice, Some(alice_pin), ClientAuth::Login, 10);
    a.upload("secret.txt", &content(500, 9), false);
    assert_eq!(a.run(&mut store).client_close, Some(CloseReason::Done));

    let mut b = conn(&server, &bob, Some(alice_pin), ClientAuth::Login, 11);
    let list = b.client.list();
    let fetch = b.client.restore(name("secret.txt"), None);
    let outcome = b.run(&mut store);

    assert_eq!(outcome.client_close, Some(CloseReason::Done));
    let entries = b.files.events.iter().find_map(|e| match e {
        ClientEvent::Listed { op, entries } if *op == list => Some(entries.len()),
        _ => None,
    });
    assert_eq!(entries, Some(0));
    let failures = b.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, fetch);
    assert_eq!(refused_code(&failures[0].1), Some(ErrorCode::NOT_FOUND));
    assert!(b.files.restored.is_empty());
}

/// An honest session's client bytes, with the offsets where the hello, each frame and the
/// `UPLOAD_END` frame end. The server is deterministic (seeded), so the bytes replay.
struct Recording {
    c2s: Vec<u8>,
    frame_ends: Vec<usize>,
    store: MemStore,
}

const RECORD_SEED: u64 = 42;

fn record(data: &Bytes) -> Recording {
    record_with(data, RECORD_SEED)
}

fn record_with(data: &Bytes, seed: u64) -> Recording {
    let (server, alice) = (keys(1), keys(2));
    let mut store = MemStore::default();
    let pin = registered(&mut store, &server, &alice, "alice");
    let mut c = conn(&server, &alice, Some(pin), ClientAuth::Login, seed);
    c.upload("f.bin", data, false);
    let outcome = c.run(&mut store);
    assert_eq!(outcome.server_close, Some(CloseReason::Done));
    assert_eq!(store.commits, 1);
    let mut frame_ends = vec![HELLO_HEADER_LEN + 32];
    let mut at = HELLO_HEADER_LEN + 32;
    while at < outcome.c2s.len() {
        let len = usize::from(u16::from_le_bytes([
            outcome.c2s[at + 2],
            outcome.c2s[at + 3],
        ]));
        at += FRAME_HEADER_LEN + len;
        frame_ends.push(at);
    }
    assert_eq!(at, outcome.c2s.len());
    // Before the upload: a fresh store with alice registered, for replays.
    let mut fresh = MemStore::default();
    fresh.clients = store.clients.clone();
    Recording {
        c2s: outcome.c2s,
        frame_ends,
        store: fresh,
    }
}

/// Feeds `c2s` to a fresh server with the recording's seed; returns (close, commits).
fn replay(recording: &Recording, c2s: &[u8]) -> (Option<CloseReason>, usize) {
    let now = Instant::now();
    let mut server = ServerSession::new(
        server_config(),
        keys(1),
        ChaCha20Rng::seed_from_u64(RECORD_SEED + 1000),
        now,
    );
    let mut store = MemStore::default();
    store.clients = recording.store.clients.clone();
    let mut events = Vec::new();
    let mut buf = BytesMut::from(c2s);
    let step = drive_server(&mut server, &mut store, &mut buf, &mut events, now);
    let close = match step.close {
        Some(close) => Some(close),
        None => {
            server.handle_eof(now);
            drive_server(&mut server, &mut store, &mut buf, &mut events, now).close
        }
    };
    (close, store.commits)
}

#[test]
fn the_recorded_session_replays_and_commits() {
    let recording = record(&content(9_000, 5));
    let (close, commits) = replay(&recording, &recording.c2s);
    assert_eq!(close, Some(CloseReason::Done));
    assert_eq!(commits, 1);
}

#[test]
fn a_flipped_bit_anywhere_is_rejected_and_nothing_is_committed_before_it() {
    let recording = record(&content(9_000, 5));
    // frames: hello, msg3, UPLOAD, DATA, UPLOAD_END, BYE → UPLOAD_END ends at [-2].
    let upload_end = recording.frame_ends[recording.frame_ends.len() - 2];
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    for offset in 0..recording.c2s.len() {
        let mut tampered = recording.c2s.clone();
        tampered[offset] ^= 1 << (rng.next_u32() % 8);

        let (close, commits) = replay(&recording, &tampered);

        assert_ne!(
            close,
            Some(CloseReason::Done),
            "flip at {offset} was accepted"
        );
        if offset < upload_end {
            assert_eq!(commits, 0, "flip at {offset} still committed the file");
        }
    }
}

fn frames(recording: &Recording) -> Vec<Vec<u8>> {
    let mut start = 0;
    recording
        .frame_ends
        .iter()
        .map(|&end| {
            let frame = recording.c2s[start..end].to_vec();
            start = end;
            frame
        })
        .collect()
}

#[test]
fn replayed_reordered_and_dropped_frames_are_rejected() {
    // Frames: 0 hello, 1 msg3, 2 UPLOAD, 3..n-2 DATA, n-2 UPLOAD_END, n-1 BYE.
    let recording = record(&content(30_000, 6));
    let parts = frames(&recording);
    let n = parts.len();
    assert!(n >= 8, "at least 3 DATA frames: {n}");
    let join =
        |order: &[usize]| -> Vec<u8> { order.iter().flat_map(|&i| parts[i].clone()).collect() };
    let honest: Vec<usize> = (0..n).collect();
    let with = |edit: &dyn Fn(&mut Vec<usize>)| {
        let mut order = honest.clone();
        edit(&mut order);
        order
    };
    let cases: [(&str, Vec<usize>); 6] = [
        ("replayed DATA", with(&|o| o.insert(4, 3))),
        ("replayed UPLOAD", with(&|o| o.insert(3, 2))),
        ("reordered DATA", with(&|o| o.swap(3, 4))),
        (
            "dropped DATA",
            with(&|o| {
                o.remove(4);
            }),
        ),
        ("replayed handshake", with(&|o| o.insert(2, 1))),
        (
            "UPLOAD_END replayed in place of the last DATA",
            with(&|o| o[n - 3] = n - 2),
        ),
    ];
    for (what, order) in cases {
        let (close, commits) = replay(&recording, &join(&order));
        assert!(
            matches!(close, Some(CloseReason::Error(_))),
            "{what} ({order:?}): {close:?}"
        );
        assert_eq!(commits, 0, "{what} committed");
    }
    // The same frame of another session (same static keys and content, other ephemeral
    // keys) does not fit either.
    let other = record_with(&content(30_000, 6), RECORD_SEED + 1);
    let mut mixed = parts.clone();
    mixed[4] = frames(&other)[4].clone();
    let (close, commits) = replay(&recording, &mixed.concat());
    assert!(
        matches!(close, Some(CloseReason::Error(V4Error::Decrypt))),
        "{close:?}"
    );
    assert_eq!(commits, 0);
}

#[test]
fn uploads_cut_at_random_offsets_resume_to_identical_files() {
    let (server, alice) = (keys(1), keys(2));
    let mut store = MemStore::default();
    let pin = registered(&mut store, &server, &alice, "alice");
    let data = content(50_000, 11);
    let mut rng = ChaCha20Rng::seed_from_u64(2024);
    let mut seed = 100;
    let mut cuts = 0;
    while cuts < 20 {
        // Cut the client's byte stream after `cut` bytes, then reconnect and resume.
        let cut = usize::try_from(rng.next_u64() % 55_000).unwrap() + 1;
        let crash = rng.next_u32() % 2 == 0;
        seed += 1;
        let mut c = conn(&server, &alice, Some(pin), ClientAuth::Login, seed);
        c.upload("big.bin", &data, false);
        let mut sent = 0;
        let outcome = c.run_tampered(&mut store, |mut bytes| {
            let keep = cut.saturating_sub(sent).min(bytes.len());
            sent += bytes.len();
            bytes.truncate(keep);
            bytes
        });
        if outcome.client_close == Some(CloseReason::Done) {
            continue; // the cut fell after the end of the session
        }
        cuts += 1;
        if crash {
            store.crash();
        } else {
            store.end_connection();
        }
        seed += 1;
        let mut c = conn(&server, &alice, Some(pin), ClientAuth::Login, seed);
        let op = c.upload("big.bin", &data, false);
        let restore = c.client.restore(name("big.bin"), None);
        let outcome = c.run(&mut store);

        assert_eq!(outcome.client_close, Some(CloseReason::Done), "cut {cut}");
        let resumed = c.committed().iter().find(|(o, _, _)| *o == op).map(|c| c.2);
        let Some(resumed) = resumed else {
            panic!("cut {cut}: not committed: {:?}", c.failures());
        };
        if crash {
            assert_eq!(
                resumed % CHECKPOINT,
                0,
                "after a crash only checkpoints are durable"
            );
        }
        assert_eq!(
            c.files.restored.get(&restore).unwrap(),
            &data.to_vec(),
            "cut {cut}"
        );
        assert!(store.partials.is_empty());
    }
}

#[test]
fn a_changed_prefix_fails_the_hash_and_a_restart_succeeds() {
    let (server, alice) = (keys(1), keys(2));
    let mut store = MemStore::default();
    let pin = registered(&mut store, &server, &alice, "alice");
    let original = content(20_000, 1);
    let mut c = conn(&server, &alice, Some(pin), ClientAuth::Login, 20);
    c.upload("f", &original, false);
    let mut sent = 0;
    c.run_tampered(&mut store, |mut bytes| {
        let keep = 12_000usize.saturating_sub(sent).min(bytes.len());
        sent += bytes.len();
        bytes.truncate(keep);
        bytes
    });
    store.end_connection();
    let mut changed = original.to_vec();
    changed[10] ^= 0xFF;
    let changed = Bytes::from(changed);

    let mut c = conn(&server, &alice, Some(pin), ClientAuth::Login, 21);
    let resumed = c.upload("f", &changed, false);
    let restarted = c.upload("f", &changed, true);
    let fetch = c.client.restore(name("f"), None);
    let outcome = c.run(&mut store);

    assert_eq!(outcome.client_close, Some(CloseReason::Done));
    let failures = c.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, resumed);
    assert_eq!(refused_code(&failures[0].1), Some(ErrorCode::HASH_MISMATCH));
    assert!(failures[0].2 > 0, "the failed attempt had resumed");
    assert_eq!(c.committed(), [(restarted, 1, 0)]);
    assert_eq!(c.files.restored.get(&fetch).unwrap(), &changed.to_vec());
}

#[test]
fn a_file_that_shrinks_during_upload_fails_the_connection() {
    let (server, alice) = (keys(1), keys(2));
    let mut store = MemStore::default();
    let pin = registered(&mut store, &server, &alice, "alice");
    let mut c = conn(&server, &alice, Some(pin), ClientAuth::Login, 30);
    let op = c.client.upload(UploadSpec {
        name: name("f"),
        size: 5000,
        restart: false,
    });
    c.files.sources.insert(op, content(3000, 1));

    let outcome = c.run(&mut store);

    assert!(
        matches!(
            outcome.client_close,
            Some(CloseReason::Error(V4Error::FileChanged { .. }))
        ),
        "{outcome:?}"
    );
    assert_eq!(store.commits, 0);
}

#[test]
fn login_with_an_unregistered_key_is_refused() {
    let mut store = MemStore::default();
    let mut c = conn(&keys(1), &keys(2), None, ClientAuth::Login, 1);
    let outcome = c.run(&mut store);
    assert!(
        matches!(outcome.client_close, Some(CloseReason::Error(V4Error::Refused { code, .. })) if code == ErrorCode::UNKNOWN_CLIENT),
        "{outcome:?}"
    );
}
