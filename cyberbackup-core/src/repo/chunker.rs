//! The keyed content-defined chunker: bytes in, in pieces of any size; chunks out.
//!
//! The cut search is FastCDC 2020 from the `fastcdc` crate ([`fastcdc::v2020::cut_gear`],
//! normalized chunking, two bytes per step), run with a gear table derived from the
//! repository's chunker key (256 × u64 from BLAKE3's XOF) instead of the public table, so cut
//! points, and thus chunk sizes, depend on a secret: an observer of sizes cannot confirm that
//! a known file is stored. The crate's own seed option only XORs one `u64` into the public
//! table, and its streaming type reads from `std::io::Read`, so this module feeds `cut_gear`
//! from its own buffer instead: memory is bounded by one maximum-size chunk.
//!
//! A cut that `cut_gear` finds before the end of a partial buffer is final (it depends only
//! on the bytes before it), so chunks are emitted as soon as their cut is seen; each byte is
//! scanned at most twice.

use bytes::{Bytes, BytesMut};
use fastcdc::v2020::{Normalization, cut_gear, select_masks};
use zeroize::Zeroize;

use super::config::ChunkerParams;
use super::keys::RepoKeys;

/// Cuts a byte stream into content-defined chunks; one instance per stream at a time,
/// reusable for the next stream after the last chunk of the previous one was polled.
///
/// ```
/// # use cyberbackup_core::repo::{Chunker, ChunkerParams, MasterKey};
/// let keys = MasterKey::from_bytes([1; 32]).derive();
/// let mut chunker = Chunker::new(&ChunkerParams::DEFAULT, &keys).unwrap();
/// let file = vec![0u8; 20 << 20];
/// let (mut fed, mut chunks) = (0, Vec::new());
/// while fed < file.len() {
///     fed += chunker.handle_bytes(&file[fed..]);
///     while let Some(chunk) = chunker.poll_chunk() {
///         chunks.push(chunk);
///     }
/// }
/// chunker.handle_eof();
/// while let Some(chunk) = chunker.poll_chunk() {
///     chunks.push(chunk);
/// }
/// assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), file.len());
/// ```
pub struct Chunker {
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    min: usize,
    avg: usize,
    max: usize,
    masks: (u64, u64, u64, u64),
    buf: BytesMut,
    eof: bool,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("min", &self.min)
            .field("avg", &self.avg)
            .field("max", &self.max)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Chunker {
    fn drop(&mut self) {
        self.gear.zeroize();
        self.gear_ls.zeroize();
    }
}

impl Chunker {
    /// A chunker with the repository's parameters and its keyed gear table.
    ///
    /// # Errors
    /// [`super::RepoError::InvalidConfig`] for parameters out of range.
    pub fn new(params: &ChunkerParams, keys: &RepoKeys) -> Result<Self, super::RepoError> {
        params.validate()?;
        let mut gear = Box::new([0u64; 256]);
        let mut xof = blake3::Hasher::new_keyed(&keys.chunker.0).finalize_xof();
        let mut word = [0u8; 8];
        for slot in gear.iter_mut() {
            xof.fill(&mut word);
            *slot = u64::from_le_bytes(word);
        }
        word.zeroize();
        let mut gear_ls = Box::new([0u64; 256]);
        for (shifted, value) in gear_ls.iter_mut().zip(gear.iter()) {
            *shifted = value << 1;
        }
        let level = match params.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        };
        let avg = params.avg_bytes as usize;
        let (mask_s, mask_l) = select_masks(avg, level);
        let max = params.max_bytes as usize;
        Ok(Self {
            gear,
            gear_ls,
            min: params.min_bytes as usize,
            avg,
            max,
            masks: (mask_s, mask_l, mask_s << 1, mask_l << 1),
            buf: BytesMut::with_capacity(max),
            eof: false,
        })
    }

    /// Takes bytes of the current stream, as many as fit before the next chunk must be
    /// polled (at most one maximum chunk is buffered); returns how many it took. Takes
    /// nothing after [`Self::handle_eof`] until the stream's last chunk was polled.
    pub fn handle_bytes(&mut self, data: &[u8]) -> usize {
        if self.eof {
            return 0;
        }
        let take = data.len().min(self.max - self.buf.len());
        // Chunks polled earlier share the buffer's allocation, so growing it means a new
        // one: take room for a whole maximum chunk at once, not for this piece only (a
        // fresh allocation per chunk costs its page faults every time).
        if self.buf.capacity() - self.buf.len() < take {
            self.buf.reserve(self.max);
        }
        self.buf.extend_from_slice(&data[..take]);
        take
    }

    /// Marks the end of the current stream: the buffered rest becomes the last chunk(s).
    pub fn handle_eof(&mut self) {
        self.eof = true;
    }

    /// The next complete chunk, if its cut point is known. After EOF it yields the rest and
    /// then `None`, and the chunker is ready for the next stream (an empty stream has no
    /// chunk).
    #[must_use]
    pub fn poll_chunk(&mut self) -> Option<Bytes> {
        if self.buf.is_empty() {
            self.eof = false;
            return None;
        }
        // Cut only with a maximum chunk buffered (or at EOF): every byte is then scanned
        // once, where scanning a partial buffer that holds no cut scans it again later.
        if self.buf.len() < self.max && !self.eof {
            return None;
        }
        let (mask_s, mask_l, mask_s_ls, mask_l_ls) = self.masks;
        let (_, cut) = cut_gear(
            &self.buf,
            self.min,
            self.avg,
            self.max,
            mask_s,
            mask_l,
            mask_s_ls,
            mask_l_ls,
            &self.gear[..],
            &self.gear_ls[..],
        );
        Some(self.buf.split_to(cut).freeze())
    }

    /// Bytes buffered but not yet cut.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }
}
