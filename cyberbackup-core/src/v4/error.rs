//! Errors of v4 sessions: typed, comparable, each one saying what went wrong.

use super::noise::Fingerprint;
use super::wire::{ErrorCode, WireError};

/// Why a v4 session failed. Every variant ends the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum V4Error {
    /// The peer's bytes are not valid v4 frames or messages.
    #[error("malformed v4 data: {0}")]
    Wire(#[from] WireError),
    /// The Noise handshake failed (a tampered or relayed handshake, or a wrong key).
    #[error(
        "the v4 handshake failed at {stage}: {reason} (a relay in the middle or a corrupted connection)"
    )]
    Handshake {
        /// Which step.
        stage: &'static str,
        /// snow's reason.
        reason: String,
    },
    /// A transport frame did not authenticate: tampered, replayed, reordered or dropped.
    #[error(
        "a v4 frame failed authentication (tampered, replayed, reordered or dropped data); the connection was closed and nothing from it was committed"
    )]
    Decrypt,
    /// The server presented another static key than the pinned one.
    #[error(
        "the server's key changed: expected {expected}, got {found}. If the operator really replaced the server key, confirm the new fingerprint with them and update server_fingerprint in the identity file; otherwise someone may be intercepting the connection"
    )]
    ServerKeyChanged {
        /// The pinned fingerprint.
        expected: Fingerprint,
        /// The fingerprint the server presented.
        found: Fingerprint,
    },
    /// The peer sent a valid message at the wrong time or with impossible values.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The server refused the connection with a fatal error.
    #[error("the server refused: {message} [{code}]")]
    Refused {
        /// Error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server sent an unauthenticated notice and closed.
    #[error("the server said (unauthenticated): {0}")]
    Notice(String),
    /// The driver reported a storage failure (server) that ends the connection.
    #[error("storage failed: {reason}")]
    Storage {
        /// What failed.
        reason: String,
    },
    /// The driver reported a local failure (client: identity save, file read).
    #[error("{reason}")]
    Local {
        /// What failed.
        reason: String,
    },
    /// The local file changed size while it was being uploaded.
    #[error(
        "the file {name} changed while it was being uploaded (expected {expected} bytes); retry once it is stable"
    )]
    FileChanged {
        /// File name.
        name: String,
        /// Size announced.
        expected: u64,
    },
    /// The driver called the session out of turn (a bug in the driver).
    #[error("API misuse: {0}")]
    ApiMisuse(&'static str),
    /// The peer was silent longer than the timeout.
    #[error("the peer was silent for too long")]
    IdleTimeout,
    /// The connection closed before the session finished.
    #[error("the connection closed in the middle of the session")]
    ConnectionClosed,
}

impl V4Error {
    pub(crate) fn handshake(stage: &'static str, err: &snow::Error) -> Self {
        Self::Handshake {
            stage,
            reason: err.to_string(),
        }
    }
}

/// A storage or catalog failure reported by a driver; the reason is logged, never sent
/// (except that the disk is full, [`StorageFailure::full`]: the client is told so).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageFailure {
    /// What failed.
    pub reason: String,
}

impl StorageFailure {
    /// The reason of [`full`](Self::full).
    pub const FULL: &'static str = "server storage is full";

    /// The failure of an operation that found the server's disk full.
    #[must_use]
    pub fn full() -> Self {
        Self {
            reason: Self::FULL.to_owned(),
        }
    }

    /// Whether this is [`full`](Self::full).
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.reason == Self::FULL
    }
}

/// An operation the server refuses without closing (sent as a non-fatal `ERROR`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Error code.
    pub code: ErrorCode,
    /// Explanation for the user.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    #[must_use]
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
