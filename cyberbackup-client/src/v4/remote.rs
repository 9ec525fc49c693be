//! [`RepoRemote`] over a v4 connection: each call is one repository operation of
//! `docs/protocol-v4.md` §9a, run to completion on the [`V4Client`].

use bytes::Bytes;
use cyberbackup_core::repo::{BlobId, PackId, SnapshotId};
use cyberbackup_core::v4::V4Error;
use cyberbackup_core::v4::client::{RepoCall, RepoResult};
use cyberbackup_core::v4::repository::{GetTarget, PutTarget, RepoPruneReport, RepoUsage};

use super::{V4Client, V4ClientError};
use crate::snapshot::{RemoteRepo, RepoRemote, SnapshotListing};

impl RepoRemote for V4Client {
    async fn open(&mut self) -> Result<Option<RemoteRepo>, V4ClientError> {
        match self.repository(RepoCall::Open).await? {
            RepoResult::State {
                config: Some(config),
                keys,
            } => Ok(Some(RemoteRepo { config, keys })),
            RepoResult::State { config: None, .. } => Ok(None),
            other => Err(mismatch("REPO_OPEN", &other)),
        }
    }

    async fn create(&mut self, config: Bytes, key: Bytes) -> Result<(), V4ClientError> {
        done(
            self.repository(RepoCall::Create { config, key }).await?,
            "REPO_CREATE",
        )
    }

    async fn add_key(&mut self, key: Bytes) -> Result<(), V4ClientError> {
        done(self.repository(RepoCall::AddKey { key }).await?, "KEY_ADD")
    }

    async fn have(&mut self, ids: &[BlobId]) -> Result<Vec<bool>, V4ClientError> {
        match self.repository(RepoCall::Have(ids.to_vec())).await? {
            RepoResult::Have(stored) => Ok(stored),
            other => Err(mismatch("HAVE", &other)),
        }
    }

    async fn put_pack(&mut self, id: PackId, pack: Bytes) -> Result<(), V4ClientError> {
        let call = RepoCall::Put {
            target: PutTarget::Pack(id),
            object: pack,
        };
        stored(self.repository(call).await?)
    }

    async fn put_snapshot(&mut self, id: SnapshotId, object: Bytes) -> Result<(), V4ClientError> {
        let call = RepoCall::Put {
            target: PutTarget::Snapshot(id),
            object,
        };
        stored(self.repository(call).await?)
    }

    async fn get_blob(&mut self, id: BlobId) -> Result<Bytes, V4ClientError> {
        object(self.repository(RepoCall::Get(GetTarget::Blob(id))).await?)
    }

    async fn get_blobs(&mut self, ids: &[BlobId]) -> Result<Vec<Bytes>, V4ClientError> {
        let calls = ids
            .iter()
            .map(|id| RepoCall::Get(GetTarget::Blob(*id)))
            .collect();
        self.repository_all(calls)
            .await?
            .into_iter()
            .map(|result| object(result?))
            .collect()
    }

    async fn get_snapshot(&mut self, id: SnapshotId) -> Result<Bytes, V4ClientError> {
        object(
            self.repository(RepoCall::Get(GetTarget::Snapshot(id)))
                .await?,
        )
    }

    async fn snapshots(&mut self) -> Result<Vec<SnapshotListing>, V4ClientError> {
        match self.repository(RepoCall::Snapshots).await? {
            RepoResult::Snapshots(entries) => Ok(entries
                .into_iter()
                .map(|entry| SnapshotListing {
                    id: entry.id,
                    size: entry.size,
                    stored_at: entry.stored_unix_secs,
                })
                .collect()),
            other => Err(mismatch("SNAPSHOTS", &other)),
        }
    }

    async fn forget(&mut self, id: SnapshotId) -> Result<(), V4ClientError> {
        done(self.repository(RepoCall::Forget(id)).await?, "FORGET")
    }

    async fn damaged(
        &mut self,
        after: Option<BlobId>,
    ) -> Result<(Vec<BlobId>, bool), V4ClientError> {
        match self.repository(RepoCall::Damaged { after }).await? {
            RepoResult::Damaged { ids, more } => Ok((ids, more)),
            other => Err(mismatch("DAMAGED", &other)),
        }
    }

    async fn usage(&mut self) -> Result<RepoUsage, V4ClientError> {
        match self.repository(RepoCall::Usage).await? {
            RepoResult::Usage(usage) => Ok(usage),
            other => Err(mismatch("USAGE", &other)),
        }
    }

    async fn remove_key(&mut self, key: Bytes) -> Result<(), V4ClientError> {
        done(
            self.repository(RepoCall::RemoveKey { key }).await?,
            "KEY_REMOVE",
        )
    }

    async fn prune(&mut self) -> Result<RepoPruneReport, V4ClientError> {
        match self.repository(RepoCall::Prune).await? {
            RepoResult::Pruned(report) => Ok(report),
            other => Err(mismatch("PRUNE", &other)),
        }
    }
}

fn done(result: RepoResult, request: &str) -> Result<(), V4ClientError> {
    match result {
        RepoResult::Done => Ok(()),
        other => Err(mismatch(request, &other)),
    }
}

fn stored(result: RepoResult) -> Result<(), V4ClientError> {
    match result {
        RepoResult::Stored => Ok(()),
        other => Err(mismatch("PUT", &other)),
    }
}

fn object(result: RepoResult) -> Result<Bytes, V4ClientError> {
    match result {
        RepoResult::Object(bytes) => Ok(bytes),
        other => Err(mismatch("GET", &other)),
    }
}

/// The session delivered a result of another kind than the request's (not expected: the
/// session checks the reply against the request).
fn mismatch(request: &str, result: &RepoResult) -> V4ClientError {
    V4ClientError::Session(V4Error::Protocol(format!(
        "{request} answered with {result:?}"
    )))
}
