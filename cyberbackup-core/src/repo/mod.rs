//! The snapshot repository format (docs/repository.md): keyed content-defined chunks,
//! keyed blob IDs, compressed and sealed blobs, packs whose headers the server reads
//! without keys, trees, snapshots with a cleartext envelope, server-readable reference
//! lists, wrapped master keys and the repository config; and [`retention`], the policies that
//! decide which snapshots to keep (the client's `forget`, the server's maintenance).
//!
//! Sans-IO like the rest of the crate: every type takes bytes and returns bytes or typed
//! [`RepoError`]s; randomness comes in as a [`rand_core::CryptoRngCore`], time as a
//! [`Timestamp`]. The two drivers (the client's backup pipeline, the server's keyless pack
//! store) compose them:
//!
//! ```text
//! client:  bytes ─▶ Chunker ─▶ BlobSealer::id ─(server lacks it?)─▶ BlobSealer::seal ─▶ PackWriter ─▶ pack bytes
//!          Tree::encode ─▶ BlobSealer::seal(Tree) ─▶ PackWriter      RefListBuilder ─▶ RefChunk ─▶ PackWriter
//!          Snapshot::seal ─▶ snapshot object
//! server:  pack bytes ─▶ PackId::of (check on put) ─▶ PackHeader::parse_pack (index)
//!          RefChunk::decode_verified + SnapshotEnvelope::decode (which blobs are alive: GC)
//! ```

mod blob;
mod chunker;
mod config;
mod error;
pub mod fuzzing;
mod id;
mod keys;
pub mod limits;
mod pack;
mod refs;
pub mod retention;
mod snapshot;
mod tree;
mod wire;

pub use blob::{BlobKind, BlobOpener, BlobSealer, SealedBlob};
pub use chunker::Chunker;
pub use config::{ChunkerParams, RepoConfig};
pub use error::{ObjectKind, RepoError};
pub use id::{BlobClass, BlobId, IdParseError, PackId, SnapshotId};
pub use keys::{DeviceKey, KdfParams, KeyObject, KeyWrap, MasterKey, RepoKeys};
pub use pack::{FinishedPack, PACK_TRAILER_LEN, PackEntry, PackHasher, PackHeader, PackWriter};
pub use refs::{RefChunk, RefListBuilder};
pub use snapshot::{SealedSnapshot, Snapshot, SnapshotEnvelope, SnapshotStats};
pub use tree::{EntryKind, Metadata, Timestamp, Tree, TreeEntry, Xattr};
