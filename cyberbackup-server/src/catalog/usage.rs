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

#[cfg(test)]
mod tests {
    use cyberbackup_core::repo::SnapshotId;

    use super::*;
    use crate::catalog::repo::NewSnapshot;

    fn snapshot(seed: u8, total_bytes: u64, stored_at: u64) -> NewSnapshot {
        NewSnapshot {
            id: SnapshotId([seed; 32]),
            size: 200,
            time_secs: 1_700_000_000,
            time_nanos: 0,
            group: [1; 32],
            total_bytes,
            blob_count: 3,
            stored_at,
            ref_chunks: Vec::new(),
            verified_chunks: Vec::new(),
            revived: Vec::new(),
        }
    }

    /// The content total is known only while every snapshot has one: a row recorded before
    /// migration 11 (NULL) makes it unknown instead of too small.
    #[tokio::test]
    async fn summaries_count_snapshots_and_know_totals_only_when_all_have_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("defensive.db");
        let catalog = Catalog::open(&path).await.unwrap();
        let client = [7; 16];
        catalog
            .create_repository(client, b"config".to_vec(), b"key".to_vec())
            .await
            .unwrap();
        catalog
            .record_snapshot(client, snapshot(1, 500, 100))
            .await
            .unwrap();
        catalog
            .record_snapshot(client, snapshot(2, 700, 300))
            .await
            .unwrap();

        let known = catalog.snapshot_summaries().await.unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE repo_snapshots SET TotalBytes = NULL, BlobCount = NULL
                 WHERE SnapshotId = ?1",
                [[1u8; 32]],
            )
            .unwrap();
        let partly = catalog.snapshot_summaries().await.unwrap();
        let listed = catalog.list_snapshots(client).await.unwrap();

        let expected = SnapshotSummary {
            snapshots: 2,
            last_stored_at: 300,
            total_bytes: Some(1200),
        };
        assert_eq!(known.get(&client), Some(&expected));
        assert_eq!(
            partly.get(&client),
            Some(&SnapshotSummary {
                total_bytes: None,
                ..expected
            })
        );
        let totals: Vec<_> = listed
            .iter()
            .map(|s| (s.total_bytes, s.blob_count))
            .collect();
        assert_eq!(totals, [(None, None), (Some(700), Some(3))]);
    }
}
