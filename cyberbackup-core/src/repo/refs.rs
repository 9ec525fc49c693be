//! Reference lists: the sorted set of blob IDs a snapshot keeps alive, cut into reference
//! chunks the server reads without keys (for garbage collection and the commit check).
//!
//! A chunk ends after an ID whose last two bytes have their low 10 bits zero (about one ID
//! in 1024; IDs are keyed hashes, so this is a fair coin per ID), or at
//! [`MAX_REF_CHUNK_IDS`]. The boundary depends on the ID alone, so adding or removing one
//! blob changes one chunk (or two when it was or becomes a boundary): a new snapshot that
//! differs little from its parent shares almost all of its reference chunks, which are
//! stored once. 100 snapshots of a 1-million-blob repository cost about one snapshot's list
//! (32 MB) plus their changes, not 100 × 32 MB.
//!
//! Layout: `"CBRL" · version:u8=1 · count:u32 · id:[32] × count` (strictly increasing).
//! A chunk's ID is the BLAKE3 `derive_key`-mode hash of its bytes (context below), which the
//! server recomputes.

use super::error::{ObjectKind, RepoError};
use super::id::BlobId;
use super::limits::MAX_REF_CHUNK_IDS;
use super::wire::{Reader, check_limit};

const MAGIC: [u8; 4] = *b"CBRL"; // do not modify
const VERSION: u8 = 1;
/// Hash context of reference-chunk IDs (do not modify).
const CTX_REF_CHUNK: &str = "cyberbackup repository v1 reference chunk id";

/// One chunk of a reference list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefChunk {
    ids: Vec<BlobId>,
}

impl RefChunk {
    /// A chunk of strictly increasing IDs.
    ///
    /// # Errors
    /// [`RepoError::Malformed`] when not strictly increasing or empty,
    /// [`RepoError::LimitExceeded`] above [`MAX_REF_CHUNK_IDS`].
    pub fn new(ids: Vec<BlobId>) -> Result<Self, RepoError> {
        check_limit(
            ObjectKind::RefChunk,
            "ID count",
            ids.len(),
            MAX_REF_CHUNK_IDS,
        )?;
        if ids.is_empty() || ids.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(RepoError::Malformed {
                object: ObjectKind::RefChunk,
                reason: "IDs must be non-empty and strictly increasing",
            });
        }
        Ok(Self { ids })
    }

    /// The IDs, increasing.
    #[must_use]
    pub fn ids(&self) -> &[BlobId] {
        &self.ids
    }

    /// The chunk's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + 32 * self.ids.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        // `new` and `decode` cap the count at MAX_REF_CHUNK_IDS.
        out.extend_from_slice(
            &u32::try_from(self.ids.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        for id in &self.ids {
            out.extend_from_slice(id.as_bytes());
        }
        out
    }

    /// The chunk's ID (what the pack header and the snapshot envelope list).
    #[must_use]
    pub fn id(&self) -> BlobId {
        Self::id_of(&self.encode())
    }

    /// The ID of encoded chunk bytes.
    #[must_use]
    pub fn id_of(bytes: &[u8]) -> BlobId {
        let mut hasher = blake3::Hasher::new_derive_key(CTX_REF_CHUNK);
        hasher.update(bytes);
        BlobId(*hasher.finalize().as_bytes())
    }

    /// Parses a chunk.
    ///
    /// # Errors
    /// Truncated, wrong magic or version, a count above the limit, unsorted IDs.
    pub fn decode(bytes: &[u8]) -> Result<Self, RepoError> {
        let mut r = Reader::new(bytes, ObjectKind::RefChunk);
        r.magic(MAGIC)?;
        r.version(VERSION)?;
        let count = r.count("ID count", 32, MAX_REF_CHUNK_IDS)?;
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            ids.push(BlobId(r.array()?));
        }
        r.finish()?;
        Self::new(ids)
    }

    /// Parses a chunk and checks that its bytes hash to `expected` (the server, reading a
    /// chunk a snapshot names).
    ///
    /// # Errors
    /// As [`Self::decode`], and [`RepoError::Authentication`] for another chunk's bytes.
    pub fn decode_verified(bytes: &[u8], expected: &BlobId) -> Result<Self, RepoError> {
        if Self::id_of(bytes) != *expected {
            return Err(RepoError::Authentication {
                object: ObjectKind::RefChunk,
            });
        }
        Self::decode(bytes)
    }
}

/// Cuts a strictly increasing stream of blob IDs into [`RefChunk`]s.
#[derive(Debug, Default)]
pub struct RefListBuilder {
    current: Vec<BlobId>,
    last: Option<BlobId>,
}

impl RefListBuilder {
    /// An empty builder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next ID (each greater than the one before); returns a chunk when one ends.
    ///
    /// # Errors
    /// [`RepoError::ApiMisuse`] when `id` is not greater than the previous one.
    pub fn push(&mut self, id: BlobId) -> Result<Option<RefChunk>, RepoError> {
        if self.last.is_some_and(|last| last >= id) {
            return Err(RepoError::ApiMisuse(
                "reference-list IDs must be pushed in strictly increasing order, without duplicates",
            ));
        }
        self.last = Some(id);
        self.current.push(id);
        let boundary = u16::from_le_bytes([id.0[30], id.0[31]]) & 0x03FF == 0;
        if boundary || self.current.len() == MAX_REF_CHUNK_IDS {
            return Ok(Some(RefChunk {
                ids: std::mem::take(&mut self.current),
            }));
        }
        Ok(None)
    }

    /// Ends the list: the last, partial chunk, if any.
    #[must_use]
    pub fn finish(self) -> Option<RefChunk> {
        (!self.current.is_empty()).then_some(RefChunk { ids: self.current })
    }
}
