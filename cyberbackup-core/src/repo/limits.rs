//! Every limit of the repository format in one place (docs/repository.md, "Limits").
//! Decoders check declared counts and lengths against these and against the input length
//! before allocating. Wire limits: do not lower them under an existing repository.

/// Longest file name in a tree entry, in bytes.
pub const MAX_NAME_BYTES: usize = 4096;
/// Longest symlink target, in bytes.
pub const MAX_SYMLINK_BYTES: usize = 65_536;
/// Longest user or group name, in bytes.
pub const MAX_OWNER_BYTES: usize = 1024;
/// Most extended attributes on one entry.
pub const MAX_XATTRS: usize = 4096;
/// Longest extended-attribute value, in bytes.
pub const MAX_XATTR_VALUE_BYTES: usize = 1 << 20;
/// Most entries in one tree (one directory).
pub const MAX_TREE_ENTRIES: usize = 4_000_000;
/// Largest encoded tree, in bytes (also the decompression limit of tree blobs).
pub const MAX_TREE_BYTES: usize = 256 << 20;
/// Most content blobs one file entry lists (16 TiB at the default 8 MiB maximum chunk).
pub const MAX_FILE_CHUNKS: usize = 1 << 24;
/// Most blob IDs in one reference chunk.
pub const MAX_REF_CHUNK_IDS: usize = 8192;
/// Most reference chunks one snapshot lists.
pub const MAX_SNAPSHOT_REF_CHUNKS: usize = 1 << 20;
/// Longest host, user, path or tag string in a snapshot, in bytes.
pub const MAX_SNAPSHOT_STRING_BYTES: usize = 65_535;
/// Most paths or tags in one snapshot.
pub const MAX_SNAPSHOT_LIST: usize = 65_536;
/// Largest encoded snapshot body, in bytes.
pub const MAX_SNAPSHOT_BODY_BYTES: usize = 64 << 20;
/// Most blobs in one pack.
pub const MAX_PACK_BLOBS: usize = 1 << 20;
/// Largest sealed blob, in bytes (the largest tree plus sealing overhead).
pub const MAX_SEALED_BLOB_BYTES: usize = MAX_TREE_BYTES + 64;
/// Longest key-object label, in bytes.
pub const MAX_KEY_LABEL_BYTES: usize = 255;
/// Argon2id memory cost ceiling a key object may ask for, in KiB (4 GiB).
pub const MAX_KDF_MEMORY_KIB: u32 = 4 << 20;
/// Argon2id iteration ceiling a key object may ask for.
pub const MAX_KDF_ITERATIONS: u32 = 64;
/// Argon2id parallelism ceiling a key object may ask for.
pub const MAX_KDF_PARALLELISM: u32 = 16;
