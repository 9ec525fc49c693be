//! `cyberbackup-server catalog backup FILE`: a consistent copy of the catalog, safe while
//! the server runs, through SQLite's online backup API (`sqlite3_backup_*`, via rusqlite).
//!
//! The copy is taken in one backup step, inside one read transaction of the source: in WAL
//! mode that never blocks the server's writer, and the copy is the catalog as of one commit.
//! It is written to a private temp file beside `FILE`, checked with `PRAGMA
//! integrity_check`, fsynced and only then renamed to `FILE` (never over an existing file),
//! so a failed backup leaves nothing under the name. Restore = stop the server, copy the
//! backup to `<data_dir>/defensive.db` (mode 0600), start it: start-up recovery then
//! reconciles the data directory with the older catalog (docs/operations.md).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::CatalogError;
use super::schema::BUSY_TIMEOUT;
use super::sql::Conn;

/// What [`backup`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The backup file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its schema version.
    pub schema_version: u32,
}

/// Copies the catalog at `catalog` to `target` (which must not exist yet).
///
/// # Errors
/// [`CatalogError::Open`] / [`CatalogError::Query`] for the source or the copy,
/// [`CatalogError::Backup`] when `target` exists or cannot be written.
pub async fn backup(catalog: PathBuf, target: PathBuf) -> Result<BackupReport, CatalogError> {
    tokio::task::spawn_blocking(move || backup_blocking(&catalog, &target))
        .await
        .map_err(CatalogError::Task)?
}

fn backup_blocking(catalog: &Path, target: &Path) -> Result<BackupReport, CatalogError> {
    let fail = |fix: &'static str| {
        move |source: io::Error| CatalogError::Backup {
            path: target.to_path_buf(),
            source,
            fix,
        }
    };
    if target.exists() {
        return Err(fail(
            "choose a new file name; an existing backup is never overwritten",
        )(io::Error::from(io::ErrorKind::AlreadyExists)));
    }
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Created 0600 by tempfile: the copy holds everything the catalog holds.
    let temp = tempfile::Builder::new()
        .prefix(".catalog-backup-")
        .tempfile_in(dir)
        .map_err(fail("check that the directory exists and is writable"))?;

    let open_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source: rusqlite::Error| CatalogError::Open {
            path,
            source: source.into(),
        }
    };
    let source = Connection::open_with_flags(
        catalog,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err(catalog))?;
    source
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(open_err(catalog))?;
    let mut copy = Connection::open(temp.path()).map_err(open_err(temp.path()))?;
    {
        let step = rusqlite::backup::Backup::new(&source, &mut copy)
            .map_err(super::error::query_err("start the backup"))?;
        // -1: every page in one step, so the copy is one consistent read of the source.
        // Busy / locked (a checkpoint holding a lock) is retried within the busy timeout.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            let result = step
                .step(-1)
                .map_err(super::error::query_err("copy the catalog"))?;
            match result {
                rusqlite::backup::StepResult::Done => break,
                _ if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => {
                    return Err(fail("the catalog stayed locked; retry in a moment")(
                        io::Error::from(io::ErrorKind::WouldBlock),
                    ));
                }
            }
        }
    }
    let copy = Conn::sqlite(copy);
    let answer: String = copy
        .query_row("PRAGMA integrity_check", (), |row| row.get(0))
        .map_err(super::error::query_err("check the backup"))?;
    if answer != "ok" {
        return Err(fail(
            "the copy failed its integrity check; check the disk and retry",
        )(io::Error::other(answer)));
    }
    let schema_version = super::schema::current_version(&copy)
        .map_err(super::error::query_err("read the schema version"))?;
    copy.close()
        .map_err(super::error::query_err("close the backup"))?;
    let file = temp.as_file();
    file.sync_all().map_err(fail("check the disk"))?;
    let bytes = file.metadata().map_err(fail("check the disk"))?.len();
    temp.persist_noclobber(target).map_err(|e| {
        fail("choose a new file name; an existing backup is never overwritten")(e.error)
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("check the disk"))?;
    Ok(BackupReport {
        path: target.to_path_buf(),
        bytes,
        schema_version,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::catalog::Catalog;

    #[tokio::test]
    async fn the_backup_is_a_private_complete_copy_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("defensive.db");
        let catalog = Catalog::open(&path).await.unwrap();
        catalog
            .register_client([7; 16], b"alice".to_vec(), 3)
            .await
            .unwrap();
        let target = dir.path().join("backup.db");

        // While the catalog is open (the server running).
        let report = backup(path.clone(), target.clone()).await.unwrap();
        let again = backup(path.clone(), target.clone()).await.unwrap_err();
        catalog.close().await.unwrap();

        assert_eq!(
            report.schema_version,
            super::super::schema::latest_version()
        );
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let restored = Catalog::open(&target).await.unwrap();
        let clients = restored.list_clients().await.unwrap();
        assert_eq!(clients.len(), 1);
        assert_eq!(clients[0].name, b"alice");
        assert!(again.to_string().contains("never overwritten"), "{again}");
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".catalog-backup-")
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
