//! [`StagedPut`]: one object arriving from a client, written to a private staging file and
//! hashed as it comes. Nothing of it is visible to anyone until [`super::RepoStore::finish_put`]
//! has checked it and the backend has stored it. The file is created with `O_EXCL`, mode
//! 0600, in the store's 0700 staging directory, and removed when the put is finished,
//! aborted or dropped (a dropped connection); start-up recovery removes what a crash left.

use std::fmt;
use std::fs::File;
use std::io::SeekFrom;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use cyberbackup_core::names::ClientId;
use cyberbackup_core::repo::PackHasher;
use futures_util::stream::BoxStream;
use tempfile::TempPath;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::{ObjectClass, RepoStoreError};

/// Prefix of staging file names.
pub(super) const STAGING_PREFIX: &str = "put-";

/// An object being received: write its bytes in order, then hand it to
/// [`super::RepoStore::finish_put`] (or [`super::RepoStore::abort_put`], or drop it).
pub struct StagedPut {
    pub(super) client: ClientId,
    pub(super) class: ObjectClass,
    pub(super) id: [u8; 32],
    pub(super) size: u64,
    written: u64,
    hasher: PackHasher,
    file: tokio::fs::File,
    path: TempPath,
    /// The bytes this put holds against the client's hard quota until it is dropped.
    pub(super) reservation: Option<super::quota::QuotaReservation>,
}

impl fmt::Debug for StagedPut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StagedPut")
            .field("class", &self.class)
            .field("id", &hex::encode(self.id))
            .field("size", &self.size)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

/// A staged object whose length matched: its file (read it with [`read_at`]), and the plain
/// BLAKE3 hash of its bytes, computed while they were written.
pub(super) struct Received {
    pub(super) file: File,
    pub(super) path: TempPath,
    pub(super) hash: [u8; 32],
    /// Carried on from the [`StagedPut`]: released once the object is stored and indexed
    /// ([`Self::release_quota`]), or when this is dropped.
    reservation: Option<super::quota::QuotaReservation>,
}

impl StagedPut {
    /// Creates the staging file for an object of `size` bytes.
    pub(super) async fn create(
        staging_dir: &Path,
        client: ClientId,
        class: ObjectClass,
        id: [u8; 32],
        size: u64,
    ) -> Result<Self, RepoStoreError> {
        let dir = staging_dir.to_path_buf();
        let (file, path) = tokio::task::spawn_blocking(move || {
            // tempfile opens with O_CREAT | O_EXCL and mode 0600.
            tempfile::Builder::new()
                .prefix(STAGING_PREFIX)
                .tempfile_in(&dir)
                .map(tempfile::NamedTempFile::into_parts)
                .map_err(RepoStoreError::io("create staging file in", &dir))
        })
        .await
        .map_err(|e| RepoStoreError::task(staging_dir, &e))??;
        Ok(Self {
            client,
            class,
            id,
            size,
            written: 0,
            hasher: PackHasher::new(),
            file: tokio::fs::File::from_std(file),
            path,
            reservation: None,
        })
    }

    /// Appends the next bytes of the object.
    ///
    /// # Errors
    /// [`RepoStoreError::BadObject`] when the bytes go past the announced size;
    /// [`RepoStoreError::Io`] when the staging file cannot be written.
    pub async fn write(&mut self, data: Bytes) -> Result<(), RepoStoreError> {
        let after = self.written.saturating_add(data.len() as u64);
        if after > self.size {
            return Err(RepoStoreError::BadObject(format!(
                "more bytes arrived than the {} announced",
                self.size
            )));
        }
        self.hasher.update(&data);
        self.file
            .write_all(&data)
            .await
            .map_err(RepoStoreError::io("write staging file", &self.path))?;
        self.written = after;
        Ok(())
    }

    /// Bytes written so far.
    #[must_use]
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Ends the writing: checks the length and returns the file and its hash.
    pub(super) async fn received(self) -> Result<Received, RepoStoreError> {
        if self.written != self.size {
            return Err(RepoStoreError::BadObject(format!(
                "{} bytes arrived, {} were announced",
                self.written, self.size
            )));
        }
        let mut file = self.file;
        file.flush()
            .await
            .map_err(RepoStoreError::io("write staging file", &self.path))?;
        Ok(Received {
            file: file.into_std().await,
            path: self.path,
            hash: *self.hasher.finalize().as_bytes(),
            reservation: self.reservation,
        })
    }

    /// Removes the staging file.
    pub(super) async fn discard(self) {
        drop(self.file);
        let path = self.path;
        // One unlink; a leftover is removed by start-up recovery.
        let _ = tokio::task::spawn_blocking(move || path.close()).await;
    }
}

impl Received {
    /// Releases the quota reservation (the object is stored and counted now).
    pub(super) async fn release_quota(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            reservation.release().await;
        }
    }

    /// Reads `len` bytes at `offset`, off the async runtime.
    pub(super) async fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>, RepoStoreError> {
        let file = self.clone_file()?;
        let path = self.path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let len = usize::try_from(len).map_err(|_| {
                RepoStoreError::BadObject("a length in the object does not fit in memory".into())
            })?;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)
                .map_err(RepoStoreError::io("read staging file", &path))?;
            Ok(buf)
        })
        .await
        .map_err(|e| RepoStoreError::task(&self.path, &e))?
    }

    /// The whole file as a stream of `piece`-byte pieces (a backend put body).
    pub(super) async fn stream(
        &self,
        piece: usize,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, RepoStoreError> {
        let mut file = tokio::fs::File::from_std(self.clone_file()?);
        file.seek(SeekFrom::Start(0))
            .await
            .map_err(RepoStoreError::io("seek staging file", &self.path))?;
        Ok(Box::pin(ReaderStream::with_capacity(file, piece)))
    }

    fn clone_file(&self) -> Result<File, RepoStoreError> {
        self.file
            .try_clone()
            .map_err(RepoStoreError::io("reopen staging file", &self.path))
    }
}
