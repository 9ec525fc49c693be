//! The scheduled prune: every `prune_interval_secs`, for every client's repository in turn,
//! the server's retention policy ([`RepoStore::apply_retention`]) and then
//! [`RepoStore::prune`], with the totals kept for the admin API (`/api/v1/maintenance`) and
//! logged. One repository failing (a damaged reference chunk) is logged and skipped; the
//! others are still pruned. Of the servers sharing a catalog, one runs each pass (the one
//! that takes [`ServiceLock::ScheduledPrune`]); the others skip it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use cyberbackup_core::names::ClientId;
use cyberbackup_core::repo::retention::RetentionPolicy;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::catalog::ServiceLock;

use super::{PruneOptions, PruneReport, RepoStore, RepoStoreError, RetentionPolicies, unix_now};

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

/// The latest [`PruneRun`] and the totals of every run since start (scheduled and
/// `POST /api/v1/prune`), shared with the admin API and `/metrics`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LastPrune(Arc<Mutex<PruneHistory>>);

#[derive(Debug, Default)]
struct PruneHistory {
    last: Option<PruneRun>,
    runs: u64,
    bytes_freed: u64,
}

impl LastPrune {
    /// The latest run, if one finished.
    #[must_use]
    pub fn get(&self) -> Option<PruneRun> {
        self.lock().last.clone()
    }

    /// Runs finished since start and the bytes they gave back, in all.
    #[must_use]
    pub fn totals(&self) -> (u64, u64) {
        let history = self.lock();
        (history.runs, history.bytes_freed)
    }

    /// Records a finished run.
    pub fn set(&self, run: PruneRun) {
        let mut history = self.lock();
        history.runs += 1;
        history.bytes_freed = history.bytes_freed.saturating_add(run.totals.bytes_freed);
        history.last = Some(run);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PruneHistory> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RepoStore {
    /// Prunes every client's repository once.
    ///
    /// # Errors
    /// Only when the list of repositories cannot be read; a failing repository is recorded
    /// in [`PruneRun::failed`].
    pub async fn prune_all(
        &self,
        options: &PruneOptions,
        retention: &RetentionPolicies,
    ) -> Result<PruneRun, RepoStoreError> {
        let started = Instant::now();
        let clients = self.inner.catalog.repository_clients().await?;
        let names: BTreeMap<[u8; 16], Vec<u8>> = self
            .inner
            .catalog
            .list_clients()
            .await?
            .into_iter()
            .map(|c| (c.id, c.name))
            .collect();
        let mut run = PruneRun {
            finished_at: SystemTime::now(),
            duration: Duration::ZERO,
            repositories: 0,
            totals: PruneReport::default(),
            failed: Vec::new(),
        };
        for client in clients {
            let policy = names
                .get(&client)
                .and_then(|name| retention.for_client(name));
            match self
                .retain_and_prune(ClientId(client), policy, options)
                .await
            {
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

    /// Applies `policy` (if any) to the client's snapshots, then prunes its repository.
    async fn retain_and_prune(
        &self,
        client: ClientId,
        policy: Option<&RetentionPolicy>,
        options: &PruneOptions,
    ) -> Result<PruneReport, RepoStoreError> {
        let forgotten = match policy {
            Some(policy) => self
                .apply_retention(client, policy, unix_now())
                .await?
                .len(),
            None => 0,
        };
        let report = self.prune(client, options).await?;
        Ok(PruneReport {
            snapshots_forgotten: forgotten as u64,
            ..report
        })
    }

    /// Runs [`Self::prune_all`] every `interval` (the first after one interval) until
    /// `shutdown`, recording each run in `last`. `interval` zero: returns a task that only
    /// waits for `shutdown`.
    #[must_use]
    pub fn spawn_scheduled_prune(
        &self,
        interval: Duration,
        options: PruneOptions,
        retention: RetentionPolicies,
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
                let Some(_elected) = store
                    .inner
                    .catalog
                    .elect(ServiceLock::ScheduledPrune, "scheduled prune")
                    .await
                else {
                    continue;
                };
                // A prune cut off by shutdown is safe: every step is one transaction.
                let run = tokio::select! {
                    () = shutdown.cancelled() => break,
                    run = store.prune_all(&options, &retention) => run,
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
            snapshots_forgotten,
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
        self.snapshots_forgotten += snapshots_forgotten;
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
