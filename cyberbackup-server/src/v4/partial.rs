//! [`ResumablePartial`]: the temp file of a v4 upload, which — unlike
//! [`PartialFile`](crate::storage::PartialFile) — survives the connection so the upload can
//! resume. It lives beside its destination as `.cb-partial-v4-…` (the storage naming, so the
//! normal maintenance removes abandoned ones), is created with `O_EXCL` and mode 0600, and is
//! made durable by [`sync`](ResumablePartial::sync) at each checkpoint.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use cyberbackup_core::v4::ContentDigest;

use crate::storage::{
    DurableSync, Storage, StorageError, SyncMode, TempWriter, create_temp_tagged, run_blocking,
};

/// Write block of one upload (one staged and one in flight at most).
const WRITE_BLOCK: usize = 512 * 1024;
/// Read size when re-hashing a resumed prefix.
const HASH_CHUNK: usize = 1024 * 1024;

/// The partial file of a resumable upload.
#[derive(Debug)]
pub struct ResumablePartial {
    relative_temp: String,
    file: TempWriter,
}

impl ResumablePartial {
    /// Creates a new empty partial file in `client`'s directory.
    ///
    /// # Errors
    /// [`StorageError::Io`] / [`StorageError::CreateDir`].
    pub async fn create(storage: &Storage, client: [u8; 16]) -> Result<Self, StorageError> {
        let dir = storage.client_dir(&client);
        let client_hex = hex::encode(client);
        let faults = storage.faults().clone();
        run_blocking(move || {
            create_private_dir(&dir)?;
            let (temp, file) =
                create_temp_tagged(&dir, "v4-").map_err(|source| StorageError::Io {
                    op: "create partial upload in",
                    path: dir.clone(),
                    source,
                })?;
            let name = temp
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(Self {
                relative_temp: format!("{client_hex}/{name}"),
                file: TempWriter::new(temp, file, WRITE_BLOCK, 0, faults),
            })
        })
        .await
    }

    /// Reopens the partial file at `relative_temp`, cuts it to its durable length `durable`
    /// (bytes after the last checkpoint may be incomplete after a crash) and re-hashes
    /// `[0, durable)`. `Ok(None)` when the file is missing or shorter than `durable`.
    ///
    /// # Errors
    /// [`StorageError::OutsideClientDir`] or [`StorageError::Io`].
    pub async fn reopen(
        storage: &Storage,
        relative_temp: &str,
        durable: u64,
    ) -> Result<Option<(Self, ContentDigest)>, StorageError> {
        let temp = storage.resolve(relative_temp)?;
        let faults = storage.faults().clone();
        let relative_temp = relative_temp.to_owned();
        run_blocking(move || {
            let io_err = |op| {
                let path = temp.clone();
                move |source| StorageError::Io { op, path, source }
            };
            let mut file = match OpenOptions::new().read(true).write(true).open(&temp) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err("open partial upload")(e)),
            };
            let len = file
                .metadata()
                .map_err(io_err("stat partial upload"))?
                .len();
            if len < durable {
                return Ok(None);
            }
            file.set_len(durable)
                .map_err(io_err("truncate partial upload"))?;
            let mut digest = ContentDigest::new();
            let mut buf = vec![0u8; HASH_CHUNK];
            file.seek(SeekFrom::Start(0)).map_err(io_err("seek"))?;
            let mut left = durable;
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let Some(chunk) = buf.get_mut(..want) else {
                    break;
                };
                file.read_exact(chunk)
                    .map_err(io_err("re-hash partial upload"))?;
                digest.update(chunk);
                left -= want as u64;
            }
            file.seek(SeekFrom::End(0)).map_err(io_err("seek"))?;
            Ok(Some((
                Self {
                    relative_temp,
                    file: TempWriter::new(temp, file, WRITE_BLOCK, durable, faults),
                },
                digest,
            )))
        })
        .await
    }

    /// The catalog's `TempPath` of this file.
    #[must_use]
    pub fn relative_temp_path(&self) -> &str {
        &self.relative_temp
    }

    /// Bytes written so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    /// Whether nothing was written.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.file.len() == 0
    }

    /// Appends `data` (staged; full blocks are written on a blocking thread while the
    /// connection goes on).
    ///
    /// # Errors
    /// [`StorageError::Io`] or [`StorageError::NotOpen`].
    pub async fn append(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.file.append(data).await
    }

    /// Flushes and fsyncs (`fdatasync`): everything written so far is durable. Returns the
    /// length.
    ///
    /// # Errors
    /// [`StorageError::Io`] or [`StorageError::NotOpen`].
    pub async fn sync(&mut self) -> Result<u64, StorageError> {
        self.file.sync(SyncMode::Data).await
    }

    /// Hands everything appended so far to the kernel and returns the sync that makes it
    /// durable, to be awaited while appends go on (a checkpoint that does not stall the
    /// connection).
    ///
    /// # Errors
    /// [`StorageError::Io`] or [`StorageError::NotOpen`].
    pub async fn start_sync(&mut self) -> Result<DurableSync, StorageError> {
        self.file.hand_over().await
    }

    /// Deletes the partial file.
    ///
    /// # Errors
    /// [`StorageError::Io`] if it exists but cannot be removed.
    pub async fn remove(mut self) -> Result<(), StorageError> {
        self.file.remove("remove partial upload").await
    }
}

fn create_private_dir(path: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StorageError::CreateDir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reopen_cuts_to_the_durable_offset_and_rehashes_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().join("data")).unwrap();
        let mut partial = ResumablePartial::create(&storage, [1; 16]).await.unwrap();
        partial.append(&[7u8; 5000]).await.unwrap();
        partial.sync().await.unwrap();
        partial.append(&[9u8; 3000]).await.unwrap();
        partial.sync().await.unwrap();
        let relative = partial.relative_temp_path().to_owned();
        drop(partial);

        let (reopened, digest) = ResumablePartial::reopen(&storage, &relative, 5000)
            .await
            .unwrap()
            .unwrap();
        let missing = ResumablePartial::reopen(&storage, &relative, 9000)
            .await
            .unwrap();

        let mut expected = ContentDigest::new();
        expected.update(&[7u8; 5000]);
        assert_eq!(reopened.len(), 5000);
        assert_eq!(digest.finalize(), expected.finalize());
        assert!(
            missing.is_none(),
            "shorter than its durable offset: start again"
        );
        let path = storage.resolve(&relative).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 5000);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(relative.contains("/.cb-partial-v4-"));
    }
}
