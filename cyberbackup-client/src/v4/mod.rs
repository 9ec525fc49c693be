//! Protocol v4 client (`docs/protocol-v4.md`): [`V4Client`] drives a
//! [`cyberbackup_core::v4::client::ClientSession`] over tokio TCP — connect (register on
//! first use, pin the server key), upload with resume, list versions, restore verified.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cyberbackup_client::v4::V4ClientError> {
//! use cyberbackup_client::v4::{V4Client, V4Options};
//! let options = V4Options::new("127.0.0.1:1256", "cyberbackup-v4.json".into())
//!     .with_name("alice");
//! let mut client = V4Client::connect(&options).await?;
//! let done = client.upload(std::path::Path::new("notes.txt"), None).await?;
//! let versions = client.list().await?;
//! client.restore("notes.txt", Some(done.version), std::path::Path::new("notes.restored")).await?;
//! client.close().await?;
//! # Ok(()) }
//! ```

mod backup;
pub mod cli;
mod connection;
pub mod identity;
mod remote;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cyberbackup_core::v4::V4Error;
use cyberbackup_core::v4::client::OpFailure;
use cyberbackup_core::v4::noise::Fingerprint;
use cyberbackup_core::v4::wire::ErrorCode;

pub use backup::backup;
pub use connection::{UploadOutcome, V4Client};
pub use identity::{DEFAULT_IDENTITY_FILE, V4Identity, V4IdentityError};

use crate::error::{EXIT_FILES_FAILED, EXIT_IDENTITY, EXIT_NETWORK, EXIT_USAGE};

/// How to reach the server and who we are.
#[derive(Debug, Clone)]
pub struct V4Options {
    /// Server address, `host:port`.
    pub server: String,
    /// The v4 identity file (created on first use).
    pub identity: PathBuf,
    /// Name to register under when the identity does not exist yet.
    pub name: Option<String>,
    /// Enrollment token for servers that require one.
    pub enroll_token: Option<String>,
    /// Fingerprint the server key must have (instead of trust on first use).
    pub server_fingerprint: Option<Fingerprint>,
    /// Silence from the server that fails the connection.
    pub response_timeout: Duration,
    /// Largest read of a file being uploaded.
    pub read_chunk_len: usize,
}

impl V4Options {
    /// Options for `server` with the identity at `identity`.
    #[must_use]
    pub fn new(server: impl Into<String>, identity: PathBuf) -> Self {
        Self {
            server: server.into(),
            identity,
            name: None,
            enroll_token: None,
            server_fingerprint: None,
            response_timeout: Duration::from_secs(60),
            read_chunk_len: cyberbackup_core::v4::client::DEFAULT_READ_CHUNK_LEN,
        }
    }

    /// Sets the name used to register a new identity.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The default identity path: `cyberbackup-v4.json` beside the v3 `me.info` default.
    ///
    /// # Errors
    /// [`V4ClientError::Usage`] when no home or config directory is known.
    pub fn default_identity_path() -> Result<PathBuf, V4ClientError> {
        let me_info = crate::identity::IdentityFile::default_location().map_err(|e| {
            V4ClientError::Usage {
                message: e.to_string(),
            }
        })?;
        Ok(identity_beside(me_info.path()))
    }
}

/// The v4 identity file beside a v3 identity file (`me.info`): `cyberbackup-v4.json` in
/// the same directory.
#[must_use]
pub fn identity_beside(me_info: &Path) -> PathBuf {
    me_info
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(DEFAULT_IDENTITY_FILE)
}

/// Errors of the v4 client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum V4ClientError {
    /// Bad arguments.
    #[error("{message}")]
    Usage {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The identity file cannot be used.
    #[error(transparent)]
    Identity(#[from] V4IdentityError),
    /// The identity file belongs to another client name than the one asked for.
    #[error(
        "the v4 identity file {path} belongs to {found:?}, not {wanted:?} — pass --name {found:?}, or use --v4-identity with another file to register {wanted:?}"
    )]
    NameMismatch {
        /// The identity file.
        path: PathBuf,
        /// The name in the file.
        found: String,
        /// The name asked for.
        wanted: String,
    },
    /// The server cannot be reached.
    #[error("cannot connect to {server}: {source} — is the server running and the address right?")]
    Network {
        /// The address.
        server: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The session failed (handshake, tampering, changed server key, refusal, timeout).
    #[error("{0}")]
    Session(#[from] V4Error),
    /// The server refused one operation.
    #[error("{0}")]
    Failed(#[from] OpFailure),
    /// A repository object did not decode, open or verify (snapshot engine).
    #[error("{context}: {source}")]
    Repo {
        /// Which object and why it was read (e.g. "snapshot 1a2b3c4d").
        context: String,
        /// The format error (it says what is wrong and what to do).
        #[source]
        source: Box<cyberbackup_core::repo::RepoError>,
    },
    /// No key object of the repository opens with what this machine has.
    #[error(
        "{reason} — give the repository's passphrase (CYBERBACKUP_PASSWORD or --password-file) to recover on this machine, or copy the device key file from a machine that can open it"
    )]
    NoUsableKey {
        /// Why (no device key file, wrong passphrase, ...).
        reason: String,
    },
    /// A snapshot argument names no snapshot, or more than one.
    #[error("{message} — run `snapshots` to see the IDs, and give a longer prefix or `latest`")]
    SnapshotNotFound {
        /// What was asked and what matched.
        message: String,
    },
    /// A path does not exist in a snapshot (or is not of the kind needed).
    #[error("{path} {reason} in snapshot {snapshot} — run `ls {snapshot}` to see what it holds")]
    PathNotInSnapshot {
        /// The path asked for.
        path: String,
        /// Short snapshot ID.
        snapshot: String,
        /// What is wrong ("is not", "is not a file").
        reason: &'static str,
    },
    /// A blob of a file failed verification on restore or dump: nothing was written under
    /// the file's name.
    #[error(
        "{path}: a blob failed verification ({source}); the file was not restored under its name — run `check --read-data`"
    )]
    Corrupt {
        /// The file being restored.
        path: String,
        /// The verification error.
        #[source]
        source: Box<cyberbackup_core::repo::RepoError>,
    },
    /// A local file cannot be read or written.
    #[error("{what} {path}: {source}")]
    Local {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl V4ClientError {
    /// The process exit code (as `docs/client.md`): 1 an operation failed, 2 usage,
    /// 3 network/protocol, 4 identity.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage { .. } => EXIT_USAGE,
            Self::Identity(_) | Self::NameMismatch { .. } => EXIT_IDENTITY,
            Self::Session(V4Error::Refused { code, .. })
                if matches!(
                    *code,
                    ErrorCode::NAME_TAKEN
                        | ErrorCode::UNKNOWN_CLIENT
                        | ErrorCode::ENROLLMENT_REQUIRED
                        | ErrorCode::ENROLLMENT_INVALID
                ) =>
            {
                EXIT_IDENTITY
            }
            Self::Session(V4Error::ServerKeyChanged { .. }) => EXIT_IDENTITY,
            Self::Network { .. } | Self::Session(_) => EXIT_NETWORK,
            Self::NoUsableKey { .. } => EXIT_IDENTITY,
            Self::SnapshotNotFound { .. } | Self::PathNotInSnapshot { .. } => EXIT_USAGE,
            Self::Failed(_) | Self::Local { .. } | Self::Repo { .. } | Self::Corrupt { .. } => {
                EXIT_FILES_FAILED
            }
        }
    }

    /// Whether reconnecting may help: network trouble, a corrupted connection, or the file
    /// still marked busy by a previous connection the server has not seen end yet.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Network { .. }
                | Self::Session(
                    V4Error::ConnectionClosed | V4Error::IdleTimeout | V4Error::Decrypt
                )
        ) || matches!(self.code(), Some(ErrorCode::BUSY | ErrorCode::RATE_LIMITED))
    }

    /// The server's error code, when the server refused.
    #[must_use]
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Failed(OpFailure::Refused { code, .. })
            | Self::Session(V4Error::Refused { code, .. }) => Some(*code),
            _ => None,
        }
    }
}

/// Uploads `path`, reconnecting up to `attempts` times after network failures; each retry
/// resumes from the server's last durable checkpoint. A hash mismatch after a resume (the
/// file changed between attempts) restarts the upload from 0 once.
///
/// # Errors
/// The last error when every attempt failed.
pub async fn upload_resuming(
    options: &V4Options,
    path: &Path,
    name: Option<&str>,
    attempts: u32,
) -> Result<UploadOutcome, V4ClientError> {
    let mut restart = false;
    let mut last = None;
    for attempt in 0..attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        let mut client = match V4Client::connect(options).await {
            Ok(client) => client,
            Err(err) if err.is_transient() => {
                last = Some(err);
                continue;
            }
            Err(err) => return Err(err),
        };
        match client.upload_with(path, name, restart).await {
            Ok(outcome) => {
                let _ = client.close().await;
                return Ok(outcome);
            }
            Err(err) if err.code() == Some(ErrorCode::HASH_MISMATCH) && !restart => {
                restart = true;
                last = Some(err);
            }
            Err(err) if err.is_transient() => last = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last.unwrap_or(V4ClientError::Usage {
        message: "no attempt was made".into(),
    }))
}
