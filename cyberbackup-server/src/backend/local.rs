//! [`LocalBackend`]: objects as files under a data directory.
//!
//! Key `data/ab/abcd` is the file `ROOT/data/ab/abcd` (directories 0700, files 0600). A put
//! writes a temp file (`.put-*`) in the object's own directory, fsyncs it, renames it over
//! the key and fsyncs the directory: that rename is this backend's private way to make an
//! object appear whole, and the directory fsync is its durability point. A resumable upload
//! is a `.upload-*` temp file in the same directory, fsynced after every part. Names that
//! start with `.` are never keys (see [`ObjectKey`]), so temp files are never listed.
//! All file work runs on the blocking pool.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};

use super::hash::hash_part;
use super::{
    Backend, BackendError, ContentHash, ObjectInfo, ObjectKey, Upload, check_range,
    hash_off_runtime,
};

/// Default part length of resumable uploads: 8 MiB.
pub const DEFAULT_PART_LEN: u64 = 8 << 20;
const PUT_PREFIX: &str = ".put-";
const UPLOAD_PREFIX: &str = ".upload-";
/// Listing entries buffered between the directory walk and the stream's reader.
const LIST_BUFFER: usize = 256;

/// Configuration of a [`LocalBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// The directory that holds the objects (created 0700 if missing).
    pub root: PathBuf,
    /// Length of every part of a resumable upload but the last: a power of two ≥ 1 KiB.
    pub part_len: u64,
}

impl LocalConfig {
    /// Objects under `root`, 8 MiB parts.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            part_len: DEFAULT_PART_LEN,
        }
    }
}

/// Objects stored as files under a directory (see the module docs).
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
    part_len: u64,
}

impl LocalBackend {
    /// Opens (creating if needed) the data directory of `config`.
    ///
    /// # Errors
    /// [`BackendError::Config`] for a bad part length, [`BackendError::Io`] when the
    /// directory cannot be created.
    pub fn open(config: LocalConfig) -> Result<Self, BackendError> {
        check_part_len(config.part_len, 1024)?;
        DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&config.root)
            .map_err(io_err("create data directory", &config.root))?;
        Ok(Self {
            root: config.root,
            part_len: config.part_len,
        })
    }

    /// The data directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &ObjectKey) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(key.segments());
        path
    }

    /// The temp file of `upload`, checked to be one of ours in the key's directory.
    fn upload_path(&self, upload: &Upload) -> Result<PathBuf, BackendError> {
        let id = upload.id();
        if !id.starts_with(UPLOAD_PREFIX) || id.contains(['/', '\0']) {
            return Err(BackendError::InvalidUpload {
                key: upload.key().clone(),
                reason: format!("{id:?} is not an upload id of the local backend"),
            });
        }
        Ok(parent_of(&self.path_of(upload.key())).join(id))
    }
}

/// `Err(Config)` unless `part_len` is a power of two of at least `min` bytes.
pub(crate) fn check_part_len(part_len: u64, min: u64) -> Result<(), BackendError> {
    if part_len.is_power_of_two() && part_len >= min {
        return Ok(());
    }
    Err(BackendError::Config(format!(
        "part length {part_len} must be a power of two of at least {min} bytes (e.g. 8388608 = 8 MiB)"
    )))
}

#[async_trait]
impl Backend for LocalBackend {
    fn part_len(&self) -> u64 {
        self.part_len
    }

    async fn put_bytes(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        expected: ContentHash,
    ) -> Result<(), BackendError> {
        let actual = hash_off_runtime(bytes.clone()).await?;
        if actual != expected {
            return Err(BackendError::HashMismatch {
                key: key.clone(),
                expected,
                actual,
            });
        }
        let root = self.root.clone();
        let dest = self.path_of(key);
        blocking(move || {
            let dir = ensure_parent(&root, &dest)?;
            let mut temp = tempfile::Builder::new()
                .prefix(PUT_PREFIX)
                .tempfile_in(&dir)
                .map_err(io_err("create temp file in", &dir))?;
            temp.write_all(&bytes)
                .and_then(|()| temp.as_file().sync_all())
                .map_err(io_err("write and fsync", temp.path()))?;
            // Dropping `temp` on any error removes it: nothing half-written stays behind.
            temp.persist(&dest)
                .map_err(|e| io_err("rename temp file to", &dest)(e.error))?;
            sync_dir(&dir)
        })
        .await
    }

    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<Bytes, BackendError> {
        let path = self.path_of(key);
        let key = key.clone();
        blocking(move || {
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if is_missing(&e) => return Err(BackendError::NotFound { key }),
                Err(e) => return Err(io_err("open", &path)(e)),
            };
            let len_bytes = file.metadata().map_err(io_err("stat", &path))?.len();
            let range = range.unwrap_or(0..len_bytes);
            check_range(&key, &range, len_bytes)?;
            let len = usize::try_from(range.end - range.start).map_err(|_| {
                BackendError::Config("range is larger than this machine's memory".into())
            })?;
            let mut buf = vec![0u8; len];
            file.seek(SeekFrom::Start(range.start))
                .and_then(|_| file.read_exact(&mut buf))
                .map_err(io_err("read", &path))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    fn list(&self, prefix: Option<&ObjectKey>) -> BoxStream<'_, Result<ObjectInfo, BackendError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(LIST_BUFFER);
        let root = self.root.clone();
        let start = prefix.map_or_else(|| root.clone(), |p| self.path_of(p));
        tokio::task::spawn_blocking(move || walk(&root, &start, &tx));
        Box::pin(stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), BackendError> {
        let path = self.path_of(key);
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => sync_dir(&parent_of(&path)),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        })
        .await
    }

    async fn remove_interrupted_puts(&self) -> Result<u64, BackendError> {
        let root = self.root.clone();
        blocking(move || remove_put_temp_files(&root)).await
    }

    async fn begin_upload(&self, key: &ObjectKey) -> Result<Upload, BackendError> {
        let root = self.root.clone();
        let dest = self.path_of(key);
        let id = blocking(move || {
            let dir = ensure_parent(&root, &dest)?;
            let (_, path) = tempfile::Builder::new()
                .prefix(UPLOAD_PREFIX)
                .tempfile_in(&dir)
                .map_err(io_err("create upload file in", &dir))?
                .keep()
                .map_err(|e| io_err("keep upload file", &dir)(e.error))?;
            sync_dir(&dir)?;
            Ok(path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default())
        })
        .await?;
        Ok(Upload::new(key.clone(), id, self.part_len))
    }

    async fn upload_part(&self, upload: &mut Upload, data: Bytes) -> Result<(), BackendError> {
        upload.check_next_part(self.part_len, &data)?;
        let path = self.upload_path(upload)?;
        let key = upload.key().clone();
        let offset = upload.len_bytes();
        let (hash, len_bytes) = blocking(move || {
            let file = open_upload(&path, &key)?;
            // Bytes past the recorded parts are a part that was never acknowledged.
            file.set_len(offset)
                .and_then(|()| file.write_all_at(&data, offset))
                .and_then(|()| file.sync_all())
                .map_err(io_err("write and fsync", &path))?;
            Ok((hash_part(offset, &data), data.len() as u64))
        })
        .await?;
        upload.push_part(String::new(), len_bytes, hash);
        Ok(())
    }

    async fn complete_upload(
        &self,
        upload: &Upload,
        expected: ContentHash,
    ) -> Result<(), BackendError> {
        let path = self.upload_path(upload)?;
        if let Err(e) = upload.verify(expected) {
            if matches!(e, BackendError::HashMismatch { .. }) {
                self.abort_upload(upload.clone()).await?;
            }
            return Err(e);
        }
        let key = upload.key().clone();
        let dest = self.path_of(&key);
        let len_bytes = upload.len_bytes();
        blocking(move || {
            let file = open_upload(&path, &key)?;
            file.set_len(len_bytes)
                .and_then(|()| file.sync_all())
                .map_err(io_err("fsync", &path))?;
            fs::rename(&path, &dest).map_err(io_err("rename upload file to", &dest))?;
            sync_dir(&parent_of(&dest))
        })
        .await
    }

    async fn abort_upload(&self, upload: Upload) -> Result<(), BackendError> {
        let path = self.upload_path(&upload)?;
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => sync_dir(&parent_of(&path)),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        })
        .await
    }

    fn abandon_upload(&self, upload: Upload) {
        if let Ok(path) = self.upload_path(&upload) {
            // One unlink; a leftover would only cost disk space, never be listed.
            let _ = fs::remove_file(path);
        }
    }
}

fn open_upload(path: &Path, key: &ObjectKey) -> Result<File, BackendError> {
    match OpenOptions::new().write(true).open(path) {
        Ok(file) => Ok(file),
        Err(e) if is_missing(&e) => Err(BackendError::InvalidUpload {
            key: key.clone(),
            reason: format!(
                "its file {} is gone (the upload was aborted or completed): start it again",
                path.display()
            ),
        }),
        Err(e) => Err(io_err("open", path)(e)),
    }
}

/// Sends every object under `start` to `tx`; stops when the receiver is gone.
/// Removes every `.put-*` temp file under `root` (a put a crash interrupted before its
/// rename); a missing root holds none.
fn remove_put_temp_files(root: &Path) -> Result<u64, BackendError> {
    let mut removed = 0;
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.io_error().is_some_and(is_missing) && e.depth() == 0 => return Ok(0),
            Err(e) => {
                return Err(BackendError::Io {
                    op: "list",
                    path: e.path().unwrap_or(root).to_path_buf(),
                    source: e.into(),
                });
            }
        };
        let is_put_temp = entry.file_type().is_file()
            && entry.file_name().to_string_lossy().starts_with(PUT_PREFIX);
        if is_put_temp {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(io_err("remove", entry.path())(e)),
            }
        }
    }
    Ok(removed)
}

fn walk(
    root: &Path,
    start: &Path,
    tx: &tokio::sync::mpsc::Sender<Result<ObjectInfo, BackendError>>,
) {
    let entries = walkdir::WalkDir::new(start)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !e.file_name().to_string_lossy().starts_with('.'));
    for entry in entries {
        let item = match entry {
            Ok(entry) if !entry.file_type().is_file() => continue,
            Ok(entry) => object_info(root, entry.path(), entry.metadata()),
            Err(e) if e.io_error().is_some_and(is_missing) && e.depth() == 0 => return,
            Err(e) => Err(BackendError::Io {
                op: "list",
                path: e.path().unwrap_or(start).to_path_buf(),
                source: e.into(),
            }),
        };
        if tx.blocking_send(item).is_err() {
            return;
        }
    }
}

fn object_info(
    root: &Path,
    path: &Path,
    meta: Result<fs::Metadata, walkdir::Error>,
) -> Result<ObjectInfo, BackendError> {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let key = ObjectKey::new(relative.to_string_lossy().into_owned())?;
    let len_bytes = meta
        .map_err(|e| BackendError::Io {
            op: "stat",
            path: path.to_path_buf(),
            source: e.into(),
        })?
        .len();
    Ok(ObjectInfo { key, len_bytes })
}

/// Creates the directories between `root` and `dest`'s parent (0700), fsyncing the parent
/// of each one created so that its entry is durable too; returns `dest`'s parent.
fn ensure_parent(root: &Path, dest: &Path) -> Result<PathBuf, BackendError> {
    let dir = parent_of(dest);
    let relative = dir.strip_prefix(root).unwrap_or(Path::new(""));
    let mut current = root.to_path_buf();
    for component in relative.components() {
        let parent = current.clone();
        current.push(component);
        match DirBuilder::new().mode(0o700).create(&current) {
            Ok(()) => sync_dir(&parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create directory", &current)(e)),
        }
    }
    Ok(dir)
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn sync_dir(dir: &Path) -> Result<(), BackendError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackendError {
    let path = path.to_path_buf();
    move |source| BackendError::Io { op, path, source }
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(BackendError::from_join)?
}
