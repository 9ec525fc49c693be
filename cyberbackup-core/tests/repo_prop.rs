#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]
//! Property tests of the repository format: every object round-trips, chunk boundaries are
//! stable under local edits and independent of how the stream is cut into pieces, reference
//! lists change locally, and decoding arbitrary bytes never panics (through the same
//! `cyberbackup_core::fuzzing` entry points the fuzz targets call).

use bytes::Bytes;
use cyberbackup_core::fuzzing;
use cyberbackup_core::repo::{
    BlobId, BlobKind, BlobOpener, BlobSealer, Chunker, ChunkerParams, DeviceKey, EntryKind,
    KeyObject, MasterKey, Metadata, PackHeader, PackId, PackWriter, RefChunk, RefListBuilder,
    RepoConfig, Snapshot, SnapshotEnvelope, SnapshotId, SnapshotStats, Timestamp, Tree, TreeEntry,
    Xattr,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Small chunks so that a few hundred KiB hold many of them.
const SMALL: ChunkerParams = ChunkerParams {
    min_bytes: 2048,
    avg_bytes: 8192,
    max_bytes: 65_536,
    normalization: 1,
};

fn keys() -> cyberbackup_core::repo::RepoKeys {
    MasterKey::from_bytes([0x33; 32]).derive()
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// Feeds `data` in pieces of the given sizes (cycled) and collects the chunks.
fn chunk(chunker: &mut Chunker, data: &[u8], pieces: &[usize]) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut fed = 0;
    let mut sizes = pieces.iter().cycle();
    while fed < data.len() {
        let size = (*sizes.next().unwrap()).max(1);
        let end = (fed + size).min(data.len());
        let mut piece = &data[fed..end];
        while !piece.is_empty() {
            let taken = chunker.handle_bytes(piece);
            piece = &piece[taken..];
            fed += taken;
            while let Some(c) = chunker.poll_chunk() {
                chunks.push(c);
            }
        }
    }
    chunker.handle_eof();
    while let Some(c) = chunker.poll_chunk() {
        chunks.push(c);
    }
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn chunks_do_not_depend_on_how_the_stream_is_cut(
        seed in any::<u64>(),
        len in 0usize..300_000,
        pieces in proptest::collection::vec(1usize..100_000, 1..8),
    ) {
        let data = random_bytes(seed, len);
        let mut chunker = Chunker::new(&SMALL, &keys()).unwrap();
        let whole = chunk(&mut chunker, &data, &[usize::MAX]);
        let pieced = chunk(&mut chunker, &data, &pieces);
        prop_assert_eq!(&whole, &pieced);
        prop_assert_eq!(whole.concat(), data);
        for c in &whole[..whole.len().saturating_sub(1)] {
            prop_assert!((SMALL.min_bytes as usize..=SMALL.max_bytes as usize).contains(&c.len()));
        }
    }
}

proptest! {
    // A fixed seed: the bound is probabilistic (docs/repository.md, "Chunking"), so the
    // cases are fixed and the test is deterministic.
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_seed: RngSeed::Fixed(0x0C0F_FEE0),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_one_byte_insert_or_delete_changes_at_most_two_chunks(
        seed in any::<u64>(),
        at in 0usize..400_000,
        insert in any::<bool>(),
        byte in any::<u8>(),
    ) {
        let data = random_bytes(seed, 400_000);
        let mut edited = data.clone();
        if insert { edited.insert(at, byte) } else { edited.remove(at); }
        let mut chunker = Chunker::new(&SMALL, &keys()).unwrap();
        let before = chunk(&mut chunker, &data, &[65_536]);
        let after = chunk(&mut chunker, &edited, &[65_536]);
        prop_assert!(before.len() > 20);
        let changed = after.iter().filter(|c| !before.contains(c)).count();
        prop_assert!(changed <= 2, "{changed} chunks changed");
    }
}

#[test]
fn cut_points_depend_on_the_repository_key() {
    let data = random_bytes(1, 400_000);
    let lengths = |key: u8| -> Vec<usize> {
        let keys = MasterKey::from_bytes([key; 32]).derive();
        let mut chunker = Chunker::new(&SMALL, &keys).unwrap();
        chunk(&mut chunker, &data, &[4096])
            .iter()
            .map(Bytes::len)
            .collect()
    };
    assert_eq!(lengths(1), lengths(1));
    assert_ne!(lengths(1), lengths(2));
}

#[test]
fn memory_stays_bounded_by_one_maximum_chunk() {
    let mut chunker = Chunker::new(&SMALL, &keys()).unwrap();
    let data = vec![0u8; 10 * SMALL.max_bytes as usize];
    let taken = chunker.handle_bytes(&data);
    assert_eq!(taken, SMALL.max_bytes as usize);
    assert_eq!(
        chunker.handle_bytes(&data),
        0,
        "a full buffer takes nothing more"
    );
    assert_eq!(
        chunker.poll_chunk().map(|c| c.len()),
        Some(SMALL.max_bytes as usize)
    );
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arb_id() -> impl Strategy<Value = BlobId> {
    any::<[u8; 32]>().prop_map(BlobId)
}

fn arb_time() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(secs, nanos)| Timestamp { secs, nanos })
}

fn arb_entry() -> impl Strategy<Value = TreeEntry> {
    let name = proptest::collection::vec(
        any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
        1..40,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..");
    let kind = prop_oneof![
        proptest::collection::vec(arb_id(), 0..4).prop_map(|content| EntryKind::File { content }),
        arb_id().prop_map(|subtree| EntryKind::Dir { subtree }),
        arb_bytes(64).prop_map(|target| EntryKind::Symlink { target }),
    ];
    let xattrs =
        proptest::collection::btree_map(arb_bytes(16), arb_bytes(32), 0..3).prop_map(|m| {
            m.into_iter()
                .map(|(name, value)| Xattr { name, value })
                .collect::<Vec<_>>()
        });
    (
        name,
        kind,
        any::<(u32, u32, u32, u64, u64)>(),
        arb_bytes(8),
        arb_bytes(8),
        arb_time(),
        arb_time(),
        xattrs,
    )
        .prop_map(
            |(name, kind, (mode, uid, gid, size, hardlink), user, group, mtime, ctime, xattrs)| {
                TreeEntry {
                    name,
                    kind,
                    meta: Metadata {
                        mode,
                        uid,
                        gid,
                        user,
                        group,
                        mtime,
                        ctime,
                        size,
                        hardlink,
                        xattrs,
                    },
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn trees_round_trip_and_encode_canonically(entries in proptest::collection::btree_map(
        proptest::collection::vec(1u8..=255, 1..2), arb_entry(), 0..8)) {
        let entries: Vec<TreeEntry> = entries.into_values().collect();
        let mut names: Vec<_> = entries.iter().map(|e| e.name.clone()).collect();
        names.sort();
        names.dedup();
        prop_assume!(names.len() == entries.len());
        let tree = Tree::new(entries.clone()).unwrap();
        let bytes = tree.encode().unwrap();
        prop_assert_eq!(Tree::decode(&bytes).unwrap(), tree);
        let mut reversed = entries;
        reversed.reverse();
        prop_assert_eq!(Tree::new(reversed).unwrap().encode().unwrap(), bytes);
    }

    #[test]
    fn sealed_blobs_round_trip_for_both_kinds(data in arb_bytes(20_000), tree in any::<bool>(), seed in any::<u64>()) {
        let keys = keys();
        let config = RepoConfig::new([1; 16]);
        let mut sealer = BlobSealer::new(&keys, &config).unwrap();
        let mut opener = BlobOpener::new(&keys, &config).unwrap();
        let kind = if tree { BlobKind::Tree } else { BlobKind::Data };
        let id = sealer.id(&data);
        let sealed = sealer.seal(kind, id, &data, &mut ChaCha20Rng::seed_from_u64(seed)).unwrap();
        prop_assert_eq!(opener.open(kind, &id, &sealed.bytes).unwrap(), data);
    }

    #[test]
    fn snapshots_round_trip(
        root in arb_id(),
        time in arb_time(),
        host in arb_bytes(30),
        paths in proptest::collection::vec(arb_bytes(30), 0..4),
        parent in proptest::option::of(any::<[u8; 32]>()),
        refs in proptest::collection::vec(arb_id(), 0..10),
        stats in any::<(u64, u64, u64, u64)>(),
    ) {
        let snapshot = Snapshot {
            root, time, host, user: b"u".to_vec(), paths, tags: vec![b"t".to_vec()],
            parent: parent.map(SnapshotId),
            stats: SnapshotStats { files: stats.0, dirs: stats.1, bytes: stats.2, added_bytes: stats.3 },
        };
        let envelope = SnapshotEnvelope {
            time, total_bytes: stats.2, blob_count: 7, group: snapshot.group(&keys()), ref_chunks: refs,
        };
        let sealed = snapshot.seal(&envelope, &keys(), &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
        prop_assert_eq!(SnapshotEnvelope::decode(&sealed.bytes).unwrap(), (envelope.clone(), sealed.id));
        prop_assert_eq!(Snapshot::open(&sealed.bytes, &keys()).unwrap(), (envelope, snapshot));
    }

    #[test]
    fn key_objects_and_configs_round_trip(label in arb_bytes(255), master in any::<[u8; 32]>(), device in any::<[u8; 32]>()) {
        let master = MasterKey::from_bytes(master);
        let device = DeviceKey::from_bytes(device);
        let object = KeyObject::wrap_with_device_key(&master, &device, &label, &mut ChaCha20Rng::seed_from_u64(2)).unwrap();
        let decoded = KeyObject::decode(&object.encode()).unwrap();
        let opened = decoded.unwrap_with_device_key(&device).unwrap();
        prop_assert_eq!(opened.as_bytes(), master.as_bytes());
        let keys = master.derive();
        let config = RepoConfig::new(*blake3_prefix(master.as_bytes()));
        prop_assert_eq!(RepoConfig::decode(&config.encode(&keys).unwrap(), &keys).unwrap(), config);
    }

    #[test]
    fn packs_round_trip(blobs in proptest::collection::vec((arb_id(), arb_bytes(3000)), 0..12)) {
        let mut writer = PackWriter::new(1 << 20);
        let mut pack = Vec::new();
        for (id, bytes) in &blobs {
            let sealed = cyberbackup_core::repo::SealedBlob { id: *id, bytes: Bytes::from(bytes.clone()), plain_len: bytes.len(), compressed: false };
            pack.extend_from_slice(&writer.push_sealed(&sealed).unwrap());
        }
        let finished = writer.finish();
        pack.extend_from_slice(&finished.tail);
        prop_assert_eq!(PackId::of(&pack), finished.id);
        let header = PackHeader::parse_pack(&pack).unwrap();
        prop_assert_eq!(&header.entries, &finished.entries);
        for ((id, bytes), entry) in blobs.iter().zip(&header.entries) {
            prop_assert_eq!(&entry.id, id);
            prop_assert_eq!(PackHeader::blob(&pack, entry).unwrap(), &bytes[..]);
        }
    }

    #[test]
    fn reference_lists_round_trip_and_one_more_blob_changes_at_most_two_chunks(
        ids in proptest::collection::btree_set(any::<[u8; 32]>(), 1..5000),
        extra in any::<[u8; 32]>(),
    ) {
        let build = |ids: &std::collections::BTreeSet<[u8; 32]>| -> Vec<RefChunk> {
            let mut builder = RefListBuilder::new();
            let mut chunks: Vec<RefChunk> = ids.iter().filter_map(|id| builder.push(BlobId(*id)).unwrap()).collect();
            chunks.extend(builder.finish());
            chunks
        };
        let before = build(&ids);
        let listed: Vec<BlobId> = before.iter().flat_map(|c| c.ids().to_vec()).collect();
        prop_assert_eq!(listed, ids.iter().map(|id| BlobId(*id)).collect::<Vec<_>>());
        for chunk in &before {
            prop_assert_eq!(&RefChunk::decode_verified(&chunk.encode(), &chunk.id()).unwrap(), chunk);
        }
        let mut more = ids;
        prop_assume!(more.insert(extra));
        let after = build(&more);
        let changed = after.iter().filter(|c| !before.contains(c)).count();
        prop_assert!(changed <= 2, "{changed} reference chunks changed");
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(data in arb_bytes(4096)) {
        fuzzing::repo_pack_header(&data);
        fuzzing::repo_sealed_blob(&data);
        fuzzing::repo_tree(&data);
        fuzzing::repo_snapshot(&data);
        fuzzing::repo_key_object(&data);
        fuzzing::repo_config(&data);
        fuzzing::repo_ref_chunk(&data);
    }
}

fn blake3_prefix(bytes: &[u8; 32]) -> &[u8; 16] {
    bytes.first_chunk::<16>().unwrap()
}
