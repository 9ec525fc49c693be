//! Entry points of the repository fuzz targets (`fuzz/fuzz_targets/repo_*.rs`), re-exported
//! by `crate::fuzzing` and replayed on stable by `tests/fuzz_corpus.rs`. Each decodes
//! arbitrary bytes as one object kind and must never panic. Not a stable API.

use super::BlobKind;
use super::blob::{BlobOpener, decompress};
use super::config::RepoConfig;
use super::id::BlobId;
use super::keys::{DeviceKey, KeyObject, MasterKey, RepoKeys};
use super::pack::PackHeader;
use super::refs::RefChunk;
use super::snapshot::{Snapshot, SnapshotEnvelope};
use super::tree::{Timestamp, Tree};

/// The master key the fuzz entry points open objects with, so seeds can be sealed with it.
pub const FUZZ_MASTER_KEY: [u8; 32] = [0x5A; 32];
/// The device key [`repo_key_object`] tries.
pub const FUZZ_DEVICE_KEY: [u8; 32] = [0xA5; 32];

fn keys() -> RepoKeys {
    MasterKey::from_bytes(FUZZ_MASTER_KEY).derive()
}

/// A pack: the whole input as a pack, and as a bare header of a pack of twice its length.
pub fn repo_pack_header(data: &[u8]) {
    if let Ok(header) = PackHeader::parse_pack(data) {
        for entry in &header.entries {
            let _ = PackHeader::blob(data, entry)
                .map(|bytes| RefChunk::decode_verified(bytes, &entry.id));
        }
    }
    let _ = PackHeader::decode(data, 2 * data.len() as u64);
    let _ = PackHeader::header_len(data, u64::MAX);
}

/// A sealed blob (first 32 bytes: the expected ID), opened as both kinds; the rest also as a
/// compressed payload, to reach the bounded decompression behind the AEAD.
pub fn repo_sealed_blob(data: &[u8]) {
    let config = RepoConfig::new([0; 16]);
    let Ok(mut opener) = BlobOpener::new(&keys(), &config) else {
        return;
    };
    let (id, sealed) = match data.split_first_chunk::<32>() {
        Some((id, rest)) => (BlobId(*id), rest),
        None => (BlobId([0; 32]), data),
    };
    for kind in [BlobKind::Data, BlobKind::Tree] {
        let _ = opener.open(kind, &id, sealed);
    }
    if let Ok(mut decompressor) = zstd::bulk::Decompressor::new() {
        let _ = decompress(&mut decompressor, sealed, 1 << 20);
    }
}

/// A tree's plaintext; what decodes must re-encode to the same bytes.
pub fn repo_tree(data: &[u8]) {
    if let Ok(tree) = Tree::decode(data) {
        assert_eq!(
            tree.encode().ok().as_deref(),
            Some(data),
            "a decoded tree re-encodes to its bytes"
        );
    }
}

/// A snapshot object (envelope, then opened), and the input as a decrypted body.
pub fn repo_snapshot(data: &[u8]) {
    let _ = SnapshotEnvelope::decode(data);
    let _ = Snapshot::open(data, &keys());
    let _ = Snapshot::decode_body(data, Timestamp::default());
}

/// A key object, unwrapped with the fuzz device key (never with a passphrase: Argon2 would
/// dominate the run).
pub fn repo_key_object(data: &[u8]) {
    if let Ok(object) = KeyObject::decode(data) {
        assert_eq!(
            object.encode(),
            data,
            "a decoded key object re-encodes to its bytes"
        );
        let _ = object.unwrap_with_device_key(&DeviceKey::from_bytes(FUZZ_DEVICE_KEY));
    }
}

/// A config object, unverified and verified.
pub fn repo_config(data: &[u8]) {
    let _ = RepoConfig::decode_unverified(data);
    let _ = RepoConfig::decode(data, &keys());
}

/// A reference chunk.
pub fn repo_ref_chunk(data: &[u8]) {
    if let Ok(chunk) = RefChunk::decode(data) {
        assert_eq!(
            chunk.encode(),
            data,
            "a decoded reference chunk re-encodes to its bytes"
        );
    }
}
