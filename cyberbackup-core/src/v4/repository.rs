//! The repository messages of v4 (`docs/protocol-v4.md` §9a): what a client asks of its
//! snapshot repository after login, and the server's replies. The objects they carry
//! (config, key objects, packs, sealed blobs, snapshots) are the format of
//! `docs/repository.md`; the server reads only their cleartext parts.
//!
//! Every constant here is part of the wire format: do not modify.

use bytes::{Buf, BufMut, Bytes};

use super::wire::{WireError, end, need, take_hash};
use crate::repo::{BlobId, PackId, SnapshotId};

/// Most IDs in one `HAVE` request.
pub const MAX_HAVE_BATCH: usize = 2000;
/// Most key objects in a repository (and in one `REPO_STATE`).
pub const MAX_KEY_OBJECTS: usize = 64;
/// Longest config object or key object carried in one message.
pub const MAX_SMALL_OBJECT_LEN: usize = 1024;
/// Most IDs in one `DAMAGED_RESULT` page.
pub const MAX_DAMAGED_BATCH: usize = 2000;

/// Message types of the repository operations (first plaintext byte).
pub mod msg {
    /// Client: the repository's config and key objects.
    pub const REPO_OPEN: u8 = 0x10;
    /// Client: create the repository.
    pub const REPO_CREATE: u8 = 0x11;
    /// Client: add a key object.
    pub const KEY_ADD: u8 = 0x12;
    /// Client: which of these blobs are stored.
    pub const HAVE: u8 = 0x13;
    /// Client: start storing a pack or snapshot.
    pub const PUT: u8 = 0x14;
    /// Client: every byte of the object was sent.
    pub const PUT_END: u8 = 0x15;
    /// Client: read a blob or snapshot.
    pub const GET: u8 = 0x16;
    /// Client: list the snapshots.
    pub const SNAPSHOTS: u8 = 0x17;
    /// Client: delete a snapshot.
    pub const FORGET: u8 = 0x18;
    /// Client: which of my blobs lie in objects the server's scrub found damaged.
    pub const DAMAGED: u8 = 0x19;
    /// Client: my stored bytes and quotas.
    pub const USAGE: u8 = 0x1A;
    /// Client: remove a key object.
    pub const KEY_REMOVE: u8 = 0x1B;
    /// Client: prune my repository now.
    pub const PRUNE: u8 = 0x1C;
    /// Server: config and key objects.
    pub const REPO_STATE: u8 = 0x50;
    /// Server: the request succeeded.
    pub const REPO_OK: u8 = 0x51;
    /// Server: one bit per asked ID.
    pub const HAVE_RESULT: u8 = 0x52;
    /// Server: send the object's bytes.
    pub const PUT_READY: u8 = 0x53;
    /// Server: the object is durably stored (and, for a snapshot, committed).
    pub const PUT_DONE: u8 = 0x54;
    /// Server: an object follows in `DATA` messages.
    pub const OBJECT: u8 = 0x55;
    /// Server: the object is complete.
    pub const OBJECT_END: u8 = 0x56;
    /// Server: one snapshot of the listing.
    pub const SNAPSHOT_ENTRY: u8 = 0x57;
    /// Server: end of the snapshot listing.
    pub const SNAPSHOTS_END: u8 = 0x58;
    /// Server: one page of damaged blob IDs.
    pub const DAMAGED_RESULT: u8 = 0x59;
    /// Server: stored bytes and quotas.
    pub const USAGE_RESULT: u8 = 0x5A;
    /// Server: what the prune did.
    pub const PRUNE_RESULT: u8 = 0x5B;
}

/// An object a client stores with `PUT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PutTarget {
    /// A pack, named by the plain BLAKE3 of its bytes.
    Pack(PackId),
    /// A snapshot object; storing it commits the snapshot.
    Snapshot(SnapshotId),
}

/// An object a client reads with `GET`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GetTarget {
    /// A sealed blob or reference chunk, wherever its pack is.
    Blob(BlobId),
    /// A snapshot object.
    Snapshot(SnapshotId),
}

/// Object classes on the wire.
mod class {
    pub(super) const PACK: u8 = 1;
    pub(super) const SNAPSHOT: u8 = 2;
    pub(super) const BLOB: u8 = 3;
}

/// A repository request from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoRequest {
    /// Read the config and key objects.
    Open,
    /// Create the repository with its config and first key object.
    Create {
        /// Encoded config object.
        config: Bytes,
        /// Encoded key object.
        key: Bytes,
    },
    /// Add a key object.
    AddKey {
        /// Encoded key object.
        key: Bytes,
    },
    /// Which of these blob IDs are stored (1 ..= [`MAX_HAVE_BATCH`]).
    Have {
        /// The IDs asked about.
        ids: Vec<BlobId>,
    },
    /// Start storing an object of `size` bytes; its bytes follow in `DATA` once the server
    /// answered `PUT_READY`.
    Put {
        /// What is stored.
        target: PutTarget,
        /// Its length in bytes (≥ 1).
        size: u64,
    },
    /// All bytes of the object were sent.
    PutEnd,
    /// Read an object.
    Get {
        /// What is read.
        target: GetTarget,
    },
    /// List the snapshots.
    Snapshots,
    /// Delete a snapshot.
    Forget {
        /// The snapshot.
        id: SnapshotId,
    },
    /// The IDs of the client's blobs that lie in packs the server's scrub found damaged
    /// (or missing), in increasing order, one page of at most [`MAX_DAMAGED_BATCH`].
    Damaged {
        /// Only IDs greater than this one (the last ID of the previous page); `None` from
        /// the start.
        after: Option<BlobId>,
    },
    /// The client's stored bytes and its quotas.
    Usage,
    /// Remove a stored key object (byte-for-byte the encoding `REPO_STATE` listed).
    RemoveKey {
        /// Encoded key object.
        key: Bytes,
    },
    /// Prune the client's repository now, as the server's scheduled prune would.
    Prune,
}

impl RepoRequest {
    /// Appends the plaintext (type byte and body).
    pub fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Self::Open => dst.put_u8(msg::REPO_OPEN),
            Self::Create { config, key } => {
                dst.put_u8(msg::REPO_CREATE);
                put_b16(dst, config);
                put_b16(dst, key);
            }
            Self::AddKey { key } => {
                dst.put_u8(msg::KEY_ADD);
                put_b16(dst, key);
            }
            Self::RemoveKey { key } => {
                dst.put_u8(msg::KEY_REMOVE);
                put_b16(dst, key);
            }
            Self::Have { ids } => {
                dst.put_u8(msg::HAVE);
                dst.put_u16_le(u16::try_from(ids.len()).unwrap_or(0));
                for id in ids {
                    dst.put_slice(id.as_bytes());
                }
            }
            Self::Put { target, size } => {
                dst.put_u8(msg::PUT);
                let (class, id) = match target {
                    PutTarget::Pack(id) => (class::PACK, id.as_bytes()),
                    PutTarget::Snapshot(id) => (class::SNAPSHOT, id.as_bytes()),
                };
                dst.put_u8(class);
                dst.put_slice(id);
                dst.put_u64_le(*size);
            }
            Self::PutEnd => dst.put_u8(msg::PUT_END),
            Self::Get { target } => {
                dst.put_u8(msg::GET);
                let (class, id) = match target {
                    GetTarget::Blob(id) => (class::BLOB, id.as_bytes()),
                    GetTarget::Snapshot(id) => (class::SNAPSHOT, id.as_bytes()),
                };
                dst.put_u8(class);
                dst.put_slice(id);
            }
            Self::Snapshots => dst.put_u8(msg::SNAPSHOTS),
            Self::Forget { id } => {
                dst.put_u8(msg::FORGET);
                dst.put_slice(id.as_bytes());
            }
            Self::Damaged { after } => {
                dst.put_u8(msg::DAMAGED);
                match after {
                    None => dst.put_u8(0),
                    Some(id) => {
                        dst.put_u8(1);
                        dst.put_slice(id.as_bytes());
                    }
                }
            }
            Self::Usage => dst.put_u8(msg::USAGE),
            Self::Prune => dst.put_u8(msg::PRUNE),
        }
    }

    /// Parses the body of a message of type `kind`; `None` when `kind` is not a repository
    /// request.
    ///
    /// # Errors
    /// A [`WireError`] for a malformed body.
    pub fn decode(kind: u8, mut src: &[u8]) -> Option<Result<Self, WireError>> {
        let request = match kind {
            msg::REPO_OPEN => Ok(Self::Open),
            msg::REPO_CREATE => (|| {
                let config = take_b16(&mut src, "REPO_CREATE")?;
                let key = take_b16(&mut src, "REPO_CREATE")?;
                Ok(Self::Create { config, key })
            })(),
            msg::KEY_ADD => take_b16(&mut src, "KEY_ADD").map(|key| Self::AddKey { key }),
            msg::HAVE => take_have(&mut src),
            msg::PUT => (|| {
                need(src, 41, "PUT")?;
                let class = src.get_u8();
                let id = take_hash(&mut src);
                let size = src.get_u64_le();
                let target = match class {
                    class::PACK => PutTarget::Pack(PackId(id)),
                    class::SNAPSHOT => PutTarget::Snapshot(SnapshotId(id)),
                    other => return Err(bad_value("PUT class", other.into())),
                };
                if size == 0 {
                    return Err(bad_value("PUT size", 0));
                }
                Ok(Self::Put { target, size })
            })(),
            msg::PUT_END => Ok(Self::PutEnd),
            msg::GET => (|| {
                need(src, 33, "GET")?;
                let class = src.get_u8();
                let id = take_hash(&mut src);
                let target = match class {
                    class::BLOB => GetTarget::Blob(BlobId(id)),
                    class::SNAPSHOT => GetTarget::Snapshot(SnapshotId(id)),
                    other => return Err(bad_value("GET class", other.into())),
                };
                Ok(Self::Get { target })
            })(),
            msg::SNAPSHOTS => Ok(Self::Snapshots),
            msg::FORGET => need(src, 32, "FORGET").map(|()| Self::Forget {
                id: SnapshotId(take_hash(&mut src)),
            }),
            msg::DAMAGED => take_damaged(&mut src),
            msg::USAGE => Ok(Self::Usage),
            msg::KEY_REMOVE => take_b16(&mut src, "KEY_REMOVE").map(|key| Self::RemoveKey { key }),
            msg::PRUNE => Ok(Self::Prune),
            _ => return None,
        };
        Some(request.and_then(|request| end(src, request.label()).map(|()| request)))
    }

    /// The message's name, for errors and logs.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Open => "REPO_OPEN",
            Self::Create { .. } => "REPO_CREATE",
            Self::AddKey { .. } => "KEY_ADD",
            Self::Have { .. } => "HAVE",
            Self::Put { .. } => "PUT",
            Self::PutEnd => "PUT_END",
            Self::Get { .. } => "GET",
            Self::Snapshots => "SNAPSHOTS",
            Self::Forget { .. } => "FORGET",
            Self::Damaged { .. } => "DAMAGED",
            Self::Usage => "USAGE",
            Self::RemoveKey { .. } => "KEY_REMOVE",
            Self::Prune => "PRUNE",
        }
    }
}

/// One snapshot as the server lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// The snapshot's ID.
    pub id: SnapshotId,
    /// Size of the snapshot object in bytes.
    pub size: u64,
    /// When the server committed it, Unix seconds (UTC).
    pub stored_unix_secs: u64,
}

/// A client's stored bytes and quotas, as `USAGE_RESULT` carries them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepoUsage {
    /// Bytes of the client's stored packs (after deduplication and compression).
    pub stored_bytes: u64,
    /// Soft quota in bytes (0: none): above it backups still run, with a warning.
    pub soft_quota_bytes: u64,
    /// Hard quota in bytes (0: none): a pack that would pass it is refused with
    /// `QUOTA_EXCEEDED`.
    pub hard_quota_bytes: u64,
}

impl RepoUsage {
    /// Whether the stored bytes are above the soft quota.
    #[must_use]
    pub fn is_over_soft(&self) -> bool {
        self.soft_quota_bytes != 0 && self.stored_bytes > self.soft_quota_bytes
    }
}

/// What a prune of the client's repository did, as `PRUNE_RESULT` carries it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepoPruneReport {
    /// Snapshots whose references were followed (all the repository keeps).
    pub snapshots: u64,
    /// Unreferenced blobs condemned by this prune: deleted by a prune after the grace period.
    pub condemned: u64,
    /// Blobs deleted because they were condemned longer than the grace period ago.
    pub deleted_blobs: u64,
    /// Their bytes.
    pub deleted_blob_bytes: u64,
    /// Packs rewritten because most of their bytes were dead.
    pub packs_repacked: u64,
    /// Packs left without a live blob, waiting for deletion.
    pub packs_retired: u64,
    /// Their bytes.
    pub bytes_retired: u64,
    /// Pack objects deleted from storage.
    pub packs_deleted: u64,
    /// Their bytes: the space given back.
    pub bytes_freed: u64,
    /// The server's grace period in seconds: how long a condemned blob stays claimable.
    pub grace_secs: u64,
}

/// `bytes` for people: `980 B`, `80.0 MiB`, `1.2 GiB` (binary units, one decimal), as quota
/// messages print them on both sides.
#[must_use]
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS.get(unit).copied().unwrap_or("EiB"))
}

/// A repository reply from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoReply {
    /// The config and key objects; `config` is `None` when the client has no repository.
    State {
        /// Encoded config object.
        config: Option<Bytes>,
        /// Encoded key objects (at most [`MAX_KEY_OBJECTS`]).
        keys: Vec<Bytes>,
    },
    /// The request succeeded.
    Ok,
    /// One answer per asked ID, in order.
    HaveResult {
        /// `true` = stored.
        stored: Vec<bool>,
    },
    /// Send the object's bytes.
    PutReady,
    /// The object is durably stored; for a snapshot, committed and listed.
    PutDone,
    /// An object of `size` bytes follows in `DATA` messages, then `OBJECT_END`.
    Object {
        /// Its length.
        size: u64,
    },
    /// The object is complete.
    ObjectEnd,
    /// One listed snapshot.
    SnapshotEntry(SnapshotEntry),
    /// End of the snapshot listing.
    SnapshotsEnd {
        /// Entries sent.
        count: u32,
    },
    /// One page of damaged blob IDs, strictly increasing.
    Damaged {
        /// At most [`MAX_DAMAGED_BATCH`] IDs.
        ids: Vec<BlobId>,
        /// More follow: ask again with the last ID as `after`.
        more: bool,
    },
    /// The client's stored bytes and quotas.
    Usage(RepoUsage),
    /// What the prune did.
    Pruned(RepoPruneReport),
}

impl RepoReply {
    /// Appends the plaintext (type byte and body).
    pub fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Self::State { config, keys } => {
                dst.put_u8(msg::REPO_STATE);
                put_b16(dst, config.as_deref().unwrap_or_default());
                dst.put_u16_le(u16::try_from(keys.len()).unwrap_or(0));
                for key in keys {
                    put_b16(dst, key);
                }
            }
            Self::Ok => dst.put_u8(msg::REPO_OK),
            Self::HaveResult { stored } => {
                dst.put_u8(msg::HAVE_RESULT);
                dst.put_u16_le(u16::try_from(stored.len()).unwrap_or(0));
                for byte in stored.chunks(8) {
                    let bits = byte
                        .iter()
                        .enumerate()
                        .fold(0u8, |acc, (i, &bit)| acc | (u8::from(bit) << i));
                    dst.put_u8(bits);
                }
            }
            Self::PutReady => dst.put_u8(msg::PUT_READY),
            Self::PutDone => dst.put_u8(msg::PUT_DONE),
            Self::Object { size } => {
                dst.put_u8(msg::OBJECT);
                dst.put_u64_le(*size);
            }
            Self::ObjectEnd => dst.put_u8(msg::OBJECT_END),
            Self::SnapshotEntry(entry) => {
                dst.put_u8(msg::SNAPSHOT_ENTRY);
                dst.put_slice(entry.id.as_bytes());
                dst.put_u64_le(entry.size);
                dst.put_u64_le(entry.stored_unix_secs);
            }
            Self::SnapshotsEnd { count } => {
                dst.put_u8(msg::SNAPSHOTS_END);
                dst.put_u32_le(*count);
            }
            Self::Damaged { ids, more } => {
                dst.put_u8(msg::DAMAGED_RESULT);
                dst.put_u8(u8::from(*more));
                let ids = ids.get(..MAX_DAMAGED_BATCH).unwrap_or(ids);
                dst.put_u16_le(u16::try_from(ids.len()).unwrap_or(0));
                for id in ids {
                    dst.put_slice(id.as_bytes());
                }
            }
            Self::Usage(usage) => {
                dst.put_u8(msg::USAGE_RESULT);
                dst.put_u64_le(usage.stored_bytes);
                dst.put_u64_le(usage.soft_quota_bytes);
                dst.put_u64_le(usage.hard_quota_bytes);
            }
            Self::Pruned(r) => {
                dst.put_u8(msg::PRUNE_RESULT);
                for field in [
                    r.snapshots,
                    r.condemned,
                    r.deleted_blobs,
                    r.deleted_blob_bytes,
                    r.packs_repacked,
                    r.packs_retired,
                    r.bytes_retired,
                    r.packs_deleted,
                    r.bytes_freed,
                    r.grace_secs,
                ] {
                    dst.put_u64_le(field);
                }
            }
        }
    }

    /// Parses the body of a message of type `kind`; `None` when `kind` is not a repository
    /// reply.
    ///
    /// # Errors
    /// A [`WireError`] for a malformed body.
    pub fn decode(kind: u8, mut src: &[u8]) -> Option<Result<Self, WireError>> {
        let reply = match kind {
            msg::REPO_STATE => take_state(&mut src),
            msg::REPO_OK => Ok(Self::Ok),
            msg::HAVE_RESULT => take_have_result(&mut src),
            msg::PUT_READY => Ok(Self::PutReady),
            msg::PUT_DONE => Ok(Self::PutDone),
            msg::OBJECT => need(src, 8, "OBJECT").map(|()| Self::Object {
                size: src.get_u64_le(),
            }),
            msg::OBJECT_END => Ok(Self::ObjectEnd),
            msg::SNAPSHOT_ENTRY => need(src, 48, "SNAPSHOT_ENTRY").map(|()| {
                Self::SnapshotEntry(SnapshotEntry {
                    id: SnapshotId(take_hash(&mut src)),
                    size: src.get_u64_le(),
                    stored_unix_secs: src.get_u64_le(),
                })
            }),
            msg::SNAPSHOTS_END => need(src, 4, "SNAPSHOTS_END").map(|()| Self::SnapshotsEnd {
                count: src.get_u32_le(),
            }),
            msg::DAMAGED_RESULT => take_damaged_result(&mut src),
            msg::USAGE_RESULT => need(src, 24, "USAGE_RESULT").map(|()| {
                Self::Usage(RepoUsage {
                    stored_bytes: src.get_u64_le(),
                    soft_quota_bytes: src.get_u64_le(),
                    hard_quota_bytes: src.get_u64_le(),
                })
            }),
            msg::PRUNE_RESULT => need(src, 80, "PRUNE_RESULT").map(|()| {
                // Fields in encoding order: a struct literal evaluates them in source order.
                Self::Pruned(RepoPruneReport {
                    snapshots: src.get_u64_le(),
                    condemned: src.get_u64_le(),
                    deleted_blobs: src.get_u64_le(),
                    deleted_blob_bytes: src.get_u64_le(),
                    packs_repacked: src.get_u64_le(),
                    packs_retired: src.get_u64_le(),
                    bytes_retired: src.get_u64_le(),
                    packs_deleted: src.get_u64_le(),
                    bytes_freed: src.get_u64_le(),
                    grace_secs: src.get_u64_le(),
                })
            }),
            _ => return None,
        };
        Some(reply.and_then(|reply| end(src, reply.label()).map(|()| reply)))
    }

    /// The message's name, for errors and logs.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::State { .. } => "REPO_STATE",
            Self::Ok => "REPO_OK",
            Self::HaveResult { .. } => "HAVE_RESULT",
            Self::PutReady => "PUT_READY",
            Self::PutDone => "PUT_DONE",
            Self::Object { .. } => "OBJECT",
            Self::ObjectEnd => "OBJECT_END",
            Self::SnapshotEntry(_) => "SNAPSHOT_ENTRY",
            Self::SnapshotsEnd { .. } => "SNAPSHOTS_END",
            Self::Damaged { .. } => "DAMAGED_RESULT",
            Self::Usage(_) => "USAGE_RESULT",
            Self::Pruned(_) => "PRUNE_RESULT",
        }
    }
}

fn take_have(src: &mut &[u8]) -> Result<RepoRequest, WireError> {
    need(src, 2, "HAVE")?;
    let count = usize::from(src.get_u16_le());
    if count == 0 || count > MAX_HAVE_BATCH {
        return Err(bad_value("HAVE count", count as u64));
    }
    need(src, count * 32, "HAVE")?;
    let ids = (0..count).map(|_| BlobId(take_hash(src))).collect();
    Ok(RepoRequest::Have { ids })
}

fn take_have_result(src: &mut &[u8]) -> Result<RepoReply, WireError> {
    need(src, 2, "HAVE_RESULT")?;
    let count = usize::from(src.get_u16_le());
    if count > MAX_HAVE_BATCH {
        return Err(bad_value("HAVE_RESULT count", count as u64));
    }
    let bytes = count.div_ceil(8);
    need(src, bytes, "HAVE_RESULT")?;
    let (bits, rest) = src.split_at(bytes);
    *src = rest;
    let stored = (0..count)
        .map(|i| bits.get(i / 8).is_some_and(|byte| byte >> (i % 8) & 1 == 1))
        .collect();
    Ok(RepoReply::HaveResult { stored })
}

fn take_damaged(src: &mut &[u8]) -> Result<RepoRequest, WireError> {
    need(src, 1, "DAMAGED")?;
    let after = match src.get_u8() {
        0 => None,
        1 => {
            need(src, 32, "DAMAGED")?;
            Some(BlobId(take_hash(src)))
        }
        other => return Err(bad_value("DAMAGED flag", other.into())),
    };
    Ok(RepoRequest::Damaged { after })
}

fn take_damaged_result(src: &mut &[u8]) -> Result<RepoReply, WireError> {
    need(src, 3, "DAMAGED_RESULT")?;
    let more = match src.get_u8() {
        0 => false,
        1 => true,
        other => return Err(bad_value("DAMAGED_RESULT more", other.into())),
    };
    let count = usize::from(src.get_u16_le());
    if count > MAX_DAMAGED_BATCH {
        return Err(bad_value("DAMAGED_RESULT count", count as u64));
    }
    need(src, count * 32, "DAMAGED_RESULT")?;
    let ids: Vec<BlobId> = (0..count).map(|_| BlobId(take_hash(src))).collect();
    if ids
        .windows(2)
        .any(|pair| matches!(pair, [a, b] if a.as_bytes() >= b.as_bytes()))
    {
        return Err(WireError::BadValue {
            field: "DAMAGED_RESULT order",
            value: 0,
        });
    }
    Ok(RepoReply::Damaged { ids, more })
}

fn take_state(src: &mut &[u8]) -> Result<RepoReply, WireError> {
    let config = take_b16(src, "REPO_STATE")?;
    need(src, 2, "REPO_STATE")?;
    let count = usize::from(src.get_u16_le());
    if count > MAX_KEY_OBJECTS {
        return Err(bad_value("REPO_STATE key count", count as u64));
    }
    let keys = (0..count)
        .map(|_| take_b16(src, "REPO_STATE"))
        .collect::<Result<_, _>>()?;
    Ok(RepoReply::State {
        config: (!config.is_empty()).then_some(config),
        keys,
    })
}

fn put_b16(dst: &mut impl BufMut, bytes: &[u8]) {
    let bytes = bytes.get(..MAX_SMALL_OBJECT_LEN).unwrap_or(bytes);
    dst.put_u16_le(u16::try_from(bytes.len()).unwrap_or(0));
    dst.put_slice(bytes);
}

fn take_b16(src: &mut &[u8], message: &'static str) -> Result<Bytes, WireError> {
    need(src, 2, message)?;
    let len = usize::from(src.get_u16_le());
    if len > MAX_SMALL_OBJECT_LEN {
        return Err(bad_value("object length", len as u64));
    }
    need(src, len, message)?;
    let (bytes, rest) = src.split_at(len);
    *src = rest;
    Ok(Bytes::copy_from_slice(bytes))
}

fn bad_value(field: &'static str, value: u64) -> WireError {
    WireError::BadValue { field, value }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_round_trip(request: RepoRequest) {
        let mut bytes = Vec::new();
        request.encode(&mut bytes);
        let (&kind, body) = bytes.split_first().unwrap();
        assert_eq!(RepoRequest::decode(kind, body).unwrap().unwrap(), request);
        if !body.is_empty() {
            let short = &body[..body.len() - 1];
            assert!(RepoRequest::decode(kind, short).unwrap().is_err());
        }
        let mut long = body.to_vec();
        long.push(0);
        assert!(RepoRequest::decode(kind, &long).unwrap().is_err());
    }

    fn reply_round_trip(reply: RepoReply) {
        let mut bytes = Vec::new();
        reply.encode(&mut bytes);
        let (&kind, body) = bytes.split_first().unwrap();
        assert_eq!(RepoReply::decode(kind, body).unwrap().unwrap(), reply);
        let mut long = body.to_vec();
        long.push(0);
        assert!(RepoReply::decode(kind, &long).unwrap().is_err());
    }

    #[test]
    fn every_request_round_trips_and_refuses_truncation_and_trailing_bytes() {
        request_round_trip(RepoRequest::Open);
        request_round_trip(RepoRequest::Create {
            config: Bytes::from_static(b"config"),
            key: Bytes::from_static(b"key"),
        });
        request_round_trip(RepoRequest::AddKey {
            key: Bytes::from_static(b"k"),
        });
        request_round_trip(RepoRequest::Have {
            ids: vec![BlobId([1; 32]), BlobId([2; 32])],
        });
        request_round_trip(RepoRequest::Put {
            target: PutTarget::Pack(PackId([3; 32])),
            size: 77,
        });
        request_round_trip(RepoRequest::Put {
            target: PutTarget::Snapshot(SnapshotId([4; 32])),
            size: 1,
        });
        request_round_trip(RepoRequest::PutEnd);
        request_round_trip(RepoRequest::Get {
            target: GetTarget::Blob(BlobId([5; 32])),
        });
        request_round_trip(RepoRequest::Get {
            target: GetTarget::Snapshot(SnapshotId([6; 32])),
        });
        request_round_trip(RepoRequest::Snapshots);
        request_round_trip(RepoRequest::Forget {
            id: SnapshotId([7; 32]),
        });
        request_round_trip(RepoRequest::Damaged { after: None });
        request_round_trip(RepoRequest::Damaged {
            after: Some(BlobId([8; 32])),
        });
        request_round_trip(RepoRequest::Usage);
        request_round_trip(RepoRequest::RemoveKey {
            key: Bytes::from_static(b"key object"),
        });
        request_round_trip(RepoRequest::Prune);
    }

    #[test]
    fn every_reply_round_trips() {
        reply_round_trip(RepoReply::State {
            config: None,
            keys: vec![],
        });
        reply_round_trip(RepoReply::State {
            config: Some(Bytes::from_static(b"c")),
            keys: vec![Bytes::from_static(b"k1"), Bytes::from_static(b"k2")],
        });
        reply_round_trip(RepoReply::Ok);
        let stored: Vec<bool> = (0..19).map(|i| i % 3 == 0).collect();
        reply_round_trip(RepoReply::HaveResult { stored });
        reply_round_trip(RepoReply::PutReady);
        reply_round_trip(RepoReply::PutDone);
        reply_round_trip(RepoReply::Object { size: 12 });
        reply_round_trip(RepoReply::ObjectEnd);
        reply_round_trip(RepoReply::SnapshotEntry(SnapshotEntry {
            id: SnapshotId([9; 32]),
            size: 5,
            stored_unix_secs: 1_700_000_000,
        }));
        reply_round_trip(RepoReply::SnapshotsEnd { count: 3 });
        reply_round_trip(RepoReply::Damaged {
            ids: vec![],
            more: false,
        });
        reply_round_trip(RepoReply::Damaged {
            ids: vec![BlobId([1; 32]), BlobId([2; 32])],
            more: true,
        });
        reply_round_trip(RepoReply::Usage(RepoUsage {
            stored_bytes: 10,
            soft_quota_bytes: 0,
            hard_quota_bytes: 20,
        }));
        reply_round_trip(RepoReply::Pruned(RepoPruneReport {
            snapshots: 1,
            condemned: 2,
            deleted_blobs: 3,
            deleted_blob_bytes: 4,
            packs_repacked: 5,
            packs_retired: 6,
            bytes_retired: 7,
            packs_deleted: 8,
            bytes_freed: 9,
            grace_secs: 10,
        }));
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(human_bytes(980), "980 B");
        assert_eq!(human_bytes(80 << 20), "80.0 MiB");
        assert_eq!(human_bytes((1 << 30) + (1 << 30) / 5), "1.2 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn damaged_pages_must_be_increasing_and_bounded() {
        let decode = |body: &[u8]| RepoReply::decode(msg::DAMAGED_RESULT, body).unwrap();
        let mut unsorted = vec![0u8];
        unsorted.extend_from_slice(&2u16.to_le_bytes());
        unsorted.extend_from_slice(&[2; 32]);
        unsorted.extend_from_slice(&[1; 32]);
        assert!(decode(&unsorted).is_err(), "decreasing IDs");
        let mut too_many = vec![0u8];
        too_many.extend_from_slice(&((MAX_DAMAGED_BATCH + 1) as u16).to_le_bytes());
        too_many.resize(3 + (MAX_DAMAGED_BATCH + 1) * 32, 0);
        assert!(decode(&too_many).is_err(), "count above the page size");
        assert!(decode(&[2, 0, 0]).is_err(), "more is a flag");
        let request = |body: &[u8]| RepoRequest::decode(msg::DAMAGED, body).unwrap();
        assert!(request(&[2]).is_err(), "unknown cursor flag");
        assert!(request(&[1, 0]).is_err(), "cursor cut short");
    }

    #[test]
    fn bad_counts_classes_and_sizes_are_refused() {
        let decode = |kind, body: &[u8]| RepoRequest::decode(kind, body).unwrap();
        assert!(decode(msg::HAVE, &0u16.to_le_bytes()).is_err());
        let mut too_many = ((MAX_HAVE_BATCH + 1) as u16).to_le_bytes().to_vec();
        too_many.resize(2 + (MAX_HAVE_BATCH + 1) * 32, 0);
        assert!(decode(msg::HAVE, &too_many).is_err());
        let mut put = vec![9u8];
        put.extend_from_slice(&[0; 32]);
        put.extend_from_slice(&1u64.to_le_bytes());
        assert!(decode(msg::PUT, &put).is_err(), "unknown class");
        put[0] = class::BLOB;
        assert!(decode(msg::PUT, &put).is_err(), "a blob is not put alone");
        put[0] = class::PACK;
        put[33..].copy_from_slice(&0u64.to_le_bytes());
        assert!(decode(msg::PUT, &put).is_err(), "empty object");
        let mut get = vec![class::PACK];
        get.extend_from_slice(&[0; 32]);
        assert!(decode(msg::GET, &get).is_err(), "packs are not read whole");
        let mut huge = 2000u16.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 2000]);
        assert!(decode(msg::KEY_ADD, &huge).is_err(), "key object too long");
        assert!(RepoRequest::decode(msg::REPO_STATE, &[]).is_none());
        assert!(RepoReply::decode(msg::HAVE, &[]).is_none());
    }
}
