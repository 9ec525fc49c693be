//! Catalog queries of protocol v4 (`docs/protocol-v4.md`): clients identified by their X25519
//! static key, single-use enrollment tokens, resumable uploads and the version listing.
//!
//! Committed v4 files are ordinary `files` rows (so admin listings, retention and the
//! crash-safe commit of the v3 path apply unchanged); every query here is keyed by the
//! client id the caller authenticated.

use std::time::{Duration, SystemTime};

use super::sql::{Conn, Engine, OptionalExtension, Row, SqlError, params};

use super::error::{CatalogError, query_err};
use super::model::{ClientId, DeviceRecord, DeviceRole, FileRowId};
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
    /// The token enrolls a new device of an existing client: the key was added to it.
    DeviceAdded(V4Client),
    /// The token enrolls a device of another client than the name asked for.
    TokenForAnotherClient {
        /// The name of the client the token is for.
        name: Vec<u8>,
    },
}

/// Result of [`Catalog::set_device_role`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetRoleOutcome {
    /// The role was set on this many devices.
    Set(usize),
    /// No client has that name.
    NoSuchClient,
    /// The client has no device whose fingerprint starts that way.
    NoSuchDevice,
    /// The client has several devices: name one (their fingerprints).
    Ambiguous(Vec<String>),
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

    /// The role of the device with static key `key`, or `None` if no such device.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn device_role(&self, key: [u8; 32]) -> Result<Option<DeviceRole>, CatalogError> {
        self.read(move |c| {
            c.query_row(
                "SELECT Role FROM v4_devices WHERE PublicKey = ?1",
                [&key],
                |r| role_from_column(r, 0),
            )
            .optional()
            .map_err(query_err("device_role"))
        })
        .await
    }

    /// Every v4 device, by client name then age.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn list_devices(&self) -> Result<Vec<DeviceRecord>, CatalogError> {
        self.read(|c| {
            c.prepare(
                "SELECT d.ClientId, c.Name, d.PublicKey, d.Role, d.AddedAt
                 FROM v4_devices d JOIN clients c ON c.ID = d.ClientId
                 ORDER BY c.Name, d.AddedAt, d.PublicKey",
            )
            .and_then(|mut s| {
                s.query_map((), |r| {
                    Ok(DeviceRecord {
                        client_id: r.get(0)?,
                        client_name: r.get(1)?,
                        key: r.get(2)?,
                        role: role_from_column(r, 3)?,
                        added_at: r.get(4)?,
                    })
                })?
                .collect()
            })
            .map_err(query_err("list_devices"))
        })
        .await
    }

    /// Gives the device of client `name` whose fingerprint (hex, `sha256:` optional) starts
    /// with `device` the role `role`; with no `device`, the client's only device.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails; refusals are `Ok` outcomes.
    pub async fn set_device_role(
        &self,
        name: Vec<u8>,
        device: Option<String>,
        role: DeviceRole,
    ) -> Result<SetRoleOutcome, CatalogError> {
        let devices: Vec<DeviceRecord> = self
            .list_devices()
            .await?
            .into_iter()
            .filter(|d| d.client_name == name)
            .collect();
        if devices.is_empty() {
            return Ok(SetRoleOutcome::NoSuchClient);
        }
        let wanted = device.map(|d| d.trim_start_matches("sha256:").to_ascii_lowercase());
        let matching: Vec<&DeviceRecord> = devices
            .iter()
            .filter(|d| {
                wanted
                    .as_ref()
                    .is_none_or(|prefix| device_fingerprint(&d.key).starts_with(prefix.as_str()))
            })
            .collect();
        match matching.as_slice() {
            [] => Ok(SetRoleOutcome::NoSuchDevice),
            [one] => {
                let key = one.key;
                self.write(move |c| {
                    c.execute(
                        "UPDATE v4_devices SET Role = ?2 WHERE PublicKey = ?1",
                        params![key, role.as_str()],
                    )
                    .map_err(query_err("set_device_role"))?;
                    Ok(SetRoleOutcome::Set(1))
                })
                .await
            }
            several => Ok(SetRoleOutcome::Ambiguous(
                several.iter().map(|d| device_fingerprint(&d.key)).collect(),
            )),
        }
    }

    /// Stores a new enrollment token (its SHA-256) valid for `ttl`.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn create_enrollment_token(
        &self,
        token_hash: [u8; 32],
        ttl: Duration,
        for_client: Option<ClientId>,
    ) -> Result<String, CatalogError> {
        let created = now();
        let expires = format_rfc3339(SystemTime::now() + ttl);
        let shown = expires.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO enrollment_tokens (TokenHash, CreatedAt, ExpiresAt, ForClient)
                 VALUES (?1, ?2, ?3, ?4)",
                params![token_hash, created, expires, for_client],
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
            let tx = c.immediate().map_err(query_err("v4_checkpoint"))?;
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
                    "{} WHERE ID = ?1 AND State = 'verified' ORDER BY FileName, Version",
                    version_columns(c.engine())
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
                "{} WHERE ID = ?1 AND FileName = ?2 AND State = 'verified'
                   AND (Version = ?3 OR ?3 IS NULL) ORDER BY Version DESC LIMIT 1",
                version_columns(c.engine())
            );
            c.query_row(&sql, params![client, name, version], version_from_row)
                .optional()
                .map_err(query_err("v4_version"))
        })
        .await
    }
}

/// The columns [`version_from_row`] reads; the stored time (RFC 3339 text) becomes Unix
/// seconds in each engine's own function.
fn version_columns(engine: Engine) -> &'static str {
    match engine {
        Engine::Sqlite => {
            "SELECT RowId, FileName, Version, COALESCE(Size, 0),
                CAST(strftime('%s', COALESCE(VerifiedAt, CreatedAt)) AS INTEGER), COALESCE(Cksum, 0),
                Sha256, PathName FROM files"
        }
        Engine::Postgres => {
            "SELECT RowId, FileName, Version, COALESCE(Size, 0),
                CAST(EXTRACT(EPOCH FROM CAST(COALESCE(VerifiedAt, CreatedAt) AS TIMESTAMPTZ)) AS BIGINT),
                COALESCE(Cksum, 0), Sha256, PathName FROM files"
        }
    }
}

fn version_from_row(r: &Row<'_>) -> Result<V4Version, SqlError> {
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

/// The fingerprint of a device key as operators see it: hex SHA-256 of the key (the v4
/// fingerprint without its `sha256:` prefix).
#[must_use]
pub fn device_fingerprint(key: &[u8; 32]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key))
}

/// The [`DeviceRole`] in column `index` (the schema's CHECK allows only the known names).
fn role_from_column(r: &Row<'_>, index: usize) -> Result<DeviceRole, SqlError> {
    let name: String = r.get(index)?;
    DeviceRole::from_name(&name).ok_or_else(|| SqlError::Conversion {
        column: Some(index),
        problem: format!("unknown device role {name:?}"),
    })
}

fn client_by_key(conn: &Conn, key: &[u8; 32]) -> Result<Option<V4Client>, CatalogError> {
    conn.query_row(
        "SELECT c.ID, c.Name FROM v4_devices d JOIN clients c ON c.ID = d.ClientId
         WHERE d.PublicKey = ?1",
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
    conn: &mut Conn,
    id: &ClientId,
    name: &[u8],
    key: &[u8; 32],
    token_hash: Option<&[u8; 32]>,
    role: DeviceRole,
    now: &str,
) -> Result<V4RegisterOutcome, CatalogError> {
    const OP: &str = "register_v4_client";
    let tx = conn.immediate().map_err(query_err(OP))?;
    if let Some(existing) = client_by_key(&tx, key)? {
        return Ok(V4RegisterOutcome::AlreadyRegistered(existing));
    }
    if let Some(hash) = token_hash {
        let token: Option<Option<ClientId>> = tx
            .query_row(
                "SELECT ForClient FROM enrollment_tokens
                 WHERE TokenHash = ?1 AND UsedAt IS NULL AND ExpiresAt > ?2",
                params![hash, now],
                |r| r.get(0),
            )
            .optional()
            .map_err(query_err(OP))?;
        let Some(for_client) = token else {
            return Ok(V4RegisterOutcome::TokenInvalid);
        };
        if let Some(owner) = for_client {
            let outcome = add_device(&tx, &owner, name, key, role, now)?;
            if matches!(outcome, V4RegisterOutcome::DeviceAdded(_)) {
                consume_token(&tx, hash, &owner, now)?;
                tx.commit().map_err(query_err(OP))?;
            }
            return Ok(outcome);
        }
        consume_token(&tx, hash, id, now)?;
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
        "INSERT INTO clients (ID, Name, PublicKey, LastSeen, Protocol, RegisteredAt)
         VALUES (?1, ?2, ?3, ?4, 4, ?4)",
        params![id, name, key, now],
    )
    .map_err(query_err(OP))?;
    insert_device(&tx, key, id, role, now)?;
    tx.commit().map_err(query_err(OP))?;
    Ok(V4RegisterOutcome::Registered)
}

/// Marks an enrollment token used by `user`.
fn consume_token(
    conn: &Conn,
    hash: &[u8; 32],
    user: &ClientId,
    now: &str,
) -> Result<(), CatalogError> {
    conn.execute(
        "UPDATE enrollment_tokens SET UsedAt = ?2, UsedBy = ?3 WHERE TokenHash = ?1",
        params![hash, now, user],
    )
    .map_err(query_err("consume_token"))?;
    Ok(())
}

fn insert_device(
    conn: &Conn,
    key: &[u8; 32],
    client: &ClientId,
    role: DeviceRole,
    now: &str,
) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT INTO v4_devices (PublicKey, ClientId, Role, AddedAt) VALUES (?1, ?2, ?3, ?4)",
        params![key, client, role.as_str(), now],
    )
    .map_err(query_err("insert_device"))?;
    Ok(())
}

/// Adds `key` as a device of `owner`, whose name must be `name` (the token was issued for
/// that client).
fn add_device(
    conn: &Conn,
    owner: &ClientId,
    name: &[u8],
    key: &[u8; 32],
    role: DeviceRole,
    now: &str,
) -> Result<V4RegisterOutcome, CatalogError> {
    let owner_name: Option<Vec<u8>> = conn
        .query_row("SELECT Name FROM clients WHERE ID = ?1", [owner], |r| {
            r.get(0)
        })
        .optional()
        .map_err(query_err("add_device"))?;
    let Some(owner_name) = owner_name else {
        return Ok(V4RegisterOutcome::TokenInvalid);
    };
    if owner_name != name {
        return Ok(V4RegisterOutcome::TokenForAnotherClient { name: owner_name });
    }
    insert_device(conn, key, owner, role, now)?;
    Ok(V4RegisterOutcome::DeviceAdded(V4Client {
        id: *owner,
        name: owner_name,
    }))
}

fn partial(conn: &Conn, client: &ClientId, name: &[u8]) -> Result<Option<V4Partial>, CatalogError> {
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
    conn: &mut Conn,
    client: &ClientId,
    name: &[u8],
    path_name: &str,
    temp_path: &str,
    size: u64,
    now: &str,
) -> Result<FileRowId, CatalogError> {
    const OP: &str = "begin_v4_upload";
    let size = i64::try_from(size).map_err(|_| CatalogError::OutOfRange {
        field: "upload size",
        value: size.to_string(),
    })?;
    let tx = conn.immediate().map_err(query_err(OP))?;
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

    async fn a_token_for_a_client_adds_a_device_to_it_and_only_under_its_name(
        guard: crate::catalog::testing::TestGuard,
    ) {
        let (_guard, catalog) = guard.open().await;
        catalog
            .register_v4_client(ALICE, b"alice".to_vec(), KEY, None, DeviceRole::Manage)
            .await
            .unwrap();
        catalog
            .create_enrollment_token([4; 32], Duration::from_secs(60), Some(ALICE))
            .await
            .unwrap();
        let role = DeviceRole::AppendOnly;

        let wrong_name = catalog
            .register_v4_client([0xB0; 16], b"bob".to_vec(), [8; 32], Some([4; 32]), role)
            .await
            .unwrap();
        let added = catalog
            .register_v4_client([0xB0; 16], b"alice".to_vec(), [8; 32], Some([4; 32]), role)
            .await
            .unwrap();
        let reused = catalog
            .register_v4_client([0xB1; 16], b"alice".to_vec(), [9; 32], Some([4; 32]), role)
            .await
            .unwrap();

        assert_eq!(
            wrong_name,
            V4RegisterOutcome::TokenForAnotherClient {
                name: b"alice".to_vec()
            }
        );
        let alice = V4Client {
            id: ALICE,
            name: b"alice".to_vec(),
        };
        assert_eq!(added, V4RegisterOutcome::DeviceAdded(alice.clone()));
        assert_eq!(reused, V4RegisterOutcome::TokenInvalid);
        assert_eq!(
            catalog.v4_client_by_key([8; 32]).await.unwrap(),
            Some(alice)
        );
        assert_eq!(
            catalog.device_role(KEY).await.unwrap(),
            Some(DeviceRole::Manage)
        );
        assert_eq!(catalog.device_role([8; 32]).await.unwrap(), Some(role));
        let ambiguous = catalog
            .set_device_role(b"alice".to_vec(), None, DeviceRole::Manage)
            .await
            .unwrap();
        assert!(matches!(ambiguous, SetRoleOutcome::Ambiguous(ref d) if d.len() == 2));
        let prefix = device_fingerprint(&[8; 32])[..8].to_owned();
        let set = catalog
            .set_device_role(b"alice".to_vec(), Some(prefix), DeviceRole::Manage)
            .await
            .unwrap();
        assert_eq!(set, SetRoleOutcome::Set(1));
        assert_eq!(
            catalog.device_role([8; 32]).await.unwrap(),
            Some(DeviceRole::Manage)
        );
    }

    async fn tokens_are_single_use_and_expire(guard: crate::catalog::testing::TestGuard) {
        let (_guard, catalog) = guard.open().await;
        catalog
            .create_enrollment_token([1; 32], Duration::from_secs(60), None)
            .await
            .unwrap();
        catalog
            .create_enrollment_token([2; 32], Duration::ZERO, None)
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

    async fn registration_is_idempotent_per_key_and_names_are_unique(
        guard: crate::catalog::testing::TestGuard,
    ) {
        let (_guard, catalog) = guard.open().await;
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

    async fn partial_uploads_record_checkpoints_per_client(
        guard: crate::catalog::testing::TestGuard,
    ) {
        let (_guard, catalog) = guard.open().await;
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

        let conn = rusqlite::Connection::open(dir.path().join("defensive.db")).unwrap();
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

    on_both_engines!(
        a_token_for_a_client_adds_a_device_to_it_and_only_under_its_name,
        tokens_are_single_use_and_expire,
        registration_is_idempotent_per_key_and_names_are_unique,
        partial_uploads_record_checkpoints_per_client,
    );
}
