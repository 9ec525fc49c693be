//! Start-up crash recovery of the repository store (docs/reliability.md, "Repository
//! store"). A crash can leave:
//!
//! * staging files (a put in progress): removed; no client was told the object was stored.
//! * a backend put's temp file (the local backend's `.put-*`, a crash between its write and
//!   its rename): removed; the object was never visible and no client was told it was stored.
//! * a pack in the backend that is not indexed (crash between the backend's put and the
//!   index transaction): **indexed from its header** — the backend only stores a pack whose
//!   hash matched, and the header parsed before the put, so indexing it is what the
//!   interrupted put would have done. A pack whose header no longer parses (damage) is
//!   deleted: nothing acknowledged refers to it. A pack
//!   pending deletion (a prune retired it; crash before its object was deleted) is left to
//!   the pending deletion, never indexed again.
//! * a snapshot object without a record, with a forget tombstone (crash between a forget's
//!   record deletion and its object deletion): **deleted**, with its tombstone; the client
//!   was told it was forgotten.
//! * a snapshot object without a record and without a tombstone (crash between a commit's
//!   put and its record transaction, or a catalog restored from a backup older than the
//!   snapshot): **checked like a commit and recorded** when every blob it references is
//!   indexed (a client that commits it again is told it is stored); deleted, with a
//!   warning, when it would not pass a commit — nothing restorable is lost that way.
//!
//! Objects of a client the catalog has **no repository** for are never deleted: no crash
//! leaves them (a put needs the repository), only a catalog that lost the repository —
//! restored from an older backup, or rebuilt by `catalog rebuild` without a readable old
//! catalog. They are kept and counted, and a warning tells the operator to restore the
//! catalog (the repository's config and key objects live only there).

use std::collections::BTreeMap;

use cyberbackup_core::names::ClientId;
use cyberbackup_core::repo::{PackId, SnapshotId};
use futures_util::StreamExt;

use super::layout::{self, Located};
use super::{RepoStore, RepoStoreError, StoredPack, read_pack_header, unix_now};
use crate::backend::{ObjectInfo, ObjectKey};

/// Backend objects checked against the catalog per batch.
const BATCH: usize = 500;

/// What [`RepoStore::recover`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Staging files removed (puts a crash interrupted).
    pub staging_files_removed: u64,
    /// Temp files of backend puts a crash interrupted (the local backend's), removed.
    pub interrupted_puts_removed: u64,
    /// Packs found in the backend but not in the index, indexed from their headers.
    pub packs_indexed: u64,
    /// Unindexed packs deleted (header damaged).
    pub packs_deleted: u64,
    /// Snapshot objects without a record, deleted (forgotten, or failing the commit check).
    pub snapshots_deleted: u64,
    /// Snapshot objects without a record or tombstone that passed the commit check, recorded.
    pub snapshots_recorded: u64,
    /// Backend objects that are not repository objects, left alone.
    pub unknown_objects: u64,
    /// Packs and snapshot objects of clients the catalog has no repository for, kept.
    pub kept_without_repository: u64,
}

pub(super) async fn recover(store: &RepoStore) -> Result<RecoveryReport, RepoStoreError> {
    let mut report = RecoveryReport {
        staging_files_removed: clean_staging(store).await?,
        interrupted_puts_removed: store.inner.backend.remove_interrupted_puts().await?,
        ..RecoveryReport::default()
    };
    let backend = &store.inner.backend;
    let mut listing = backend.list(None);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let next = listing.next().await.transpose()?;
        let done = next.is_none();
        if let Some(info) = next {
            batch.push(info);
        }
        if batch.len() >= BATCH || (done && !batch.is_empty()) {
            reconcile(store, std::mem::take(&mut batch), &mut report).await?;
        }
        if done {
            break;
        }
    }
    if report.kept_without_repository > 0 {
        tracing::warn!(
            objects = report.kept_without_repository,
            "the storage holds repository objects of clients the catalog has no repository \
             for: the catalog lost them (restored from an older backup, or rebuilt); they were \
             kept, not deleted — restore the catalog from a backup to make them usable again"
        );
    }
    if report != RecoveryReport::default() {
        tracing::info!(
            ?report,
            "repository store recovered from an interrupted run"
        );
    }
    Ok(report)
}

/// Creates the staging directory (0700) if needed and removes every file in it.
async fn clean_staging(store: &RepoStore) -> Result<u64, RepoStoreError> {
    let dir = store.inner.staging_dir.clone();
    tokio::task::spawn_blocking(move || {
        cyberbackup_fs::create_private_dir(&dir)
            .map_err(RepoStoreError::io("create staging directory", &dir))?;
        let mut removed = 0;
        let entries =
            std::fs::read_dir(&dir).map_err(RepoStoreError::io("read staging directory", &dir))?;
        for entry in entries {
            let path = entry
                .map_err(RepoStoreError::io("read staging directory", &dir))?
                .path();
            std::fs::remove_file(&path)
                .map_err(RepoStoreError::io("remove staging file", &path))?;
            removed += 1;
        }
        Ok(removed)
    })
    .await
    .map_err(|e| RepoStoreError::task(&store.inner.staging_dir, &e))?
}

/// Checks one batch of backend objects against the catalog, client by client.
async fn reconcile(
    store: &RepoStore,
    batch: Vec<ObjectInfo>,
    report: &mut RecoveryReport,
) -> Result<(), RepoStoreError> {
    let mut packs: BTreeMap<ClientId, Vec<(PackId, ObjectInfo)>> = BTreeMap::new();
    let mut snapshots: BTreeMap<ClientId, Vec<(SnapshotId, ObjectKey)>> = BTreeMap::new();
    for info in batch {
        match layout::parse(&info.key) {
            Some(Located::Pack(client, id)) => packs.entry(client).or_default().push((id, info)),
            Some(Located::Snapshot(client, id)) => {
                snapshots.entry(client).or_default().push((id, info.key));
            }
            None => report.unknown_objects += 1,
        }
    }
    let catalog = &store.inner.catalog;
    for (client, items) in packs {
        if !catalog.repository_exists(client.0).await? {
            report.kept_without_repository += items.len() as u64;
            continue;
        }
        let ids: Vec<PackId> = items.iter().map(|(id, _)| *id).collect();
        let indexed = catalog.packs_indexed(client.0, ids.clone()).await?;
        let retired = catalog.packs_pending_deletion(client.0, ids).await?;
        for (((id, info), indexed), retired) in items.into_iter().zip(indexed).zip(retired) {
            if !indexed && !retired {
                recover_pack(store, client, id, &info, report).await?;
            }
        }
    }
    for (client, items) in snapshots {
        if !catalog.repository_exists(client.0).await? {
            report.kept_without_repository += items.len() as u64;
            continue;
        }
        let ids: Vec<SnapshotId> = items.iter().map(|(id, _)| *id).collect();
        let recorded = catalog.snapshots_recorded(client.0, ids.clone()).await?;
        let forgotten = catalog.snapshots_forgotten(client.0, ids).await?;
        for (((id, key), recorded), forgotten) in items.into_iter().zip(recorded).zip(forgotten) {
            if recorded {
                continue;
            }
            if forgotten {
                store.inner.backend.delete(&key).await?;
                catalog.clear_tombstone(client.0, id).await?;
                report.snapshots_deleted += 1;
            } else {
                recover_snapshot(store, client, id, &key, report).await?;
            }
        }
    }
    Ok(())
}

/// Records an unrecorded, unforgotten snapshot object of an existing repository that passes
/// the commit check, or deletes it.
async fn recover_snapshot(
    store: &RepoStore,
    client: ClientId,
    id: SnapshotId,
    key: &ObjectKey,
    report: &mut RecoveryReport,
) -> Result<(), RepoStoreError> {
    let bytes = store.inner.backend.get(key, None).await?;
    match super::commit::record_stored(store, client, id, &bytes).await {
        Ok(()) => report.snapshots_recorded += 1,
        Err(
            error @ (RepoStoreError::MissingBlobs { .. }
            | RepoStoreError::BadObject(_)
            | RepoStoreError::HashMismatch { .. }),
        ) => {
            tracing::warn!(%key, %error, "deleting an unrecorded snapshot object that fails the commit check");
            store.inner.backend.delete(key).await?;
            report.snapshots_deleted += 1;
        }
        Err(other) => return Err(other),
    }
    Ok(())
}

/// Indexes an unindexed pack from its header, or deletes it.
async fn recover_pack(
    store: &RepoStore,
    client: ClientId,
    id: PackId,
    info: &ObjectInfo,
    report: &mut RecoveryReport,
) -> Result<(), RepoStoreError> {
    let backend = &store.inner.backend;
    let catalog = &store.inner.catalog;
    let pack = StoredPack {
        backend: backend.as_ref(),
        key: &info.key,
    };
    match read_pack_header(info.len_bytes, &pack).await {
        Ok(header) => {
            catalog
                .index_pack(client.0, id, info.len_bytes, header.entries, unix_now())
                .await?;
            report.packs_indexed += 1;
        }
        Err(RepoStoreError::BadObject(_)) => {
            backend.delete(&info.key).await?;
            report.packs_deleted += 1;
        }
        Err(other) => return Err(other),
    }
    Ok(())
}
