//! [`BlobReader`]: one connection's blob reads, with readahead in the pack.
//!
//! A restore asks for blobs in about the order a backup packed them, so the blob after the
//! one just read is usually the next one in the same pack. Read alone, each costs a catalog
//! read and a ranged backend read (two blocking-pool round trips here, two requests to an
//! object store), which is most of what a restore of many small files costs the server.
//! Once reads run sequentially through a pack, one catalog read lists the blobs of the next
//! stretch and one ranged read fetches it; the blobs in it are then served from memory.
//!
//! The stretch starts at [`FIRST_READAHEAD`] and doubles up to [`MAX_READAHEAD`] while the
//! reads stay sequential (the next miss lies just after the stretch, in the same pack); any
//! other read fetches its own blob only, as without readahead, and so does a stretch that
//! cannot be read (a pack truncated on the server's disk: the blob may still be whole).
//! Memory: one stretch per connection. Serving a blob from a stretch read before a prune deleted its pack returns
//! the bytes the pack held, which the client checks against the blob's keyed ID as always.

use std::collections::HashMap;

use bytes::Bytes;
use cyberbackup_core::names::ClientId;
use cyberbackup_core::repo::{BlobId, PackId};

use super::{RepoStore, RepoStoreError, layout};
use crate::catalog::repo::BlobLocation;

/// The first readahead once reads run sequentially through a pack.
const FIRST_READAHEAD: u64 = 64 << 10;
/// The most one stretch reads.
const MAX_READAHEAD: u64 = 1 << 20;
/// The most blobs one stretch serves (bounds the index a stretch keeps).
const MAX_STRETCH_BLOBS: u32 = 4096;

/// Blob reads of one connection (see the module docs).
#[derive(Debug, Default)]
pub struct BlobReader {
    stretch: Option<Stretch>,
}

/// The bytes of one ranged pack read and the blobs it holds whole.
#[derive(Debug)]
struct Stretch {
    client: ClientId,
    pack: PackId,
    start: u64,
    bytes: Bytes,
    blobs: HashMap<BlobId, (u64, u32)>,
}

impl Stretch {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// The blob's bytes when this stretch holds it.
    fn blob(&self, client: ClientId, id: &BlobId) -> Option<Bytes> {
        if self.client != client {
            return None;
        }
        let (offset, len) = *self.blobs.get(id)?;
        let from = usize::try_from(offset.checked_sub(self.start)?).ok()?;
        let to = from.checked_add(usize::try_from(len).ok()?)?;
        (to <= self.bytes.len()).then(|| self.bytes.slice(from..to))
    }
}

impl BlobReader {
    /// One sealed blob (or reference chunk) of `client`'s repository.
    ///
    /// # Errors
    /// [`RepoStoreError::NoRepository`], [`RepoStoreError::NotFound`], or a backend or
    /// catalog failure (a pack shorter than indexed is the backend's `InvalidRange`).
    pub async fn read(
        &mut self,
        store: &RepoStore,
        client: ClientId,
        id: BlobId,
    ) -> Result<Bytes, RepoStoreError> {
        if let Some(bytes) = self.stretch.as_ref().and_then(|s| s.blob(client, &id)) {
            return Ok(bytes);
        }
        let previous = self
            .stretch
            .take()
            .filter(|s| s.client == client)
            .map(|s| (s.pack, s.start, s.end()));
        // The lookup first: an indexed blob implies the repository (one catalog read per
        // miss, not two); only a miss asks which error it is.
        let found = store
            .inner
            .catalog
            .blob_window(client.0, id, MAX_STRETCH_BLOBS, move |at| {
                readahead(previous, at)
            })
            .await?;
        let Some(mut window) = found else {
            store.require_repository(client).await?;
            return Err(RepoStoreError::NotFound {
                what: "blob",
                id: id.to_hex(),
            });
        };
        let start = window.location.offset;
        let own_end = start + u64::from(window.location.len);
        let key = layout::pack_key(client, &window.location.pack);
        let bytes = match store.inner.backend.get(&key, Some(start..window.end)).await {
            Ok(bytes) => bytes,
            // A stretch past a truncated pack's end (or any failed stretch) must not cost the
            // blob itself, which may still be whole: read it alone, as without readahead.
            Err(_) if window.end > own_end => {
                window.end = own_end;
                window.blobs.truncate(1);
                store.inner.backend.get(&key, Some(start..own_end)).await?
            }
            Err(err) => return Err(err.into()),
        };
        let own = usize::try_from(window.location.len).unwrap_or(usize::MAX);
        if bytes.len() as u64 != window.end - start || own > bytes.len() {
            return Err(RepoStoreError::Damaged {
                what: "blob",
                id: id.to_hex(),
                problem: format!(
                    "its pack returned {} bytes for a range of {}",
                    bytes.len(),
                    window.end - start
                ),
            });
        }
        let blob = bytes.slice(..own);
        self.stretch = Some(Stretch {
            client,
            pack: window.location.pack,
            start,
            bytes,
            blobs: window
                .blobs
                .into_iter()
                .map(|(id, offset, len)| (id, (offset, len)))
                .collect(),
        });
        Ok(blob)
    }
}

/// The bytes worth reading from the blob at `at`, given the previous stretch (pack, start,
/// end): twice the previous stretch (from [`FIRST_READAHEAD`], at most [`MAX_READAHEAD`])
/// when the blob lies just after it in the same pack, else none beyond the blob.
fn readahead(previous: Option<(PackId, u64, u64)>, at: &BlobLocation) -> u64 {
    let Some((pack, start, end)) = previous else {
        return 0;
    };
    let span = end - start;
    let sequential =
        pack == at.pack && at.offset >= end && at.offset - end < span.max(FIRST_READAHEAD);
    if sequential {
        span.saturating_mul(2).clamp(FIRST_READAHEAD, MAX_READAHEAD)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cyberbackup_core::repo::BlobClass;

    fn at(pack: u8, offset: u64) -> BlobLocation {
        BlobLocation {
            pack: PackId([pack; 32]),
            offset,
            len: 100,
            class: BlobClass::Sealed,
            verified: false,
            condemned: false,
            damaged: false,
        }
    }

    #[test]
    fn readahead_grows_only_while_reads_follow_each_other_in_one_pack() {
        let pack = PackId([1; 32]);
        assert_eq!(readahead(None, &at(1, 0)), 0, "a first read reads its blob");
        assert_eq!(
            readahead(Some((pack, 0, 100)), &at(1, 100)),
            FIRST_READAHEAD,
            "the next blob: the first stretch"
        );
        assert_eq!(
            readahead(
                Some((pack, 100, 100 + FIRST_READAHEAD)),
                &at(1, 100 + FIRST_READAHEAD)
            ),
            2 * FIRST_READAHEAD,
            "still sequential: doubled"
        );
        assert_eq!(
            readahead(Some((pack, 0, MAX_READAHEAD)), &at(1, MAX_READAHEAD + 10)),
            MAX_READAHEAD,
            "a small gap is still sequential, and the stretch stops growing"
        );
        assert_eq!(
            readahead(Some((pack, 0, 100)), &at(2, 100)),
            0,
            "another pack"
        );
        assert_eq!(
            readahead(Some((pack, 500, 600)), &at(1, 100)),
            0,
            "backwards"
        );
        assert_eq!(
            readahead(Some((pack, 0, 100)), &at(1, 100 + FIRST_READAHEAD)),
            0,
            "far ahead"
        );
    }
}
