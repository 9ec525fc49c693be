//! The SQLite catalog (`defensive.db`): clients and stored file versions.
//!
//! All writes go through one owner: a dedicated thread holding the only writer connection, fed
//! by a bounded channel of jobs that answer on oneshot channels. SQLite allows one writer at a
//! time anyway; serialising in-process avoids `SQLITE_BUSY` storms and makes every write a
//! short, ordered transaction. Reads use a fixed pool of [`READ_POOL_SIZE`] read-only
//! connections on `spawn_blocking` (WAL lets them run while the writer commits).
//!
//! The read pool is opened whole by [`Catalog::open`] and never grows: a read waits (async)
//! for a free connection instead of opening another. So the catalog's descriptors are the
//! same from start-up on, whatever the load: the writer's database, WAL and shared-memory
//! files plus the database and WAL of each reader. Opening extra readers under load and
//! closing them afterwards would not give their descriptors back: SQLite keeps the
//! descriptor of a closed connection open while another connection of the process holds a
//! POSIX lock on the file (in WAL mode every open connection does), so they stayed open
//! until the catalog was closed (the soak run of issue 8 saw 13 such descriptors).
//!
//! `synchronous=FULL`: when a write returns, its transaction is durable. The server only
//! acknowledges a file (1603/1604) after the matching write has returned.

#[cfg(test)]
#[macro_use]
mod testing;

pub mod backup;
pub mod copy;
mod error;
pub mod integrity;
mod location;
pub mod locks;
mod model;
pub mod prune;
mod queries;
pub mod rebuild;
pub mod repo;
pub(crate) mod schema;
pub mod scrub;
pub(crate) mod sql;
mod timestamp;
pub mod usage;
pub mod v4;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::faults::{FaultPoint, Faults};
use crate::storage::VersionFile;
use sql::Conn;

pub use error::CatalogError;
pub use location::{CatalogLocation, PostgresUrl};
pub use locks::{LockMode, ServiceLock, ServiceLockGuard};
pub use model::{
    AbandonedTransfer, CatalogStats, ClientId, ClientRecord, ClientTotals, CommitResult,
    CommittingFile, DEFAULT_PAGE, DeviceRecord, DeviceRole, FileFilter, FileRecord, FileRowId,
    FileState, KeptVersion, KeyOutcome, ReceivedFile, RegisterOutcome, SupersededFile,
};
pub use schema::latest_version as latest_schema_version;
pub use sql::{Engine, SqlError};
pub use timestamp::format_rfc3339;

pub use crate::config::CATALOG_FILE_NAME;

/// Queued write jobs before senders wait (back-pressure on the writer).
const WRITE_QUEUE: usize = 256;
/// Read-only connections, all opened by [`Catalog::open`]; at most this many reads run at
/// once, the others wait for a connection.
pub const READ_POOL_SIZE: usize = 4;

type WriteJob = Box<dyn FnOnce(&mut Conn) + Send>;

enum Command {
    Write(WriteJob),
    Close(oneshot::Sender<Result<(), CatalogError>>),
}

/// Handle to the catalog; cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Catalog {
    writer: mpsc::Sender<Command>,
    readers: Arc<ReadPool>,
    /// Connections holding locks shared by the servers (`locks.rs`; PostgreSQL only).
    locks: Arc<locks::LockConnections>,
    faults: Faults,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("location", &self.readers.location)
            .finish_non_exhaustive()
    }
}

struct ReadPool {
    location: CatalogLocation,
    /// Connections not in use; never more than [`READ_POOL_SIZE`].
    idle: Mutex<Vec<Conn>>,
    /// One permit per pooled connection; closed by [`Catalog::close`].
    permits: Arc<Semaphore>,
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `path`, runs migrations, starts the writer
    /// thread and opens the [`READ_POOL_SIZE`] read connections. Blocking work runs on
    /// `spawn_blocking`.
    ///
    /// # Errors
    /// [`CatalogError::CreateDir`], [`CatalogError::Open`], [`CatalogError::Migrate`],
    /// [`CatalogError::SchemaTooNew`] or [`CatalogError::SpawnWriter`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, CatalogError> {
        Self::open_at(CatalogLocation::Sqlite(path.as_ref().to_path_buf())).await
    }

    /// Opens the catalog at `location`: as [`open`](Self::open) for a SQLite file; for a
    /// PostgreSQL database, connects the writer and the read pool and migrates the schema
    /// (several servers starting together migrate it once: each migration takes the
    /// catalog's writer lock and checks the version again).
    ///
    /// # Errors
    /// As [`open`](Self::open), and [`CatalogError::Connect`] when the PostgreSQL server
    /// cannot be reached or refuses the login.
    pub async fn open_at(location: CatalogLocation) -> Result<Self, CatalogError> {
        let (conn, readers) = tokio::task::spawn_blocking({
            let location = location.clone();
            move || -> Result<(Conn, Vec<Conn>), CatalogError> {
                let mut conn = connect_writer(&location)?;
                schema::migrate(&mut conn)?;
                let readers = (0..READ_POOL_SIZE)
                    .map(|_| connect(&location, Role::Reader))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((conn, readers))
            }
        })
        .await
        .map_err(CatalogError::Task)??;

        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("catalog-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(CatalogError::SpawnWriter)?;
        Ok(Self {
            writer: tx,
            locks: Arc::new(locks::LockConnections::new(location.clone())),
            readers: Arc::new(ReadPool {
                location,
                idle: Mutex::new(readers),
                permits: Arc::new(Semaphore::new(READ_POOL_SIZE)),
            }),
            faults: Faults::none(),
        })
    }

    /// This catalog with `faults` injected into the operations the connection effects use
    /// (tests only; see [`crate::faults`]).
    #[must_use]
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Registers a new client like [`register_client`](Self::register_client), except that a
    /// taken name whose client never stored a public key is taken over: that keyless
    /// registration (which cannot own files) is deleted and
    /// [`RegisterOutcome::Replaced`] returned.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn register_or_replace_keyless(
        &self,
        id: ClientId,
        name: Vec<u8>,
        protocol: u8,
    ) -> Result<RegisterOutcome, CatalogError> {
        self.inject(FaultPoint::CatalogRegister, "register_client")?;
        let now = now();
        self.write(move |c| queries::register_or_replace_keyless(c, &id, &name, protocol, &now))
            .await
    }

    /// Stores the client's public key (wire 1026) unless it already has a different one.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn store_first_public_key(
        &self,
        id: ClientId,
        der: Vec<u8>,
    ) -> Result<KeyOutcome, CatalogError> {
        self.inject(FaultPoint::CatalogStoreKey, "store_public_key")?;
        let now = now();
        self.write(move |c| queries::store_first_public_key(c, &id, &der, &now))
            .await
    }

    /// Records the intent to commit a `received` row (state `committing`, durable when this
    /// returns), before its temp file is renamed into place. `keep_versions` is the retention
    /// [`commit_file`](Self::commit_file) will apply, kept for reconciliation after a crash.
    ///
    /// # Errors
    /// [`CatalogError::InvalidState`] / [`CatalogError::NoSuchFile`], or a database error.
    pub async fn begin_commit(
        &self,
        row: FileRowId,
        keep_versions: u32,
    ) -> Result<(), CatalogError> {
        self.inject(FaultPoint::CatalogBeginCommit, "begin_commit")?;
        let now = now();
        let keep = keep_versions.max(1);
        self.write(move |c| queries::begin_commit(c, row, keep, &now))
            .await
    }

    /// Rows in state `committing` last updated before `updated_before` (all with `None`).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn committing_files(
        &self,
        updated_before: Option<SystemTime>,
    ) -> Result<Vec<CommittingFile>, CatalogError> {
        let cutoff = updated_before.map(format_rfc3339);
        self.read(move |c| queries::committing_files(c, cutoff.as_deref()))
            .await
    }

    fn inject(&self, point: FaultPoint, op: &'static str) -> Result<(), CatalogError> {
        let Some(error) = self.faults.check(point) else {
            return Ok(());
        };
        let full = error.kind() == std::io::ErrorKind::StorageFull
            || error.raw_os_error() == Some(libc::ENOSPC);
        let code = if error.kind() == std::io::ErrorKind::WouldBlock {
            rusqlite::ffi::SQLITE_BUSY
        } else if full {
            rusqlite::ffi::SQLITE_FULL
        } else {
            rusqlite::ffi::SQLITE_IOERR
        };
        Err(CatalogError::Query {
            op,
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                Some(format!("injected fault: {error}")),
            )
            .into(),
        })
    }

    /// Where the catalog is (shown without a password).
    #[must_use]
    pub fn location(&self) -> &CatalogLocation {
        &self.readers.location
    }

    /// The engine the catalog runs on.
    #[must_use]
    pub fn engine(&self) -> Engine {
        self.readers.location.engine()
    }

    /// Checkpoints the WAL into the database file without closing.
    ///
    /// # Errors
    /// [`CatalogError::Closed`] after [`close`](Self::close), or a query error.
    pub async fn flush(&self) -> Result<(), CatalogError> {
        self.write(|conn| queries::checkpoint(conn)).await
    }

    /// Graceful shutdown: waits for queued writes, checkpoints the WAL and stops the writer.
    /// Later writes through any clone fail with [`CatalogError::Closed`].
    ///
    /// # Errors
    /// [`CatalogError::Closed`] if already closed, or the checkpoint error.
    pub async fn close(&self) -> Result<(), CatalogError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(Command::Close(tx))
            .await
            .map_err(|_| CatalogError::Closed)?;
        rx.await.map_err(|_| CatalogError::Closed)??;
        self.readers.close();
        self.locks.close();
        Ok(())
    }

    /// Registers a new client (wire 1025). The name is unique.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails; a taken name is an `Ok` outcome.
    pub async fn register_client(
        &self,
        id: ClientId,
        name: Vec<u8>,
        protocol: u8,
    ) -> Result<RegisterOutcome, CatalogError> {
        let now = now();
        self.write(move |c| queries::register_client(c, &id, &name, protocol, &now))
            .await
    }

    /// Looks a client up by id (wire 1027).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn client_by_id(&self, id: ClientId) -> Result<Option<ClientRecord>, CatalogError> {
        self.read(move |c| queries::client_by_id(c, &id)).await
    }

    /// All clients, ordered by name.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn list_clients(&self) -> Result<Vec<ClientRecord>, CatalogError> {
        self.read(queries::list_clients).await
    }

    /// Stores the client's DER public key (wire 1026); `false` if the client is unknown.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn set_public_key(&self, id: ClientId, der: Vec<u8>) -> Result<bool, CatalogError> {
        let now = now();
        self.write(move |c| queries::set_public_key(c, &id, &der, &now))
            .await
    }

    /// Sets the client's `LastSeen` to now; `false` if the client is unknown.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn touch_client(&self, id: ClientId) -> Result<bool, CatalogError> {
        let now = now();
        self.write(move |c| queries::touch_client(c, &id, &now))
            .await
    }

    /// Starts a file version in state `receiving`; its version is one more than the highest
    /// version of this client's file name. `path_name` is the relative destination
    /// ([`Storage::relative_path`](crate::storage::Storage::relative_path)), `temp_path` the
    /// relative temp file, recorded so abandoned transfers can be cleaned up.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails (including an unknown client).
    pub async fn begin_file(
        &self,
        client: ClientId,
        name: Vec<u8>,
        path_name: String,
        temp_path: Option<String>,
    ) -> Result<(FileRowId, u32), CatalogError> {
        self.inject(FaultPoint::CatalogBeginFile, "begin_file")?;
        let now = now();
        self.write(move |c| {
            queries::begin_file(c, &client, &name, &path_name, temp_path.as_deref(), &now)
        })
        .await
    }

    /// Records size, checksums and moves the row from `receiving` to `received` (the temp file
    /// is complete and fsynced).
    ///
    /// # Errors
    /// [`CatalogError::InvalidState`] / [`CatalogError::NoSuchFile`], or a database error.
    pub async fn mark_received(
        &self,
        row: FileRowId,
        facts: ReceivedFile,
    ) -> Result<(), CatalogError> {
        self.inject(FaultPoint::CatalogMarkReceived, "mark_received")?;
        let now = now();
        self.write(move |c| queries::mark_received(c, row, &facts, &now))
            .await
    }

    /// The verified version currently stored at the name's base path, as `(row, version)`.
    /// Pass its version to [`PartialFile::commit`](crate::storage::PartialFile::commit) when
    /// `keep_versions > 1`, so the file on disk is renamed to the same versioned path that
    /// [`commit_file`](Self::commit_file) then records.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn current_version(
        &self,
        client: ClientId,
        name: Vec<u8>,
    ) -> Result<Option<(FileRowId, u32)>, CatalogError> {
        self.read(move |c| queries::current_version(c, &client, &name))
            .await
    }

    /// Marks a `received` row verified and applies retention: the previously current version
    /// is renamed to `<path>.~<version>~` (reported in [`CommitResult::previous`]) while fewer
    /// than `keep_versions` versions exist, older ones are removed from the catalog and listed
    /// in [`CommitResult::superseded`] for storage to delete. With `keep_versions == 1` the
    /// previous version's row is removed and its file is the one replaced by the rename.
    ///
    /// Order for the driver: `current_version` → `PartialFile::commit` → `commit_file` → delete
    /// superseded files → acknowledge.
    ///
    /// # Errors
    /// [`CatalogError::InvalidState`] / [`CatalogError::NoSuchFile`], or a database error.
    pub async fn commit_file(
        &self,
        row: FileRowId,
        keep_versions: u32,
    ) -> Result<CommitResult, CatalogError> {
        self.inject(FaultPoint::CatalogCommit, "commit_file")?;
        let now = now();
        let keep = keep_versions.max(1);
        self.write(move |c| queries::commit_file(c, row, keep, &now))
            .await
    }

    /// Marks an unfinished row `discarded` (after 1031, an abort, a failed commit or
    /// abandonment) and deletes its v4 resume record, if any; `false` if the row was not
    /// `receiving`/`received`/`committing`.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn discard_file(&self, row: FileRowId) -> Result<bool, CatalogError> {
        let now = now();
        self.write(move |c| queries::discard_file(c, row, &now))
            .await
    }

    /// Deletes registrations older than `registered_before` that never stored a public key
    /// and own no files; returns how many.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn remove_keyless_clients(
        &self,
        registered_before: SystemTime,
    ) -> Result<usize, CatalogError> {
        let cutoff = format_rfc3339(registered_before);
        self.write(move |c| queries::remove_keyless_clients(c, &cutoff))
            .await
    }

    /// Unfinished transfers last updated before `updated_before`, least recently updated
    /// first.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn abandoned_transfers(
        &self,
        updated_before: SystemTime,
    ) -> Result<Vec<AbandonedTransfer>, CatalogError> {
        let cutoff = format_rfc3339(updated_before);
        self.read(move |c| queries::abandoned_transfers(c, &cutoff))
            .await
    }

    /// Those of `files` that no catalog row refers to: neither a row stored at the file's
    /// path nor a row (not discarded) at its base path with its version. Such a kept version
    /// is an orphan (its row was removed as superseded, but a crash or an IO error kept the
    /// file from being deleted); a file that holds a verified version is always referred to,
    /// also while a commit moves it, so checking after the file was seen is safe.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn unreferenced_version_files(
        &self,
        files: Vec<VersionFile>,
    ) -> Result<Vec<VersionFile>, CatalogError> {
        self.read(move |c| {
            let mut orphans = Vec::new();
            for file in files {
                if !queries::version_file_referenced(c, &file)? {
                    orphans.push(file);
                }
            }
            Ok(orphans)
        })
        .await
    }

    /// One page of files matching `filter` (keyset paging on the row id).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn list_files(&self, filter: FileFilter) -> Result<Vec<FileRecord>, CatalogError> {
        self.read(move |c| queries::list_files(c, &filter)).await
    }

    /// Runs SQLite's `PRAGMA integrity_check`; `Ok(true)` when the database is sound.
    ///
    /// # Errors
    /// A [`CatalogError`] if the check cannot run.
    pub async fn integrity_check(&self) -> Result<bool, CatalogError> {
        self.read(queries::integrity_check).await
    }

    /// Compacts part of the file-name search index (run by maintenance).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn merge_name_index(&self) -> Result<(), CatalogError> {
        self.write(|c| queries::merge_name_index(c)).await
    }

    /// Client count, verified file count and stored bytes.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn stats(&self) -> Result<CatalogStats, CatalogError> {
        self.read(queries::stats).await
    }

    /// Verified files and bytes per client id; clients without verified files are absent.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn client_totals(
        &self,
    ) -> Result<std::collections::BTreeMap<ClientId, ClientTotals>, CatalogError> {
        self.read(queries::client_totals).await
    }

    async fn write<T, F>(&self, f: F) -> Result<T, CatalogError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T, CatalogError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |conn| {
            // The caller may have gone away (cancelled); nothing to do then.
            let _ = tx.send(f(conn));
        });
        self.writer
            .send(Command::Write(job))
            .await
            .map_err(|_| CatalogError::Closed)?;
        rx.await.map_err(|_| CatalogError::Closed)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, CatalogError>
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> Result<T, CatalogError> + Send + 'static,
    {
        if self.writer.is_closed() {
            return Err(CatalogError::Closed);
        }
        // Waiting here, not on a blocking thread: a burst of reads queues as tasks.
        let permit = Arc::clone(&self.readers.permits)
            .acquire_owned()
            .await
            .map_err(|_| CatalogError::Closed)?;
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let result = f(&conn);
            pool.give_back(conn);
            drop(permit);
            result
        })
        .await
        .map_err(CatalogError::Task)?
    }
}

impl ReadPool {
    /// An idle connection; the caller holds a permit, so one is idle unless a read panicked
    /// and lost its connection, which is then replaced.
    fn take(&self) -> Result<Conn, CatalogError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => connect(&self.location, Role::Reader),
        }
    }

    /// Returns a connection taken with [`take`](Self::take); after [`close`](Self::close) it
    /// is closed instead.
    fn give_back(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.permits.is_closed() && idle.len() < READ_POOL_SIZE {
            idle.push(conn);
        }
    }

    /// Refuses further reads and closes the idle connections (a read still running closes
    /// its own when it ends).
    fn close(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        self.permits.close();
        idle.clear();
    }
}

/// Which connection of the catalog is being opened.
#[derive(Clone, Copy)]
enum Role {
    /// The one writer (SQLite: creates the file and sets WAL and `synchronous=FULL`).
    Writer,
    /// A read-pool connection (SQLite: read-only).
    Reader,
}

/// The writer connection of the catalog at `location`; a SQLite file is created (in a 0700
/// directory) when missing.
pub(crate) fn connect_writer(location: &CatalogLocation) -> Result<Conn, CatalogError> {
    if let CatalogLocation::Sqlite(path) = location {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // 0700 like the rest of the data directory (`Storage::open` refuses it readable
            // by others).
            cyberbackup_fs::create_private_dir(parent).map_err(|source| {
                CatalogError::CreateDir {
                    path: parent.to_path_buf(),
                    source,
                }
            })?;
        }
    }
    connect(location, Role::Writer)
}

fn connect(location: &CatalogLocation, role: Role) -> Result<Conn, CatalogError> {
    match (location, role) {
        (CatalogLocation::Sqlite(path), Role::Writer) => {
            schema::open_writer(path).map(Conn::sqlite)
        }
        (CatalogLocation::Sqlite(path), Role::Reader) => {
            schema::open_reader(path).map(Conn::sqlite)
        }
        (CatalogLocation::Postgres(url), _) => {
            Conn::postgres(url).map_err(|source| CatalogError::Connect {
                target: url.to_string(),
                source,
            })
        }
    }
}

fn writer_loop(mut conn: Conn, mut rx: mpsc::Receiver<Command>) {
    while let Some(command) = rx.blocking_recv() {
        match command {
            Command::Write(job) => job(&mut conn),
            Command::Close(reply) => {
                rx.close();
                // Jobs queued before the close still run, in order.
                while let Ok(Command::Write(job)) = rx.try_recv() {
                    job(&mut conn);
                }
                let result = queries::checkpoint(&conn);
                let result = match conn.close() {
                    Ok(()) => result,
                    Err(source) => result.and(Err(CatalogError::Query {
                        op: "close",
                        source,
                    })),
                };
                let _ = reply.send(result);
                return;
            }
        }
    }
    // All handles dropped: best-effort checkpoint; dropping the connection closes it.
    if let Err(error) = queries::checkpoint(&conn) {
        tracing::warn!(%error, "catalog checkpoint on drop failed");
    }
}

fn now() -> String {
    format_rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ALICE: ClientId = [0xA1; 16];
    const BOB: ClientId = [0xB0; 16];

    #[tokio::test]
    async fn open_creates_the_file_and_reopen_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(CATALOG_FILE_NAME);

        let catalog = Catalog::open(&path).await.unwrap();
        catalog
            .register_client(ALICE, b"alice".to_vec(), 3)
            .await
            .unwrap();
        catalog.close().await.unwrap();
        let reopened = Catalog::open(&path).await.unwrap();

        assert!(path.is_file());
        assert_eq!(reopened.list_clients().await.unwrap().len(), 1);
        assert!(reopened.integrity_check().await.unwrap());
    }

    async fn register_reports_taken_names_and_ids(guard: testing::TestGuard) {
        let (_guard, catalog) = open(guard).await;

        let first = catalog
            .register_client(ALICE, b"alice".to_vec(), 3)
            .await
            .unwrap();
        let same_name = catalog
            .register_client(BOB, b"alice".to_vec(), 3)
            .await
            .unwrap();
        let same_id = catalog
            .register_client(ALICE, b"other".to_vec(), 3)
            .await
            .unwrap();

        assert_eq!(first, RegisterOutcome::Registered);
        assert_eq!(same_name, RegisterOutcome::NameTaken);
        assert_eq!(same_id, RegisterOutcome::IdTaken);
        assert_eq!(catalog.list_clients().await.unwrap().len(), 1);
    }

    async fn client_lookup_and_updates(guard: testing::TestGuard) {
        let (_guard, catalog) = open(guard).await;
        catalog
            .register_client(ALICE, b"alice".to_vec(), 3)
            .await
            .unwrap();

        let key_set = catalog
            .set_public_key(ALICE, vec![0x30; 160])
            .await
            .unwrap();
        let unknown_key = catalog.set_public_key(BOB, vec![1]).await.unwrap();
        let touched = catalog.touch_client(ALICE).await.unwrap();
        let alice = catalog.client_by_id(ALICE).await.unwrap().unwrap();
        let bob = catalog.client_by_id(BOB).await.unwrap();

        assert!(key_set && touched && !unknown_key);
        assert_eq!(alice.name, b"alice");
        assert_eq!(alice.public_key, Some(vec![0x30; 160]));
        assert_eq!(alice.protocol, Some(3));
        assert!(alice.last_seen.is_some());
        assert_eq!(bob, None);
    }

    async fn keep_one_version_replaces_the_previous_row(guard: testing::TestGuard) {
        let (_guard, catalog) = open_with_alice(guard).await;

        let first = store(&catalog, b"a.txt", 1).await;
        let second = store(&catalog, b"a.txt", 1).await;
        let third = store(&catalog, b"a.txt", 1).await;

        assert_eq!((first.version, second.version, third.version), (1, 2, 3));
        assert_eq!(third.path_name, "a1/a.txt");
        assert_eq!(third.previous, None);
        assert!(third.superseded.is_empty(), "{:?}", third.superseded);
        let rows = verified(&catalog).await;
        assert_eq!(rows, [(3, "a1/a.txt".to_string())]);
    }

    async fn keep_three_versions_renames_and_supersedes(guard: testing::TestGuard) {
        let (_guard, catalog) = open_with_alice(guard).await;

        store(&catalog, b"a.txt", 3).await;
        let second = store(&catalog, b"a.txt", 3).await;
        store(&catalog, b"a.txt", 3).await;
        let current = catalog
            .current_version(ALICE, b"a.txt".to_vec())
            .await
            .unwrap();
        let fourth = store(&catalog, b"a.txt", 3).await;

        assert_eq!(
            second.previous.map(|p| (p.version, p.path_name)),
            Some((1, "a1/a.txt.~1~".into()))
        );
        assert_eq!(current.map(|(_, v)| v), Some(3));
        assert_eq!(fourth.version, 4);
        assert_eq!(
            fourth.previous.map(|p| p.path_name),
            Some("a1/a.txt.~3~".into())
        );
        let superseded: Vec<_> = fourth
            .superseded
            .iter()
            .map(|s| s.path_name.as_str())
            .collect();
        assert_eq!(superseded, ["a1/a.txt.~1~"]);
        assert_eq!(
            verified(&catalog).await,
            [
                (2, "a1/a.txt.~2~".to_string()),
                (3, "a1/a.txt.~3~".to_string()),
                (4, "a1/a.txt".to_string())
            ]
        );
    }

    async fn commit_requires_a_received_row(guard: testing::TestGuard) {
        let (_guard, catalog) = open_with_alice(guard).await;
        let (row, _) = begin(&catalog, b"a.txt").await;

        let err = catalog.commit_file(row, 1).await.unwrap_err();
        let missing = catalog.commit_file(FileRowId(999), 1).await.unwrap_err();
        let received_twice = {
            catalog.mark_received(row, facts()).await.unwrap();
            catalog.mark_received(row, facts()).await.unwrap_err()
        };

        assert!(matches!(err, CatalogError::InvalidState { .. }), "{err}");
        assert!(
            matches!(missing, CatalogError::NoSuchFile { row: 999 }),
            "{missing}"
        );
        assert!(
            matches!(received_twice, CatalogError::InvalidState { .. }),
            "{received_twice}"
        );
    }

    async fn abandoned_transfers_are_found_by_age_and_state(guard: testing::TestGuard) {
        let (_guard, catalog) = open_with_alice(guard).await;
        let (receiving, _) = begin(&catalog, b"r.txt").await;
        let (received, _) = begin(&catalog, b"d.txt").await;
        catalog.mark_received(received, facts()).await.unwrap();
        store(&catalog, b"v.txt", 1).await;
        let hour = Duration::from_secs(3600);

        let old_cutoff = catalog
            .abandoned_transfers(SystemTime::now() - hour)
            .await
            .unwrap();
        let future_cutoff = catalog
            .abandoned_transfers(SystemTime::now() + hour)
            .await
            .unwrap();
        let discarded = catalog.discard_file(receiving).await.unwrap();
        let discarded_again = catalog.discard_file(receiving).await.unwrap();
        let after_discard = catalog
            .abandoned_transfers(SystemTime::now() + hour)
            .await
            .unwrap();

        assert!(old_cutoff.is_empty(), "{old_cutoff:?}");
        let rows: Vec<_> = future_cutoff.iter().map(|a| a.row).collect();
        assert_eq!(rows, [receiving, received]);
        assert!(future_cutoff.iter().all(|a| !a.resumable), "v3 transfers");
        assert_eq!(
            future_cutoff[0].temp_path.as_deref(),
            Some("a1/.cb-partial-r.txt")
        );
        assert!(discarded && !discarded_again);
        assert_eq!(
            after_discard.iter().map(|a| a.row).collect::<Vec<_>>(),
            [received]
        );
    }

    async fn list_files_filters_and_pages(guard: testing::TestGuard) {
        let (_guard, catalog) = open_with_alice(guard).await;
        catalog
            .register_client(BOB, b"bob".to_vec(), 3)
            .await
            .unwrap();
        for i in 0..130 {
            store(&catalog, format!("doc-{i}.txt").as_bytes(), 1).await;
        }
        for i in 0..5 {
            let (row, _) = catalog
                .begin_file(
                    BOB,
                    format!("bob-{i}.bin").into_bytes(),
                    format!("b0/bob-{i}.bin"),
                    None,
                )
                .await
                .unwrap();
            if i == 0 {
                catalog.discard_file(row).await.unwrap();
            }
        }

        let page1 = catalog.list_files(alice_filter(None)).await.unwrap();
        let page2 = catalog
            .list_files(alice_filter(page1.last().map(|f| f.row)))
            .await
            .unwrap();
        let page3 = catalog
            .list_files(alice_filter(page2.last().map(|f| f.row)))
            .await
            .unwrap();
        let by_name = catalog
            .list_files(FileFilter {
                name_contains: Some(b"-12".to_vec()),
                ..FileFilter::default()
            })
            .await
            .unwrap();
        let unverified = catalog
            .list_files(FileFilter {
                verified: Some(false),
                ..FileFilter::default()
            })
            .await
            .unwrap();
        let with_discarded = catalog
            .list_files(FileFilter {
                verified: Some(false),
                include_discarded: true,
                ..FileFilter::default()
            })
            .await
            .unwrap();
        let future = catalog
            .list_files(FileFilter {
                since: Some(SystemTime::now() + Duration::from_secs(60)),
                ..FileFilter::default()
            })
            .await
            .unwrap();
        let past = catalog
            .list_files(FileFilter {
                until: Some(SystemTime::now() + Duration::from_secs(60)),
                limit: 1000,
                ..FileFilter::default()
            })
            .await
            .unwrap();

        assert_eq!((page1.len(), page2.len(), page3.len()), (100, 30, 0));
        assert!(page1.last().unwrap().row < page2[0].row);
        assert!(
            page1
                .iter()
                .chain(&page2)
                .all(|f| f.client_name == b"alice")
        );
        let names: Vec<_> = by_name
            .iter()
            .map(|f| String::from_utf8_lossy(&f.file_name).into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "doc-12.txt",
                "doc-120.txt",
                "doc-121.txt",
                "doc-122.txt",
                "doc-123.txt",
                "doc-124.txt",
                "doc-125.txt",
                "doc-126.txt",
                "doc-127.txt",
                "doc-128.txt",
                "doc-129.txt"
            ]
        );
        assert_eq!(unverified.len(), 4);
        assert!(
            unverified
                .iter()
                .all(|f| f.state == FileState::Receiving && f.client_name == b"bob")
        );
        assert_eq!(with_discarded.len(), 5);
        assert!(future.is_empty());
        assert_eq!(past.len(), 134);
    }

    async fn stats_count_verified_files(guard: testing::TestGuard) {
        let (_guard, catalog) = open_with_alice(guard).await;
        store(&catalog, b"a", 1).await;
        store(&catalog, b"b", 1).await;
        begin(&catalog, b"c").await;

        let stats = catalog.stats().await.unwrap();

        assert_eq!(
            stats,
            CatalogStats {
                clients: 1,
                files: 2,
                bytes_stored: 2 * facts().size
            }
        );
    }

    async fn closed_catalog_refuses_work(guard: testing::TestGuard) {
        let (_guard, catalog) = open(guard).await;
        let clone = catalog.clone();

        catalog.close().await.unwrap();

        assert!(matches!(
            clone.touch_client(ALICE).await,
            Err(CatalogError::Closed)
        ));
        assert!(matches!(
            clone.list_clients().await,
            Err(CatalogError::Closed)
        ));
        assert!(matches!(clone.close().await, Err(CatalogError::Closed)));
    }

    async fn begin_for_an_unknown_client_fails(guard: testing::TestGuard) {
        let (_guard, catalog) = open(guard).await;

        let result = catalog
            .begin_file(BOB, b"x".to_vec(), "b0/x".into(), None)
            .await;

        assert!(
            matches!(
                result,
                Err(CatalogError::Query {
                    op: "begin_file",
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn catalog_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Catalog>();
    }

    async fn open(guard: testing::TestGuard) -> (testing::TestGuard, Catalog) {
        guard.open().await
    }

    async fn open_with_alice(guard: testing::TestGuard) -> (testing::TestGuard, Catalog) {
        let (dir, catalog) = open(guard).await;
        catalog
            .register_client(ALICE, b"alice".to_vec(), 3)
            .await
            .unwrap();
        (dir, catalog)
    }

    async fn begin(catalog: &Catalog, name: &[u8]) -> (FileRowId, u32) {
        let text = String::from_utf8_lossy(name);
        catalog
            .begin_file(
                ALICE,
                name.to_vec(),
                format!("a1/{text}"),
                Some(format!("a1/.cb-partial-{text}")),
            )
            .await
            .unwrap()
    }

    async fn store(catalog: &Catalog, name: &[u8], keep: u32) -> CommitResult {
        let (row, _) = begin(catalog, name).await;
        catalog.mark_received(row, facts()).await.unwrap();
        catalog.commit_file(row, keep).await.unwrap()
    }

    async fn verified(catalog: &Catalog) -> Vec<(u32, String)> {
        let filter = FileFilter {
            verified: Some(true),
            ..FileFilter::default()
        };
        let files = catalog.list_files(filter).await.unwrap();
        files
            .into_iter()
            .map(|f| (f.version, f.path_name))
            .collect()
    }

    fn alice_filter(after_row: Option<FileRowId>) -> FileFilter {
        FileFilter {
            client_name: Some(b"alice".to_vec()),
            after_row,
            ..FileFilter::default()
        }
    }

    fn facts() -> ReceivedFile {
        ReceivedFile {
            size: 10,
            ciphertext_size: 16,
            cksum: 0xDEAD_BEEF,
            sha256: [7; 32],
        }
    }

    on_both_engines!(
        register_reports_taken_names_and_ids,
        client_lookup_and_updates,
        keep_one_version_replaces_the_previous_row,
        keep_three_versions_renames_and_supersedes,
        commit_requires_a_received_row,
        abandoned_transfers_are_found_by_age_and_state,
        list_files_filters_and_pages,
        stats_count_verified_files,
        closed_catalog_refuses_work,
        begin_for_an_unknown_client_fails,
    );
}
