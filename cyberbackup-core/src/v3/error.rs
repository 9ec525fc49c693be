//! Session errors: typed, comparable, and each knows the response (if any) to send.

use crate::crypto::CryptoError;
use crate::names::InvalidFileName;
use crate::v3::codec::DecodeError;
use crate::v3::frame::ResponseCode;

/// Why a session failed or refused a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer's bytes are not valid frames.
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    /// A cryptographic operation failed.
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    /// The peer broke the protocol's rules.
    #[error("protocol violation: {0}")]
    PeerMisbehaved(#[from] PeerMisbehaved),
    /// The driver called the session out of turn (a bug in the driver).
    #[error("API misuse: {0}")]
    ApiMisuse(&'static str),
    /// The server's storage or catalog failed (reported by the driver).
    #[error("server storage failed: {reason}")]
    Storage {
        /// What failed.
        reason: String,
    },
    /// A local file could not be read (reported by the client's driver).
    #[error("cannot read the local file: {reason}")]
    LocalFile {
        /// What failed.
        reason: String,
    },
    /// The peer was silent longer than the idle timeout.
    #[error("the peer was idle for too long")]
    IdleTimeout,
    /// The connection closed before the session finished.
    #[error("the connection closed in the middle of the session")]
    ConnectionClosed,
    /// The server refused registration: the name is taken (1601).
    #[error("the server refused the registration: the name {name:?} is already registered")]
    NameTaken {
        /// The name refused.
        name: String,
    },
    /// The server answered 1607 to every 1026: it does not accept our public key (the name
    /// is registered, but without a key).
    #[error(
        "the server refused our public key (1607 to each of {attempts} requests 1026): the name is registered there, but without a key"
    )]
    PublicKeyRefused {
        /// Attempts made.
        attempts: u8,
    },
    /// The server answered 1607 to every attempt of a request.
    #[error("the server responded with an error {attempts} times to request {request}; giving up")]
    ServerKeptFailing {
        /// The request code that failed.
        request: u16,
        /// Attempts made.
        attempts: u8,
    },
    /// The server answered something the client did not expect at this point.
    #[error("unexpected response {code} from the server while waiting for {expected}")]
    UnexpectedResponse {
        /// Code received.
        code: u16,
        /// What the client was waiting for.
        expected: &'static str,
    },
    /// A local file yielded a different number of bytes than announced.
    #[error(
        "file {name:?} changed while it was being sent ({expected} bytes expected, {actual} read)"
    )]
    FileChanged {
        /// The file's name.
        name: String,
        /// Length announced at the start.
        expected: u64,
        /// Bytes actually read.
        actual: u64,
    },
}

impl SessionError {
    /// The response a server sends before closing for this error, if any.
    #[must_use]
    pub fn response(&self) -> Option<ResponseCode> {
        match self {
            Self::Decode(DecodeError::Truncated { .. })
            | Self::IdleTimeout
            | Self::ConnectionClosed
            | Self::ApiMisuse(_) => None,
            Self::Decode(_) | Self::Crypto(_) | Self::PeerMisbehaved(_) | Self::Storage { .. } => {
                Some(ResponseCode::SERVER_ERROR)
            }
            Self::NameTaken { .. }
            | Self::PublicKeyRefused { .. }
            | Self::ServerKeptFailing { .. }
            | Self::UnexpectedResponse { .. }
            | Self::LocalFile { .. }
            | Self::FileChanged { .. } => None,
        }
    }
}

/// A rule of the protocol the peer broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerMisbehaved {
    /// A file arrived before a key exchange (1026 or 1027) on this connection.
    #[error("file sent before the key exchange (send 1026 or 1027 first)")]
    FileBeforeKeyExchange,
    /// 1026 named a client this connection has not registered or reconnected.
    #[error("public key sent for an unknown client or with a name that does not match")]
    UnknownClientForKey,
    /// The client name is empty, too long or contains a NUL.
    #[error("invalid client name")]
    InvalidClientName,
    /// The file name cannot be a file name.
    #[error("invalid file name: {0}")]
    InvalidFileName(InvalidFileName),
    /// Packet numbering is wrong (0, above the total, repeated or out of order).
    #[error("packet {got} of {total} arrived where packet {expected} was expected")]
    BadPacketNumber {
        /// Packet number received.
        got: u16,
        /// Packet number expected.
        expected: u16,
        /// Total packets announced.
        total: u16,
    },
    /// A later packet's metadata disagrees with the first packet's.
    #[error("packet {packet} changes the file's metadata ({field})")]
    MetadataChanged {
        /// The packet number.
        packet: u16,
        /// The field that changed.
        field: &'static str,
    },
    /// The content length disagrees with `content_size`.
    #[error("content of {got} bytes does not match content_size {announced}")]
    ContentSizeMismatch {
        /// Ciphertext bytes received.
        got: u64,
        /// Ciphertext bytes announced.
        announced: u64,
    },
    /// The decrypted file's length disagrees with `orig_file_size`.
    #[error("decrypted {got} bytes but orig_file_size says {announced}")]
    PlaintextSizeMismatch {
        /// Plaintext bytes decrypted.
        got: u64,
        /// Plaintext bytes announced.
        announced: u64,
    },
    /// The file is larger than the server accepts.
    #[error("file of {len} bytes exceeds the server's limit of {max} bytes")]
    FileTooLarge {
        /// Announced plaintext length.
        len: u64,
        /// Configured limit.
        max: u64,
    },
    /// A CRC verdict arrived with no file waiting for one.
    #[error("CRC verdict {code} without a received file")]
    VerdictWithoutFile {
        /// The request code.
        code: u16,
    },
}
