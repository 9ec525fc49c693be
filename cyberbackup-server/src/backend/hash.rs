//! [`ContentHash`] (BLAKE3 of an object's bytes) and the hash of an object uploaded in parts.
//!
//! An upload that resumes after a restart cannot re-read its earlier parts (S3 keeps the
//! parts of an unfinished multipart upload unreadable), yet the whole object's BLAKE3 hash
//! must be checked before it becomes visible. BLAKE3 is a tree hash, so each part's
//! *chaining value* is recorded when it is stored, and the root is rebuilt from them here
//! with the `blake3::hazmat` API. This is hand-written because no crate does it: parts have
//! one power-of-two length `P` (a multiple of BLAKE3's 1 KiB chunk), so every subtree of the
//! BLAKE3 tree that is no longer than `P` is exactly one part (left subtrees are powers of
//! two aligned to their size; the rightmost path ends at the last part), and larger
//! subtrees are merges of smaller ones. The tests compare against `blake3::hash` for many
//! lengths and part sizes.

use std::fmt;

use blake3::hazmat::{ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root};

/// The BLAKE3 hash (32 bytes) of an object's bytes: the only hash algorithm of the backend
/// contract, the one the repository format uses for whole-pack hashes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ContentHash([u8; 32]);

impl ContentHash {
    /// The hash of `bytes`.
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// A hash given as 32 bytes.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hex digits.
    ///
    /// # Errors
    /// A message when `hex` is not 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<Self, String> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes)
            .map_err(|e| format!("a BLAKE3 hash is 64 hex digits ({e}): {hex:?}"))?;
        Ok(Self(bytes))
    }
}

impl From<blake3::Hash> for ContentHash {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

impl From<ContentHash> for String {
    fn from(hash: ContentHash) -> Self {
        hash.to_string()
    }
}

impl TryFrom<String> for ContentHash {
    type Error = String;

    fn try_from(hex: String) -> Result<Self, String> {
        Self::from_hex(&hex)
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({self})")
    }
}

/// What is recorded of one stored part: the chaining value of its subtree, and for the first
/// part also its root hash (the object's hash if it stays the only part).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartHash {
    pub(crate) chaining_value: ChainingValue,
    pub(crate) root_if_only: Option<ContentHash>,
}

/// Hashes one part that starts `offset` bytes into the object.
pub(crate) fn hash_part(offset: u64, data: &[u8]) -> PartHash {
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    hasher.update(data);
    PartHash {
        chaining_value: hasher.finalize_non_root(),
        root_if_only: (offset == 0).then(|| hasher.finalize().into()),
    }
}

/// The object's hash from its parts' chaining values (`chaining_values[i]` covers bytes
/// `i * part_len ..`), `len_bytes` in all. `None` if the parts do not fit that shape.
pub(crate) fn combine(
    chaining_values: &[ChainingValue],
    only_part_root: Option<ContentHash>,
    part_len: u64,
    len_bytes: u64,
) -> Option<ContentHash> {
    if chaining_values.len() <= 1 {
        return only_part_root;
    }
    let left = left_subtree_len(len_bytes);
    let left_cv = subtree(chaining_values, part_len, 0, left)?;
    let right_cv = subtree(chaining_values, part_len, left, len_bytes - left)?;
    Some(blake3::hazmat::merge_subtrees_root(&left_cv, &right_cv, Mode::Hash).into())
}

fn subtree(
    chaining_values: &[ChainingValue],
    part_len: u64,
    offset: u64,
    len: u64,
) -> Option<ChainingValue> {
    if len <= part_len {
        if offset % part_len != 0 {
            return None;
        }
        let index = usize::try_from(offset / part_len).ok()?;
        return chaining_values.get(index).copied();
    }
    let left = left_subtree_len(len);
    let left_cv = subtree(chaining_values, part_len, offset, left)?;
    let right_cv = subtree(chaining_values, part_len, offset + left, len - left)?;
    Some(merge_subtrees_non_root(&left_cv, &right_cv, Mode::Hash))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn by_parts(data: &[u8], part_len: usize) -> Option<ContentHash> {
        let parts: Vec<PartHash> = data
            .chunks(part_len)
            .enumerate()
            .map(|(i, part)| hash_part((i * part_len) as u64, part))
            .collect();
        let cvs: Vec<ChainingValue> = parts.iter().map(|p| p.chaining_value).collect();
        let root = parts.first().and_then(|p| p.root_if_only);
        combine(&cvs, root, part_len as u64, data.len() as u64)
    }

    #[expect(clippy::cast_possible_truncation, reason = "i * 31 % 251 is below 256")]
    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn part_hashes_combine_to_the_whole_hash_at_the_edges() {
        for part_len in [1024usize, 2048, 8192] {
            for len in [
                1,
                part_len - 1,
                part_len,
                part_len + 1,
                2 * part_len,
                2 * part_len + 1,
                3 * part_len,
                3 * part_len + 7,
                4 * part_len,
                5 * part_len - 1,
                7 * part_len + 1,
                8 * part_len,
                9 * part_len + 3,
            ] {
                let bytes = data(len);
                assert_eq!(
                    by_parts(&bytes, part_len),
                    Some(ContentHash::of(&bytes)),
                    "len {len}, part {part_len}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn part_hashes_combine_to_the_whole_hash(len in 1usize..40_000, shift in 10u32..13) {
            let part_len = 1usize << shift;
            let bytes = data(len);
            prop_assert_eq!(by_parts(&bytes, part_len), Some(ContentHash::of(&bytes)));
        }
    }

    #[test]
    fn a_missing_part_gives_no_hash() {
        let cvs = [hash_part(0, &[1; 1024]).chaining_value];
        assert_eq!(combine(&cvs, None, 1024, 1024 * 3), None);
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let hash = ContentHash::of(b"pack");
        assert_eq!(ContentHash::from_hex(&hash.to_string()), Ok(hash));
        assert!(ContentHash::from_hex("zz").is_err());
    }
}
