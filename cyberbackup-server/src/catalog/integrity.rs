//! The catalog's start-up integrity check: a data directory whose catalog is missing, fails
//! `PRAGMA quick_check`, or does not know the clients whose files are stored is refused
//! instead of being served as an empty (or partial) catalog. The messages give the recovery
//! steps: restore `defensive.db` from a backup, or `cyberbackup-server catalog rebuild`
//! ([`super::rebuild`]).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _};

use super::sql::{Conn, OptionalExtension as _, SqlError};

use super::{Catalog, CatalogError};
use crate::config::ServerConfig;
use crate::storage::{FILES_DIR, PARTIAL_PREFIX};

/// Where the pieces the check compares live.
#[derive(Debug, Clone)]
pub(crate) struct DataPaths {
    pub(crate) catalog: PathBuf,
    pub(crate) files: PathBuf,
    pub(crate) v4_key: PathBuf,
}

impl DataPaths {
    pub(crate) fn of(config: &ServerConfig) -> Self {
        Self {
            catalog: config.catalog_path(),
            files: config.data_dir.join(FILES_DIR),
            v4_key: config.v4_identity_path(),
        }
    }
}

/// Checks the catalog of `config`'s data directory without creating or changing anything:
/// `Ok` for a sound catalog, and for a fresh data directory (no catalog, no stored files, no
/// v4 server key).
///
/// # Errors
/// [`CatalogError::Missing`] (stored files or a v4 key but no catalog),
/// [`CatalogError::Damaged`] (fails `PRAGMA quick_check` or cannot be read) or
/// [`CatalogError::Unreferenced`] (stored files of clients the catalog does not know).
pub async fn inspect(config: &ServerConfig) -> Result<(), CatalogError> {
    let paths = DataPaths::of(config);
    tokio::task::spawn_blocking(move || inspect_blocking(&paths))
        .await
        .map_err(CatalogError::Task)?
}

/// Opens the catalog for serving (or for an admin command that writes it) after
/// [`inspect`]; with `allow_damaged_catalog` a damaged or incomplete catalog is opened
/// anyway, with a warning in the log. A missing catalog beside stored data is always refused.
///
/// # Errors
/// The errors of [`inspect`] and of [`Catalog::open`].
pub async fn open_checked(config: &ServerConfig) -> Result<Catalog, CatalogError> {
    match inspect(config).await {
        Ok(()) => {}
        Err(err) if config.allow_damaged_catalog && err.is_damage() => {
            tracing::warn!(%err, "starting on a damaged catalog because allow_damaged_catalog is set");
        }
        Err(err) => return Err(err),
    }
    Catalog::open(config.catalog_path()).await
}

/// Where a catalog's schema stands against this server's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    /// The version recorded in the catalog (0: no schema yet).
    pub version: u32,
    /// The newest version this server knows.
    pub latest: u32,
    /// The migrations `run` would apply, as `(version, name)`, oldest first.
    pub pending: Vec<(u32, &'static str)>,
}

/// Reads the schema version of the catalog at `path` through a read-only connection and
/// lists the migrations still to apply; applies none (`--check`).
///
/// # Errors
/// [`CatalogError::Open`] when it cannot be read.
pub async fn schema_status(path: PathBuf) -> Result<SchemaStatus, CatalogError> {
    tokio::task::spawn_blocking(move || {
        let conn = Conn::sqlite(super::schema::open_reader(&path)?);
        let read = || -> Result<u32, SqlError> {
            let has_versions = conn
                .query_row(
                    "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'schema_version'",
                    (),
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if has_versions {
                super::schema::current_version(&conn)
            } else {
                Ok(0)
            }
        };
        let version = read().map_err(|source| CatalogError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(SchemaStatus {
            version,
            latest: super::schema::latest_version(),
            pending: super::schema::pending_migrations(version),
        })
    })
    .await
    .map_err(CatalogError::Task)?
}

fn inspect_blocking(paths: &DataPaths) -> Result<(), CatalogError> {
    let stored = client_dirs_with_files(&paths.files);
    if !paths.catalog.exists() {
        let found = match (stored.first(), paths.v4_key.exists()) {
            (Some(first), _) => format!(
                "stored files of {} client(s) under {} (e.g. {first})",
                stored.len(),
                paths.files.display()
            ),
            (None, true) => format!("the v4 server key {}", paths.v4_key.display()),
            (None, false) => return Ok(()),
        };
        return Err(CatalogError::Missing {
            path: paths.catalog.clone(),
            found,
        });
    }
    let damaged = |detail: String| CatalogError::Damaged {
        path: paths.catalog.clone(),
        detail,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(&paths.catalog, flags).map_err(|e| damaged(e.to_string()))?;
    let answer: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| damaged(e.to_string()))?;
    if answer != "ok" {
        return Err(damaged(answer));
    }
    let known = known_clients(&conn).map_err(|e| damaged(e.to_string()))?;
    let unknown: Vec<&String> = stored.iter().filter(|c| !known.contains(*c)).collect();
    if let Some(first) = unknown.first() {
        return Err(CatalogError::Unreferenced {
            path: paths.catalog.clone(),
            clients: unknown.len(),
            example: paths.files.join(first),
        });
    }
    Ok(())
}

/// Lowercase hex ids of the clients in the catalog (none when it has no schema yet, as a
/// truncated file).
fn known_clients(conn: &Connection) -> rusqlite::Result<BTreeSet<String>> {
    let has_table = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'clients'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !has_table {
        return Ok(BTreeSet::new());
    }
    let mut stmt = conn.prepare("SELECT ID FROM clients")?;
    let ids = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
    ids.map(|id| id.map(hex::encode)).collect()
}

/// Names of the client directories (32 lowercase hex digits) under `files` that hold at
/// least one stored file (temp files do not count), sorted; none when `files` is missing.
pub(crate) fn client_dirs_with_files(files: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(files) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| client_id_of_dir(name).is_some())
        .filter(|name| holds_stored_file(&files.join(name)))
        .collect();
    found.sort();
    found
}

/// The client id a directory name stands for, if it is 32 lowercase hex digits.
pub(crate) fn client_id_of_dir(name: &str) -> Option<[u8; 16]> {
    let id = <[u8; 16]>::try_from(hex::decode(name).ok()?).ok()?;
    (hex::encode(id) == name).then_some(id)
}

fn holds_stored_file(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            e.file_type().is_ok_and(|t| t.is_file())
                && !e.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX)
        })
    })
}

impl CatalogError {
    /// Whether this is damage that `allow_damaged_catalog` lets the server start on.
    #[must_use]
    pub fn is_damage(&self) -> bool {
        matches!(self, Self::Damaged { .. } | Self::Unreferenced { .. })
    }
}
