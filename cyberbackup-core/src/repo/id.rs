//! The 32-byte identifiers of the repository and the two type tags: the server-readable
//! [`BlobClass`] of a pack entry.

use std::fmt;
use std::str::FromStr;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw bytes.
            #[must_use]
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lower-case hex, 64 characters.
            #[must_use]
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            /// Parses 64 hex characters.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| IdParseError { len: s.len() })?;
                Ok(Self(out))
            }
        }
    };
}

id_type!(
    /// A blob's ID: for sealed blobs the keyed BLAKE3 hash of the plaintext (so equal content
    /// has one ID within a repository and IDs say nothing across repositories); for reference
    /// chunks the unkeyed, domain-separated BLAKE3 hash of their bytes (the server verifies it).
    BlobId
);
id_type!(
    /// A pack's ID: the plain BLAKE3 hash of the whole pack's bytes, checked by the storage
    /// layer on every put and by scrubbing.
    PackId
);
id_type!(
    /// A snapshot's ID: the domain-separated BLAKE3 hash of the whole snapshot object.
    SnapshotId
);

/// A string that is not 64 hex characters was given as an ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an ID is 64 hexadecimal characters; this has {len} characters or a non-hex character")]
pub struct IdParseError {
    /// Length of the string given.
    pub len: usize,
}

/// What a pack entry is, as the server sees it. Sealed data and tree blobs share one class,
/// so the server cannot count directories or tell metadata from content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum BlobClass {
    /// A compressed, encrypted data or tree blob (opaque to the server).
    Sealed,
    /// A cleartext reference chunk (blob IDs a snapshot keeps alive).
    RefChunk,
}

impl BlobClass {
    /// The wire byte (do not modify).
    #[must_use]
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Sealed => 1,
            Self::RefChunk => 2,
        }
    }

    /// Parses the wire byte.
    #[must_use]
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Sealed),
            2 => Some(Self::RefChunk),
            _ => None,
        }
    }
}
