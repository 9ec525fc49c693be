//! Restore: a snapshot (or a path in it) into a target directory. Every blob is opened with
//! [`cyberbackup_core::repo::BlobOpener`] (seal and keyed ID checked); each file is written
//! to a temp name in its directory, fsynced and renamed into place, so no half-written or
//! unverified file ever has its final name. Files already correct at the target are skipped:
//! "correct" means a regular file with the snapshot's size and mtime (the restore sets the
//! mtime last, so an interrupted restore never leaves a match behind). Then symlinks, empty
//! directories, hard links, modes, times (directories last, after their contents) and, when
//! running as root, owners.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cyberbackup_core::repo::{BlobKind, EntryKind, Metadata, Timestamp, TreeEntry};
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
        let filter = Filter::new(filter)?;
        let id = self.resolve(snapshot).await?;
        let (_, snap) = self.snapshot(id).await?;
        let (entry_path, entry) = self.lookup(id, snap.root, subpath).await?;
        local(
            target,
            "cannot create the target directory",
            fs::create_dir_all(target),
        )?;
        let mut run = RestoreRun {
            filter,
            summary: RestoreSummary::default(),
            links: HashMap::new(),
            is_root: rustix::process::geteuid().is_root(),
        };
        match entry {
            Some(entry) if !matches!(entry.kind, EntryKind::Dir { .. }) => {
                let dest = target.join(OsStr::from_bytes(&entry.name));
                self.restore_entry(&mut run, &entry, &entry_path, &dest)
                    .await?;
            }
            Some(entry) => {
                let EntryKind::Dir { subtree } = entry.kind else {
                    return Ok(run.summary);
                };
                self.restore_dir(&mut run, subtree, &entry_path, target)
                    .await?;
                run.set_meta(target, &entry.meta, false)?;
            }
            None => {
                self.restore_dir(&mut run, snap.root, &entry_path, target)
                    .await?;
            }
        }
        Ok(run.summary)
    }

    /// Restores the contents of tree `tree` into the existing directory `dest`; returns
    /// whether anything was restored.
    fn restore_dir<'a>(
        &'a mut self,
        run: &'a mut RestoreRun,
        tree: cyberbackup_core::repo::BlobId,
        snapshot_path: &'a Path,
        dest: &'a Path,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<bool, V4ClientError>> + Send + 'a>>
    where
        R: 'a,
    {
        Box::pin(async move {
            let tree = self
                .tree(tree)
                .await
                .map_err(|err| not_restored(snapshot_path, err))?;
            let mut any = false;
            for entry in tree.entries() {
                let name = OsStr::from_bytes(&entry.name);
                let child_path = snapshot_path.join(name);
                if run.filter.excluded(&child_path) {
                    continue;
                }
                any |= self
                    .restore_entry(run, entry, &child_path, &dest.join(name))
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
    ) -> Result<bool, V4ClientError> {
        match &entry.kind {
            EntryKind::Dir { subtree } => {
                // Not `is_dir`: a symlink at the target is replaced, never followed.
                let existed = fs::symlink_metadata(dest).is_ok_and(|meta| meta.is_dir());
                if !existed {
                    remove_existing(dest)?;
                    local(dest, "cannot create the directory", fs::create_dir(dest))?;
                }
                let any = self.restore_dir(run, *subtree, snapshot_path, dest).await?;
                let keep = any || run.filter.included(snapshot_path);
                if !keep && !existed {
                    let _ = fs::remove_dir(dest);
                    return Ok(false);
                }
                run.set_meta(dest, &entry.meta, false)?;
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
                    if let Some(first) = run.links.get(&entry.meta.hardlink) {
                        if !same_file(first, dest) {
                            remove_existing(dest)?;
                            local(
                                dest,
                                "cannot create the hard link",
                                fs::hard_link(first, dest),
                            )?;
                        }
                        run.summary.hardlinks += 1;
                        return Ok(true);
                    }
                    run.links.insert(entry.meta.hardlink, dest.to_path_buf());
                }
                if is_correct(dest, &entry.meta) {
                    run.summary.files_skipped += 1;
                    return Ok(true);
                }
                let written = self.write_file(content, snapshot_path, dest).await?;
                run.summary.bytes_written += written;
                run.set_meta(dest, &entry.meta, false)?;
                run.summary.files_restored += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Writes the blobs to a temp file beside `dest`, fsyncs it and renames it over `dest`.
    async fn write_file(
        &mut self,
        content: &[cyberbackup_core::repo::BlobId],
        snapshot_path: &Path,
        dest: &Path,
    ) -> Result<u64, V4ClientError> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        let mut temp = local(
            dest,
            "cannot create a temp file for",
            tempfile::Builder::new()
                .prefix(".cb-restore-")
                .tempfile_in(dir),
        )?;
        let mut written = 0u64;
        // The next blob is asked for before this one is opened and written: the server reads
        // and sends it while the client decrypts and writes (one connection, one request in
        // flight, no waiting on both sides in turn).
        let Self { remote, opener, .. } = self;
        let mut sealed = match content.first() {
            Some(first) => remote
                .get_blob(*first)
                .await
                .map_err(|err| not_restored(snapshot_path, err))?,
            None => bytes::Bytes::new(),
        };
        for (index, id) in content.iter().enumerate() {
            let following = content.get(index + 1);
            let (fetched, stored) = tokio::join!(
                async {
                    match following {
                        Some(following) => Some(remote.get_blob(*following).await),
                        None => None,
                    }
                },
                async {
                    let plaintext = opener
                        .open(BlobKind::Data, id, &sealed)
                        .map_err(|source| super::corrupt(snapshot_path, source))?;
                    local(dest, "cannot write", temp.write_all(&plaintext))?;
                    Ok::<_, V4ClientError>(plaintext.len() as u64)
                }
            );
            written += stored?;
            if let Some(fetched) = fetched {
                sealed = fetched.map_err(|err| not_restored(snapshot_path, err))?;
            }
        }
        local(dest, "cannot fsync", temp.as_file().sync_all())?;
        remove_dir_in_the_way(dest)?;
        local(
            dest,
            "cannot rename into place",
            temp.persist(dest).map_err(|err| err.error),
        )?;
        Ok(written)
    }
}

struct RestoreRun {
    filter: Filter,
    summary: RestoreSummary,
    /// Hard-link group → the first restored path of the group.
    links: HashMap<u64, PathBuf>,
    is_root: bool,
}

impl RestoreRun {
    /// Owner (as root), mode (not for symlinks), extended attributes and times, in that
    /// order (chown clears set-id bits; times last).
    fn set_meta(
        &mut self,
        path: &Path,
        meta: &Metadata,
        symlink: bool,
    ) -> Result<(), V4ClientError> {
        if self.is_root {
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
                self.summary.warnings.push(format!(
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
