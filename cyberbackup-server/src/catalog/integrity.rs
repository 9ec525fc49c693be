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

use super::{Catalog, CatalogError, CatalogLocation, Engine};
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
    /// The paths of `config`; the catalog's is the default file when the catalog is not a
    /// SQLite file.
    pub(crate) fn of(config: &ServerConfig) -> Self {
        let catalog = match config.catalog_location() {
            CatalogLocation::Sqlite(path) => path,
            CatalogLocation::Postgres(_) => config.catalog_path(),
        };
        Self {
            catalog,
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
    let location = config.catalog_location();
    let checked = match &location {
        CatalogLocation::Sqlite(_) => inspect(config).await,
        CatalogLocation::Postgres(_) => Ok(()),
    };
    let allowed = |err: CatalogError| {
        if config.allow_damaged_catalog && err.is_damage() {
            tracing::warn!(%err, "starting on a damaged catalog because allow_damaged_catalog is set");
            Ok(())
        } else {
            Err(err)
        }
    };
    checked.or_else(allowed)?;
    let catalog = Catalog::open_at(location).await?;
    if catalog.engine() == Engine::Postgres {
        // A database server has no missing or torn file to find; a new empty database
        // beside stored files is what it can get wrong.
        let known = catalog
            .list_clients()
            .await?
            .iter()
            .map(|client| hex::encode(client.id))
            .collect();
        let files = config.data_dir.join(FILES_DIR);
        unreferenced(
            &client_dirs_with_files(&files),
            &known,
            &catalog.location().to_string(),
            &files,
        )
        .or_else(allowed)?;
    }
    Ok(catalog)
}

/// `Err(Unreferenced)` when a client directory of `stored` is not in `known`.
fn unreferenced(
    stored: &[String],
    known: &BTreeSet<String>,
    catalog: &str,
    files: &Path,
) -> Result<(), CatalogError> {
    let unknown: Vec<&String> = stored.iter().filter(|c| !known.contains(*c)).collect();
    match unknown.first() {
        Some(first) => Err(CatalogError::Unreferenced {
            path: catalog.to_owned(),
            clients: unknown.len(),
            example: files.join(first),
        }),
        None => Ok(()),
    }
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

/// Reads the schema version of the catalog at `location` (a read-only connection for a
/// SQLite file) and compares it with this server's migrations, changing nothing.
///
/// # Errors
/// [`CatalogError::Open`] / [`CatalogError::Connect`] when it cannot be reached,
/// [`CatalogError::Query`] when it cannot be read.
pub async fn schema_status(location: CatalogLocation) -> Result<SchemaStatus, CatalogError> {
    tokio::task::spawn_blocking(move || {
        let (conn, exists) = match &location {
            CatalogLocation::Sqlite(path) => (
                Conn::sqlite(super::schema::open_reader(path)?),
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'schema_version'",
            ),
            CatalogLocation::Postgres(url) => (
                Conn::postgres(url).map_err(|source| CatalogError::Connect {
                    target: url.to_string(),
                    source,
                })?,
                "SELECT 1 FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name = 'schema_version'",
            ),
        };
        let read = || -> Result<u32, SqlError> {
            if conn.query_row(exists, (), |_| Ok(())).optional()?.is_some() {
                super::schema::current_version(&conn)
            } else {
                Ok(0)
            }
        };
        let version = read().map_err(super::error::query_err("read the schema version"))?;
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
    unreferenced(
        &stored,
        &known,
        &paths.catalog.display().to_string(),
        &paths.files,
    )
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
