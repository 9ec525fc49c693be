//! What the scrub (`crate::scrub`) and the client's `DAMAGED` request need of the store:
//! stored packs read back piece by piece (so the scrub can hash and pace them), and the
//! client's blobs that lie in packs the scrub marked corrupt.

use std::ops::Range;

use bytes::Bytes;
use cyberbackup_core::names::ClientId;
use cyberbackup_core::repo::{BlobId, PackId};

use super::{RepoLockGuard, RepoStore, RepoStoreError, layout};
use crate::backend::BackendError;
use crate::catalog::LockMode;

/// Why a piece of a stored pack could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PieceError {
    /// The backend holds no object for the pack: it is lost.
    #[error("missing from the storage backend")]
    Missing,
    /// The stored object is shorter than its index entry.
    #[error("only {len_bytes} bytes are stored")]
    Short {
        /// The stored object's length.
        len_bytes: u64,
    },
    /// The backend or the catalog failed: no verdict on the pack (try again later).
    #[error(transparent)]
    Failed(#[from] RepoStoreError),
}

impl RepoStore {
    /// Holds off the client's prune deletions (shared with commits) while the scrub checks
    /// one of its packs, so a pack is never deleted under a read that would then call it
    /// lost.
    ///
    /// # Errors
    /// [`RepoStoreError::Catalog`] when the lock shared by the servers cannot be taken.
    pub async fn scrub_guard(&self, client: ClientId) -> Result<RepoLockGuard, RepoStoreError> {
        self.maintenance_lock(client, LockMode::Shared).await
    }

    /// Bytes `range` of the client's stored pack, straight from the backend.
    ///
    /// # Errors
    /// [`PieceError::Missing`], [`PieceError::Short`], or [`PieceError::Failed`].
    pub async fn read_pack_piece(
        &self,
        client: ClientId,
        pack: &PackId,
        range: Range<u64>,
    ) -> Result<Bytes, PieceError> {
        let key = layout::pack_key(client, pack);
        match self.inner.backend.get(&key, Some(range)).await {
            Ok(bytes) => Ok(bytes),
            Err(BackendError::NotFound { .. }) => Err(PieceError::Missing),
            Err(BackendError::InvalidRange { len_bytes, .. }) => {
                Err(PieceError::Short { len_bytes })
            }
            Err(other) => Err(PieceError::Failed(other.into())),
        }
    }

    /// Up to `max` IDs of the client's blobs indexed in packs marked corrupt, greater than
    /// `after`, in increasing order, and whether more follow.
    ///
    /// # Errors
    /// [`RepoStoreError::NoRepository`], [`RepoStoreError::Catalog`].
    pub async fn damaged_blobs(
        &self,
        client: ClientId,
        after: Option<BlobId>,
        max: usize,
    ) -> Result<(Vec<BlobId>, bool), RepoStoreError> {
        self.require_repository(client).await?;
        let limit = u32::try_from(max.saturating_add(1)).unwrap_or(u32::MAX);
        let mut ids = self
            .inner
            .catalog
            .damaged_blobs(client.0, after, limit)
            .await?;
        let more = ids.len() > max;
        ids.truncate(max);
        Ok((ids, more))
    }
}
