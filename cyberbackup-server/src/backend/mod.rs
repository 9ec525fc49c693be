//! Storage backends: where repository objects (packs, indexes, snapshots) live.
//!
//! A [`Backend`] stores immutable objects under validated [`ObjectKey`]s and offers a handful
//! of verbs, modelled on restic's `Backend` interface and rustic's `WriteBackend`: put with a
//! content hash that the backend checks, get a byte range, list a prefix, delete, and a
//! resumable multipart upload for large objects. Two implementations sit behind it:
//! [`local::LocalBackend`] (a data directory) and [`s3::S3Backend`] (any S3-compatible
//! store through `object_store`); [`faulty::Faulty`] wraps either to inject failures. The
//! server's `[storage]` table ([`config::StorageConfig`]) picks one.
//! The snapshot repository store (`crate::repository`) keeps its packs and snapshot objects
//! through it. The legacy v3/v4 file store (`storage.rs`) is separate.
//!
//! # The durability contract
//!
//! * **A put is acknowledged only when the object is durable and visible.** `put` and
//!   `complete_upload` return `Ok` only after the backend's durability point: on the local
//!   backend the object's bytes and its directory entry are fsynced; on S3 the store has
//!   acknowledged the `PUT` or the `CompleteMultipartUpload`. A caller may acknowledge a
//!   client only after that `Ok`.
//! * **Nothing half-written is ever visible.** An object appears whole under its key or not
//!   at all: readers see the previous object or the new one, never a mix, a prefix, or a
//!   temp name. There is no rename in the contract (object stores have none); the local
//!   backend's temp-file-then-rename is hidden inside it.
//! * **The hash is checked before the object becomes visible.** The caller passes the
//!   expected [`ContentHash`] (BLAKE3 of the object's bytes, the only algorithm); a mismatch
//!   is [`BackendError::HashMismatch`], and then nothing is stored under the key and an
//!   object already there is left untouched.
//! * **A failed or cancelled put leaves nothing visible.** Dropping a `put` future, or any
//!   error inside it, discards the upload (local temp file removed; S3 multipart upload
//!   aborted in the background, and a bucket lifecycle rule for incomplete uploads is the
//!   documented safety net).
//! * **An upload in progress is a durable offset.** [`Upload`] (upload id + the parts
//!   stored so far, each with its length and BLAKE3 chaining value) is plain data the caller
//!   persists; after a restart, a new backend from the same configuration continues it with
//!   [`Backend::upload_part`] and [`Backend::complete_upload`] without re-sending the parts.
//! * Writers of different keys never interfere; concurrent writers of one key end with
//!   exactly one of their objects. Deleting a missing key succeeds (retries are safe).

pub mod config;
pub mod copy;
pub mod faulty;
mod hash;
mod key;
pub mod local;
pub mod s3;
mod upload;

use std::fmt;
use std::io;
use std::ops::Range;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

pub use hash::ContentHash;
pub use key::{KeyError, ObjectKey};
pub use upload::{Upload, UploadedPart};

/// One object as [`Backend::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key.
    pub key: ObjectKey,
    /// Its size in bytes.
    pub len_bytes: u64,
}

/// What [`Backend::put`] stores: one buffer, or a stream of pieces (a pack arriving from a
/// client) that is uploaded in parts of [`Backend::part_len`] bytes as it comes.
pub enum PutBody {
    /// The whole object.
    Bytes(Bytes),
    /// The object's bytes in order; an `Err` piece aborts the put.
    Stream(BoxStream<'static, io::Result<Bytes>>),
}

impl fmt::Debug for PutBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(bytes) => f.debug_tuple("Bytes").field(&bytes.len()).finish(),
            Self::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

impl From<Bytes> for PutBody {
    fn from(bytes: Bytes) -> Self {
        Self::Bytes(bytes)
    }
}

impl From<Vec<u8>> for PutBody {
    fn from(bytes: Vec<u8>) -> Self {
        Self::Bytes(bytes.into())
    }
}

/// Why a backend operation failed. Every message says what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// A key given to the backend, or found in it, is not a valid [`ObjectKey`].
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
    /// No object is stored under the key.
    #[error("object {key} not found: it was never stored, was deleted, or its put failed")]
    NotFound {
        /// The missing key.
        key: ObjectKey,
    },
    /// The bytes did not hash to the expected value: nothing was stored.
    #[error(
        "object {key} refused: its BLAKE3 hash is {actual}, the caller expected {expected}; \
         nothing was stored (the data was damaged in transit or the hash is wrong: send it again)"
    )]
    HashMismatch {
        /// The key that was being written.
        key: ObjectKey,
        /// The hash the caller announced.
        expected: ContentHash,
        /// The hash of the bytes received.
        actual: ContentHash,
    },
    /// The requested range does not lie inside the object.
    #[error(
        "range {start}..{end} of object {key} is outside its {len_bytes} bytes: \
         ask for a range with start <= end <= the object's length"
    )]
    InvalidRange {
        /// The object read.
        key: ObjectKey,
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// The object's length.
        len_bytes: u64,
    },
    /// An upload's parts do not follow the backend's rules (see [`Backend::upload_part`]).
    #[error("upload of {key} cannot continue: {reason}")]
    InvalidUpload {
        /// The key being uploaded.
        key: ObjectKey,
        /// What is wrong.
        reason: String,
    },
    /// The data source of a streamed put failed: nothing was stored.
    #[error("the data for {key} could not be read: {source}; nothing was stored")]
    Source {
        /// The key being written.
        key: ObjectKey,
        /// The source's error.
        #[source]
        source: io::Error,
    },
    /// A local file operation failed.
    #[error("{op} {path} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The backend could not be reached or refused the request.
    #[error("{backend} is unavailable{}: {message}", if *.retryable { " (retryable: try again later)" } else { "" })]
    Unavailable {
        /// Which backend (`s3 bucket/prefix`, `local /path`, `fault injector`).
        backend: String,
        /// Whether trying the same operation again later may succeed (5xx, timeouts,
        /// connection failures after the backend's own retries) or not (credentials,
        /// permissions, a request the store rejects).
        retryable: bool,
        /// What the store said, and what to check.
        message: String,
    },
    /// The backend's configuration is unusable.
    #[error("storage backend configuration: {0}")]
    Config(String),
    /// A storage task on the blocking pool panicked or was cancelled (a bug: report it).
    #[error("storage task failed: {0}")]
    Task(String),
}

impl BackendError {
    fn from_join(e: tokio::task::JoinError) -> Self {
        Self::Task(e.to_string())
    }

    /// Whether the same operation may succeed if tried again later.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable { retryable, .. } => *retryable,
            Self::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }
}

/// An object store for repository objects. See the [module docs](self) for the durability
/// contract every implementation keeps; `tests/backend_conformance.rs` checks it against
/// each implementation.
///
/// The trait is object-safe (`Arc<dyn Backend>`), so the server can pick the backend from
/// its configuration at run time.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// The length of every part of an [`Upload`] but the last: a power of two, at least
    /// 1 KiB (BLAKE3's chunk) and, on S3, at least 5 MiB.
    fn part_len(&self) -> u64;

    /// Stores `bytes` under `key` if their BLAKE3 hash is `expected`, replacing any object
    /// there; returns once the object is durable (see the module docs).
    ///
    /// # Errors
    /// [`BackendError::HashMismatch`] (nothing stored), or the backend's own failure.
    async fn put_bytes(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        expected: ContentHash,
    ) -> Result<(), BackendError>;

    /// Reads `range` of the object (the whole object for `None`). Memory is the range's
    /// length: read large objects in ranges.
    ///
    /// # Errors
    /// [`BackendError::NotFound`], [`BackendError::InvalidRange`], or the backend's failure.
    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<Bytes, BackendError>;

    /// Every object whose key lies under `prefix` (segment-wise: `data` covers `data/x` but
    /// not `database`), or every object for `None`, in no particular order. Listing pages
    /// through the store; the stream holds one page at a time.
    fn list(&self, prefix: Option<&ObjectKey>) -> BoxStream<'_, Result<ObjectInfo, BackendError>>;

    /// Removes the object; a missing key is not an error (deletes are idempotent).
    ///
    /// # Errors
    /// The backend's failure.
    async fn delete(&self, key: &ObjectKey) -> Result<(), BackendError>;

    /// Removes what puts interrupted by a crash left where no key names it (the local
    /// backend's `.put-*` temp files; an object store keeps nothing of a put it did not
    /// complete) and returns how many. Start-up recovery calls it before the server takes any
    /// write, so no put of its own is in flight; the store must have no other writer then.
    ///
    /// # Errors
    /// The backend's failure.
    async fn remove_interrupted_puts(&self) -> Result<u64, BackendError>;

    /// Starts a resumable upload of a large object. Nothing is visible until
    /// [`complete_upload`](Self::complete_upload).
    ///
    /// # Errors
    /// The backend's failure.
    async fn begin_upload(&self, key: &ObjectKey) -> Result<Upload, BackendError>;

    /// Stores the next part durably and records it in `upload` (persist `upload` after each
    /// call to resume after a restart). Every part but the last must be exactly
    /// [`part_len`](Self::part_len) bytes; a shorter part is the last one.
    ///
    /// # Errors
    /// [`BackendError::InvalidUpload`] for a part that breaks those rules (or after the last
    /// part), or the backend's failure; `upload` is unchanged on error.
    async fn upload_part(&self, upload: &mut Upload, data: Bytes) -> Result<(), BackendError>;

    /// Makes the uploaded object visible if the parts hash to `expected`, durably. On a
    /// mismatch the upload is discarded and nothing becomes visible; on any other error it
    /// is left as it was (complete it again, or abort it).
    ///
    /// # Errors
    /// [`BackendError::HashMismatch`], or the backend's failure.
    async fn complete_upload(
        &self,
        upload: &Upload,
        expected: ContentHash,
    ) -> Result<(), BackendError>;

    /// Discards an upload and the parts stored for it.
    ///
    /// # Errors
    /// The backend's failure.
    async fn abort_upload(&self, upload: Upload) -> Result<(), BackendError>;

    /// Discards an upload without waiting: called from `Drop` when a put is cancelled.
    /// Best effort (the local backend removes its temp file; S3 aborts in a background task).
    fn abandon_upload(&self, upload: Upload);

    /// Stores `body` under `key` if it hashes to `expected` (see
    /// [`put_bytes`](Self::put_bytes)). A stream is uploaded in parts as it arrives, so memory
    /// stays at one part; a body no longer than one part is stored with one `put_bytes`.
    ///
    /// # Errors
    /// As [`put_bytes`](Self::put_bytes) and [`complete_upload`](Self::complete_upload), and
    /// [`BackendError::Source`] when the stream fails.
    async fn put(
        &self,
        key: &ObjectKey,
        body: PutBody,
        expected: ContentHash,
    ) -> Result<(), BackendError> {
        let mut pieces = match body {
            PutBody::Bytes(bytes) => return self.put_bytes(key, bytes, expected).await,
            PutBody::Stream(pieces) => pieces,
        };
        let part_len = usize::try_from(self.part_len())
            .map_err(|_| BackendError::Config("part length does not fit in memory".into()))?;
        let mut buffer = BytesMut::new();
        let mut upload: Option<UploadGuard<'_, Self>> = None;
        while let Some(piece) = pieces.next().await {
            let piece = piece.map_err(|source| BackendError::Source {
                key: key.clone(),
                source,
            })?;
            buffer.extend_from_slice(&piece);
            while buffer.len() >= part_len {
                let part = buffer.split_to(part_len).freeze();
                let guard = match &mut upload {
                    Some(guard) => guard,
                    None => upload.insert(UploadGuard::new(self, self.begin_upload(key).await?)),
                };
                guard.put_part(part).await?;
            }
        }
        let Some(mut guard) = upload else {
            return self.put_bytes(key, buffer.freeze(), expected).await;
        };
        if !buffer.is_empty() {
            guard.put_part(buffer.freeze()).await?;
        }
        guard.complete(expected).await
    }
}

/// An `Arc` of a backend is a backend (`Arc<dyn Backend>` is how the server holds one).
#[async_trait]
impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    fn part_len(&self) -> u64 {
        (**self).part_len()
    }

    async fn put_bytes(
        &self,
        key: &ObjectKey,
        bytes: Bytes,
        expected: ContentHash,
    ) -> Result<(), BackendError> {
        (**self).put_bytes(key, bytes, expected).await
    }

    async fn get(&self, key: &ObjectKey, range: Option<Range<u64>>) -> Result<Bytes, BackendError> {
        (**self).get(key, range).await
    }

    fn list(&self, prefix: Option<&ObjectKey>) -> BoxStream<'_, Result<ObjectInfo, BackendError>> {
        (**self).list(prefix)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), BackendError> {
        (**self).delete(key).await
    }

    async fn remove_interrupted_puts(&self) -> Result<u64, BackendError> {
        (**self).remove_interrupted_puts().await
    }

    async fn begin_upload(&self, key: &ObjectKey) -> Result<Upload, BackendError> {
        (**self).begin_upload(key).await
    }

    async fn upload_part(&self, upload: &mut Upload, data: Bytes) -> Result<(), BackendError> {
        (**self).upload_part(upload, data).await
    }

    async fn complete_upload(
        &self,
        upload: &Upload,
        expected: ContentHash,
    ) -> Result<(), BackendError> {
        (**self).complete_upload(upload, expected).await
    }

    async fn abort_upload(&self, upload: Upload) -> Result<(), BackendError> {
        (**self).abort_upload(upload).await
    }

    fn abandon_upload(&self, upload: Upload) {
        (**self).abandon_upload(upload);
    }

    async fn put(
        &self,
        key: &ObjectKey,
        body: PutBody,
        expected: ContentHash,
    ) -> Result<(), BackendError> {
        (**self).put(key, body, expected).await
    }
}

/// An upload owned by one [`Backend::put`] call: abandoned if the call is dropped or fails
/// before it completes.
struct UploadGuard<'a, B: Backend + ?Sized> {
    backend: &'a B,
    upload: Option<Upload>,
}

impl<'a, B: Backend + ?Sized> UploadGuard<'a, B> {
    fn new(backend: &'a B, upload: Upload) -> Self {
        Self {
            backend,
            upload: Some(upload),
        }
    }

    async fn put_part(&mut self, part: Bytes) -> Result<(), BackendError> {
        match self.upload.as_mut() {
            Some(upload) => self.backend.upload_part(upload, part).await,
            None => Err(BackendError::Config("upload already finished".into())),
        }
    }

    async fn complete(mut self, expected: ContentHash) -> Result<(), BackendError> {
        let Some(upload) = self.upload.as_ref() else {
            return Err(BackendError::Config("upload already finished".into()));
        };
        self.backend.complete_upload(upload, expected).await?;
        self.upload = None;
        Ok(())
    }
}

impl<B: Backend + ?Sized> Drop for UploadGuard<'_, B> {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            self.backend.abandon_upload(upload);
        }
    }
}

/// `Err(InvalidRange)` unless `range` lies inside an object of `len_bytes`.
fn check_range(key: &ObjectKey, range: &Range<u64>, len_bytes: u64) -> Result<(), BackendError> {
    if range.start <= range.end && range.end <= len_bytes {
        return Ok(());
    }
    Err(BackendError::InvalidRange {
        key: key.clone(),
        start: range.start,
        end: range.end,
        len_bytes,
    })
}

/// The hash of `bytes`, computed off the async runtime (a pack is megabytes).
async fn hash_off_runtime(bytes: Bytes) -> Result<ContentHash, BackendError> {
    tokio::task::spawn_blocking(move || ContentHash::of(&bytes))
        .await
        .map_err(BackendError::from_join)
}
