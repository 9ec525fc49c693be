//! [`RepoStoreError`]: why a repository operation was refused or failed. Refusals the
//! client caused (no repository, a bad object, a hash mismatch, missing blobs, unknown IDs,
//! too large) are distinct from server failures (backend, catalog, local files) so the
//! protocol layer can map each to its wire answer. No message includes object content.

use std::io;
use std::path::PathBuf;

use crate::backend::BackendError;
use crate::catalog::CatalogError;

/// Why a [`super::RepoStore`] operation did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoStoreError {
    /// The client has no repository yet (create one first).
    #[error("this client has no repository: create one first")]
    NoRepository,
    /// The client already has a repository (open it instead of creating another).
    #[error("this client already has a repository: open it instead of creating another")]
    Exists,
    /// An object does not parse (config, key object, pack header, snapshot envelope) or has
    /// another length than announced.
    #[error("object refused: {0}")]
    BadObject(String),
    /// The bytes do not hash to the ID they were sent under: nothing was stored.
    #[error(
        "object refused: its bytes hash to {actual}, not to the ID {expected} it was sent as; \
         nothing was stored (send it again)"
    )]
    HashMismatch {
        /// The ID the client claimed (hex).
        expected: String,
        /// The ID of the bytes received (hex).
        actual: String,
    },
    /// A snapshot names blobs that are not durably stored: it was not committed.
    #[error(
        "snapshot refused: {missing} of the blobs or reference chunks it names are not stored \
         (for example {example}); upload the missing packs, then commit it again"
    )]
    MissingBlobs {
        /// How many referenced blobs and reference chunks are missing.
        missing: u64,
        /// One of them (hex ID, and what it is).
        example: String,
    },
    /// No such blob or snapshot in this client's repository.
    #[error("no {what} {id} in this repository")]
    NotFound {
        /// `blob`, `snapshot` or `key object`.
        what: &'static str,
        /// Its ID (hex).
        id: String,
    },
    /// A stored object is missing or shorter than the index says: the server's storage
    /// was damaged (the scrub marks such packs; the client's `check` names what is lost).
    #[error(
        "{what} {id} cannot be read: {problem} on the server (damaged storage: run \
         `cyberbackup-client check --read-data` to see which files are affected; backing them \
         up again stores them anew)"
    )]
    Damaged {
        /// `blob` or `snapshot`.
        what: &'static str,
        /// Its ID (hex).
        id: String,
        /// What is wrong with the object holding it.
        problem: String,
    },
    /// The key object is the repository's only one: removing it would leave no way to open
    /// the repository.
    #[error(
        "this is the repository's last key object: removing it would leave no way to open the \
         repository; add another key (`key add`) before removing this one"
    )]
    LastKey,
    /// An object or a count is above the server's limit.
    #[error("{what} is {value}, above the limit of {max}")]
    TooLarge {
        /// What was counted (`object size`, `key objects`).
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A prune stopped before deleting anything: a snapshot's reference chunk could not be
    /// read or did not verify, so what is alive is not known.
    #[error(
        "prune stopped and deleted nothing: reference chunk {chunk} named by a snapshot {problem}; \
         run `cyberbackup-client check` on the owning client and repair or forget the snapshot"
    )]
    PruneUnsafe {
        /// The chunk (hex ID).
        chunk: String,
        /// What was wrong with it.
        problem: &'static str,
    },
    /// A retention policy the engine refuses (the config check normally catches it first).
    #[error(
        "retention policy refused: {0}; fix [retention] / [client_retention.NAME] in the config"
    )]
    Retention(String),
    /// The pack would take the client's stored bytes above its hard quota: refused before
    /// any byte was received. The message names the usage, the pack, the quota and the
    /// client.
    #[error("{message}")]
    QuotaExceeded {
        /// The whole explanation.
        message: String,
    },
    /// The storage backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A staging file operation failed.
    #[error("{op} {path} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl RepoStoreError {
    pub(super) fn io(op: &'static str, path: &std::path::Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io { op, path, source }
    }

    /// A blocking task working on `path` panicked or was cancelled.
    pub(super) fn task(path: &std::path::Path, e: &tokio::task::JoinError) -> Self {
        Self::Io {
            op: "run a blocking task on",
            path: path.to_path_buf(),
            source: io::Error::other(e.to_string()),
        }
    }
}
