//! Periodic cleanup: discards transfers abandoned in `receiving`/`received` (deleting their
//! temp files) and removes stray `.cb-partial-*` files (e.g. after a crash).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::error::ServerError;
use crate::storage::Storage;

/// What one maintenance run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Catalog rows moved to `discarded`.
    pub discarded_rows: usize,
    /// Temp files deleted (of discarded rows, plus stray leftovers).
    pub removed_temp_files: usize,
    /// Temp paths in the catalog that were refused as outside the storage tree.
    pub refused_paths: usize,
}

/// Runs maintenance once: transfers not updated for `abandoned_after` are discarded and their
/// temp files removed, then `.cb-partial-*` files older than `abandoned_after` are removed.
///
/// # Errors
/// [`ServerError::Catalog`] or [`ServerError::Storage`]; rows handled before the failure stay
/// handled.
pub async fn run_once(
    catalog: &Catalog,
    storage: &Storage,
    abandoned_after: Duration,
) -> Result<MaintenanceReport, ServerError> {
    let mut report = MaintenanceReport::default();
    let cutoff = SystemTime::now()
        .checked_sub(abandoned_after)
        .unwrap_or(UNIX_EPOCH);
    for transfer in catalog.abandoned_transfers(cutoff).await? {
        if let Some(temp) = &transfer.temp_path {
            match storage.remove(temp).await {
                Ok(true) => report.removed_temp_files += 1,
                Ok(false) => {}
                Err(crate::storage::StorageError::OutsideClientDir { path }) => {
                    tracing::warn!(row = %transfer.row, %path, "catalog temp path refused");
                    report.refused_paths += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if catalog.discard_file(transfer.row).await? {
            report.discarded_rows += 1;
        }
    }
    report.removed_temp_files += storage.remove_leftovers(abandoned_after).await?;
    Ok(report)
}

/// Runs [`run_once`] every `interval` (first run immediately) until `shutdown` is cancelled,
/// logging each report. A failed run is logged and retried at the next tick.
#[must_use]
pub fn spawn(
    catalog: Catalog,
    storage: Storage,
    interval: Duration,
    abandoned_after: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            match run_once(&catalog, &storage, abandoned_after).await {
                Ok(report) if report == MaintenanceReport::default() => {
                    tracing::debug!("maintenance: nothing to clean");
                }
                Ok(report) => tracing::info!(
                    discarded_rows = report.discarded_rows,
                    removed_temp_files = report.removed_temp_files,
                    refused_paths = report.refused_paths,
                    "maintenance done"
                ),
                Err(error) => tracing::warn!(%error, "maintenance failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ReceivedFile;

    const CLIENT: [u8; 16] = [0x11; 16];

    #[tokio::test]
    async fn abandoned_transfers_are_discarded_and_their_temp_files_removed() {
        let (_dir, catalog, storage) = setup().await;
        let partial = storage.create_partial(CLIENT, b"a.txt").await.unwrap();
        let (row, _) = catalog
            .begin_file(
                CLIENT,
                b"a.txt".to_vec(),
                partial.relative_path().into(),
                Some(partial.relative_temp_path().into()),
            )
            .await
            .unwrap();
        let temp = partial.temp_path().to_path_buf();
        std::mem::forget(partial); // a crashed transfer: nothing cleans up

        let fresh = run_once(&catalog, &storage, Duration::from_secs(3600))
            .await
            .unwrap();
        let temp_survived = temp.exists();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stale = run_once(&catalog, &storage, Duration::from_millis(1))
            .await
            .unwrap();

        assert_eq!(fresh, MaintenanceReport::default());
        assert!(temp_survived);
        assert_eq!(stale.discarded_rows, 1);
        assert_eq!(stale.removed_temp_files, 1);
        assert!(!temp.exists());
        assert!(
            !catalog.discard_file(row).await.unwrap(),
            "row already discarded"
        );
    }

    #[tokio::test]
    async fn verified_files_and_fresh_leftovers_are_kept() {
        let (_dir, catalog, storage) = setup().await;
        let mut partial = storage.create_partial(CLIENT, b"v.txt").await.unwrap();
        partial.append(b"data").await.unwrap();
        let (row, _) = catalog
            .begin_file(
                CLIENT,
                b"v.txt".to_vec(),
                partial.relative_path().into(),
                Some(partial.relative_temp_path().into()),
            )
            .await
            .unwrap();
        let dest = partial.commit(None).await.unwrap();
        let facts = ReceivedFile {
            size: 4,
            ciphertext_size: 16,
            cksum: 1,
            sha256: [0; 32],
        };
        catalog.mark_received(row, facts).await.unwrap();
        catalog.commit_file(row, 1).await.unwrap();
        let stray = storage
            .root()
            .join(format!("{}stray", crate::storage::PARTIAL_PREFIX));
        std::fs::write(&stray, b"x").unwrap();

        let report = run_once(&catalog, &storage, Duration::from_secs(3600))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let later = run_once(&catalog, &storage, Duration::from_millis(1))
            .await
            .unwrap();

        assert_eq!(report, MaintenanceReport::default());
        assert_eq!(later.removed_temp_files, 1);
        assert_eq!(later.discarded_rows, 0);
        assert!(dest.exists());
        assert!(!stray.exists());
    }

    #[tokio::test]
    async fn spawned_task_stops_on_shutdown() {
        let (_dir, catalog, storage) = setup().await;
        let shutdown = CancellationToken::new();
        let handle = spawn(
            catalog,
            storage,
            Duration::from_millis(5),
            Duration::from_secs(60),
            shutdown.clone(),
        );

        tokio::time::sleep(Duration::from_millis(30)).await;
        shutdown.cancel();
        let joined = tokio::time::timeout(Duration::from_secs(5), handle).await;

        assert!(matches!(joined, Ok(Ok(()))), "{joined:?}");
    }

    async fn setup() -> (tempfile::TempDir, Catalog, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let catalog = Catalog::open(dir.path().join("defensive.db"))
            .await
            .unwrap();
        catalog
            .register_client(CLIENT, b"c".to_vec(), 3)
            .await
            .unwrap();
        (dir, catalog, storage)
    }
}
