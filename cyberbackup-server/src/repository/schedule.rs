//! The scheduled prune: every `prune_interval_secs`, [`RepoStore::prune`] of every client's
//! repository in turn, with the totals kept for the admin API (`/api/v1/maintenance`) and
//! logged. One repository failing (a damaged reference chunk) is logged and skipped; the
//! others are still pruned.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use cyberbackup_core::names::ClientId;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{PruneOptions, PruneReport, RepoStore, RepoStoreError};

/// One prune of every repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneRun {
    /// When it finished.
    pub finished_at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// Repositories pruned.
    pub repositories: u64,
    /// The sum of their reports.
    pub totals: PruneReport,
    /// Repositories whose prune failed: client id (hex) and the error.
    pub failed: Vec<(String, String)>,
}

/// The latest [`PruneRun`], shared with the admin API. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LastPrune(Arc<Mutex<Option<PruneRun>>>);

impl LastPrune {
    /// The latest run, if one finished.
    #[must_use]
    pub fn get(&self) -> Option<PruneRun> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records a finished run.
    pub fn set(&self, run: PruneRun) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(run);
    }
}

impl RepoStore {
    /// Prunes every client's repository once.
    ///
    /// # Errors
    /// Only when the list of repositories cannot be read; a failing repository is recorded
    /// in [`PruneRun::failed`].
    pub async fn prune_all(&self, options: &PruneOptions) -> Result<PruneRun, RepoStoreError> {
        let started = Instant::now();
        let clients = self.inner.catalog.repository_clients().await?;
        let mut run = PruneRun {
            finished_at: SystemTime::now(),
            duration: Duration::ZERO,
            repositories: 0,
            totals: PruneReport::default(),
            failed: Vec::new(),
        };
        for client in clients {
            match self.prune(ClientId(client), options).await {
                Ok(report) => {
                    run.repositories += 1;
                    run.totals += report;
                }
                Err(error) => {
                    let client = hex::encode(client);
                    tracing::error!(%client, %error, "prune of a repository failed");
                    run.failed.push((client, error.to_string()));
                }
            }
        }
        run.finished_at = SystemTime::now();
        run.duration = started.elapsed();
        Ok(run)
    }

    /// Runs [`Self::prune_all`] every `interval` (the first after one interval) until
    /// `shutdown`, recording each run in `last`. `interval` zero: returns a task that only
    /// waits for `shutdown`.
    #[must_use]
    pub fn spawn_scheduled_prune(
        &self,
        interval: Duration,
        options: PruneOptions,
        shutdown: CancellationToken,
        last: LastPrune,
    ) -> JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            if interval.is_zero() {
                shutdown.cancelled().await;
                return;
            }
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                // A prune cut off by shutdown is safe: every step is one transaction.
                let run = tokio::select! {
                    () = shutdown.cancelled() => break,
                    run = store.prune_all(&options) => run,
                };
                match run {
                    Ok(run) => {
                        tracing::info!(
                            repositories = run.repositories,
                            failed = run.failed.len(),
                            bytes_freed = run.totals.bytes_freed,
                            packs_deleted = run.totals.packs_deleted,
                            "scheduled prune done"
                        );
                        last.set(run);
                    }
                    Err(error) => tracing::warn!(%error, "scheduled prune failed"),
                }
            }
        })
    }
}

impl std::ops::AddAssign for PruneReport {
    fn add_assign(&mut self, other: Self) {
        let Self {
            snapshots,
            live_blobs,
            condemned,
            revived,
            deleted_blobs,
            deleted_blob_bytes,
            packs_repacked,
            packs_written,
            bytes_written,
            packs_retired,
            bytes_retired,
            packs_deleted,
            bytes_freed,
        } = other;
        self.snapshots += snapshots;
        self.live_blobs += live_blobs;
        self.condemned += condemned;
        self.revived += revived;
        self.deleted_blobs += deleted_blobs;
        self.deleted_blob_bytes += deleted_blob_bytes;
        self.packs_repacked += packs_repacked;
        self.packs_written += packs_written;
        self.bytes_written += bytes_written;
        self.packs_retired += packs_retired;
        self.bytes_retired += bytes_retired;
        self.packs_deleted += packs_deleted;
        self.bytes_freed += bytes_freed;
    }
}
