//! Hostile clients of the repository protocol (issue 19, item 4) against the in-process
//! server over real sockets on 127.0.0.1 (real SQLite catalog, real local backend). Each
//! test first lets an honest client (the client library) back up a tree, so the server
//! holds another account's real pack, blob and snapshot IDs; then an authenticated hostile
//! client sends what the real client never sends:
//!
//! * (a) malformed repository messages, written from the spec over raw Noise
//!   (`support::RawV4`): every one is the fatal `PROTOCOL` error, and malformed objects
//!   (config, key) the non-fatal `BAD_OBJECT`;
//! * (b) claims of blobs it never uploaded (`HAVE`, `GET`, `PUT` of another account's pack
//!   ID, snapshots naming blobs or chunks never stored);
//! * (c) snapshots referencing the other account's real blob and reference-chunk IDs;
//! * (d) an old pack (its own, the other account's) replayed under a new pack ID, and a
//!   snapshot object replayed under a new ID or into another account;
//! * (e) packs whose header lies about the blob lengths (and so offsets), the count, the
//!   classes or the header length.
//!
//! The hostile requests go through the core's v4 client session (`V4Client::repository`,
//! any `RepoCall` with any bytes) except the malformed messages. Each is refused with the
//! error `docs/protocol-v4.md` §9a specifies; afterwards nothing became visible (no
//! snapshot listed or stored, no blob indexed, no pack object but those legitimately
//! stored, no staging file), and the honest accounts are unaffected: the first one's
//! snapshot restores byte for byte and passes `check --read-data`, and a new client backs
//! up and restores. Runtime: a few seconds.
#![allow(
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod repo_fixture;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use cyberbackup_client::v4::{V4Client, V4ClientError};
use cyberbackup_core::names::ClientId;
use cyberbackup_core::repo::{
    BlobClass, BlobId, BlobKind, PackHeader, PackId, PackWriter, RefListBuilder, SnapshotId,
};
use cyberbackup_core::v4::client::{RepoCall, RepoResult};
use cyberbackup_core::v4::repository::{GetTarget, PutTarget, RepoReply, RepoRequest, msg};
use cyberbackup_core::v4::wire::{ErrorCode, ServerMessage};
use cyberbackup_server::faults::Faults;
use repo_fixture::Repo;
use support::{
    RawV4, RepoClient, Running, files_below, pattern, read_tree, staging_files, start_with,
    stored_packs, test_config, tree_diff,
};

// ---------------------------------------------------------------------------------------
// (a) malformed messages
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_repository_messages_are_protocol_errors_and_leave_nothing() {
    let scene = Scene::new().await;
    let key = rand_key();
    let mut raw = RawV4::connect(scene.server.addr, key, Some("raw-mallory")).await;
    let repo = Repo::new(41);
    raw.send_repo(&RepoRequest::Create {
        config: repo.config.clone(),
        key: repo.key.clone(),
    })
    .await;
    assert_eq!(raw.recv().await, Some(ServerMessage::Repo(RepoReply::Ok)));
    let mallory = raw.client_id;
    drop(raw);

    let alice_pack = scene.alice_packs()[0].0;
    let id = [0x5a; 32];
    let put = |class: u8, id: [u8; 32], size: u64| {
        let mut m = vec![msg::PUT, class];
        m.extend_from_slice(&id);
        m.extend_from_slice(&size.to_le_bytes());
        m
    };
    let data = |bytes: &[u8]| [&[0x02][..], bytes].concat();
    let cases: Vec<Case> = vec![
        ("an unknown repository type", vec![], vec![0x1F]),
        (
            "REPO_OPEN with a trailing byte",
            vec![],
            vec![msg::REPO_OPEN, 0],
        ),
        ("HAVE of 0 IDs", vec![], vec![msg::HAVE, 0, 0]),
        ("HAVE of 2 001 IDs", vec![], {
            let mut m = vec![msg::HAVE];
            m.extend_from_slice(&2001u16.to_le_bytes());
            m.extend(std::iter::repeat_n(7u8, 2001 * 32));
            m
        }),
        ("HAVE announcing 2 IDs, carrying 1", vec![], {
            let mut m = vec![msg::HAVE, 2, 0];
            m.extend_from_slice(&alice_pack.0);
            m
        }),
        ("PUT of an unknown class", vec![], put(9, id, 10)),
        ("PUT of size 0", vec![], put(1, id, 0)),
        ("PUT cut short", vec![], put(1, id, 10)[..20].to_vec()),
        ("PUT_END without a PUT", vec![], vec![msg::PUT_END]),
        ("DATA without a PUT", vec![], data(b"stray bytes")),
        ("KEY_ADD of 1 025 bytes", vec![], {
            let mut m = vec![msg::KEY_ADD];
            m.extend_from_slice(&1025u16.to_le_bytes());
            m.extend(std::iter::repeat_n(1u8, 1025));
            m
        }),
        ("REPO_CREATE whose key runs past the message", vec![], {
            let mut m = vec![msg::REPO_CREATE, 2, 0, 1, 1, 200, 0];
            m.extend_from_slice(&[3; 10]);
            m
        }),
        ("GET of class 1 (a pack)", vec![], {
            let mut m = vec![msg::GET, 1];
            m.extend_from_slice(&alice_pack.0);
            m
        }),
        ("FORGET with a cut ID", vec![], vec![msg::FORGET, 1, 2, 3]),
        ("DAMAGED with flag 2", vec![], vec![msg::DAMAGED, 2]),
        (
            "DATA beyond the announced size",
            vec![put(1, id, 4)],
            data(b"12345"),
        ),
        (
            "PUT_END before the announced size",
            vec![put(1, id, 10), data(b"123")],
            vec![msg::PUT_END],
        ),
        (
            "another request while a PUT is open",
            vec![put(1, id, 10), data(b"123")],
            vec![msg::REPO_OPEN],
        ),
        (
            "a second PUT while a PUT is open",
            vec![put(1, id, 10)],
            put(1, [0x5b; 32], 10),
        ),
    ];
    let tried = cases.len() + 1;
    for (label, prelude, bad) in cases {
        let mut raw = RawV4::connect(scene.server.addr, key, None).await;
        for message in &prelude {
            assert!(raw.send(message).await, "{label}: the server closed early");
            if message.first() == Some(&msg::PUT) {
                assert_eq!(
                    raw.recv().await,
                    Some(ServerMessage::Repo(RepoReply::PutReady)),
                    "{label}"
                );
            }
        }
        raw.send(&bad).await;
        match raw.recv().await {
            Some(ServerMessage::Error {
                code,
                fatal,
                message,
            }) => {
                assert_eq!(code, ErrorCode::PROTOCOL, "{label}: {message}");
                assert!(fatal, "{label}: PROTOCOL must be fatal ({message})");
                assert!(!message.is_empty(), "{label}: the error says nothing");
            }
            other => panic!("{label}: expected a fatal PROTOCOL error, got {other:?}"),
        }
        assert!(raw.closed().await, "{label}: the server did not close");
        scene.wait_no_staging(label).await;
    }

    // A transport message with no type byte at all is too short for a frame: the frame
    // decoder refuses it, and a frame-level refusal closes without a reply (§5.3: it may be
    // damage on the way).
    let mut raw = RawV4::connect(scene.server.addr, key, None).await;
    raw.send(&[]).await;
    assert!(
        raw.closed().await,
        "an empty message: the server did not close"
    );

    // Malformed objects in well-formed messages are the non-fatal BAD_OBJECT.
    let (mut fresh, fresh_id) = scene.connect("fresh-mallory").await;
    let garbage = Bytes::from_static(b"not a config object");
    let err = fresh
        .repository(RepoCall::Create {
            config: garbage.clone(),
            key: repo.key.clone(),
        })
        .await
        .unwrap_err();
    assert_code(
        &err,
        ErrorCode::BAD_OBJECT,
        "REPO_CREATE of a garbage config",
    );
    let err = fresh
        .repository(RepoCall::Create {
            config: repo.config.clone(),
            key: garbage.clone(),
        })
        .await
        .unwrap_err();
    assert_code(&err, ErrorCode::BAD_OBJECT, "REPO_CREATE of a garbage key");
    // Neither created a repository: the connection goes on and the account has none.
    assert_eq!(
        fresh.repository(RepoCall::Open).await.unwrap(),
        RepoResult::State {
            config: None,
            keys: Vec::new()
        }
    );
    let mut raw = RawV4::connect(scene.server.addr, key, None).await;
    raw.send_repo(&RepoRequest::AddKey { key: garbage }).await;
    match raw.recv().await {
        Some(ServerMessage::Error { code, fatal, .. }) => {
            assert_eq!((code, fatal), (ErrorCode::BAD_OBJECT, false), "KEY_ADD");
        }
        other => panic!("KEY_ADD of garbage: {other:?}"),
    }
    raw.send_repo(&RepoRequest::Snapshots).await;
    assert_eq!(
        raw.recv().await,
        Some(ServerMessage::Repo(RepoReply::SnapshotsEnd { count: 0 })),
        "the connection goes on after BAD_OBJECT"
    );
    fresh.close().await.unwrap();

    scene.assert_nothing_visible(mallory, &[], &[]).await;
    scene.assert_nothing_visible(fresh_id, &[], &[]).await;
    eprintln!(
        "hostile (a): {tried} malformed messages (one refused at the frame) + 3 malformed objects refused"
    );
    scene.assert_honest_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// (b) claims of blobs never uploaded, (c) references to another account's blobs
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_of_blobs_never_uploaded_or_of_another_accounts_are_refused() {
    let scene = Scene::new().await;
    let (mut mallory, mallory_id) = scene.connect("mallory").await;
    let mut repo = Repo::new(42);
    create(&mut mallory, &repo).await;
    let alice_packs = scene.alice_packs();
    let (alice_data, alice_chunks) = scene.alice_blobs();
    assert!(!alice_data.is_empty() && !alice_chunks.is_empty());
    let alice_all: Vec<BlobId> = alice_data.iter().chain(&alice_chunks).copied().collect();

    // HAVE of the other account's real IDs: none is stored for Mallory.
    assert_eq!(
        have(&mut mallory, &alice_all).await,
        vec![false; alice_all.len()],
        "HAVE reports another account's blobs"
    );
    // GET of them, and of the other account's snapshot: not found.
    for (target, what) in [
        (GetTarget::Blob(alice_data[0]), "a data blob"),
        (GetTarget::Blob(alice_chunks[0]), "a reference chunk"),
        (
            GetTarget::Snapshot(scene.alice_snapshot_id()),
            "the snapshot",
        ),
    ] {
        let err = mallory.repository(RepoCall::Get(target)).await.unwrap_err();
        assert_code(
            &err,
            ErrorCode::NOT_FOUND,
            &format!("GET of Alice's {what}"),
        );
    }
    // PUT of the other account's pack ID is not "already stored": the bytes are asked
    // for, and bytes that are not that pack are a hash mismatch.
    let (alice_pack, alice_bytes) = &alice_packs[0];
    let err = put(
        &mut mallory,
        PutTarget::Pack(*alice_pack),
        vec![0xEE; alice_bytes.len()],
    )
    .await
    .unwrap_err();
    assert_code(
        &err,
        ErrorCode::HASH_MISMATCH,
        "PUT of Alice's pack ID (answered PUT_DONE?)",
    );

    // (b) A snapshot whose reference chunk lists blobs Mallory never uploaded.
    let (data_pack, data_bytes, uploaded) = repo.data_pack(&[b"uploaded blob"]);
    put(&mut mallory, PutTarget::Pack(data_pack), data_bytes)
        .await
        .unwrap();
    let never = repo.sealer.id(b"never uploaded");
    let (refs_never, refs_never_bytes, chunks_never) = repo.ref_pack(&[uploaded[0].0, never]);
    put(&mut mallory, PutTarget::Pack(refs_never), refs_never_bytes)
        .await
        .unwrap();
    let snapshot = repo.snapshot(chunks_never.clone(), 1_700_000_001);
    let err = commit(&mut mallory, &snapshot).await.unwrap_err();
    assert_code(&err, ErrorCode::MISSING_BLOBS, "blob never uploaded");
    // ... whose envelope names a reference chunk never uploaded.
    let snapshot = repo.snapshot(vec![BlobId([0x77; 32])], 1_700_000_002);
    let err = commit(&mut mallory, &snapshot).await.unwrap_err();
    assert_code(
        &err,
        ErrorCode::MISSING_BLOBS,
        "reference chunk never uploaded",
    );
    // ... whose envelope names a sealed blob it did upload as a reference chunk.
    let snapshot = repo.snapshot(vec![uploaded[0].0], 1_700_000_003);
    let err = commit(&mut mallory, &snapshot).await.unwrap_err();
    assert_code(
        &err,
        ErrorCode::MISSING_BLOBS,
        "a sealed blob named as a chunk",
    );

    // (c) A snapshot naming the other account's reference chunks ...
    let snapshot = repo.snapshot(alice_chunks.clone(), 1_700_000_005);
    let err = commit(&mut mallory, &snapshot).await.unwrap_err();
    assert_code(&err, ErrorCode::MISSING_BLOBS, "Alice's reference chunks");
    // ... and one whose own reference chunk lists the other account's blob IDs. (Chunk IDs
    // are unkeyed hashes of their bytes: this chunk may well have the ID of Alice's, and
    // Mallory may store it; what it lists stays missing.)
    let (refs_alice, refs_alice_bytes, chunks_alice) = repo.ref_pack(&alice_data);
    put(&mut mallory, PutTarget::Pack(refs_alice), refs_alice_bytes)
        .await
        .unwrap();
    let snapshot = repo.snapshot(chunks_alice, 1_700_000_004);
    let err = commit(&mut mallory, &snapshot).await.unwrap_err();
    assert_code(
        &err,
        ErrorCode::MISSING_BLOBS,
        "Alice's blob IDs in a chunk",
    );
    mallory.close().await.unwrap();

    let mut claimed = alice_data.clone();
    claimed.push(never);
    scene
        .assert_nothing_visible(mallory_id, &claimed, &[data_pack, refs_never, refs_alice])
        .await;
    eprintln!("hostile (b, c): 5 claims and 5 commits refused");
    scene.assert_honest_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// (d) replays
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_and_snapshots_replayed_under_new_ids_are_refused() {
    let scene = Scene::new().await;
    let (mut mallory, mallory_id) = scene.connect("mallory").await;
    let mut repo = Repo::new(43);
    create(&mut mallory, &repo).await;

    // One honest pack and snapshot of its own.
    let (data_pack, data_bytes, blobs) = repo.data_pack(&[b"first backup"]);
    put(&mut mallory, PutTarget::Pack(data_pack), data_bytes.clone())
        .await
        .unwrap();
    let (refs, refs_bytes, chunks) = repo.ref_pack(&[blobs[0].0]);
    put(&mut mallory, PutTarget::Pack(refs), refs_bytes.clone())
        .await
        .unwrap();
    let first = repo.snapshot(chunks, 1_700_000_010);
    commit(&mut mallory, &first).await.unwrap();

    // Its own old pack under a new ID, under the ID of its other pack, and the other
    // account's pack under a new ID.
    let (alice_pack, alice_bytes) = scene.alice_packs().swap_remove(0);
    let replays = [
        (
            PackId([0x99; 32]),
            data_bytes.clone(),
            "its pack under a new ID",
        ),
        (
            PackId([0x98; 32]),
            alice_bytes.clone(),
            "Alice's pack under a new ID",
        ),
    ];
    for (id, bytes, what) in replays {
        let err = put(&mut mallory, PutTarget::Pack(id), bytes)
            .await
            .unwrap_err();
        assert_code(&err, ErrorCode::HASH_MISMATCH, what);
    }
    // Under the ID of a pack it already stored, the server answers PUT_DONE at once and
    // never takes the bytes: the stored pack stays as it was (checked below).
    put(&mut mallory, PutTarget::Pack(refs), data_bytes.clone())
        .await
        .unwrap();
    // A snapshot object under a new ID.
    let err = put(
        &mut mallory,
        PutTarget::Snapshot(SnapshotId([0x97; 32])),
        first.bytes.clone(),
    )
    .await
    .unwrap_err();
    assert_code(
        &err,
        ErrorCode::HASH_MISMATCH,
        "its snapshot under a new ID",
    );
    // The other account's snapshot object, under its true ID, into this account: its
    // references are not this account's.
    let alice_snapshot = scene.alice_snapshot_object();
    let err = put(
        &mut mallory,
        PutTarget::Snapshot(scene.alice_snapshot_id()),
        alice_snapshot,
    )
    .await
    .unwrap_err();
    assert_code(&err, ErrorCode::MISSING_BLOBS, "Alice's snapshot replayed");

    let listed = snapshot_ids(&mut mallory).await;
    assert_eq!(listed, [first.id], "only its honest snapshot is listed");
    mallory.close().await.unwrap();
    let data = &scene.server.data;
    let snapshots = files_below(
        &data
            .join("repository")
            .join(mallory_id.to_hex())
            .join("snapshots"),
    );
    assert_eq!(snapshots, [first.id.to_hex()], "snapshot objects on disk");
    let mut packs: Vec<PackId> = stored_packs(data, mallory_id)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    packs.sort();
    let mut expected = vec![data_pack, refs];
    expected.sort();
    assert_eq!(packs, expected, "pack objects on disk");
    assert_eq!(
        stored_packs(data, mallory_id)
            .into_iter()
            .find(|(id, _)| *id == refs)
            .unwrap()
            .1,
        refs_bytes,
        "the pack whose ID was replayed is untouched"
    );
    assert!(
        !stored_packs(data, mallory_id)
            .iter()
            .any(|(id, _)| *id == alice_pack)
    );
    scene.wait_no_staging("after the replays").await;
    eprintln!("hostile (d): 2 pack replays and 2 snapshot replays refused, 1 ignored");
    scene.assert_honest_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// (e) lying pack headers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_whose_header_lies_are_refused_or_never_committed() {
    let scene = Scene::new().await;
    let (mut mallory, mallory_id) = scene.connect("mallory").await;
    let mut repo = Repo::new(44);
    create(&mut mallory, &repo).await;

    // A pack of a reference chunk and a data blob, as the client writes it.
    let mixed = Mixed::new(&mut repo, b"a data blob beside a reference chunk");
    let (area, entries) = (&mixed.area, &mixed.entries);

    let (chunk_len, blob_len) = (entries[0].len, entries[1].len);
    let lies: Vec<(&str, Lie)> = vec![
        (
            "a length one too long",
            Lie::lens(&[chunk_len + 1, blob_len]),
        ),
        (
            "a length one too short",
            Lie::lens(&[chunk_len, blob_len - 1]),
        ),
        ("lengths past the pack", Lie::lens(&[u32::MAX, blob_len])),
        (
            "one more entry than present",
            Lie {
                count: Some(3),
                ..Lie::default()
            },
        ),
        (
            "one entry fewer than present",
            Lie {
                count: Some(1),
                ..Lie::default()
            },
        ),
        (
            "an unknown class",
            Lie {
                classes: Some(vec![2, 9]),
                ..Lie::default()
            },
        ),
        (
            "a header length past the pack",
            Lie {
                header_len: Some(1 << 30),
                ..Lie::default()
            },
        ),
        (
            "a header length of 0",
            Lie {
                header_len: Some(0),
                ..Lie::default()
            },
        ),
        (
            "a wrong trailer magic",
            Lie {
                trailer_magic: Some(*b"CBPX"),
                ..Lie::default()
            },
        ),
        (
            "a wrong header magic",
            Lie {
                header_magic: Some(*b"XBPH"),
                ..Lie::default()
            },
        ),
        (
            "version 2",
            Lie {
                version: Some(2),
                ..Lie::default()
            },
        ),
    ];
    let refused = lies.len();
    for (what, lie) in lies {
        let bytes = lie.pack(area, entries);
        assert!(
            PackHeader::parse_pack(&bytes).is_err(),
            "{what}: the lie must be one the header decoder can see"
        );
        // The hash is right: only the header check can refuse it.
        let err = put(&mut mallory, PutTarget::Pack(PackId::of(&bytes)), bytes)
            .await
            .unwrap_err();
        assert_code(&err, ErrorCode::BAD_OBJECT, what);
        assert!(err.to_string().contains("header"), "{what}: {err}");
    }

    // Lengths that add up but move the boundary between the chunk and the blob: the
    // header parses, and the server cannot tell a sealed blob's true extent without keys,
    // so the pack is stored; but the chunk it indexes no longer matches its ID, so no
    // snapshot naming it is ever committed.
    let shifted = Lie::lens(&[chunk_len - 1, blob_len + 1]).pack(area, entries);
    let shifted_id = PackId::of(&shifted);
    put(&mut mallory, PutTarget::Pack(shifted_id), shifted)
        .await
        .unwrap();
    let snapshot = repo.snapshot(vec![mixed.chunk], 1_700_000_020);
    let err = commit(&mut mallory, &snapshot).await.unwrap_err();
    assert_code(
        &err,
        ErrorCode::MISSING_BLOBS,
        "a chunk shifted by a lying header",
    );
    assert!(err.to_string().contains("do not match its ID"), "{err}");
    // A header that names the blob a reference chunk and the chunk a sealed blob (other
    // blobs: a blob already indexed keeps its first location).
    let other = Mixed::new(&mut repo, b"another data blob");
    let swapped = Lie {
        classes: Some(vec![1, 2]),
        ..Lie::default()
    }
    .pack(&other.area, &other.entries);
    let swapped_id = PackId::of(&swapped);
    put(&mut mallory, PutTarget::Pack(swapped_id), swapped)
        .await
        .unwrap();
    let snapshot = repo.snapshot(vec![other.blob], 1_700_000_021);
    let err = commit(&mut mallory, &snapshot).await.unwrap_err();
    assert_code(
        &err,
        ErrorCode::MISSING_BLOBS,
        "a sealed blob labelled a chunk",
    );
    assert!(err.to_string().contains("do not match its ID"), "{err}");
    let snapshot = repo.snapshot(vec![other.chunk], 1_700_000_022);
    let err = commit(&mut mallory, &snapshot).await.unwrap_err();
    assert_code(
        &err,
        ErrorCode::MISSING_BLOBS,
        "a chunk labelled a sealed blob",
    );
    mallory.close().await.unwrap();

    scene
        .assert_nothing_visible(mallory_id, &[], &[shifted_id, swapped_id])
        .await;
    eprintln!(
        "hostile (e): {refused} lying headers refused, 2 stored but never committed (3 commits refused)"
    );
    scene.assert_honest_unaffected().await;
}

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

/// A malformed-message case: its label, the messages that set it up (a `PUT` gets its
/// `PUT_READY`), and the malformed message.
type Case = (&'static str, Vec<Vec<u8>>, Vec<u8>);

/// A server with one honest account (Alice) that backed up a tree.
struct Scene {
    dir: tempfile::TempDir,
    server: Running,
    alice: RepoClient,
    alice_tree: PathBuf,
    alice_files: BTreeMap<String, Vec<u8>>,
    alice_snapshot: String,
    alice_id: ClientId,
}

impl Scene {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = cyberbackup_server::ServerConfig {
            min_free_disk_mb: 0,
            idle_timeout_secs: 30,
            ..test_config(&dir.path().join("data"))
        };
        let server = start_with(config, Faults::none()).await;
        let alice = RepoClient::new(dir.path(), server.addr, "alice", b"alice-host");
        let alice_tree = write_tree(&dir.path().join("alice-src"), 1);
        let alice_files = read_tree(&alice_tree);
        let alice_snapshot = alice.backup(alice_tree.clone(), "alice-1").await.unwrap();
        let probe = alice.connect().await.unwrap();
        let alice_id = probe.client_id().unwrap();
        probe.close().await.unwrap();
        Self {
            dir,
            server,
            alice,
            alice_tree,
            alice_files,
            alice_snapshot,
            alice_id,
        }
    }

    /// A new account's connection (registered on connect) and its id.
    async fn connect(&self, name: &str) -> (V4Client, ClientId) {
        let client = RepoClient::new(self.dir.path(), self.server.addr, name, b"h")
            .connect()
            .await
            .unwrap();
        let id = client.client_id().unwrap();
        (client, id)
    }

    fn alice_packs(&self) -> Vec<(PackId, Vec<u8>)> {
        stored_packs(&self.server.data, self.alice_id)
    }

    /// Alice's sealed blob IDs and reference chunk IDs, from her packs' headers.
    fn alice_blobs(&self) -> (Vec<BlobId>, Vec<BlobId>) {
        let (mut sealed, mut chunks) = (Vec::new(), Vec::new());
        for (_, bytes) in self.alice_packs() {
            for entry in PackHeader::parse_pack(&bytes).unwrap().entries {
                match entry.class {
                    BlobClass::RefChunk => chunks.push(entry.id),
                    _ => sealed.push(entry.id),
                }
            }
        }
        (sealed, chunks)
    }

    fn alice_snapshot_id(&self) -> SnapshotId {
        SnapshotId(
            hex::decode(&self.alice_snapshot)
                .unwrap()
                .try_into()
                .unwrap(),
        )
    }

    fn alice_snapshot_object(&self) -> Vec<u8> {
        let path = self
            .server
            .data
            .join("repository")
            .join(self.alice_id.to_hex())
            .join("snapshots")
            .join(&self.alice_snapshot);
        std::fs::read(path).unwrap()
    }

    /// Polls until no staging file is left (a refused or abandoned put removes its own).
    async fn wait_no_staging(&self, ctx: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = staging_files(&self.server.data);
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{ctx}: staging files left: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Nothing of `client`'s is visible but the packs in `packs`: no snapshot listed or
    /// stored, none of `claimed` indexed, no staging file.
    async fn assert_nothing_visible(&self, client: ClientId, claimed: &[BlobId], packs: &[PackId]) {
        self.wait_no_staging("afterwards").await;
        let data = &self.server.data;
        let root = data.join("repository").join(client.to_hex());
        assert_eq!(
            files_below(&root.join("snapshots")),
            Vec::<String>::new(),
            "a snapshot object was stored"
        );
        let mut stored: Vec<PackId> = stored_packs(data, client)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        stored.sort();
        let mut expected = packs.to_vec();
        expected.sort();
        assert_eq!(stored, expected, "pack objects on disk");
        // The catalog, read with its own SQL: no snapshot row, and blob rows only for the
        // packs legitimately stored.
        let db = rusqlite::Connection::open(data.join("defensive.db")).unwrap();
        let snapshots: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM repo_snapshots WHERE ClientId = ?1",
                [client.0.to_vec()],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(snapshots, 0, "a snapshot row was recorded");
        let mut rows = db
            .prepare("SELECT DISTINCT PackId FROM repo_blobs WHERE ClientId = ?1")
            .unwrap();
        let mut indexed: Vec<PackId> = rows
            .query_map([client.0.to_vec()], |row| row.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|id| PackId(id.unwrap().try_into().unwrap()))
            .collect();
        indexed.sort();
        assert_eq!(indexed, expected, "blob rows point at packs never stored");
        if !claimed.is_empty() {
            let mut blobs: i64 = 0;
            for id in claimed {
                blobs += db
                    .query_row(
                        "SELECT COUNT(*) FROM repo_blobs WHERE ClientId = ?1 AND BlobId = ?2",
                        [client.0.to_vec(), id.0.to_vec()],
                        |row| row.get::<_, i64>(0),
                    )
                    .unwrap();
            }
            assert_eq!(blobs, 0, "a claimed blob was indexed");
        }
    }

    /// Alice's snapshot restores byte for byte and passes `check --read-data`; a new
    /// client backs up and restores.
    async fn assert_honest_unaffected(self) {
        let source = self.alice_tree.canonicalize().unwrap();
        let restored = self
            .alice
            .restore_tree(&self.alice_snapshot, &source)
            .await
            .unwrap();
        assert!(
            restored == self.alice_files,
            "Alice's snapshot restored differently: {}",
            tree_diff(&self.alice_files, &restored)
        );
        let report = self.alice.check_read_data().await.unwrap();
        assert!(report.is_ok() && report.snapshots == 1, "{report:?}");

        let carol = RepoClient::new(self.dir.path(), self.server.addr, "carol", b"carol-host");
        let tree = write_tree(&self.dir.path().join("carol-src"), 2);
        let files = read_tree(&tree);
        let id = carol.backup(tree.clone(), "carol-1").await.unwrap();
        let restored = carol
            .restore_tree(&id, &tree.canonicalize().unwrap())
            .await
            .unwrap();
        assert!(restored == files, "{}", tree_diff(&files, &restored));
        let report = carol.check_read_data().await.unwrap();
        assert!(report.is_ok() && report.snapshots == 1, "{report:?}");
        self.server.stop().await;
    }
}

/// A small tree of three files (one of 150 KB), seeded.
fn write_tree(root: &Path, seed: u32) -> PathBuf {
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.txt"), pattern(3_000, seed)).unwrap();
    std::fs::write(root.join("sub/b.bin"), pattern(150_000, seed + 100)).unwrap();
    std::fs::write(root.join("sub/c.txt"), format!("file c of tree {seed}")).unwrap();
    root.to_path_buf()
}

fn rand_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut key);
    key
}

fn assert_code(err: &V4ClientError, code: ErrorCode, what: &str) {
    assert_eq!(err.code(), Some(code), "{what}: {err}");
}

async fn create(client: &mut V4Client, repo: &Repo) {
    client
        .repository(RepoCall::Create {
            config: repo.config.clone(),
            key: repo.key.clone(),
        })
        .await
        .unwrap();
}

async fn have(client: &mut V4Client, ids: &[BlobId]) -> Vec<bool> {
    match client
        .repository(RepoCall::Have(ids.to_vec()))
        .await
        .unwrap()
    {
        RepoResult::Have(stored) => stored,
        other => panic!("HAVE: {other:?}"),
    }
}

async fn put(
    client: &mut V4Client,
    target: PutTarget,
    object: Vec<u8>,
) -> Result<(), V4ClientError> {
    match client
        .repository(RepoCall::Put {
            target,
            object: object.into(),
        })
        .await?
    {
        RepoResult::Stored => Ok(()),
        other => panic!("PUT: {other:?}"),
    }
}

async fn commit(
    client: &mut V4Client,
    snapshot: &cyberbackup_core::repo::SealedSnapshot,
) -> Result<(), V4ClientError> {
    put(
        client,
        PutTarget::Snapshot(snapshot.id),
        snapshot.bytes.clone(),
    )
    .await
}

async fn snapshot_ids(client: &mut V4Client) -> Vec<SnapshotId> {
    match client.repository(RepoCall::Snapshots).await.unwrap() {
        RepoResult::Snapshots(entries) => entries.into_iter().map(|e| e.id).collect(),
        other => panic!("SNAPSHOTS: {other:?}"),
    }
}

fn class_byte(class: BlobClass) -> u8 {
    match class {
        BlobClass::RefChunk => 2,
        _ => 1,
    }
}

/// A pack of one reference chunk (listing one data blob) and that data blob, as the
/// client writes it: its blob area and header entries.
struct Mixed {
    area: Vec<u8>,
    entries: Vec<Entry>,
    chunk: BlobId,
    blob: BlobId,
}

impl Mixed {
    fn new(repo: &mut Repo, plain: &[u8]) -> Self {
        let blob = repo.sealer.id(plain);
        let sealed = repo
            .sealer
            .seal(BlobKind::Data, blob, plain, &mut repo.rng)
            .unwrap();
        let mut builder = RefListBuilder::new();
        assert!(builder.push(blob).unwrap().is_none());
        let chunk = builder.finish().unwrap();
        let mut writer = PackWriter::new(1 << 20);
        let mut area = writer.push_ref_chunk(&chunk).unwrap().to_vec();
        area.extend_from_slice(&writer.push_sealed(&sealed).unwrap());
        let finished = writer.finish();
        let entries: Vec<Entry> = finished
            .entries
            .iter()
            .map(|e| Entry {
                class: class_byte(e.class),
                id: e.id.0,
                len: e.len,
            })
            .collect();
        let honest = Lie::default().pack(&area, &entries);
        assert_eq!(
            PackId::of(&honest),
            finished.id,
            "the test's header encoder matches the writer's"
        );
        Self {
            area,
            entries,
            chunk: chunk.id(),
            blob,
        }
    }
}

/// One header entry as the test writes it.
#[derive(Clone, Copy)]
struct Entry {
    class: u8,
    id: [u8; 32],
    len: u32,
}

/// What a lying header changes (`None`: the truth).
#[derive(Default)]
struct Lie {
    lens: Option<Vec<u32>>,
    classes: Option<Vec<u8>>,
    count: Option<u32>,
    header_len: Option<u32>,
    header_magic: Option<[u8; 4]>,
    trailer_magic: Option<[u8; 4]>,
    version: Option<u8>,
}

impl Lie {
    fn lens(lens: &[u32]) -> Self {
        Self {
            lens: Some(lens.to_vec()),
            ..Self::default()
        }
    }

    /// The blob area `area` with a header of `entries` as changed by this lie
    /// (`docs/repository.md`, "Packs").
    fn pack(&self, area: &[u8], entries: &[Entry]) -> Vec<u8> {
        let mut header = BytesMut::new();
        header.put_slice(&self.header_magic.unwrap_or(*b"CBPH"));
        header.put_u8(self.version.unwrap_or(1));
        header.put_u32_le(self.count.unwrap_or(entries.len() as u32));
        for (i, entry) in entries.iter().enumerate() {
            header.put_u8(self.classes.as_ref().map_or(entry.class, |c| c[i]));
            header.put_slice(&entry.id);
            header.put_u32_le(self.lens.as_ref().map_or(entry.len, |l| l[i]));
        }
        let mut pack = area.to_vec();
        pack.extend_from_slice(&header);
        pack.extend_from_slice(&self.header_len.unwrap_or(header.len() as u32).to_le_bytes());
        pack.extend_from_slice(&self.trailer_magic.unwrap_or(*b"CBPK"));
        pack
    }
}
