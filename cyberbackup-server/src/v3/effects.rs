//! Carries out the effects of one connection's `ServerSession` against the catalog and the
//! file storage, and answers the session. Every failure becomes a `StorageFailure` (the
//! session answers 1607) and is logged here with its cause.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use cyberbackup_core::names::{ClientId, FileName, NameField};
use cyberbackup_core::v3::{
    RegistrationOutcome, ServerEffect, ServerSession, SessionError, StorageFailure, StoredClient,
    TransferId,
};
use rand_core::CryptoRngCore;

use crate::catalog::{CommittingFile, FileRowId, KeyOutcome, ReceivedFile, RegisterOutcome};
use crate::maintenance::{self, CommitOutcome};
use crate::shared::Shared;
use crate::storage::PartialFile;
use crate::telemetry::ConnectionSummary;

/// Protocol version recorded for clients registered over v3.
const PROTOCOL_V3: u8 = 3;

/// A file being received on this connection.
#[derive(Debug)]
struct OpenTransfer {
    file: PartialFile,
    row: FileRowId,
    client: ClientId,
    name: Vec<u8>,
    /// SHA-256 of the content, once finished.
    sha256: Option<[u8; 32]>,
}

/// Per-connection effect executor.
#[derive(Debug)]
pub(crate) struct Effects<'a> {
    shared: &'a Shared,
    peer: IpAddr,
    open: BTreeMap<TransferId, OpenTransfer>,
    summary: ConnectionSummary,
}

impl<'a> Effects<'a> {
    pub(crate) fn new(shared: &'a Shared, peer: IpAddr) -> Self {
        Self {
            shared,
            peer,
            open: BTreeMap::new(),
            summary: ConnectionSummary::new(PROTOCOL_V3),
        }
    }

    /// What this connection stored so far.
    pub(crate) fn summary(&self) -> &ConnectionSummary {
        &self.summary
    }

    /// Performs `effect` and reports its outcome to `session`.
    pub(crate) async fn run<R: CryptoRngCore>(
        &mut self,
        session: &mut ServerSession<R>,
        effect: ServerEffect,
    ) -> Result<(), SessionError> {
        match effect {
            ServerEffect::RegisterClient { client_id, name } => {
                let outcome = self.register(client_id, &name).await;
                session.handle_registration(now(), outcome)
            }
            ServerEffect::LookupClient { client_id } => {
                let found = self.lookup(client_id).await;
                session.handle_client_lookup(now(), found)
            }
            ServerEffect::StorePublicKey {
                client_id,
                public_key,
            } => {
                let result = self.store_key(client_id, public_key.to_vec()).await;
                session.handle_storage(now(), result)
            }
            ServerEffect::BeginFile {
                transfer,
                client_id,
                file_name,
            } => {
                let result = self.begin(transfer, client_id, &file_name).await;
                session.handle_storage(now(), result)
            }
            ServerEffect::AppendFile { transfer, data } => {
                let result = match self.open.get_mut(&transfer) {
                    Some(open) => open.file.append(&data).await.map_err(failure("write")),
                    None => Err(missing(transfer)),
                };
                if result.is_ok() {
                    self.shared.stats.add_bytes_received(data.len());
                    self.summary.received(data.len());
                }
                session.handle_storage(now(), result)
            }
            ServerEffect::FinishFile {
                transfer,
                plaintext_len,
                ciphertext_len,
                cksum,
            } => {
                let result = self
                    .finish(transfer, plaintext_len, ciphertext_len, cksum)
                    .await;
                session.handle_storage(now(), result)
            }
            ServerEffect::CommitFile { transfer } => {
                let result = self.commit(transfer).await;
                if result.is_ok() {
                    self.summary.committed();
                }
                session.handle_storage(now(), result)
            }
            ServerEffect::AbortFile { transfer } => {
                self.abort(transfer).await;
                Ok(())
            }
            other => {
                tracing::error!(?other, "effect not supported by this server");
                Err(SessionError::ApiMisuse("unsupported effect"))
            }
        }
    }

    /// Counts a file of `client` that failed to decrypt against its budget
    /// (`v3_failed_files_per_hour`).
    pub(crate) fn decrypt_failed(&self, client: ClientId) {
        self.shared.decrypt_failures.record(client, now());
    }

    /// Discards every transfer still open (the connection ended).
    pub(crate) async fn abort_all(&mut self) {
        let open: Vec<TransferId> = self.open.keys().copied().collect();
        for transfer in open {
            self.abort(transfer).await;
        }
    }

    async fn register(&self, client_id: ClientId, name: &NameField) -> RegistrationOutcome {
        if let Err(refused) = self.shared.registrations.allow(self.peer) {
            tracing::warn!(peer = %self.peer, ?refused, "registration rate limit reached");
            return RegistrationOutcome::Failed(StorageFailure {
                reason: refused.message().to_owned(),
            });
        }
        match self
            .shared
            .catalog
            .register_or_replace_keyless(client_id.0, name.as_bytes().to_vec(), PROTOCOL_V3)
            .await
        {
            Ok(RegisterOutcome::Registered) => {
                tracing::info!(client = %client_id, name = %name.to_string_lossy(), "client registered");
                RegistrationOutcome::Registered
            }
            Ok(RegisterOutcome::Replaced { previous }) => {
                tracing::info!(
                    client = %client_id,
                    previous = %ClientId(previous),
                    name = %name.to_string_lossy(),
                    "client registered, replacing a registration that never stored a key"
                );
                RegistrationOutcome::Registered
            }
            Ok(RegisterOutcome::NameTaken) => RegistrationOutcome::NameTaken,
            Ok(RegisterOutcome::IdTaken) => RegistrationOutcome::Failed(StorageFailure {
                reason: "random client id collided with an existing one".to_owned(),
            }),
            Err(err) => RegistrationOutcome::Failed(failure("register client")(err)),
        }
    }

    async fn lookup(&self, client_id: ClientId) -> Option<StoredClient> {
        match self.shared.catalog.client_by_id(client_id.0).await {
            Ok(Some(record)) if record.protocol == Some(crate::catalog::v4::PROTOCOL_V4) => {
                // Downgrade protection: an identity registered over v4 never uses v3.
                tracing::warn!(client = %client_id, "v3 reconnect refused: this client registered over protocol v4");
                None
            }
            Ok(Some(record)) => {
                if let Err(err) = self.shared.catalog.touch_client(client_id.0).await {
                    tracing::warn!(%err, "cannot update LastSeen");
                }
                Some(StoredClient {
                    client_id,
                    name: record.name.into(),
                    public_key: record.public_key.map(Into::into),
                })
            }
            Ok(None) => None,
            Err(err) => {
                tracing::error!(%err, "client lookup failed");
                None
            }
        }
    }

    async fn store_key(&self, client_id: ClientId, der: Vec<u8>) -> Result<(), StorageFailure> {
        match self
            .shared
            .catalog
            .store_first_public_key(client_id.0, der)
            .await
        {
            Ok(KeyOutcome::Stored) => Ok(()),
            Ok(KeyOutcome::UnknownClient) => Err(StorageFailure {
                reason: format!("client {client_id} is not in the catalog"),
            }),
            Ok(KeyOutcome::KeyAlreadySet) => {
                // The connection's span already names the client.
                tracing::warn!("1026 refused: the client already has a different public key");
                Err(StorageFailure {
                    reason: format!(
                        "client {client_id} already has a public key; a different key is refused"
                    ),
                })
            }
            Err(err) => Err(failure("store public key")(err)),
        }
    }

    async fn begin(
        &mut self,
        transfer: TransferId,
        client_id: ClientId,
        file_name: &FileName,
    ) -> Result<(), StorageFailure> {
        if self.shared.decrypt_failures.is_exhausted(client_id, now()) {
            tracing::warn!(client = %client_id, "file refused: too many files of this client failed to decrypt in the last hour");
            return Err(StorageFailure {
                reason: format!(
                    "client {client_id} sent too many files that failed to decrypt; refused for up to an hour"
                ),
            });
        }
        let name = file_name.as_bytes().to_vec();
        let storage = &self.shared.storage;
        storage
            .ensure_room(self.shared.config.min_free_disk_bytes())
            .map_err(failure("accept a new file"))?;
        let file = storage
            .create_partial(client_id.0, &name)
            .await
            .map_err(failure("create temporary file"))?;
        let row = self
            .shared
            .catalog
            .begin_file(
                client_id.0,
                name.clone(),
                file.relative_path().to_owned(),
                Some(file.relative_temp_path().to_owned()),
            )
            .await
            .map_err(failure("record transfer"))?
            .0;
        self.shared.stats.transfer_started();
        self.open.insert(
            transfer,
            OpenTransfer {
                file,
                row,
                client: client_id,
                name,
                sha256: None,
            },
        );
        Ok(())
    }

    async fn finish(
        &mut self,
        transfer: TransferId,
        plaintext_len: u64,
        ciphertext_len: u64,
        cksum: u32,
    ) -> Result<(), StorageFailure> {
        let open = self
            .open
            .get_mut(&transfer)
            .ok_or_else(|| missing(transfer))?;
        let finished = open.file.finish().await.map_err(failure("fsync"))?;
        if finished.len != plaintext_len {
            return Err(StorageFailure {
                reason: format!(
                    "stored {} bytes but the session decrypted {plaintext_len}",
                    finished.len
                ),
            });
        }
        open.sha256 = Some(finished.sha256);
        let facts = ReceivedFile {
            size: plaintext_len,
            ciphertext_size: ciphertext_len,
            cksum,
            sha256: finished.sha256,
        };
        self.shared
            .catalog
            .mark_received(open.row, facts)
            .await
            .map_err(failure("record received file"))
    }

    /// Commit protocol (crash-safe): record the intent (`committing`, with the SHA-256 already
    /// in the row), rename the temp file into place, mark the row verified. A crash or failure
    /// after the intent is resolved by [`maintenance::reconcile_commit`] from what is on disk.
    async fn commit(&mut self, transfer: TransferId) -> Result<(), StorageFailure> {
        let open = self
            .open
            .remove(&transfer)
            .ok_or_else(|| missing(transfer))?;
        let keep_versions = self.shared.config.keep_versions.max(1);
        let previous = if keep_versions > 1 {
            match self
                .shared
                .catalog
                .current_version(open.client.0, open.name.clone())
                .await
            {
                Ok(found) => found.map(|(_, version)| version),
                Err(err) => {
                    self.discard(open).await;
                    return Err(failure("look up current version")(err));
                }
            }
        } else {
            None
        };
        let row = open.row;
        if let Err(err) = self.shared.catalog.begin_commit(row, keep_versions).await {
            self.discard(open).await;
            return Err(failure("record commit intent")(err));
        }
        let committing = CommittingFile {
            row,
            client_id: open.client.0,
            file_name: open.name.clone(),
            path_name: open.file.relative_path().to_owned(),
            temp_path: Some(open.file.relative_temp_path().to_owned()),
            sha256: open.sha256.map(|sha| sha.to_vec()),
            keep_versions,
        };
        let finished = match open.file.commit(previous).await {
            Ok(_) => self
                .shared
                .catalog
                .commit_file(row, keep_versions)
                .await
                .map_err(|err| format!("mark verified: {err}")),
            Err(err) => Err(format!("rename into place: {err}")),
        };
        let result = match finished {
            Ok(result) => result,
            Err(err) => {
                // Decide from the disk what happened (the rename may have taken effect).
                tracing::error!(%err, %row, "commit did not complete; reconciling");
                let outcome = maintenance::reconcile_commit(
                    &self.shared.catalog,
                    &self.shared.storage,
                    committing,
                )
                .await;
                return match outcome {
                    Ok(CommitOutcome::Finished) => {
                        self.shared.stats.transfer_ended(true);
                        Ok(())
                    }
                    Ok(CommitOutcome::RolledBack) => {
                        self.shared.stats.transfer_ended(false);
                        Err(StorageFailure {
                            reason: format!("commit of row {row} failed and was rolled back"),
                        })
                    }
                    Err(err) => {
                        self.shared.stats.transfer_ended(false);
                        Err(failure("reconcile commit (left for maintenance)")(err))
                    }
                };
            }
        };
        for old in result.superseded {
            if let Err(err) = self.shared.storage.remove(&old.path_name).await {
                tracing::warn!(%err, path = %old.path_name, "cannot delete superseded version");
            }
        }
        self.shared.stats.transfer_ended(true);
        tracing::debug!(path = %result.path_name, version = result.version, "file verified and committed");
        Ok(())
    }

    async fn discard(&self, open: OpenTransfer) {
        if let Err(err) = open.file.abort().await {
            tracing::warn!(%err, "cannot remove temporary file");
        }
        if let Err(err) = self.shared.catalog.discard_file(open.row).await {
            tracing::warn!(%err, "cannot mark transfer discarded");
        }
        self.shared.stats.transfer_ended(false);
    }

    async fn abort(&mut self, transfer: TransferId) {
        let Some(open) = self.open.remove(&transfer) else {
            return;
        };
        self.discard(open).await;
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The failure to report for `err`; a full disk is logged as such (v3 can only answer 1607).
fn failure<E: std::error::Error + 'static>(what: &'static str) -> impl Fn(E) -> StorageFailure {
    move |err| {
        if crate::storage::is_storage_full(&err) {
            tracing::warn!(%err, "server storage is full: {what} failed");
            return StorageFailure {
                reason: format!("server storage is full: {what}: {err}"),
            };
        }
        tracing::error!(%err, "{what} failed");
        StorageFailure {
            reason: format!("{what}: {err}"),
        }
    }
}

fn missing(transfer: TransferId) -> StorageFailure {
    StorageFailure {
        reason: format!("no open file for transfer {}", transfer.0),
    }
}
