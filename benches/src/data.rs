//! Input files: pseudo-random (incompressible, not deduplicable) content written in 1 MiB
//! pieces, so even a 3 GiB file never sits in the harness's memory.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Piece written at a time.
const PIECE_LEN: usize = 1024 * 1024;

/// xorshift64*: fast, deterministic, and good enough that neither compression nor
/// content-defined deduplication (restic) finds anything to save.
#[derive(Debug)]
pub(crate) struct Noise(u64);

impl Noise {
    /// A generator seeded with `seed` (any value; 0 is remapped).
    pub(crate) fn new(seed: u64) -> Self {
        Self((seed ^ 0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Overwrites `buf` with the next bytes.
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            let n = chunk.len();
            chunk.copy_from_slice(&word[..n]);
        }
    }
}

/// Writes `len` pseudo-random bytes to `path` (seeded with `seed`).
///
/// # Errors
/// The file cannot be created or written.
pub(crate) fn write_file(path: &Path, len: u64, seed: u64) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create the input file {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(PIECE_LEN, file);
    let mut noise = Noise::new(seed);
    let mut piece = vec![0u8; PIECE_LEN];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(PIECE_LEN as u64)).unwrap_or(PIECE_LEN);
        let buf = &mut piece[..n];
        noise.fill(buf);
        out.write_all(buf)
            .with_context(|| format!("cannot write {} (disk full?)", path.display()))?;
        left -= n as u64;
    }
    out.flush()
        .with_context(|| format!("cannot write {} (disk full?)", path.display()))?;
    Ok(())
}

/// Parses a size such as `1GiB`, `64MiB`, `4KiB`, `1G`, `512M` or a plain byte count.
///
/// # Errors
/// A message naming the accepted forms.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; use e.g. 1GiB, 64MiB, 4KiB or 1048576"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use B, KiB, MiB or GiB (powers of 1024)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `bytes` as a short human-readable size (`1.0 GiB`).
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("1TiB").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn written_file_has_the_length_and_no_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");

        write_file(&path, 3 * PIECE_LEN as u64 + 5, 7).unwrap();

        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 3 * PIECE_LEN + 5);
        assert_ne!(data[..PIECE_LEN], data[PIECE_LEN..2 * PIECE_LEN]);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1 << 30), "1.0 GiB");
    }
}
