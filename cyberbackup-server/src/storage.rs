//! Atomic file storage under `<data-dir>/files/<client-id-hex>/`.
//!
//! A file arrives into a [`PartialFile`]: a temp file named `.cb-partial-…` in the same
//! directory as its destination (so the final `rename` is atomic and never crosses a file
//! system), created with `O_EXCL` and mode 0600. [`PartialFile::finish`] fsyncs it (durable but
//! not visible); [`PartialFile::commit`] renames it over the destination and fsyncs the
//! directory. Readers see either the whole previous version or the whole new one.
//!
//! On-disk names come from [`map_file_name`]; mapped names never start with `.`, so they
//! cannot collide with temp files. With `keep_versions > 1` the previous version is renamed to
//! `<mapped>.~<version>~` ([`versioned_path`], the numbered-backup style of GNU `cp`) before the
//! new one takes its place.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use sha2::{Digest, Sha256};

use crate::faults::{FaultPoint, Faults};

/// Prefix of temp files; mapped names never start with `.`, so no stored file has it.
pub const PARTIAL_PREFIX: &str = ".cb-partial-";

/// Longest mapped name in bytes. File systems allow 255; 15 bytes stay free for the
/// `.~<u32>~` suffix of kept versions.
pub const MAX_MAPPED_LEN: usize = 240;

/// Name of the directory under the data directory that holds client directories.
pub const FILES_DIR: &str = "files";

/// Block of a v3 transfer's [`TempWriter`] (one staged and one in flight at most).
const WRITE_BLOCK: usize = 128 * 1024;

/// Bytes of the mapped name kept before the hash suffix of a shortened name.
const SHORT_PREFIX_MAX: usize = MAX_MAPPED_LEN - 1 - 64;

/// Window of [`WriteBehind`]: the page cache holds at most about two of these per transfer.
const WRITE_BEHIND_WINDOW: u64 = 8 * 1024 * 1024;

/// Keeps a streamed upload from filling the page cache: when a window of
/// [`WRITE_BEHIND_WINDOW`] bytes has been handed to the kernel, asks it to start writing that
/// window back (`POSIX_FADV_DONTNEED` on dirty pages starts writeback without waiting) and
/// to drop the window before it, written back by then. Durability is unchanged (the fsync
/// points stay where they are); what changes is that the pages of a large upload are
/// recycled instead of each write taking fresh memory, which was half of the server's CPU
/// time on the benchmark machine (docs/benchmarks.md), and that a backup no longer evicts
/// everything else from the cache. Advice that fails is only logged: it is an optimisation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WriteBehind {
    /// End of the next window to hand over.
    next_end: u64,
}

impl WriteBehind {
    /// For a file whose bytes up to `offset` are already written (and advised).
    pub(crate) fn starting_at(offset: u64) -> Self {
        Self {
            next_end: (offset / WRITE_BEHIND_WINDOW + 1) * WRITE_BEHIND_WINDOW,
        }
    }

    /// Reports that the file now holds `written` bytes (what the kernel has, not what a
    /// user-space buffer still holds).
    pub(crate) fn advance(&mut self, file: &File, written: u64) {
        while written >= self.next_end {
            let start = self.next_end - WRITE_BEHIND_WINDOW;
            drop_pages(file, start);
            if let Some(previous) = start.checked_sub(WRITE_BEHIND_WINDOW) {
                drop_pages(file, previous);
            }
            self.next_end += WRITE_BEHIND_WINDOW;
        }
    }
}

/// A temp file appended to in blocks written on the blocking pool, with [`WriteBehind`]: the
/// part that [`PartialFile`] (v3) and [`ResumablePartial`](crate::v4::partial::ResumablePartial)
/// (v4) share.
///
/// Appends are pipelined: bytes are staged until a block of `block_len` is full, then the
/// block is written (and, if asked, hashed) on a blocking thread while the caller goes on
/// receiving and decrypting the next one. At most one block is in flight, so memory stays
/// bounded by two blocks. A failed write surfaces at the next append or at [`sync`](Self::sync),
/// which waits for everything: nothing is reported durable before it is. An operation that
/// fails (or is cancelled) leaves the writer closed: later ones fail with
/// [`StorageError::NotOpen`].
#[derive(Debug)]
pub(crate) struct TempWriter {
    path: PathBuf,
    block_len: usize,
    /// The file while no block is in flight; `None` when closed or while in flight.
    sink: Option<Sink>,
    in_flight: Option<tokio::task::JoinHandle<Result<Sink, StorageError>>>,
    staged: BytesMut,
    len: u64,
    faults: Faults,
}

/// The file side of a [`TempWriter`]: moved to the blocking thread with each block.
#[derive(Debug)]
struct Sink {
    path: PathBuf,
    file: File,
    write_behind: WriteBehind,
    written: u64,
    sha256: Option<Sha256>,
}

impl Sink {
    fn write(&mut self, block: &[u8]) -> Result<(), StorageError> {
        if block.is_empty() {
            return Ok(());
        }
        if let Some(hasher) = &mut self.sha256 {
            hasher.update(block);
        }
        self.file
            .write_all(block)
            .map_err(io_err("write", &self.path))?;
        self.written += block.len() as u64;
        self.write_behind.advance(&self.file, self.written);
        Ok(())
    }
}

/// Bytes already handed to the kernel, made durable by [`wait`](Self::wait) (`fdatasync`
/// of a second descriptor) while the writer goes on; from
/// [`ResumablePartial::start_sync`](crate::v4::partial::ResumablePartial::start_sync).
#[derive(Debug)]
pub struct DurableSync {
    file: File,
    path: PathBuf,
    len: u64,
    faults: Faults,
}

impl DurableSync {
    /// How many bytes [`wait`](Self::wait) makes durable.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there is nothing to make durable.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `fdatasync` on a blocking thread; returns the now durable length.
    ///
    /// # Errors
    /// [`StorageError::Io`].
    pub async fn wait(self) -> Result<u64, StorageError> {
        let Self {
            file,
            path,
            len,
            faults,
        } = self;
        if let Some(source) = faults.check(FaultPoint::Fsync) {
            return Err(StorageError::Io {
                op: "fsync",
                path,
                source,
            });
        }
        run_blocking(move || file.sync_data().map_err(io_err("fsync", &path))).await?;
        Ok(len)
    }
}

/// How [`TempWriter::sync`] makes the written bytes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncMode {
    /// `fsync`: data and all metadata.
    All,
    /// `fdatasync`: data and the metadata needed to read it back (the length).
    Data,
}

impl TempWriter {
    /// Writes to `file` (at `path`) after its first `len` bytes, in blocks of `block_len`;
    /// `faults` are checked before each append ([`FaultPoint::Write`]) and sync
    /// ([`FaultPoint::Fsync`]).
    pub(crate) fn new(
        path: PathBuf,
        file: File,
        block_len: usize,
        len: u64,
        faults: Faults,
    ) -> Self {
        Self {
            sink: Some(Sink {
                path: path.clone(),
                file,
                write_behind: WriteBehind::starting_at(len),
                written: len,
                sha256: None,
            }),
            path,
            block_len: block_len.max(1),
            in_flight: None,
            staged: BytesMut::new(),
            len,
            faults,
        }
    }

    /// Also computes the SHA-256 of everything appended (on the writing thread), for
    /// [`sha256`](Self::sha256). Only for a writer that starts empty.
    pub(crate) fn hashing(mut self) -> Self {
        if let Some(sink) = &mut self.sink {
            sink.sha256 = Some(Sha256::new());
        }
        self
    }

    /// Path of the file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the file, counting those not yet written.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// [`StorageError::NotOpen`] once closed.
    pub(crate) fn ensure_open(&self) -> Result<(), StorageError> {
        if self.sink.is_some() || self.in_flight.is_some() {
            Ok(())
        } else {
            Err(StorageError::NotOpen(self.path.clone()))
        }
    }

    /// Appends `data`: a copy into the staging block; each full block is handed to a blocking
    /// thread (after the previous one is written).
    pub(crate) async fn append(&mut self, mut data: &[u8]) -> Result<(), StorageError> {
        self.check(FaultPoint::Write, "write")?;
        self.len += data.len() as u64;
        while !data.is_empty() {
            let room = self.block_len - self.staged.len();
            let (now, later) = data.split_at(room.min(data.len()));
            if self.staged.is_empty() {
                self.staged.reserve(self.block_len);
            }
            self.staged.extend_from_slice(now);
            data = later;
            if self.staged.len() == self.block_len {
                let mut sink = self.settle().await?;
                let block = self.staged.split().freeze();
                self.in_flight = Some(tokio::task::spawn_blocking(move || {
                    sink.write(&block)?;
                    Ok(sink)
                }));
            }
        }
        Ok(())
    }

    /// Writes what is staged, waits for the block in flight and syncs the file as `mode`
    /// says; returns the length, now durable. The file stays open.
    pub(crate) async fn sync(&mut self, mode: SyncMode) -> Result<u64, StorageError> {
        self.check(FaultPoint::Fsync, "fsync")?;
        let mut sink = self.settle().await?;
        let block = self.staged.split().freeze();
        let sink = run_blocking(move || {
            sink.write(&block)?;
            match mode {
                SyncMode::All => sink.file.sync_all(),
                SyncMode::Data => sink.file.sync_data(),
            }
            .map_err(io_err("fsync", &sink.path))?;
            Ok(sink)
        })
        .await?;
        self.sink = Some(sink);
        Ok(self.len)
    }

    /// Hands everything appended to the kernel (the staged bytes and the block in flight)
    /// and returns that length with a second descriptor of the file: syncing it — on another
    /// thread, while appends go on — makes at least that many bytes durable (checking
    /// [`FaultPoint::Fsync`] first).
    pub(crate) async fn hand_over(&mut self) -> Result<DurableSync, StorageError> {
        let mut sink = self.settle().await?;
        let block = self.staged.split().freeze();
        let len = self.len;
        let (sink, file) = run_blocking(move || {
            sink.write(&block)?;
            let file = sink
                .file
                .try_clone()
                .map_err(io_err("duplicate the descriptor of", &sink.path))?;
            Ok((sink, file))
        })
        .await?;
        let path = sink.path.clone();
        self.sink = Some(sink);
        Ok(DurableSync {
            file,
            path,
            len,
            faults: self.faults.clone(),
        })
    }

    /// The SHA-256 of everything written, if [`hashing`](Self::hashing); complete after a
    /// [`sync`](Self::sync).
    pub(crate) fn sha256(&self) -> Option<[u8; 32]> {
        let hasher = self.sink.as_ref()?.sha256.as_ref()?;
        Some(hasher.clone().finalize().into())
    }

    /// Closes the file. Bytes not yet synced may or may not reach it: only what
    /// [`sync`](Self::sync) returned is promised.
    pub(crate) fn close(&mut self) {
        drop(self.sink.take());
        drop(self.in_flight.take());
        self.staged = BytesMut::new();
    }

    /// Closes and deletes the file (after the block in flight, if any, is done); a file
    /// already gone is not an error. `op` names the operation in the error.
    pub(crate) async fn remove(&mut self, op: &'static str) -> Result<(), StorageError> {
        if let Some(in_flight) = self.in_flight.take() {
            drop(in_flight.await);
        }
        self.close();
        let path = self.path.clone();
        run_blocking(move || match remove_if_exists(&path) {
            Ok(_) => Ok(()),
            Err(source) => Err(StorageError::Io { op, path, source }),
        })
        .await
    }

    /// Fails (and closes the writer) when closed or when `point` is injected as a fault.
    fn check(&mut self, point: FaultPoint, op: &'static str) -> Result<(), StorageError> {
        self.ensure_open()?;
        match self.faults.check(point) {
            None => Ok(()),
            Some(source) => {
                self.close();
                Err(StorageError::Io {
                    op,
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    /// The file, once the block in flight (if any) is written. On failure (or cancellation)
    /// the writer is closed.
    async fn settle(&mut self) -> Result<Sink, StorageError> {
        if let Some(in_flight) = self.in_flight.take() {
            match in_flight.await {
                Ok(Ok(sink)) => return Ok(sink),
                Ok(Err(err)) => {
                    self.close();
                    return Err(err);
                }
                Err(join) => {
                    self.close();
                    return Err(StorageError::Task(join));
                }
            }
        }
        self.sink
            .take()
            .ok_or_else(|| StorageError::NotOpen(self.path.clone()))
    }
}

/// Deletes `path`; `Ok(false)` if it did not exist.
fn remove_if_exists(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn drop_pages(file: &File, start: u64) {
    let len = std::num::NonZeroU64::new(WRITE_BEHIND_WINDOW);
    if let Err(error) = rustix::fs::fadvise(file, start, len, rustix::fs::Advice::DontNeed) {
        tracing::debug!(%error, "posix_fadvise(DONTNEED) failed; the page cache keeps the upload");
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn drop_pages(_file: &File, _start: u64) {}

/// Errors of the file storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A storage directory could not be created.
    #[error(
        "cannot create storage directory {path}: {source} — check that its parent exists and is writable by the server user"
    )]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Underlying IO error.
        #[source]
        source: io::Error,
    },
    /// A storage directory is writable by every user.
    #[error("storage directory {path} is world-writable (mode {mode:o}) — run `chmod o-w {}` or choose another data directory", path.display())]
    WorldWritable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A storage directory can be read or searched by every user.
    #[error("storage directory {path} is readable by other users (mode {mode:o}): they could read client names, keys and file names — run `chmod o-rwx {}` (or `chmod 700`) or choose another data directory", path.display())]
    ReadableByOthers {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Free space on the data directory's file system is below `min_free_disk_mb`.
    #[error("server storage is full: {} MiB free in {}, below min_free_disk_mb = {} — free disk space (or lower min_free_disk_mb); new uploads are refused until then", free_bytes / (1024 * 1024), path.display(), min_bytes / (1024 * 1024))]
    Full {
        /// The storage root.
        path: PathBuf,
        /// Bytes available.
        free_bytes: u64,
        /// The configured minimum in bytes.
        min_bytes: u64,
    },
    /// Writing a probe file failed.
    #[error(
        "storage directory {path} is not writable: {source} — check ownership, permissions and free space"
    )]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// Underlying IO error.
        #[source]
        source: io::Error,
    },
    /// A file operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done (`create`, `write`, `fsync`, `rename`, …).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Underlying IO error.
        #[source]
        source: io::Error,
    },
    /// An empty file name was given (it should have been rejected on the wire).
    #[error("file name is empty")]
    EmptyName,
    /// A path (from the catalog, or a mapped name) would leave its client directory.
    #[error("refusing path {path:?}: it is not a file inside a client directory")]
    OutsideClientDir {
        /// The offending path.
        path: String,
    },
    /// The partial file can no longer be written (an earlier operation failed or was
    /// cancelled, or it was already finished).
    #[error("partial file {0} is not open for this operation")]
    NotOpen(PathBuf),
    /// A blocking task panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Whether `err` (or one of its sources) says the disk is full: [`StorageError::Full`], an IO
/// error `ENOSPC` / `EDQUOT`, or the catalog's engine saying its disk is full (SQLite's "database or disk is full", PostgreSQL's `disk_full`).
#[must_use]
pub fn is_storage_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if matches!(
            err.downcast_ref::<StorageError>(),
            Some(StorageError::Full { .. })
        ) {
            return true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            let full = io.kind() == io::ErrorKind::StorageFull;
            if full || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                return true;
            }
        }
        if let Some(sql) = err.downcast_ref::<crate::catalog::SqlError>() {
            if sql.is_storage_full() {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// Maps a wire file name to the name stored on disk.
///
/// The input has been validated by the protocol layer (no `/`, `\`, NUL, not `.`, `..` or
/// empty); the mapping is nevertheless safe for any bytes. Rules:
/// - ASCII letters, digits, `.`, `_`, `-` and space are kept;
/// - every other byte, `%` included, becomes `%XX` (uppercase hex);
/// - a leading `.` becomes `%2E` (no hidden files, no clash with `.cb-partial-*` temp files);
/// - for Windows device names (`CON`, `PRN`, `AUX`, `NUL`, `COM0`–`COM9`, `LPT0`–`LPT9`, any
///   case, also with an extension such as `con.txt` or trailing spaces before the dot) the
///   first character is encoded (`%43ON.txt`), so the data directory can be copied to Windows;
/// - a result longer than [`MAX_MAPPED_LEN`] bytes is shortened to at most 175 bytes of the
///   mapping (cut between whole `%XX` units), then `~` and the 64 hex digits of the SHA-256 of
///   the original name bytes.
///
/// Injective: an unshortened mapping decodes back (`%XX` → byte, anything else literal) and
/// never contains `~`; shortened mappings contain `~` and differ unless SHA-256 collides.
///
/// # Errors
/// [`StorageError::EmptyName`] for an empty name.
pub fn map_file_name(name: &[u8]) -> Result<String, StorageError> {
    if name.is_empty() {
        return Err(StorageError::EmptyName);
    }
    let reserved = is_windows_device_name(name);
    let mut out = String::with_capacity(name.len());
    // Byte offset in `out` after each whole unit (literal or %XX), for shortening.
    let mut short_cut = 0;
    for (i, &byte) in name.iter().enumerate() {
        let escape_first = i == 0 && (byte == b'.' || reserved);
        if is_kept(byte) && !escape_first {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
        if out.len() <= SHORT_PREFIX_MAX {
            short_cut = out.len();
        }
    }
    if out.len() > MAX_MAPPED_LEN {
        out.truncate(short_cut);
        out.push('~');
        out.push_str(&hex::encode(Sha256::digest(name)));
    }
    Ok(out)
}

/// The path under which version `version` is kept once a newer version replaced it:
/// `<path>.~<version>~`.
#[must_use]
pub fn versioned_path(path: &str, version: u32) -> String {
    format!("{path}.~{version}~")
}

/// The inverse of [`versioned_path`]: `(path, version)` for `<path>.~<version>~` written as
/// [`versioned_path`] writes it (decimal without leading zeros, non-empty `path`).
#[must_use]
pub fn split_versioned_path(versioned: &str) -> Option<(&str, u32)> {
    let (path, digits) = versioned.strip_suffix('~')?.rsplit_once(".~")?;
    let version = digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse::<u32>().ok())??;
    (!path.is_empty() && versioned_path(path, version) == versioned).then_some((path, version))
}

/// The wire name that [`map_file_name`] maps to `mapped`, if it is such a mapping and not a
/// shortened one (whose original cannot be recovered).
#[must_use]
pub fn unmap_file_name(mapped: &str) -> Option<Vec<u8>> {
    let bytes = mapped.as_bytes();
    let mut name = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if byte == b'%' {
            let hex = mapped.get(i + 1..i + 3)?;
            name.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            name.push(byte);
            i += 1;
        }
    }
    (map_file_name(&name).ok()? == mapped).then_some(name)
}

/// A file in a client directory named like a kept version (`<mapped>.~<version>~`), found
/// by [`Storage::version_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionFile {
    /// The client whose directory holds it.
    pub client: [u8; 16],
    /// Its catalog path, `<client-hex>/<mapped>.~<version>~`.
    pub path_name: String,
    /// The catalog path of the current version it was renamed from, `<client-hex>/<mapped>`.
    pub base_path_name: String,
    /// The version in its name.
    pub version: u32,
    /// The wire name whose mapping is `<mapped>` ([`unmap_file_name`]); `None` for a
    /// shortened mapping.
    pub file_name: Option<Vec<u8>>,
}

impl VersionFile {
    /// Parses the file `name` found in the directory of `client`.
    fn parse(client: [u8; 16], name: &str) -> Option<Self> {
        let (base, version) = split_versioned_path(name)?;
        if base.starts_with('.') {
            return None;
        }
        let client_hex = hex::encode(client);
        Some(Self {
            client,
            path_name: format!("{client_hex}/{name}"),
            base_path_name: format!("{client_hex}/{base}"),
            version,
            file_name: unmap_file_name(base),
        })
    }
}

/// Version files sent ahead of the consumer by [`Storage::version_files`].
const VERSION_FILES_AHEAD: usize = 256;

/// Outcome of [`PartialFile::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedFile {
    /// Plaintext bytes written.
    pub len: u64,
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
}

/// The storage tree `<data-dir>/files/`.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
    faults: Faults,
}

impl Storage {
    /// Creates `<data_dir>` and `<data_dir>/files` (mode 0700 when created) and refuses
    /// ones that other users may write, read or search.
    ///
    /// # Errors
    /// [`StorageError::CreateDir`], [`StorageError::WorldWritable`] or
    /// [`StorageError::ReadableByOthers`].
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        let data_dir = data_dir.as_ref();
        let root = data_dir.join(FILES_DIR);
        create_private_dir(data_dir)?;
        create_private_dir(&root)?;
        Ok(Self {
            root,
            faults: Faults::none(),
        })
    }

    /// The faults injected into this storage (none in production).
    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// This storage with `faults` injected into temp-file creation, writes, fsync and rename
    /// (tests only; see [`crate::faults`]).
    #[must_use]
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// SHA-256 and length of a stored file given its catalog path, read in 64 KiB pieces;
    /// `Ok(None)` if it does not exist.
    ///
    /// # Errors
    /// [`StorageError::OutsideClientDir`] or [`StorageError::Io`].
    pub async fn sha256_of(&self, relative: &str) -> Result<Option<([u8; 32], u64)>, StorageError> {
        let path = self.resolve(relative)?;
        run_blocking(move || {
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(source) => {
                    return Err(StorageError::Io {
                        op: "open",
                        path,
                        source,
                    });
                }
            };
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut len = 0u64;
            loop {
                let n = io::Read::read(&mut file, &mut buf).map_err(io_err("read", &path))?;
                let Some(piece) = buf.get(..n).filter(|p| !p.is_empty()) else {
                    break;
                };
                hasher.update(piece);
                len += u64::try_from(n).unwrap_or(u64::MAX);
            }
            Ok(Some((hasher.finalize().into(), len)))
        })
        .await
    }

    /// Renames a temp file (catalog path) over its destination (catalog path) exactly as
    /// [`PartialFile::commit`] does, for finishing a commit after a crash.
    ///
    /// # Errors
    /// [`StorageError::OutsideClientDir`] or [`StorageError::Io`].
    pub async fn install(
        &self,
        temp_relative: &str,
        dest_relative: &str,
        keep_previous: Option<u32>,
    ) -> Result<PathBuf, StorageError> {
        let temp = self.resolve(temp_relative)?;
        let dest = self.resolve(dest_relative)?;
        if temp.parent() != dest.parent() {
            return Err(StorageError::OutsideClientDir {
                path: temp_relative.to_owned(),
            });
        }
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
        run_blocking(move || install(&temp, dest, &dir, keep_previous)).await
    }

    /// The `files` directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `files/<client-id-hex>` (lowercase hex).
    #[must_use]
    pub fn client_dir(&self, client: &[u8; 16]) -> PathBuf {
        self.root.join(hex::encode(client))
    }

    /// The catalog's `PathName` for a file: `<client-id-hex>/<mapped name>`.
    ///
    /// # Errors
    /// [`StorageError::EmptyName`].
    pub fn relative_path(client: &[u8; 16], name: &[u8]) -> Result<String, StorageError> {
        Ok(format!("{}/{}", hex::encode(client), map_file_name(name)?))
    }

    /// Resolves a relative path from the catalog, checking that it names a file directly inside
    /// a client directory (defence in depth against a corrupted or hostile catalog).
    ///
    /// # Errors
    /// [`StorageError::OutsideClientDir`].
    pub fn resolve(&self, relative: &str) -> Result<PathBuf, StorageError> {
        let outside = || StorageError::OutsideClientDir {
            path: relative.to_owned(),
        };
        let Some((dir, file)) = relative.split_once('/') else {
            return Err(outside());
        };
        let dir_ok = dir.len() == 32 && dir.bytes().all(|b| b.is_ascii_hexdigit());
        if !dir_ok {
            return Err(outside());
        }
        inside(&self.root.join(dir), file).ok_or_else(outside)
    }

    /// Checks that at least `min_bytes` are free on the storage's file system (0 disables the
    /// check); a failing `statvfs` does not refuse anything (writes then report real errors).
    ///
    /// # Errors
    /// [`StorageError::Full`].
    pub fn ensure_room(&self, min_bytes: u64) -> Result<(), StorageError> {
        if min_bytes == 0 {
            return Ok(());
        }
        let Ok(free_bytes) = free_space(&self.root) else {
            return Ok(());
        };
        if free_bytes >= min_bytes {
            return Ok(());
        }
        Err(StorageError::Full {
            path: self.root.clone(),
            free_bytes,
            min_bytes,
        })
    }

    /// Writes, fsyncs and removes a probe file in the storage root.
    ///
    /// # Errors
    /// [`StorageError::NotWritable`].
    pub fn probe_writable(&self) -> Result<(), StorageError> {
        let not_writable = |source| StorageError::NotWritable {
            path: self.root.clone(),
            source,
        };
        let (path, mut file) = create_temp_tagged(&self.root, "").map_err(not_writable)?;
        let written = file
            .write_all(b"cyberbackup probe\n")
            .and_then(|()| file.sync_all());
        let removed = fs::remove_file(&path);
        written.map_err(not_writable)?;
        removed.map_err(not_writable)?;
        Ok(())
    }

    /// Starts receiving `name` for `client`: creates the client directory if needed and a temp
    /// file beside the destination.
    ///
    /// # Errors
    /// [`StorageError::EmptyName`], [`StorageError::CreateDir`] or [`StorageError::Io`].
    pub async fn create_partial(
        &self,
        client: [u8; 16],
        name: &[u8],
    ) -> Result<PartialFile, StorageError> {
        let mapped = map_file_name(name)?;
        if let Some(source) = self.faults.check(FaultPoint::CreateTemp) {
            return Err(StorageError::Io {
                op: "create temp file in",
                path: self.client_dir(&client),
                source,
            });
        }
        let dir = self.client_dir(&client);
        let relative = format!("{}/{mapped}", hex::encode(client));
        let dest = inside(&dir, &mapped).ok_or_else(|| StorageError::OutsideClientDir {
            path: relative.clone(),
        })?;
        let (temp, file) = run_blocking({
            let dir = dir.clone();
            move || {
                create_private_dir(&dir)?;
                create_temp_tagged(&dir, "").map_err(|source| StorageError::Io {
                    op: "create temp file in",
                    path: dir.clone(),
                    source,
                })
            }
        })
        .await?;
        let temp_name = temp
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(PartialFile {
            relative_temp: format!("{}/{temp_name}", hex::encode(client)),
            relative,
            dir,
            dest,
            file: TempWriter::new(temp, file, WRITE_BLOCK, 0, self.faults.clone()).hashing(),
            finished: false,
            done: false,
            faults: self.faults.clone(),
        })
    }

    /// Deletes a stored file given its catalog path; `Ok(false)` if it did not exist.
    ///
    /// # Errors
    /// [`StorageError::OutsideClientDir`] or [`StorageError::Io`].
    pub async fn remove(&self, relative: &str) -> Result<bool, StorageError> {
        let path = self.resolve(relative)?;
        run_blocking(move || remove_if_exists(&path).map_err(io_err("remove", &path))).await
    }

    /// Every file named like a kept version ([`VersionFile`]) in every client directory,
    /// streamed from a blocking directory walk (at most a few hundred ahead of the receiver,
    /// so memory stays bounded however many files are stored). A directory that cannot be
    /// read ends the stream with its error.
    #[must_use]
    pub fn version_files(&self) -> tokio::sync::mpsc::Receiver<Result<VersionFile, StorageError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(VERSION_FILES_AHEAD);
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = walk_version_files(&root, &tx) {
                let _ = tx.blocking_send(Err(error));
            }
        });
        rx
    }

    /// Deletes `.cb-partial-*` files (in the root and every client directory) last modified
    /// more than `older_than` ago, except those whose catalog paths are in `keep`; returns
    /// how many were removed.
    ///
    /// # Errors
    /// [`StorageError::Io`] if a directory cannot be read; files that vanish meanwhile are
    /// ignored.
    pub async fn remove_leftovers(
        &self,
        older_than: Duration,
        keep: &BTreeSet<String>,
    ) -> Result<usize, StorageError> {
        let root = self.root.clone();
        let keep: BTreeSet<PathBuf> = keep.iter().filter_map(|p| self.resolve(p).ok()).collect();
        run_blocking(move || {
            let cutoff = SystemTime::now()
                .checked_sub(older_than)
                .unwrap_or(UNIX_EPOCH);
            let mut removed = remove_old_partials(&root, cutoff, &keep)?;
            for entry in read_dir(&root)? {
                let entry = entry.map_err(io_err("read directory", &root))?;
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_dir {
                    removed += remove_old_partials(&entry.path(), cutoff, &keep)?;
                }
            }
            Ok(removed)
        })
        .await
    }
}

/// A file being received: a temp file beside its destination, plus the running SHA-256 and
/// length of what was appended. Dropping it before [`commit`](Self::commit) removes the temp
/// file (best effort).
#[derive(Debug)]
pub struct PartialFile {
    relative: String,
    relative_temp: String,
    dir: PathBuf,
    dest: PathBuf,
    file: TempWriter,
    finished: bool,
    done: bool,
    faults: Faults,
}

impl PartialFile {
    /// The destination's catalog path (`<client-hex>/<mapped>`).
    #[must_use]
    pub fn relative_path(&self) -> &str {
        &self.relative
    }

    /// The temp file's catalog path (`<client-hex>/.cb-partial-…`), for `TempPath`.
    #[must_use]
    pub fn relative_temp_path(&self) -> &str {
        &self.relative_temp
    }

    /// Absolute path of the temp file.
    #[must_use]
    pub fn temp_path(&self) -> &Path {
        self.file.path()
    }

    /// Absolute path of the destination.
    #[must_use]
    pub fn destination(&self) -> &Path {
        &self.dest
    }

    /// Bytes appended so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.file.len()
    }

    /// Whether nothing was appended yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.file.len() == 0
    }

    /// Appends plaintext. Memory stays bounded: at most the write buffer plus one piece.
    ///
    /// # Errors
    /// [`StorageError::Io`] (e.g. disk full) or [`StorageError::NotOpen`] after a failure,
    /// cancellation or [`finish`](Self::finish).
    pub async fn append(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.file.append(data).await
    }

    /// Flushes and fsyncs the temp file: the content is durable but not yet visible under
    /// its final name. The file is closed: nothing can be appended after this.
    ///
    /// # Errors
    /// [`StorageError::Io`] or [`StorageError::NotOpen`].
    pub async fn finish(&mut self) -> Result<FinishedFile, StorageError> {
        let len = self.file.sync(SyncMode::All).await?;
        let sha256 = self.file.sha256().unwrap_or_default();
        self.file.close();
        self.finished = true;
        Ok(FinishedFile { len, sha256 })
    }

    /// Makes the file visible: if `keep_previous` is `Some(v)` and a file exists at the
    /// destination, it is first renamed to `<dest>.~v~`; then the temp file is renamed over
    /// the destination and the directory is fsynced. Finishes first if needed. Returns the
    /// destination path.
    ///
    /// With `keep_versions > 1`, `v` is the version the catalog records for the file currently
    /// at the destination ([`Catalog::current_version`](crate::catalog::Catalog::current_version)).
    ///
    /// # Errors
    /// [`StorageError::Io`]; the temp file is removed on failure.
    pub async fn commit(mut self, keep_previous: Option<u32>) -> Result<PathBuf, StorageError> {
        if !self.finished {
            self.finish().await?;
        }
        let (temp, dest, dir) = (
            self.file.path().to_path_buf(),
            self.dest.clone(),
            self.dir.clone(),
        );
        if let Some(source) = self.faults.check(FaultPoint::Rename) {
            return Err(StorageError::Io {
                op: "rename temp file to",
                path: dest,
                source,
            });
        }
        run_blocking(move || install(&temp, dest, &dir, keep_previous))
            .await
            .inspect(|_| self.done = true)
    }

    /// Discards the transfer: removes the temp file.
    ///
    /// # Errors
    /// [`StorageError::Io`] if the temp file exists but cannot be removed.
    pub async fn abort(mut self) -> Result<(), StorageError> {
        self.done = true;
        self.file.remove("remove temp file").await
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.file.close();
        if let Err(error) = remove_if_exists(self.file.path()) {
            tracing::warn!(path = %self.file.path().display(), %error, "cannot remove temp file of an unfinished transfer");
        }
    }
}

fn is_kept(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-' | b' ')
}

fn is_windows_device_name(name: &[u8]) -> bool {
    let stem_end = name.iter().position(|&b| b == b'.').unwrap_or(name.len());
    let mut stem = name.get(..stem_end).unwrap_or(name);
    while let [rest @ .., b' '] = stem {
        stem = rest;
    }
    let upper = stem.to_ascii_uppercase();
    matches!(
        upper.as_slice(),
        b"CON"
            | b"PRN"
            | b"AUX"
            | b"NUL"
            | [b'C', b'O', b'M', b'0'..=b'9']
            | [b'L', b'P', b'T', b'0'..=b'9']
    )
}

/// `dir/file` if `file` is a single normal path component (defence in depth).
fn inside(dir: &Path, file: &str) -> Option<PathBuf> {
    if file.is_empty() || file.contains(['/', '\\', '\0']) {
        return None;
    }
    let mut components = Path::new(file).components();
    let single_normal =
        matches!(components.next(), Some(Component::Normal(_))) && components.next().is_none();
    if !single_normal {
        return None;
    }
    let path = dir.join(file);
    (path.parent() == Some(dir)).then_some(path)
}

fn create_private_dir(path: &Path) -> Result<(), StorageError> {
    let create_err = |source| StorageError::CreateDir {
        path: path.to_path_buf(),
        source,
    };
    match DirBuilder::new().mode(0o700).recursive(true).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(create_err(source)),
    }
    let meta = fs::metadata(path).map_err(create_err)?;
    if !meta.is_dir() {
        return Err(create_err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(StorageError::WorldWritable {
            path: path.to_path_buf(),
            mode,
        });
    }
    if mode & 0o005 != 0 {
        return Err(StorageError::ReadableByOthers {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Creates a fresh `.cb-partial-<tag>*` file in `dir` with `O_EXCL` and mode 0600, open for
/// writing (and reading, for resumable partials that re-hash what is already there).
pub(crate) fn create_temp_tagged(dir: &Path, tag: &str) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut attempt = 0;
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "{PARTIAL_PREFIX}{tag}{:x}-{n:x}-{nanos:08x}",
            std::process::id()
        ));
        match OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Renames `temp` over `dest` (first moving an existing `dest` to its versioned name when
/// `keep_previous` is set) and fsyncs the directory.
fn install(
    temp: &Path,
    dest: PathBuf,
    dir: &Path,
    keep_previous: Option<u32>,
) -> Result<PathBuf, StorageError> {
    if let Some(version) = keep_previous {
        let kept = dest.with_file_name(versioned_path(
            &dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            version,
        ));
        match fs::rename(&dest, &kept) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StorageError::Io {
                    op: "keep previous version",
                    path: dest,
                    source,
                });
            }
        }
    }
    fs::rename(temp, &dest).map_err(io_err("rename temp file to", &dest))?;
    sync_dir(dir)?;
    Ok(dest)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

fn read_dir(dir: &Path) -> Result<fs::ReadDir, StorageError> {
    fs::read_dir(dir).map_err(io_err("read directory", dir))
}

/// Sends every [`VersionFile`] under `root` to `tx`; stops early (`Ok`) when the receiver
/// is gone.
fn walk_version_files(
    root: &Path,
    tx: &tokio::sync::mpsc::Sender<Result<VersionFile, StorageError>>,
) -> Result<(), StorageError> {
    for entry in read_dir(root)? {
        let entry = entry.map_err(io_err("read directory", root))?;
        // Client directories only: 32 lowercase hex digits, as `client_dir` names them.
        let dir_name = entry.file_name();
        let client = hex::decode(dir_name.as_encoded_bytes())
            .ok()
            .and_then(|id| <[u8; 16]>::try_from(id).ok())
            .filter(|id| dir_name.to_str() == Some(hex::encode(id).as_str()));
        let Some(client) = client.filter(|_| entry.file_type().is_ok_and(|t| t.is_dir())) else {
            continue;
        };
        let dir = entry.path();
        for file in read_dir(&dir)? {
            let file = file.map_err(io_err("read directory", &dir))?;
            if !file.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let name = file.file_name();
            let Some(found) = name.to_str().and_then(|n| VersionFile::parse(client, n)) else {
                continue;
            };
            if tx.blocking_send(Ok(found)).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn remove_old_partials(
    dir: &Path,
    cutoff: SystemTime,
    keep: &BTreeSet<PathBuf>,
) -> Result<usize, StorageError> {
    let mut removed = 0;
    for entry in read_dir(dir)? {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let is_partial = entry
            .file_name()
            .to_string_lossy()
            .starts_with(PARTIAL_PREFIX);
        let Ok(meta) = entry.metadata() else { continue };
        let old = meta.modified().is_ok_and(|m| m <= cutoff);
        if is_partial && meta.is_file() && old && !keep.contains(&entry.path()) {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StorageError::Io {
                        op: "remove leftover",
                        path: entry.path(),
                        source,
                    });
                }
            }
        }
    }
    Ok(removed)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io { op, path, source }
}

/// Runs blocking file work on tokio's blocking pool.
pub(crate) async fn run_blocking<T, F>(f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(StorageError::Task)?
}

/// Bytes available to unprivileged users on the file system holding `path`.
///
/// # Errors
/// The `statvfs` error.
pub fn free_space(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CLIENT: [u8; 16] = [0xAB; 16];

    /// Pieces of odd sizes around the block size land in order; the digest is computed on
    /// the writing thread over exactly those bytes; `sync` reports the durable length.
    #[tokio::test]
    async fn pipelined_appends_write_and_hash_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let file = File::create(&path).unwrap();
        let mut writer = TempWriter::new(path.clone(), file, 1000, 0, Faults::none()).hashing();
        let content: Vec<u8> = (0..=250u8).cycle().take(10_007).collect();
        let mut rest = &content[..];
        for size in [1, 999, 1000, 1001, 2500, 3].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, later) = rest.split_at((*size).min(rest.len()));
            writer.append(piece).await.unwrap();
            rest = later;
        }
        assert_eq!(writer.sync(SyncMode::All).await.unwrap(), 10_007);
        assert_eq!(fs::read(&path).unwrap(), content);
        let digest: [u8; 32] = Sha256::digest(&content).into();
        assert_eq!(writer.sha256(), Some(digest));
        writer.append(b"more").await.unwrap();
        assert_eq!(writer.sync(SyncMode::Data).await.unwrap(), 10_011);
        assert_eq!(fs::read(&path).unwrap().len(), 10_011);
    }

    /// A block that fails on the writing thread fails the next append or the sync — never
    /// a sync that reports the bytes durable — and the writer is closed afterwards.
    #[tokio::test]
    async fn a_failed_block_write_surfaces_before_sync_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        fs::write(&path, b"").unwrap();
        // Read-only descriptor: every write fails with EBADF.
        let file = File::open(&path).unwrap();
        let mut writer = TempWriter::new(path.clone(), file, 100, 0, Faults::none());
        let first = writer.append(&[7; 150]).await;
        assert!(first.is_ok(), "the failing block is still in flight");
        let err = match writer.append(&[7; 100]).await {
            Err(err) => err,
            Ok(()) => writer.sync(SyncMode::All).await.unwrap_err(),
        };
        assert!(matches!(err, StorageError::Io { op: "write", .. }), "{err}");
        assert!(matches!(
            writer.sync(SyncMode::All).await,
            Err(StorageError::NotOpen(_))
        ));
    }

    #[test]
    fn mapping_table() {
        let cases: &[(&[u8], &str)] = &[
            (b"report.pdf", "report.pdf"),
            (b"My File_v2-final.txt", "My File_v2-final.txt"),
            (b"100%", "100%25"),
            (b"a/b", "a%2Fb"),
            (b"a\\b", "a%5Cb"),
            (b"nul\0byte", "nul%00byte"),
            (b".hidden", "%2Ehidden"),
            (b"..", "%2E."),
            (b".", "%2E"),
            (b"caf\xc3\xa9", "caf%C3%A9"),
            (b"tab\there", "tab%09here"),
            (b"~tilde", "%7Etilde"),
            (b"CON", "%43ON"),
            (b"con.txt", "%63on.txt"),
            (b"Nul.tar.gz", "%4Eul.tar.gz"),
            (b"aux ", "%61ux "),
            (b"PRN .log", "%50RN .log"),
            (b"COM1", "%43OM1"),
            (b"lpt9.txt", "%6Cpt9.txt"),
            (b"COM10", "COM10"),
            (b"CONSOLE", "CONSOLE"),
            (b"xcon", "xcon"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                map_file_name(input).unwrap(),
                *expected,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn empty_name_is_refused() {
        assert!(matches!(map_file_name(b""), Err(StorageError::EmptyName)));
    }

    #[test]
    fn long_names_are_shortened_deterministically() {
        let long = vec![b'a'; 300];
        let escaped = vec![b'%'; 100]; // 300 bytes once mapped
        let mut other = long.clone();
        other[299] = b'b';

        let mapped = map_file_name(&long).unwrap();
        let mapped_escaped = map_file_name(&escaped).unwrap();

        assert_eq!(mapped, map_file_name(&long).unwrap());
        assert_ne!(mapped, map_file_name(&other).unwrap());
        assert!(mapped.len() <= MAX_MAPPED_LEN, "{}", mapped.len());
        assert_eq!(mapped.len(), SHORT_PREFIX_MAX + 65);
        assert!(mapped.starts_with(&"a".repeat(SHORT_PREFIX_MAX)));
        assert_eq!(mapped[SHORT_PREFIX_MAX..].find('~'), Some(0));
        // Cut between whole %XX units: the prefix is 58 × "%25" (174 bytes).
        assert!(
            mapped_escaped.starts_with(&"%25".repeat(58)),
            "{mapped_escaped}"
        );
        assert_eq!(&mapped_escaped[174..175], "~");
        assert_eq!(
            map_file_name(&[b'a'; MAX_MAPPED_LEN]).unwrap().len(),
            MAX_MAPPED_LEN
        );
    }

    proptest! {
        #[test]
        fn mapping_is_injective_and_safe(
            a in proptest::collection::vec(any::<u8>(), 1..80),
            b in proptest::collection::vec(any::<u8>(), 1..80),
        ) {
            // ≤ 80 bytes map to ≤ 240: never shortened, so decodable.
            let (ma, mb) = (map_file_name(&a).unwrap(), map_file_name(&b).unwrap());
            prop_assert_eq!(a == b, ma == mb);
            prop_assert_eq!(decode(&ma), a);
            prop_assert!(!ma.starts_with('.'));
            prop_assert!(!ma.contains(['/', '\\', '\0', '~']));
            prop_assert!(inside(Path::new("/x"), &ma).is_some());
        }

        #[test]
        fn long_mappings_are_bounded_and_distinct(
            a in proptest::collection::vec(any::<u8>(), 60..400),
            b in proptest::collection::vec(any::<u8>(), 60..400),
        ) {
            let (ma, mb) = (map_file_name(&a).unwrap(), map_file_name(&b).unwrap());
            prop_assert_eq!(a == b, ma == mb);
            prop_assert!(ma.len() <= MAX_MAPPED_LEN);
            prop_assert!(!ma.starts_with('.'));
            prop_assert!(inside(Path::new("/x"), &ma).is_some());
            if let Some(cut) = ma.find('~') {
                // Shortened: the prefix is whole units of the full mapping.
                let prefix = decode(&ma[..cut]);
                prop_assert!(a.starts_with(&prefix));
            } else {
                prop_assert_eq!(decode(&ma), a);
            }
        }

        #[test]
        fn mapping_is_injective_for_similar_names(
            base in "[a-zA-Z%. ]{1,8}",
            tail in proptest::collection::vec(prop_oneof![Just(b'%'), Just(b'.'), Just(b'2'), Just(b'5'), Just(b'E'), any::<u8>()], 0..6),
        ) {
            let mut name = base.into_bytes();
            name.extend(&tail);
            prop_assert_eq!(decode(&map_file_name(&name).unwrap()), name);
        }
    }

    #[test]
    fn resolve_refuses_paths_outside_client_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().join("data")).unwrap();
        let hex = hex::encode(CLIENT);

        let good = storage.resolve(&format!("{hex}/a.txt")).unwrap();

        assert_eq!(good, storage.root().join(&hex).join("a.txt"));
        for bad in [
            "../etc/passwd".to_string(),
            format!("{hex}/../../x"),
            format!("{hex}/.."),
            format!("{hex}/a/b"),
            format!("{hex}/"),
            "/etc/passwd".to_string(),
            "abc/x".to_string(),
            hex,
        ] {
            assert!(
                matches!(
                    storage.resolve(&bad),
                    Err(StorageError::OutsideClientDir { .. })
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn commit_is_atomic_and_replaces_the_previous_version() {
        let (_dir, storage) = open();
        let dest = write_and_commit(&storage, b"a.txt", b"version one", None).await;
        let mut partial = storage.create_partial(CLIENT, b"a.txt").await.unwrap();
        partial.append(b"version ").await.unwrap();
        partial.append(&vec![b'2'; 300 * 1024]).await.unwrap();
        let finished = partial.finish().await.unwrap();

        let before_commit = fs::read(&dest).unwrap();
        let temp_durable = fs::metadata(partial.temp_path()).unwrap().len();
        let committed = partial.commit(None).await.unwrap();

        assert_eq!(before_commit, b"version one");
        assert_eq!(temp_durable, finished.len);
        assert_eq!(committed, dest);
        let content = fs::read(&dest).unwrap();
        assert_eq!(content.len() as u64, finished.len);
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&content)), finished.sha256);
        assert_eq!(partials(&storage), 0);
    }

    #[test]
    fn write_behind_hands_over_each_window_once() {
        const W: u64 = WRITE_BEHIND_WINDOW;
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();

        assert_eq!(WriteBehind::starting_at(0).next_end, W);
        assert_eq!(WriteBehind::starting_at(3 * W + 5).next_end, 4 * W);
        let mut behind = WriteBehind::starting_at(0);
        behind.advance(&file, W - 1);
        assert_eq!(behind.next_end, W);
        behind.advance(&file, 2 * W + W / 2);
        assert_eq!(behind.next_end, 3 * W);
        behind.advance(&file, 3 * W);
        assert_eq!(behind.next_end, 4 * W);
    }

    /// 20 MiB in uneven pieces crosses two write-behind windows: the pages dropped behind
    /// the writer must still be the file's content.
    #[tokio::test]
    async fn content_survives_write_behind_across_windows() {
        let (_dir, storage) = open();
        let mut partial = storage.create_partial(CLIENT, b"big.bin").await.unwrap();
        let mut expected = Vec::new();
        let mut n: u32 = 0;
        while expected.len() < 20 * 1024 * 1024 {
            n += 1;
            let piece: Vec<u8> = (0..(n % 7 + 1) * 37_000)
                .map(|i| (i ^ n.wrapping_mul(2_654_435_761)).to_le_bytes()[0])
                .collect();
            partial.append(&piece).await.unwrap();
            expected.extend_from_slice(&piece);
        }
        let finished = partial.finish().await.unwrap();
        let dest = partial.commit(None).await.unwrap();

        let content = fs::read(&dest).unwrap();
        assert_eq!(finished.len, expected.len() as u64);
        assert!(content == expected, "content differs after write-behind");
    }

    #[tokio::test]
    async fn destination_is_absent_until_commit() {
        let (_dir, storage) = open();
        let mut partial = storage.create_partial(CLIENT, b"new.bin").await.unwrap();
        partial.append(b"data").await.unwrap();
        partial.finish().await.unwrap();

        let visible_before = partial.destination().exists();
        let dest = partial.commit(None).await.unwrap();

        assert!(!visible_before);
        assert_eq!(fs::read(dest).unwrap(), b"data");
    }

    #[tokio::test]
    async fn keep_previous_renames_to_versioned_name() {
        let (_dir, storage) = open();
        write_and_commit(&storage, b"a.txt", b"one", None).await;

        let dest = write_and_commit(&storage, b"a.txt", b"two", Some(1)).await;

        assert_eq!(fs::read(&dest).unwrap(), b"two");
        let kept = dest.with_file_name("a.txt.~1~");
        assert_eq!(fs::read(kept).unwrap(), b"one");
        let relative = versioned_path(&Storage::relative_path(&CLIENT, b"a.txt").unwrap(), 1);
        assert!(storage.remove(&relative).await.unwrap());
        assert!(!storage.remove(&relative).await.unwrap());
    }

    #[tokio::test]
    async fn abort_and_drop_leave_no_temp_file() {
        let (_dir, storage) = open();
        let mut aborted = storage.create_partial(CLIENT, b"a").await.unwrap();
        aborted.append(b"x").await.unwrap();
        let aborted_temp = aborted.temp_path().to_path_buf();
        let dropped = storage.create_partial(CLIENT, b"b").await.unwrap();
        let dropped_temp = dropped.temp_path().to_path_buf();
        let existed = aborted_temp.exists() && dropped_temp.exists();

        aborted.abort().await.unwrap();
        drop(dropped);

        assert!(existed);
        assert!(!aborted_temp.exists());
        assert!(!dropped_temp.exists());
        assert_eq!(partials(&storage), 0);
    }

    #[tokio::test]
    async fn temp_files_are_private_and_hidden() {
        let (_dir, storage) = open();
        let partial = storage.create_partial(CLIENT, b"a").await.unwrap();

        let mode = fs::metadata(partial.temp_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        let name = partial
            .temp_path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();

        assert_eq!(mode, 0o600);
        assert!(name.starts_with(PARTIAL_PREFIX), "{name}");
        assert_eq!(partial.temp_path().parent(), partial.destination().parent());
        assert!(
            partial
                .relative_temp_path()
                .starts_with(&format!("{}/{PARTIAL_PREFIX}", hex::encode(CLIENT)))
        );
    }

    #[test]
    fn data_dir_readable_by_others_is_refused_with_the_chmod_fix() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();

        let err = Storage::open(&data).unwrap_err();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o750)).unwrap();
        let group_only = Storage::open(&data);

        assert!(
            matches!(err, StorageError::ReadableByOthers { mode: 0o755, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod o-rwx"), "{err}");
        assert!(group_only.is_ok(), "{:?}", group_only.err());
    }

    #[test]
    fn world_writable_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o777)).unwrap();

        let result = Storage::open(&data);

        let err = result.unwrap_err();
        assert!(
            matches!(err, StorageError::WorldWritable { mode: 0o777, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod o-w"), "{err}");
    }

    #[test]
    fn open_creates_private_dirs_and_probe_succeeds() {
        let dir = tempfile::tempdir().unwrap();

        let storage = Storage::open(dir.path().join("new")).unwrap();
        storage.probe_writable().unwrap();

        let mode = fs::metadata(storage.root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(fs::read_dir(storage.root()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn remove_leftovers_respects_age() {
        let (_dir, storage) = open();
        let partial = storage.create_partial(CLIENT, b"a").await.unwrap();
        std::mem::forget(partial);
        let stored = write_and_commit(&storage, b"keep.txt", b"k", None).await;

        let kept = storage.create_partial(CLIENT, b"b").await.unwrap();
        let keep = BTreeSet::from([kept.relative_temp_path().to_owned()]);
        let kept_temp = kept.temp_path().to_path_buf();
        std::mem::forget(kept);

        let young = storage
            .remove_leftovers(Duration::from_secs(3600), &keep)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let old = storage
            .remove_leftovers(Duration::from_millis(1), &keep)
            .await
            .unwrap();

        assert_eq!((young, old), (0, 1));
        assert_eq!(partials(&storage), 1);
        assert!(kept_temp.exists());
        assert!(stored.exists());
    }

    #[test]
    fn versioned_paths_split_back() {
        for (path, version) in [("ab/a.txt", 1), ("ab/x.~3~", 12), ("ab/b", u32::MAX)] {
            let versioned = versioned_path(path, version);
            assert_eq!(split_versioned_path(&versioned), Some((path, version)));
        }
        for not in [
            "a.txt",
            "a.txt.~~",
            "a.txt.~01~",
            "a.txt.~1",
            "a.txt~1~",
            ".~1~",
            "a.~x~",
            "a.~+1~",
            "a.~4294967296~",
        ] {
            assert_eq!(split_versioned_path(not), None, "{not}");
        }
    }

    #[test]
    fn unmapping_inverts_unshortened_mappings_only() {
        for name in [
            b"a.txt".as_slice(),
            b".hidden",
            b"CON",
            b"100%",
            b"caf\xc3\xa9",
        ] {
            let mapped = map_file_name(name).unwrap();
            assert_eq!(unmap_file_name(&mapped).as_deref(), Some(name), "{mapped}");
        }
        let shortened = map_file_name(&[b'a'; 300]).unwrap();
        assert_eq!(unmap_file_name(&shortened), None);
        // Not what the mapping writes: an unescaped leading dot, lowercase or broken escapes.
        for not in [".hidden", "%2e", "%4", "%zz", "a~b", "CON"] {
            assert_eq!(unmap_file_name(not), None, "{not}");
        }
    }

    #[tokio::test]
    async fn version_files_are_found_in_client_dirs_only() {
        let (_dir, storage) = open();
        let client_dir = storage.client_dir(&CLIENT);
        fs::create_dir_all(&client_dir).unwrap();
        for name in [
            "a.txt",
            "a.txt.~1~",
            "a.txt.~x~",
            ".cb-partial-1.~2~",
            "CON.~3~",
        ] {
            fs::write(client_dir.join(name), b"x").unwrap();
        }
        fs::create_dir(client_dir.join("d.~4~")).unwrap();
        let long = map_file_name(&[b'b'; 300]).unwrap();
        fs::write(client_dir.join(versioned_path(&long, 5)), b"x").unwrap();
        let upper = storage.root().join(hex::encode_upper(CLIENT));
        fs::create_dir(&upper).unwrap();
        fs::write(upper.join("u.~6~"), b"x").unwrap();
        fs::write(storage.root().join("root.~7~"), b"x").unwrap();

        let mut found = Vec::new();
        let mut rx = storage.version_files();
        while let Some(file) = rx.recv().await {
            found.push(file.unwrap());
        }
        found.sort_by_key(|f| f.version);

        let hex = hex::encode(CLIENT);
        assert_eq!(
            found,
            [
                VersionFile {
                    client: CLIENT,
                    path_name: format!("{hex}/a.txt.~1~"),
                    base_path_name: format!("{hex}/a.txt"),
                    version: 1,
                    file_name: Some(b"a.txt".to_vec()),
                },
                VersionFile {
                    client: CLIENT,
                    path_name: format!("{hex}/CON.~3~"),
                    base_path_name: format!("{hex}/CON"),
                    version: 3,
                    file_name: None,
                },
                VersionFile {
                    client: CLIENT,
                    path_name: format!("{hex}/{}", versioned_path(&long, 5)),
                    base_path_name: format!("{hex}/{long}"),
                    version: 5,
                    file_name: None,
                },
            ]
        );
    }

    fn open() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().join("data")).unwrap();
        (dir, storage)
    }

    async fn write_and_commit(
        storage: &Storage,
        name: &[u8],
        content: &[u8],
        keep: Option<u32>,
    ) -> PathBuf {
        let mut partial = storage.create_partial(CLIENT, name).await.unwrap();
        partial.append(content).await.unwrap();
        partial.commit(keep).await.unwrap()
    }

    fn partials(storage: &Storage) -> usize {
        fs::read_dir(storage.client_dir(&CLIENT))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(PARTIAL_PREFIX)
            })
            .count()
    }

    /// Inverse of the unshortened mapping, to prove injectivity.
    fn decode(mapped: &str) -> Vec<u8> {
        let bytes = mapped.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                out.push(u8::from_str_radix(&mapped[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        out
    }
}
