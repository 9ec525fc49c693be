//! [`Upload`]: the durable offset of a resumable upload, as plain data the caller persists.

use blake3::hazmat::ChainingValue;
use bytes::Bytes;

use super::hash::{self, PartHash};
use super::{BackendError, ContentHash, ObjectKey};

/// S3's limit on the parts of one multipart upload.
const MAX_PARTS: usize = 10_000;

/// An upload in progress: the backend's upload id and the parts stored so far. It is the
/// durable offset of the upload: serialize it (serde) after every
/// [`Backend::upload_part`](super::Backend::upload_part), and after a restart hand it back
/// to a backend with the same configuration to continue where it stopped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Upload {
    key: ObjectKey,
    id: String,
    part_len: u64,
    parts: Vec<UploadedPart>,
    /// The first part's root hash: the object's hash while it is the only part.
    first_part_root: Option<ContentHash>,
}

/// One part stored by an [`Upload`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadedPart {
    /// The store's identifier of the part (the S3 `ETag`; empty on the local backend).
    pub etag: String,
    /// Its length in bytes.
    pub len_bytes: u64,
    /// BLAKE3 chaining value of its subtree, hex.
    chaining_value: String,
}

impl Upload {
    pub(crate) fn new(key: ObjectKey, id: String, part_len: u64) -> Self {
        Self {
            key,
            id,
            part_len,
            parts: Vec::new(),
            first_part_root: None,
        }
    }

    /// The key the object will have.
    #[must_use]
    pub fn key(&self) -> &ObjectKey {
        &self.key
    }

    /// The backend's upload id (the S3 `UploadId`, or the local temp file's name).
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The parts stored so far.
    #[must_use]
    pub fn parts(&self) -> &[UploadedPart] {
        &self.parts
    }

    /// Bytes stored so far: where the next part starts.
    #[must_use]
    pub fn len_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.len_bytes).sum()
    }

    /// Checks that `data` may be the next part for a backend with `part_len`.
    pub(crate) fn check_next_part(&self, part_len: u64, data: &Bytes) -> Result<(), BackendError> {
        let invalid = |reason: String| BackendError::InvalidUpload {
            key: self.key.clone(),
            reason,
        };
        if self.part_len != part_len {
            return Err(invalid(format!(
                "it was started with {}-byte parts but this backend uses {part_len}-byte parts \
                 (resume it with the configuration it was started with)",
                self.part_len
            )));
        }
        if self.parts.last().is_some_and(|p| p.len_bytes < part_len) {
            return Err(invalid(
                "its last part was shorter than the part length, so it is complete: \
                 call complete_upload"
                    .into(),
            ));
        }
        if data.is_empty() || data.len() as u64 > part_len {
            return Err(invalid(format!(
                "a part has {} bytes; parts are 1 to {part_len} bytes, and only the last may be \
                 shorter than {part_len}",
                data.len()
            )));
        }
        if self.parts.len() >= MAX_PARTS {
            return Err(invalid(format!(
                "it already has {MAX_PARTS} parts, the most an upload may have"
            )));
        }
        Ok(())
    }

    /// Records a stored part.
    pub(crate) fn push_part(&mut self, etag: String, len_bytes: u64, hash: PartHash) {
        if self.parts.is_empty() {
            self.first_part_root = hash.root_if_only;
        }
        self.parts.push(UploadedPart {
            etag,
            len_bytes,
            chaining_value: hex::encode(hash.chaining_value),
        });
    }

    /// The hash of the object the parts make, checked against `expected`.
    pub(crate) fn verify(&self, expected: ContentHash) -> Result<(), BackendError> {
        if self.parts.is_empty() {
            return Err(BackendError::InvalidUpload {
                key: self.key.clone(),
                reason: "it has no parts (store an empty object with put)".into(),
            });
        }
        let damaged = || BackendError::InvalidUpload {
            key: self.key.clone(),
            reason: "its recorded parts are damaged (start the upload again)".into(),
        };
        let (last, full) = self.parts.split_last().ok_or_else(damaged)?;
        if last.len_bytes > self.part_len || full.iter().any(|p| p.len_bytes != self.part_len) {
            return Err(damaged());
        }
        let mut chaining_values: Vec<ChainingValue> = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            let mut cv = [0u8; 32];
            hex::decode_to_slice(&part.chaining_value, &mut cv).map_err(|_| damaged())?;
            chaining_values.push(cv);
        }
        let actual = hash::combine(
            &chaining_values,
            self.first_part_root,
            self.part_len,
            self.len_bytes(),
        )
        .ok_or_else(damaged)?;
        if actual != expected {
            return Err(BackendError::HashMismatch {
                key: self.key.clone(),
                expected,
                actual,
            });
        }
        Ok(())
    }
}
