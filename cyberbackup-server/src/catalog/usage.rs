//! How many bytes each client's repository takes: the sum of its stored packs' sizes
//! (after deduplication and compression), for quotas (`crate::repository`) and the admin
//! dashboard. The SQL is in `queries.rs`.

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
}
