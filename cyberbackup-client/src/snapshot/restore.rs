//! Restore: a snapshot (or a path in it) into a target directory. Every blob is opened with
//! [`cyberbackup_core::repo::BlobOpener`] (seal and keyed ID checked); each file is written
//! to a temp name in its directory, fsynced and renamed into place, so no half-written or
//! unverified file ever has its final name. Files already correct at the target are skipped:
//! "correct" means a regular file with the snapshot's size and mtime (the restore sets the
//! mtime last, so an interrupted restore never leaves a match behind). Then symlinks, empty
//! directories, hard links, modes, times and, when running as root, owners.
//!
//! Written files are put in place in batches (up to [`BATCH_FILES`] files or [`BATCH_BYTES`]
//! bytes) on the blocking pool while the next files are fetched and written: one `syncfs`
//! makes every file of the batch durable, then each is renamed over its final name and
//! given its metadata. A file's bytes are therefore durable before its final name exists,
//! as with an `fsync` per file, for one round trip to the disk per batch instead of one per
//! small file. Directory metadata is applied once every file is in place (a rename into a
//! directory changes its mtime), children before parents; the restore returns only when all
//! of it is done.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cyberbackup_core::repo::{BlobId, BlobKind, EntryKind, Metadata, Timestamp, Tree, TreeEntry};
use cyberbackup_core::v4::client::OpFailure;
use globset::{Glob, GlobSet, GlobSetBuilder};
use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, XattrFlags, lsetxattr, utimensat};

use super::{RepoRemote, Repository};
use crate::v4::V4ClientError;

/// Which paths of the snapshot to restore (globs over the snapshot path, e.g. `/etc/**`, or
/// base names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreFilter {
    /// Only paths matching one of these (empty: everything).
    pub include: Vec<String>,
    /// Not paths matching one of these.
    pub exclude: Vec<String>,
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreSummary {
    /// Files written.
    pub files_restored: u64,
    /// Files already correct at the target, not written.
    pub files_skipped: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Metadata that could not be set (extended attributes the target refuses).
    pub warnings: Vec<String>,
}

/// Counters a running restore updates as it goes, for a progress display: read them from
/// another task while [`Repository::restore_with_progress`] runs.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    bytes: AtomicU64,
    files: AtomicU64,
}

impl RestoreProgress {
    /// Bytes of file content written so far.
    #[must_use]
    pub fn bytes_written(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Files restored or found already correct so far.
    #[must_use]
    pub fn files_done(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }
}

/// Files written before their batch is put in place.
const BATCH_FILES: usize = 256;
/// Bytes written before their batch is put in place.
const BATCH_BYTES: u64 = 32 << 20;
/// Batches being synced and put in place at once.
const BATCHES_IN_FLIGHT: usize = 2;

struct Filter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl Filter {
    fn new(filter: &RestoreFilter) -> Result<Self, V4ClientError> {
        let include = (!filter.include.is_empty())
            .then(|| globs(&filter.include))
            .transpose()?;
        Ok(Self {
            include,
            exclude: globs(&filter.exclude)?,
        })
    }

    fn excluded(&self, snapshot_path: &Path) -> bool {
        let matches = |set: &GlobSet| {
            set.is_match(snapshot_path)
                || snapshot_path
                    .file_name()
                    .is_some_and(|name| set.is_match(name))
        };
        matches(&self.exclude)
    }

    /// Whether a file at `path` is restored (directories are entered whatever the include
    /// rules say, and created only when something below them is).
    fn included(&self, snapshot_path: &Path) -> bool {
        self.include.as_ref().is_none_or(|set| {
            set.is_match(snapshot_path)
                || snapshot_path
                    .file_name()
                    .is_some_and(|name| set.is_match(name))
        })
    }
}

fn globs(patterns: &[String]) -> Result<GlobSet, V4ClientError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(Glob::new(pattern).map_err(|err| V4ClientError::Usage {
            message: format!("invalid pattern {pattern:?}: {err}"),
        })?);
    }
    builder.build().map_err(|err| V4ClientError::Usage {
        message: format!("invalid patterns: {err}"),
    })
}

impl<R: RepoRemote> Repository<R> {
    /// Restores `subpath` (`/` for everything) of `snapshot` (an ID, a unique prefix or
    /// `latest`) into `target`: a directory's contents go into `target`, a file becomes
    /// `target/<name>`.
    ///
    /// # Errors
    /// [`V4ClientError::SnapshotNotFound`], [`V4ClientError::PathNotInSnapshot`];
    /// [`V4ClientError::Corrupt`] naming the file whose blob failed verification (nothing is
    /// written under its name); [`V4ClientError::Local`] when the target cannot be written.
    pub async fn restore(
        &mut self,
        snapshot: &str,
        subpath: &[u8],
        target: &Path,
        filter: &RestoreFilter,
    ) -> Result<RestoreSummary, V4ClientError> {
        self.restore_with_progress(
            snapshot,
            subpath,
            target,
            filter,
            &RestoreProgress::default(),
        )
        .await
    }

    /// [`Self::restore`], counting what it writes in `progress` as it goes.
    ///
    /// # Errors
    /// As [`Self::restore`].
    pub async fn restore_with_progress(
        &mut self,
        snapshot: &str,
        subpath: &[u8],
        target: &Path,
        filter: &RestoreFilter,
        progress: &RestoreProgress,
    ) -> Result<RestoreSummary, V4ClientError> {
        let filter = Filter::new(filter)?;
        let id = self.resolve(snapshot).await?;
        let (_, snap) = self.snapshot(id).await?;
        let (entry_path, entry) = self.lookup(id, snap.root, subpath).await?;
        local(
            target,
            "cannot create the target directory",
            fs::create_dir_all(target),
        )?;
        // Absolute once, so that no temp file's creation looks up the working directory.
        let target = &local(target, "cannot resolve", std::path::absolute(target))?;
        let mut run = RestoreRun {
            filter,
            summary: RestoreSummary::default(),
            links: HashMap::new(),
            is_root: rustix::process::geteuid().is_root(),
            pending: Vec::new(),
            pending_bytes: 0,
            finishing: tokio::task::JoinSet::new(),
            dirs: Vec::new(),
        };
        let walked = self
            .restore_root(&mut run, entry, &entry_path, target, snap.root, progress)
            .await;
        if let Err(err) = walked {
            // Files already written finish (or fail) before the error is reported, so no
            // temp file outlives the restore.
            let _ = run.wait_for_all_finishing().await;
            return Err(err);
        }
        run.finish().await?;
        Ok(run.summary)
    }

    /// Restores the entry `subpath` resolved to (`None`: the whole snapshot from `root`).
    async fn restore_root(
        &mut self,
        run: &mut RestoreRun,
        entry: Option<TreeEntry>,
        entry_path: &Path,
        target: &Path,
        root: BlobId,
        progress: &RestoreProgress,
    ) -> Result<(), V4ClientError> {
        match entry {
            Some(entry) if !matches!(entry.kind, EntryKind::Dir { .. }) => {
                let dest = target.join(OsStr::from_bytes(&entry.name));
                let mut ahead = Prefetch::default();
                self.restore_entry(run, &entry, entry_path, &dest, &mut ahead, progress)
                    .await?;
            }
            Some(entry) => {
                if let EntryKind::Dir { subtree } = entry.kind {
                    self.restore_dir(run, subtree, entry_path, target, progress)
                        .await?;
                    run.dirs.push((target.to_path_buf(), entry.meta));
                }
            }
            None => {
                self.restore_dir(run, root, entry_path, target, progress)
                    .await?;
            }
        }
        Ok(())
    }

    /// Restores the contents of tree `tree` into the existing directory `dest`; returns
    /// whether anything was restored.
    fn restore_dir<'a>(
        &'a mut self,
        run: &'a mut RestoreRun,
        tree: BlobId,
        snapshot_path: &'a Path,
        dest: &'a Path,
        progress: &'a RestoreProgress,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<bool, V4ClientError>> + Send + 'a>>
    where
        R: 'a,
    {
        Box::pin(async move {
            let tree = self
                .tree(tree)
                .await
                .map_err(|err| not_restored(snapshot_path, err))?;
            let mut ahead = Prefetch::of_small_files(run, &tree, snapshot_path, dest);
            let mut any = false;
            for entry in tree.entries() {
                let name = OsStr::from_bytes(&entry.name);
                let child_path = snapshot_path.join(name);
                if run.filter.excluded(&child_path) {
                    continue;
                }
                any |= self
                    .restore_entry(
                        run,
                        entry,
                        &child_path,
                        &dest.join(name),
                        &mut ahead,
                        progress,
                    )
                    .await?;
            }
            Ok(any)
        })
    }

    async fn restore_entry(
        &mut self,
        run: &mut RestoreRun,
        entry: &TreeEntry,
        snapshot_path: &Path,
        dest: &Path,
        ahead: &mut Prefetch,
        progress: &RestoreProgress,
    ) -> Result<bool, V4ClientError> {
        match &entry.kind {
            EntryKind::Dir { subtree } => {
                // Not `is_dir`: a symlink at the target is replaced, never followed.
                let existed = fs::symlink_metadata(dest).is_ok_and(|meta| meta.is_dir());
                if !existed {
                    remove_existing(dest)?;
                    local(dest, "cannot create the directory", fs::create_dir(dest))?;
                }
                let any = self
                    .restore_dir(run, *subtree, snapshot_path, dest, progress)
                    .await?;
                let keep = any || run.filter.included(snapshot_path);
                if !keep && !existed {
                    let _ = fs::remove_dir(dest);
                    return Ok(false);
                }
                run.dirs.push((dest.to_path_buf(), entry.meta.clone()));
                run.summary.dirs += 1;
                Ok(true)
            }
            _ if !run.filter.included(snapshot_path) => Ok(false),
            EntryKind::Symlink { target } => {
                remove_existing(dest)?;
                local(
                    dest,
                    "cannot create the symlink",
                    std::os::unix::fs::symlink(OsStr::from_bytes(target), dest),
                )?;
                run.set_meta(dest, &entry.meta, true)?;
                run.summary.symlinks += 1;
                Ok(true)
            }
            EntryKind::File { content } => {
                if entry.meta.hardlink != 0 {
                    if let Some(first) = run.links.get(&entry.meta.hardlink).cloned() {
                        // The first path of the group must be in place before it is linked.
                        run.wait_for_all_finishing().await?;
                        if !same_file(&first, dest) {
                            remove_existing(dest)?;
                            local(
                                dest,
                                "cannot create the hard link",
                                fs::hard_link(&first, dest),
                            )?;
                        }
                        run.summary.hardlinks += 1;
                        return Ok(true);
                    }
                    run.links.insert(entry.meta.hardlink, dest.to_path_buf());
                }
                if is_correct(dest, &entry.meta) {
                    run.summary.files_skipped += 1;
                    progress.files.fetch_add(1, Ordering::Relaxed);
                    return Ok(true);
                }
                let (temp, written) = self
                    .write_file(content, snapshot_path, dest, ahead, progress)
                    .await?;
                run.summary.bytes_written += written;
                run.summary.files_restored += 1;
                progress.files.fetch_add(1, Ordering::Relaxed);
                run.finish_file(temp, dest, entry.meta.clone(), written)
                    .await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Writes the verified blobs to a temp file beside `dest`; [`RestoreRun::finish_file`]
    /// puts it in place. A one-blob file takes its blob from `ahead`; a larger one fetches
    /// [`FETCH_WINDOW`] blobs at a time, the next window in flight while the current one is
    /// opened and written.
    async fn write_file(
        &mut self,
        content: &[BlobId],
        snapshot_path: &Path,
        dest: &Path,
        ahead: &mut Prefetch,
        progress: &RestoreProgress,
    ) -> Result<(tempfile::NamedTempFile, u64), V4ClientError> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        let mut temp = local(
            dest,
            "cannot create a temp file for",
            tempfile::Builder::new()
                .prefix(".cb-restore-")
                .tempfile_in(dir),
        )?;
        let Self { remote, opener, .. } = self;
        let mut write = |ids: &[BlobId], sealed: &[Bytes]| -> Result<u64, V4ClientError> {
            let mut written = 0;
            for (id, sealed) in ids.iter().zip(sealed) {
                let plaintext = opener
                    .open(BlobKind::Data, id, sealed)
                    .map_err(|source| super::corrupt(snapshot_path, source))?;
                local(dest, "cannot write", temp.write_all(&plaintext))?;
                written += plaintext.len() as u64;
                progress
                    .bytes
                    .fetch_add(plaintext.len() as u64, Ordering::Relaxed);
            }
            Ok(written)
        };
        if let [only] = content {
            let sealed = ahead
                .take(remote, *only)
                .await
                .map_err(|err| not_restored(snapshot_path, err))?;
            let written = write(content, &[sealed])?;
            return Ok((temp, written));
        }
        let windows: Vec<&[BlobId]> = content.chunks(FETCH_WINDOW).collect();
        let mut sealed = match windows.first() {
            Some(first) => remote
                .get_blobs(first)
                .await
                .map_err(|err| not_restored(snapshot_path, err))?,
            None => Vec::new(),
        };
        let mut written = 0u64;
        for (index, window) in windows.iter().enumerate() {
            let following = windows.get(index + 1);
            let (fetched, stored) = tokio::join!(
                async {
                    match following {
                        Some(following) => Some(remote.get_blobs(following).await),
                        None => None,
                    }
                },
                async { write(window, &sealed) }
            );
            written += stored?;
            if let Some(fetched) = fetched {
                sealed = fetched.map_err(|err| not_restored(snapshot_path, err))?;
            }
        }
        Ok((temp, written))
    }
}

/// Blobs fetched per request window: a window of sealed blobs (at most 8 MiB each) is the
/// restore's buffer, with the next window in flight.
const FETCH_WINDOW: usize = 8;

/// The one-blob files of one directory that the restore will write, fetched
/// [`FETCH_WINDOW`] at a time ahead of their writing (a directory of small files costs a
/// few round trips, not one per file).
#[derive(Default)]
struct Prefetch {
    upcoming: std::collections::VecDeque<BlobId>,
    ready: HashMap<BlobId, Bytes>,
}

impl Prefetch {
    /// The contents of `tree`'s one-blob files the filter keeps and that are not already
    /// correct at the target, in order (a guess: a blob never asked for is dropped).
    fn of_small_files(run: &RestoreRun, tree: &Tree, snapshot_path: &Path, dest: &Path) -> Self {
        let upcoming = tree
            .entries()
            .iter()
            .filter_map(|entry| {
                let EntryKind::File { content } = &entry.kind else {
                    return None;
                };
                let [only] = content.as_slice() else {
                    return None;
                };
                let name = OsStr::from_bytes(&entry.name);
                let child = snapshot_path.join(name);
                let wanted = !run.filter.excluded(&child)
                    && run.filter.included(&child)
                    && !is_correct(&dest.join(name), &entry.meta);
                wanted.then_some(*only)
            })
            .collect();
        Self {
            upcoming,
            ready: HashMap::new(),
        }
    }

    /// Blob `id`: fetched with the next window of upcoming blobs when it is one of them,
    /// else alone. A refusal inside a window is not this file's: the blob is then asked
    /// for alone, so an error names the file it belongs to.
    async fn take<R: RepoRemote>(
        &mut self,
        remote: &mut R,
        id: BlobId,
    ) -> Result<Bytes, V4ClientError> {
        if let Some(sealed) = self.ready.remove(&id) {
            return Ok(sealed);
        }
        while self.upcoming.front().is_some_and(|front| *front != id) {
            self.upcoming.pop_front();
        }
        if !self.upcoming.is_empty() {
            let window: Vec<BlobId> = std::iter::from_fn(|| self.upcoming.pop_front())
                .take(FETCH_WINDOW)
                .collect();
            match remote.get_blobs(&window).await {
                Ok(blobs) => self.ready.extend(window.into_iter().zip(blobs)),
                Err(V4ClientError::Failed(_)) => {}
                Err(fatal) => return Err(fatal),
            }
            if let Some(sealed) = self.ready.remove(&id) {
                return Ok(sealed);
            }
        }
        remote.get_blob(id).await
    }
}

struct RestoreRun {
    filter: Filter,
    summary: RestoreSummary,
    /// Hard-link group → the first restored path of the group.
    links: HashMap<u64, PathBuf>,
    is_root: bool,
    /// Written files whose batch has not started (see the module docs), and their bytes.
    pending: Vec<WrittenFile>,
    pending_bytes: u64,
    /// Batches being synced, renamed into place and given their metadata; each yields the
    /// warnings of its metadata.
    finishing: tokio::task::JoinSet<Result<Vec<String>, V4ClientError>>,
    /// Directories restored, children before parents: their metadata is applied last.
    dirs: Vec<(PathBuf, Metadata)>,
}

/// A file written to its temp name, waiting for its batch.
struct WrittenFile {
    temp: tempfile::TempPath,
    dest: PathBuf,
    meta: Metadata,
}

impl RestoreRun {
    /// Queues a written temp file of `len` bytes to be put in place with its batch, which
    /// starts when it is full.
    async fn finish_file(
        &mut self,
        temp: tempfile::NamedTempFile,
        dest: &Path,
        meta: Metadata,
        len: u64,
    ) -> Result<(), V4ClientError> {
        self.pending.push(WrittenFile {
            temp: temp.into_temp_path(),
            dest: dest.to_path_buf(),
            meta,
        });
        self.pending_bytes += len;
        if self.pending.len() >= BATCH_FILES || self.pending_bytes >= BATCH_BYTES {
            self.start_batch().await?;
        }
        Ok(())
    }

    /// Puts the pending files in place in the background, after waiting for a batch when
    /// [`BATCHES_IN_FLIGHT`] are running.
    async fn start_batch(&mut self) -> Result<(), V4ClientError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.finishing.len() >= BATCHES_IN_FLIGHT {
            self.wait_for_one_finishing().await?;
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let is_root = self.is_root;
        self.finishing
            .spawn_blocking(move || put_in_place(batch, is_root));
        Ok(())
    }

    async fn wait_for_one_finishing(&mut self) -> Result<(), V4ClientError> {
        if let Some(done) = self.finishing.join_next().await {
            let warnings = done.map_err(|err| V4ClientError::Local {
                what: "a restore task failed for",
                path: PathBuf::from("."),
                source: io::Error::other(err),
            })??;
            self.summary.warnings.extend(warnings);
        }
        Ok(())
    }

    /// Puts every written file in place and waits until all are.
    async fn wait_for_all_finishing(&mut self) -> Result<(), V4ClientError> {
        self.start_batch().await?;
        while !self.finishing.is_empty() {
            self.wait_for_one_finishing().await?;
        }
        Ok(())
    }

    /// Waits for every file to be in place, then applies the directories' metadata.
    async fn finish(&mut self) -> Result<(), V4ClientError> {
        self.wait_for_all_finishing().await?;
        for (dir, meta) in std::mem::take(&mut self.dirs) {
            self.set_meta(&dir, &meta, false)?;
        }
        Ok(())
    }

    fn set_meta(
        &mut self,
        path: &Path,
        meta: &Metadata,
        symlink: bool,
    ) -> Result<(), V4ClientError> {
        apply_meta(
            path,
            meta,
            symlink,
            self.is_root,
            &mut self.summary.warnings,
        )
    }
}

/// One batch: a `syncfs` of each file system its files are on (their bytes durable), then
/// each renamed over its final name and given its metadata.
fn put_in_place(batch: Vec<WrittenFile>, is_root: bool) -> Result<Vec<String>, V4ClientError> {
    let mut synced = Vec::new();
    let mut last_dir: Option<&Path> = None;
    for file in &batch {
        // One stat per directory: a batch's files mostly share a few.
        let dir = file.dest.parent();
        if dir.is_some() && dir == last_dir {
            continue;
        }
        last_dir = dir;
        let dev = local(&file.dest, "cannot stat", fs::metadata(&file.temp))?.dev();
        if !synced.contains(&dev) {
            let handle = local(&file.dest, "cannot open", fs::File::open(&file.temp))?;
            local(
                &file.dest,
                "cannot sync the file system of",
                rustix::fs::syncfs(&handle).map_err(io::Error::from),
            )?;
            synced.push(dev);
        }
    }
    let mut warnings = Vec::new();
    for WrittenFile { temp, dest, meta } in batch {
        remove_dir_in_the_way(&dest)?;
        local(
            &dest,
            "cannot rename into place",
            temp.persist(&dest).map_err(|err| err.error),
        )?;
        apply_meta(&dest, &meta, false, is_root, &mut warnings)?;
    }
    Ok(warnings)
}

/// Owner (as root), mode (not for symlinks), extended attributes and times, in that
/// order (chown clears set-id bits; times last); an extended attribute the target refuses
/// is a warning in `warnings`.
fn apply_meta(
    path: &Path,
    meta: &Metadata,
    symlink: bool,
    is_root: bool,
    warnings: &mut Vec<String>,
) -> Result<(), V4ClientError> {
    if is_root {
        local(
            path,
            "cannot set the owner of",
            std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)),
        )?;
    }
    if !symlink {
        let mode = fs::Permissions::from_mode(meta.mode & 0o7777);
        local(
            path,
            "cannot set the mode of",
            fs::set_permissions(path, mode),
        )?;
    }
    for xattr in &meta.xattrs {
        let name = OsStr::from_bytes(&xattr.name);
        if let Err(err) = lsetxattr(path, name, &xattr.value, XattrFlags::empty()) {
            warnings.push(format!(
                "{}: cannot set the extended attribute {}: {err}",
                path.display(),
                String::from_utf8_lossy(&xattr.name)
            ));
        }
    }
    let times = Timestamps {
        last_access: timespec(meta.mtime),
        last_modification: timespec(meta.mtime),
    };
    local(
        path,
        "cannot set the times of",
        utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from),
    )
}

fn timespec(time: Timestamp) -> Timespec {
    Timespec {
        tv_sec: time.secs,
        tv_nsec: i64::from(time.nanos),
    }
}

/// The documented skip rule: a regular file with the snapshot's size and mtime.
fn is_correct(dest: &Path, meta: &Metadata) -> bool {
    fs::symlink_metadata(dest).is_ok_and(|found| {
        found.is_file()
            && found.size() == meta.size
            && found.mtime() == meta.mtime.secs
            && found.mtime_nsec() == i64::from(meta.mtime.nanos)
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn remove_existing(dest: &Path) -> Result<(), V4ClientError> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => local(dest, "cannot replace", fs::remove_dir_all(dest)),
        Ok(_) => local(dest, "cannot replace", fs::remove_file(dest)),
        Err(_) => Ok(()),
    }
}

fn remove_dir_in_the_way(dest: &Path) -> Result<(), V4ClientError> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => local(dest, "cannot replace", fs::remove_dir_all(dest)),
        _ => Ok(()),
    }
}

fn local<T>(path: &Path, what: &'static str, result: io::Result<T>) -> Result<T, V4ClientError> {
    result.map_err(|source| V4ClientError::Local {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// A refusal of the server (a blob or tree it cannot provide: damaged storage) or a tree
/// that does not verify, while restoring `path`, with the path named, so the user knows
/// which file or directory is lost; other errors as they are.
fn not_restored(path: &Path, err: V4ClientError) -> V4ClientError {
    match err {
        V4ClientError::Failed(OpFailure::Refused { code, message }) => {
            V4ClientError::Failed(OpFailure::Refused {
                code,
                message: format!(
                    "{}: {message}; it was not restored under its name",
                    path.display()
                ),
            })
        }
        V4ClientError::Repo { context, source } => V4ClientError::Repo {
            context: format!("{}: {context}", path.display()),
            source,
        },
        other => other,
    }
}
