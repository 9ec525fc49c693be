//! The keyed content-defined chunker: bytes in, in pieces of any size; chunks out.
//!
//! The cut search is FastCDC 2020 (normalized chunking, two bytes per step, the masks of
//! [`fastcdc::v2020::select_masks`]), run with a gear table derived from the repository's
//! chunker key (256 × u64 from BLAKE3's XOF) instead of the public table, so cut points, and
//! thus chunk sizes, depend on a secret: an observer of sizes cannot confirm that a known
//! file is stored. The crate's own seed option only XORs one `u64` into the public table, and
//! its streaming type reads from `std::io::Read`.
//!
//! The scan loop itself is written here, not called as [`fastcdc::v2020::cut_gear`], because
//! that function always starts at a chunk's minimum size with a zero hash: fed a stream in
//! pieces, it must either rescan the buffered bytes at every piece or wait for a maximum
//! chunk (8 MiB) before cutting, by which time the bytes have left the CPU's caches. This
//! loop keeps its position and hash between pieces, so each byte is scanned once, right after
//! it arrived, and a chunk is emitted as soon as its cut is found. The arithmetic is the
//! crate's, step for step; a test compares the two on random data and parameters.

use bytes::{Bytes, BytesMut};
use fastcdc::v2020::{Normalization, select_masks};
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
    /// The next pair of `buf` to test: bytes `2 * pair` and `2 * pair + 1`.
    pair: usize,
    /// The gear hash after the pairs before `pair`.
    hash: u64,
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
            pair: params.min_bytes as usize / 2,
            hash: 0,
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
        let cut = self.scan()?;
        self.pair = self.min / 2;
        self.hash = 0;
        Some(self.buf.split_to(cut).freeze())
    }

    /// Tests the pairs of `buf` not tested yet; returns the cut, if the buffered bytes decide
    /// it. A cut is the crate's: a pair's first byte `a` cuts at `a`, its second at `a + 1`,
    /// with the strict mask before the average size and the relaxed one after it; no cut
    /// before the minimum; the maximum, or the stream's end, when no pair cuts.
    fn scan(&mut self) -> Option<usize> {
        let len = self.buf.len();
        if len <= self.min {
            return self.eof.then_some(len);
        }
        let (mask_s, mask_l, mask_s_ls, mask_l_ls) = self.masks;
        let window = &self.buf[..len.min(self.max)];
        let pairs = window.len() / 2;
        let mut hash = self.hash;
        let mut pair = self.pair;
        // Two loops, as in the crate: the mask is fixed within each (a branch per pair on
        // which mask applies cost about 5 % of the scan's speed in `repo_chunker`).
        for (end, mask, mask_ls) in [
            ((self.avg / 2).min(pairs), mask_s, mask_s_ls),
            (pairs, mask_l, mask_l_ls),
        ] {
            while pair < end {
                let a = pair * 2;
                hash = (hash << 2).wrapping_add(self.gear_ls[usize::from(window[a])]);
                if hash & mask_ls == 0 {
                    return Some(a);
                }
                hash = hash.wrapping_add(self.gear[usize::from(window[a + 1])]);
                if hash & mask == 0 {
                    return Some(a + 1);
                }
                pair += 1;
            }
        }
        self.hash = hash;
        self.pair = pair;
        // No pair cut: the maximum, or at the stream's end everything (an odd last byte was
        // never part of a tested pair, as in the crate).
        (len >= self.max || self.eof).then_some(window.len())
    }

    /// Bytes buffered but not yet cut.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::MasterKey;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    /// The cuts of `fastcdc::v2020::cut_gear` over the whole stream at once, with the
    /// chunker's keyed tables: what the resumable loop must reproduce.
    fn crate_cuts(chunker: &Chunker, data: &[u8]) -> Vec<usize> {
        let (mask_s, mask_l, mask_s_ls, mask_l_ls) = chunker.masks;
        let mut cuts = Vec::new();
        let mut start = 0;
        while start < data.len() {
            let (_, cut) = fastcdc::v2020::cut_gear(
                &data[start..],
                chunker.min,
                chunker.avg,
                chunker.max,
                mask_s,
                mask_l,
                mask_s_ls,
                mask_l_ls,
                &chunker.gear[..],
                &chunker.gear_ls[..],
            );
            cuts.push(cut);
            start += cut;
        }
        cuts
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn the_resumable_scan_cuts_where_the_crates_cut_gear_does(
            seed in any::<u64>(),
            len in 0usize..400_000,
            min_log in 9u32..12,
            normalization in 0u8..4,
            pieces in proptest::collection::vec(1usize..70_000, 1..6),
            // Low-entropy data too: long runs find no cut and reach the maximum.
            runs in any::<bool>(),
        ) {
            let min = 1u32 << min_log;
            let params = ChunkerParams {
                min_bytes: min,
                avg_bytes: min * 4,
                max_bytes: min * 32 + 2,
                normalization,
            };
            let keys = MasterKey::from_bytes([0x5A; 32]).derive();
            let mut chunker = Chunker::new(&params, &keys).unwrap();
            let mut data = vec![0u8; len];
            ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut data);
            if runs {
                for (i, byte) in data.iter_mut().enumerate() {
                    if (i / 5000) % 2 == 0 {
                        *byte = 0;
                    }
                }
            }
            let expected = crate_cuts(&chunker, &data);
            let mut got = Vec::new();
            let mut fed = 0;
            for size in pieces.iter().cycle() {
                if fed == data.len() {
                    break;
                }
                let end = (fed + size).min(data.len());
                let mut piece = &data[fed..end];
                while !piece.is_empty() {
                    let taken = chunker.handle_bytes(piece);
                    piece = &piece[taken..];
                    fed += taken;
                    while let Some(chunk) = chunker.poll_chunk() {
                        got.push(chunk.len());
                    }
                }
            }
            chunker.handle_eof();
            while let Some(chunk) = chunker.poll_chunk() {
                got.push(chunk.len());
            }
            prop_assert_eq!(got, expected);
        }
    }
}
