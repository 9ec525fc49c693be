//! Catalog queries of protocol v4 (`docs/protocol-v4.md`): clients identified by their X25519
//! static key, single-use enrollment tokens, resumable uploads and the version listing.
//!
//! Committed v4 files are ordinary `files` rows (so admin listings, retention and the
//! crash-safe commit of the v3 path apply unchanged); every query here is keyed by the
//! client id the caller authenticated.

use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::error::{CatalogError, query_err};
use super::model::{ClientId, DeviceRole, FileRowId};
use super::timestamp::format_rfc3339;
use super::{Catalog, now};
use crate::faults::FaultPoint;

/// Protocol number recorded for clients registered over v4.
pub const PROTOCOL_V4: u8 = 4;

/// A v4 client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4Client {
    /// Its id.
    pub id: ClientId,
    /// Its name.
    pub name: Vec<u8>,
}

/// Result of [`Catalog::register_v4_client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V4RegisterOutcome {
    /// Inserted (and the token, if any, consumed).
    Registered,
    /// This key is already registered: log in as that client.
    AlreadyRegistered(V4Client),
    /// Another client has the name.
    NameTaken,
    /// The random id collided; pick another.
    IdTaken,
    /// The token is unknown, used or expired.
    TokenInvalid,
}

/// A resumable upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4Partial {
    /// Its `files` row (state `receiving`).
    pub row: FileRowId,
    /// Relative path of the partial file.
    pub temp_path: String,
    /// Relative destination path.
    pub path_name: String,
    /// Announced size.
    pub size: u64,
    /// Last durable offset.
    pub durable: u64,
}

/// A verified version of a client's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4Version {
    /// Its row.
    pub row: FileRowId,
    /// File name bytes.
    pub name: Vec<u8>,
    /// Version number.
    pub version: u32,
    /// Plaintext size.
    pub size: u64,
    /// When it was verified (Unix seconds).
    pub created_unix_secs: u64,
    /// POSIX cksum.
    pub cksum: u32,
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
    /// Relative path of the stored file.
    pub path_name: String,
}

impl Catalog {
    /// The v4 client registered with `key`, if any.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn v4_client_by_key(&self, key: [u8; 32]) -> Result<Option<V4Client>, CatalogError> {
        self.read(move |c| client_by_key(c, &key)).await
    }

    /// Registers `key` as a v4 client named `name`, in one transaction with the consumption
    /// of the enrollment token whose SHA-256 is `token_hash` (when given, it is required).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails; refusals are `Ok` outcomes.
    pub async fn register_v4_client(
        &self,
        id: ClientId,
        name: Vec<u8>,
        key: [u8; 32],
        token_hash: Option<[u8; 32]>,
        role: DeviceRole,
    ) -> Result<V4RegisterOutcome, CatalogError> {
        self.inject(FaultPoint::CatalogRegister, "register_v4_client")?;
        let now = now();
        self.write(move |c| register(c, &id, &name, &key, token_hash.as_ref(), role, &now))
            .await
    }

    /// The role of the client (device) `id`, or `None` if no such client.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn device_role(&self, id: ClientId) -> Result<Option<DeviceRole>, CatalogError> {
        self.read(move |c| {
            c.query_row("SELECT Role FROM clients WHERE ID = ?1", [&id], |r| {
                super::queries::role_from_column(r, 0)
            })
            .optional()
            .map_err(query_err("device_role"))
        })
        .await
    }

    /// Gives the client (device) named `name` the role `role`; `false` if no client has
    /// that name.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn set_device_role(
        &self,
        name: Vec<u8>,
        role: DeviceRole,
    ) -> Result<bool, CatalogError> {
        self.write(move |c| {
            let changed = c
                .execute(
                    "UPDATE clients SET Role = ?2 WHERE Name = ?1",
                    params![name, role.as_str()],
                )
                .map_err(query_err("set_device_role"))?;
            Ok(changed > 0)
        })
        .await
    }

    /// Stores a new enrollment token (its SHA-256) valid for `ttl`.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn create_enrollment_token(
        &self,
        token_hash: [u8; 32],
        ttl: Duration,
    ) -> Result<String, CatalogError> {
        let created = now();
        let expires = format_rfc3339(SystemTime::now() + ttl);
        let shown = expires.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO enrollment_tokens (TokenHash, CreatedAt, ExpiresAt) VALUES (?1, ?2, ?3)",
                params![token_hash, created, expires],
            )
            .map_err(query_err("create_enrollment_token"))?;
            Ok(())
        })
        .await?;
        Ok(shown)
    }

    /// The resumable upload of `client`'s `name`, if one is open.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn v4_partial(
        &self,
        client: ClientId,
        name: Vec<u8>,
    ) -> Result<Option<V4Partial>, CatalogError> {
        self.read(move |c| partial(c, &client, &name)).await
    }

    /// Starts a resumable upload: a `receiving` row (next version number) and its size.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn begin_v4_upload(
        &self,
        client: ClientId,
        name: Vec<u8>,
        path_name: String,
        temp_path: String,
        size: u64,
    ) -> Result<FileRowId, CatalogError> {
        let now = now();
        self.write(move |c| begin_upload(c, &client, &name, &path_name, &temp_path, size, &now))
            .await
    }

    /// Records `offset` as durable for the upload in `row` and refreshes its `UpdatedAt`
    /// (maintenance counts abandonment from the last checkpoint).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn v4_checkpoint(&self, row: FileRowId, offset: u64) -> Result<(), CatalogError> {
        let now = now();
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(query_err("v4_checkpoint"))?;
            tx.execute(
                "UPDATE v4_uploads SET DurableOffset = ?2 WHERE RowId = ?1",
                params![row.0, offset],
            )
            .map_err(query_err("v4_checkpoint"))?;
            tx.execute(
                "UPDATE files SET UpdatedAt = ?2 WHERE RowId = ?1 AND State = 'receiving'",
                params![row.0, now],
            )
            .map_err(query_err("v4_checkpoint"))?;
            tx.commit().map_err(query_err("v4_checkpoint"))
        })
        .await
    }

    /// Forgets the resume bookkeeping of `row` (after its commit or discard).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn v4_upload_done(&self, row: FileRowId) -> Result<(), CatalogError> {
        self.write(move |c| {
            c.execute("DELETE FROM v4_uploads WHERE RowId = ?1", [row.0])
                .map_err(query_err("v4_upload_done"))?;
            Ok(())
        })
        .await
    }

    /// Every verified version of `client`'s files, by name then version.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn v4_versions(&self, client: ClientId) -> Result<Vec<V4Version>, CatalogError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "{VERSION_COLUMNS} WHERE ID = ?1 AND State = 'verified' ORDER BY FileName, Version"
                ))
                .map_err(query_err("v4_versions"))?;
            let rows = stmt
                .query_map([client], version_from_row)
                .map_err(query_err("v4_versions"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(query_err("v4_versions"))?;
            Ok(rows)
        })
        .await
    }

    /// One verified version of `client`'s `name` (`None` = the newest).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn v4_version(
        &self,
        client: ClientId,
        name: Vec<u8>,
        version: Option<u32>,
    ) -> Result<Option<V4Version>, CatalogError> {
        self.read(move |c| {
            let sql = format!(
                "{VERSION_COLUMNS} WHERE ID = ?1 AND FileName = ?2 AND State = 'verified'
                   AND (?3 IS NULL OR Version = ?3) ORDER BY Version DESC LIMIT 1"
            );
            c.query_row(&sql, params![client, name, version], version_from_row)
                .optional()
                .map_err(query_err("v4_version"))
        })
        .await
    }
}

const VERSION_COLUMNS: &str = "SELECT RowId, FileName, Version, COALESCE(Size, 0),
        CAST(strftime('%s', COALESCE(VerifiedAt, CreatedAt)) AS INTEGER), COALESCE(Cksum, 0),
        Sha256, PathName FROM files";

fn version_from_row(r: &Row<'_>) -> rusqlite::Result<V4Version> {
    let sha: Option<Vec<u8>> = r.get(6)?;
    let mut sha256 = [0u8; 32];
    if let Some(sha) = sha.filter(|s| s.len() == 32) {
        sha256.copy_from_slice(&sha);
    }
    Ok(V4Version {
        row: FileRowId(r.get(0)?),
        name: r.get(1)?,
        version: r.get(2)?,
        size: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
        created_unix_secs: u64::try_from(r.get::<_, Option<i64>>(4)?.unwrap_or(0)).unwrap_or(0),
        cksum: r.get(5)?,
        sha256,
        path_name: r.get(7)?,
    })
}

fn client_by_key(conn: &Connection, key: &[u8; 32]) -> Result<Option<V4Client>, CatalogError> {
    conn.query_row(
        "SELECT ID, Name FROM clients WHERE PublicKey = ?1 AND Protocol = 4",
        [key],
        |r| {
            Ok(V4Client {
                id: r.get(0)?,
                name: r.get(1)?,
            })
        },
    )
    .optional()
    .map_err(query_err("v4_client_by_key"))
}

fn register(
    conn: &mut Connection,
    id: &ClientId,
    name: &[u8],
    key: &[u8; 32],
    token_hash: Option<&[u8; 32]>,
    role: DeviceRole,
    now: &str,
) -> Result<V4RegisterOutcome, CatalogError> {
    const OP: &str = "register_v4_client";
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(query_err(OP))?;
    if let Some(existing) = client_by_key(&tx, key)? {
        return Ok(V4RegisterOutcome::AlreadyRegistered(existing));
    }
    if let Some(hash) = token_hash {
        let used = tx
            .execute(
                "UPDATE enrollment_tokens SET UsedAt = ?2, UsedBy = ?3
                 WHERE TokenHash = ?1 AND UsedAt IS NULL AND ExpiresAt > ?2",
                params![hash, now, id],
            )
            .map_err(query_err(OP))?;
        if used != 1 {
            return Ok(V4RegisterOutcome::TokenInvalid);
        }
    }
    let taken: Option<Vec<u8>> = tx
        .query_row(
            "SELECT ID FROM clients WHERE Name = ?1 OR ID = ?2",
            params![name, id],
            |r| r.get(0),
        )
        .optional()
        .map_err(query_err(OP))?;
    if let Some(taken) = taken {
        return Ok(if taken == id {
            V4RegisterOutcome::IdTaken
        } else {
            V4RegisterOutcome::NameTaken
        });
    }
    tx.execute(
        "INSERT INTO clients (ID, Name, PublicKey, LastSeen, Protocol, RegisteredAt, Role)
         VALUES (?1, ?2, ?3, ?4, 4, ?4, ?5)",
        params![id, name, key, now, role.as_str()],
    )
    .map_err(query_err(OP))?;
    tx.commit().map_err(query_err(OP))?;
    Ok(V4RegisterOutcome::Registered)
}

fn partial(
    conn: &Connection,
    client: &ClientId,
    name: &[u8],
) -> Result<Option<V4Partial>, CatalogError> {
    conn.query_row(
        "SELECT f.RowId, f.TempPath, f.PathName, u.Size, u.DurableOffset
         FROM files f JOIN v4_uploads u ON u.RowId = f.RowId
         WHERE f.ID = ?1 AND f.FileName = ?2 AND f.State = 'receiving' AND f.TempPath IS NOT NULL
         ORDER BY f.RowId DESC LIMIT 1",
        params![client, name],
        |r| {
            Ok(V4Partial {
                row: FileRowId(r.get(0)?),
                temp_path: r.get(1)?,
                path_name: r.get(2)?,
                size: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                durable: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
            })
        },
    )
    .optional()
    .map_err(query_err("v4_partial"))
}

fn begin_upload(
    conn: &mut Connection,
    client: &ClientId,
    name: &[u8],
    path_name: &str,
    temp_path: &str,
    size: u64,
    now: &str,
) -> Result<FileRowId, CatalogError> {
    const OP: &str = "begin_v4_upload";
    let size = i64::try_from(size).map_err(|_| CatalogError::Query {
        op: OP,
        source: rusqlite::Error::IntegralValueOutOfRange(0, i64::MAX),
    })?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(query_err(OP))?;
    let (row, _) =
        super::queries::insert_receiving(&tx, client, name, path_name, Some(temp_path), now)
            .map_err(query_err(OP))?;
    tx.execute(
        "INSERT INTO v4_uploads (RowId, Size, DurableOffset) VALUES (?1, ?2, 0)",
        params![row.0, size],
    )
    .map_err(query_err(OP))?;
    tx.commit().map_err(query_err(OP))?;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: ClientId = [0xA1; 16];
    const KEY: [u8; 32] = [7; 32];

    async fn open() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path().join("defensive.db"))
            .await
            .unwrap();
        (dir, catalog)
    }

    #[tokio::test]
    async fn tokens_are_single_use_and_expire() {
        let (_dir, catalog) = open().await;
        catalog
            .create_enrollment_token([1; 32], Duration::from_secs(60))
            .await
            .unwrap();
        catalog
            .create_enrollment_token([2; 32], Duration::ZERO)
            .await
            .unwrap();

        let expired = catalog
            .register_v4_client(
                ALICE,
                b"a".to_vec(),
                KEY,
                Some([2; 32]),
                DeviceRole::AppendOnly,
            )
            .await
            .unwrap();
        let unknown = catalog
            .register_v4_client(
                ALICE,
                b"a".to_vec(),
                KEY,
                Some([3; 32]),
                DeviceRole::AppendOnly,
            )
            .await
            .unwrap();
        let good = catalog
            .register_v4_client(
                ALICE,
                b"a".to_vec(),
                KEY,
                Some([1; 32]),
                DeviceRole::AppendOnly,
            )
            .await
            .unwrap();
        let reused = catalog
            .register_v4_client(
                [0xB0; 16],
                b"b".to_vec(),
                [8; 32],
                Some([1; 32]),
                DeviceRole::AppendOnly,
            )
            .await
            .unwrap();

        assert_eq!(expired, V4RegisterOutcome::TokenInvalid);
        assert_eq!(unknown, V4RegisterOutcome::TokenInvalid);
        assert_eq!(good, V4RegisterOutcome::Registered);
        assert_eq!(reused, V4RegisterOutcome::TokenInvalid);
        let found = catalog.v4_client_by_key(KEY).await.unwrap().unwrap();
        assert_eq!(found.id, ALICE);
        let record = catalog.client_by_id(ALICE).await.unwrap().unwrap();
        assert_eq!(record.protocol, Some(PROTOCOL_V4));
    }

    #[tokio::test]
    async fn registration_is_idempotent_per_key_and_names_are_unique() {
        let (_dir, catalog) = open().await;
        let first = catalog
            .register_v4_client(ALICE, b"a".to_vec(), KEY, None, DeviceRole::AppendOnly)
            .await
            .unwrap();
        let again = catalog
            .register_v4_client(
                [0xB0; 16],
                b"other".to_vec(),
                KEY,
                None,
                DeviceRole::AppendOnly,
            )
            .await
            .unwrap();
        let taken = catalog
            .register_v4_client(
                [0xB0; 16],
                b"a".to_vec(),
                [8; 32],
                None,
                DeviceRole::AppendOnly,
            )
            .await
            .unwrap();

        assert_eq!(first, V4RegisterOutcome::Registered);
        assert_eq!(
            again,
            V4RegisterOutcome::AlreadyRegistered(V4Client {
                id: ALICE,
                name: b"a".to_vec()
            })
        );
        assert_eq!(taken, V4RegisterOutcome::NameTaken);
    }

    #[tokio::test]
    async fn partial_uploads_record_checkpoints_per_client() {
        let (_dir, catalog) = open().await;
        catalog
            .register_v4_client(ALICE, b"a".to_vec(), KEY, None, DeviceRole::AppendOnly)
            .await
            .unwrap();
        let row = catalog
            .begin_v4_upload(
                ALICE,
                b"f".to_vec(),
                "x/f".into(),
                "x/.cb-partial-v4-1".into(),
                100,
            )
            .await
            .unwrap();
        catalog.v4_checkpoint(row, 64).await.unwrap();

        let found = catalog.v4_partial(ALICE, b"f".to_vec()).await.unwrap();
        let other = catalog.v4_partial([0xB0; 16], b"f".to_vec()).await.unwrap();

        assert_eq!(
            found,
            Some(V4Partial {
                row,
                temp_path: "x/.cb-partial-v4-1".into(),
                path_name: "x/f".into(),
                size: 100,
                durable: 64
            })
        );
        assert_eq!(other, None);
        let abandoned = catalog
            .abandoned_transfers(SystemTime::now() + Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(
            abandoned,
            [crate::catalog::AbandonedTransfer {
                row,
                temp_path: Some("x/.cb-partial-v4-1".into()),
                resumable: true
            }]
        );
        catalog.discard_file(row).await.unwrap();
        assert_eq!(
            catalog.v4_partial(ALICE, b"f".to_vec()).await.unwrap(),
            None
        );
    }

    /// Committing or discarding an upload deletes its resume record in the same transaction
    /// (maintenance discards abandoned uploads with `discard_file` alone).
    #[tokio::test]
    async fn resume_records_end_with_the_upload() {
        let (dir, catalog) = open().await;
        catalog
            .register_v4_client(ALICE, b"a".to_vec(), KEY, None, DeviceRole::AppendOnly)
            .await
            .unwrap();
        let begin = |name: &'static str| {
            let catalog = catalog.clone();
            async move {
                catalog
                    .begin_v4_upload(
                        ALICE,
                        name.as_bytes().to_vec(),
                        format!("x/{name}"),
                        format!("x/.cb-partial-v4-{name}"),
                        10,
                    )
                    .await
                    .unwrap()
            }
        };
        let (committed, discarded, open) = (begin("c").await, begin("d").await, begin("o").await);
        let facts = crate::catalog::ReceivedFile {
            size: 10,
            ciphertext_size: 10,
            cksum: 1,
            sha256: [1; 32],
        };
        catalog.mark_received(committed, facts).await.unwrap();
        catalog.commit_file(committed, 1).await.unwrap();
        catalog.discard_file(discarded).await.unwrap();

        let conn = Connection::open(dir.path().join("defensive.db")).unwrap();
        let mut stmt = conn
            .prepare("SELECT RowId FROM v4_uploads ORDER BY RowId")
            .unwrap();
        let left: Vec<i64> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, [open.0]);
    }
}
