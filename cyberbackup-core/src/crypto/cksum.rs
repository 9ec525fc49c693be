//! POSIX `cksum` as a streaming hasher: CRC-32 (poly 0x04C11DB7, MSB first, init 0) over the
//! data, then over the byte length (least significant byte first, no trailing zero bytes),
//! then complemented. This is what the `cksum` command prints.

use crc::{CRC_32_CKSUM, Crc, Digest, Table};

static CKSUM_CRC: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_CKSUM);

/// Streaming POSIX cksum.
#[derive(Clone)]
pub struct Cksum {
    digest: Digest<'static, u32, Table<16>>,
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
            digest: CKSUM_CRC.digest(),
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
        self.digest.finalize()
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
}
