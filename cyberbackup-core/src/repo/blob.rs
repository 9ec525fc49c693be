//! Blobs: a chunk of file content or an encoded tree, identified by the keyed BLAKE3 hash of
//! its plaintext, compressed with zstd when that shrinks it, and sealed with AES-256-GCM
//! under a one-time key (the blob ID and kind are bound as associated data).
//!
//! Sealed layout (docs/repository.md, "Sealed blobs"):
//! `version:u8=1 · flags:u8 (bit 0 = zstd) · salt:[24] · ciphertext · tag:[16]`.

use std::io::Cursor;

use bytes::Bytes;
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::config::RepoConfig;
use super::error::{ObjectKind, RepoError};
use super::id::BlobId;
use super::keys::{
    RepoKeys, SALT_LEN, SubKey, TAG_LEN, new_salt, object_key, open_in_place, seal_in_place,
};
use super::limits::{MAX_SEALED_BLOB_BYTES, MAX_TREE_BYTES};
use super::wire::Reader;

const BLOB_VERSION: u8 = 1;
const FLAG_ZSTD: u8 = 0x01;
const HEADER_LEN: usize = 2 + SALT_LEN;
/// Bytes a sealed blob adds to its (possibly compressed) payload.
pub(crate) const SEAL_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Compression is tried on this much first; when it does not shrink by 1/32, the blob is
/// stored uncompressed (incompressible data then costs one small probe).
const PROBE_LEN: usize = 64 * 1024;

/// What a sealed blob holds. Bound into the AEAD, so a blob of one kind never opens as the
/// other; not visible to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlobKind {
    /// A chunk of file content.
    Data,
    /// An encoded [`super::Tree`].
    Tree,
}

impl BlobKind {
    fn to_byte(self) -> u8 {
        match self {
            Self::Data => 1,
            Self::Tree => 2,
        }
    }
}

/// A sealed blob, ready for a [`super::PackWriter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedBlob {
    /// The blob's ID (keyed hash of the plaintext).
    pub id: BlobId,
    /// The sealed bytes.
    pub bytes: Bytes,
    /// Plaintext length.
    pub plain_len: usize,
    /// Whether the payload is zstd-compressed.
    pub compressed: bool,
}

/// Computes blob IDs and seals blobs (one per pipeline worker: it holds a zstd context).
pub struct BlobSealer {
    keys: RepoKeys,
    compressor: zstd::bulk::Compressor<'static>,
    max_data_bytes: usize,
    /// The compressed probe of the last blob (kept to spare an allocation per blob).
    probe: Vec<u8>,
}

impl std::fmt::Debug for BlobSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobSealer").finish_non_exhaustive()
    }
}

impl BlobSealer {
    /// A sealer with the repository's keys and compression level.
    ///
    /// # Errors
    /// [`RepoError::Compress`] when zstd refuses the level.
    pub fn new(keys: &RepoKeys, config: &RepoConfig) -> Result<Self, RepoError> {
        let compressor = zstd::bulk::Compressor::new(i32::from(config.compression_level))
            .map_err(compress_error)?;
        Ok(Self {
            keys: keys.clone(),
            compressor,
            max_data_bytes: config.chunker.max_bytes as usize,
            probe: Vec::new(),
        })
    }

    /// The blob ID of `plaintext`: keyed BLAKE3 under the ID sub-key. Compute it first and
    /// seal only the blobs the repository lacks.
    #[must_use]
    pub fn id(&self, plaintext: &[u8]) -> BlobId {
        blob_id(&self.keys, plaintext)
    }

    /// Compresses (when it shrinks the blob) and seals `plaintext`, whose ID is `id`.
    ///
    /// # Errors
    /// [`RepoError::LimitExceeded`] for a blob above its kind's size limit;
    /// [`RepoError::Compress`].
    pub fn seal(
        &mut self,
        kind: BlobKind,
        id: BlobId,
        plaintext: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<SealedBlob, RepoError> {
        super::wire::check_limit(
            ObjectKind::SealedBlob,
            "plaintext bytes",
            plaintext.len(),
            max_plain(kind, self.max_data_bytes),
        )?;
        let compressed = self.worth_compressing(plaintext)?;
        let flags = if compressed { FLAG_ZSTD } else { 0 };
        let salt = new_salt(rng);
        let bound = if compressed {
            zstd::zstd_safe::compress_bound(plaintext.len())
        } else {
            plaintext.len()
        };
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + bound);
        out.push(BLOB_VERSION);
        out.push(flags);
        out.extend_from_slice(&salt);
        if compressed {
            let mut cursor = Cursor::new(out);
            cursor.set_position(HEADER_LEN as u64);
            self.compressor
                .compress_to_buffer(plaintext, &mut cursor)
                .map_err(compress_error)?;
            out = cursor.into_inner();
        } else {
            out.extend_from_slice(plaintext);
        }
        let key = object_key(sub_key(&self.keys, kind), &salt);
        seal_in_place(
            &key,
            &associated_data(kind, flags, &id),
            &mut out,
            HEADER_LEN,
        )?;
        Ok(SealedBlob {
            id,
            bytes: Bytes::from(out),
            plain_len: plaintext.len(),
            compressed,
        })
    }

    fn worth_compressing(&mut self, plaintext: &[u8]) -> Result<bool, RepoError> {
        let probe = &plaintext[..plaintext.len().min(PROBE_LEN)];
        if probe.len() < 64 {
            return Ok(false);
        }
        self.probe.clear();
        self.probe
            .reserve(zstd::zstd_safe::compress_bound(probe.len()));
        self.compressor
            .compress_to_buffer(probe, &mut self.probe)
            .map_err(compress_error)?;
        Ok(self.probe.len() + probe.len() / 32 < probe.len())
    }
}

/// Opens sealed blobs: checks the seal, decompresses within the kind's size limit and checks
/// the plaintext against the blob ID (one per restore worker: it holds a zstd context).
pub struct BlobOpener {
    keys: RepoKeys,
    decompressor: zstd::bulk::Decompressor<'static>,
    max_data_bytes: usize,
}

impl std::fmt::Debug for BlobOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobOpener").finish_non_exhaustive()
    }
}

impl BlobOpener {
    /// An opener with the repository's keys and limits.
    ///
    /// # Errors
    /// [`RepoError::Compress`] when zstd cannot allocate its context.
    pub fn new(keys: &RepoKeys, config: &RepoConfig) -> Result<Self, RepoError> {
        Ok(Self {
            keys: keys.clone(),
            decompressor: zstd::bulk::Decompressor::new().map_err(compress_error)?,
            max_data_bytes: config.chunker.max_bytes as usize,
        })
    }

    /// Opens the sealed blob `sealed`, expected to be of `kind` with ID `id`.
    ///
    /// # Errors
    /// [`RepoError::Authentication`] (tampered, swapped, or of another kind),
    /// [`RepoError::Decompress`], [`RepoError::IdMismatch`], or a malformed header.
    pub fn open(
        &mut self,
        kind: BlobKind,
        id: &BlobId,
        sealed: &[u8],
    ) -> Result<Vec<u8>, RepoError> {
        let mut r = Reader::new(sealed, ObjectKind::SealedBlob);
        super::wire::check_limit(
            ObjectKind::SealedBlob,
            "sealed bytes",
            sealed.len(),
            MAX_SEALED_BLOB_BYTES,
        )?;
        r.version(BLOB_VERSION)?;
        let flags = r.u8()?;
        if flags & !FLAG_ZSTD != 0 {
            return Err(r.malformed("unknown flag bits"));
        }
        let salt: [u8; SALT_LEN] = r.array()?;
        if r.remaining() < TAG_LEN {
            return Err(RepoError::Truncated {
                object: ObjectKind::SealedBlob,
                offset: HEADER_LEN,
                needed: TAG_LEN - r.remaining(),
            });
        }
        let mut payload = Zeroizing::new(r.rest().to_vec());
        let key = object_key(sub_key(&self.keys, kind), &salt);
        let plain_len = open_in_place(
            &key,
            &associated_data(kind, flags, id),
            &mut payload,
            ObjectKind::SealedBlob,
        )?
        .len();
        payload.truncate(plain_len);
        let max = max_plain(kind, self.max_data_bytes);
        let plaintext = if flags & FLAG_ZSTD != 0 {
            decompress(&mut self.decompressor, &payload, max)?
        } else {
            std::mem::take(&mut *payload)
        };
        let found = blob_id(&self.keys, &plaintext);
        if found != *id {
            return Err(RepoError::IdMismatch {
                expected: *id,
                found,
            });
        }
        Ok(plaintext)
    }
}

/// Decompresses one zstd frame whose declared content size is at most `max`.
pub(crate) fn decompress(
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    payload: &[u8],
    max: usize,
) -> Result<Vec<u8>, RepoError> {
    let error = RepoError::Decompress { max: max as u64 };
    let declared = match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(len)) if len <= max as u64 => len,
        _ => return Err(error),
    };
    let mut out = Vec::with_capacity(usize::try_from(declared).map_err(|_| error.clone())?);
    let written = decompressor
        .decompress_to_buffer(payload, &mut out)
        .map_err(|_| error.clone())?;
    if written as u64 != declared {
        return Err(error);
    }
    Ok(out)
}

fn blob_id(keys: &RepoKeys, plaintext: &[u8]) -> BlobId {
    BlobId(*blake3::keyed_hash(&keys.id.0, plaintext).as_bytes())
}

fn sub_key(keys: &RepoKeys, kind: BlobKind) -> &SubKey {
    match kind {
        BlobKind::Data => &keys.data,
        BlobKind::Tree => &keys.tree,
    }
}

fn max_plain(kind: BlobKind, max_data_bytes: usize) -> usize {
    match kind {
        BlobKind::Data => max_data_bytes,
        BlobKind::Tree => MAX_TREE_BYTES,
    }
}

/// `version · flags · kind · blob id` (35 bytes).
fn associated_data(kind: BlobKind, flags: u8, id: &BlobId) -> [u8; 35] {
    let mut ad = [0u8; 35];
    ad[0] = BLOB_VERSION;
    ad[1] = flags;
    ad[2] = kind.to_byte();
    ad[3..].copy_from_slice(id.as_bytes());
    ad
}

fn compress_error(err: std::io::Error) -> RepoError {
    RepoError::Compress {
        reason: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::CountingRng;
    use crate::repo::MasterKey;

    fn setup() -> (BlobSealer, BlobOpener) {
        let keys = MasterKey::from_bytes([3; 32]).derive();
        let config = RepoConfig::new([0; 16]);
        (
            BlobSealer::new(&keys, &config).unwrap(),
            BlobOpener::new(&keys, &config).unwrap(),
        )
    }

    #[test]
    fn text_is_compressed_random_is_not_and_both_open() {
        let (mut sealer, mut opener) = setup();
        let text = b"fn main() { println!(\"hello\"); }\n".repeat(2000);
        let mut random = vec![0u8; 100_000];
        CountingRng(9).fill_bytes(&mut random);
        for (data, expect_compressed) in [(&text[..], true), (&random[..], false)] {
            let id = sealer.id(data);
            let sealed = sealer
                .seal(BlobKind::Data, id, data, &mut CountingRng(1))
                .unwrap();
            assert_eq!(sealed.compressed, expect_compressed);
            if expect_compressed {
                assert!(sealed.bytes.len() < data.len() / 10);
            } else {
                assert_eq!(sealed.bytes.len(), data.len() + SEAL_OVERHEAD);
            }
            assert_eq!(
                opener.open(BlobKind::Data, &id, &sealed.bytes).unwrap(),
                data
            );
        }
    }

    #[test]
    fn a_blob_does_not_open_as_another_kind_id_or_with_a_flipped_bit() {
        let (mut sealer, mut opener) = setup();
        let data = b"some tree bytes".repeat(10);
        let id = sealer.id(&data);
        let sealed = sealer
            .seal(BlobKind::Tree, id, &data, &mut CountingRng(1))
            .unwrap();
        let auth = Err(RepoError::Authentication {
            object: ObjectKind::SealedBlob,
        });
        assert_eq!(opener.open(BlobKind::Data, &id, &sealed.bytes), auth);
        assert_eq!(
            opener.open(BlobKind::Tree, &BlobId([0; 32]), &sealed.bytes),
            auth
        );
        for at in [1, 5, HEADER_LEN, sealed.bytes.len() - 1] {
            let mut flipped = sealed.bytes.to_vec();
            flipped[at] ^= 0x01;
            assert!(
                opener.open(BlobKind::Tree, &id, &flipped).is_err(),
                "bit flip at {at}"
            );
        }
        assert_eq!(
            opener.open(BlobKind::Tree, &id, &sealed.bytes).unwrap(),
            data
        );
    }

    #[test]
    fn a_blob_sealed_with_the_wrong_id_fails_the_id_check() {
        let (mut sealer, mut opener) = setup();
        let wrong = sealer.id(b"other");
        let sealed = sealer
            .seal(BlobKind::Data, wrong, b"content", &mut CountingRng(1))
            .unwrap();
        assert!(matches!(
            opener.open(BlobKind::Data, &wrong, &sealed.bytes),
            Err(RepoError::IdMismatch { .. })
        ));
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_allocating() {
        let mut decompressor = zstd::bulk::Decompressor::new().unwrap();
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
        assert_eq!(
            decompress(&mut decompressor, &bomb, 1000),
            Err(RepoError::Decompress { max: 1000 })
        );
        assert_eq!(
            decompress(&mut decompressor, &bomb, 1 << 20).unwrap().len(),
            1 << 20
        );
    }

    use rand_core::RngCore;
}
