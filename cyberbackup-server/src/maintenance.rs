//! Periodic cleanup: finishes or rolls back interrupted commits, deletes kept versions
//! (`<name>.~<v>~`) that the catalog no longer refers to, discards transfers abandoned in
//! `receiving`/`received` (deleting their temp files) and removes stray `.cb-partial-*` files
//! (e.g. after a crash).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CommittingFile, Engine};
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
    /// Interrupted commits finished (the new content was on disk or in its temp file).
    pub finished_commits: usize,
    /// Interrupted commits rolled back (the previous version stays current).
    pub rolled_back_commits: usize,
    /// Orphaned kept versions (`<name>.~<v>~` files without a catalog row) deleted.
    pub removed_orphan_versions: usize,
    /// Interrupted v4 uploads kept for resume by start-up recovery.
    pub kept_resumable_uploads: usize,
    /// Registrations without a public key (and without files) deleted.
    pub removed_keyless_clients: usize,
    /// Unfinished transfers discarded early because free space was below `min_free_disk_mb`.
    pub reclaimed_for_space: usize,
}

/// Under disk pressure, unfinished transfers not updated for this long count as abandoned
/// (instead of `abandoned_after`): a live v4 upload checkpoints far more often, and while the
/// disk is full no upload can progress anyway.
pub const RECLAIM_IDLE: Duration = Duration::from_secs(300);

/// How [`reconcile_commit`] resolved a `committing` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The new content is in place and the row is verified.
    Finished,
    /// The new content is not in place; the row is discarded and its temp file removed.
    RolledBack,
}

/// Resolves one interrupted commit from what is on disk, using the SHA-256 recorded with the
/// intent: if the temp file still exists and matches, the rename is redone and the row marked
/// verified; if the destination already holds the new content, the row is marked verified;
/// otherwise the row is discarded (the previous verified version was never touched).
///
/// Must not run concurrently with the live commit of the same row: the server calls it from
/// the failing commit itself, at start-up, and from maintenance only for rows older than
/// `abandoned_after`.
///
/// # Errors
/// [`ServerError::Catalog`] or [`ServerError::Storage`]; the row then stays `committing`.
pub async fn reconcile_commit(
    catalog: &Catalog,
    storage: &Storage,
    file: CommittingFile,
) -> Result<CommitOutcome, ServerError> {
    let expected = file.sha256.as_deref();
    let matches = |found: Option<([u8; 32], u64)>| matches!((found, expected), (Some((sha, _)), Some(want)) if sha.as_slice() == want);
    if let Some(temp) = &file.temp_path {
        let found = storage.sha256_of(temp).await?;
        if found.is_some() {
            if !matches(found) {
                storage.remove(temp).await?;
                catalog.discard_file(file.row).await?;
                return Ok(CommitOutcome::RolledBack);
            }
            let previous = if file.keep_versions > 1 {
                catalog
                    .current_version(file.client_id, file.file_name.clone())
                    .await?
                    .map(|(_, version)| version)
            } else {
                None
            };
            storage.install(temp, &file.path_name, previous).await?;
            finish_commit(catalog, storage, &file).await?;
            return Ok(CommitOutcome::Finished);
        }
    }
    if matches(storage.sha256_of(&file.path_name).await?) {
        finish_commit(catalog, storage, &file).await?;
        return Ok(CommitOutcome::Finished);
    }
    catalog.discard_file(file.row).await?;
    Ok(CommitOutcome::RolledBack)
}

async fn finish_commit(
    catalog: &Catalog,
    storage: &Storage,
    file: &CommittingFile,
) -> Result<(), ServerError> {
    let result = catalog.commit_file(file.row, file.keep_versions).await?;
    for old in result.superseded {
        if let Err(err) = storage.remove(&old.path_name).await {
            tracing::warn!(%err, path = %old.path_name, "cannot delete superseded version");
        }
    }
    Ok(())
}

/// Start-up recovery, before the server accepts connections (so no transfer is live):
/// resolves every interrupted commit ([`reconcile_commit`]) and deletes orphaned kept
/// versions, discards every unfinished transfer left by the previous process and removes its
/// temp file, and removes every `.cb-partial-*` file whatever its age — except v4 uploads
/// that can be resumed (a `receiving` row with its resume record): they stay, with their
/// partial files, until maintenance finds them older than `abandoned_after` like any other.
/// Their partial file may hold bytes after the durable offset that a crash left incomplete;
/// a resume cuts it to that offset first.
///
/// A PostgreSQL catalog may be shared with other servers, whose transfers are live: there
/// only commits and transfers last updated more than `abandoned_after` ago are resolved and
/// discarded at start-up (the rest are left to their server, or to the next maintenance
/// run once they are that old). The temp files in this server's own data directory are all
/// its own, and removed as on SQLite.
///
/// # Errors
/// [`ServerError::Catalog`] or [`ServerError::Storage`].
pub async fn recover(
    catalog: &Catalog,
    storage: &Storage,
    abandoned_after: Duration,
) -> Result<MaintenanceReport, ServerError> {
    let mut report = MaintenanceReport::default();
    let (commits_before, transfers_before) = match catalog.engine() {
        Engine::Sqlite => (None, SystemTime::now() + Duration::from_secs(24 * 3600)),
        Engine::Postgres => {
            let cutoff = SystemTime::now()
                .checked_sub(abandoned_after)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (Some(cutoff), cutoff)
        }
    };
    reconcile_all(catalog, storage, commits_before, &mut report).await?;
    let resumable =
        discard_abandoned(catalog, storage, transfers_before, true, &mut report).await?;
    report.kept_resumable_uploads = resumable.len();
    report.removed_temp_files += storage.remove_leftovers(Duration::ZERO, &resumable).await?;
    if report != MaintenanceReport::default() {
        tracing::info!(
            finished_commits = report.finished_commits,
            rolled_back_commits = report.rolled_back_commits,
            removed_orphan_versions = report.removed_orphan_versions,
            discarded_rows = report.discarded_rows,
            removed_temp_files = report.removed_temp_files,
            kept_resumable_uploads = report.kept_resumable_uploads,
            "start-up recovery done"
        );
    }
    Ok(report)
}

/// Resolves interrupted commits ([`reconcile_commit`]) last updated before `updated_before`
/// (all with `None`), then deletes orphaned kept versions ([`sweep_orphan_versions`]).
async fn reconcile_all(
    catalog: &Catalog,
    storage: &Storage,
    updated_before: Option<SystemTime>,
    report: &mut MaintenanceReport,
) -> Result<(), ServerError> {
    reconcile_commits(catalog, storage, updated_before, report).await?;
    sweep_orphan_versions(catalog, storage, report).await
}

/// Kept-version files checked against the catalog at a time.
const SWEEP_BATCH: usize = 256;

/// Deletes every kept-version file (`<name>.~<v>~`) that the catalog does not refer to
/// ([`Catalog::unreferenced_version_files`]): with `keep_versions > 1` a commit deletes the
/// rows of superseded versions first and their files after, so a crash or a failed delete in
/// between leaves the file behind. A file that holds a verified version is referred to by its
/// row at every moment (while a commit moves it from `<name>` to `<name>.~<v>~` by the row at
/// `<name>` with version `v`), and each file is checked after it was seen on disk, so a live
/// commit cannot lose a version to this sweep.
///
/// # Errors
/// [`ServerError::Catalog`] or [`ServerError::Storage`].
pub async fn sweep_orphan_versions(
    catalog: &Catalog,
    storage: &Storage,
    report: &mut MaintenanceReport,
) -> Result<(), ServerError> {
    let mut found = storage.version_files();
    let mut batch = Vec::with_capacity(SWEEP_BATCH);
    loop {
        let next = found.recv().await.transpose()?;
        let done = next.is_none();
        batch.extend(next);
        if batch.len() == SWEEP_BATCH || (done && !batch.is_empty()) {
            let checked = std::mem::take(&mut batch);
            for orphan in catalog.unreferenced_version_files(checked).await? {
                if storage.remove(&orphan.path_name).await? {
                    tracing::info!(path = %orphan.path_name, "orphaned kept version removed");
                    report.removed_orphan_versions += 1;
                }
            }
        }
        if done {
            return Ok(());
        }
    }
}

async fn reconcile_commits(
    catalog: &Catalog,
    storage: &Storage,
    updated_before: Option<SystemTime>,
    report: &mut MaintenanceReport,
) -> Result<(), ServerError> {
    for file in catalog.committing_files(updated_before).await? {
        let row = file.row;
        match reconcile_commit(catalog, storage, file).await? {
            CommitOutcome::Finished => {
                tracing::info!(%row, "interrupted commit finished");
                report.finished_commits += 1;
            }
            CommitOutcome::RolledBack => {
                tracing::info!(%row, "interrupted commit rolled back");
                report.rolled_back_commits += 1;
            }
        }
    }
    Ok(())
}

/// Discards the transfers not updated since `cutoff` and removes their temp files; with
/// `keep_resumable`, resumable v4 uploads are left alone and their temp paths returned.
async fn discard_abandoned(
    catalog: &Catalog,
    storage: &Storage,
    cutoff: SystemTime,
    keep_resumable: bool,
    report: &mut MaintenanceReport,
) -> Result<BTreeSet<String>, ServerError> {
    let mut kept = BTreeSet::new();
    for transfer in catalog.abandoned_transfers(cutoff).await? {
        if keep_resumable && transfer.resumable {
            kept.extend(transfer.temp_path);
            continue;
        }
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
    Ok(kept)
}

/// Runs maintenance once: commits interrupted for `abandoned_after` are reconciled, orphaned
/// kept versions deleted, transfers not updated for `abandoned_after` discarded and their
/// temp files removed, then `.cb-partial-*` files older than `abandoned_after` removed.
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
    reconcile_all(catalog, storage, Some(cutoff), &mut report).await?;
    discard_abandoned(catalog, storage, cutoff, false, &mut report).await?;
    report.removed_temp_files += storage
        .remove_leftovers(abandoned_after, &BTreeSet::new())
        .await?;
    report.removed_keyless_clients = catalog.remove_keyless_clients(cutoff).await?;
    catalog.merge_name_index().await?;
    Ok(report)
}

/// When free space is below `min_free_bytes`, discards unfinished transfers not updated for
/// `idle` (the server passes [`RECLAIM_IDLE`]), least recently updated first, until there is
/// room again (partial v4 uploads can hold many megabytes each); returns how many were
/// discarded.
///
/// # Errors
/// [`ServerError::Catalog`] or [`ServerError::Storage`].
pub async fn reclaim_space(
    catalog: &Catalog,
    storage: &Storage,
    min_free_bytes: u64,
    idle: Duration,
) -> Result<usize, ServerError> {
    if storage.ensure_room(min_free_bytes).is_ok() {
        return Ok(0);
    }
    let cutoff = SystemTime::now().checked_sub(idle).unwrap_or(UNIX_EPOCH);
    let mut reclaimed = 0;
    for transfer in catalog.abandoned_transfers(cutoff).await? {
        if storage.ensure_room(min_free_bytes).is_ok() {
            break;
        }
        if let Some(temp) = &transfer.temp_path {
            storage.remove(temp).await?;
        }
        if catalog.discard_file(transfer.row).await? {
            reclaimed += 1;
        }
    }
    if reclaimed > 0 {
        tracing::warn!(
            reclaimed,
            "server storage is full: discarded the oldest unfinished uploads to make room"
        );
    }
    Ok(reclaimed)
}

/// The outcome of the latest maintenance run, shared with the admin dashboard.
#[derive(Debug, Clone, Default)]
pub struct LastMaintenance(std::sync::Arc<std::sync::Mutex<Option<MaintenanceRun>>>);

/// One finished maintenance run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceRun {
    /// When it finished.
    pub finished_at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// What it removed (zero counts when it failed early).
    pub report: MaintenanceReport,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl LastMaintenance {
    /// The latest run, if any has finished.
    #[must_use]
    pub fn get(&self) -> Option<MaintenanceRun> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records a finished run.
    pub fn set(&self, run: MaintenanceRun) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(run);
    }
}

/// Runs [`run_once`] every `interval` (first run immediately) until `shutdown` is cancelled,
/// logging each report. A failed run is logged and retried at the next tick. Space is not
/// reclaimed early ([`spawn_with_report`] does that).
#[must_use]
pub fn spawn(
    catalog: Catalog,
    storage: Storage,
    interval: Duration,
    abandoned_after: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    spawn_with_report(
        catalog,
        storage,
        interval,
        abandoned_after,
        0,
        shutdown,
        LastMaintenance::default(),
    )
}

/// [`spawn`], also recording every run in `last` (for the admin dashboard), and first
/// reclaiming space ([`reclaim_space`]) while free space is below `min_free_bytes`.
#[must_use]
pub fn spawn_with_report(
    catalog: Catalog,
    storage: Storage,
    interval: Duration,
    abandoned_after: Duration,
    min_free_bytes: u64,
    shutdown: CancellationToken,
    last: LastMaintenance,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let started = std::time::Instant::now();
            let reclaimed = reclaim_space(&catalog, &storage, min_free_bytes, RECLAIM_IDLE).await;
            let result = match reclaimed {
                Ok(reclaimed) => {
                    run_once(&catalog, &storage, abandoned_after)
                        .await
                        .map(|report| MaintenanceReport {
                            reclaimed_for_space: reclaimed,
                            ..report
                        })
                }
                Err(err) => Err(err),
            };
            last.set(MaintenanceRun {
                finished_at: SystemTime::now(),
                duration: started.elapsed(),
                report: result.as_ref().copied().unwrap_or_default(),
                error: result.as_ref().err().map(ToString::to_string),
            });
            match result {
                Ok(report) if report == MaintenanceReport::default() => {
                    tracing::debug!("maintenance: nothing to clean");
                }
                Ok(report) => tracing::info!(
                    finished_commits = report.finished_commits,
                    rolled_back_commits = report.rolled_back_commits,
                    removed_orphan_versions = report.removed_orphan_versions,
                    discarded_rows = report.discarded_rows,
                    removed_temp_files = report.removed_temp_files,
                    refused_paths = report.refused_paths,
                    removed_keyless_clients = report.removed_keyless_clients,
                    reclaimed_for_space = report.reclaimed_for_space,
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
    async fn keyless_registrations_without_files_are_removed_once_abandoned() {
        let (_dir, catalog, storage) = setup().await;
        catalog
            .register_client([0x22; 16], b"flood".to_vec(), 3)
            .await
            .unwrap();
        catalog
            .store_first_public_key(CLIENT, vec![1, 2, 3])
            .await
            .unwrap();

        let fresh = run_once(&catalog, &storage, Duration::from_secs(3600))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stale = run_once(&catalog, &storage, Duration::from_millis(1))
            .await
            .unwrap();
        let left: Vec<_> = catalog
            .list_clients()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();

        assert_eq!(fresh.removed_keyless_clients, 0);
        assert_eq!(stale.removed_keyless_clients, 1);
        assert_eq!(left, [CLIENT], "the client with a key stays");
    }

    #[tokio::test]
    async fn a_full_disk_reclaims_unfinished_uploads() {
        let (_dir, catalog, storage) = setup().await;
        let mut temps = Vec::new();
        for name in [&b"old.bin"[..], b"new.bin"] {
            let partial = storage.create_partial(CLIENT, name).await.unwrap();
            catalog
                .begin_file(
                    CLIENT,
                    name.to_vec(),
                    partial.relative_path().into(),
                    Some(partial.relative_temp_path().into()),
                )
                .await
                .unwrap();
            temps.push(partial.temp_path().to_path_buf());
            std::mem::forget(partial);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;

        let roomy = reclaim_space(&catalog, &storage, 1, Duration::ZERO)
            .await
            .unwrap();
        let kept = temps.iter().all(|t| t.exists());
        let full = reclaim_space(&catalog, &storage, u64::MAX, Duration::ZERO)
            .await
            .unwrap();

        assert_eq!(roomy, 0, "enough space: nothing is touched");
        assert!(kept);
        assert_eq!(full, 2);
        assert!(temps.iter().all(|t| !t.exists()));
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
        let storage = Storage::open(dir.path().join("data")).unwrap();
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
