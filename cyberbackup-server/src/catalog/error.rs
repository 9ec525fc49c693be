//! Errors of the catalog (SQLite or PostgreSQL).

use std::path::PathBuf;

use super::sql::{Engine, SqlError};

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
    /// The database file could not be created with mode 0600, or made private.
    #[error(
        "cannot make catalog file {path} private (mode 0600): {source} — check that the server user owns the data directory"
    )]
    Private {
        /// The file.
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
        /// Underlying engine error.
        #[source]
        source: SqlError,
    },
    /// The PostgreSQL catalog could not be reached, or refused the login.
    #[error(
        "cannot connect to the catalog database {target}: {source} — check that the PostgreSQL server is running and reachable, the URL's user, password and database name, and with sslmode=require that the server's certificate is for this host name and signed by a trusted certificate (sslrootcert=FILE in the URL, else the system's roots)"
    )]
    Connect {
        /// The database's URL, without its password.
        target: String,
        /// Underlying PostgreSQL error.
        #[source]
        source: SqlError,
    },
    /// `catalog copy` was pointed at a catalog that already has clients.
    #[error(
        "the target catalog {target} already holds {clients} client(s): a copy goes into an empty catalog only — point --to at a new database (createdb), or drop this one if it is a failed earlier copy"
    )]
    TargetNotEmpty {
        /// The target, without its password.
        target: String,
        /// Its clients.
        clients: i64,
    },
    /// An operation only one engine has was asked of the other.
    #[error("{what} is not available on a {engine} catalog — {instead}")]
    Unsupported {
        /// The operation.
        what: &'static str,
        /// The catalog's engine.
        engine: Engine,
        /// What to do instead.
        instead: &'static str,
    },
    /// A schema migration failed; the database was left at the previous version.
    #[error(
        "catalog migration to schema version {version} failed: {source} — restore defensive.db from a backup or move it aside"
    )]
    Migrate {
        /// Version the migration was trying to reach.
        version: u32,
        /// Underlying engine error.
        #[source]
        source: SqlError,
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
        /// Underlying engine error.
        #[source]
        source: SqlError,
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
    /// The data directory holds stored files or a v4 server key, but no catalog.
    #[error(
        "no catalog at {path}, but the data directory holds {found}: the catalog was deleted or lost, and starting on an empty one would hide every stored file — restore defensive.db from a backup, or run `cyberbackup-server catalog rebuild` (same --data-dir) to re-register the stored files from disk (docs/operations.md, \"Catalog recovery\")"
    )]
    Missing {
        /// Where the catalog should be.
        path: PathBuf,
        /// What was found instead, e.g. "stored files of 2 client(s) under …".
        found: String,
    },
    /// The catalog fails `PRAGMA quick_check` or cannot be read as a database.
    #[error(
        "catalog {path} is damaged ({detail}) — stop the server and restore defensive.db from a backup, or run `cyberbackup-server catalog rebuild` to rebuild it from the stored files; to start on it anyway, accepting errors and lost rows, set allow_damaged_catalog = true (CYBERBACKUP_ALLOW_DAMAGED_CATALOG=true)"
    )]
    Damaged {
        /// Path of the database file.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// Stored files belong to clients the catalog does not know (rows lost, e.g. with the
    /// WAL after a crash).
    #[error(
        "catalog {path} does not know the clients of {clients} stored file director(ies) (e.g. {}): it lost rows (a deleted or truncated file, its -wal lost after a crash, or a new empty database) — restore the catalog from a backup, or run `cyberbackup-server catalog rebuild`; to start anyway set allow_damaged_catalog = true", example.display()
    )]
    Unreferenced {
        /// The catalog (its file, or its database URL without the password).
        path: String,
        /// How many client directories are unknown.
        clients: usize,
        /// One of them.
        example: PathBuf,
    },
    /// `catalog rebuild` could not move the old catalog aside or read the stored files.
    #[error(
        "catalog rebuild: cannot read or move {path}: {source} — check the data directory's permissions and that the server is stopped"
    )]
    Rebuild {
        /// The file or directory.
        path: PathBuf,
        /// Underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// `catalog backup` could not write its copy.
    #[error("catalog backup: cannot write {path}: {source} — {fix}")]
    Backup {
        /// The backup file.
        path: PathBuf,
        /// Underlying IO error.
        #[source]
        source: std::io::Error,
        /// What to do about it.
        fix: &'static str,
    },
    /// A blocking read task panicked or was cancelled.
    #[error("catalog read task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Maps a rusqlite error to [`CatalogError::Query`] for operation `op`.
pub(crate) fn query_err<E: Into<SqlError>>(op: &'static str) -> impl FnOnce(E) -> CatalogError {
    move |source| CatalogError::Query {
        op,
        source: source.into(),
    }
}
