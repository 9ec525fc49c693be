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

/// The answer of [`Catalog::reserve_quota`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaCheck {
    /// The bytes fit and are reserved under this ID until [`Catalog::release_quota`].
    Reserved([u8; 16]),
    /// They do not fit: the client's stored bytes plus what its puts in flight reserved.
    Exceeded {
        /// Stored and reserved bytes counted against the quota.
        counted: u64,
    },
}

impl Catalog {
    /// Reserves `bytes` against the client's hard quota `hard`, in one transaction with the
    /// check (so two servers' puts never both fit in the last space): refused when its stored
    /// bytes, plus the unexpired reservations of its puts in flight, plus `bytes` exceed
    /// `hard`. The reservation counts until `expires_at` (Unix seconds) unless released.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn reserve_quota(
        &self,
        client: ClientId,
        reservation: [u8; 16],
        bytes: u64,
        hard: u64,
        now: u64,
        expires_at: u64,
    ) -> Result<QuotaCheck, CatalogError> {
        self.write(move |c| {
            queries::reserve_quota(c, &client, &reservation, bytes, hard, now, expires_at)
        })
        .await
    }

    /// Ends a reservation of [`reserve_quota`](Self::reserve_quota) (its pack is indexed and
    /// counted as stored, or its put ended); a missing one is no error.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn release_quota(&self, reservation: [u8; 16]) -> Result<(), CatalogError> {
        self.write(move |c| queries::release_quota(c, &reservation))
            .await
    }

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
    use crate::catalog::testing::TestGuard;

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

    /// Two catalogs on one database reserve against one client's hard quota of 100 bytes.
    async fn reservations_count_against_the_hard_quota_until_released_or_expired(guard: TestGuard) {
        let (guard, a) = guard.open().await;
        let b = Catalog::open_at(guard.location.clone()).await.unwrap();
        let client = [4; 16];
        let now = 1_000;
        let reserve = |catalog: &Catalog, id: u8, bytes: u64, now: u64| {
            let catalog = catalog.clone();
            async move {
                catalog
                    .reserve_quota(client, [id; 16], bytes, 100, now, now + 60)
                    .await
                    .unwrap()
            }
        };

        assert_eq!(reserve(&a, 1, 60, now).await, QuotaCheck::Reserved([1; 16]));
        assert_eq!(
            reserve(&b, 2, 50, now).await,
            QuotaCheck::Exceeded { counted: 60 }
        );
        assert_eq!(reserve(&b, 3, 40, now).await, QuotaCheck::Reserved([3; 16]));
        assert_eq!(
            reserve(&a, 4, 1, now).await,
            QuotaCheck::Exceeded { counted: 100 }
        );
        // Another client's quota is its own.
        assert_eq!(
            a.reserve_quota([5; 16], [5; 16], 100, 100, now, now + 60)
                .await
                .unwrap(),
            QuotaCheck::Reserved([5; 16])
        );

        a.release_quota([1; 16]).await.unwrap();
        assert_eq!(reserve(&b, 6, 50, now).await, QuotaCheck::Reserved([6; 16]));
        // A reservation left by a server that died stops counting when it expires.
        assert_eq!(
            reserve(&b, 7, 20, now).await,
            QuotaCheck::Exceeded { counted: 90 }
        );
        assert_eq!(
            reserve(&b, 8, 100, now + 61).await,
            QuotaCheck::Reserved([8; 16])
        );
    }

    on_both_engines!(reservations_count_against_the_hard_quota_until_released_or_expired);
}
