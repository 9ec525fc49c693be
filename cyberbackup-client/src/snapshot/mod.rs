//! The snapshot engine (issue 14, client side): back up directory trees into the client's
//! repository, restore and browse them, all behind the narrow [`RepoRemote`] trait (the v4
//! connection implements it; tests use an in-memory one).
//!
//! ```text
//! backup:  walk (thread) ─▶ Chunker ─▶ BlobSealer::id ─▶ [bounded channel] ─▶ dedup set + HAVE batches
//!          ─▶ seal on all cores ─▶ PackWriter ─▶ put_pack ─▶ RefListBuilder ─▶ Snapshot::seal ─▶ put_snapshot
//! restore: snapshot ─▶ trees ─▶ get_blob ─▶ BlobOpener::open (tag + keyed ID) ─▶ temp file ─▶ fsync ─▶ rename
//! ```
//!
//! [`Repository`] is the library API the CLI and the examples call.

mod backup;
mod browse;
pub mod cli;
mod exclude;
mod export;
mod export_zip;
mod forget;
mod keys;
mod remote;
mod restore;
mod tree_prefetch;
mod walk;

use bytes::Bytes;
use cyberbackup_core::repo::{
    BlobId, BlobKind, BlobOpener, RepoError, Snapshot, SnapshotEnvelope, SnapshotId, Tree,
};

pub use backup::{BackupEvent, BackupObserver, BackupOptions, BackupSummary, NoObserver};
pub use browse::{
    CheckReport, DamagedPath, DiffEntry, DiffKind, DiffPage, DirListing, FindMatch, LsEntry,
    ReadData, SearchHits, SnapshotInfo, SnapshotJson,
};
pub use exclude::{ExcludeOptions, Excluder};
pub use export::{ArchiveFormat, ExportSummary};
pub use forget::{ForgetEntry, ForgetGroup, ForgetPolicy, GroupBy, parse_local_time};
pub use keys::{
    DEVICE_KEY_FILE, KeyInfo, KeyOptions, NEW_REPO_PACK_TARGET_BYTES, OpenRepository, OpenedBy,
    add_passphrase_key, change_passphrase, device_key_path, key_id, list_keys, open_or_create,
    remove_key,
};
pub use remote::{MAX_HAVE_BATCH, RemoteRepo, RepoRemote, SnapshotListing};
pub use restore::{RestoreFilter, RestoreProgress, RestoreSummary};

use crate::v4::V4ClientError;

/// Exit code of a backup that finished but skipped unreadable files (restic's convention).
pub const EXIT_PARTIAL: u8 = 3;

/// An open repository on one connection: what the CLI's snapshot commands call.
pub struct Repository<R> {
    remote: R,
    open: OpenRepository,
    opener: BlobOpener,
}

impl<R> std::fmt::Debug for Repository<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl<R: RepoRemote> Repository<R> {
    /// Opens (or, on first use, creates) the client's repository on `remote`.
    ///
    /// # Errors
    /// As [`open_or_create`].
    pub async fn open(mut remote: R, options: &KeyOptions) -> Result<Self, V4ClientError> {
        let open = open_or_create(&mut remote, options).await?;
        let opener = BlobOpener::new(&open.keys, &open.config)
            .map_err(|source| repo_error("cannot start the blob opener", source))?;
        Ok(Self {
            remote,
            open,
            opener,
        })
    }

    /// How the repository was opened, its config and key objects (and a warning to show).
    #[must_use]
    pub fn opened(&self) -> &OpenRepository {
        &self.open
    }

    /// The rows of `key list`.
    #[must_use]
    pub fn key_list(&self) -> Vec<KeyInfo> {
        list_keys(&self.open)
    }

    /// `key add` / `key passwd`: adds a passphrase key object (see [`add_passphrase_key`]).
    ///
    /// # Errors
    /// As [`add_passphrase_key`].
    pub async fn add_passphrase_key(
        &mut self,
        passphrase: &[u8],
        label: &[u8],
        kdf: cyberbackup_core::repo::KdfParams,
    ) -> Result<(), V4ClientError> {
        add_passphrase_key(&mut self.remote, &mut self.open, passphrase, label, kdf).await
    }

    /// `key passwd`: replaces the passphrase (see [`change_passphrase`]).
    ///
    /// # Errors
    /// As [`change_passphrase`].
    pub async fn change_passphrase(
        &mut self,
        current: Option<&[u8]>,
        new: &[u8],
        kdf: cyberbackup_core::repo::KdfParams,
    ) -> Result<usize, V4ClientError> {
        change_passphrase(&mut self.remote, &mut self.open, current, new, kdf).await
    }

    /// `key remove`: removes a key object by ID (see [`remove_key`]).
    ///
    /// # Errors
    /// As [`remove_key`].
    pub async fn remove_key(&mut self, id: &str) -> Result<KeyInfo, V4ClientError> {
        remove_key(&mut self.remote, &mut self.open, id).await
    }

    /// `forget --prune`: has the server prune the repository now.
    ///
    /// # Errors
    /// The remote's errors (`FORBIDDEN` for an append-only device).
    pub async fn prune(
        &mut self,
    ) -> Result<cyberbackup_core::v4::repository::RepoPruneReport, V4ClientError> {
        self.remote.prune().await
    }

    /// The connection, for operations outside the engine.
    pub fn remote_mut(&mut self) -> &mut R {
        &mut self.remote
    }

    /// Gives the connection back.
    #[must_use]
    pub fn into_remote(self) -> R {
        self.remote
    }

    /// Fetches and opens one blob (seal, size limit and keyed ID checked).
    async fn blob(&mut self, kind: BlobKind, id: BlobId) -> Result<Vec<u8>, BlobError> {
        let sealed = self.remote.get_blob(id).await.map_err(BlobError::Remote)?;
        self.opener
            .open(kind, &id, &sealed)
            .map_err(BlobError::Verify)
    }

    /// Fetches, opens and decodes one tree.
    async fn tree(&mut self, id: BlobId) -> Result<Tree, V4ClientError> {
        let context = || format!("tree {}", short_hex(id.as_bytes()));
        let bytes = self
            .blob(BlobKind::Tree, id)
            .await
            .map_err(|err| err.into_client(context()))?;
        Tree::decode(&bytes).map_err(|source| repo_error(context(), source))
    }

    /// Fetches, opens and decodes several trees with their requests in flight together: for
    /// each, the tree and its sealed size, or `None` when it cannot be had or does not verify.
    async fn trees(&mut self, ids: &[BlobId]) -> Result<Vec<Option<(Tree, usize)>>, V4ClientError> {
        let sealed = self.remote.get_blobs(ids).await?;
        Ok(ids
            .iter()
            .zip(sealed)
            .map(|(id, sealed)| {
                let bytes = self.opener.open(BlobKind::Tree, id, &sealed).ok()?;
                Some((Tree::decode(&bytes).ok()?, sealed.len()))
            })
            .collect())
    }

    /// Fetches and opens one snapshot object.
    async fn snapshot(
        &mut self,
        id: SnapshotId,
    ) -> Result<(SnapshotEnvelope, Snapshot), V4ClientError> {
        let bytes: Bytes = self.remote.get_snapshot(id).await?;
        let (envelope, snapshot) = Snapshot::open(&bytes, &self.open.keys).map_err(|source| {
            repo_error(format!("snapshot {}", short_hex(id.as_bytes())), source)
        })?;
        if SnapshotEnvelope::id_of(&bytes) != id {
            return Err(repo_error(
                format!("snapshot {}", short_hex(id.as_bytes())),
                RepoError::Authentication {
                    object: cyberbackup_core::repo::ObjectKind::Snapshot,
                },
            ));
        }
        Ok((envelope, snapshot))
    }
}

/// Why a blob could not be had: the server failed, or the bytes did not verify.
#[derive(Debug)]
enum BlobError {
    Remote(V4ClientError),
    Verify(RepoError),
}

impl BlobError {
    fn into_client(self, context: String) -> V4ClientError {
        match self {
            Self::Remote(err) => err,
            Self::Verify(source) => repo_error(context, source),
        }
    }
}

/// The first 8 hex digits of an ID (restic's short ID).
fn short_hex(bytes: &[u8; 32]) -> String {
    hex::encode(&bytes[..4])
}

/// This machine's host name as bytes (empty when unknown).
/// This machine's host name, as snapshots record it.
#[must_use]
pub fn host_name() -> Vec<u8> {
    rustix::system::uname().nodename().to_bytes().to_vec()
}

/// The user running the client (`$USER`, else the numeric uid).
fn user_name() -> Vec<u8> {
    std::env::var_os("USER")
        .map(|user| std::os::unix::ffi::OsStrExt::as_bytes(user.as_os_str()).to_vec())
        .unwrap_or_else(|| rustix::process::getuid().as_raw().to_string().into_bytes())
}

/// A [`V4ClientError::Repo`] about `context`.
fn repo_error(context: impl Into<String>, source: RepoError) -> V4ClientError {
    V4ClientError::Repo {
        context: context.into(),
        source: Box::new(source),
    }
}

/// A [`V4ClientError::Corrupt`] for the file at `path` in a snapshot.
fn corrupt(path: &std::path::Path, source: RepoError) -> V4ClientError {
    V4ClientError::Corrupt {
        path: path.display().to_string(),
        source: Box::new(source),
    }
}
