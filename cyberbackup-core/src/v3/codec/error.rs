//! Decoding errors: typed, comparable, and each knows whether the peer deserves a 1607.

/// Why bytes from the peer could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The header's version byte is not one this library speaks.
    #[error("unsupported protocol version {version} (this peer speaks version 3)")]
    UnsupportedVersion {
        /// The version byte received.
        version: u8,
    },
    /// The request code is not defined by the protocol.
    #[error("unknown request code {code}")]
    UnknownRequestCode {
        /// The code received.
        code: u16,
    },
    /// The response code is not defined by the protocol.
    #[error("unknown response code {code}")]
    UnknownResponseCode {
        /// The code received.
        code: u16,
    },
    /// The header announces more payload than this code may carry.
    #[error("payload of {len} bytes is too large for code {code} (at most {max})")]
    PayloadTooLarge {
        /// The code of the frame.
        code: u16,
        /// The announced payload length.
        len: u64,
        /// The largest payload accepted for this code.
        max: u64,
    },
    /// The header announces less payload than this code needs.
    #[error("payload of {len} bytes is too short for code {code} (at least {min})")]
    PayloadTooShort {
        /// The code of the frame.
        code: u16,
        /// The announced payload length.
        len: usize,
        /// The smallest payload accepted for this code.
        min: usize,
    },
    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame ({missing} more bytes were expected)")]
    Truncated {
        /// Bytes still expected when the stream ended (at least this many).
        missing: u64,
    },
}
