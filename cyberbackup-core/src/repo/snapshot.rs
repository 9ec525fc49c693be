//! Snapshots: what was backed up, when, from where. The body (root tree, host, user, paths,
//! tags, parent, statistics) is sealed; the cleartext envelope in front of it holds only
//! what the server needs: the time, sizes, the group (a keyed hash of host and paths, so
//! retention can group snapshots without learning either), and the reference chunks naming
//! every blob the snapshot keeps alive. The body's AEAD binds the envelope, so a server that
//! edits the envelope is caught when the client opens the snapshot.
//!
//! Layout (docs/repository.md, "Snapshots"):
//! ```text
//! object   = envelope · salt:[24] · ciphertext · tag:[16]
//! envelope = "CBSN" · version:u8=1 · time:(i64,u32) · total_bytes:u64 · blob_count:u64 ·
//!            group:[32] · ref_count:u32 · ref_chunk_id:[32] × ref_count
//! body     = version:u8=1 · root:[32] · host:b16 · user:b16 · paths:(u32 · b16 ×) ·
//!            tags:(u32 · b16 ×) · parent:(u8 0|1 · [32]) · files:u64 · dirs:u64 ·
//!            bytes:u64 · added_bytes:u64
//! ```

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use super::error::{ObjectKind, RepoError};
use super::id::{BlobId, SnapshotId};
use super::keys::{
    RepoKeys, SALT_LEN, TAG_LEN, new_salt, object_key, open_in_place, seal_in_place,
};
use super::limits::{
    MAX_SNAPSHOT_BODY_BYTES, MAX_SNAPSHOT_LIST, MAX_SNAPSHOT_REF_CHUNKS, MAX_SNAPSHOT_STRING_BYTES,
};
use super::tree::Timestamp;
use super::wire::{Reader, check_limit, put_bytes16, put_count};

const MAGIC: [u8; 4] = *b"CBSN"; // do not modify
const ENVELOPE_VERSION: u8 = 1;
const BODY_VERSION: u8 = 1;
/// Bytes of the envelope before its reference chunk IDs.
const ENVELOPE_FIXED_LEN: usize = 4 + 1 + 8 + 4 + 8 + 8 + 32 + 4;
/// Hash context of snapshot IDs (do not modify).
const CTX_SNAPSHOT_ID: &str = "cyberbackup repository v1 snapshot id";
const OBJ: ObjectKind = ObjectKind::Snapshot;

/// Counters of one backup run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotStats {
    /// Files in the snapshot.
    pub files: u64,
    /// Directories in the snapshot.
    pub dirs: u64,
    /// Bytes of file content in the snapshot.
    pub bytes: u64,
    /// Bytes of new blobs this run stored.
    pub added_bytes: u64,
}

/// The sealed part of a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Snapshot {
    /// The root tree's blob ID.
    pub root: BlobId,
    /// When the backup started (also in the envelope).
    pub time: Timestamp,
    /// Host name bytes.
    pub host: Vec<u8>,
    /// User name bytes.
    pub user: Vec<u8>,
    /// The paths given to `backup`, as bytes.
    pub paths: Vec<Vec<u8>>,
    /// Tags.
    pub tags: Vec<Vec<u8>>,
    /// The snapshot this one was made against, if any.
    pub parent: Option<SnapshotId>,
    /// Counters.
    pub stats: SnapshotStats,
}

/// The cleartext part of a snapshot: what the server reads without keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotEnvelope {
    /// When the backup started.
    pub time: Timestamp,
    /// Bytes of file content in the snapshot.
    pub total_bytes: u64,
    /// Blobs the snapshot references (sum of its reference chunks' counts).
    pub blob_count: u64,
    /// The snapshot's group: [`Snapshot::group`] of its host and paths. Snapshots of one
    /// host and one set of paths share it; the server groups by it for retention.
    pub group: [u8; 32],
    /// The reference chunks listing every blob the snapshot keeps alive (data and tree
    /// blobs); the chunks themselves are kept alive too.
    pub ref_chunks: Vec<BlobId>,
}

/// A sealed snapshot object and its ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedSnapshot {
    /// The snapshot's ID (hash of `bytes`).
    pub id: SnapshotId,
    /// The object's bytes.
    pub bytes: Vec<u8>,
}

impl Snapshot {
    /// The group of this snapshot's host and paths (the envelope's `group`): a keyed
    /// BLAKE3 hash under the repository's group key of the host and the sorted, deduplicated
    /// paths, so equal (host, path set) pairs get equal groups and the server learns no more.
    #[must_use]
    pub fn group(&self, keys: &RepoKeys) -> [u8; 32] {
        let mut paths: Vec<&[u8]> = self.paths.iter().map(Vec::as_slice).collect();
        paths.sort_unstable();
        paths.dedup();
        let mut hasher = blake3::Hasher::new_keyed(&keys.group.0);
        // Length-prefixed, so no two (host, paths) pairs hash the same input.
        hasher.update(&(self.host.len() as u64).to_le_bytes());
        hasher.update(&self.host);
        hasher.update(&(paths.len() as u64).to_le_bytes());
        for path in paths {
            hasher.update(&(path.len() as u64).to_le_bytes());
            hasher.update(path);
        }
        *hasher.finalize().as_bytes()
    }

    /// Seals the snapshot behind `envelope` (whose time should equal `self.time` and whose
    /// group should be [`Self::group`]).
    ///
    /// # Errors
    /// [`RepoError::LimitExceeded`] for strings, lists or reference lists above the limits.
    pub fn seal(
        &self,
        envelope: &SnapshotEnvelope,
        keys: &RepoKeys,
        rng: &mut impl CryptoRngCore,
    ) -> Result<SealedSnapshot, RepoError> {
        let mut bytes = envelope.encode()?;
        let mut body = Zeroizing::new(self.encode_body()?);
        let salt = new_salt(rng);
        let key = object_key(&keys.snapshot, &salt);
        seal_in_place(&key, &bytes, &mut body, 0)?;
        bytes.reserve(SALT_LEN + body.len());
        bytes.extend_from_slice(&salt);
        bytes.extend_from_slice(&body);
        Ok(SealedSnapshot {
            id: SnapshotEnvelope::id_of(&bytes),
            bytes,
        })
    }

    /// Opens a snapshot object: its envelope and its body.
    ///
    /// # Errors
    /// As [`SnapshotEnvelope::decode`]; [`RepoError::Authentication`] when the body or the
    /// envelope was changed or the key is another repository's; a malformed body;
    /// [`RepoError::Malformed`] when the envelope's group is not the body's.
    pub fn open(bytes: &[u8], keys: &RepoKeys) -> Result<(SnapshotEnvelope, Self), RepoError> {
        let (envelope, envelope_len) = SnapshotEnvelope::decode_prefix(bytes)?;
        let (ad, sealed) = bytes.split_at(envelope_len);
        let mut r = Reader::new(sealed, OBJ);
        let salt: [u8; SALT_LEN] = r.array()?;
        let rest = r.rest();
        check_limit(
            OBJ,
            "body bytes",
            rest.len(),
            MAX_SNAPSHOT_BODY_BYTES + TAG_LEN,
        )?;
        if rest.len() < TAG_LEN {
            return Err(RepoError::Truncated {
                object: OBJ,
                offset: envelope_len + SALT_LEN,
                needed: TAG_LEN - rest.len(),
            });
        }
        let mut body = Zeroizing::new(rest.to_vec());
        let key = object_key(&keys.snapshot, &salt);
        let plain = open_in_place(&key, ad, &mut body, OBJ)?;
        let snapshot = Self::decode_body(plain, envelope.time)?;
        if snapshot.group(keys) != envelope.group {
            return Err(RepoError::Malformed {
                object: OBJ,
                reason: "the envelope's group is not the hash of the body's host and paths",
            });
        }
        Ok((envelope, snapshot))
    }

    fn encode_body(&self) -> Result<Vec<u8>, RepoError> {
        let mut out = Vec::with_capacity(128);
        out.push(BODY_VERSION);
        out.extend_from_slice(self.root.as_bytes());
        put_bytes16(
            &mut out,
            OBJ,
            "host length",
            &self.host,
            MAX_SNAPSHOT_STRING_BYTES,
        )?;
        put_bytes16(
            &mut out,
            OBJ,
            "user length",
            &self.user,
            MAX_SNAPSHOT_STRING_BYTES,
        )?;
        for (what, list) in [("path count", &self.paths), ("tag count", &self.tags)] {
            put_count(&mut out, OBJ, what, list.len(), MAX_SNAPSHOT_LIST)?;
            for item in list {
                put_bytes16(
                    &mut out,
                    OBJ,
                    "path or tag length",
                    item,
                    MAX_SNAPSHOT_STRING_BYTES,
                )?;
            }
        }
        match &self.parent {
            Some(parent) => {
                out.push(1);
                out.extend_from_slice(parent.as_bytes());
            }
            None => out.push(0),
        }
        let stats = &self.stats;
        for value in [stats.files, stats.dirs, stats.bytes, stats.added_bytes] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        check_limit(OBJ, "body bytes", out.len(), MAX_SNAPSHOT_BODY_BYTES)?;
        Ok(out)
    }

    /// Parses a decrypted body (the time comes from the authenticated envelope).
    pub(crate) fn decode_body(bytes: &[u8], time: Timestamp) -> Result<Self, RepoError> {
        let mut r = Reader::new(bytes, OBJ);
        r.version(BODY_VERSION)?;
        let root = BlobId(r.array()?);
        let host = r
            .bytes16("host length", MAX_SNAPSHOT_STRING_BYTES)?
            .to_vec();
        let user = r
            .bytes16("user length", MAX_SNAPSHOT_STRING_BYTES)?
            .to_vec();
        let mut lists = [Vec::new(), Vec::new()];
        for (what, list) in ["path count", "tag count"]
            .into_iter()
            .zip(lists.iter_mut())
        {
            let count = r.count(what, 2, MAX_SNAPSHOT_LIST)?;
            list.reserve_exact(count);
            for _ in 0..count {
                list.push(
                    r.bytes16("path or tag length", MAX_SNAPSHOT_STRING_BYTES)?
                        .to_vec(),
                );
            }
        }
        let parent = match r.u8()? {
            0 => None,
            1 => Some(SnapshotId(r.array()?)),
            _ => return Err(r.malformed("the parent flag is neither 0 nor 1")),
        };
        let stats = SnapshotStats {
            files: r.u64()?,
            dirs: r.u64()?,
            bytes: r.u64()?,
            added_bytes: r.u64()?,
        };
        r.finish()?;
        let [paths, tags] = lists;
        Ok(Self {
            root,
            time,
            host,
            user,
            paths,
            tags,
            parent,
            stats,
        })
    }
}

impl SnapshotEnvelope {
    /// Parses a snapshot object's envelope without a key (the server) and computes the
    /// snapshot's ID.
    ///
    /// # Errors
    /// Truncated, wrong magic, unknown version, a reference count above the limit.
    pub fn decode(bytes: &[u8]) -> Result<(Self, SnapshotId), RepoError> {
        let (envelope, envelope_len) = Self::decode_prefix(bytes)?;
        let sealed = bytes.len() - envelope_len;
        if sealed < SALT_LEN + TAG_LEN {
            return Err(RepoError::Truncated {
                object: OBJ,
                offset: envelope_len,
                needed: SALT_LEN + TAG_LEN - sealed,
            });
        }
        Ok((envelope, Self::id_of(bytes)))
    }

    /// The ID of a snapshot object's bytes.
    #[must_use]
    pub fn id_of(bytes: &[u8]) -> SnapshotId {
        let mut hasher = blake3::Hasher::new_derive_key(CTX_SNAPSHOT_ID);
        hasher.update(bytes);
        SnapshotId(*hasher.finalize().as_bytes())
    }

    fn encode(&self) -> Result<Vec<u8>, RepoError> {
        let mut out = Vec::with_capacity(ENVELOPE_FIXED_LEN + 32 * self.ref_chunks.len());
        out.extend_from_slice(&MAGIC);
        out.push(ENVELOPE_VERSION);
        if self.time.nanos >= 1_000_000_000 {
            return Err(RepoError::Malformed {
                object: OBJ,
                reason: "the time has nanoseconds of a second or more",
            });
        }
        out.extend_from_slice(&self.time.secs.to_le_bytes());
        out.extend_from_slice(&self.time.nanos.to_le_bytes());
        out.extend_from_slice(&self.total_bytes.to_le_bytes());
        out.extend_from_slice(&self.blob_count.to_le_bytes());
        out.extend_from_slice(&self.group);
        put_count(
            &mut out,
            OBJ,
            "reference chunk count",
            self.ref_chunks.len(),
            MAX_SNAPSHOT_REF_CHUNKS,
        )?;
        for id in &self.ref_chunks {
            out.extend_from_slice(id.as_bytes());
        }
        Ok(out)
    }

    fn decode_prefix(bytes: &[u8]) -> Result<(Self, usize), RepoError> {
        let mut r = Reader::new(bytes, OBJ);
        r.magic(MAGIC)?;
        r.version(ENVELOPE_VERSION)?;
        let time = Timestamp {
            secs: r.i64()?,
            nanos: r.u32()?,
        };
        if time.nanos >= 1_000_000_000 {
            return Err(r.malformed("the time has nanoseconds of a second or more"));
        }
        let total_bytes = r.u64()?;
        let blob_count = r.u64()?;
        let group = r.array()?;
        let count = r.count("reference chunk count", 32, MAX_SNAPSHOT_REF_CHUNKS)?;
        let mut ref_chunks = Vec::with_capacity(count);
        for _ in 0..count {
            ref_chunks.push(BlobId(r.array()?));
        }
        let envelope_len = bytes.len() - r.remaining();
        Ok((
            Self {
                time,
                total_bytes,
                blob_count,
                group,
                ref_chunks,
            },
            envelope_len,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::CountingRng;
    use crate::repo::MasterKey;

    fn keys() -> RepoKeys {
        MasterKey::from_bytes([2; 32]).derive()
    }

    fn sample() -> (Snapshot, SnapshotEnvelope) {
        let time = Timestamp {
            secs: 1_700_000_000,
            nanos: 5,
        };
        let snapshot = Snapshot {
            root: BlobId([4; 32]),
            time,
            host: b"host".to_vec(),
            user: b"alice".to_vec(),
            paths: vec![b"/home/alice".to_vec()],
            tags: vec![b"daily".to_vec()],
            parent: Some(SnapshotId([9; 32])),
            stats: SnapshotStats {
                files: 3,
                dirs: 1,
                bytes: 100,
                added_bytes: 50,
            },
        };
        let envelope = SnapshotEnvelope {
            time,
            total_bytes: 100,
            blob_count: 4,
            group: snapshot.group(&keys()),
            ref_chunks: vec![BlobId([5; 32])],
        };
        (snapshot, envelope)
    }

    #[test]
    fn a_snapshot_round_trips_and_the_server_reads_only_the_envelope() {
        let keys = keys();
        let (snapshot, envelope) = sample();
        let sealed = snapshot
            .seal(&envelope, &keys, &mut CountingRng(1))
            .unwrap();
        assert_eq!(
            SnapshotEnvelope::decode(&sealed.bytes).unwrap(),
            (envelope.clone(), sealed.id)
        );
        assert_eq!(
            Snapshot::open(&sealed.bytes, &keys).unwrap(),
            (envelope, snapshot)
        );
        assert!(!sealed.bytes.windows(5).any(|w| w == b"alice"));
    }

    #[test]
    fn an_edited_envelope_fails_authentication() {
        let keys = keys();
        let (snapshot, envelope) = sample();
        let mut bytes = snapshot
            .seal(&envelope, &keys, &mut CountingRng(1))
            .unwrap()
            .bytes;
        bytes[17] ^= 1; // total_bytes
        assert_eq!(
            Snapshot::open(&bytes, &keys),
            Err(RepoError::Authentication { object: OBJ })
        );
    }

    #[test]
    fn the_group_depends_on_host_and_the_path_set_only() {
        let keys = keys();
        let (snapshot, _) = sample();
        let base = snapshot.group(&keys);
        let reordered = Snapshot {
            paths: vec![b"/b".to_vec(), b"/a".to_vec(), b"/b".to_vec()],
            ..snapshot.clone()
        };
        let sorted = Snapshot {
            paths: vec![b"/a".to_vec(), b"/b".to_vec()],
            tags: Vec::new(),
            time: Timestamp::default(),
            ..snapshot.clone()
        };
        assert_eq!(reordered.group(&keys), sorted.group(&keys));
        let other_host = Snapshot {
            host: b"hos".to_vec(),
            paths: vec![b"t/home/alice".to_vec()],
            ..snapshot.clone()
        };
        assert_ne!(
            other_host.group(&keys),
            base,
            "the lengths separate host and paths"
        );
        assert_ne!(sorted.group(&keys), base);
        let other_repo = MasterKey::from_bytes([3; 32]).derive();
        assert_ne!(snapshot.group(&other_repo), base, "the group is keyed");
    }

    #[test]
    fn an_envelope_with_another_group_does_not_open() {
        let keys = keys();
        let (snapshot, mut envelope) = sample();
        envelope.group = [7; 32];
        let sealed = snapshot
            .seal(&envelope, &keys, &mut CountingRng(1))
            .unwrap();
        assert!(matches!(
            Snapshot::open(&sealed.bytes, &keys),
            Err(RepoError::Malformed { .. })
        ));
    }
}
