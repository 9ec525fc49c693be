//! Copying every object of one backend into another: `cyberbackup-server storage copy`,
//! which moves a single-node repository into object storage (or from one bucket to
//! another) with the server stopped.
//!
//! Each object is read twice in pieces of 8 MiB — once to hash it, once to
//! stream it into the target's `put` with that hash — so memory stays at a few pieces
//! however large a pack is, and the target checks every byte it stored against the source's
//! hash. An object the target already holds with the same length is skipped, so an
//! interrupted copy is resumed by running it again.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use super::{Backend, BackendError, ContentHash, ObjectInfo, ObjectKey, PutBody};

/// Bytes read from the source at a time.
const PIECE: u64 = 8 << 20;

/// What [`copy_all`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Objects copied.
    pub copied: u64,
    /// Objects the target already held with the same length.
    pub skipped: u64,
    /// Bytes copied.
    pub bytes: u64,
}

/// Copies every object of `from` that `to` lacks (same key and length) into `to`;
/// `progress` sees the report after each object.
///
/// # Errors
/// The first backend error of either side (what was copied before it stays, and a new run
/// goes on from there).
pub async fn copy_all(
    from: Arc<dyn Backend>,
    to: Arc<dyn Backend>,
    mut progress: impl FnMut(&CopyReport),
) -> Result<CopyReport, BackendError> {
    let present: BTreeMap<ObjectKey, u64> = to
        .list(None)
        .map_ok(|info| (info.key, info.len_bytes))
        .try_collect()
        .await?;
    let mut report = CopyReport::default();
    let mut listing = from.list(None);
    while let Some(info) = listing.next().await.transpose()? {
        if present.get(&info.key) == Some(&info.len_bytes) {
            report.skipped += 1;
        } else {
            copy_one(&from, &to, &info).await?;
            report.copied += 1;
            report.bytes += info.len_bytes;
        }
        progress(&report);
    }
    Ok(report)
}

async fn copy_one(
    from: &Arc<dyn Backend>,
    to: &Arc<dyn Backend>,
    info: &ObjectInfo,
) -> Result<(), BackendError> {
    let mut hasher = blake3::Hasher::new();
    let mut pieces = pieces_of(Arc::clone(from), info.clone());
    while let Some(piece) = pieces.next().await {
        hasher.update(&piece?);
    }
    let expected = ContentHash::from_bytes(*hasher.finalize().as_bytes());
    let body = pieces_of(Arc::clone(from), info.clone())
        .map_err(|e| std::io::Error::other(e.to_string()))
        .boxed();
    to.put(&info.key, PutBody::Stream(body), expected).await
}

/// The object's bytes as ranged reads of [`PIECE`].
fn pieces_of(
    from: Arc<dyn Backend>,
    info: ObjectInfo,
) -> futures_util::stream::BoxStream<'static, Result<Bytes, BackendError>> {
    let starts = (0..info.len_bytes).step_by(usize::try_from(PIECE).unwrap_or(usize::MAX));
    futures_util::stream::iter(starts)
        .then(move |start| {
            let from = Arc::clone(&from);
            let key = info.key.clone();
            let end = (start + PIECE).min(info.len_bytes);
            async move { from.get(&key, Some(start..end)).await }
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::{LocalBackend, LocalConfig};

    #[tokio::test]
    async fn every_object_is_copied_once_byte_for_byte_and_a_rerun_skips_them() {
        let dir = tempfile::tempdir().unwrap();
        let from: Arc<dyn Backend> =
            Arc::new(LocalBackend::open(LocalConfig::new(dir.path().join("from"))).unwrap());
        let to: Arc<dyn Backend> =
            Arc::new(LocalBackend::open(LocalConfig::new(dir.path().join("to"))).unwrap());
        // One object of several pieces (and not a whole number of them), one empty, one small.
        let big: Vec<u8> = (0..(2 * PIECE + 12_345))
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let objects = [
            ("a/packs/00/big", Bytes::from(big)),
            ("a/snapshots/empty", Bytes::new()),
            ("b/config", Bytes::from_static(b"small")),
        ];
        for (key, bytes) in &objects {
            let key = ObjectKey::new(*key).unwrap();
            from.put(&key, PutBody::Bytes(bytes.clone()), ContentHash::of(bytes))
                .await
                .unwrap();
        }

        let mut seen = 0;
        let first = copy_all(Arc::clone(&from), Arc::clone(&to), |_| seen += 1)
            .await
            .unwrap();
        let again = copy_all(Arc::clone(&from), Arc::clone(&to), |_| {})
            .await
            .unwrap();

        assert_eq!(first.copied, 3);
        assert_eq!(first.bytes, 2 * PIECE + 12_345 + 5);
        assert_eq!(seen, 3);
        assert_eq!((again.copied, again.skipped), (0, 3));
        for (key, bytes) in &objects {
            let copied = to.get(&ObjectKey::new(*key).unwrap(), None).await.unwrap();
            assert_eq!(&copied, bytes, "{key}");
        }
    }
}
