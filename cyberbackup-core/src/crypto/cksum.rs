//! POSIX `cksum` as a streaming hasher: CRC-32 (poly 0x04C11DB7, MSB first, init 0) over the
//! data, then over the byte length (least significant byte first, no trailing zero bytes),
//! then complemented. This is what the `cksum` command prints.

use crc_fast::{CrcAlgorithm, Digest};

/// Streaming POSIX cksum. The CRC is `crc-fast`'s CRC-32/CKSUM (carry-less multiplication
/// where the CPU has it: ~6x the 16-table `crc` it replaced, which was 13-15 % of the v3
/// client's and server's CPU time; docs/benchmarks.md).
#[derive(Clone)]
pub struct Cksum {
    digest: Digest,
    len: u64,
}

impl std::fmt::Debug for Cksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cksum").field("len", &self.len).finish()
    }
}

impl Default for Cksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Cksum {
    /// A hasher over no bytes yet.
    #[must_use]
    pub fn new() -> Self {
        Self {
            digest: Digest::new(CrcAlgorithm::Crc32Cksum),
            len: 0,
        }
    }

    /// Feeds more data.
    pub fn update(&mut self, data: &[u8]) {
        self.digest.update(data);
        self.len += data.len() as u64;
    }

    /// Number of bytes fed so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no bytes were fed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The checksum as `cksum` prints it.
    #[must_use]
    pub fn finalize(mut self) -> u32 {
        let mut len = self.len;
        while len != 0 {
            self.digest.update(&[(len & 0xff) as u8]);
            len >>= 8;
        }
        // CRC-32/CKSUM is 32 bits wide: the upper half of crc-fast's u64 is always zero.
        u32::try_from(self.digest.finalize()).unwrap_or(u32::MAX)
    }

    /// Checksum of a whole buffer.
    #[must_use]
    pub fn of(data: &[u8]) -> u32 {
        let mut hasher = Self::new();
        hasher.update(data);
        hasher.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_values_gnu_cksum_prints() {
        assert_eq!(Cksum::of(b""), 4_294_967_295);
        assert_eq!(Cksum::of(b"a"), 1_220_704_766);
        assert_eq!(Cksum::of(b"abc"), 1_219_131_554);
        assert_eq!(Cksum::of(b"123456789"), 930_766_865);
        assert_eq!(
            Cksum::of(b"The quick brown fox jumps over the lazy dog"),
            2_074_844_392
        );
        assert_eq!(Cksum::of(&[0u8; 256]), 4_215_202_376);
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 31 + 7) as u8).collect();
        let mut hasher = Cksum::new();
        for chunk in data.chunks(777) {
            hasher.update(chunk);
        }
        assert_eq!(hasher.finalize(), Cksum::of(&data));
    }

    /// The SIMD CRC against the plain table-driven one over 3 MiB fed in uneven pieces
    /// (every length class and misalignment the vector loops have).
    #[test]
    fn equals_the_table_driven_crc_on_large_uneven_streams() {
        let reference = crc::Crc::<u32>::new(&crc::CRC_32_CKSUM);
        let data: Vec<u8> = (0..3 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut expected = reference.digest();
        let mut hasher = Cksum::new();
        let (mut at, mut step) = (0, 1);
        while at < data.len() {
            let end = (at + step).min(data.len());
            expected.update(&data[at..end]);
            hasher.update(&data[at..end]);
            (at, step) = (end, (step * 7 + 3) % 70_001);
        }
        let mut len = data.len() as u64;
        while len != 0 {
            expected.update(&[(len & 0xff) as u8]);
            len >>= 8;
        }
        assert_eq!(hasher.finalize(), expected.finalize());
    }
}
