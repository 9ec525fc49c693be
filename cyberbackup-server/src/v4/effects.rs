//! Carries out the effects of one v4 connection against the catalog and storage. Every
//! catalog query uses the client id the session authenticated, never a value from the wire.

use std::fs::File;
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cyberbackup_core::names::{ClientId, FileName, NameField};
use cyberbackup_core::v4::noise::PublicKey;
use cyberbackup_core::v4::repository::{PutTarget, RepoRequest};
use cyberbackup_core::v4::server::{
    AuthDecision, RepoAnswer, ResumePoint, ServerEffect, ServerSession,
};
use cyberbackup_core::v4::wire::{ClientAuth, ErrorCode, VersionRecord};
use cyberbackup_core::v4::{ContentDigest, Refusal, StorageFailure, V4Error};
use rand_core::{CryptoRngCore, OsRng, RngCore};

use super::partial::ResumablePartial;
use super::repository::RepoConnection;
use super::token_hash;
use crate::catalog::v4::{V4RegisterOutcome, V4Version};
use crate::catalog::{CommittingFile, DeviceRole, FileRowId, ReceivedFile};
use crate::live::TransferObject;
use crate::maintenance::{self, CommitOutcome};
use crate::shared::Shared;
use crate::storage::Storage;
use crate::telemetry::ConnectionSummary;

/// The upload open on this connection.
#[derive(Debug)]
struct OpenUpload {
    client: ClientId,
    name: Vec<u8>,
    row: FileRowId,
    path_name: String,
    partial: ResumablePartial,
    /// The last checkpoint, being made durable and recorded while the upload goes on.
    checkpointing: Option<tokio::task::JoinHandle<Result<(), StorageFailure>>>,
}

impl OpenUpload {
    /// Waits until the checkpoint in progress is durable and recorded (anything that
    /// depends on it — the next checkpoint, the commit, a discard — comes after).
    async fn settle_checkpoint(&mut self) -> Result<(), StorageFailure> {
        match self.checkpointing.take() {
            None => Ok(()),
            Some(task) => task.await.unwrap_or_else(|join| {
                Err(StorageFailure {
                    reason: format!("checkpoint task failed: {join}"),
                })
            }),
        }
    }
}

/// Why a commit failed: before its intent was recorded (discard the upload) or after (the
/// disk decided through reconciliation; nothing may be discarded blindly).
#[derive(Debug)]
enum CommitError {
    BeforeIntent(StorageFailure),
    AfterIntent(StorageFailure),
}

/// Per-connection executor of v4 effects.
#[derive(Debug)]
pub(crate) struct V4Effects<'a> {
    shared: &'a Shared,
    peer: IpAddr,
    /// This connection's number in the dashboard's live state.
    connection: u64,
    upload: Option<OpenUpload>,
    version: Option<Arc<File>>,
    /// The repository object being put, if any.
    repo: RepoConnection,
    /// The static key this connection authenticated with (its device), once known.
    device: Option<PublicKey>,
    summary: ConnectionSummary,
}

impl<'a> V4Effects<'a> {
    pub(crate) fn new(shared: &'a Shared, peer: IpAddr, connection: u64) -> Self {
        Self {
            shared,
            peer,
            connection,
            upload: None,
            version: None,
            repo: RepoConnection::default(),
            device: None,
            summary: ConnectionSummary::new(4),
        }
    }

    /// What this connection stored so far.
    pub(crate) fn summary(&self) -> &ConnectionSummary {
        &self.summary
    }

    /// Performs `effect` and reports its outcome to `session`; records how long it took in
    /// `cyberbackup_effect_duration_seconds`.
    pub(crate) async fn run<R: CryptoRngCore>(
        &mut self,
        session: &mut ServerSession<R>,
        effect: ServerEffect,
    ) -> Result<(), V4Error> {
        let kind = effect_kind(&effect);
        let started = Instant::now();
        let result = self.perform(session, effect).await;
        let elapsed = started.elapsed().as_secs_f64();
        self.shared.live.record(|| {
            metrics::histogram!("cyberbackup_effect_duration_seconds", "effect" => kind)
                .record(elapsed);
        });
        result
    }

    /// The dashboard's key of this connection's upload (one at a time per connection).
    fn live_transfer(&self) -> (u64, u64) {
        (self.connection, 0)
    }

    /// The dashboard's key of this connection's repository object put (one at a time).
    fn live_put(&self) -> (u64, u64) {
        (self.connection, 1)
    }

    async fn perform<R: CryptoRngCore>(
        &mut self,
        session: &mut ServerSession<R>,
        effect: ServerEffect,
    ) -> Result<(), V4Error> {
        match effect {
            ServerEffect::Authenticate {
                client_key,
                request,
            } => {
                let decision = self.authenticate(client_key, request).await;
                if matches!(decision, AuthDecision::Accepted { .. }) {
                    self.device = Some(client_key);
                }
                session.handle_auth(now(), decision)
            }
            ServerEffect::OpenUpload {
                client_id,
                name,
                size,
                restart,
            } => {
                let outcome = self.open_upload(client_id, &name, size, restart).await;
                if outcome.is_ok() {
                    self.shared.live.transfer_began(
                        self.live_transfer(),
                        client_id.to_hex(),
                        TransferObject::File(name.to_string_lossy()),
                        Some(size),
                    );
                }
                session.handle_upload_opened(now(), outcome)
            }
            ServerEffect::WriteUpload { data } => {
                let result = match &mut self.upload {
                    Some(open) => open.partial.append(&data).await.map_err(failure("write")),
                    None => Err(no_upload()),
                };
                if result.is_ok() {
                    self.shared.stats.add_bytes_received(data.len());
                    self.shared
                        .live
                        .transfer_received(self.live_transfer(), data.len());
                    self.summary.received(data.len());
                }
                session.handle_storage(now(), result)
            }
            ServerEffect::Checkpoint { offset } => {
                let result = self.checkpoint(offset).await;
                session.handle_storage(now(), result)
            }
            ServerEffect::FinishUpload {
                size,
                sha256,
                cksum,
            } => {
                let result = self.finish_upload(size, sha256, cksum).await;
                self.shared.live.transfer_ended(self.live_transfer());
                if result.is_ok() {
                    self.summary.committed();
                }
                session.handle_committed(now(), result)
            }
            ServerEffect::DiscardUpload => {
                self.discard_upload().await;
                self.shared.live.transfer_ended(self.live_transfer());
                Ok(())
            }
            ServerEffect::ListVersions { client_id } => {
                let result = self.list(client_id).await;
                session.handle_listing(now(), result)
            }
            ServerEffect::OpenVersion {
                client_id,
                name,
                version,
            } => {
                let result = self.open_version(client_id, &name, version).await;
                session.handle_version_opened(now(), result)
            }
            ServerEffect::ReadVersion { offset, max } => {
                let result = self.read_version(offset, max).await;
                session.handle_version_data(now(), result)
            }
            ServerEffect::CloseVersion => {
                self.version = None;
                Ok(())
            }
            ServerEffect::Repository { client_id, request } => {
                let put = match &request {
                    RepoRequest::Put { target, size } => Some((
                        match target {
                            PutTarget::Pack(id) => TransferObject::Pack(id.to_hex()),
                            PutTarget::Snapshot(id) => TransferObject::Snapshot(id.to_hex()),
                        },
                        *size,
                    )),
                    _ => None,
                };
                let answer = match self.authorize(client_id, &request).await {
                    Ok(()) => {
                        self.repo
                            .request(
                                &self.shared.repo,
                                &self.shared.config.prune_options(),
                                client_id,
                                request,
                            )
                            .await
                    }
                    Err(refusal) => Err(refusal),
                };
                if let (Some((object, size)), Ok(RepoAnswer::PutReady)) = (put, &answer) {
                    self.shared.live.transfer_began(
                        self.live_put(),
                        client_id.to_hex(),
                        object,
                        Some(size),
                    );
                }
                session.handle_repository(now(), answer)
            }
            ServerEffect::WritePut { data } => {
                let len = data.len();
                let result = self.repo.write(data).await;
                if result.is_ok() {
                    self.shared.stats.add_bytes_received(len);
                    self.shared.live.transfer_received(self.live_put(), len);
                    self.summary.received(len);
                }
                session.handle_storage(now(), result)
            }
            ServerEffect::FinishPut => {
                let answer = self.repo.finish(&self.shared.repo).await;
                self.shared.live.transfer_ended(self.live_put());
                session.handle_repository(now(), answer)
            }
            ServerEffect::AbortPut => {
                self.repo.abort(&self.shared.repo).await;
                self.shared.live.transfer_ended(self.live_put());
                Ok(())
            }
            other => {
                tracing::error!(?other, "v4 effect not supported by this server");
                Err(V4Error::ApiMisuse("unsupported effect"))
            }
        }
    }

    /// The connection ended: what an open upload received is made durable and recorded, so
    /// the client resumes from there (every byte of it was authenticated).
    pub(crate) async fn finish_connection(&mut self) {
        self.version = None;
        self.repo.abort(&self.shared.repo).await;
        let Some(mut open) = self.upload.take() else {
            return;
        };
        if let Err(err) = open.settle_checkpoint().await {
            tracing::warn!(reason = %err.reason, "the last checkpoint failed");
        }
        match open.partial.sync().await {
            Ok(len) => {
                if let Err(err) = self.shared.catalog.v4_checkpoint(open.row, len).await {
                    tracing::warn!(%err, "cannot record the final checkpoint");
                }
                tracing::info!(
                    offset = len,
                    "v4 upload interrupted; resumable from the last durable offset"
                );
            }
            Err(err) => tracing::warn!(%err, "cannot make the interrupted upload durable"),
        }
        self.shared.v4.release(open.client, &open.name);
        self.shared.stats.transfer_ended(false);
        self.shared.live.transfer_ended(self.live_transfer());
    }

    /// Checks the device's role for requests that delete (docs/repository.md, "Device
    /// roles"): forgetting a snapshot, removing a key object, pruning. Read from the catalog
    /// at each request, so a role the operator changed applies to connections already open.
    async fn authorize(&self, client: ClientId, request: &RepoRequest) -> Result<(), Refusal> {
        let action = match request {
            RepoRequest::Forget { .. } => "forget snapshots",
            RepoRequest::RemoveKey { .. } => "remove key objects",
            RepoRequest::Prune => "prune the repository",
            _ => return Ok(()),
        };
        let Some(device) = self.device else {
            return Err(Refusal::new(
                ErrorCode::INTERNAL,
                "a repository request arrived before authentication",
            ));
        };
        match self.shared.catalog.device_role(device.0).await {
            Ok(Some(DeviceRole::Manage)) => Ok(()),
            Ok(_) => {
                tracing::warn!(client = %client, action, "an append-only device was refused");
                Err(Refusal::new(
                    ErrorCode::FORBIDDEN,
                    format!(
                        "this device is append-only: it can back up and restore but not {action}; \
                         the server's operator can grant it the manage role \
                         (`cyberbackup-server devices set-role NAME manage`)"
                    ),
                ))
            }
            Err(err) => {
                tracing::error!(%err, "cannot read the device role");
                Err(Refusal::new(
                    ErrorCode::INTERNAL,
                    "the server could not check this device's role; retry later",
                ))
            }
        }
    }

    async fn authenticate(&self, key: PublicKey, request: ClientAuth) -> AuthDecision {
        let catalog = &self.shared.catalog;
        match catalog.v4_client_by_key(key.0).await {
            Ok(Some(client)) => {
                if let Err(err) = catalog.touch_client(client.id).await {
                    tracing::warn!(%err, "cannot update LastSeen");
                }
                return accepted(client.id, &client.name, false);
            }
            Ok(None) => {}
            Err(err) => return internal(&err),
        }
        let ClientAuth::Register { name, token } = request else {
            return AuthDecision::Refused(Refusal::new(
                ErrorCode::UNKNOWN_CLIENT,
                format!(
                    "the client key {} is not registered on this server; register first (a new identity), or use the identity file you registered with",
                    key.fingerprint()
                ),
            ));
        };
        if let Err(refused) = self.shared.registrations.allow(self.peer) {
            tracing::warn!(peer = %self.peer, ?refused, "v4 registration rate limit reached");
            return AuthDecision::Refused(Refusal::new(ErrorCode::RATE_LIMITED, refused.message()));
        }
        // A token given is always checked: it may enroll a new device of an existing client
        // (`enroll --client NAME`) even where registration needs none.
        let token = if token.is_empty() {
            if self.shared.config.enrollment_required {
                return AuthDecision::Refused(Refusal::new(
                    ErrorCode::ENROLLMENT_REQUIRED,
                    "this server requires an enrollment token to register; ask the operator to run `cyberbackup-server enroll` and pass the token with --enroll-token",
                ));
            }
            None
        } else {
            Some(token_hash(&token))
        };
        for _ in 0..3 {
            let mut id = [0u8; 16];
            OsRng.fill_bytes(&mut id);
            let outcome = catalog
                .register_v4_client(
                    id,
                    name.as_bytes().to_vec(),
                    key.0,
                    token,
                    self.shared.config.default_device_role,
                )
                .await;
            match outcome {
                Ok(V4RegisterOutcome::Registered) => {
                    tracing::info!(client = %ClientId(id), name = %name.to_string_lossy(), key = %key.fingerprint(), "v4 client registered");
                    return accepted(id, name.as_bytes(), true);
                }
                Ok(V4RegisterOutcome::AlreadyRegistered(client)) => {
                    return accepted(client.id, &client.name, false);
                }
                Ok(V4RegisterOutcome::DeviceAdded(client)) => {
                    tracing::info!(client = %ClientId(client.id), key = %key.fingerprint(), "v4 device added to an existing client");
                    return accepted(client.id, &client.name, true);
                }
                Ok(V4RegisterOutcome::TokenForAnotherClient { name: owner }) => {
                    return AuthDecision::Refused(Refusal::new(
                        ErrorCode::ENROLLMENT_INVALID,
                        format!(
                            "this enrollment token adds a device to the client {:?}, not {:?}; register with --name {:?}",
                            String::from_utf8_lossy(&owner),
                            name.to_string_lossy(),
                            String::from_utf8_lossy(&owner),
                        ),
                    ));
                }
                Ok(V4RegisterOutcome::NameTaken) => {
                    return AuthDecision::Refused(Refusal::new(
                        ErrorCode::NAME_TAKEN,
                        format!(
                            "the name {:?} is already registered; choose another name",
                            name.to_string_lossy()
                        ),
                    ));
                }
                Ok(V4RegisterOutcome::TokenInvalid) => {
                    return AuthDecision::Refused(Refusal::new(
                        ErrorCode::ENROLLMENT_INVALID,
                        "the enrollment token is unknown, already used or expired; ask the operator for a new one",
                    ));
                }
                Ok(V4RegisterOutcome::IdTaken) => {}
                Err(err) => return internal(&err),
            }
        }
        internal(&std::io::Error::other("random client ids kept colliding"))
    }

    async fn open_upload(
        &mut self,
        client: ClientId,
        name: &FileName,
        size: u64,
        restart: bool,
    ) -> Result<ResumePoint, Refusal> {
        let name = name.as_bytes().to_vec();
        if !self.shared.v4.claim(client, &name) {
            return Err(Refusal::new(
                ErrorCode::BUSY,
                "this file is being uploaded on another connection; retry when it finished",
            ));
        }
        let result = self.open_claimed(client, name.clone(), size, restart).await;
        if result.is_err() {
            self.shared.v4.release(client, &name);
        }
        result
    }

    async fn open_claimed(
        &mut self,
        client: ClientId,
        name: Vec<u8>,
        size: u64,
        restart: bool,
    ) -> Result<ResumePoint, Refusal> {
        let catalog = &self.shared.catalog;
        let storage = &self.shared.storage;
        let storage_refusal = |what: &str, err: &(dyn std::error::Error + 'static)| {
            if crate::storage::is_storage_full(err) {
                return storage_full(what, err);
            }
            tracing::error!(%err, "{what} failed");
            Refusal::new(
                ErrorCode::STORAGE,
                format!("the server could not {what}; retry later"),
            )
        };
        storage
            .ensure_room(self.shared.config.min_free_disk_bytes())
            .map_err(|e| storage_refusal("accept a new upload", &e))?;
        let existing = catalog
            .v4_partial(client.0, name.clone())
            .await
            .map_err(|e| storage_refusal("look up the partial upload", &e))?;
        if let Some(partial) = existing {
            if !restart && partial.size == size {
                let reopened =
                    ResumablePartial::reopen(storage, &partial.temp_path, partial.durable)
                        .await
                        .map_err(|e| storage_refusal("reopen the partial upload", &e))?;
                if let Some((file, digest)) = reopened {
                    let offset = file.len();
                    self.upload = Some(OpenUpload {
                        client,
                        name,
                        row: partial.row,
                        path_name: partial.path_name,
                        partial: file,
                        checkpointing: None,
                    });
                    self.shared.stats.transfer_started();
                    return Ok(ResumePoint { offset, digest });
                }
            }
            discard_partial(self.shared, partial.row, Some(&partial.temp_path)).await;
        }
        let path_name = Storage::relative_path(&client.0, &name).map_err(|e| {
            Refusal::new(
                ErrorCode::BAD_NAME,
                format!("the file name cannot be stored: {e}"),
            )
        })?;
        let partial = ResumablePartial::create(storage, client.0)
            .await
            .map_err(|e| storage_refusal("create the upload file", &e))?;
        let row = match catalog
            .begin_v4_upload(
                client.0,
                name.clone(),
                path_name.clone(),
                partial.relative_temp_path().to_owned(),
                size,
            )
            .await
        {
            Ok(row) => row,
            Err(err) => {
                let _ = partial.remove().await;
                return Err(storage_refusal("record the upload", &err));
            }
        };
        self.upload = Some(OpenUpload {
            client,
            name,
            row,
            path_name,
            partial,
            checkpointing: None,
        });
        self.shared.stats.transfer_started();
        Ok(ResumePoint {
            offset: 0,
            digest: ContentDigest::new(),
        })
    }

    /// Starts a checkpoint without stalling the connection: the bytes up to `offset` go to
    /// the kernel now; their `fdatasync`, then the catalog record of the offset, run in the
    /// background while later bytes arrive. Order is kept (the record only after the sync,
    /// each checkpoint after the previous one), and a failure surfaces at the next
    /// checkpoint or at the commit, which fails the upload: no offset is recorded before it
    /// is durable.
    async fn checkpoint(&mut self, offset: u64) -> Result<(), StorageFailure> {
        let open = self.upload.as_mut().ok_or_else(no_upload)?;
        open.settle_checkpoint().await?;
        let sync = open.partial.start_sync().await.map_err(failure("write"))?;
        if sync.len() != offset {
            return Err(StorageFailure {
                reason: format!("checkpoint at {offset} but {} bytes written", sync.len()),
            });
        }
        let catalog = self.shared.catalog.clone();
        let row = open.row;
        open.checkpointing = Some(tokio::spawn(async move {
            sync.wait().await.map_err(failure("fsync"))?;
            catalog
                .v4_checkpoint(row, offset)
                .await
                .map_err(failure("record checkpoint"))
        }));
        Ok(())
    }

    async fn finish_upload(
        &mut self,
        size: u64,
        sha256: [u8; 32],
        cksum: u32,
    ) -> Result<u32, StorageFailure> {
        let mut open = self.upload.take().ok_or_else(no_upload)?;
        let result = self.commit(&mut open, size, sha256, cksum).await;
        self.shared.v4.release(open.client, &open.name);
        self.shared.stats.transfer_ended(result.is_ok());
        match result {
            Ok(version) => Ok(version),
            Err(CommitError::BeforeIntent(err)) => {
                tracing::error!(reason = %err.reason, row = %open.row, "v4 commit failed; the upload is discarded");
                if let Err(err) = self.shared.catalog.discard_file(open.row).await {
                    tracing::warn!(%err, "cannot mark the failed upload discarded");
                }
                let _ = open.partial.remove().await;
                Err(err)
            }
            // After the intent was recorded, the disk decided (see `commit`): nothing to undo.
            Err(CommitError::AfterIntent(err)) => Err(err),
        }
    }

    async fn commit(
        &self,
        open: &mut OpenUpload,
        size: u64,
        sha256: [u8; 32],
        cksum: u32,
    ) -> Result<u32, CommitError> {
        let before = CommitError::BeforeIntent;
        let catalog = &self.shared.catalog;
        open.settle_checkpoint().await.map_err(before)?;
        let len = open
            .partial
            .sync()
            .await
            .map_err(failure("fsync"))
            .map_err(before)?;
        if len != size {
            return Err(before(StorageFailure {
                reason: format!("stored {len} bytes, the upload announced {size}"),
            }));
        }
        catalog
            .mark_received(
                open.row,
                ReceivedFile {
                    size,
                    ciphertext_size: size,
                    cksum,
                    sha256,
                },
            )
            .await
            .map_err(failure("record received file"))
            .map_err(before)?;
        let keep = self.shared.config.keep_versions.max(1);
        let previous = if keep > 1 {
            catalog
                .current_version(open.client.0, open.name.clone())
                .await
                .map_err(failure("look up current version"))
                .map_err(before)?
                .map(|(_, version)| version)
        } else {
            None
        };
        catalog
            .begin_commit(open.row, keep)
            .await
            .map_err(failure("record commit intent"))
            .map_err(before)?;
        let installed = match self
            .shared
            .storage
            .install(open.partial.relative_temp_path(), &open.path_name, previous)
            .await
        {
            Ok(_) => catalog
                .commit_file(open.row, keep)
                .await
                .map_err(|err| format!("mark verified: {err}")),
            Err(err) => Err(format!("rename into place: {err}")),
        };
        let result = match installed {
            Ok(result) => result,
            Err(err) => return self.reconcile(open, sha256, keep, &err).await,
        };
        for old in result.superseded {
            if let Err(err) = self.shared.storage.remove(&old.path_name).await {
                tracing::warn!(%err, path = %old.path_name, "cannot delete superseded version");
            }
        }
        if let Err(err) = catalog.v4_upload_done(open.row).await {
            tracing::warn!(%err, "cannot clear the upload's resume record");
        }
        tracing::debug!(path = %result.path_name, version = result.version, "v4 file verified and committed");
        Ok(result.version)
    }

    /// A commit failed after its intent was recorded: the rename may or may not have taken
    /// effect, so the disk decides (as for v3) instead of discarding a file that may already
    /// have replaced the previous version.
    async fn reconcile(
        &self,
        open: &OpenUpload,
        sha256: [u8; 32],
        keep: u32,
        err: &str,
    ) -> Result<u32, CommitError> {
        tracing::error!(%err, row = %open.row, "v4 commit did not complete; reconciling");
        let committing = CommittingFile {
            row: open.row,
            client_id: open.client.0,
            file_name: open.name.clone(),
            path_name: open.path_name.clone(),
            temp_path: Some(open.partial.relative_temp_path().to_owned()),
            sha256: Some(sha256.to_vec()),
            keep_versions: keep,
        };
        let outcome =
            maintenance::reconcile_commit(&self.shared.catalog, &self.shared.storage, committing)
                .await;
        let after = |reason: String| CommitError::AfterIntent(StorageFailure { reason });
        match outcome {
            Ok(CommitOutcome::Finished) => self
                .shared
                .catalog
                .current_version(open.client.0, open.name.clone())
                .await
                .map_err(|err| after(format!("look up committed version: {err}")))?
                .map(|(_, version)| version)
                .ok_or_else(|| after("the committed version is not in the catalog".to_owned())),
            Ok(CommitOutcome::RolledBack) => Err(after(format!(
                "commit of row {} failed and was rolled back",
                open.row
            ))),
            Err(err) => Err(after(format!(
                "reconcile commit (left for maintenance): {err}"
            ))),
        }
    }

    async fn discard_upload(&mut self) {
        let Some(mut open) = self.upload.take() else {
            return;
        };
        // A checkpoint still running would record its offset after the discard.
        let _failed_checkpoint_is_moot = open.settle_checkpoint().await;
        let temp = open.partial.relative_temp_path().to_owned();
        drop(open.partial);
        discard_partial(self.shared, open.row, Some(&temp)).await;
        self.shared.v4.release(open.client, &open.name);
        self.shared.stats.transfer_ended(false);
    }

    async fn list(&self, client: ClientId) -> Result<Vec<VersionRecord>, StorageFailure> {
        let versions = self
            .shared
            .catalog
            .v4_versions(client.0)
            .await
            .map_err(failure("list versions"))?;
        Ok(versions.into_iter().filter_map(record).collect())
    }

    async fn open_version(
        &mut self,
        client: ClientId,
        name: &FileName,
        version: Option<u32>,
    ) -> Result<Option<VersionRecord>, Refusal> {
        let found = self
            .shared
            .catalog
            .v4_version(client.0, name.as_bytes().to_vec(), version)
            .await
            .map_err(|e| {
                tracing::error!(%e, "version lookup failed");
                Refusal::new(
                    ErrorCode::STORAGE,
                    "the server could not look up the file; retry later",
                )
            })?;
        let Some(found) = found else {
            return Ok(None);
        };
        let unreadable = |err: &dyn std::fmt::Display| {
            tracing::error!(%err, path = %found.path_name, "cannot open stored version");
            Refusal::new(
                ErrorCode::STORAGE,
                "the stored file cannot be read; tell the server operator",
            )
        };
        let path = self
            .shared
            .storage
            .resolve(&found.path_name)
            .map_err(|e| unreadable(&e))?;
        let file = tokio::task::spawn_blocking(move || File::open(path))
            .await
            .map_err(|e| unreadable(&e))?
            .map_err(|e| unreadable(&e))?;
        self.version = Some(Arc::new(file));
        Ok(record(found))
    }

    async fn read_version(&self, offset: u64, max: usize) -> Result<Bytes, StorageFailure> {
        let file = self.version.clone().ok_or_else(|| StorageFailure {
            reason: "no version is open".into(),
        })?;
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; max];
            let mut filled = 0;
            while filled < max {
                let Some(rest) = buf.get_mut(filled..) else {
                    break;
                };
                let n = file.read_at(rest, offset + filled as u64)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            Ok::<_, std::io::Error>(Bytes::from(buf))
        })
        .await
        .map_err(failure("read task"))?
        .map_err(failure("read stored version"))
    }
}

async fn discard_partial(shared: &Shared, row: FileRowId, temp: Option<&str>) {
    if let Some(temp) = temp
        && let Err(err) = shared.storage.remove(temp).await
    {
        tracing::warn!(%err, "cannot remove the partial upload");
    }
    if let Err(err) = shared.catalog.discard_file(row).await {
        tracing::warn!(%err, "cannot mark the partial upload discarded");
    }
    if let Err(err) = shared.catalog.v4_upload_done(row).await {
        tracing::warn!(%err, "cannot clear the resume record");
    }
}

fn record(version: V4Version) -> Option<VersionRecord> {
    let name = FileName::validate(NameField::new(Bytes::from(version.name)).ok()?).ok()?;
    Some(VersionRecord {
        name,
        version: version.version,
        size: version.size,
        created_unix_secs: version.created_unix_secs,
        cksum: version.cksum,
        sha256: version.sha256,
    })
}

fn accepted(id: [u8; 16], name: &[u8], registered: bool) -> AuthDecision {
    AuthDecision::Accepted {
        client_id: ClientId(id),
        name: NameField::decode(name),
        registered,
    }
}

/// The refusal of an operation that failed because the disk is full.
fn storage_full(what: &str, err: &(dyn std::error::Error + 'static)) -> Refusal {
    tracing::warn!(%err, "server storage is full: cannot {what}");
    Refusal::new(
        ErrorCode::STORAGE,
        format!(
            "server storage is full: the server cannot {what}; ask its operator to free disk space, then retry"
        ),
    )
}

fn internal(err: &(dyn std::error::Error + 'static)) -> AuthDecision {
    if crate::storage::is_storage_full(err) {
        return AuthDecision::Refused(storage_full("register or check your key", err));
    }
    tracing::error!(%err, "v4 authentication failed");
    AuthDecision::Refused(Refusal::new(
        ErrorCode::INTERNAL,
        "the server could not check your key; retry later",
    ))
}

fn no_upload() -> StorageFailure {
    StorageFailure {
        reason: "no upload is open".into(),
    }
}

fn failure<E: std::error::Error + 'static>(what: &'static str) -> impl Fn(E) -> StorageFailure {
    move |err| {
        if crate::storage::is_storage_full(&err) {
            tracing::warn!(%err, "server storage is full: {what} failed");
            return StorageFailure::full();
        }
        tracing::error!(%err, "{what} failed");
        StorageFailure {
            reason: format!("{what}: {err}"),
        }
    }
}

/// Label of an effect for the latency histogram (never formats the effect's data); distinct
/// from the v3 labels.
fn effect_kind(effect: &ServerEffect) -> &'static str {
    match effect {
        ServerEffect::Authenticate { .. } => "authenticate",
        ServerEffect::OpenUpload { .. } => "open_upload",
        ServerEffect::WriteUpload { .. } => "write_upload",
        ServerEffect::Checkpoint { .. } => "checkpoint",
        ServerEffect::FinishUpload { .. } => "finish_upload",
        ServerEffect::DiscardUpload => "discard_upload",
        ServerEffect::ListVersions { .. } => "list_versions",
        ServerEffect::OpenVersion { .. } => "open_version",
        ServerEffect::ReadVersion { .. } => "read_version",
        ServerEffect::CloseVersion => "close_version",
        ServerEffect::Repository { .. } => "repository",
        ServerEffect::WritePut { .. } => "write_put",
        ServerEffect::FinishPut => "finish_put",
        ServerEffect::AbortPut => "abort_put",
        _ => "other",
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
