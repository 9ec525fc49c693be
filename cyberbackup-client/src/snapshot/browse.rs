//! Browsing a repository: resolve a snapshot argument (a hex ID, a unique prefix, or
//! `latest`), `snapshots` (table rows and restic-like JSON), `ls`, `find`, `diff`, `dump`,
//! `forget` and `check`; and for the local UI one directory at a time ([`DirListing`]) and
//! a bounded search of one snapshot ([`Repository::search`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use cyberbackup_core::repo::{
    BlobId, BlobKind, EntryKind, RefChunk, Snapshot, SnapshotId, Timestamp, TreeEntry,
};
use globset::{Glob, GlobMatcher};
use rand_core::{OsRng, RngCore};

use super::remote::{RepoRemote, damaged_all, have_all};
use super::{BlobError, Repository, short_hex};
use crate::v4::V4ClientError;

/// One snapshot, opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its ID.
    pub id: SnapshotId,
    /// Size of the snapshot object on the server.
    pub size: u64,
    /// When the server stored it (Unix seconds).
    pub stored_at: u64,
    /// The opened body.
    pub snapshot: Snapshot,
}

/// A snapshot as JSON (restic's field names).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotJson {
    /// Full ID.
    pub id: String,
    /// First 8 hex digits.
    pub short_id: String,
    /// RFC 3339 time.
    pub time: String,
    /// Host name.
    pub hostname: String,
    /// User name.
    pub username: String,
    /// Backup paths.
    pub paths: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Parent snapshot ID.
    pub parent: Option<String>,
    /// Root tree ID.
    pub tree: String,
    /// Counters.
    pub summary: SnapshotJsonSummary,
}

/// The counters of [`SnapshotJson`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotJsonSummary {
    /// Files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Bytes of new blobs the run stored.
    pub added_bytes: u64,
}

impl SnapshotInfo {
    /// The `snapshots` table row: short ID, time, host, paths, tags, object size.
    #[must_use]
    pub fn table_row(&self) -> [String; 6] {
        let json = self.to_json();
        [
            json.short_id,
            json.time,
            json.hostname,
            json.paths.join(", "),
            json.tags.join(", "),
            self.size.to_string(),
        ]
    }

    /// The JSON object (names as lossy UTF-8: for display).
    #[must_use]
    pub fn to_json(&self) -> SnapshotJson {
        let lossy = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let s = &self.snapshot;
        SnapshotJson {
            id: self.id.to_hex(),
            short_id: short_hex(self.id.as_bytes()),
            time: rfc3339(s.time),
            hostname: lossy(&s.host),
            username: lossy(&s.user),
            paths: s.paths.iter().map(|p| lossy(p)).collect(),
            tags: s.tags.iter().map(|t| lossy(t)).collect(),
            parent: s.parent.map(|id| id.to_hex()),
            tree: s.root.to_hex(),
            summary: SnapshotJsonSummary {
                files: s.stats.files,
                dirs: s.stats.dirs,
                bytes: s.stats.bytes,
                added_bytes: s.stats.added_bytes,
            },
        }
    }
}

/// One line of `ls` (and a `find` hit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LsEntry {
    /// Path in the snapshot, as bytes (`/home/x/file`).
    pub path: Vec<u8>,
    /// The entry.
    pub entry: TreeEntry,
}

impl LsEntry {
    /// The path for display (lossy UTF-8).
    #[must_use]
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// One `find` hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FindMatch {
    /// The snapshot it is in.
    pub snapshot: SnapshotId,
    /// The entry and its path.
    pub found: LsEntry,
}

/// One directory of a snapshot: what a browser shows when it is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirListing {
    /// The snapshot it is in.
    pub snapshot: SnapshotId,
    /// Its path in the snapshot (`/` for the root).
    pub path: PathBuf,
    /// Its entries, in name order.
    pub entries: Vec<TreeEntry>,
}

/// What [`Repository::search`] found in one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchHits {
    /// The matching entries, in walk order (depth first, names in order).
    pub hits: Vec<LsEntry>,
    /// Whether the search stopped at its limit with more of the snapshot unread.
    pub truncated: bool,
}

/// How a path differs between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// Only in the second.
    Added,
    /// Only in the first.
    Removed,
    /// In both, with other content, target, kind or metadata.
    Modified,
}

/// One line of `diff`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffEntry {
    /// What changed.
    pub kind: DiffKind,
    /// Path in the snapshots, as bytes.
    pub path: Vec<u8>,
}

/// The first changes of a diff, in path order, with the counts of all of them
/// ([`Repository::diff_limited`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffPage {
    /// The first changes by path, at most the limit asked for.
    pub changes: Vec<DiffEntry>,
    /// Every change, listed or not.
    pub total: u64,
    /// Added paths, listed or not.
    pub added: u64,
    /// Removed paths, listed or not.
    pub removed: u64,
    /// Modified paths, listed or not.
    pub modified: u64,
}

/// How much data `check` reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadData {
    /// Only that every referenced blob is present (HAVE).
    #[default]
    No,
    /// Fetch and verify every data blob.
    All,
    /// Fetch and verify a random subset: this percentage (1..=100) of the data blobs.
    Percent(u8),
}

/// What `check` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: u64,
    /// Trees opened and decoded.
    pub trees: u64,
    /// Distinct blobs referenced (summed per snapshot).
    pub blobs: u64,
    /// Data blobs fetched and verified.
    pub blobs_read: u64,
    /// Paths whose content (or, for a directory, listing) lies in a pack the server's scrub
    /// found damaged, per snapshot.
    pub damaged: Vec<DamagedPath>,
    /// Every problem found, one line each.
    pub errors: Vec<String>,
}

/// A path of a snapshot that references blobs in a pack the server found damaged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DamagedPath {
    /// The snapshot's short ID.
    pub snapshot: String,
    /// The path in the snapshot (lossy UTF-8; a directory ends with `/`).
    pub path: String,
    /// How many of its blobs are in damaged packs.
    pub blobs: u64,
}

impl CheckReport {
    /// Whether nothing was wrong.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

impl<R: RepoRemote> Repository<R> {
    /// Every snapshot, opened, oldest first.
    ///
    /// # Errors
    /// The remote's errors; [`V4ClientError::Repo`] for a snapshot that does not open.
    pub async fn snapshots(&mut self) -> Result<Vec<SnapshotInfo>, V4ClientError> {
        let mut out = Vec::new();
        for listing in self.remote.snapshots().await? {
            let (_, snapshot) = self.snapshot(listing.id).await?;
            out.push(SnapshotInfo {
                id: listing.id,
                size: listing.size,
                stored_at: listing.stored_at,
                snapshot,
            });
        }
        out.sort_by_key(|info| (info.snapshot.time, info.id));
        Ok(out)
    }

    /// Resolves a snapshot argument: 64 hex digits, a unique hex prefix, or `latest`.
    ///
    /// # Errors
    /// [`V4ClientError::SnapshotNotFound`] for no match or an ambiguous prefix.
    pub async fn resolve(&mut self, spec: &str) -> Result<SnapshotId, V4ClientError> {
        if spec == "latest" {
            return self
                .snapshots()
                .await?
                .last()
                .map(|info| info.id)
                .ok_or_else(|| V4ClientError::SnapshotNotFound {
                    message: "there is no snapshot yet, so no `latest`".into(),
                });
        }
        let prefix = spec.to_ascii_lowercase();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(V4ClientError::SnapshotNotFound {
                message: format!("{spec:?} is not a snapshot ID, an ID prefix or `latest`"),
            });
        }
        let matches: Vec<SnapshotId> = self
            .remote
            .snapshots()
            .await?
            .into_iter()
            .map(|listing| listing.id)
            .filter(|id| id.to_hex().starts_with(&prefix))
            .collect();
        match matches.as_slice() {
            [id] => Ok(*id),
            [] => Err(V4ClientError::SnapshotNotFound {
                message: format!("no snapshot ID starts with {spec}"),
            }),
            many => Err(V4ClientError::SnapshotNotFound {
                message: format!("{} snapshot IDs start with {spec}", many.len()),
            }),
        }
    }

    /// Deletes a snapshot (its blobs stay until a prune); returns its ID.
    ///
    /// # Errors
    /// As [`Self::resolve`]; the remote's errors.
    pub async fn forget(&mut self, spec: &str) -> Result<SnapshotId, V4ClientError> {
        let id = self.resolve(spec).await?;
        self.remote.forget(id).await?;
        Ok(id)
    }

    /// `ls SNAPSHOT [PATH]`: every entry at and below `path` (`/` for all), depth first,
    /// in name order.
    ///
    /// # Errors
    /// As [`Self::resolve`]; [`V4ClientError::PathNotInSnapshot`].
    pub async fn ls(&mut self, spec: &str, path: &[u8]) -> Result<Vec<LsEntry>, V4ClientError> {
        let id = self.resolve(spec).await?;
        let (_, snapshot) = self.snapshot(id).await?;
        let (at, entry) = self.lookup(id, snapshot.root, path).await?;
        let mut out = Vec::new();
        let start = match entry {
            None => Some(snapshot.root),
            Some(entry) => {
                let subtree = dir_subtree(&entry);
                out.push(LsEntry {
                    path: at.as_os_str().as_bytes().to_vec(),
                    entry,
                });
                subtree
            }
        };
        if let Some(tree) = start {
            self.walk(&at, tree, &mut |found| out.push(found)).await?;
        }
        Ok(out)
    }

    /// The entries of the directory at `path` (`/` for the root) of a snapshot: one tree
    /// fetched and opened, plus one per path component to find it.
    ///
    /// # Errors
    /// As [`Self::resolve`]; [`V4ClientError::PathNotInSnapshot`] when `path` is missing or
    /// not a directory.
    pub async fn dir(&mut self, spec: &str, path: &[u8]) -> Result<DirListing, V4ClientError> {
        let found = self.locate(spec, path).await?;
        let tree = match &found.entry {
            None => found.root,
            Some(entry) => dir_subtree(entry).ok_or_else(|| V4ClientError::PathNotInSnapshot {
                path: found.path.display().to_string(),
                snapshot: short_hex(found.snapshot.as_bytes()),
                reason: "is not a directory",
            })?,
        };
        let entries = self.tree(tree).await?.entries().to_vec();
        Ok(DirListing {
            snapshot: found.snapshot,
            path: found.path,
            entries,
        })
    }

    /// The entry at `path` of a snapshot (`None` for the root `/`), with the snapshot's ID
    /// and the path as found.
    ///
    /// # Errors
    /// As [`Self::resolve`]; [`V4ClientError::PathNotInSnapshot`].
    pub async fn stat(
        &mut self,
        spec: &str,
        path: &[u8],
    ) -> Result<(SnapshotId, PathBuf, Option<TreeEntry>), V4ClientError> {
        let found = self.locate(spec, path).await?;
        Ok((found.snapshot, found.path, found.entry))
    }

    /// Files and bytes of file content at and below `path` of a snapshot (what a restore of
    /// it writes): a walk of its trees, no data read.
    ///
    /// # Errors
    /// As [`Self::stat`]; the remote's errors.
    pub async fn tally(&mut self, spec: &str, path: &[u8]) -> Result<(u64, u64), V4ClientError> {
        let found = self.locate(spec, path).await?;
        let start = match &found.entry {
            None => found.root,
            Some(entry) => match dir_subtree(entry) {
                Some(subtree) => subtree,
                None => return Ok((1, entry.meta.size)),
            },
        };
        let (mut files, mut bytes) = (0, 0);
        self.walk(&found.path, start, &mut |below| {
            if matches!(below.entry.kind, EntryKind::File { .. }) {
                files += 1;
                bytes += below.entry.meta.size;
            }
        })
        .await?;
        Ok((files, bytes))
    }

    /// Entries of one snapshot whose name matches `matcher`, at most `limit` of them. The
    /// walk stops at the limit, so a search of a huge snapshot answers quickly.
    ///
    /// # Errors
    /// As [`Self::resolve`]; the remote's errors.
    pub async fn search(
        &mut self,
        spec: &str,
        matcher: &GlobMatcher,
        limit: usize,
    ) -> Result<SearchHits, V4ClientError> {
        let id = self.resolve(spec).await?;
        let root = self.snapshot(id).await?.1.root;
        let mut found = SearchHits::default();
        self.walk_until(Path::new("/"), root, &mut |entry| {
            if !matcher.is_match(OsStr::from_bytes(&entry.entry.name)) {
                return ControlFlow::Continue(());
            }
            if found.hits.len() == limit {
                found.truncated = true;
                return ControlFlow::Break(());
            }
            found.hits.push(entry);
            ControlFlow::Continue(())
        })
        .await?;
        Ok(found)
    }

    /// `find PATTERN`: entries of every snapshot whose name matches the glob.
    ///
    /// # Errors
    /// [`V4ClientError::Usage`] for a bad glob; the remote's errors.
    pub async fn find(&mut self, pattern: &str) -> Result<Vec<FindMatch>, V4ClientError> {
        let glob = Glob::new(pattern)
            .map_err(|err| V4ClientError::Usage {
                message: format!("invalid pattern {pattern:?}: {err}"),
            })?
            .compile_matcher();
        let mut out = Vec::new();
        for info in self.snapshots().await? {
            self.walk(Path::new("/"), info.snapshot.root, &mut |found| {
                if glob.is_match(OsStr::from_bytes(&found.entry.name)) {
                    out.push(FindMatch {
                        snapshot: info.id,
                        found,
                    });
                }
            })
            .await?;
        }
        Ok(out)
    }

    /// `diff A B`: added, removed and modified paths from snapshot `a` to `b`, in path order.
    /// Subtrees with equal IDs are not opened.
    ///
    /// # Errors
    /// As [`Self::resolve`]; the remote's errors.
    pub async fn diff(&mut self, a: &str, b: &str) -> Result<Vec<DiffEntry>, V4ClientError> {
        let mut out = Vec::new();
        self.diff_each(a, b, &mut |entry| out.push(entry)).await?;
        out.sort_by(|x, y| x.path.cmp(&y.path));
        Ok(out)
    }

    /// [`Self::diff`] keeping only the first `limit` changes by path (memory: `limit`
    /// entries, however many paths changed), with the counts of all of them.
    ///
    /// # Errors
    /// As [`Self::diff`].
    pub async fn diff_limited(
        &mut self,
        a: &str,
        b: &str,
        limit: usize,
    ) -> Result<DiffPage, V4ClientError> {
        let mut page = DiffPage::default();
        // Paths are unique in a diff: a path is added, removed or modified, never two.
        let mut first = BTreeMap::new();
        self.diff_each(a, b, &mut |entry| {
            page.total += 1;
            match entry.kind {
                DiffKind::Added => page.added += 1,
                DiffKind::Removed => page.removed += 1,
                DiffKind::Modified => page.modified += 1,
            }
            first.insert(entry.path, entry.kind);
            if first.len() > limit {
                first.pop_last();
            }
        })
        .await?;
        page.changes = first
            .into_iter()
            .map(|(path, kind)| DiffEntry { kind, path })
            .collect();
        Ok(page)
    }

    /// Calls `visit` for every change from snapshot `a` to `b`, in no particular order.
    async fn diff_each(
        &mut self,
        a: &str,
        b: &str,
        visit: &mut (dyn FnMut(DiffEntry) + Send),
    ) -> Result<(), V4ClientError> {
        let a = self.resolve(a).await?;
        let b = self.resolve(b).await?;
        let root_a = self.snapshot(a).await?.1.root;
        let root_b = self.snapshot(b).await?.1.root;
        let mut stack = vec![(PathBuf::from("/"), root_a, root_b)];
        while let Some((path, tree_a, tree_b)) = stack.pop() {
            if tree_a == tree_b {
                continue;
            }
            let ta = self.tree(tree_a).await?;
            let tb = self.tree(tree_b).await?;
            let names: BTreeSet<&[u8]> = ta
                .entries()
                .iter()
                .chain(tb.entries())
                .map(|e| e.name.as_slice())
                .collect();
            for name in names.into_iter().rev() {
                let child = path.join(OsStr::from_bytes(name));
                match (ta.get(name), tb.get(name)) {
                    (Some(ea), Some(eb)) => match (dir_subtree(ea), dir_subtree(eb)) {
                        (Some(sa), Some(sb)) => stack.push((child, sa, sb)),
                        _ if ea != eb => visit(DiffEntry {
                            kind: DiffKind::Modified,
                            path: child.as_os_str().as_bytes().to_vec(),
                        }),
                        _ => {}
                    },
                    (Some(entry), None) => {
                        self.diff_all(&child, entry, DiffKind::Removed, visit)
                            .await?
                    }
                    (None, Some(entry)) => {
                        self.diff_all(&child, entry, DiffKind::Added, visit).await?
                    }
                    (None, None) => {}
                }
            }
        }
        Ok(())
    }

    /// `check`: every snapshot opens, every tree decodes, every referenced blob is on the
    /// server (HAVE) and listed in the snapshot's reference chunks (which must verify), and
    /// with `read` the data blobs are fetched and verified. Memory: the blob IDs of one
    /// snapshot at a time.
    ///
    /// # Errors
    /// Only the remote's errors; everything wrong in the repository is in the report.
    pub async fn check(&mut self, read: ReadData) -> Result<CheckReport, V4ClientError> {
        let mut report = CheckReport::default();
        let damaged = damaged_all(&mut self.remote).await?;
        for listing in self.remote.snapshots().await? {
            let short = short_hex(listing.id.as_bytes());
            let (envelope, snapshot) = match self.snapshot(listing.id).await {
                Ok(opened) => opened,
                Err(V4ClientError::Repo { context, source }) => {
                    report.errors.push(format!("{context}: {source}"));
                    continue;
                }
                // The server refused it (its object is damaged or missing there).
                Err(V4ClientError::Failed(failure)) => {
                    report.errors.push(format!("snapshot {short}: {failure}"));
                    continue;
                }
                Err(err) => return Err(err),
            };
            report.snapshots += 1;
            let mut trees = BTreeSet::new();
            let mut data = BTreeSet::new();
            let mut stack = vec![(PathBuf::from("/"), snapshot.root)];
            while let Some((dir, tree_id)) = stack.pop() {
                if !trees.insert(tree_id) {
                    continue;
                }
                let listing_of = dir.display();
                match self.tree(tree_id).await {
                    Ok(tree) => {
                        report.trees += 1;
                        for entry in tree.entries() {
                            match &entry.kind {
                                EntryKind::Dir { subtree } => {
                                    stack
                                        .push((dir.join(OsStr::from_bytes(&entry.name)), *subtree));
                                }
                                EntryKind::File { content } => data.extend(content.iter().copied()),
                                _ => {}
                            }
                        }
                    }
                    Err(V4ClientError::Repo { context, source }) => {
                        report.errors.push(format!(
                            "snapshot {short}: {listing_of}: {context}: {source}"
                        ));
                    }
                    Err(V4ClientError::Failed(failure)) => {
                        report.errors.push(format!(
                            "snapshot {short}: {listing_of}: the directory listing cannot be read: {failure}"
                        ));
                    }
                    Err(err) => return Err(err),
                }
            }
            let referenced: BTreeSet<BlobId> = trees.union(&data).copied().collect();
            report.blobs += referenced.len() as u64;
            if !referenced.is_disjoint(&damaged) {
                for (path, blobs) in self.damaged_paths(snapshot.root, &damaged).await? {
                    let path = String::from_utf8_lossy(&path).into_owned();
                    report.errors.push(format!(
                        "snapshot {short}: {path}: {blobs} of its blobs lie in a pack the server's scrub found damaged (restore it from another copy of the file, or ask the operator to restore the pack)"
                    ));
                    report.damaged.push(DamagedPath {
                        snapshot: short.clone(),
                        path,
                        blobs,
                    });
                }
            }
            let listed = self
                .ref_list(&short, &envelope.ref_chunks, &mut report)
                .await?;
            if let Some(listed) = listed {
                let unlisted = referenced.difference(&listed).count();
                if unlisted > 0 {
                    report.errors.push(format!(
                        "snapshot {short}: {unlisted} blobs it references are missing from its reference list (a prune could delete them)"
                    ));
                }
            }
            let ids: Vec<BlobId> = referenced.iter().copied().collect();
            let have = have_all(&mut self.remote, &ids).await?;
            // Blobs missing or failing to read, named by the paths that use them below.
            let mut lost = BTreeSet::new();
            for (id, have) in ids.iter().zip(have) {
                if !have {
                    lost.insert(*id);
                    report
                        .errors
                        .push(format!("snapshot {short}: blob {id} is missing"));
                }
            }
            for id in data.iter().filter(|_| selected(read)) {
                match self.blob(BlobKind::Data, *id).await {
                    Ok(_) => report.blobs_read += 1,
                    Err(BlobError::Verify(source)) => {
                        lost.insert(*id);
                        report
                            .errors
                            .push(format!("snapshot {short}: blob {id}: {source}"));
                    }
                    Err(BlobError::Remote(err)) => {
                        lost.insert(*id);
                        report
                            .errors
                            .push(format!("snapshot {short}: blob {id}: {err}"));
                    }
                }
            }
            if !lost.is_empty() {
                for (path, blobs) in self.damaged_paths(snapshot.root, &lost).await? {
                    let path = String::from_utf8_lossy(&path);
                    report.errors.push(format!(
                        "snapshot {short}: {path}: {blobs} of its blobs are missing or fail verification (restore it from another copy of the file, or back it up again if the original still exists)"
                    ));
                }
            }
        }
        Ok(report)
    }

    /// The paths below `root` whose content, subtree or own tree is in `damaged`, with how
    /// many of their blobs are; trees that do not open are skipped (`check` reports them).
    async fn damaged_paths(
        &mut self,
        root: BlobId,
        damaged: &BTreeSet<BlobId>,
    ) -> Result<Vec<(Vec<u8>, u64)>, V4ClientError> {
        let mut found = Vec::new();
        if damaged.contains(&root) {
            found.push((b"/".to_vec(), 1));
        }
        let mut stack = vec![(PathBuf::from("/"), root)];
        while let Some((dir, tree_id)) = stack.pop() {
            let tree = match self.tree(tree_id).await {
                Ok(tree) => tree,
                Err(V4ClientError::Repo { .. } | V4ClientError::Failed(_)) => continue,
                Err(err) => return Err(err),
            };
            for entry in tree.entries() {
                let path = dir.join(OsStr::from_bytes(&entry.name));
                match &entry.kind {
                    EntryKind::File { content } => {
                        let hit = content.iter().filter(|id| damaged.contains(id)).count();
                        if hit > 0 {
                            found.push((path.as_os_str().as_bytes().to_vec(), hit as u64));
                        }
                    }
                    EntryKind::Dir { subtree } => {
                        if damaged.contains(subtree) {
                            let mut listing = path.as_os_str().as_bytes().to_vec();
                            listing.push(b'/');
                            found.push((listing, 1));
                        }
                        stack.push((path, *subtree));
                    }
                    _ => {}
                }
            }
        }
        Ok(found)
    }

    /// Resolves `spec` and finds `path` in that snapshot.
    pub(super) async fn locate(
        &mut self,
        spec: &str,
        path: &[u8],
    ) -> Result<Located, V4ClientError> {
        let snapshot = self.resolve(spec).await?;
        let root = self.snapshot(snapshot).await?.1.root;
        let (path, entry) = self.lookup(snapshot, root, path).await?;
        Ok(Located {
            snapshot,
            root,
            path,
            entry,
        })
    }

    /// Finds `path` in the snapshot whose root tree is `root`: `None` for `/`.
    pub(super) async fn lookup(
        &mut self,
        id: SnapshotId,
        root: BlobId,
        path: &[u8],
    ) -> Result<(PathBuf, Option<TreeEntry>), V4ClientError> {
        let parts: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|p| !p.is_empty())
            .collect();
        let mut at = PathBuf::from("/");
        let mut tree = root;
        let mut found = None;
        for (index, part) in parts.iter().enumerate() {
            at.push(OsStr::from_bytes(part));
            let not = |reason| V4ClientError::PathNotInSnapshot {
                path: at.display().to_string(),
                snapshot: short_hex(id.as_bytes()),
                reason,
            };
            let entry = self
                .tree(tree)
                .await?
                .get(part)
                .cloned()
                .ok_or_else(|| not("is not"))?;
            if index + 1 < parts.len() {
                tree = dir_subtree(&entry).ok_or_else(|| not("is not a directory"))?;
            }
            found = Some(entry);
        }
        Ok((at, found))
    }

    /// Calls `visit` for every entry below tree `root` (at `path`), depth first.
    async fn walk(
        &mut self,
        path: &Path,
        root: BlobId,
        visit: &mut (dyn FnMut(LsEntry) + Send),
    ) -> Result<(), V4ClientError> {
        self.walk_until(path, root, &mut |entry| {
            visit(entry);
            ControlFlow::Continue(())
        })
        .await
    }

    /// [`Self::walk`] until `visit` breaks.
    async fn walk_until(
        &mut self,
        path: &Path,
        root: BlobId,
        visit: &mut (dyn FnMut(LsEntry) -> ControlFlow<()> + Send),
    ) -> Result<(), V4ClientError> {
        let mut stack = vec![(path.to_path_buf(), root)];
        while let Some((dir, tree_id)) = stack.pop() {
            let tree = self.tree(tree_id).await?;
            let mut below = Vec::new();
            for entry in tree.entries() {
                let child = dir.join(OsStr::from_bytes(&entry.name));
                if let Some(subtree) = dir_subtree(entry) {
                    below.push((child.clone(), subtree));
                }
                let found = LsEntry {
                    path: child.as_os_str().as_bytes().to_vec(),
                    entry: entry.clone(),
                };
                if visit(found).is_break() {
                    return Ok(());
                }
            }
            stack.extend(below.into_iter().rev());
        }
        Ok(())
    }

    async fn diff_all(
        &mut self,
        path: &Path,
        entry: &TreeEntry,
        kind: DiffKind,
        visit: &mut (dyn FnMut(DiffEntry) + Send),
    ) -> Result<(), V4ClientError> {
        visit(DiffEntry {
            kind,
            path: path.as_os_str().as_bytes().to_vec(),
        });
        if let Some(subtree) = dir_subtree(entry) {
            self.walk(path, subtree, &mut |found| {
                visit(DiffEntry {
                    kind,
                    path: found.path,
                });
            })
            .await?;
        }
        Ok(())
    }

    /// The IDs a snapshot's reference chunks list (`None`, with an error reported, when a
    /// chunk cannot be fetched or does not verify).
    async fn ref_list(
        &mut self,
        short: &str,
        chunks: &[BlobId],
        report: &mut CheckReport,
    ) -> Result<Option<BTreeSet<BlobId>>, V4ClientError> {
        let mut listed = BTreeSet::new();
        for chunk_id in chunks {
            let bytes = match self.remote.get_blob(*chunk_id).await {
                Ok(bytes) => bytes,
                Err(err) => {
                    report.errors.push(format!(
                        "snapshot {short}: reference chunk {chunk_id}: {err}"
                    ));
                    return Ok(None);
                }
            };
            match RefChunk::decode_verified(&bytes, chunk_id) {
                Ok(chunk) => listed.extend(chunk.ids().iter().copied()),
                Err(source) => {
                    report.errors.push(format!(
                        "snapshot {short}: reference chunk {chunk_id}: {source}"
                    ));
                    return Ok(None);
                }
            }
        }
        Ok(Some(listed))
    }
}

/// A path found in a snapshot ([`Repository::locate`]).
pub(super) struct Located {
    /// The snapshot.
    pub(super) snapshot: SnapshotId,
    /// Its root tree.
    pub(super) root: BlobId,
    /// The path as found.
    pub(super) path: PathBuf,
    /// The entry there; `None` for the root.
    pub(super) entry: Option<TreeEntry>,
}

fn dir_subtree(entry: &TreeEntry) -> Option<BlobId> {
    match entry.kind {
        EntryKind::Dir { subtree } => Some(subtree),
        _ => None,
    }
}

/// Whether `check` reads this blob.
fn selected(read: ReadData) -> bool {
    match read {
        ReadData::No => false,
        ReadData::All => true,
        ReadData::Percent(percent) => OsRng.next_u32() % 100 < u32::from(percent.min(100)),
    }
}

fn rfc3339(time: Timestamp) -> String {
    let since = Duration::new(u64::try_from(time.secs).unwrap_or(0), time.nanos);
    humantime::format_rfc3339_nanos(UNIX_EPOCH + since).to_string()
}
