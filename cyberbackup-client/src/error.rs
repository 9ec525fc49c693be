//! `ClientError`: every way a backup run can fail, each with a message that says what went
//! wrong and how to fix it, whether retrying can help, and the process exit code.

use std::io;
use std::path::PathBuf;

use cyberbackup_core::identity::IdentityError;
use cyberbackup_core::v3::SessionError;

use cyberbackup_core::v4::V4Error;
use cyberbackup_core::v4::wire::ErrorCode;

use crate::BackupReport;
use crate::v4::V4ClientError;

/// Exit code: every file was backed up and verified.
pub const EXIT_OK: u8 = 0;
/// Exit code: the run finished but at least one file failed.
pub const EXIT_FILES_FAILED: u8 = 1;
/// Exit code: bad command line, transfer.info or other configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the server could not be reached, closed the connection or broke the protocol.
pub const EXIT_NETWORK: u8 = 3;
/// Exit code: me.info could not be read or written, or the server refused our name.
pub const EXIT_IDENTITY: u8 = 4;
/// Exit code: the run was interrupted (Ctrl-C), as shells report SIGINT (128 + 2).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Why a backup run failed as a whole (a single file failing is a [`crate::FileReport`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The command line or configuration is unusable.
    #[error("{message}")]
    Usage {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// `transfer.info` (legacy mode) cannot be used.
    #[error("{path}: {message}")]
    TransferInfo {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The identity file exists but cannot be read or parsed.
    #[error(
        "cannot use the identity file {path}: {reason} — fix the file, or move it away to register again under a new name"
    )]
    Identity {
        /// The identity file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The identity file could not be written.
    #[error(
        "cannot save the identity file {path}: {source} — check that the directory exists and is writable, or choose another file with --identity"
    )]
    IdentitySave {
        /// The identity file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The identity file names another client than the one asked for.
    #[error(
        "the identity file {path} belongs to {found:?}, not {wanted:?} — pass --name {found:?}, or use --identity with another file to register {wanted:?}"
    )]
    NameMismatch {
        /// The identity file.
        path: PathBuf,
        /// The name in the file.
        found: String,
        /// The name asked for.
        wanted: String,
    },
    /// The server refused to register our name (1601).
    #[error(
        "the server refused to register the name {name:?}: it is already taken — run again with another --name, or restore the me.info of that client"
    )]
    NameTaken {
        /// The name.
        name: String,
    },
    /// The server answered every 1026 with 1607: it does not accept our public key.
    #[error(
        "the server {server} refused our public key (1607 to each of {attempts} requests 1026), so no files can be sent — it may not accept RSA-1024 keys in this form; check its log. The name is now registered there without a key: ask its operator to remove it, or use another --name and move the identity file away"
    )]
    PublicKeyRefused {
        /// `host:port`.
        server: String,
        /// Attempts made.
        attempts: u8,
    },
    /// No TCP connection could be made.
    #[error("cannot connect to {server}: {source} — is the server running and the address right?")]
    Connect {
        /// `host:port`.
        server: String,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The connection failed while in use.
    #[error("the connection to {server} failed: {source} — check the network and the server's log")]
    Network {
        /// `host:port`.
        server: String,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// The server closed the connection before the session finished.
    #[error(
        "the server {server} closed the connection while {during} — check the server's log; the run can be repeated safely"
    )]
    ConnectionClosed {
        /// `host:port`.
        server: String,
        /// What the client was doing.
        during: String,
    },
    /// The server stayed silent too long.
    #[error(
        "the server {server} did not answer for {seconds} s while {during} — is it overloaded or stuck?"
    )]
    Timeout {
        /// `host:port`.
        server: String,
        /// The response timeout in seconds.
        seconds: u64,
        /// What the client was doing.
        during: String,
    },
    /// The server answered 1607 to every attempt of a request.
    #[error(
        "server responded with an error {attempts} times to request {request}; giving up — check the server's log"
    )]
    ServerKeptFailing {
        /// The request code.
        request: u16,
        /// Attempts made.
        attempts: u8,
    },
    /// The server broke the protocol (or speaks another one).
    #[error("the server {server} broke the v3 protocol: {error} — is it a CyberBackup v3 server?")]
    Protocol {
        /// `host:port`.
        server: String,
        /// The session error.
        error: SessionError,
    },
    /// Reading a local file failed in the middle of sending it: that file failed and the
    /// connection had to be dropped (the client continues with the other files).
    #[error("a local file failed while it was being sent ({reason}); the connection was reset")]
    LocalFileAborted {
        /// What went wrong.
        reason: String,
    },
    /// Two files of one backup would be stored under the same name (v3 keeps only the base
    /// name, so the second would overwrite the first on the server). Nothing was sent.
    #[error(
        "{first} and {second} would both be stored as {name:?} (the server keeps only the base name), so one would overwrite the other — rename one of them or leave one out (e.g. with --exclude); nothing was sent"
    )]
    DuplicateName {
        /// The stored name both files map to.
        name: String,
        /// The first file with that name.
        first: PathBuf,
        /// The next file with that name.
        second: PathBuf,
    },
    /// A fatal error stopped a backup after some files were already settled; `report` says
    /// which files were verified (and which failed or were not sent). The exit code, kind
    /// and retryability are those of `cause`.
    #[error(
        "{cause} ({} of {} files were backed up before this; the report lists them)",
        .report.files.iter().filter(|file| file.verified).count(),
        .report.files.len()
    )]
    Incomplete {
        /// Every requested file: verified, failed, or `not sent` for those never settled.
        report: Box<BackupReport>,
        /// What stopped the run.
        #[source]
        cause: Box<Self>,
    },
    /// A protocol v4 run failed as a whole: connection, handshake, a fatal refusal, the
    /// identity or the pinned server key. The message adds what to do.
    #[error("{}", v4_message(server, error))]
    V4 {
        /// `host:port`.
        server: String,
        /// What failed.
        error: V4ClientError,
    },
    /// Reconnecting did not help.
    #[error("giving up after {attempts} connection attempts: {last}")]
    RetriesExhausted {
        /// Connection attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        last: Box<Self>,
    },
}

impl ClientError {
    /// Whether reconnecting (with backoff) may help.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::Network { .. }
            | Self::ConnectionClosed { .. }
            | Self::Timeout { .. }
            | Self::LocalFileAborted { .. } => true,
            Self::Usage { .. }
            | Self::TransferInfo { .. }
            | Self::Identity { .. }
            | Self::IdentitySave { .. }
            | Self::NameMismatch { .. }
            | Self::NameTaken { .. }
            | Self::PublicKeyRefused { .. }
            | Self::ServerKeptFailing { .. }
            | Self::Protocol { .. }
            | Self::DuplicateName { .. }
            | Self::RetriesExhausted { .. } => false,
            Self::Incomplete { cause, .. } => cause.is_retryable(),
            Self::V4 { error, .. } => error.is_transient(),
        }
    }

    /// Whether the server refused because too many clients registered (`rate_limited`): a
    /// retry then waits longer ([`RetryPolicy::rate_limited_delay`](crate::retry::RetryPolicy::rate_limited_delay)).
    #[must_use]
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Self::V4 { error, .. } if error.code() == Some(ErrorCode::RATE_LIMITED))
    }

    /// The process exit code for this error (see the `EXIT_*` constants).
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage { .. } | Self::TransferInfo { .. } | Self::DuplicateName { .. } => {
                EXIT_USAGE
            }
            Self::Identity { .. }
            | Self::IdentitySave { .. }
            | Self::NameMismatch { .. }
            | Self::NameTaken { .. }
            | Self::PublicKeyRefused { .. } => EXIT_IDENTITY,
            Self::Connect { .. }
            | Self::Network { .. }
            | Self::ConnectionClosed { .. }
            | Self::Timeout { .. }
            | Self::ServerKeptFailing { .. }
            | Self::Protocol { .. } => EXIT_NETWORK,
            Self::LocalFileAborted { .. } => EXIT_FILES_FAILED,
            Self::RetriesExhausted { last, .. } => last.exit_code(),
            Self::Incomplete { cause, .. } => cause.exit_code(),
            Self::V4 { error, .. } => error.exit_code(),
        }
    }

    /// A short machine-readable kind, used in JSON output.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Usage { .. } => "usage",
            Self::TransferInfo { .. } => "transfer_info",
            Self::Identity { .. } => "identity",
            Self::IdentitySave { .. } => "identity_save",
            Self::NameMismatch { .. } => "name_mismatch",
            Self::NameTaken { .. } => "name_taken",
            Self::PublicKeyRefused { .. } => "public_key_refused",
            Self::Connect { .. } => "connect",
            Self::Network { .. } => "network",
            Self::ConnectionClosed { .. } => "connection_closed",
            Self::Timeout { .. } => "timeout",
            Self::ServerKeptFailing { .. } => "server_error",
            Self::Protocol { .. } => "protocol",
            Self::LocalFileAborted { .. } => "local_file_aborted",
            Self::RetriesExhausted { .. } => "retries_exhausted",
            Self::DuplicateName { .. } => "duplicate_name",
            Self::Incomplete { cause, .. } => cause.kind(),
            Self::V4 { error, .. } => v4_kind(error),
        }
    }

    /// The files settled before a fatal error ([`ClientError::Incomplete`]), if any.
    #[must_use]
    pub fn partial_report(&self) -> Option<&BackupReport> {
        match self {
            Self::Incomplete { report, .. } => Some(report),
            _ => None,
        }
    }

    /// The error that stopped the run: `cause` of [`ClientError::Incomplete`], else `self`.
    #[must_use]
    pub fn cause(&self) -> &Self {
        match self {
            Self::Incomplete { cause, .. } => cause.cause(),
            other => other,
        }
    }

    pub(crate) fn identity(path: impl Into<PathBuf>, error: &IdentityError) -> Self {
        Self::Identity {
            path: path.into(),
            reason: error.to_string(),
        }
    }
}

/// The JSON `kind` of a v4 failure.
fn v4_kind(error: &V4ClientError) -> &'static str {
    match error {
        V4ClientError::Usage { .. } => "usage",
        V4ClientError::Identity(_) => "identity",
        V4ClientError::NameMismatch { .. } => "name_mismatch",
        V4ClientError::Network { .. } => "connect",
        V4ClientError::Failed(_) => "file_failed",
        V4ClientError::Local { .. } => "local_file",
        V4ClientError::Repo { .. } => "repository",
        V4ClientError::NoUsableKey { .. } => "no_usable_key",
        V4ClientError::SnapshotNotFound { .. } => "snapshot_not_found",
        V4ClientError::PathNotInSnapshot { .. } => "path_not_in_snapshot",
        V4ClientError::Corrupt { .. } => "corrupt",
        V4ClientError::Session(session) => match session {
            V4Error::ConnectionClosed => "connection_closed",
            V4Error::IdleTimeout => "timeout",
            V4Error::Decrypt => "tampered",
            V4Error::ServerKeyChanged { .. } => "server_key_changed",
            V4Error::Local { .. } | V4Error::FileChanged { .. } => "local_file_aborted",
            V4Error::Refused { code, .. } => match *code {
                ErrorCode::NAME_TAKEN => "name_taken",
                ErrorCode::UNKNOWN_CLIENT => "unknown_client",
                ErrorCode::ENROLLMENT_REQUIRED | ErrorCode::ENROLLMENT_INVALID => "enrollment",
                ErrorCode::RATE_LIMITED => "rate_limited",
                _ => "server_error",
            },
            _ => "protocol",
        },
    }
}

/// The message of a v4 failure: what happened, where, and what to do.
fn v4_message(server: &str, error: &V4ClientError) -> String {
    let V4ClientError::Session(session) = error else {
        return error.to_string();
    };
    match session {
        V4Error::ConnectionClosed | V4Error::IdleTimeout => format!(
            "the connection to {server} failed: {session} — check the network and the server's log; run the backup again to resume (the server keeps every checkpointed byte)"
        ),
        V4Error::Decrypt => format!(
            "the connection to {server} was corrupted: {session} — run again; if it keeps happening, something on the path alters the traffic"
        ),
        V4Error::ServerKeyChanged { .. } | V4Error::Local { .. } | V4Error::FileChanged { .. } => {
            session.to_string()
        }
        V4Error::Refused { code, .. } => {
            let hint = match *code {
                ErrorCode::UNKNOWN_CLIENT => {
                    "this server does not know the key of the identity file: use the identity registered there (--v4-identity), or move the file away to register anew"
                }
                ErrorCode::NAME_TAKEN => {
                    "another client has this name: run again with another --name (the identity file was not registered, so it takes the new name), or use that client's identity file with --v4-identity"
                }
                ErrorCode::ENROLLMENT_REQUIRED => {
                    "this server needs an enrollment token: ask its operator to run `cyberbackup-server enroll` and pass the token with --enroll-token"
                }
                ErrorCode::ENROLLMENT_INVALID => {
                    "the enrollment token is unknown, used or expired: ask the operator for a new one (`cyberbackup-server enroll`)"
                }
                ErrorCode::RATE_LIMITED => {
                    "the server is limiting registrations (too many from this address or in total): the client retried with growing pauses; wait a minute and run again, or raise --retries"
                }
                _ => "check the server's log",
            };
            format!("{server}: {session} — {hint}")
        }
        _ => format!(
            "the server {server} broke protocol v4: {session} — is it a CyberBackup v4 server? For a server that speaks only v3, use --protocol v3"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_errors_are_retryable_and_exit_3() {
        let err = ClientError::Connect {
            server: "127.0.0.1:1".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert!(err.is_retryable());
        assert_eq!(err.exit_code(), EXIT_NETWORK);
        assert!(err.to_string().contains("cannot connect to 127.0.0.1:1"));
        assert!(err.to_string().contains("is the server running"));
    }

    #[test]
    fn exhausted_retries_keep_the_cause_exit_code() {
        let last = ClientError::ConnectionClosed {
            server: "s:1".into(),
            during: "x".into(),
        };
        let err = ClientError::RetriesExhausted {
            attempts: 3,
            last: Box::new(last),
        };
        assert!(!err.is_retryable());
        assert_eq!(err.exit_code(), EXIT_NETWORK);
        let usage = ClientError::Usage {
            message: "m".into(),
        };
        assert_eq!(usage.exit_code(), EXIT_USAGE);
        assert!(!usage.is_retryable());
    }
}
