//! How many bytes each client's repository takes: the sum of its stored packs' sizes
//! (after deduplication and compression), for quotas (`crate::repository`) and the admin
//! dashboard, and what each client's snapshots amount to. The SQL is in `queries.rs`.

use std::collections::BTreeMap;

use super::error::CatalogError;
use super::model::ClientId;
use super::{Catalog, queries};

/// One client's repository usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepoUsageRecord {
    /// The client.
    pub client_id: ClientId,
    /// Stored packs.
    pub packs: u64,
    /// Bytes of its stored packs.
    pub stored_bytes: u64,
    /// Packs marked corrupt by the scrub.
    pub corrupt_packs: u64,
}

/// What one client's recorded snapshots amount to (envelope data only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// Recorded snapshots.
    pub snapshots: u64,
    /// When the server stored the newest of them (Unix seconds).
    pub last_stored_at: u64,
    /// Sum of their envelope content sizes; `None` when some were recorded before the
    /// catalog kept it (schema migration 11).
    pub total_bytes: Option<u64>,
}

impl Catalog {
    /// Bytes of the client's stored packs (0 without a repository).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn repo_stored_bytes(&self, client: ClientId) -> Result<u64, CatalogError> {
        self.read(move |c| queries::repo_stored_bytes(c, &client))
            .await
    }

    /// The usage of every repository, by client id.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn repo_usage(&self) -> Result<Vec<RepoUsageRecord>, CatalogError> {
        self.read(queries::repo_usage).await
    }

    /// The [`SnapshotSummary`] of every client with at least one snapshot.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn snapshot_summaries(
        &self,
    ) -> Result<BTreeMap<ClientId, SnapshotSummary>, CatalogError> {
        self.read(queries::snapshot_summaries).await
    }
}
