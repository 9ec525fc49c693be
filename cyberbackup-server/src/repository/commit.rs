//! The commit check of a snapshot, without keys: a snapshot becomes visible only when every
//! reference chunk its envelope names is indexed as a reference chunk, and every blob each
//! of those chunks lists is indexed. A chunk a commit already verified (its bytes checked
//! against its ID, every listed blob found) is not read again; any other is read back from
//! its pack and checked with `RefChunk::decode_verified`. Memory: the snapshot object (bounded
//! by `MAX_SNAPSHOT_OBJECT_LEN`) and one reference chunk at a time, never the whole index.
//!
//! Against a concurrent prune (`prune.rs`): a blob a prune condemned still counts as stored
//! (it is, until the sweep), and a commit that references it claims it again in its record
//! transaction. Safety does not rest on that claim: every prune revives what a recorded
//! snapshot references before it sweeps, under the same lock. The claim makes `HAVE` report
//! the blob as stored again at once, so the next backup does not upload it again (the
//! kill -9 test `tests/prune_crash.rs` passes without it). A prune clears `Verified` on the chunks it condemns, so such a chunk is read
//! again and every condemned blob it lists is found. The check and the record run under the
//! client's shared maintenance lock, which a sweep takes exclusively.

use bytes::Bytes;
use cyberbackup_core::names::ClientId;
use cyberbackup_core::repo::{BlobClass, BlobId, RefChunk, SnapshotEnvelope, SnapshotId};

use super::staging::Received;
use super::{RepoStore, RepoStoreError, bad_object, layout, unix_now};
use crate::backend::ContentHash;
use crate::catalog::LockMode;
use crate::catalog::repo::{BlobLocation, NewSnapshot};

/// Reference chunks looked up in the catalog per query.
const LOOKUP_BATCH: usize = 2000;

/// What a commit found missing.
#[derive(Debug, Default)]
struct Missing {
    count: u64,
    example: Option<String>,
}

impl Missing {
    fn add(&mut self, count: u64, example: impl FnOnce() -> String) {
        self.count += count;
        if self.example.is_none() && count > 0 {
            self.example = Some(example());
        }
    }
}

/// Checks a received snapshot object, stores it and records it.
pub(super) async fn commit_snapshot(
    store: &RepoStore,
    client: ClientId,
    id: SnapshotId,
    size: u64,
    received: Received,
) -> Result<(), RepoStoreError> {
    let bytes = received.read_at(0, size).await?;
    let envelope = decode_claimed(&bytes, id)?;
    let _shared = store.maintenance_lock(client, LockMode::Shared).await?;
    let checked = check_references(store, client, &envelope.ref_chunks).await?;
    let key = layout::snapshot_key(client, &id);
    store
        .inner
        .backend
        .put_bytes(
            &key,
            Bytes::from(bytes),
            ContentHash::from_bytes(received.hash),
        )
        .await?;
    record(store, client, id, size, envelope, checked).await
}

/// Start-up recovery's commit of a snapshot object found stored without a record (a commit
/// interrupted between its put and its record, or a catalog older than the repository): the
/// same check as [`commit_snapshot`], then the record.
///
/// # Errors
/// [`RepoStoreError::MissingBlobs`] or [`RepoStoreError::BadObject`] when it would not pass
/// a commit; catalog failures.
pub(super) async fn record_stored(
    store: &RepoStore,
    client: ClientId,
    id: SnapshotId,
    bytes: &[u8],
) -> Result<(), RepoStoreError> {
    let envelope = decode_claimed(bytes, id)?;
    let _shared = store.maintenance_lock(client, LockMode::Shared).await?;
    let checked = check_references(store, client, &envelope.ref_chunks).await?;
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    record(store, client, id, size, envelope, checked).await
}

/// The envelope of a snapshot object whose bytes must hash to `id`.
fn decode_claimed(bytes: &[u8], id: SnapshotId) -> Result<SnapshotEnvelope, RepoStoreError> {
    let (envelope, actual) = SnapshotEnvelope::decode(bytes).map_err(bad_object)?;
    if actual != id {
        return Err(RepoStoreError::HashMismatch {
            expected: id.to_hex(),
            actual: actual.to_hex(),
        });
    }
    Ok(envelope)
}

async fn record(
    store: &RepoStore,
    client: ClientId,
    id: SnapshotId,
    size: u64,
    envelope: SnapshotEnvelope,
    checked: Checked,
) -> Result<(), RepoStoreError> {
    store
        .inner
        .catalog
        .record_snapshot(
            client.0,
            NewSnapshot {
                id,
                size,
                time_secs: envelope.time.secs,
                time_nanos: envelope.time.nanos,
                group: envelope.group,
                total_bytes: envelope.total_bytes,
                blob_count: envelope.blob_count,
                stored_at: unix_now(),
                ref_chunks: envelope.ref_chunks,
                verified_chunks: checked.verified_now,
                revived: checked.condemned,
            },
        )
        .await?;
    Ok(())
}

/// What a passed commit check found.
#[derive(Debug, Default)]
struct Checked {
    /// Reference chunks read and verified by this check.
    verified_now: Vec<BlobId>,
    /// Condemned chunks and blobs the snapshot references (to claim again).
    condemned: Vec<BlobId>,
}

/// `Ok` when every reference chunk and every blob they list is indexed;
/// [`RepoStoreError::MissingBlobs`] otherwise.
async fn check_references(
    store: &RepoStore,
    client: ClientId,
    ref_chunks: &[BlobId],
) -> Result<Checked, RepoStoreError> {
    let catalog = &store.inner.catalog;
    let mut missing = Missing::default();
    let mut checked = Checked::default();
    for batch in ref_chunks.chunks(LOOKUP_BATCH) {
        let locations = catalog.blob_locations(client.0, batch.to_vec()).await?;
        for (chunk_id, location) in batch.iter().zip(locations) {
            match location {
                None => missing.add(1, || format!("reference chunk {chunk_id}")),
                Some(location) if location.class != BlobClass::RefChunk => missing.add(1, || {
                    format!("reference chunk {chunk_id} (stored as a sealed blob)")
                }),
                Some(location) if location.verified && !location.condemned => {}
                Some(location) => {
                    if location.condemned {
                        checked.condemned.push(*chunk_id);
                    }
                    let absent = check_chunk(
                        store,
                        client,
                        chunk_id,
                        &location,
                        &mut missing,
                        &mut checked.condemned,
                    )
                    .await?;
                    if !absent {
                        checked.verified_now.push(*chunk_id);
                    }
                }
            }
        }
    }
    if missing.count > 0 {
        return Err(RepoStoreError::MissingBlobs {
            missing: missing.count,
            example: missing.example.unwrap_or_default(),
        });
    }
    Ok(checked)
}

/// Reads one unverified reference chunk back from its pack and checks it and the blobs it
/// lists; returns whether anything was missing (added to `missing`). Listed blobs a prune
/// condemned are added to `condemned`.
async fn check_chunk(
    store: &RepoStore,
    client: ClientId,
    chunk_id: &BlobId,
    location: &BlobLocation,
    missing: &mut Missing,
    condemned: &mut Vec<BlobId>,
) -> Result<bool, RepoStoreError> {
    let key = layout::pack_key(client, &location.pack);
    let range = location.offset..location.offset + u64::from(location.len);
    let bytes = store.inner.backend.get(&key, Some(range)).await?;
    let Ok(chunk) = RefChunk::decode_verified(&bytes, chunk_id) else {
        missing.add(1, || {
            format!("reference chunk {chunk_id} (its stored bytes do not match its ID)")
        });
        return Ok(true);
    };
    let found = store
        .inner
        .catalog
        .blob_locations(client.0, chunk.ids().to_vec())
        .await?;
    condemned.extend(
        chunk
            .ids()
            .iter()
            .zip(&found)
            .filter(|(_, location)| location.is_some_and(|l| l.condemned))
            .map(|(id, _)| *id),
    );
    let mut absent = chunk
        .ids()
        .iter()
        .zip(&found)
        .filter(|(_, location)| location.is_none())
        .map(|(id, _)| id);
    let Some(first) = absent.next() else {
        return Ok(false);
    };
    missing.add(1 + absent.count() as u64, || format!("blob {first}"));
    Ok(true)
}
