//! Packs: many blobs in one object, with a cleartext header the server reads without any
//! key (blob ID, class and length per entry; offsets follow from the order) and a plain
//! BLAKE3 hash of the whole pack as its [`PackId`], which the storage layer checks on put.
//!
//! Layout (docs/repository.md, "Packs"):
//! ```text
//! pack    = blob_0 · … · blob_n-1 · header · trailer
//! header  = "CBPH" · version:u8=1 · count:u32 · entry × count
//! entry   = class:u8 · id:[32] · len:u32               (37 bytes)
//! trailer = header_len:u32 · "CBPK"                     (8 bytes)
//! ```
//! The header is at the end so the writer streams blobs as they come and needs no seek.

use bytes::Bytes;

use super::blob::SealedBlob;
use super::error::{ObjectKind, RepoError};
use super::id::{BlobClass, BlobId, PackId};
use super::limits::MAX_PACK_BLOBS;
use super::refs::RefChunk;
use super::wire::Reader;

const HEADER_MAGIC: [u8; 4] = *b"CBPH"; // do not modify
const TRAILER_MAGIC: [u8; 4] = *b"CBPK"; // do not modify
const PACK_VERSION: u8 = 1;
const ENTRY_LEN: usize = 37;
const HEADER_FIXED_LEN: usize = 9;
/// Bytes of the pack trailer (header length and magic) at the very end of every pack.
pub const PACK_TRAILER_LEN: usize = 8;

/// One blob in a pack, as the server indexes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PackEntry {
    /// Sealed or reference chunk.
    pub class: BlobClass,
    /// The blob's ID.
    pub id: BlobId,
    /// Where the blob starts in the pack.
    pub offset: u64,
    /// The blob's length in the pack.
    pub len: u32,
}

/// Streaming BLAKE3 of a pack's bytes (the driver hashes a pack while it receives it).
#[derive(Clone, Debug, Default)]
pub struct PackHasher(blake3::Hasher);

impl PackHasher {
    /// A new hasher.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The pack ID of everything added.
    #[must_use]
    pub fn finalize(&self) -> PackId {
        PackId(*self.0.finalize().as_bytes())
    }
}

impl PackId {
    /// The pack ID of a whole pack's bytes.
    #[must_use]
    pub fn of(pack: &[u8]) -> Self {
        let mut hasher = PackHasher::new();
        hasher.update(pack);
        hasher.finalize()
    }
}

/// Builds one pack: give it blobs, write the bytes it hands back, in order, then the tail
/// from [`Self::finish`]. Memory: one 48-byte entry per blob for the header.
#[derive(Debug)]
pub struct PackWriter {
    target_bytes: u64,
    entries: Vec<PackEntry>,
    len: u64,
    hasher: PackHasher,
}

/// A finished pack: its tail to write after the blobs, its ID, and its index entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedPack {
    /// Header and trailer: the pack's last bytes.
    pub tail: Bytes,
    /// The pack's ID (BLAKE3 of all its bytes).
    pub id: PackId,
    /// The blobs, in order.
    pub entries: Vec<PackEntry>,
    /// Total pack length in bytes.
    pub len_bytes: u64,
}

impl PackWriter {
    /// A writer that reports [`Self::is_full`] once `target_bytes` of blobs are in.
    #[must_use]
    pub fn new(target_bytes: u32) -> Self {
        Self {
            target_bytes: u64::from(target_bytes),
            entries: Vec::new(),
            len: 0,
            hasher: PackHasher::new(),
        }
    }

    /// Adds a sealed blob; returns the bytes to append to the pack.
    ///
    /// # Errors
    /// [`RepoError::LimitExceeded`] when the pack already holds the most blobs a pack may.
    pub fn push_sealed(&mut self, blob: &SealedBlob) -> Result<Bytes, RepoError> {
        self.push(BlobClass::Sealed, blob.id, blob.bytes.clone())
    }

    /// Adds a reference chunk (stored in cleartext for the server); returns the bytes to
    /// append.
    ///
    /// # Errors
    /// As [`Self::push_sealed`].
    pub fn push_ref_chunk(&mut self, chunk: &RefChunk) -> Result<Bytes, RepoError> {
        let bytes = chunk.encode();
        self.push(
            BlobClass::RefChunk,
            RefChunk::id_of(&bytes),
            Bytes::from(bytes),
        )
    }

    /// Adds a blob copied unchanged from another pack, under the class and ID its index
    /// entry gives (the server's repack; it holds no key and moves sealed bytes as they are);
    /// returns the bytes to append.
    ///
    /// # Errors
    /// As [`Self::push_sealed`].
    pub fn push_stored(
        &mut self,
        class: BlobClass,
        id: BlobId,
        bytes: Bytes,
    ) -> Result<Bytes, RepoError> {
        self.push(class, id, bytes)
    }

    /// Length of the header and trailer of a pack of `blob_count` blobs.
    #[must_use]
    pub fn tail_len(blob_count: usize) -> u64 {
        (HEADER_FIXED_LEN + ENTRY_LEN * blob_count + PACK_TRAILER_LEN) as u64
    }

    /// Whether the pack reached its target size (finish it and start the next).
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.len >= self.target_bytes
    }

    /// Whether no blob was added.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of blobs so far.
    #[must_use]
    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    /// Ends the pack.
    #[must_use]
    pub fn finish(self) -> FinishedPack {
        let mut tail = Vec::with_capacity(
            HEADER_FIXED_LEN + ENTRY_LEN * self.entries.len() + PACK_TRAILER_LEN,
        );
        tail.extend_from_slice(&HEADER_MAGIC);
        tail.push(PACK_VERSION);
        // `push` caps the count at MAX_PACK_BLOBS, so these fit in u32.
        let count = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        tail.extend_from_slice(&count.to_le_bytes());
        for entry in &self.entries {
            tail.push(entry.class.to_byte());
            tail.extend_from_slice(entry.id.as_bytes());
            tail.extend_from_slice(&entry.len.to_le_bytes());
        }
        let header_len = u32::try_from(tail.len()).unwrap_or(u32::MAX);
        tail.extend_from_slice(&header_len.to_le_bytes());
        tail.extend_from_slice(&TRAILER_MAGIC);
        let mut hasher = self.hasher;
        hasher.update(&tail);
        FinishedPack {
            len_bytes: self.len + tail.len() as u64,
            tail: Bytes::from(tail),
            id: hasher.finalize(),
            entries: self.entries,
        }
    }

    fn push(&mut self, class: BlobClass, id: BlobId, bytes: Bytes) -> Result<Bytes, RepoError> {
        super::wire::check_limit(
            ObjectKind::PackHeader,
            "blob count",
            self.entries.len() + 1,
            MAX_PACK_BLOBS,
        )?;
        let len = u32::try_from(bytes.len()).map_err(|_| RepoError::LimitExceeded {
            object: ObjectKind::PackHeader,
            what: "blob length",
            value: bytes.len() as u64,
            max: u64::from(u32::MAX),
        })?;
        self.entries.push(PackEntry {
            class,
            id,
            offset: self.len,
            len,
        });
        self.len += u64::from(len);
        self.hasher.update(&bytes);
        Ok(bytes)
    }
}

/// A parsed pack header: what the server indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackHeader {
    /// The blobs, in order; offsets and lengths checked against the pack length.
    pub entries: Vec<PackEntry>,
}

impl PackHeader {
    /// Reads the header length from a pack's last [`PACK_TRAILER_LEN`] bytes (the server
    /// then fetches that many bytes before the trailer and calls [`Self::decode`]).
    ///
    /// # Errors
    /// Wrong magic, or a header length impossible for a pack of `pack_len` bytes.
    pub fn header_len(trailer: &[u8], pack_len: u64) -> Result<usize, RepoError> {
        let mut r = Reader::new(trailer, ObjectKind::PackHeader);
        let header_len = r.u32()?;
        r.magic(TRAILER_MAGIC)?;
        r.finish()?;
        let room = pack_len.saturating_sub(PACK_TRAILER_LEN as u64);
        if u64::from(header_len) > room || (header_len as usize) < HEADER_FIXED_LEN {
            return Err(RepoError::Malformed {
                object: ObjectKind::PackHeader,
                reason: "the header length in the trailer does not fit the pack",
            });
        }
        Ok(header_len as usize)
    }

    /// Parses a header (the bytes just before the trailer) of a pack of `pack_len` bytes.
    ///
    /// # Errors
    /// Truncated, wrong magic, unknown version or class, a count above the limit, or blob
    /// lengths that do not add up to the pack's blob area.
    pub fn decode(header: &[u8], pack_len: u64) -> Result<Self, RepoError> {
        let mut r = Reader::new(header, ObjectKind::PackHeader);
        r.magic(HEADER_MAGIC)?;
        r.version(PACK_VERSION)?;
        let count = r.count("blob count", ENTRY_LEN, MAX_PACK_BLOBS)?;
        let mut entries = Vec::with_capacity(count);
        let mut offset = 0u64;
        for _ in 0..count {
            let class = BlobClass::from_byte(r.u8()?).ok_or_else(|| {
                r.malformed("unknown blob class (expected 1 sealed or 2 reference chunk)")
            })?;
            let id = BlobId(r.array()?);
            let len = r.u32()?;
            entries.push(PackEntry {
                class,
                id,
                offset,
                len,
            });
            offset += u64::from(len);
        }
        r.finish()?;
        let blob_area = pack_len.checked_sub(header.len() as u64 + PACK_TRAILER_LEN as u64);
        if blob_area != Some(offset) {
            return Err(RepoError::Malformed {
                object: ObjectKind::PackHeader,
                reason: "the blob lengths in the header do not add up to the pack's length",
            });
        }
        Ok(Self { entries })
    }

    /// Parses the header of a whole pack held in memory.
    ///
    /// # Errors
    /// As [`Self::header_len`] and [`Self::decode`].
    pub fn parse_pack(pack: &[u8]) -> Result<Self, RepoError> {
        let pack_len = pack.len() as u64;
        let Some(trailer_at) = pack.len().checked_sub(PACK_TRAILER_LEN) else {
            return Err(RepoError::Truncated {
                object: ObjectKind::PackHeader,
                offset: 0,
                needed: PACK_TRAILER_LEN - pack.len(),
            });
        };
        let header_len = Self::header_len(&pack[trailer_at..], pack_len)?;
        Self::decode(&pack[trailer_at - header_len..trailer_at], pack_len)
    }

    /// The bytes of `entry` within `pack` (checked by [`Self::decode`] to lie inside it).
    #[must_use]
    pub fn blob<'p>(pack: &'p [u8], entry: &PackEntry) -> Option<&'p [u8]> {
        let start = usize::try_from(entry.offset).ok()?;
        pack.get(start..start.checked_add(entry.len as usize)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_pack() -> (Vec<u8>, FinishedPack) {
        let mut writer = PackWriter::new(1 << 20);
        let mut pack = Vec::new();
        for (i, len) in [10usize, 0, 300].into_iter().enumerate() {
            let blob = SealedBlob {
                id: BlobId([i as u8; 32]),
                bytes: Bytes::from(vec![i as u8; len]),
                plain_len: len,
                compressed: false,
            };
            pack.extend_from_slice(&writer.push_sealed(&blob).unwrap());
        }
        let chunk = RefChunk::new(vec![BlobId([1; 32]), BlobId([2; 32])]).unwrap();
        pack.extend_from_slice(&writer.push_ref_chunk(&chunk).unwrap());
        let finished = writer.finish();
        pack.extend_from_slice(&finished.tail);
        (pack, finished)
    }

    #[test]
    fn the_header_parses_back_to_the_writers_entries_and_the_id_is_the_packs_hash() {
        let (pack, finished) = sample_pack();
        assert_eq!(finished.len_bytes, pack.len() as u64);
        assert_eq!(finished.id, PackId::of(&pack));
        let header = PackHeader::parse_pack(&pack).unwrap();
        assert_eq!(header.entries, finished.entries);
        let last = header.entries[3];
        assert_eq!(last.class, BlobClass::RefChunk);
        let bytes = PackHeader::blob(&pack, &last).unwrap();
        assert_eq!(
            RefChunk::decode_verified(bytes, &last.id)
                .unwrap()
                .ids()
                .len(),
            2
        );
    }

    #[test]
    fn lengths_that_do_not_add_up_are_refused() {
        let (mut pack, _) = sample_pack();
        let trailer_at = pack.len() - PACK_TRAILER_LEN;
        // The third entry's length (300) becomes 301.
        let len_at = trailer_at - 37 - 4;
        pack[len_at] = pack[len_at].wrapping_add(1);
        assert!(matches!(
            PackHeader::parse_pack(&pack),
            Err(RepoError::Malformed { .. })
        ));
        assert!(PackHeader::parse_pack(&pack[..5]).is_err());
    }
}
