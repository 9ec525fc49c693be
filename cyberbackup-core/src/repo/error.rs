//! Errors of the repository format: typed, comparable, each saying what is wrong and what
//! to do about it. Decoders return them instead of panicking.

use std::fmt;

use super::id::BlobId;

/// Which repository object an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObjectKind {
    /// The repository config object.
    Config,
    /// A key object (the wrapped master key).
    KeyObject,
    /// A sealed (compressed and encrypted) blob.
    SealedBlob,
    /// A pack's header or trailer.
    PackHeader,
    /// A tree (one directory).
    Tree,
    /// A snapshot object (envelope and sealed body).
    Snapshot,
    /// A reference chunk (part of a snapshot's reference list).
    RefChunk,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Config => "repository config",
            Self::KeyObject => "key object",
            Self::SealedBlob => "sealed blob",
            Self::PackHeader => "pack header",
            Self::Tree => "tree",
            Self::Snapshot => "snapshot",
            Self::RefChunk => "reference chunk",
        })
    }
}

/// Why a repository object could not be built, decoded or opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The object ends before a field it declares.
    #[error(
        "the {object} is truncated: {needed} more bytes were needed at offset {offset}; it is damaged or incomplete (fetch it again, or run `check`)"
    )]
    Truncated {
        /// Object being read.
        object: ObjectKind,
        /// Where the missing field starts.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// The object does not start (or, for packs, end) with its magic bytes.
    #[error(
        "not a {object}: the magic bytes are {found:02x?}, expected {expected:02x?} (an object of another kind, or corrupted)"
    )]
    BadMagic {
        /// Object being read.
        object: ObjectKind,
        /// The magic this format uses.
        expected: [u8; 4],
        /// What was there.
        found: [u8; 4],
    },
    /// The object has a format version this build does not read.
    #[error(
        "the {object} has format version {found}; this build reads version {supported} only: if a newer cyberbackup wrote it, upgrade to open this repository; if not, the object is damaged (`check --read-data` names what it affects)"
    )]
    UnsupportedVersion {
        /// Object being read.
        object: ObjectKind,
        /// Version found.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// A declared count or length is above its limit (docs/repository.md, "Limits").
    #[error("the {object} declares {what} = {value}, above the limit of {max}")]
    LimitExceeded {
        /// Object being read or built.
        object: ObjectKind,
        /// Which field.
        what: &'static str,
        /// Declared value.
        value: u64,
        /// Its limit.
        max: u64,
    },
    /// A field has an impossible value or the object is not in canonical form.
    #[error("the {object} is malformed: {reason}")]
    Malformed {
        /// Object being read or built.
        object: ObjectKind,
        /// What is wrong.
        reason: &'static str,
    },
    /// Bytes follow the end of the object.
    #[error("the {object} has {extra} unexpected bytes after its end (damaged, or not one object)")]
    TrailingBytes {
        /// Object being read.
        object: ObjectKind,
        /// How many.
        extra: usize,
    },
    /// Decryption or a MAC check failed.
    #[error(
        "the {object} failed authentication: it was modified, belongs to another repository, is of another blob kind than expected, or the key is wrong"
    )]
    Authentication {
        /// Object being opened.
        object: ObjectKind,
    },
    /// A key object could not be unwrapped with the passphrase or device key given.
    #[error(
        "the key object did not open: wrong passphrase or device key (or the key object is damaged); try again, or use another key object of this repository"
    )]
    WrongKey,
    /// A blob decrypted, but its plaintext does not hash to the ID it was asked for.
    #[error(
        "blob {expected} decrypted but its content hashes to {found}: the repository returned the wrong blob (run `check`)"
    )]
    IdMismatch {
        /// The ID asked for.
        expected: BlobId,
        /// The ID of the content.
        found: BlobId,
    },
    /// A compressed payload is invalid or would be larger than allowed.
    #[error(
        "the blob's compressed payload is invalid or would exceed {max} bytes (a damaged or hostile blob)"
    )]
    Decompress {
        /// The size limit for this blob kind.
        max: u64,
    },
    /// zstd could not compress (an invalid level or out of memory).
    #[error("compression failed: {reason}")]
    Compress {
        /// zstd's reason.
        reason: String,
    },
    /// Argon2 refused the parameters or could not run.
    #[error("the passphrase KDF failed: {reason}")]
    Kdf {
        /// argon2's reason.
        reason: String,
    },
    /// Repository parameters are out of range.
    #[error("invalid repository parameter: {reason}")]
    InvalidConfig {
        /// What is wrong and the allowed range.
        reason: String,
    },
    /// The caller broke a documented precondition (a bug in the driver).
    #[error("API misuse: {0}")]
    ApiMisuse(&'static str),
}
