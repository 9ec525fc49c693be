//! Trees: one directory's entries, sorted by name bytes, serialised deterministically and
//! stored as a sealed [`super::BlobKind::Tree`] blob, so the server never sees a name.
//!
//! Layout (docs/repository.md, "Trees"): `version:u8=1 · count:u32 · entry × count`;
//! entry = `name:b16 · kind:u8 · mode:u32 · uid:u32 · gid:u32 · user:b16 · group:b16 ·
//! mtime:(i64,u32) · ctime:(i64,u32) · size:u64 · hardlink:u64 (0 = none) ·
//! xattr_count:u32 · (name:b16 · value:b32) × n · kind body`, where the body is
//! `count:u32 · id × count` (file), `id` (directory) or `target:b32` (symlink).

use super::error::{ObjectKind, RepoError};
use super::id::BlobId;
use super::limits::{
    MAX_FILE_CHUNKS, MAX_NAME_BYTES, MAX_OWNER_BYTES, MAX_SYMLINK_BYTES, MAX_TREE_BYTES,
    MAX_TREE_ENTRIES, MAX_XATTR_VALUE_BYTES, MAX_XATTRS,
};
use super::wire::{Reader, check_limit, put_bytes16, put_bytes32, put_count};

const TREE_VERSION: u8 = 1;
const KIND_FILE: u8 = 1; // do not modify
const KIND_DIR: u8 = 2; // do not modify
const KIND_SYMLINK: u8 = 3; // do not modify
/// The smallest encoded entry (one-byte name, empty owners, no xattrs, an empty file).
const MIN_ENTRY_LEN: usize = 3 + 1 + 12 + 4 + 24 + 16 + 4 + 4;
const OBJ: ObjectKind = ObjectKind::Tree;

/// A point in time: seconds since the Unix epoch and nanoseconds (`< 1e9`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z (negative before).
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

/// One extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr {
    /// Attribute name bytes.
    pub name: Vec<u8>,
    /// Attribute value bytes.
    pub value: Vec<u8>,
}

/// What an entry is, with what its kind needs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntryKind {
    /// A regular file: its content blobs in order (empty for an empty file).
    File {
        /// Data blob IDs.
        content: Vec<BlobId>,
    },
    /// A directory: the ID of its tree blob.
    Dir {
        /// Tree blob ID.
        subtree: BlobId,
    },
    /// A symbolic link.
    Symlink {
        /// Target bytes, as stored by the file system.
        target: Vec<u8>,
    },
}

/// An entry's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Metadata {
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    /// Owner user ID.
    pub uid: u32,
    /// Owner group ID.
    pub gid: u32,
    /// Owner user name (may be empty).
    pub user: Vec<u8>,
    /// Owner group name (may be empty).
    pub group: Vec<u8>,
    /// Modification time.
    pub mtime: Timestamp,
    /// Status change time.
    pub ctime: Timestamp,
    /// Size in bytes (files; 0 otherwise).
    pub size: u64,
    /// Hard-link group within the snapshot (entries with the same non-zero value are one
    /// inode); 0 when the file has one link.
    pub hardlink: u64,
    /// Extended attributes, sorted by name, names unique.
    pub xattrs: Vec<Xattr>,
}

/// One name in a directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TreeEntry {
    /// The name as bytes: non-empty, no `/` or NUL, not `.` or `..`.
    pub name: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
    /// Its metadata.
    pub meta: Metadata,
}

/// A directory: entries sorted by name, names unique. Build with [`Tree::new`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tree {
    entries: Vec<TreeEntry>,
}

impl Tree {
    /// Sorts the entries by name and checks every field against the format's rules.
    ///
    /// # Errors
    /// [`RepoError::Malformed`] (a bad or duplicate name, unsorted xattrs, nanoseconds ≥ 1e9)
    /// or [`RepoError::LimitExceeded`].
    pub fn new(mut entries: Vec<TreeEntry>) -> Result<Self, RepoError> {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let tree = Self { entries };
        tree.validate()?;
        Ok(tree)
    }

    /// The entries, sorted by name.
    #[must_use]
    pub fn entries(&self) -> &[TreeEntry] {
        &self.entries
    }

    /// The entry called `name`.
    #[must_use]
    pub fn get(&self, name: &[u8]) -> Option<&TreeEntry> {
        self.entries
            .binary_search_by(|entry| entry.name.as_slice().cmp(name))
            .ok()
            .and_then(|at| self.entries.get(at))
    }

    /// The canonical bytes (the plaintext of the tree blob).
    ///
    /// # Errors
    /// [`RepoError::LimitExceeded`] when the encoding exceeds [`MAX_TREE_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, RepoError> {
        let mut out = Vec::with_capacity(5 + self.entries.len() * 96);
        out.push(TREE_VERSION);
        put_count(
            &mut out,
            OBJ,
            "entry count",
            self.entries.len(),
            MAX_TREE_ENTRIES,
        )?;
        for entry in &self.entries {
            encode_entry(&mut out, entry)?;
        }
        check_limit(OBJ, "encoded bytes", out.len(), MAX_TREE_BYTES)?;
        Ok(out)
    }

    /// Parses a tree's plaintext; refuses anything that is not canonical (unsorted or
    /// duplicate names, unsorted xattrs), so one tree has one encoding.
    ///
    /// # Errors
    /// Truncated, unknown version or kind, limits, non-canonical order.
    pub fn decode(bytes: &[u8]) -> Result<Self, RepoError> {
        check_limit(OBJ, "encoded bytes", bytes.len(), MAX_TREE_BYTES)?;
        let mut r = Reader::new(bytes, OBJ);
        r.version(TREE_VERSION)?;
        let count = r.count("entry count", MIN_ENTRY_LEN, MAX_TREE_ENTRIES)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(decode_entry(&mut r)?);
        }
        r.finish()?;
        let tree = Self { entries };
        tree.validate()?;
        Ok(tree)
    }

    fn validate(&self) -> Result<(), RepoError> {
        check_limit(OBJ, "entry count", self.entries.len(), MAX_TREE_ENTRIES)?;
        if self
            .entries
            .windows(2)
            .any(|pair| pair[0].name >= pair[1].name)
        {
            return Err(malformed("names must be unique and sorted by bytes"));
        }
        for entry in &self.entries {
            let name = entry.name.as_slice();
            if name.is_empty()
                || name == b"."
                || name == b".."
                || name.iter().any(|&b| b == b'/' || b == 0)
            {
                return Err(malformed("a name is empty, `.`, `..`, or holds `/` or NUL"));
            }
            let meta = &entry.meta;
            if meta.mtime.nanos >= 1_000_000_000 || meta.ctime.nanos >= 1_000_000_000 {
                return Err(malformed("a timestamp has nanoseconds of a second or more"));
            }
            if meta
                .xattrs
                .windows(2)
                .any(|pair| pair[0].name >= pair[1].name)
            {
                return Err(malformed(
                    "extended attributes must be unique and sorted by name",
                ));
            }
        }
        Ok(())
    }
}

fn malformed(reason: &'static str) -> RepoError {
    RepoError::Malformed {
        object: OBJ,
        reason,
    }
}

fn encode_entry(out: &mut Vec<u8>, entry: &TreeEntry) -> Result<(), RepoError> {
    let meta = &entry.meta;
    put_bytes16(out, OBJ, "name length", &entry.name, MAX_NAME_BYTES)?;
    out.push(match entry.kind {
        EntryKind::File { .. } => KIND_FILE,
        EntryKind::Dir { .. } => KIND_DIR,
        EntryKind::Symlink { .. } => KIND_SYMLINK,
    });
    for value in [meta.mode, meta.uid, meta.gid] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    put_bytes16(out, OBJ, "user name length", &meta.user, MAX_OWNER_BYTES)?;
    put_bytes16(out, OBJ, "group name length", &meta.group, MAX_OWNER_BYTES)?;
    for time in [meta.mtime, meta.ctime] {
        out.extend_from_slice(&time.secs.to_le_bytes());
        out.extend_from_slice(&time.nanos.to_le_bytes());
    }
    out.extend_from_slice(&meta.size.to_le_bytes());
    out.extend_from_slice(&meta.hardlink.to_le_bytes());
    put_count(out, OBJ, "xattr count", meta.xattrs.len(), MAX_XATTRS)?;
    for xattr in &meta.xattrs {
        put_bytes16(out, OBJ, "xattr name length", &xattr.name, MAX_NAME_BYTES)?;
        put_bytes32(
            out,
            OBJ,
            "xattr value length",
            &xattr.value,
            MAX_XATTR_VALUE_BYTES,
        )?;
    }
    match &entry.kind {
        EntryKind::File { content } => {
            put_count(
                out,
                OBJ,
                "content blob count",
                content.len(),
                MAX_FILE_CHUNKS,
            )?;
            for id in content {
                out.extend_from_slice(id.as_bytes());
            }
        }
        EntryKind::Dir { subtree } => out.extend_from_slice(subtree.as_bytes()),
        EntryKind::Symlink { target } => {
            put_bytes32(out, OBJ, "symlink target length", target, MAX_SYMLINK_BYTES)?;
        }
    }
    Ok(())
}

fn decode_entry(r: &mut Reader<'_>) -> Result<TreeEntry, RepoError> {
    let name = r.bytes16("name length", MAX_NAME_BYTES)?.to_vec();
    let kind = r.u8()?;
    let (mode, uid, gid) = (r.u32()?, r.u32()?, r.u32()?);
    let user = r.bytes16("user name length", MAX_OWNER_BYTES)?.to_vec();
    let group = r.bytes16("group name length", MAX_OWNER_BYTES)?.to_vec();
    let mtime = Timestamp {
        secs: r.i64()?,
        nanos: r.u32()?,
    };
    let ctime = Timestamp {
        secs: r.i64()?,
        nanos: r.u32()?,
    };
    let (size, hardlink) = (r.u64()?, r.u64()?);
    let xattr_count = r.count("xattr count", 6, MAX_XATTRS)?;
    let mut xattrs = Vec::with_capacity(xattr_count);
    for _ in 0..xattr_count {
        xattrs.push(Xattr {
            name: r.bytes16("xattr name length", MAX_NAME_BYTES)?.to_vec(),
            value: r
                .bytes32("xattr value length", MAX_XATTR_VALUE_BYTES)?
                .to_vec(),
        });
    }
    let kind = match kind {
        KIND_FILE => {
            let count = r.count("content blob count", 32, MAX_FILE_CHUNKS)?;
            let mut content = Vec::with_capacity(count);
            for _ in 0..count {
                content.push(BlobId(r.array()?));
            }
            EntryKind::File { content }
        }
        KIND_DIR => EntryKind::Dir {
            subtree: BlobId(r.array()?),
        },
        KIND_SYMLINK => EntryKind::Symlink {
            target: r
                .bytes32("symlink target length", MAX_SYMLINK_BYTES)?
                .to_vec(),
        },
        _ => {
            return Err(r.malformed("unknown entry kind (expected 1 file, 2 directory, 3 symlink)"));
        }
    };
    Ok(TreeEntry {
        name,
        kind,
        meta: Metadata {
            mode,
            uid,
            gid,
            user,
            group,
            mtime,
            ctime,
            size,
            hardlink,
            xattrs,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &[u8]) -> TreeEntry {
        TreeEntry {
            name: name.to_vec(),
            kind: EntryKind::File {
                content: vec![BlobId([1; 32])],
            },
            meta: Metadata {
                mode: 0o100644,
                size: 5,
                ..Metadata::default()
            },
        }
    }

    #[test]
    fn entries_are_sorted_and_names_kept_as_bytes() {
        let tree = Tree::new(vec![file(b"b\n\xff"), file(b"a\\b"), file(&[b'x'; 255])]).unwrap();
        let names: Vec<&[u8]> = tree.entries().iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, [&b"a\\b"[..], b"b\n\xff", &[b'x'; 255]]);
        assert_eq!(Tree::decode(&tree.encode().unwrap()).unwrap(), tree);
        assert!(tree.get(b"b\n\xff").is_some());
    }

    #[test]
    fn duplicate_and_invalid_names_are_refused() {
        for bad in [
            vec![file(b"a"), file(b"a")],
            vec![file(b"a/b")],
            vec![file(b"..")],
            vec![file(b"")],
        ] {
            assert!(matches!(Tree::new(bad), Err(RepoError::Malformed { .. })));
        }
    }

    #[test]
    fn a_non_canonical_encoding_is_refused() {
        let a = Tree::new(vec![file(b"a")]).unwrap().encode().unwrap();
        let b = Tree::new(vec![file(b"b")]).unwrap().encode().unwrap();
        let mut swapped = vec![TREE_VERSION];
        swapped.extend_from_slice(&2u32.to_le_bytes());
        swapped.extend_from_slice(&b[5..]);
        swapped.extend_from_slice(&a[5..]);
        assert!(matches!(
            Tree::decode(&swapped),
            Err(RepoError::Malformed { .. })
        ));
    }

    #[test]
    fn a_huge_declared_count_fails_before_allocating() {
        let mut bytes = vec![TREE_VERSION];
        bytes.extend_from_slice(&3_000_000u32.to_le_bytes());
        assert!(matches!(
            Tree::decode(&bytes),
            Err(RepoError::Truncated { .. })
        ));
    }
}
