//! Plain data exchanged with the catalog: records, filters and operation results.

use std::fmt;
use std::time::SystemTime;

/// A 16-byte client id as sent on the wire.
pub type ClientId = [u8; 16];

/// Primary key of a row in the `files` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileRowId(pub i64);

impl fmt::Display for FileRowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Result of [`Catalog::register_client`](super::Catalog::register_client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// The client was inserted.
    Registered,
    /// Another client already uses this name (the wire answer is 1601).
    NameTaken,
    /// The (random) id is already in use; the caller should pick another id.
    IdTaken,
    /// The name belonged to a client that never stored a public key (its connection died
    /// between 1600 and 1026); that registration was replaced by this one.
    Replaced {
        /// Id of the replaced, keyless registration.
        previous: ClientId,
    },
}

/// Result of [`Catalog::store_first_public_key`](super::Catalog::store_first_public_key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// The key was stored (the client had none), or the same key was already stored.
    Stored,
    /// No client has this id.
    UnknownClient,
    /// The client already has a different key: it is kept, the new one refused.
    KeyAlreadySet,
}

/// A file row in state `committing`: the intent to rename its temp file into place was
/// recorded, the outcome is not known (see [`maintenance::recover`](crate::maintenance::recover)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittingFile {
    /// The row.
    pub row: FileRowId,
    /// Owning client.
    pub client_id: ClientId,
    /// File name bytes as sent on the wire.
    pub file_name: Vec<u8>,
    /// Relative destination path.
    pub path_name: String,
    /// Relative temp file path, if one was recorded.
    pub temp_path: Option<String>,
    /// SHA-256 of the content to commit.
    pub sha256: Option<Vec<u8>>,
    /// `keep_versions` the commit runs with.
    pub keep_versions: u32,
}

/// What a device (a registered client key) may do to its repository. The default, for
/// every registration unless `default_device_role` says otherwise, is append-only.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceRole {
    /// Back up and read its own data; never delete or overwrite snapshots or packs (a
    /// thief of the device cannot destroy the history).
    #[default]
    AppendOnly,
    /// Also forget snapshots (and so, through the server's prune, delete data).
    Manage,
}

impl DeviceRole {
    /// The name stored in the catalog and shown to operators.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AppendOnly => "append-only",
            Self::Manage => "manage",
        }
    }

    /// The role named `name` (as stored by [`Self::as_str`]).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "append-only" => Some(Self::AppendOnly),
            "manage" => Some(Self::Manage),
            _ => None,
        }
    }
}

impl fmt::Display for DeviceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeviceRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| "expected \"append-only\" or \"manage\"".into())
    }
}

/// One row of the `clients` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// 16-byte client id.
    pub id: ClientId,
    /// Client name bytes as parsed from the wire.
    pub name: Vec<u8>,
    /// DER public key, once the client sent one.
    pub public_key: Option<Vec<u8>>,
    /// Last time the client was seen (RFC 3339 UTC).
    pub last_seen: Option<String>,
    /// Protocol version the client registered with.
    pub protocol: Option<u8>,
    /// Registration time (RFC 3339 UTC).
    pub registered_at: String,
}

/// One v4 device: a client key and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The client (account) it belongs to.
    pub client_id: ClientId,
    /// That client's name.
    pub client_name: Vec<u8>,
    /// Its X25519 static key.
    pub key: [u8; 32],
    /// Its role.
    pub role: DeviceRole,
    /// When it was added (RFC 3339 UTC).
    pub added_at: String,
}

/// Life-cycle state of a stored file version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Content is arriving into a temp file.
    Receiving,
    /// Content is complete and fsynced in the temp file; waiting for the client's CRC verdict.
    Received,
    /// The client confirmed the CRC and the rename into place is under way: the row's
    /// SHA-256 tells whether the file on disk is the new content.
    Committing,
    /// The client confirmed the CRC; the file is in place.
    Verified,
    /// The transfer was aborted or abandoned; no file belongs to this row.
    Discarded,
}

impl FileState {
    /// The text stored in the `State` column.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receiving => "receiving",
            Self::Received => "received",
            Self::Committing => "committing",
            Self::Verified => "verified",
            Self::Discarded => "discarded",
        }
    }

    /// Parses the `State` column; `None` for unknown text.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "receiving" => Some(Self::Receiving),
            "received" => Some(Self::Received),
            "committing" => Some(Self::Committing),
            "verified" => Some(Self::Verified),
            "discarded" => Some(Self::Discarded),
            _ => None,
        }
    }
}

impl fmt::Display for FileState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Content facts recorded by [`Catalog::mark_received`](super::Catalog::mark_received).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFile {
    /// Plaintext length in bytes.
    pub size: u64,
    /// Ciphertext length in bytes as received on the wire.
    pub ciphertext_size: u64,
    /// POSIX cksum of the plaintext.
    pub cksum: u32,
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
}

/// A previous version kept on disk under a versioned name (`keep_versions > 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptVersion {
    /// Row of the kept version.
    pub row: FileRowId,
    /// Its version number.
    pub version: u32,
    /// Its new relative path (`<client-hex>/<mapped>.~<version>~`).
    pub path_name: String,
}

/// A version that fell out of the retention window: storage must delete `path_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupersededFile {
    /// Row that was deleted from the catalog.
    pub row: FileRowId,
    /// Relative path of the file to delete.
    pub path_name: String,
}

/// Result of [`Catalog::commit_file`](super::Catalog::commit_file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitResult {
    /// Relative path of the committed (current) version.
    pub path_name: String,
    /// Version number of the committed file.
    pub version: u32,
    /// The previously current version, renamed aside when `keep_versions > 1`.
    pub previous: Option<KeptVersion>,
    /// Older versions beyond `keep_versions`, whose rows were removed; delete their files.
    pub superseded: Vec<SupersededFile>,
}

/// A transfer left in `receiving`/`received` for too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbandonedTransfer {
    /// Its row.
    pub row: FileRowId,
    /// Relative path of its temp file, if one was recorded.
    pub temp_path: Option<String>,
    /// A v4 upload in `receiving` with its resume record: the client can resume it from its
    /// durable offset, also after a restart of the server.
    pub resumable: bool,
}

/// One row of the `files` table joined with its client's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// Row id (also the keyset cursor for paging).
    pub row: FileRowId,
    /// Owning client id.
    pub client_id: ClientId,
    /// Owning client's name.
    pub client_name: Vec<u8>,
    /// File name bytes as sent on the wire.
    pub file_name: Vec<u8>,
    /// Relative on-disk path.
    pub path_name: String,
    /// Version number (1, 2, …) per client and file name.
    pub version: u32,
    /// Life-cycle state.
    pub state: FileState,
    /// Whether the client confirmed the CRC.
    pub verified: bool,
    /// Plaintext size.
    pub size: Option<u64>,
    /// Ciphertext size.
    pub ciphertext_size: Option<u64>,
    /// POSIX cksum of the plaintext.
    pub cksum: Option<u32>,
    /// SHA-256 of the plaintext.
    pub sha256: Option<Vec<u8>>,
    /// Row creation time.
    pub created_at: String,
    /// Last update time.
    pub updated_at: String,
    /// Verification time.
    pub verified_at: Option<String>,
}

/// Filter and page for [`Catalog::list_files`](super::Catalog::list_files).
///
/// Results are ordered by row id ascending; pass the last row of a page as `after_row` to get
/// the next page (keyset paging: every page costs the same, however deep).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileFilter {
    /// Only files of the client with exactly this name.
    pub client_name: Option<Vec<u8>>,
    /// Only file names containing these bytes.
    pub name_contains: Option<Vec<u8>>,
    /// Only verified (`Some(true)`) or unverified (`Some(false)`) files.
    pub verified: Option<bool>,
    /// Only rows created at or after this time.
    pub since: Option<SystemTime>,
    /// Only rows created before this time.
    pub until: Option<SystemTime>,
    /// Include rows in state `discarded` (excluded by default).
    pub include_discarded: bool,
    /// Only rows with a larger row id (the cursor).
    pub after_row: Option<FileRowId>,
    /// Page size; `0` means [`DEFAULT_PAGE`].
    pub limit: u32,
}

/// Page size used when [`FileFilter::limit`] is 0.
pub const DEFAULT_PAGE: u32 = 100;

/// Totals for status output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CatalogStats {
    /// Number of registered clients.
    pub clients: u64,
    /// Number of verified file versions.
    pub files: u64,
    /// Sum of plaintext sizes of verified file versions.
    pub bytes_stored: u64,
}

/// Verified files of one client, from [`Catalog::client_totals`](super::Catalog::client_totals).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientTotals {
    /// Number of verified file versions.
    pub files: u64,
    /// Sum of their plaintext sizes.
    pub bytes: u64,
    /// When the newest of them was verified (RFC 3339 UTC).
    pub last_verified_at: Option<String>,
}
