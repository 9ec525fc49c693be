//! Catalog state of the scrub (`crate::scrub`): which stored objects are due to be read
//! again (oldest `ScrubbedAt` first), the corrupt marks it records, and what is damaged
//! (per client, for the admin API and for the client's `DAMAGED` request). The SQL is in
//! `queries.rs`; the columns come from migration 9.

use cyberbackup_core::repo::{BlobId, PackId};

use super::error::CatalogError;
use super::model::{ClientId, FileRowId};
use super::{Catalog, queries};

/// A stored pack the scrub reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackToScrub {
    /// Its owner.
    pub client: ClientId,
    /// Its ID (the BLAKE3 hash its bytes must have).
    pub pack: PackId,
    /// Its size in bytes, as indexed.
    pub size: u64,
}

/// A verified legacy flat file the scrub reads next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileToScrub {
    /// Its row.
    pub row: FileRowId,
    /// Its owner.
    pub client: ClientId,
    /// Its catalog path (`<client hex>/<mapped name>`).
    pub path_name: String,
    /// The SHA-256 recorded when it was verified.
    pub sha256: [u8; 32],
}

/// What a scrub found wrong with an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// When it was found, Unix seconds.
    pub found_at: u64,
    /// What is wrong (hash mismatch, missing, short), never content.
    pub reason: String,
}

/// What kind of object a [`CorruptObject`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CorruptKind {
    /// A pack of a snapshot repository.
    Pack,
    /// A legacy flat file (single-file mode or v3).
    File,
}

/// One object the latest scrub found damaged or missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptObject {
    /// Its owner.
    pub client_id: ClientId,
    /// The owner's name.
    pub client_name: Vec<u8>,
    /// Pack or file.
    pub kind: CorruptKind,
    /// The pack ID (hex), or the file's catalog path.
    pub object: String,
    /// A file's name and version as the client sent it (`None` for packs).
    pub file: Option<(Vec<u8>, u32)>,
    /// Bytes of the object, as indexed.
    pub size: u64,
    /// When a scrub first found it damaged, Unix seconds.
    pub found_at: u64,
    /// What is wrong.
    pub reason: String,
}

impl Catalog {
    /// Up to `limit` packs not scrubbed since `before_ms` (Unix milliseconds), never
    /// scrubbed first, then the longest ago; only `client`'s when given.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn packs_to_scrub(
        &self,
        before_ms: u64,
        client: Option<ClientId>,
        limit: u32,
    ) -> Result<Vec<PackToScrub>, CatalogError> {
        self.read(move |c| queries::packs_to_scrub(c, before_ms, client.as_ref(), limit))
            .await
    }

    /// Records that a scrub read the pack at `at_ms` (Unix milliseconds) and found it whole
    /// (`damage` = `None`: any corrupt mark is cleared) or damaged (the first time found is
    /// kept). `false` when the pack is no longer indexed.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn record_pack_scrub(
        &self,
        client: ClientId,
        pack: PackId,
        at_ms: u64,
        damage: Option<Damage>,
    ) -> Result<bool, CatalogError> {
        self.write(move |c| queries::record_pack_scrub(c, &client, &pack, at_ms, damage.as_ref()))
            .await
    }

    /// Up to `limit` verified legacy files with a recorded SHA-256 not scrubbed since
    /// `before_ms`, in the order of [`packs_to_scrub`](Self::packs_to_scrub).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn files_to_scrub(
        &self,
        before_ms: u64,
        client: Option<ClientId>,
        limit: u32,
    ) -> Result<Vec<FileToScrub>, CatalogError> {
        self.read(move |c| queries::files_to_scrub(c, before_ms, client.as_ref(), limit))
            .await
    }

    /// Records a scrub of a legacy file as [`record_pack_scrub`](Self::record_pack_scrub)
    /// does; only while the row is still verified at `path_name` (a commit that moved the
    /// file meanwhile makes the verdict void: `false`).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn record_file_scrub(
        &self,
        row: FileRowId,
        path_name: String,
        at_ms: u64,
        damage: Option<Damage>,
    ) -> Result<bool, CatalogError> {
        self.write(move |c| queries::record_file_scrub(c, row, &path_name, at_ms, damage.as_ref()))
            .await
    }

    /// Whether the row is still a verified file at `path_name` (checked before a damaged
    /// verdict is trusted).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn file_still_at(
        &self,
        row: FileRowId,
        path_name: String,
    ) -> Result<bool, CatalogError> {
        self.read(move |c| queries::file_still_at(c, row, &path_name))
            .await
    }

    /// Every object marked corrupt (up to `limit` packs and `limit` files), oldest finding
    /// first; only `client`'s when given.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn corrupt_objects(
        &self,
        client: Option<ClientId>,
        limit: u32,
    ) -> Result<Vec<CorruptObject>, CatalogError> {
        self.read(move |c| queries::corrupt_objects(c, client.as_ref(), limit))
            .await
    }

    /// How many objects (packs and legacy files) are marked corrupt.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn corrupt_object_count(&self) -> Result<u64, CatalogError> {
        self.read(queries::corrupt_object_count).await
    }

    /// Up to `limit` IDs of the client's blobs indexed in packs marked corrupt, greater than
    /// `after`, in increasing order.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn damaged_blobs(
        &self,
        client: ClientId,
        after: Option<BlobId>,
        limit: u32,
    ) -> Result<Vec<BlobId>, CatalogError> {
        self.read(move |c| queries::damaged_blobs(c, &client, after.as_ref(), limit))
            .await
    }
}
