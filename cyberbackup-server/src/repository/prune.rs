//! Prune: garbage collection of one client's repository without its key (docs/repository.md,
//! "Prune"). The server knows what is alive from cleartext alone: every snapshot's envelope
//! names its reference chunks, every reference chunk lists the blobs it keeps alive.
//!
//! One run, per client:
//!
//! 1. **Live set.** Every reference chunk of every recorded snapshot is read from its pack and
//!    checked against its ID; its IDs and the chunk itself are alive. A chunk that cannot be
//!    read or does not verify stops the prune before anything changes ([`PruneUnsafe`]).
//! 2. **Mark** (under the client's exclusive maintenance lock, briefly): the chunks of
//!    snapshots committed while step 1 ran are added, then every other blob in a pack older
//!    than the grace period is *condemned* (time-stamped). A condemned blob is still stored:
//!    `HAVE` answers that it is absent (a new backup uploads it again, which claims it back),
//!    and a commit that references it anyway (a backup that asked before the mark) passes and
//!    claims it back in its record transaction.
//! 3. **Sweep** (same lock): blob rows condemned longer than the grace period ago are deleted.
//!    A backup that asked `HAVE` before the mark and commits within the grace period therefore
//!    always finds its blobs.
//! 4. **Repack**: packs whose remaining blobs are below `repack_below_percent` of their blob
//!    bytes (a pack nothing was removed from never is) are rewritten: their live blobs are copied, unchanged, into new packs (staged like an
//!    upload, hashed, stored, then the index rows move in one transaction).
//! 5. **Retire and delete**: packs no index row points at any more are moved to the pending
//!    deletions; their objects are deleted once `deletion_delay` has passed (a restore that
//!    looked a blob up just before still reads it), under the exclusive lock, so an upload of
//!    the same pack ID (which cancels the deletion) never loses its object.
//!
//! Every step is one catalog transaction or an idempotent backend call, so a crash at any
//! point leaves a state the next run (and start-up recovery, which never re-indexes a pack
//! pending deletion) completes. Memory: the live set, 32 bytes per live blob (about 32 MB for
//! a million blobs), and one pack's index entries while it is repacked.
//!
//! [`PruneUnsafe`]: super::RepoStoreError::PruneUnsafe

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use cyberbackup_core::names::ClientId;
use cyberbackup_core::repo::{
    BlobClass, BlobId, PackEntry, PackId, PackWriter, RefChunk, SnapshotId,
};
use serde::Serialize;

use super::progress::{PrunePhase, PruneTracker};
use super::staging::StagedPut;
use super::{ObjectClass, RepoStore, RepoStoreError, STREAM_PIECE, layout, unix_now};
use crate::backend::{ContentHash, PutBody};
use crate::catalog::LockMode;
use crate::catalog::repo::BlobLocation;

/// Reference chunks looked up per catalog query.
const LOOKUP_BATCH: usize = 500;
/// Target size of a repacked pack.
const REPACK_TARGET: u32 = 16 << 20;

/// How a prune runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneOptions {
    /// How long an unreferenced blob stays claimable before it is deleted, and the age a
    /// pack must reach before its blobs can be condemned: longer than the longest backup.
    pub grace: Duration,
    /// Packs whose live bytes are below this share of their size (percent) are repacked;
    /// 0 never repacks.
    pub repack_below_percent: u8,
    /// How long a pack's object outlives its last index row (reads already in flight).
    pub deletion_delay: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(24 * 3600),
            repack_below_percent: 50,
            deletion_delay: Duration::from_secs(600),
        }
    }
}

/// What one prune of one repository did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Snapshots the server's retention policy forgot before the prune.
    pub snapshots_forgotten: u64,
    /// Snapshots whose references were followed.
    pub snapshots: u64,
    /// Blobs and reference chunks found alive.
    pub live_blobs: u64,
    /// Blobs condemned by this run (deleted after the grace period unless claimed).
    pub condemned: u64,
    /// Condemned blobs found referenced again and claimed back.
    pub revived: u64,
    /// Blob index rows deleted (condemned longer than the grace period).
    pub deleted_blobs: u64,
    /// Their bytes.
    pub deleted_blob_bytes: u64,
    /// Packs rewritten because most of their bytes were dead.
    pub packs_repacked: u64,
    /// Packs written by the repack.
    pub packs_written: u64,
    /// Bytes of the packs written by the repack.
    pub bytes_written: u64,
    /// Packs left without a live blob, now pending deletion.
    pub packs_retired: u64,
    /// Their bytes.
    pub bytes_retired: u64,
    /// Pack objects deleted from the backend by this run (pending deletions that were due).
    pub packs_deleted: u64,
    /// Their bytes: the space this run gave back.
    pub bytes_freed: u64,
}

impl RepoStore {
    /// Prunes the client's repository (see the module docs).
    ///
    /// # Errors
    /// [`RepoStoreError::NoRepository`], [`RepoStoreError::PruneUnsafe`] (nothing changed), or
    /// a backend, catalog or staging failure (what was done so far is consistent; the next
    /// run continues).
    pub async fn prune(
        &self,
        client: ClientId,
        options: &PruneOptions,
    ) -> Result<PruneReport, RepoStoreError> {
        self.prune_at(client, options, unix_now()).await
    }

    /// [`Self::prune`] as a run at `now` (Unix seconds) would do it: pack ages, condemnation
    /// times and deletion deadlines are measured against `now`. The tests use it to let the
    /// grace period pass without waiting.
    ///
    /// # Errors
    /// As [`Self::prune`].
    pub async fn prune_at(
        &self,
        client: ClientId,
        options: &PruneOptions,
        now: u64,
    ) -> Result<PruneReport, RepoStoreError> {
        self.require_repository(client).await?;
        let _one_prune = self.inner.locks.prune(&self.inner.catalog, client).await?;
        let progress = self.inner.prune_progress.start(client);
        let catalog = &self.inner.catalog;
        let mut report = PruneReport::default();
        let mut live = LiveSet::default();
        let seen: HashSet<SnapshotId> = catalog
            .list_snapshots(client.0)
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        let chunks = catalog.referenced_chunks(client.0, None).await?;
        progress.phase(PrunePhase::LiveSet, chunks.len() as u64);
        self.follow_chunks(client, &chunks, &mut live, Some(&progress))
            .await?;

        {
            let _exclusive = self.maintenance_lock(client, LockMode::Exclusive).await?;
            progress.phase(PrunePhase::Mark, 0);
            let snapshots = catalog.list_snapshots(client.0).await?;
            report.snapshots = snapshots.len() as u64;
            for snapshot in snapshots.iter().filter(|s| !seen.contains(&s.id)) {
                let chunks = catalog
                    .referenced_chunks(client.0, Some(snapshot.id))
                    .await?;
                self.follow_chunks(client, &chunks, &mut live, None).await?;
            }
            report.live_blobs = live.ids.len() as u64;
            let grace = options.grace.as_secs();
            let marked = catalog
                .mark_unreferenced(
                    client.0,
                    live.ids.drain().collect(),
                    now,
                    now.saturating_sub(grace),
                )
                .await?;
            report.condemned = marked.condemned;
            report.revived = marked.revived;
            let swept = catalog
                .sweep_condemned(client.0, now.saturating_sub(grace))
                .await?;
            report.deleted_blobs = swept.blobs;
            report.deleted_blob_bytes = swept.blob_bytes;
        }

        if options.repack_below_percent > 0 {
            self.repack(
                client,
                options.repack_below_percent,
                now,
                &mut report,
                &progress,
            )
            .await?;
        }
        let retired = catalog
            .retire_empty_packs(client.0, now + options.deletion_delay.as_secs())
            .await?;
        report.packs_retired = retired.packs;
        report.bytes_retired = retired.bytes;
        let (deleted, freed) = self.delete_due_packs(client, now, &progress).await?;
        report.packs_deleted = deleted;
        report.bytes_freed = freed;
        tracing::info!(client = %hex::encode(client.0), ?report, "repository pruned");
        Ok(report)
    }

    /// Deletes the client's pack objects whose deletion is due at `now`; returns how many
    /// and their bytes.
    async fn delete_due_packs(
        &self,
        client: ClientId,
        now: u64,
        progress: &PruneTracker,
    ) -> Result<(u64, u64), RepoStoreError> {
        let catalog = &self.inner.catalog;
        let due = catalog.due_pack_deletions(client.0, now).await?;
        progress.phase(PrunePhase::Delete, due.len() as u64);
        if due.is_empty() {
            return Ok((0, 0));
        }
        let _exclusive = self.maintenance_lock(client, LockMode::Exclusive).await?;
        let (mut packs, mut bytes) = (0, 0);
        for pending in due {
            // An upload of the same pack ID since the listing cancelled the deletion.
            if !catalog
                .pack_deletion_pending(client.0, pending.pack)
                .await?
            {
                continue;
            }
            let key = layout::pack_key(client, &pending.pack);
            self.inner.backend.delete(&key).await?;
            catalog.finish_pack_deletion(client.0, pending.pack).await?;
            progress.advance(1);
            packs += 1;
            bytes += pending.size;
        }
        Ok((packs, bytes))
    }

    /// Reads and verifies each of `chunks` not followed before, adding it and the IDs it
    /// lists to `live`, counting each batch in `progress` if given.
    async fn follow_chunks(
        &self,
        client: ClientId,
        chunks: &[BlobId],
        live: &mut LiveSet,
        progress: Option<&PruneTracker>,
    ) -> Result<(), RepoStoreError> {
        let fresh: Vec<BlobId> = chunks
            .iter()
            .filter(|id| !live.chunks.contains(*id))
            .copied()
            .collect();
        for batch in fresh.chunks(LOOKUP_BATCH) {
            let locations = self
                .inner
                .catalog
                .blob_locations(client.0, batch.to_vec())
                .await?;
            for (id, location) in batch.iter().zip(locations) {
                let Some(location) = location.filter(|l| l.class == BlobClass::RefChunk) else {
                    return Err(unsafe_chunk(id, "is not indexed as a reference chunk"));
                };
                let bytes = self.read_located(client, &location).await?;
                let chunk = RefChunk::decode_verified(&bytes, id)
                    .map_err(|_| unsafe_chunk(id, "does not match its ID"))?;
                live.chunks.insert(*id);
                live.ids.insert(*id);
                live.ids.extend(chunk.ids().iter().copied());
            }
            if let Some(progress) = progress {
                progress.advance(batch.len() as u64);
            }
        }
        Ok(())
    }

    /// The bytes of an indexed blob.
    async fn read_located(
        &self,
        client: ClientId,
        location: &BlobLocation,
    ) -> Result<Bytes, RepoStoreError> {
        let key = layout::pack_key(client, &location.pack);
        let range = location.offset..location.offset + u64::from(location.len);
        Ok(self.inner.backend.get(&key, Some(range)).await?)
    }

    /// Rewrites the packs below the live threshold (module docs, step 4).
    async fn repack(
        &self,
        client: ClientId,
        below_percent: u8,
        now: u64,
        report: &mut PruneReport,
        progress: &PruneTracker,
    ) -> Result<(), RepoStoreError> {
        let catalog = &self.inner.catalog;
        let tail_fixed = PackWriter::tail_len(0);
        let tail_per_entry = PackWriter::tail_len(1) - tail_fixed;
        let candidates = catalog
            .repack_candidates(client.0, below_percent, tail_fixed, tail_per_entry)
            .await?;
        progress.phase(PrunePhase::Repack, candidates.len() as u64);
        let mut batch = RepackBatch::default();
        for candidate in candidates {
            for entry in catalog.pack_blobs(client.0, candidate.pack).await? {
                batch.entries.push((entry, candidate.pack));
                batch.bytes += u64::from(entry.len);
                if batch.bytes >= u64::from(REPACK_TARGET) {
                    self.write_repacked(client, std::mem::take(&mut batch), now, report)
                        .await?;
                }
            }
            report.packs_repacked += 1;
            progress.advance(1);
        }
        if !batch.entries.is_empty() {
            self.write_repacked(client, batch, now, report).await?;
        }
        Ok(())
    }

    /// Copies the batch's blobs into one new pack, stores it, and moves their index rows.
    async fn write_repacked(
        &self,
        client: ClientId,
        batch: RepackBatch,
        now: u64,
        report: &mut PruneReport,
    ) -> Result<(), RepoStoreError> {
        let size = batch.bytes + PackWriter::tail_len(batch.entries.len());
        let mut staged = StagedPut::create(
            &self.inner.staging_dir,
            client,
            ObjectClass::Pack,
            [0; 32],
            size,
        )
        .await?;
        let mut writer = PackWriter::new(REPACK_TARGET);
        for (entry, from) in &batch.entries {
            let location = BlobLocation {
                pack: *from,
                offset: entry.offset,
                len: entry.len,
                class: entry.class,
                verified: false,
                condemned: false,
                damaged: false,
            };
            let bytes = self.read_located(client, &location).await?;
            let piece = writer
                .push_stored(entry.class, entry.id, bytes)
                .map_err(super::bad_object)?;
            staged.write(piece).await?;
        }
        let finished = writer.finish();
        staged.write(finished.tail.clone()).await?;
        let received = staged.received().await?;
        if received.hash != finished.id.0 {
            return Err(RepoStoreError::HashMismatch {
                expected: finished.id.to_hex(),
                actual: hex::encode(received.hash),
            });
        }
        let key = layout::pack_key(client, &finished.id);
        let body = received.stream(STREAM_PIECE).await?;
        self.inner
            .backend
            .put(
                &key,
                PutBody::Stream(body),
                ContentHash::from_bytes(finished.id.0),
            )
            .await?;
        let moves: Vec<(PackEntry, PackId)> = finished
            .entries
            .iter()
            .zip(&batch.entries)
            .map(|(new, (_, from))| (*new, *from))
            .collect();
        self.inner
            .catalog
            .move_to_repacked(client.0, finished.id, size, moves, now)
            .await?;
        report.packs_written += 1;
        report.bytes_written += size;
        Ok(())
    }
}

/// What a prune found alive so far.
#[derive(Debug, Default)]
struct LiveSet {
    /// Reference chunks already followed.
    chunks: HashSet<BlobId>,
    /// Every live blob and chunk ID.
    ids: HashSet<BlobId>,
}

/// Blobs collected for one repacked pack, each with the pack it comes from.
#[derive(Debug, Default)]
struct RepackBatch {
    entries: Vec<(PackEntry, PackId)>,
    bytes: u64,
}

fn unsafe_chunk(id: &BlobId, problem: &'static str) -> RepoStoreError {
    RepoStoreError::PruneUnsafe {
        chunk: id.to_hex(),
        problem,
    }
}
