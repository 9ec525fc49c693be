//! The walk of a backup, on its own thread: stats and reads the backup paths, cuts files
//! into chunks and computes their keyed IDs, builds the trees bottom-up and sends every blob
//! (and every reused blob ID) to the upload side over a channel bounded in bytes
//! ([`CHANNEL_BYTES`]), so a slow upload stops the reading (back-pressure) and memory stays
//! at a few chunks, while the walk of unchanged files (small messages) runs on during a HAVE
//! round trip.
//!
//! Names stay bytes from `read_dir` to the tree (`OsStrExt`), never lossy strings. Files whose
//! size, mtime and ctime equal their parent-snapshot entry are not read: their content IDs
//! are reused (and confirmed by HAVE on the upload side).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use std::sync::Arc;

use bytes::Bytes;
use cyberbackup_core::repo::limits::{MAX_XATTR_VALUE_BYTES, MAX_XATTRS};
use cyberbackup_core::repo::{
    BlobId, BlobKind, BlobSealer, Chunker, EntryKind, Metadata, RepoError, Timestamp, Tree,
    TreeEntry, Xattr,
};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::exclude::Excluder;

/// Most bytes the messages waiting in the channel take (a blob its plaintext, a reused file
/// its IDs, a path its length, each message 64 more): a few chunks, or the messages of
/// thousands of unchanged files, so the walk runs on while the upload side awaits a HAVE.
pub(super) const CHANNEL_BYTES: usize = 4 << 20;

/// Bytes read from a file at a time.
const READ_LEN: usize = 1 << 20;

/// A message in the channel with the room it takes, given back when the upload side drops it.
pub(super) type Queued = (WalkMsg, OwnedSemaphorePermit);

/// The walk's end of the channel to the upload side.
pub(super) struct WalkSender {
    tx: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    runtime: Handle,
}

/// The channel between the walk (its thread blocks on `runtime` while the channel is full)
/// and the upload side.
pub(super) fn channel(runtime: Handle) -> (WalkSender, mpsc::UnboundedReceiver<Queued>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(CHANNEL_BYTES));
    (WalkSender { tx, room, runtime }, rx)
}

impl WalkSender {
    /// Waits for room for `msg`, then queues it; an error when the upload side hung up.
    fn send(&self, msg: WalkMsg) -> Result<(), Stop> {
        let cost = u32::try_from(msg.cost().min(CHANNEL_BYTES)).unwrap_or(u32::MAX);
        let room = self
            .runtime
            .block_on(Arc::clone(&self.room).acquire_many_owned(cost))
            .map_err(|_| Stop::Hangup)?;
        self.tx.send((msg, room)).map_err(|_| Stop::Hangup)
    }
}

/// What the walk tells the upload side, in order.
#[derive(Debug)]
pub(super) enum WalkMsg {
    /// The pre-scan's totals (files and bytes to look at).
    Total { files: u64, bytes: u64 },
    /// A blob whose ID the walk computed (a chunk of a file, or a tree).
    Blob {
        kind: BlobKind,
        id: BlobId,
        plaintext: Bytes,
    },
    /// Content IDs reused from the parent snapshot (the server must still have them).
    Reused(Vec<BlobId>),
    /// The walk needs a parent tree; the upload side fetches it and answers (`None` when it
    /// cannot be had: the walk then reads every file below it).
    NeedTree {
        id: BlobId,
        reply: std::sync::mpsc::SyncSender<Option<Tree>>,
    },
    /// One more file done.
    FileDone {
        path: PathBuf,
        files_done: u64,
        bytes_done: u64,
    },
    /// Something was skipped: `partial` when it was unreadable (the run is then partial),
    /// not for sockets, FIFOs and devices (a note).
    Skipped { message: String, partial: bool },
    /// The end: the root tree and the counters, or a fatal error.
    Done(Result<WalkOutcome, RepoError>),
}

impl WalkMsg {
    /// The bytes the message holds, for the channel's bound.
    fn cost(&self) -> usize {
        64 + match self {
            Self::Blob { plaintext, .. } => plaintext.len(),
            Self::Reused(ids) => ids.len() * 32,
            Self::FileDone { path, .. } => path.as_os_str().len(),
            Self::Skipped { message, .. } => message.len(),
            Self::Total { .. } | Self::NeedTree { .. } | Self::Done(_) => 0,
        }
    }
}

/// Counters of a finished walk.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct WalkOutcome {
    pub root: BlobId,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub bytes_read: u64,
}

/// The backup paths as a hierarchy from `/`: the walk backs up each marked path whole and
/// records the directories above it with their own metadata (as restic does).
#[derive(Debug, Default)]
pub(super) struct PathSet {
    children: BTreeMap<Vec<u8>, Self>,
    target: bool,
}

impl PathSet {
    /// The absolute, normalised paths (`.` and `..` resolved lexically, symlinks not
    /// followed), sorted, without any path below another.
    pub(super) fn new(paths: &[PathBuf]) -> io::Result<(Self, Vec<Vec<u8>>)> {
        let mut set = Self::default();
        let mut list = Vec::new();
        for path in paths {
            let mut parts: Vec<Vec<u8>> = Vec::new();
            for component in std::path::absolute(path)?.components() {
                match component {
                    Component::Normal(name) => parts.push(name.as_bytes().to_vec()),
                    Component::ParentDir => {
                        parts.pop();
                    }
                    Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                }
            }
            let mut node = &mut set;
            for part in &parts {
                if node.target {
                    break;
                }
                node = node.children.entry(part.clone()).or_default();
            }
            if !node.target {
                node.target = true;
                node.children.clear();
            }
            list.push([b"/".as_slice(), &parts.join(&b'/')].concat());
        }
        list.sort();
        list.dedup();
        Ok((set, list))
    }
}

/// The walk's state (one per backup, on its own thread).
pub(super) struct Walker {
    tx: WalkSender,
    ids: BlobSealer,
    chunker: Chunker,
    excluder: Excluder,
    hardlinks: HashMap<(u64, u64), (u64, Vec<BlobId>)>,
    outcome: WalkOutcome,
    files_done: u64,
    buf: Vec<u8>,
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
}

/// Stops the walk: the upload side hung up (it failed), or the format refused something.
#[derive(Debug)]
pub(super) enum Stop {
    Hangup,
    Repo(RepoError),
}

impl From<RepoError> for Stop {
    fn from(err: RepoError) -> Self {
        Self::Repo(err)
    }
}

impl Walker {
    pub(super) fn new(
        tx: WalkSender,
        ids: BlobSealer,
        chunker: Chunker,
        excluder: Excluder,
    ) -> Self {
        Self {
            tx,
            ids,
            chunker,
            excluder,
            hardlinks: HashMap::new(),
            outcome: WalkOutcome::default(),
            files_done: 0,
            buf: vec![0; READ_LEN],
            users: owner_names(Path::new("/etc/passwd")),
            groups: owner_names(Path::new("/etc/group")),
        }
    }

    /// Runs the walk to its end and sends [`WalkMsg::Done`].
    pub(super) fn run(mut self, set: &PathSet, parent_root: Option<BlobId>) {
        let (files, bytes) = self.prescan(Path::new("/"), set);
        if self.send(WalkMsg::Total { files, bytes }).is_err() {
            return;
        }
        let result = match self.virtual_dir(Path::new("/"), set, parent_root) {
            Ok(root) => Ok(WalkOutcome {
                root,
                ..self.outcome
            }),
            Err(Stop::Repo(err)) => Err(err),
            Err(Stop::Hangup) => return,
        };
        let _ = self.send(WalkMsg::Done(result));
    }

    fn send(&self, msg: WalkMsg) -> Result<(), Stop> {
        self.tx.send(msg)
    }

    /// Counts the files and bytes the walk will look at (same exclude rules).
    fn prescan(&self, path: &Path, set: &PathSet) -> (u64, u64) {
        if set.target {
            let Ok(meta) = fs::symlink_metadata(path) else {
                return (0, 0);
            };
            return self.prescan_entry(path, &meta, meta.dev());
        }
        set.children
            .iter()
            .fold((0, 0), |(files, bytes), (name, child)| {
                let (f, b) = self.prescan(&path.join(OsStr::from_bytes(name)), child);
                (files + f, bytes + b)
            })
    }

    fn prescan_entry(&self, path: &Path, meta: &fs::Metadata, root_dev: u64) -> (u64, u64) {
        if meta.is_file() {
            return (1, meta.len());
        }
        if !meta.is_dir() || self.excluder.is_tagged_cache(path) {
            return (0, 0);
        }
        let Ok(names) = sorted_names(path) else {
            return (0, 0);
        };
        names.iter().fold((0, 0), |(files, bytes), name| {
            let child = path.join(OsStr::from_bytes(name));
            match fs::symlink_metadata(&child) {
                Ok(meta)
                    if !self.excluder.is_excluded(&child)
                        && !self.excluder.crosses_file_system(root_dev, meta.dev()) =>
                {
                    let (f, b) = self.prescan_entry(&child, &meta, root_dev);
                    (files + f, bytes + b)
                }
                _ => (files, bytes),
            }
        })
    }

    /// A directory above the backup paths: its real metadata, only the listed children.
    fn virtual_dir(
        &mut self,
        path: &Path,
        set: &PathSet,
        parent: Option<BlobId>,
    ) -> Result<BlobId, Stop> {
        let parent_tree = self.parent_tree(parent)?;
        let mut entries = Vec::new();
        for (name, child) in &set.children {
            let child_path = path.join(OsStr::from_bytes(name));
            let parent_entry = parent_tree.as_ref().and_then(|tree| tree.get(name));
            let entry = if child.target {
                match fs::symlink_metadata(&child_path) {
                    Ok(meta) => {
                        let dev = meta.dev();
                        self.entry(&child_path, name, &meta, parent_entry, dev)?
                    }
                    Err(err) => self.unreadable(&child_path, &err)?,
                }
            } else {
                let meta = match fs::metadata(&child_path) {
                    Ok(meta) if meta.is_dir() => meta,
                    Ok(_) => {
                        self.unreadable::<()>(&child_path, &io::Error::other("not a directory"))?;
                        continue;
                    }
                    Err(err) => {
                        self.unreadable::<()>(&child_path, &err)?;
                        continue;
                    }
                };
                let subtree = self.virtual_dir(&child_path, child, parent_subtree(parent_entry))?;
                self.outcome.dirs += 1;
                Some(TreeEntry {
                    name: name.clone(),
                    kind: EntryKind::Dir { subtree },
                    meta: metadata_of(&meta),
                })
            };
            entries.extend(entry);
        }
        self.seal_tree(entries)
    }

    /// One entry of a backed-up directory (or a backup path itself).
    fn entry(
        &mut self,
        path: &Path,
        name: &[u8],
        meta: &fs::Metadata,
        parent: Option<&TreeEntry>,
        root_dev: u64,
    ) -> Result<Option<TreeEntry>, Stop> {
        let file_type = meta.file_type();
        let mut entry_meta = Metadata {
            user: self.users.get(&meta.uid()).cloned().unwrap_or_default(),
            group: self.groups.get(&meta.gid()).cloned().unwrap_or_default(),
            xattrs: xattrs_of(path),
            ..metadata_of(meta)
        };
        let kind = if file_type.is_dir() {
            let subtree = self.dir(path, parent_subtree(parent), root_dev)?;
            self.outcome.dirs += 1;
            EntryKind::Dir { subtree }
        } else if file_type.is_symlink() {
            match fs::read_link(path) {
                Ok(target) => EntryKind::Symlink {
                    target: target.as_os_str().as_bytes().to_vec(),
                },
                Err(err) => return self.unreadable(path, &err),
            }
        } else if file_type.is_file() {
            let Some(content) = self.file(path, meta, &mut entry_meta, parent)? else {
                return Ok(None);
            };
            EntryKind::File { content }
        } else {
            let what = if file_type.is_socket() {
                "a socket"
            } else if file_type.is_fifo() {
                "a FIFO"
            } else {
                "a device"
            };
            self.send(WalkMsg::Skipped {
                message: format!("{}: skipped, {what} is not backed up", path.display()),
                partial: false,
            })?;
            return Ok(None);
        };
        Ok(Some(TreeEntry {
            name: name.to_vec(),
            kind,
            meta: entry_meta,
        }))
    }

    fn dir(&mut self, path: &Path, parent: Option<BlobId>, root_dev: u64) -> Result<BlobId, Stop> {
        if self.excluder.is_tagged_cache(path) {
            return self.seal_tree(Vec::new());
        }
        let names = match sorted_names(path) {
            Ok(names) => names,
            Err(err) => {
                self.unreadable::<()>(path, &err)?;
                return self.seal_tree(Vec::new());
            }
        };
        let parent_tree = self.parent_tree(parent)?;
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let child = path.join(OsStr::from_bytes(&name));
            if self.excluder.is_excluded(&child) {
                continue;
            }
            let meta = match fs::symlink_metadata(&child) {
                Ok(meta) => meta,
                Err(err) => {
                    self.unreadable::<()>(&child, &err)?;
                    continue;
                }
            };
            if self.excluder.crosses_file_system(root_dev, meta.dev()) {
                continue;
            }
            let parent_entry = parent_tree.as_ref().and_then(|tree| tree.get(&name));
            entries.extend(self.entry(&child, &name, &meta, parent_entry, root_dev)?);
        }
        self.seal_tree(entries)
    }

    /// A file's content IDs: the parent's when unchanged, else read and chunked.
    fn file(
        &mut self,
        path: &Path,
        meta: &fs::Metadata,
        entry_meta: &mut Metadata,
        parent: Option<&TreeEntry>,
    ) -> Result<Option<Vec<BlobId>>, Stop> {
        let link_key = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
        if let Some((group, content)) = link_key.and_then(|key| self.hardlinks.get(&key)) {
            // Another name of an inode already backed up in this run: same content.
            entry_meta.hardlink = *group;
            let content = content.clone();
            match parent.map(|parent| &parent.kind) {
                None => self.outcome.files_new += 1,
                Some(EntryKind::File { content: before }) if *before == content => {
                    self.outcome.files_unmodified += 1;
                }
                Some(_) => self.outcome.files_changed += 1,
            }
            self.outcome.bytes += entry_meta.size;
            self.file_done(path, entry_meta.size)?;
            return Ok(Some(content));
        }
        let reusable = parent.and_then(|parent| match &parent.kind {
            EntryKind::File { content }
                if parent.meta.size == entry_meta.size
                    && parent.meta.mtime == entry_meta.mtime
                    && parent.meta.ctime == entry_meta.ctime =>
            {
                Some(content.clone())
            }
            _ => None,
        });
        let unchanged = reusable.is_some();
        let content = match reusable {
            Some(content) => {
                self.send(WalkMsg::Reused(content.clone()))?;
                content
            }
            None => {
                let Some((content, len)) = self.read_file(path)? else {
                    return Ok(None);
                };
                entry_meta.size = len;
                content
            }
        };
        match (parent, unchanged) {
            (None, _) => self.outcome.files_new += 1,
            (Some(_), true) => self.outcome.files_unmodified += 1,
            (Some(_), false) => self.outcome.files_changed += 1,
        }
        if let Some(key) = link_key {
            let group = self.hardlinks.len() as u64 + 1;
            entry_meta.hardlink = group;
            self.hardlinks.insert(key, (group, content.clone()));
        }
        self.outcome.bytes += entry_meta.size;
        self.file_done(path, entry_meta.size)?;
        Ok(Some(content))
    }

    /// Streams a file through the chunker; `None` (and a warning) when it cannot be read.
    fn read_file(&mut self, path: &Path) -> Result<Option<(Vec<BlobId>, u64)>, Stop> {
        let mut file = match fs::File::open(path) {
            Ok(file) => file,
            Err(err) => return self.unreadable(path, &err),
        };
        let mut content = Vec::new();
        let mut len = 0u64;
        loop {
            let n = match file.read(&mut self.buf) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // Drain what was buffered so the chunker is ready for the next file.
                    self.chunker.handle_eof();
                    while self.chunker.poll_chunk().is_some() {}
                    return self.unreadable(path, &err);
                }
            };
            if n == 0 {
                break;
            }
            len += n as u64;
            self.outcome.bytes_read += n as u64;
            let mut fed = 0;
            while fed < n {
                fed += self.chunker.handle_bytes(&self.buf[fed..n]);
                self.drain_chunks(&mut content)?;
            }
        }
        self.chunker.handle_eof();
        self.drain_chunks(&mut content)?;
        Ok(Some((content, len)))
    }

    fn drain_chunks(&mut self, content: &mut Vec<BlobId>) -> Result<(), Stop> {
        while let Some(chunk) = self.chunker.poll_chunk() {
            let id = self.ids.id(&chunk);
            content.push(id);
            self.send(WalkMsg::Blob {
                kind: BlobKind::Data,
                id,
                plaintext: chunk,
            })?;
        }
        Ok(())
    }

    fn file_done(&mut self, path: &Path, len: u64) -> Result<(), Stop> {
        self.files_done += 1;
        self.send(WalkMsg::FileDone {
            path: path.to_path_buf(),
            files_done: self.files_done,
            bytes_done: len,
        })
    }

    fn seal_tree(&mut self, entries: Vec<TreeEntry>) -> Result<BlobId, Stop> {
        let plaintext = Tree::new(entries)?.encode()?;
        let id = self.ids.id(&plaintext);
        self.send(WalkMsg::Blob {
            kind: BlobKind::Tree,
            id,
            plaintext: Bytes::from(plaintext),
        })?;
        Ok(id)
    }

    fn parent_tree(&self, id: Option<BlobId>) -> Result<Option<Tree>, Stop> {
        let Some(id) = id else {
            return Ok(None);
        };
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.send(WalkMsg::NeedTree { id, reply })?;
        answer.recv().map_err(|_| Stop::Hangup)
    }

    fn unreadable<T>(&self, path: &Path, err: &io::Error) -> Result<Option<T>, Stop> {
        self.send(WalkMsg::Skipped {
            message: format!("{}: {err}; skipped", path.display()),
            partial: true,
        })?;
        Ok(None)
    }
}

/// A directory's entry names as bytes, sorted.
fn sorted_names(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut names = fs::read_dir(path)?
        .map(|entry| entry.map(|entry| entry.file_name().as_bytes().to_vec()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// Names by ID from `/etc/passwd` or `/etc/group` (`name:x:id:...`); empty when unreadable.
fn owner_names(file: &Path) -> HashMap<u32, Vec<u8>> {
    let Ok(text) = fs::read(file) else {
        return HashMap::new();
    };
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let mut fields = line.split(|&b| b == b':');
            let name = fields.next()?;
            let id = std::str::from_utf8(fields.nth(1)?).ok()?.parse().ok()?;
            Some((id, name.to_vec()))
        })
        .collect()
}

/// The entry's extended attributes, sorted by name, within the format's limits (none when
/// the file system has none or refuses to list them).
fn xattrs_of(path: &Path) -> Vec<Xattr> {
    let mut list = match rustix::fs::llistxattr_query(path) {
        Ok(0) | Err(_) => return Vec::new(),
        Ok(len) => vec![0u8; len],
    };
    let Ok(len) = rustix::fs::llistxattr(path, &mut list[..]) else {
        return Vec::new();
    };
    list.truncate(len);
    let mut xattrs: Vec<Xattr> = list
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .filter_map(|name| {
            let os_name = OsStr::from_bytes(name);
            let len = rustix::fs::lgetxattr_query(path, os_name).ok()?;
            if len > MAX_XATTR_VALUE_BYTES {
                return None;
            }
            let mut value = vec![0u8; len];
            let len = rustix::fs::lgetxattr(path, os_name, &mut value[..]).ok()?;
            value.truncate(len);
            Some(Xattr {
                name: name.to_vec(),
                value,
            })
        })
        .take(MAX_XATTRS)
        .collect();
    xattrs.sort();
    xattrs.dedup_by(|a, b| a.name == b.name);
    xattrs
}

fn parent_subtree(entry: Option<&TreeEntry>) -> Option<BlobId> {
    match entry.map(|entry| &entry.kind) {
        Some(EntryKind::Dir { subtree }) => Some(*subtree),
        _ => None,
    }
}

/// The tree metadata of an `lstat` result (owner names are not looked up).
pub(super) fn metadata_of(meta: &fs::Metadata) -> Metadata {
    let time = |secs: i64, nanos: i64| Timestamp {
        secs,
        nanos: u32::try_from(nanos).unwrap_or(0),
    };
    Metadata {
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        size: if meta.is_file() { meta.size() } else { 0 },
        ..Metadata::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_below_another_backup_path_are_merged_into_it() {
        let paths = [
            PathBuf::from("/srv/data/sub"),
            PathBuf::from("/srv/data"),
            PathBuf::from("/srv/./other/../logs"),
        ];
        let (set, list) = PathSet::new(&paths).unwrap();
        assert_eq!(
            list,
            [
                b"/srv/data".to_vec(),
                b"/srv/data/sub".to_vec(),
                b"/srv/logs".to_vec()
            ]
        );
        let srv = &set.children[b"srv".as_slice()];
        assert!(!srv.target);
        assert!(srv.children[b"data".as_slice()].target);
        assert!(srv.children[b"data".as_slice()].children.is_empty());
        assert!(srv.children[b"logs".as_slice()].target);
    }
}
