//! The narrow trait between the snapshot engine and the network: the repository operations
//! of one v4 connection (docs/protocol-v4.md). The engine never sees a socket; tests drive it
//! with an in-memory implementation.

use bytes::Bytes;
use std::collections::BTreeSet;
use std::future::Future;

use cyberbackup_core::repo::{BlobId, PackId, SnapshotId};
use cyberbackup_core::v4::repository::{RepoPruneReport, RepoUsage};

use crate::v4::V4ClientError;

/// The repository operations of one server connection (docs/protocol-v4.md), one at a time.
pub trait RepoRemote: Send {
    /// The repository's config and key objects, or `None` when the client has none yet.
    fn open(&mut self) -> impl Future<Output = Result<Option<RemoteRepo>, V4ClientError>> + Send;
    /// Creates the repository with its config and a first key object.
    fn create(
        &mut self,
        config: Bytes,
        key: Bytes,
    ) -> impl Future<Output = Result<(), V4ClientError>> + Send;
    /// Adds a key object.
    fn add_key(&mut self, key: Bytes) -> impl Future<Output = Result<(), V4ClientError>> + Send;
    /// At most MAX_HAVE_BATCH (2000) ids per call; one bool per id.
    fn have(
        &mut self,
        ids: &[BlobId],
    ) -> impl Future<Output = Result<Vec<bool>, V4ClientError>> + Send;
    /// Stores a whole pack (already stored: ok).
    fn put_pack(
        &mut self,
        id: PackId,
        pack: Bytes,
    ) -> impl Future<Output = Result<(), V4ClientError>> + Send;
    /// Commits a snapshot object; refused when a blob it references is not stored.
    fn put_snapshot(
        &mut self,
        id: SnapshotId,
        object: Bytes,
    ) -> impl Future<Output = Result<(), V4ClientError>> + Send;
    /// One sealed blob's (or reference chunk's) bytes.
    fn get_blob(&mut self, id: BlobId)
    -> impl Future<Output = Result<Bytes, V4ClientError>> + Send;
    /// The bytes of each of `ids`, in order. A connection keeps the requests in flight
    /// together; this default asks one at a time.
    fn get_blobs(
        &mut self,
        ids: &[BlobId],
    ) -> impl Future<Output = Result<Vec<Bytes>, V4ClientError>> + Send {
        async move {
            let mut blobs = Vec::with_capacity(ids.len());
            for id in ids {
                blobs.push(self.get_blob(*id).await?);
            }
            Ok(blobs)
        }
    }
    /// One snapshot object.
    fn get_snapshot(
        &mut self,
        id: SnapshotId,
    ) -> impl Future<Output = Result<Bytes, V4ClientError>> + Send;
    /// Every snapshot of the repository.
    fn snapshots(
        &mut self,
    ) -> impl Future<Output = Result<Vec<SnapshotListing>, V4ClientError>> + Send;
    /// Deletes a snapshot record (its blobs stay until a prune).
    fn forget(&mut self, id: SnapshotId) -> impl Future<Output = Result<(), V4ClientError>> + Send;
    /// One page of the IDs of this repository's blobs that lie in packs the server's scrub
    /// found damaged: those after `after`, increasing, and whether more follow.
    fn damaged(
        &mut self,
        after: Option<BlobId>,
    ) -> impl Future<Output = Result<(Vec<BlobId>, bool), V4ClientError>> + Send;
    /// The repository's stored bytes and quotas.
    fn usage(&mut self) -> impl Future<Output = Result<RepoUsage, V4ClientError>> + Send;
    /// Removes a key object (its encoding as [`Self::open`] returned it).
    fn remove_key(&mut self, key: Bytes) -> impl Future<Output = Result<(), V4ClientError>> + Send;
    /// Has the server prune the repository now (manage devices only).
    fn prune(&mut self) -> impl Future<Output = Result<RepoPruneReport, V4ClientError>> + Send;
}

/// What OPEN returns for an existing repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRepo {
    /// The encoded [`cyberbackup_core::repo::RepoConfig`].
    pub config: Bytes,
    /// Every encoded [`cyberbackup_core::repo::KeyObject`].
    pub keys: Vec<Bytes>,
}

/// One row of SNAPSHOTS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotListing {
    /// The snapshot's ID.
    pub id: SnapshotId,
    /// Size of the snapshot object in bytes.
    pub size: u64,
    /// When the server stored it, Unix seconds.
    pub stored_at: u64,
}

/// Most blob IDs in one HAVE request.
pub const MAX_HAVE_BATCH: usize = 2000;

/// HAVE for any number of IDs: batches of [`MAX_HAVE_BATCH`], each answer checked to have one
/// bool per ID (a server that answers otherwise broke the protocol).
pub(super) async fn have_all<R: RepoRemote>(
    remote: &mut R,
    ids: &[BlobId],
) -> Result<Vec<bool>, V4ClientError> {
    let mut out = Vec::with_capacity(ids.len());
    for batch in ids.chunks(MAX_HAVE_BATCH) {
        let have = remote.have(batch).await?;
        if have.len() != batch.len() {
            return Err(V4ClientError::Session(
                cyberbackup_core::v4::V4Error::Protocol(format!(
                    "the server answered HAVE for {} blob IDs with {} answers",
                    batch.len(),
                    have.len()
                )),
            ));
        }
        out.extend(have);
    }
    Ok(out)
}

/// Every damaged blob ID, page by page; a server whose pages do not move forward broke the
/// protocol (the session checks each page against its cursor).
pub(super) async fn damaged_all<R: RepoRemote>(
    remote: &mut R,
) -> Result<BTreeSet<BlobId>, V4ClientError> {
    let mut all = BTreeSet::new();
    let mut after = None;
    loop {
        let (page, more) = remote.damaged(after).await?;
        after = page.last().copied();
        all.extend(page);
        if !more || after.is_none() {
            return Ok(all);
        }
    }
}
