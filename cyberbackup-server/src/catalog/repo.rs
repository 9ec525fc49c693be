//! Catalog tables of the snapshot repository store (`crate::repository`): one repository
//! per client (config and key objects), its packs, the blob index and its snapshots with
//! their reference lists. Every query is keyed by the client id the caller authenticated;
//! the SQL is in `queries.rs`.

use cyberbackup_core::repo::{BlobClass, BlobId, PackEntry, PackId, SnapshotId, Timestamp};

use super::error::CatalogError;
use super::model::ClientId;
use super::{Catalog, now, queries};

/// A client's repository: its config object and key objects, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRecord {
    /// The encoded config object.
    pub config: Vec<u8>,
    /// The encoded key objects, in the order they were added.
    pub keys: Vec<Vec<u8>>,
}

/// Result of [`Catalog::add_repo_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddKeyOutcome {
    /// Stored.
    Added,
    /// These exact bytes were already stored (a retried request): nothing changed.
    AlreadyStored,
    /// The client has no repository.
    NoRepository,
    /// The repository already holds the most key objects allowed.
    TooMany,
}

/// Result of [`Catalog::remove_repo_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveKeyOutcome {
    /// Deleted.
    Removed,
    /// No key object of the repository has these bytes.
    NotStored,
    /// The client has no repository.
    NoRepository,
    /// It is the repository's only key object: kept.
    LastKey,
}

/// Where an indexed blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// The pack holding it.
    pub pack: PackId,
    /// Its first byte in the pack.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u32,
    /// Sealed blob or reference chunk.
    pub class: BlobClass,
    /// For a reference chunk: a commit already checked its bytes against its ID and found
    /// every blob it lists indexed.
    pub verified: bool,
    /// A prune found no snapshot referencing it; it is deleted after the grace period
    /// unless a commit or an upload claims it first.
    pub condemned: bool,
    /// Its pack is marked corrupt by the scrub: it may be unreadable; an upload of the same
    /// blob moves it to the new pack.
    pub damaged: bool,
}

/// A blob's location and the blobs of its pack one ranged read from its offset returns
/// whole ([`Catalog::blob_window`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobWindow {
    /// The blob asked for.
    pub location: BlobLocation,
    /// The end of the range to read (exclusive): the end of the last blob listed.
    pub end: u64,
    /// Every blob wholly in `location.offset..end`, the one asked for first: ID, offset and
    /// length.
    pub blobs: Vec<(BlobId, u64, u32)>,
}

/// A snapshot that passed the commit check, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSnapshot {
    /// Its ID.
    pub id: SnapshotId,
    /// Object size in bytes.
    pub size: u64,
    /// Backup time from the envelope: seconds since the Unix epoch.
    pub time_secs: i64,
    /// Backup time from the envelope: nanoseconds.
    pub time_nanos: u32,
    /// The envelope's group (host and paths, keyed).
    pub group: [u8; 32],
    /// The envelope's content size: bytes of file content in the snapshot.
    pub total_bytes: u64,
    /// The envelope's blob count.
    pub blob_count: u64,
    /// When the server stored it (Unix seconds).
    pub stored_at: u64,
    /// Its reference chunks, in envelope order (kept for the later prune).
    pub ref_chunks: Vec<BlobId>,
    /// Reference chunks this commit verified (marked so the next commit skips them).
    pub verified_chunks: Vec<BlobId>,
    /// Condemned blobs and reference chunks this snapshot references: claimed again, so a
    /// prune's sweep keeps them.
    pub revived: Vec<BlobId>,
}

/// One recorded snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Its ID.
    pub id: SnapshotId,
    /// Object size in bytes.
    pub size: u64,
    /// When the server stored it (Unix seconds).
    pub stored_at: u64,
    /// Backup time from the envelope.
    pub time: Timestamp,
    /// The envelope's group; `None` when recorded before the server kept it.
    pub group: Option<[u8; 32]>,
    /// The envelope's content size; `None` when recorded before the server kept it.
    pub total_bytes: Option<u64>,
    /// The envelope's blob count; `None` when recorded before the server kept it.
    pub blob_count: Option<u64>,
}

impl Catalog {
    /// Creates the client's repository with its first key object; `false` if it has one.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn create_repository(
        &self,
        client: ClientId,
        config: Vec<u8>,
        key: Vec<u8>,
    ) -> Result<bool, CatalogError> {
        let now = now();
        self.write(move |c| queries::create_repository(c, &client, &config, &key, &now))
            .await
    }

    /// Adds a key object to the client's repository (at most `max_keys` in all).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails; refusals are `Ok` outcomes.
    pub async fn add_repo_key(
        &self,
        client: ClientId,
        key: Vec<u8>,
        max_keys: usize,
    ) -> Result<AddKeyOutcome, CatalogError> {
        let now = now();
        self.write(move |c| queries::add_repo_key(c, &client, &key, max_keys, &now))
            .await
    }

    /// Removes the key object with exactly these bytes (never the repository's last).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails; refusals are `Ok` outcomes.
    pub async fn remove_repo_key(
        &self,
        client: ClientId,
        key: Vec<u8>,
    ) -> Result<RemoveKeyOutcome, CatalogError> {
        self.write(move |c| queries::remove_repo_key(c, &client, &key))
            .await
    }

    /// Whether the client has a repository.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn repository_exists(&self, client: ClientId) -> Result<bool, CatalogError> {
        self.read(move |c| queries::repository_exists(c, &client))
            .await
    }

    /// The client's repository config and key objects.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn repository(&self, client: ClientId) -> Result<Option<RepoRecord>, CatalogError> {
        self.read(move |c| queries::repository(c, &client)).await
    }

    /// Which of `packs` are indexed for the client.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn packs_indexed(
        &self,
        client: ClientId,
        packs: Vec<PackId>,
    ) -> Result<Vec<bool>, CatalogError> {
        self.read(move |c| queries::packs_indexed(c, &client, &packs))
            .await
    }

    /// Which of `snapshots` are recorded for the client.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn snapshots_recorded(
        &self,
        client: ClientId,
        snapshots: Vec<SnapshotId>,
    ) -> Result<Vec<bool>, CatalogError> {
        self.read(move |c| queries::snapshots_recorded(c, &client, &snapshots))
            .await
    }

    /// Indexes a pack the backend has durably stored, with all its entries, in one
    /// transaction (a blob already indexed keeps its first location).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn index_pack(
        &self,
        client: ClientId,
        pack: PackId,
        size: u64,
        entries: Vec<PackEntry>,
        stored_at: u64,
    ) -> Result<(), CatalogError> {
        self.write(move |c| queries::index_pack(c, &client, &pack, size, &entries, stored_at))
            .await
    }

    /// Where each of `ids` is stored for the client (`None`: not indexed).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn blob_locations(
        &self,
        client: ClientId,
        ids: Vec<BlobId>,
    ) -> Result<Vec<Option<BlobLocation>>, CatalogError> {
        self.read(move |c| queries::blob_locations(c, &client, &ids))
            .await
    }

    /// Where blob `id` is stored, with the blobs of its pack that lie wholly within the
    /// `readahead(location)` bytes from its offset (at least the blob itself; at most
    /// `max_blobs`, by offset): what one ranged read of the pack serves. `None`: not indexed.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn blob_window(
        &self,
        client: ClientId,
        id: BlobId,
        max_blobs: u32,
        readahead: impl FnOnce(&BlobLocation) -> u64 + Send + 'static,
    ) -> Result<Option<BlobWindow>, CatalogError> {
        self.read(move |c| {
            let Some(Some(location)) = queries::blob_locations(c, &client, &[id])?.pop() else {
                return Ok(None);
            };
            let start = location.offset;
            let own_end = start + u64::from(location.len);
            let wanted = readahead(&location).max(u64::from(location.len));
            let blobs = if wanted > u64::from(location.len) && max_blobs > 1 {
                queries::blobs_in_range(
                    c,
                    &client,
                    &location.pack,
                    start..start + wanted,
                    max_blobs,
                )?
            } else {
                vec![(id, start, location.len)]
            };
            let end = blobs
                .last()
                .map_or(own_end, |(_, offset, len)| offset + u64::from(*len))
                .max(own_end);
            Ok(Some(BlobWindow {
                location,
                end,
                blobs,
            }))
        })
        .await
    }

    /// Records a committed snapshot (see [`NewSnapshot`]) in one transaction; `false` if it
    /// was already recorded.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn record_snapshot(
        &self,
        client: ClientId,
        snapshot: NewSnapshot,
    ) -> Result<bool, CatalogError> {
        self.write(move |c| queries::record_snapshot(c, &client, &snapshot))
            .await
    }

    /// The client's snapshots, oldest backup first.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn list_snapshots(
        &self,
        client: ClientId,
    ) -> Result<Vec<SnapshotRecord>, CatalogError> {
        self.read(move |c| queries::list_snapshots(c, &client))
            .await
    }

    /// Deletes a snapshot record and its reference list and writes its forget tombstone
    /// (dated `now`, Unix seconds); `false` if it was not recorded.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn forget_snapshot(
        &self,
        client: ClientId,
        id: SnapshotId,
        now: u64,
    ) -> Result<bool, CatalogError> {
        self.write(move |c| queries::forget_snapshot(c, &client, &id, now))
            .await
    }

    /// Which of `snapshots` have a forget tombstone (forgotten; the object may remain).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn snapshots_forgotten(
        &self,
        client: ClientId,
        snapshots: Vec<SnapshotId>,
    ) -> Result<Vec<bool>, CatalogError> {
        self.read(move |c| queries::snapshots_forgotten(c, &client, &snapshots))
            .await
    }

    /// Removes a snapshot's forget tombstone once its object is deleted.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn clear_tombstone(
        &self,
        client: ClientId,
        id: SnapshotId,
    ) -> Result<(), CatalogError> {
        self.write(move |c| queries::clear_tombstone(c, &client, &id))
            .await
    }
}
