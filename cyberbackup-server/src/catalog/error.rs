//! Errors of the SQLite catalog.

use std::path::PathBuf;

/// Everything that can go wrong in the catalog (`defensive.db`).
///
/// Messages say what failed and, where an operator can act, how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The directory holding the database could not be created.
    #[error(
        "cannot create catalog directory {path}: {source} — check the data directory is writable"
    )]
    CreateDir {
        /// Directory that could not be created.
        path: PathBuf,
        /// Underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// The database file could not be opened or configured.
    #[error(
        "cannot open catalog {path}: {source} — check the data directory is writable and the file is a SQLite database"
    )]
    Open {
        /// Path of the database file.
        path: PathBuf,
        /// Underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A schema migration failed; the database was left at the previous version.
    #[error(
        "catalog migration to schema version {version} failed: {source} — restore defensive.db from a backup or move it aside"
    )]
    Migrate {
        /// Version the migration was trying to reach.
        version: u32,
        /// Underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer server.
    #[error(
        "catalog schema version {found} is newer than this server supports ({supported}) — upgrade the server or use another data directory"
    )]
    SchemaTooNew {
        /// Version found in `schema_version`.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// A query failed.
    #[error("catalog operation {op} failed: {source}")]
    Query {
        /// Name of the catalog operation.
        op: &'static str,
        /// Underlying SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file row does not exist.
    #[error("catalog has no file row {row}")]
    NoSuchFile {
        /// The row id asked for.
        row: i64,
    },
    /// A file row is not in the state the operation needs.
    #[error("file row {row} is {found}, expected {expected}")]
    InvalidState {
        /// The row id.
        row: i64,
        /// State(s) the operation accepts.
        expected: &'static str,
        /// State found in the database.
        found: String,
    },
    /// A value does not fit the column (or a stored value does not fit the Rust type).
    #[error("catalog value {field} = {value} is out of range")]
    OutOfRange {
        /// Column or parameter name.
        field: &'static str,
        /// The offending value, printed.
        value: String,
    },
    /// The writer thread could not be started.
    #[error("cannot start the catalog writer thread: {0}")]
    SpawnWriter(#[source] std::io::Error),
    /// The catalog was closed (or its writer thread died); the server is stopping.
    #[error("catalog is closed — the server is shutting down")]
    Closed,
    /// A blocking read task panicked or was cancelled.
    #[error("catalog read task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Maps a rusqlite error to [`CatalogError::Query`] for operation `op`.
pub(crate) fn query_err(op: &'static str) -> impl FnOnce(rusqlite::Error) -> CatalogError {
    move |source| CatalogError::Query { op, source }
}
