//! The keyless repository store: one snapshot repository per client (docs/repository.md,
//! "Server-side store"), kept in a storage [`Backend`] with its index in the [`Catalog`].
//!
//! The server holds no repository key. It stores what clients send (config, wrapped key
//! objects, packs, snapshot objects) and checks what it can check without keys:
//!
//! * **Packs** are staged (`staging.rs`), hashed while they arrive (BLAKE3 must equal the pack
//!   ID), their cleartext header parsed, then stored in the backend, which checks the hash
//!   again; only after the backend's put returned are the pack's entries indexed, in one
//!   catalog transaction. A blob already indexed keeps its first location.
//! * **Snapshots** are committed only when every reference chunk their envelope names is
//!   indexed and every blob each chunk lists is indexed (`commit.rs`); a failed check makes
//!   nothing visible.
//! * **Isolation**: every catalog query is keyed by the client id and every backend key
//!   starts with it (`layout.rs`), so no request of one client reaches another's objects.
//! * **Prune** (`prune.rs`) deletes what no snapshot references, without keys and without
//!   breaking a backup in flight: unreferenced blobs are condemned first and deleted only
//!   after a grace period in which any commit or upload can claim them again.
//! * **Recovery** at start-up (`recovery.rs`) removes staging files and reconciles the
//!   backend with the catalog.
//!
//! The protocol layer calls this API; the store never logs object content.

mod commit;
mod error;
mod layout;
mod locks;
mod progress;
mod prune;
mod quota;
mod reader;
mod recovery;
mod retention;
mod schedule;
mod scrub;
mod staging;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cyberbackup_core::names::ClientId;
use cyberbackup_core::repo::limits::{MAX_SNAPSHOT_BODY_BYTES, MAX_SNAPSHOT_REF_CHUNKS};
use cyberbackup_core::repo::{
    BlobId, KeyObject, PACK_TRAILER_LEN, PackHeader, PackId, RepoConfig, SnapshotId,
};

use crate::backend::{Backend, ContentHash, ObjectKey, PutBody};
use crate::catalog::repo::{AddKeyOutcome, RemoveKeyOutcome};
use crate::catalog::{Catalog, LockMode};
use crate::config::ServerConfig;

pub use error::RepoStoreError;
pub use locks::RepoLockGuard;
pub use progress::{PruneActivity, PrunePhase, PruneProgress};
pub use prune::{PruneOptions, PruneReport};
pub use quota::{QuotaLimits, Quotas};
pub use reader::BlobReader;
pub use recovery::RecoveryReport;
pub use retention::RetentionPolicies;
pub use schedule::{LastPrune, PruneRun};
pub use scrub::PieceError;
pub use staging::StagedPut;

/// Directory of the data directory holding the repository objects (the local backend).
pub const REPOSITORY_DIR: &str = "repository";
/// Directory of the data directory holding objects being received (0700).
pub const STAGING_DIR: &str = "repo-staging";
/// Largest object a client may send: a pack at the largest pack target (1 GiB) plus its
/// last blob (a tree of up to 256 MiB) and header, with room to spare.
pub const MAX_OBJECT_LEN: u64 = 2 << 30;

/// Most key objects one repository holds.
pub const MAX_KEY_OBJECTS: usize = 64;

/// Largest snapshot object the format allows (envelope with the most reference chunks, salt,
/// the largest body, tag), so a snapshot, read whole for its commit check, is bounded.
pub const MAX_SNAPSHOT_OBJECT_LEN: u64 =
    77 + 32 * MAX_SNAPSHOT_REF_CHUNKS as u64 + 24 + MAX_SNAPSHOT_BODY_BYTES as u64 + 16;

/// Bytes per piece when a staged pack is streamed to the backend.
const STREAM_PIECE: usize = 256 * 1024;

/// What kind of object a put carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectClass {
    /// A pack (its ID is the plain BLAKE3 hash of its bytes).
    Pack,
    /// A snapshot object (committing it is the end of a backup).
    Snapshot,
}

/// A repository as a client opens it: its config object and all its key objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoState {
    /// The encoded config object.
    pub config: Bytes,
    /// The encoded key objects, in the order they were added.
    pub keys: Vec<Bytes>,
}

/// One committed snapshot as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotListing {
    /// Its ID.
    pub id: SnapshotId,
    /// Size of the snapshot object in bytes.
    pub size: u64,
    /// When the server stored it (Unix seconds).
    pub stored_at: u64,
}

/// The answer to [`RepoStore::begin_put`].
#[derive(Debug)]
pub enum PutStart {
    /// The object is already stored (and indexed): nothing to send.
    AlreadyStored,
    /// Send the bytes into this put, then [`RepoStore::finish_put`] it.
    Receiving(StagedPut),
}

/// The per-client repository store (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct RepoStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    backend: Arc<dyn Backend>,
    catalog: Catalog,
    staging_dir: PathBuf,
    max_object_len: u64,
    /// The per-repository maintenance and prune locks (`locks.rs`).
    locks: Arc<locks::RepoLocks>,
    /// The prunes running now.
    prune_progress: PruneProgress,
    quotas: Quotas,
}

impl RepoStore {
    /// A store over `backend` and `catalog`. `staging_dir` (a private directory inside the
    /// data directory) holds objects being received; [`recover`](Self::recover) creates and
    /// empties it and must run once before the first put. `max_object_len` bounds every
    /// object a client may send.
    #[must_use]
    pub fn new(
        backend: Arc<dyn Backend>,
        catalog: Catalog,
        staging_dir: PathBuf,
        max_object_len: u64,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                catalog,
                staging_dir,
                max_object_len,
                locks: Arc::default(),
                prune_progress: PruneProgress::default(),
                quotas: Quotas::default(),
            }),
        }
    }

    /// The client's maintenance lock in `mode` (`locks.rs`), on this server and every
    /// other one on the catalog.
    async fn maintenance_lock(
        &self,
        client: ClientId,
        mode: LockMode,
    ) -> Result<RepoLockGuard, RepoStoreError> {
        let inner = &self.inner;
        inner.locks.maintenance(&inner.catalog, client, mode).await
    }

    /// The prunes running now (shared with the admin API).
    #[must_use]
    pub fn prune_progress(&self) -> &PruneProgress {
        &self.inner.prune_progress
    }

    /// This store with `quotas` enforced on pack puts (none by default).
    #[must_use]
    pub fn with_quotas(self, quotas: Quotas) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.quotas = quotas;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The client's repository: config and key objects, or `None` if it has none.
    ///
    /// # Errors
    /// [`RepoStoreError::Catalog`].
    pub async fn state(&self, client: ClientId) -> Result<Option<RepoState>, RepoStoreError> {
        let record = self.inner.catalog.repository(client.0).await?;
        Ok(record.map(|r| RepoState {
            config: r.config.into(),
            keys: r.keys.into_iter().map(Bytes::from).collect(),
        }))
    }

    /// Creates the client's repository from its config object and first key object.
    ///
    /// # Errors
    /// [`RepoStoreError::BadObject`] when either does not parse, [`RepoStoreError::Exists`]
    /// when the client already has a repository, [`RepoStoreError::Catalog`].
    pub async fn create(
        &self,
        client: ClientId,
        config: Bytes,
        key: Bytes,
    ) -> Result<(), RepoStoreError> {
        RepoConfig::decode_unverified(&config).map_err(bad_object)?;
        KeyObject::decode(&key).map_err(bad_object)?;
        let created = self
            .inner
            .catalog
            .create_repository(client.0, config.to_vec(), key.to_vec())
            .await?;
        if created {
            Ok(())
        } else {
            Err(RepoStoreError::Exists)
        }
    }

    /// Removes a key object (a passphrase replaced, a lost device's key). The repository's
    /// last key object is never removed.
    ///
    /// # Errors
    /// [`RepoStoreError::NoRepository`], [`RepoStoreError::NotFound`] when no key object has
    /// these bytes, [`RepoStoreError::LastKey`], [`RepoStoreError::Catalog`].
    pub async fn remove_key(&self, client: ClientId, key: Bytes) -> Result<(), RepoStoreError> {
        let id = KeyObject::id_of(&key);
        match self
            .inner
            .catalog
            .remove_repo_key(client.0, key.to_vec())
            .await?
        {
            RemoveKeyOutcome::Removed => Ok(()),
            RemoveKeyOutcome::NotStored => Err(RepoStoreError::NotFound {
                what: "key object",
                id,
            }),
            RemoveKeyOutcome::NoRepository => Err(RepoStoreError::NoRepository),
            RemoveKeyOutcome::LastKey => Err(RepoStoreError::LastKey),
        }
    }

    /// Adds a key object (another passphrase or device). Adding the same bytes again is a
    /// no-op.
    ///
    /// # Errors
    /// [`RepoStoreError::BadObject`], [`RepoStoreError::NoRepository`],
    /// [`RepoStoreError::TooLarge`] above [`MAX_KEY_OBJECTS`], [`RepoStoreError::Catalog`].
    pub async fn add_key(&self, client: ClientId, key: Bytes) -> Result<(), RepoStoreError> {
        KeyObject::decode(&key).map_err(bad_object)?;
        let outcome = self
            .inner
            .catalog
            .add_repo_key(client.0, key.to_vec(), MAX_KEY_OBJECTS)
            .await?;
        match outcome {
            AddKeyOutcome::Added | AddKeyOutcome::AlreadyStored => Ok(()),
            AddKeyOutcome::NoRepository => Err(RepoStoreError::NoRepository),
            AddKeyOutcome::TooMany => Err(RepoStoreError::TooLarge {
                what: "key objects",
                value: MAX_KEY_OBJECTS as u64 + 1,
                max: MAX_KEY_OBJECTS as u64,
            }),
        }
    }

    /// For each ID: whether that blob (sealed blob or reference chunk) is stored and indexed.
    /// A blob a prune condemned, or one in a pack the scrub found damaged, is reported
    /// absent, so a new backup uploads it again rather than depend on it (and the upload
    /// moves it to the new pack: the next backup heals the repository).
    ///
    /// # Errors
    /// [`RepoStoreError::NoRepository`], [`RepoStoreError::Catalog`].
    pub async fn have(
        &self,
        client: ClientId,
        ids: &[BlobId],
    ) -> Result<Vec<bool>, RepoStoreError> {
        self.require_repository(client).await?;
        let found = self
            .inner
            .catalog
            .blob_locations(client.0, ids.to_vec())
            .await?;
        Ok(found
            .iter()
            .map(|location| location.is_some_and(|l| !l.condemned && !l.damaged))
            .collect())
    }

    /// Starts receiving an object of `size` bytes claimed to have ID `id`; an object already
    /// stored is [`PutStart::AlreadyStored`].
    ///
    /// # Errors
    /// [`RepoStoreError::NoRepository`], [`RepoStoreError::TooLarge`],
    /// [`RepoStoreError::QuotaExceeded`] (a pack above the client's hard quota: nothing is
    /// staged), or a catalog or staging-file failure.
    pub async fn begin_put(
        &self,
        client: ClientId,
        class: ObjectClass,
        id: [u8; 32],
        size: u64,
    ) -> Result<PutStart, RepoStoreError> {
        self.require_repository(client).await?;
        let catalog = &self.inner.catalog;
        let (max, stored) = match class {
            ObjectClass::Pack => (
                self.inner.max_object_len,
                catalog.packs_indexed(client.0, vec![PackId(id)]).await?,
            ),
            ObjectClass::Snapshot => (
                self.inner.max_object_len.min(MAX_SNAPSHOT_OBJECT_LEN),
                catalog
                    .snapshots_recorded(client.0, vec![SnapshotId(id)])
                    .await?,
            ),
        };
        if size > max {
            return Err(RepoStoreError::TooLarge {
                what: "object size",
                value: size,
                max,
            });
        }
        if stored.first().copied().unwrap_or(false) {
            return Ok(PutStart::AlreadyStored);
        }
        let reservation = match class {
            ObjectClass::Pack => self.check_quota(client, size).await?,
            ObjectClass::Snapshot => None,
        };
        let mut staged =
            StagedPut::create(&self.inner.staging_dir, client, class, id, size).await?;
        staged.reservation = reservation;
        Ok(PutStart::Receiving(staged))
    }

    /// Checks a fully received object and makes it durable and visible: a pack is stored
    /// and indexed, a snapshot passes the commit check and is stored and recorded. On any
    /// error nothing becomes visible. The staging file is removed either way.
    ///
    /// # Errors
    /// [`RepoStoreError::BadObject`], [`RepoStoreError::HashMismatch`],
    /// [`RepoStoreError::MissingBlobs`] (snapshots), or a backend, catalog or staging failure.
    pub async fn finish_put(&self, staged: StagedPut) -> Result<(), RepoStoreError> {
        let (client, class, id, size) = (staged.client, staged.class, staged.id, staged.size);
        let received = staged.received().await?;
        match class {
            ObjectClass::Pack => self.store_pack(client, PackId(id), size, received).await,
            ObjectClass::Snapshot => {
                commit::commit_snapshot(self, client, SnapshotId(id), size, received).await
            }
        }
    }

    /// Abandons a put: its staging file is removed and nothing was stored. Dropping the
    /// [`StagedPut`] (a dropped connection) does the same.
    pub async fn abort_put(&self, staged: StagedPut) {
        staged.discard().await;
    }

    /// The bytes of a blob (a sealed blob or a reference chunk), read alone; a connection
    /// reading many keeps a [`BlobReader`].
    ///
    /// # Errors
    /// [`RepoStoreError::NoRepository`], [`RepoStoreError::NotFound`], or a backend or
    /// catalog failure.
    pub async fn get_blob(&self, client: ClientId, id: BlobId) -> Result<Bytes, RepoStoreError> {
        BlobReader::default().read(self, client, id).await
    }

    /// A committed snapshot object, whole.
    ///
    /// # Errors
    /// [`RepoStoreError::NoRepository`], [`RepoStoreError::NotFound`], or a backend or
    /// catalog failure.
    pub async fn get_snapshot(
        &self,
        client: ClientId,
        id: SnapshotId,
    ) -> Result<Bytes, RepoStoreError> {
        self.require_repository(client).await?;
        let recorded = self
            .inner
            .catalog
            .snapshots_recorded(client.0, vec![id])
            .await?;
        if !recorded.first().copied().unwrap_or(false) {
            return Err(not_found_snapshot(&id));
        }
        let key = layout::snapshot_key(client, &id);
        Ok(self.inner.backend.get(&key, None).await?)
    }

    /// The client's committed snapshots, oldest backup first.
    ///
    /// # Errors
    /// [`RepoStoreError::NoRepository`], [`RepoStoreError::Catalog`].
    pub async fn snapshots(
        &self,
        client: ClientId,
    ) -> Result<Vec<SnapshotListing>, RepoStoreError> {
        self.require_repository(client).await?;
        let records = self.inner.catalog.list_snapshots(client.0).await?;
        Ok(records
            .into_iter()
            .map(|r| SnapshotListing {
                id: r.id,
                size: r.size,
                stored_at: r.stored_at,
            })
            .collect())
    }

    /// Forgets a snapshot: its record and reference list are deleted and its tombstone
    /// written (durable when this returns), then its object and the tombstone. Its blobs stay
    /// until a later prune.
    ///
    /// # Errors
    /// [`RepoStoreError::NoRepository`], [`RepoStoreError::NotFound`],
    /// [`RepoStoreError::Catalog`].
    pub async fn forget(&self, client: ClientId, id: SnapshotId) -> Result<(), RepoStoreError> {
        self.require_repository(client).await?;
        let catalog = &self.inner.catalog;
        if !catalog.forget_snapshot(client.0, id, unix_now()).await? {
            return Err(not_found_snapshot(&id));
        }
        let key = layout::snapshot_key(client, &id);
        match self.inner.backend.delete(&key).await {
            Ok(()) => {
                if let Err(error) = catalog.clear_tombstone(client.0, id).await {
                    tracing::warn!(%key, %error, "could not clear a forgotten snapshot's tombstone");
                }
            }
            // The record is gone and the tombstone written, so the snapshot is forgotten;
            // start-up recovery deletes the object of a tombstone.
            Err(error) => {
                tracing::warn!(%key, %error, "could not delete a forgotten snapshot's object");
            }
        }
        Ok(())
    }

    /// Start-up crash recovery (see [`RecoveryReport`]); run it before serving clients.
    ///
    /// # Errors
    /// A staging-directory, backend or catalog failure.
    pub async fn recover(&self) -> Result<RecoveryReport, RepoStoreError> {
        recovery::recover(self).await
    }

    /// The server's store on the backend of `config.storage` (`<data_dir>/repository` by
    /// default), staging in `<data_dir>/repo-staging`, [`MAX_OBJECT_LEN`], `config`'s
    /// quotas. Not yet [recovered](Self::recover): the server recovers it before serving;
    /// a command run beside a running server must not.
    ///
    /// # Errors
    /// The backend cannot be opened (a bad `[storage]` setting, an uncreatable directory).
    pub fn from_config(config: &ServerConfig, catalog: Catalog) -> Result<Self, RepoStoreError> {
        let backend = config.storage.open(&config.data_dir, REPOSITORY_DIR)?;
        Ok(Self::new(
            backend,
            catalog,
            config.data_dir.join(STAGING_DIR),
            MAX_OBJECT_LEN,
        )
        .with_quotas(config.quotas()))
    }

    async fn require_repository(&self, client: ClientId) -> Result<(), RepoStoreError> {
        if self.inner.catalog.repository_exists(client.0).await? {
            Ok(())
        } else {
            Err(RepoStoreError::NoRepository)
        }
    }

    /// Checks a received pack, stores it in the backend, then indexes it.
    async fn store_pack(
        &self,
        client: ClientId,
        id: PackId,
        size: u64,
        mut received: staging::Received,
    ) -> Result<(), RepoStoreError> {
        if received.hash != id.0 {
            return Err(RepoStoreError::HashMismatch {
                expected: id.to_hex(),
                actual: hex::encode(received.hash),
            });
        }
        let header = read_pack_header(size, &received).await?;
        let key = layout::pack_key(client, &id);
        let body = received.stream(STREAM_PIECE).await?;
        // Shared: a pending deletion of this pack ID must not run between the put and the
        // index transaction that cancels it.
        let _shared = self.maintenance_lock(client, LockMode::Shared).await?;
        self.inner
            .backend
            .put(&key, PutBody::Stream(body), ContentHash::from_bytes(id.0))
            .await?;
        self.inner
            .catalog
            .index_pack(client.0, id, size, header.entries, unix_now())
            .await?;
        received.release_quota().await;
        Ok(())
    }
}

/// Where a pack's bytes can be read by range: its staging file, or the backend.
trait PackBytes: Sync {
    /// `len` bytes at `offset`.
    fn read_range(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<u8>, RepoStoreError>> + Send;
}

impl PackBytes for staging::Received {
    async fn read_range(&self, offset: u64, len: u64) -> Result<Vec<u8>, RepoStoreError> {
        self.read_at(offset, len).await
    }
}

/// A pack stored in the backend under `key`.
struct StoredPack<'a> {
    backend: &'a dyn Backend,
    key: &'a ObjectKey,
}

impl PackBytes for StoredPack<'_> {
    async fn read_range(&self, offset: u64, len: u64) -> Result<Vec<u8>, RepoStoreError> {
        let range = offset..offset + len;
        Ok(self.backend.get(self.key, Some(range)).await?.to_vec())
    }
}

/// Parses the header of a pack of `pack_len` bytes, reading its trailer and then its header
/// from `pack`.
async fn read_pack_header(
    pack_len: u64,
    pack: &impl PackBytes,
) -> Result<PackHeader, RepoStoreError> {
    let read = |offset, len| pack.read_range(offset, len);
    let trailer_len = PACK_TRAILER_LEN as u64;
    let Some(trailer_at) = pack_len.checked_sub(trailer_len) else {
        return Err(RepoStoreError::BadObject(format!(
            "a pack of {pack_len} bytes is shorter than its {trailer_len}-byte trailer"
        )));
    };
    let trailer = read(trailer_at, trailer_len).await?;
    let header_len = PackHeader::header_len(&trailer, pack_len).map_err(bad_object)? as u64;
    let header = read(trailer_at - header_len, header_len).await?;
    PackHeader::decode(&header, pack_len).map_err(bad_object)
}

fn bad_object(e: cyberbackup_core::repo::RepoError) -> RepoStoreError {
    RepoStoreError::BadObject(e.to_string())
}

fn not_found_snapshot(id: &SnapshotId) -> RepoStoreError {
    RepoStoreError::NotFound {
        what: "snapshot",
        id: id.to_hex(),
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
