//! The upload side of a backup, on the async task: receives the walk's blobs over a bounded
//! channel, drops the ones this run already has (the per-snapshot ID set, which is also the
//! sorted reference list), asks the server about the rest in HAVE batches of at most
//! [`MAX_HAVE_BATCH`], seals the missing ones on all cores, packs and uploads them, then
//! writes the reference list and commits the snapshot.
//!
//! Memory: the channel holds at most `walk::CHANNEL_BYTES` of messages, a HAVE batch at most
//! [`BATCH_BYTES`] of plaintext, the pack being filled at most its target plus one blob
//! (the session seals it into frames one at a time as the socket takes them, so it is not
//! held twice), and the parent trees fetched ahead of the walk (`tree_prefetch`); the ID
//! set grows with the snapshot (32 bytes per distinct blob), never with the repository. An
//! external sort of that set is not needed this round.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cyberbackup_core::repo::{
    BlobId, BlobKind, BlobSealer, Chunker, PackWriter, RefChunk, RefListBuilder, RepoError,
    SealedBlob, Snapshot, SnapshotEnvelope, SnapshotId, SnapshotStats, Timestamp, Tree,
};
use cyberbackup_core::v4::repository::RepoUsage;
use rand_core::OsRng;
use tokio::sync::mpsc;

use super::exclude::{ExcludeOptions, Excluder};
use super::remote::{MAX_HAVE_BATCH, RepoRemote, have_all};
use super::tree_prefetch::{Lookup, TreePrefetch};
use super::walk::{self, PathSet, Queued, WalkMsg, WalkOutcome, Walker};
use super::{EXIT_PARTIAL, Repository};
use crate::v4::V4ClientError;

/// Plaintext gathered before a HAVE round trip and a parallel sealing pass: enough chunks
/// (8 of the default 1 MiB average) to keep every core sealing, little enough that the
/// batch and its sealed copies stay a small part of the client's memory (32 MiB made the
/// first backup's peak RSS 193 MiB in the harness, docs/benchmarks.md).
const BATCH_BYTES: usize = 8 << 20;

/// What to back up and how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupOptions {
    /// Files and directories to back up.
    pub paths: Vec<PathBuf>,
    /// Tags of the snapshot.
    pub tags: Vec<String>,
    /// Host name to record (default: this machine's).
    pub host: Option<Vec<u8>>,
    /// Exclude rules.
    pub exclude: ExcludeOptions,
    /// Parent snapshot (default: the latest of this host with the same paths).
    pub parent: Option<SnapshotId>,
    /// Read every file, even when the parent says it is unchanged.
    pub force: bool,
    /// The snapshot's time (default: now, when the backup ends).
    pub time: Option<Timestamp>,
}

/// Progress of a backup, for a terminal bar or JSON status lines.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "message_type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackupEvent {
    /// The pre-scan's totals.
    Scanned {
        /// Files to look at.
        total_files: u64,
        /// Their bytes.
        total_bytes: u64,
    },
    /// One more file done.
    Status {
        /// Files done.
        files_done: u64,
        /// Bytes done (read or known unchanged).
        bytes_done: u64,
        /// The pre-scan's file total.
        total_files: u64,
        /// The pre-scan's byte total.
        total_bytes: u64,
        /// The file just done.
        current_file: String,
    },
    /// An entry was skipped (unreadable: the run is partial; or a socket, FIFO, device).
    Skipped {
        /// What and why.
        message: String,
        /// Whether this makes the run partial (exit 3).
        partial: bool,
    },
}

/// Receives a backup's [`BackupEvent`]s.
pub trait BackupObserver: Send {
    /// One event.
    fn event(&mut self, event: &BackupEvent);
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl BackupObserver for NoObserver {
    fn event(&mut self, _event: &BackupEvent) {}
}

/// The result of a backup (restic's `summary` message, our field names).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BackupSummary {
    /// Always `summary` (for JSON lines).
    pub message_type: &'static str,
    /// The new snapshot's ID.
    pub snapshot_id: String,
    /// The parent snapshot, if one was used.
    pub parent: Option<String>,
    /// Files not in the parent.
    pub files_new: u64,
    /// Files in the parent whose metadata changed (read again).
    pub files_changed: u64,
    /// Files reused from the parent without reading.
    pub files_unmodified: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of file content in the snapshot.
    pub bytes_processed: u64,
    /// Bytes read from disk.
    pub bytes_read: u64,
    /// Bytes of new sealed blobs uploaded.
    pub bytes_added: u64,
    /// Blobs uploaded.
    pub blobs_added: u64,
    /// Packs uploaded.
    pub packs_uploaded: u64,
    /// Entries skipped because they could not be read.
    pub unreadable: Vec<String>,
    /// Wall time.
    pub duration_secs: f64,
}

impl BackupSummary {
    /// 0, or [`EXIT_PARTIAL`] when some entries could not be read.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        if self.unreadable.is_empty() {
            0
        } else {
            EXIT_PARTIAL
        }
    }
}

impl<R: RepoRemote> Repository<R> {
    /// The repository's stored bytes and quotas, as the server counts them (a backup warns
    /// when they are above the soft quota).
    ///
    /// # Errors
    /// The remote's errors.
    pub async fn usage(&mut self) -> Result<RepoUsage, V4ClientError> {
        self.remote.usage().await
    }

    /// Backs up `options.paths` as a new snapshot and commits it.
    ///
    /// # Errors
    /// [`V4ClientError::Usage`] for no paths or a bad exclude rule; the remote's errors
    /// (nothing is visible unless the commit succeeded); [`V4ClientError::Repo`] when a
    /// tree or the snapshot exceeds a format limit, or a parent blob the server no longer
    /// has was to be reused (run again with `force`).
    pub async fn backup(
        &mut self,
        options: &BackupOptions,
        observer: &mut dyn BackupObserver,
    ) -> Result<BackupSummary, V4ClientError> {
        let started = Instant::now();
        if options.paths.is_empty() {
            return Err(V4ClientError::Usage {
                message: "backup needs at least one path".into(),
            });
        }
        let excluder = Excluder::new(&options.exclude)?;
        let (set, paths) = PathSet::new(&options.paths).map_err(|source| V4ClientError::Local {
            what: "cannot resolve the backup path",
            path: options.paths[0].clone(),
            source,
        })?;
        let host = options.host.clone().unwrap_or_else(super::host_name);
        let parent = match options.parent {
            Some(id) => Some(id),
            None => self.latest_matching(&host, &paths).await?,
        };
        let parent_root = match (parent, options.force) {
            (Some(id), false) => Some(self.snapshot(id).await?.1.root),
            _ => None,
        };
        let repo = |source| super::repo_error("backup", source);
        let keys = &self.open.keys;
        let config = &self.open.config;
        let (tx, rx) = walk::channel(tokio::runtime::Handle::current());
        let walker = Walker::new(
            tx,
            BlobSealer::new(keys, config).map_err(repo)?,
            Chunker::new(&config.chunker, keys).map_err(repo)?,
            excluder,
        );
        let thread = std::thread::Builder::new()
            .name("cyberbackup-walk".into())
            .spawn(move || walker.run(&set, parent_root))
            .map_err(|source| V4ClientError::Local {
                what: "cannot start the walk thread for",
                path: options.paths[0].clone(),
                source,
            })?;
        let mut upload = Upload::new(self)?;
        let result = upload.run(rx, observer).await;
        let _ = thread.join();
        let (outcome, stats) = result?;
        let time = options.time.unwrap_or_else(now);
        let snapshot = Snapshot {
            root: outcome.root,
            time,
            host,
            user: super::user_name(),
            paths,
            tags: options
                .tags
                .iter()
                .map(|tag| tag.as_bytes().to_vec())
                .collect(),
            parent,
            stats: SnapshotStats {
                files: outcome.files_new + outcome.files_changed + outcome.files_unmodified,
                dirs: outcome.dirs,
                bytes: outcome.bytes,
                added_bytes: stats.bytes_added,
            },
        };
        let envelope = SnapshotEnvelope {
            time,
            total_bytes: outcome.bytes,
            blob_count: stats.blob_count,
            group: snapshot.group(&upload.repo.open.keys),
            ref_chunks: stats.ref_chunks,
        };
        let sealed = snapshot
            .seal(&envelope, &upload.repo.open.keys, &mut OsRng)
            .map_err(repo)?;
        upload
            .repo
            .remote
            .put_snapshot(sealed.id, Bytes::from(sealed.bytes))
            .await?;
        Ok(BackupSummary {
            message_type: "summary",
            snapshot_id: sealed.id.to_hex(),
            parent: parent.map(|id| id.to_hex()),
            files_new: outcome.files_new,
            files_changed: outcome.files_changed,
            files_unmodified: outcome.files_unmodified,
            dirs: outcome.dirs,
            bytes_processed: outcome.bytes,
            bytes_read: outcome.bytes_read,
            bytes_added: stats.bytes_added,
            blobs_added: stats.blobs_added,
            packs_uploaded: stats.packs,
            unreadable: upload.unreadable,
            duration_secs: started.elapsed().as_secs_f64(),
        })
    }

    /// The latest snapshot of `host` with exactly these paths.
    async fn latest_matching(
        &mut self,
        host: &[u8],
        paths: &[Vec<u8>],
    ) -> Result<Option<SnapshotId>, V4ClientError> {
        let mut best: Option<(Timestamp, SnapshotId)> = None;
        for listing in self.remote.snapshots().await? {
            let (_, snapshot) = self.snapshot(listing.id).await?;
            if snapshot.host == host
                && snapshot.paths == paths
                && best.is_none_or(|(time, _)| snapshot.time > time)
            {
                best = Some((snapshot.time, listing.id));
            }
        }
        Ok(best.map(|(_, id)| id))
    }
}

/// Counters of the upload side.
#[derive(Debug, Default)]
struct UploadStats {
    bytes_added: u64,
    blobs_added: u64,
    packs: u64,
    blob_count: u64,
    ref_chunks: Vec<BlobId>,
}

/// A blob waiting for its HAVE answer; no plaintext when it was reused from the parent.
#[derive(Debug)]
struct Pending {
    id: BlobId,
    blob: Option<(BlobKind, Bytes)>,
}

struct Upload<'r, R> {
    repo: &'r mut Repository<R>,
    /// Every blob of this snapshot: the dedup set, and (sorted) the reference list.
    ids: BTreeSet<BlobId>,
    pending: Vec<Pending>,
    pending_bytes: usize,
    sealers: Vec<BlobSealer>,
    pack: PackWriter,
    pack_bytes: Vec<u8>,
    stats: UploadStats,
    unreadable: Vec<String>,
    totals: (u64, u64),
    bytes_done: u64,
    /// The parent's trees, fetched ahead of the walk.
    parent_trees: TreePrefetch,
}

impl<'r, R: RepoRemote> Upload<'r, R> {
    fn new(repo: &'r mut Repository<R>) -> Result<Self, V4ClientError> {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        let sealers = (0..workers)
            .map(|_| BlobSealer::new(&repo.open.keys, &repo.open.config))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| super::repo_error("backup", source))?;
        let target = repo.open.config.pack_target_bytes;
        Ok(Self {
            repo,
            ids: BTreeSet::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            sealers,
            pack: PackWriter::new(target),
            pack_bytes: Vec::new(),
            stats: UploadStats::default(),
            unreadable: Vec::new(),
            totals: (0, 0),
            bytes_done: 0,
            parent_trees: TreePrefetch::default(),
        })
    }

    async fn run(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Queued>,
        observer: &mut dyn BackupObserver,
    ) -> Result<(WalkOutcome, UploadStats), V4ClientError> {
        let outcome = loop {
            let Some((msg, _room)) = rx.recv().await else {
                return Err(walk_error(RepoError::ApiMisuse(
                    "the walk thread ended early",
                )));
            };
            match msg {
                WalkMsg::Total { files, bytes } => {
                    self.totals = (files, bytes);
                    observer.event(&BackupEvent::Scanned {
                        total_files: files,
                        total_bytes: bytes,
                    });
                }
                WalkMsg::Blob {
                    kind,
                    id,
                    plaintext,
                } => {
                    if self.ids.insert(id) {
                        self.pending_bytes += plaintext.len();
                        self.pending.push(Pending {
                            id,
                            blob: Some((kind, plaintext)),
                        });
                    }
                }
                WalkMsg::Reused(content) => {
                    for id in content {
                        if self.ids.insert(id) {
                            self.pending.push(Pending { id, blob: None });
                        }
                    }
                }
                WalkMsg::NeedTree { id, reply } => self.answer_tree(id, reply).await,
                WalkMsg::FileDone {
                    path,
                    files_done,
                    bytes_done,
                } => {
                    self.bytes_done += bytes_done;
                    observer.event(&BackupEvent::Status {
                        files_done,
                        bytes_done: self.bytes_done,
                        total_files: self.totals.0,
                        total_bytes: self.totals.1,
                        current_file: path.display().to_string(),
                    });
                }
                WalkMsg::Skipped { message, partial } => {
                    if partial {
                        self.unreadable.push(message.clone());
                    }
                    observer.event(&BackupEvent::Skipped { message, partial });
                }
                WalkMsg::Done(result) => break result.map_err(walk_error)?,
            }
            if self.pending.len() >= MAX_HAVE_BATCH || self.pending_bytes >= BATCH_BYTES {
                self.flush().await?;
            }
        };
        self.flush().await?;
        self.write_refs().await?;
        self.finish_pack().await?;
        Ok((outcome, std::mem::take(&mut self.stats)))
    }

    /// Answers the walk's request for a parent tree (`None` when it cannot be had), then
    /// fetches ahead the trees it will ask for next if few are left.
    async fn answer_tree(&mut self, id: BlobId, reply: std::sync::mpsc::SyncSender<Option<Tree>>) {
        let tree = match self.parent_trees.take(id) {
            Lookup::Ready(tree) => Some(tree),
            Lookup::Fetch(position) => {
                let fetched = self
                    .repo
                    .trees(&[id])
                    .await
                    .ok()
                    .and_then(|mut trees| trees.pop().flatten());
                fetched.map(|(tree, bytes)| {
                    self.parent_trees.fetched(position, &tree, bytes);
                    tree
                })
            }
        };
        let _ = reply.send(tree);
        if self.parent_trees.wants_more() {
            loop {
                let batch = self.parent_trees.next_batch();
                if batch.is_empty() {
                    break;
                }
                let ids: Vec<BlobId> = batch.iter().map(|(_, id)| *id).collect();
                let trees = self
                    .repo
                    .trees(&ids)
                    .await
                    .unwrap_or_else(|_| vec![None; ids.len()]);
                let arrived = batch
                    .into_iter()
                    .zip(trees)
                    .map(|((position, id), tree)| (position, id, tree))
                    .collect();
                self.parent_trees.arrived(arrived);
            }
        }
    }

    /// Asks HAVE about the pending blobs, seals the missing ones in parallel and packs them.
    async fn flush(&mut self) -> Result<(), V4ClientError> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let ids: Vec<BlobId> = pending.iter().map(|p| p.id).collect();
        let have = have_all(&mut self.repo.remote, &ids).await?;
        let mut missing = Vec::new();
        for (pending, have) in pending.iter().zip(have) {
            if have {
                continue;
            }
            let Some((kind, plaintext)) = &pending.blob else {
                return Err(super::repo_error(
                    format!(
                        "blob {} of the parent snapshot is no longer on the server; run the backup again with --force (read every file)",
                        pending.id
                    ),
                    RepoError::ApiMisuse("a reused blob is missing"),
                ));
            };
            missing.push((*kind, pending.id, plaintext.clone()));
        }
        drop(pending);
        if missing.is_empty() {
            return Ok(());
        }
        let sealers = std::mem::take(&mut self.sealers);
        let (sealers, sealed) = tokio::task::spawn_blocking(move || seal_all(sealers, &missing))
            .await
            .map_err(|err| {
                walk_error(RepoError::Compress {
                    reason: format!("a sealing thread failed: {err}"),
                })
            })?;
        self.sealers = sealers;
        for blob in sealed {
            let blob = blob.map_err(walk_error)?;
            let bytes = self.pack.push_sealed(&blob).map_err(walk_error)?;
            self.add_to_pack(&bytes).await?;
            self.stats.blobs_added += 1;
        }
        Ok(())
    }

    /// Cuts the snapshot's sorted IDs into reference chunks and packs those the server lacks.
    async fn write_refs(&mut self) -> Result<(), V4ClientError> {
        let mut builder = RefListBuilder::new();
        let mut chunks: Vec<RefChunk> = Vec::new();
        for id in &self.ids {
            chunks.extend(builder.push(*id).map_err(walk_error)?);
        }
        chunks.extend(builder.finish());
        self.stats.blob_count = self.ids.len() as u64;
        self.stats.ref_chunks = chunks.iter().map(RefChunk::id).collect();
        let have = have_all(&mut self.repo.remote, &self.stats.ref_chunks).await?;
        for (chunk, have) in chunks.iter().zip(have) {
            if !have {
                let bytes = self.pack.push_ref_chunk(chunk).map_err(walk_error)?;
                self.add_to_pack(&bytes).await?;
            }
        }
        Ok(())
    }

    async fn add_to_pack(&mut self, bytes: &[u8]) -> Result<(), V4ClientError> {
        self.pack_bytes.extend_from_slice(bytes);
        self.stats.bytes_added += bytes.len() as u64;
        if self.pack.is_full() {
            self.finish_pack().await?;
        }
        Ok(())
    }

    async fn finish_pack(&mut self) -> Result<(), V4ClientError> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let target = self.repo.open.config.pack_target_bytes;
        let finished = std::mem::replace(&mut self.pack, PackWriter::new(target)).finish();
        let mut bytes = std::mem::take(&mut self.pack_bytes);
        bytes.extend_from_slice(&finished.tail);
        self.repo
            .remote
            .put_pack(finished.id, Bytes::from(bytes))
            .await?;
        self.stats.packs += 1;
        Ok(())
    }
}

/// Seals `blobs` on one thread per sealer; results in input order.
fn seal_all(
    mut sealers: Vec<BlobSealer>,
    blobs: &[(BlobKind, BlobId, Bytes)],
) -> (Vec<BlobSealer>, Vec<Result<SealedBlob, RepoError>>) {
    let per_worker = blobs.len().div_ceil(sealers.len().max(1)).max(1);
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = sealers
            .iter_mut()
            .zip(blobs.chunks(per_worker))
            .map(|(sealer, part)| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(kind, id, plaintext)| sealer.seal(*kind, *id, plaintext, &mut OsRng))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| {
                handle.join().unwrap_or_else(|_| {
                    vec![Err(RepoError::Compress {
                        reason: "a sealing thread panicked".into(),
                    })]
                })
            })
            .collect()
    });
    (sealers, results)
}

fn walk_error(source: RepoError) -> V4ClientError {
    super::repo_error("backup", source)
}

fn now() -> Timestamp {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Timestamp {
        secs: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: since.subsec_nanos(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyberbackup_core::repo::{BlobOpener, MasterKey, RepoConfig};

    #[test]
    fn seal_all_returns_every_blob_sealed_in_input_order_across_workers() {
        let keys = MasterKey::from_bytes([7; 32]).derive();
        let config = RepoConfig::new([1; 16]);
        let sealers: Vec<_> = (0..3)
            .map(|_| BlobSealer::new(&keys, &config).unwrap())
            .collect();
        let blobs: Vec<_> = (0..10u8)
            .map(|i| {
                let plain = Bytes::from(vec![i; 100 + usize::from(i)]);
                (BlobKind::Data, sealers[0].id(&plain), plain)
            })
            .collect();
        let (sealers, sealed) = seal_all(sealers, &blobs);
        assert_eq!(sealers.len(), 3);
        assert_eq!(sealed.len(), blobs.len());
        let mut opener = BlobOpener::new(&keys, &config).unwrap();
        for ((kind, id, plain), sealed) in blobs.iter().zip(sealed) {
            let sealed = sealed.unwrap();
            assert_eq!(sealed.id, *id);
            assert_eq!(
                opener.open(*kind, id, &sealed.bytes).unwrap(),
                plain.to_vec()
            );
        }
    }
}
