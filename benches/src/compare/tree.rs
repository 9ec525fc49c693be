//! The scripted small modification of a tree (and its exact undo, so the next tool starts
//! from the same tree), and the tree comparison that verifies a restore.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::dataset::{Dataset, Entry};
use crate::data::Noise;

/// Bytes rewritten inside the biggest file (at most half of it).
const REWRITE_LEN: u64 = 16 << 20;
/// Files added, and at most this many deleted.
const ADDED: usize = 100;
/// Bytes appended to each of 1 % of the files.
const APPEND_LEN: usize = 1024;
/// Files larger than this are not deleted (their bytes are kept in memory for the undo).
const MAX_DELETED_LEN: u64 = 1 << 20;

/// What [`modify`] changed, to undo it.
#[derive(Debug)]
pub(crate) struct Modification {
    root: PathBuf,
    /// Appended files and their original lengths.
    appended: Vec<(PathBuf, u64)>,
    /// The rewritten file, the offset and the original bytes.
    rewritten: Option<(PathBuf, u64, Vec<u8>)>,
    /// Added files.
    added: Vec<PathBuf>,
    /// Deleted files and their bytes.
    deleted: Vec<(PathBuf, Vec<u8>)>,
    /// Paths (relative) of files deleted, not to be picked for a one-file restore.
    pub(crate) deleted_rel: Vec<PathBuf>,
}

/// Applies the modification of the issue to `dataset`: 1 KiB appended to every 100th file
/// (1 %, at least one), 16 MiB (at most half of it) rewritten in the middle of the biggest
/// file, 100 files of 1–4 KiB added in a new folder, and 100 files deleted (spread over the
/// tree; none of the appended, not the biggest, none above 1 MiB, fewer if the tree has too
/// few).
///
/// # Errors
/// A file cannot be read or written.
pub(crate) fn modify(dataset: &Dataset) -> anyhow::Result<Modification> {
    let root = &dataset.root;
    let files = &dataset.files;
    let mut change = Modification {
        root: root.clone(),
        appended: Vec::new(),
        rewritten: None,
        added: Vec::new(),
        deleted: Vec::new(),
        deleted_rel: Vec::new(),
    };
    let mut noise = Noise::new(99);
    let mut tail = vec![0u8; APPEND_LEN];
    for entry in files.iter().step_by(100) {
        let path = root.join(&entry.rel);
        noise.fill(&mut tail);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&tail))
            .with_context(|| format!("cannot append to {}", path.display()))?;
        change.appended.push((path, entry.len));
    }
    let biggest = files
        .iter()
        .max_by_key(|e| (e.len, std::cmp::Reverse(&e.rel)));
    if let Some(biggest) = biggest {
        let len = REWRITE_LEN.min(biggest.len / 2);
        let offset = biggest.len / 4;
        let path = root.join(&biggest.rel);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut original = vec![0u8; usize::try_from(len)?];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut original)?;
        let mut fresh = vec![0u8; original.len()];
        noise.fill(&mut fresh);
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(&fresh)?;
        change.rewritten = Some((path, offset, original));
    }
    let added_dir = root.join("added-by-modification");
    std::fs::create_dir_all(&added_dir)?;
    for i in 0..ADDED {
        let path = added_dir.join(format!("new{i}.dat"));
        let mut content = vec![0u8; 1024 + (i * 31) % 3072];
        noise.fill(&mut content);
        std::fs::write(&path, &content)?;
        change.added.push(path);
    }
    let deletable: Vec<&Entry> = files
        .iter()
        .enumerate()
        .filter(|(i, e)| i % 100 != 0 && e.len <= MAX_DELETED_LEN && Some(*e) != biggest)
        .map(|(_, e)| e)
        .collect();
    let step = (deletable.len() / ADDED).max(1);
    for entry in deletable.iter().skip(step / 2).step_by(step).take(ADDED) {
        let path = root.join(&entry.rel);
        let content = std::fs::read(&path)?;
        std::fs::remove_file(&path)?;
        change.deleted.push((path, content));
        change.deleted_rel.push(entry.rel.clone());
    }
    Ok(change)
}

impl Modification {
    /// Puts the tree back as it was (contents; times differ, which only matters to a tool
    /// that has already backed it up, and the next tool starts with a new repository).
    ///
    /// # Errors
    /// A file cannot be written.
    pub(crate) fn undo(self) -> anyhow::Result<()> {
        for (path, len) in &self.appended {
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(*len))
                .with_context(|| format!("cannot truncate {}", path.display()))?;
        }
        if let Some((path, offset, original)) = &self.rewritten {
            let mut file = OpenOptions::new().write(true).open(path)?;
            file.seek(SeekFrom::Start(*offset))?;
            file.write_all(original)?;
        }
        for path in &self.added {
            std::fs::remove_file(path)?;
        }
        std::fs::remove_dir(self.root.join("added-by-modification"))?;
        for (path, content) in &self.deleted {
            std::fs::write(path, content)?;
        }
        Ok(())
    }
}

/// Where a tool put the tree `original` when restoring it into `target`: restic, rustic and
/// we recreate the absolute path below the target, borg the path without its leading `/`.
pub(crate) fn restored_root(target: &Path, original: &Path) -> PathBuf {
    let below = target.join(original.strip_prefix("/").unwrap_or(original));
    if below.exists() {
        return below;
    }
    match original.file_name() {
        Some(name) if target.join(name).is_dir() => target.join(name),
        _ => target.to_path_buf(),
    }
}

/// Checks that `actual` holds exactly the folders and regular files of `expected`, with the
/// same contents; returns the number of files compared.
///
/// # Errors
/// The first differences (up to five), or a tree that cannot be read.
pub(crate) fn compare(expected: &Path, actual: &Path) -> anyhow::Result<usize> {
    let want = shape(expected)?;
    let got = shape(actual)?;
    let mut problems = Vec::new();
    for (rel, kind) in &want {
        match got.get(rel) {
            None => problems.push(format!("{} is missing", rel.display())),
            Some(other) if other != kind => problems.push(format!(
                "{}: expected {kind:?}, restored {other:?}",
                rel.display()
            )),
            Some(Node::File(_)) => {
                if !same_content(&expected.join(rel), &actual.join(rel))? {
                    problems.push(format!("{}: contents differ", rel.display()));
                }
            }
            Some(_) => {}
        }
        if problems.len() >= 5 {
            break;
        }
    }
    for rel in got.keys().filter(|rel| !want.contains_key(*rel)).take(5) {
        problems.push(format!(
            "{} was restored but is not in the tree",
            rel.display()
        ));
    }
    if !problems.is_empty() {
        bail!(
            "the restored tree {} differs from {}: {}",
            actual.display(),
            expected.display(),
            problems.join("; ")
        );
    }
    Ok(want.values().filter(|n| matches!(n, Node::File(_))).count())
}

/// Checks that `actual` has the contents of `expected`.
///
/// # Errors
/// They differ, or one cannot be read.
pub(crate) fn compare_file(expected: &Path, actual: &Path) -> anyhow::Result<()> {
    if !same_content(expected, actual)? {
        bail!(
            "the restored file {} differs from {}",
            actual.display(),
            expected.display()
        );
    }
    Ok(())
}

/// A tree entry's kind (and a file's length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(u64),
    Other,
}

/// Every entry below `root`, by relative path.
fn shape(root: &Path) -> anyhow::Result<BTreeMap<PathBuf, Node>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let entry = entry?;
            let meta = std::fs::symlink_metadata(entry.path())?;
            let child = rel.join(entry.file_name());
            let node = if meta.is_dir() {
                stack.push(child.clone());
                Node::Dir
            } else if meta.is_file() {
                Node::File(meta.len())
            } else {
                Node::Other
            };
            out.insert(child, node);
        }
    }
    Ok(out)
}

/// Whether two files hold the same bytes (read in 1 MiB pieces).
fn same_content(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let open =
        |p: &Path| std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or EOF.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::super::dataset::{self, Kind, Sizes};
    use super::*;

    fn copy_tree(from: &Path, to: &Path) {
        for entry in dataset::list(from).unwrap() {
            let dest = to.join(&entry.rel);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(from.join(&entry.rel), dest).unwrap();
        }
    }

    fn tiny(dir: &Path, files: usize) -> Dataset {
        let sizes = Sizes {
            tiny_files: files,
            ..Sizes::SMOKE
        };
        dataset::build(Kind::Tiny, dir, &sizes).unwrap()
    }

    #[test]
    fn modification_changes_what_the_issue_says_and_undo_restores_it() {
        let dir = tempfile::tempdir().unwrap();
        let tree = tiny(&dir.path().join("tree"), 1000);
        let pristine = dir.path().join("pristine");
        copy_tree(&tree.root, &pristine);

        let change = modify(&tree).unwrap();
        let after = dataset::list(&tree.root).unwrap();

        assert_eq!(after.len(), 1000 + 100 - 100);
        assert_eq!(change.appended.len(), 10);
        assert_eq!(change.deleted_rel.len(), 100);
        assert!(compare(&pristine, &tree.root).is_err());

        change.undo().unwrap();

        assert_eq!(compare(&pristine, &tree.root).unwrap(), 1000);
    }

    #[test]
    fn comparison_finds_a_changed_byte_a_missing_and_an_extra_file() {
        let dir = tempfile::tempdir().unwrap();
        let tree = tiny(&dir.path().join("tree"), 50);
        let copy = dir.path().join("copy");
        copy_tree(&tree.root, &copy);
        let victim = tree.files.iter().find(|f| f.len > 0).unwrap();
        assert_eq!(compare(&tree.root, &copy).unwrap(), 50);

        let mut bytes = std::fs::read(copy.join(&victim.rel)).unwrap();
        bytes[0] ^= 1;
        std::fs::write(copy.join(&victim.rel), &bytes).unwrap();
        let changed = compare(&tree.root, &copy).unwrap_err().to_string();
        bytes[0] ^= 1;
        std::fs::write(copy.join(&victim.rel), &bytes).unwrap();
        std::fs::remove_file(copy.join(&tree.files[3].rel)).unwrap();
        let missing = compare(&tree.root, &copy).unwrap_err().to_string();
        std::fs::copy(
            tree.root.join(&tree.files[3].rel),
            copy.join(&tree.files[3].rel),
        )
        .unwrap();
        std::fs::write(copy.join("extra"), b"x").unwrap();
        let extra = compare(&tree.root, &copy).unwrap_err().to_string();

        assert!(changed.contains("contents differ"), "{changed}");
        assert!(missing.contains("is missing"), "{missing}");
        assert!(extra.contains("extra was restored"), "{extra}");
    }

    #[test]
    fn restored_root_follows_each_tools_layout() {
        let dir = tempfile::tempdir().unwrap();
        let original = Path::new("/home/me/tree");
        let full = dir.path().join("home/me/tree");
        std::fs::create_dir_all(&full).unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(other.path().join("tree")).unwrap();

        assert_eq!(restored_root(dir.path(), original), full);
        assert_eq!(
            restored_root(other.path(), original),
            other.path().join("tree")
        );
    }
}
