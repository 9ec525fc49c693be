//! [`RepoConnection`]: the repository operations of one v4 connection
//! (`docs/protocol-v4.md` §9a), carried out on the keyless [`RepoStore`]. The client id is
//! always the one the session authenticated, never a value from the wire; the store's
//! errors become the protocol's refusals here, and only here.

use bytes::Bytes;
use cyberbackup_core::names::ClientId;
use cyberbackup_core::v4::repository::{
    MAX_DAMAGED_BATCH, PutTarget, RepoPruneReport, RepoRequest, SnapshotEntry,
};
use cyberbackup_core::v4::server::RepoAnswer;
use cyberbackup_core::v4::wire::ErrorCode;
use cyberbackup_core::v4::{Refusal, StorageFailure};

use crate::backend::BackendError;
use crate::repository::{
    BlobReader, ObjectClass, PruneOptions, PutStart, RepoStore, RepoStoreError, StagedPut,
};

/// The object a connection is putting, between `PUT_READY` and `PUT_END`.
#[derive(Debug, Default)]
pub(crate) struct RepoConnection {
    staged: Option<StagedPut>,
    /// The connection's blob reads (a restore's readahead in the pack).
    blobs: BlobReader,
}

impl RepoConnection {
    /// Answers one request of `client`; a `PRUNE` runs with `prune`.
    pub(crate) async fn request(
        &mut self,
        store: &RepoStore,
        prune: &PruneOptions,
        client: ClientId,
        request: RepoRequest,
    ) -> Result<RepoAnswer, Refusal> {
        let answer = match request {
            RepoRequest::Open => {
                let state = store.state(client).await.map_err(refusal)?;
                match state {
                    Some(state) => RepoAnswer::State {
                        config: Some(state.config),
                        keys: state.keys,
                    },
                    None => RepoAnswer::State {
                        config: None,
                        keys: Vec::new(),
                    },
                }
            }
            RepoRequest::Create { config, key } => {
                store.create(client, config, key).await.map_err(refusal)?;
                RepoAnswer::Done
            }
            RepoRequest::AddKey { key } => {
                store.add_key(client, key).await.map_err(refusal)?;
                RepoAnswer::Done
            }
            RepoRequest::RemoveKey { key } => {
                store.remove_key(client, key).await.map_err(refusal)?;
                RepoAnswer::Done
            }
            RepoRequest::Prune => {
                let report = store.prune(client, prune).await.map_err(refusal)?;
                RepoAnswer::Pruned(RepoPruneReport {
                    snapshots: report.snapshots,
                    condemned: report.condemned,
                    deleted_blobs: report.deleted_blobs,
                    deleted_blob_bytes: report.deleted_blob_bytes,
                    packs_repacked: report.packs_repacked,
                    packs_retired: report.packs_retired,
                    bytes_retired: report.bytes_retired,
                    packs_deleted: report.packs_deleted,
                    bytes_freed: report.bytes_freed,
                    grace_secs: prune.grace.as_secs(),
                })
            }
            RepoRequest::Have { ids } => {
                RepoAnswer::Have(store.have(client, &ids).await.map_err(refusal)?)
            }
            RepoRequest::Put { target, size } => {
                let (class, id) = match target {
                    PutTarget::Pack(id) => (ObjectClass::Pack, id.0),
                    PutTarget::Snapshot(id) => (ObjectClass::Snapshot, id.0),
                };
                match store
                    .begin_put(client, class, id, size)
                    .await
                    .map_err(refusal)?
                {
                    PutStart::AlreadyStored => RepoAnswer::Stored,
                    PutStart::Receiving(staged) => {
                        self.staged = Some(staged);
                        RepoAnswer::PutReady
                    }
                }
            }
            RepoRequest::Get { target } => {
                let object = match target {
                    cyberbackup_core::v4::repository::GetTarget::Blob(id) => self
                        .blobs
                        .read(store, client, id)
                        .await
                        .map_err(|err| damaged(err, "blob", id.to_hex(), "its pack")),
                    cyberbackup_core::v4::repository::GetTarget::Snapshot(id) => store
                        .get_snapshot(client, id)
                        .await
                        .map_err(|err| damaged(err, "snapshot", id.to_hex(), "its object")),
                };
                RepoAnswer::Object(object.map_err(refusal)?)
            }
            RepoRequest::Snapshots => {
                let listed = store.snapshots(client).await.map_err(refusal)?;
                RepoAnswer::Snapshots(
                    listed
                        .into_iter()
                        .map(|snapshot| SnapshotEntry {
                            id: snapshot.id,
                            size: snapshot.size,
                            stored_unix_secs: snapshot.stored_at,
                        })
                        .collect(),
                )
            }
            RepoRequest::Forget { id } => {
                store.forget(client, id).await.map_err(refusal)?;
                RepoAnswer::Done
            }
            RepoRequest::Damaged { after } => {
                let (ids, more) = store
                    .damaged_blobs(client, after, MAX_DAMAGED_BATCH)
                    .await
                    .map_err(refusal)?;
                RepoAnswer::Damaged { ids, more }
            }
            RepoRequest::Usage => RepoAnswer::Usage(store.usage(client).await.map_err(refusal)?),
            RepoRequest::PutEnd => {
                return Err(Refusal::new(
                    ErrorCode::PROTOCOL,
                    "PUT_END is not a request of its own",
                ));
            }
        };
        Ok(answer)
    }

    /// Appends `data` to the staged object.
    pub(crate) async fn write(&mut self, data: Bytes) -> Result<(), StorageFailure> {
        let Some(staged) = &mut self.staged else {
            return Err(StorageFailure {
                reason: "no object is being put".into(),
            });
        };
        staged.write(data).await.map_err(|err| {
            tracing::error!(%err, "cannot stage a repository object");
            StorageFailure {
                reason: err.to_string(),
            }
        })
    }

    /// Verifies the staged object and makes it durable and visible.
    pub(crate) async fn finish(&mut self, store: &RepoStore) -> Result<RepoAnswer, Refusal> {
        let Some(staged) = self.staged.take() else {
            return Err(Refusal::new(ErrorCode::PROTOCOL, "no object is being put"));
        };
        store.finish_put(staged).await.map_err(refusal)?;
        Ok(RepoAnswer::Stored)
    }

    /// Discards the staged object, if any (refused, or the connection ended).
    pub(crate) async fn abort(&mut self, store: &RepoStore) {
        if let Some(staged) = self.staged.take() {
            store.abort_put(staged).await;
        }
    }
}

/// An indexed object the backend no longer has whole (missing, or shorter than the index
/// says) is damaged storage, not a passing failure: `CORRUPT`, which says so, instead of
/// `STORAGE`, which tells the client to retry.
fn damaged(err: RepoStoreError, what: &'static str, id: String, holder: &str) -> RepoStoreError {
    match err {
        RepoStoreError::Backend(
            BackendError::NotFound { .. } | BackendError::InvalidRange { .. },
        ) => RepoStoreError::Damaged {
            what,
            id,
            problem: format!("{holder} is missing or shorter than indexed"),
        },
        other => other,
    }
}

/// The protocol's answer to a store error: what went wrong and what the user can do. The
/// store's own failures (backend, catalog) are logged here and reported as `STORAGE`.
fn refusal(err: RepoStoreError) -> Refusal {
    let code = match &err {
        RepoStoreError::NoRepository => ErrorCode::NO_REPOSITORY,
        RepoStoreError::Exists => ErrorCode::EXISTS,
        RepoStoreError::BadObject(_) => ErrorCode::BAD_OBJECT,
        RepoStoreError::HashMismatch { .. } => ErrorCode::HASH_MISMATCH,
        RepoStoreError::MissingBlobs { .. } => ErrorCode::MISSING_BLOBS,
        RepoStoreError::NotFound { .. } => ErrorCode::NOT_FOUND,
        RepoStoreError::TooLarge { .. } => ErrorCode::TOO_LARGE,
        RepoStoreError::QuotaExceeded { .. } => ErrorCode::QUOTA_EXCEEDED,
        RepoStoreError::LastKey => ErrorCode::FORBIDDEN,
        RepoStoreError::PruneUnsafe { .. } | RepoStoreError::Damaged { .. } => ErrorCode::CORRUPT,
        _ => {
            tracing::error!(%err, "repository store failed");
            return Refusal::new(
                ErrorCode::STORAGE,
                "the server could not access the repository; retry later (details are in the server log)",
            );
        }
    };
    Refusal::new(code, err.to_string())
}
