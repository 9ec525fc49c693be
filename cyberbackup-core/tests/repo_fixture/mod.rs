//! A tiny repository for the v4 repository tests: keys, one pack of two data blobs, one
//! pack of their reference chunk, and the snapshot that references them.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use cyberbackup_core::repo::{
    BlobId, BlobKind, BlobSealer, MasterKey, PackId, PackWriter, RefListBuilder, RepoConfig,
    RepoKeys, Snapshot, SnapshotEnvelope, SnapshotStats, Timestamp,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

/// A repository's keys, one pack with two data blobs, one pack with their reference chunk,
/// and the snapshot that references them.
pub struct Fixture {
    pub config: Bytes,
    pub data_pack: (PackId, Bytes),
    pub ref_pack: (PackId, Bytes),
    pub blob_ids: Vec<BlobId>,
    pub snapshot: (cyberbackup_core::repo::SnapshotId, Bytes),
    pub keys: RepoKeys,
}

pub fn pack_of(writer: PackWriter, pieces: Vec<Bytes>) -> (PackId, Bytes) {
    let finished = writer.finish();
    let mut bytes = BytesMut::new();
    for piece in pieces {
        bytes.extend_from_slice(&piece);
    }
    bytes.extend_from_slice(&finished.tail);
    (finished.id, bytes.freeze())
}

pub fn fixture() -> Fixture {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let keys = MasterKey::from_bytes([3; 32]).derive();
    let config = RepoConfig::new([1; 16]);
    let mut sealer = BlobSealer::new(&keys, &config).unwrap();
    let mut writer = PackWriter::new(1 << 20);
    let mut pieces = Vec::new();
    let mut blob_ids = Vec::new();
    for text in [&b"first secret content"[..], b"second secret content"] {
        let id = sealer.id(text);
        let sealed = sealer.seal(BlobKind::Data, id, text, &mut rng).unwrap();
        pieces.push(writer.push_sealed(&sealed).unwrap());
        blob_ids.push(id);
    }
    let data_pack = pack_of(writer, pieces);
    let mut sorted = blob_ids.clone();
    sorted.sort();
    let mut refs = RefListBuilder::new();
    let mut chunks = Vec::new();
    for id in sorted {
        chunks.extend(refs.push(id).unwrap());
    }
    chunks.extend(refs.finish());
    let mut writer = PackWriter::new(1 << 20);
    let pieces = chunks
        .iter()
        .map(|chunk| writer.push_ref_chunk(chunk).unwrap())
        .collect();
    let ref_pack = pack_of(writer, pieces);
    let time = Timestamp {
        secs: 1_700_000_000,
        nanos: 0,
    };
    let snapshot = Snapshot {
        root: blob_ids[0],
        time,
        host: b"host".to_vec(),
        user: b"user".to_vec(),
        paths: vec![b"/data".to_vec()],
        tags: Vec::new(),
        parent: None,
        stats: SnapshotStats::default(),
    };
    let envelope = SnapshotEnvelope {
        time,
        total_bytes: 41,
        blob_count: 2,
        group: snapshot.group(&keys),
        ref_chunks: chunks.iter().map(|chunk| chunk.id()).collect(),
    };
    let snapshot = snapshot.seal(&envelope, &keys, &mut rng).unwrap();
    Fixture {
        config: config.encode(&keys).unwrap().into(),
        data_pack,
        ref_pack,
        blob_ids,
        snapshot: (snapshot.id, snapshot.bytes.into()),
        keys,
    }
}
