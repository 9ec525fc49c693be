//! `cyberbackup-server catalog rebuild`: a new catalog from what is on disk, as restic's
//! `repair index` rebuilds its index from the packs.
//!
//! The old catalog files (`defensive.db` and its `-wal`/`-shm`) are moved aside as
//! `defensive.db.damaged-<unix seconds>`; the clients that can still be read from them keep
//! their names, public keys and protocol. Every stored file under `files/<client-id>/` becomes
//! a verified version of its client again, with its size, SHA-256 and POSIX cksum recomputed:
//! `<name>.~N~` is version N and the current file is the highest kept version + 1.
//!
//! Snapshot repositories come back when the old catalog still holds their config and key
//! objects (they exist nowhere else): those, the clients' v4 devices, and a record of every
//! snapshot object on disk (from its cleartext envelope); the packs are indexed from their
//! headers by the next start-up recovery.
//!
//! What the disk does not hold cannot come back: a client missing from the old catalog is
//! registered as `recovered-<client-id>` without a public key (a v3 client must register a key
//! again; a v4 client, whose key is only in the catalog, is unknown until an operator restores
//! the catalog or the client registers anew); names longer than the on-disk limit were stored
//! shortened and are skipped (listed in the report); enrollment tokens, upload resume points
//! and timestamps are lost.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cyberbackup_core::crypto::Cksum;
use rusqlite::{Connection, OpenFlags, params};
use sha2::{Digest, Sha256};

use super::error::query_err;
use super::integrity::client_id_of_dir;
use super::{Catalog, CatalogError, ClientId, format_rfc3339, schema};
use crate::config::ServerConfig;
use crate::storage::{FILES_DIR, PARTIAL_PREFIX, split_versioned_path, unmap_file_name};

/// What [`rebuild`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Where the old catalog was moved, if there was one.
    pub moved_aside: Option<PathBuf>,
    /// Clients in the new catalog.
    pub clients: usize,
    /// Of those, clients the old catalog did not have (registered as `recovered-<id>`).
    pub recovered_clients: usize,
    /// File versions registered.
    pub files: usize,
    /// Their plaintext bytes.
    pub bytes: u64,
    /// Files left out, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Snapshot repositories whose config and key objects the old catalog still held.
    pub repositories: usize,
    /// Their snapshots, recorded again from the snapshot objects (envelopes) on disk.
    pub snapshots: usize,
}

impl fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(aside) = &self.moved_aside {
            writeln!(f, "old catalog moved to {}", aside.display())?;
        }
        writeln!(
            f,
            "catalog rebuilt: {} client(s) ({} without a record in the old catalog, named recovered-<id>, no public key), {} file version(s), {} bytes",
            self.clients, self.recovered_clients, self.files, self.bytes
        )?;
        writeln!(
            f,
            "repositories: {} (config and key objects from the old catalog), {} snapshot(s) recorded from their objects; their packs are indexed from their headers at the next start",
            self.repositories, self.snapshots
        )?;
        for (path, reason) in &self.skipped {
            writeln!(f, "skipped {}: {reason}", path.display())?;
        }
        Ok(())
    }
}

/// A client salvaged from the old catalog.
struct OldClient {
    name: Vec<u8>,
    public_key: Option<Vec<u8>>,
    protocol: Option<u8>,
    registered_at: String,
}

/// One stored file found on disk.
struct Found {
    client: ClientId,
    name: Vec<u8>,
    path_name: String,
    /// `Some(n)` for a kept version `<name>.~n~`, `None` for the current file.
    kept_version: Option<u32>,
    size: u64,
    cksum: u32,
    sha256: [u8; 32],
}

/// Rebuilds the catalog of `config`'s data directory from the stored files. Run it with the
/// server stopped.
///
/// # Errors
/// [`CatalogError::Rebuild`] when the old catalog cannot be moved aside or the files cannot be
/// read, [`CatalogError::Unsupported`] for a PostgreSQL catalog, or the errors of
/// [`Catalog::open`] and of the inserts.
pub async fn rebuild(config: &ServerConfig) -> Result<RebuildReport, CatalogError> {
    let super::CatalogLocation::Sqlite(path) = config.catalog_location() else {
        return Err(CatalogError::Unsupported {
            what: "catalog rebuild",
            engine: super::Engine::Postgres,
            instead: "rebuild into a SQLite file (catalog = \"sqlite:PATH\"), then `catalog copy --to postgres://…` into an empty database (docs/operations.md, \"A damaged catalog\")",
        });
    };
    let files = config.data_dir.join(FILES_DIR);
    let repository = config.data_dir.join(crate::repository::REPOSITORY_DIR);
    let (aside, old_clients, old_repos) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || -> Result<_, CatalogError> {
            let aside = move_aside(&path)?;
            let old = aside.as_deref().map(salvage_clients).unwrap_or_default();
            let repos = aside
                .as_deref()
                .map(salvage_repositories)
                .unwrap_or_default();
            Ok((aside, old, repos))
        }
    })
    .await
    .map_err(CatalogError::Task)??;
    // Creates the file and its schema (migrations) the way the server does.
    Catalog::open(&path).await?.close().await?;
    let mut report = tokio::task::spawn_blocking(move || {
        let mut report = fill(&path, &files, &old_clients)?;
        fill_repositories(&path, &repository, &old_repos, &mut report)?;
        Ok::<_, CatalogError>(report)
    })
    .await
    .map_err(CatalogError::Task)??;
    report.moved_aside = aside;
    Ok(report)
}

fn rebuild_err(path: &Path) -> impl FnOnce(io::Error) -> CatalogError {
    let path = path.to_path_buf();
    move |source| CatalogError::Rebuild { path, source }
}

/// Renames `defensive.db` and its `-wal` / `-shm` to `defensive.db.damaged-<secs>` (+ the same
/// suffixes, so SQLite still finds the WAL of the moved copy).
fn move_aside(path: &Path) -> Result<Option<PathBuf>, CatalogError> {
    if !path.exists() {
        return Ok(None);
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".damaged-{secs}"));
    let aside = PathBuf::from(aside);
    for suffix in ["-wal", "-shm", ""] {
        let with = |p: &Path| {
            let mut s = p.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        };
        match fs::rename(with(path), with(&aside)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(e) => return Err(rebuild_err(path)(e)),
        }
    }
    Ok(Some(aside))
}

/// The clients that can still be read from the old catalog (none if it cannot be read).
fn salvage_clients(old: &Path) -> BTreeMap<ClientId, OldClient> {
    let read = || -> rusqlite::Result<BTreeMap<ClientId, OldClient>> {
        let conn = Connection::open_with_flags(old, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let mut stmt =
            conn.prepare("SELECT ID, Name, PublicKey, Protocol, RegisteredAt FROM clients")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, ClientId>(0)?,
                OldClient {
                    name: r.get(1)?,
                    public_key: r.get(2)?,
                    protocol: r.get(3)?,
                    registered_at: r.get(4)?,
                },
            ))
        })?;
        // A damaged page ends the salvage at the rows read so far.
        Ok(rows.map_while(Result::ok).collect())
    };
    read().unwrap_or_default()
}

/// What of the snapshot repositories only the catalog holds: their config and key objects
/// and the v4 devices (keys and roles) of their clients.
#[derive(Default)]
struct OldRepositories {
    /// Client → (config, created at).
    configs: BTreeMap<ClientId, (Vec<u8>, String)>,
    /// (client, seq, key object, added at).
    keys: Vec<(ClientId, i64, Vec<u8>, String)>,
    /// (public key, client, role, added at).
    devices: Vec<(Vec<u8>, ClientId, String, String)>,
}

/// The repositories that can still be read from the old catalog (none if it cannot be read).
fn salvage_repositories(old: &Path) -> OldRepositories {
    let read = || -> rusqlite::Result<OldRepositories> {
        let conn = Connection::open_with_flags(old, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let mut out = OldRepositories::default();
        let mut stmt = conn.prepare("SELECT ClientId, Config, CreatedAt FROM repositories")?;
        out.configs = stmt
            .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?
            .map_while(Result::ok)
            .collect();
        let mut stmt = conn.prepare("SELECT ClientId, Seq, KeyObject, AddedAt FROM repo_keys")?;
        out.keys = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .map_while(Result::ok)
            .collect();
        let mut stmt = conn.prepare("SELECT PublicKey, ClientId, Role, AddedAt FROM v4_devices")?;
        out.devices = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .map_while(Result::ok)
            .collect();
        Ok(out)
    };
    read().unwrap_or_default()
}

/// Brings back the repositories of the clients in the new catalog: config and key objects
/// and devices from the old catalog, and a record of every snapshot object on disk (its
/// envelope is cleartext: ID, time, group, reference chunks). The packs are indexed from
/// their headers by the server's start-up recovery, since their repository exists again.
/// Snapshot objects are read from the local backend (`repository/` in the data directory).
fn fill_repositories(
    path: &Path,
    repository: &Path,
    old: &OldRepositories,
    report: &mut RebuildReport,
) -> Result<(), CatalogError> {
    const OP: &str = "rebuild repositories";
    let mut conn = schema::open_writer(path)?;
    let tx = conn.transaction().map_err(query_err(OP))?;
    let known = |tx: &rusqlite::Transaction<'_>, id: &ClientId| -> Result<bool, CatalogError> {
        tx.query_row("SELECT COUNT(*) FROM clients WHERE ID = ?1", [id], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n > 0)
        .map_err(query_err(OP))
    };
    for (public_key, client, role, added_at) in &old.devices {
        if known(&tx, client)? {
            tx.execute(
                "INSERT OR IGNORE INTO v4_devices (PublicKey, ClientId, Role, AddedAt)
                 VALUES (?1, ?2, ?3, ?4)",
                params![public_key, client, role, added_at],
            )
            .map_err(query_err(OP))?;
        }
    }
    for (client, (config, created_at)) in &old.configs {
        if !known(&tx, client)? {
            continue;
        }
        tx.execute(
            "INSERT INTO repositories (ClientId, Config, CreatedAt) VALUES (?1, ?2, ?3)",
            params![client, config, created_at],
        )
        .map_err(query_err(OP))?;
        for (_, seq, key, added_at) in old.keys.iter().filter(|k| k.0 == *client) {
            tx.execute(
                "INSERT INTO repo_keys (ClientId, Seq, KeyObject, AddedAt) VALUES (?1, ?2, ?3, ?4)",
                params![client, seq, key, added_at],
            )
            .map_err(query_err(OP))?;
        }
        report.repositories += 1;
        let dir = repository.join(hex::encode(client)).join("snapshots");
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let file = entry.path();
            let recorded = record_snapshot_object(&tx, client, &file);
            match recorded {
                Ok(()) => report.snapshots += 1,
                Err(reason) => report.skipped.push((file, reason)),
            }
        }
    }
    tx.commit().map_err(query_err(OP))?;
    Ok(())
}

/// Records the snapshot object at `file` (named by its ID) for `client`; why not, if not.
fn record_snapshot_object(
    tx: &rusqlite::Transaction<'_>,
    client: &ClientId,
    file: &Path,
) -> Result<(), String> {
    let bytes = fs::read(file).map_err(|e| format!("cannot read the snapshot object: {e}"))?;
    let (envelope, id) = cyberbackup_core::repo::SnapshotEnvelope::decode(&bytes)
        .map_err(|e| format!("not a snapshot object: {e}"))?;
    if file.file_name().and_then(|n| n.to_str()) != Some(id.to_hex().as_str()) {
        return Err("the snapshot object's bytes do not hash to its name".into());
    }
    let stored_at = fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let fail = |e: rusqlite::Error| format!("cannot record it: {e}");
    tx.execute(
        "INSERT INTO repo_snapshots
             (ClientId, SnapshotId, Size, TimeSecs, TimeNanos, StoredAt, GroupKey,
              TotalBytes, BlobCount)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            client,
            &id.0,
            i64::try_from(bytes.len()).unwrap_or(i64::MAX),
            envelope.time.secs,
            envelope.time.nanos,
            i64::try_from(stored_at).unwrap_or(i64::MAX),
            &envelope.group,
            i64::try_from(envelope.total_bytes).unwrap_or(i64::MAX),
            i64::try_from(envelope.blob_count).unwrap_or(i64::MAX),
        ],
    )
    .map_err(fail)?;
    for (seq, chunk) in envelope.ref_chunks.iter().enumerate() {
        tx.execute(
            "INSERT INTO repo_snapshot_refs (ClientId, SnapshotId, Seq, RefChunkId)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                client,
                &id.0,
                i64::try_from(seq).unwrap_or(i64::MAX),
                &chunk.0
            ],
        )
        .map_err(fail)?;
    }
    Ok(())
}

fn fill(
    path: &Path,
    files: &Path,
    old_clients: &BTreeMap<ClientId, OldClient>,
) -> Result<RebuildReport, CatalogError> {
    let mut report = RebuildReport::default();
    let found = scan(files, &mut report)?;
    let now = format_rfc3339(SystemTime::now());
    let mut conn = schema::open_writer(path)?;
    let tx = conn.transaction().map_err(query_err("rebuild"))?;
    let mut clients: BTreeMap<ClientId, bool> = BTreeMap::new();
    for (id, old) in old_clients {
        tx.execute(
            "INSERT INTO clients (ID, Name, PublicKey, LastSeen, AESKey, Protocol, RegisteredAt)
             VALUES (?1, ?2, ?3, NULL, NULL, ?4, ?5)",
            params![
                id,
                old.name,
                old.public_key,
                old.protocol,
                old.registered_at
            ],
        )
        .map_err(query_err("rebuild"))?;
        clients.insert(*id, false);
    }
    // The current file of a name is one version above its highest kept one.
    let mut current_version: BTreeMap<(ClientId, Vec<u8>), u32> = BTreeMap::new();
    for file in &found {
        let entry = current_version
            .entry((file.client, file.name.clone()))
            .or_insert(1);
        if let Some(kept) = file.kept_version {
            *entry = (*entry).max(kept.saturating_add(1));
        }
    }
    for file in &found {
        if let std::collections::btree_map::Entry::Vacant(unknown) = clients.entry(file.client) {
            let name = format!("recovered-{}", hex::encode(file.client));
            tx.execute(
                "INSERT INTO clients (ID, Name, PublicKey, LastSeen, AESKey, Protocol, RegisteredAt)
                 VALUES (?1, ?2, NULL, NULL, NULL, NULL, ?3)",
                params![file.client, name.as_bytes(), now],
            )
            .map_err(query_err("rebuild"))?;
            unknown.insert(true);
        }
        let version = file.kept_version.unwrap_or_else(|| {
            current_version
                .get(&(file.client, file.name.clone()))
                .copied()
                .unwrap_or(1)
        });
        let size = i64::try_from(file.size).map_err(|_| CatalogError::OutOfRange {
            field: "Size",
            value: file.size.to_string(),
        })?;
        tx.execute(
            "INSERT INTO files (ID, FileName, PathName, Verified, Version, State, Size, Cksum,
                                Sha256, CreatedAt, UpdatedAt, VerifiedAt)
             VALUES (?1, ?2, ?3, 1, ?4, 'verified', ?5, ?6, ?7, ?8, ?8, ?8)",
            params![
                file.client,
                file.name,
                file.path_name,
                version,
                size,
                file.cksum,
                file.sha256,
                now
            ],
        )
        .map_err(query_err("rebuild"))?;
        report.files += 1;
        report.bytes = report.bytes.saturating_add(file.size);
    }
    tx.commit().map_err(query_err("rebuild"))?;
    report.clients = clients.len();
    report.recovered_clients = clients.values().filter(|recovered| **recovered).count();
    Ok(report)
}

/// Every stored file under `files/<client-id>/`, hashed; temp files are ignored and files
/// whose wire name cannot be recovered are added to `report.skipped`.
fn scan(files: &Path, report: &mut RebuildReport) -> Result<Vec<Found>, CatalogError> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(files) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(rebuild_err(files)(e)),
    };
    let mut dirs: Vec<(String, ClientId)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| client_id_of_dir(&name).map(|id| (name, id)))
        .collect();
    dirs.sort();
    for (dir_name, client) in dirs {
        let dir = files.join(&dir_name);
        let mut names: Vec<String> = Vec::new();
        for entry in fs::read_dir(&dir).map_err(rebuild_err(&dir))? {
            let entry = entry.map_err(rebuild_err(&dir))?;
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            match entry.file_name().into_string() {
                Ok(name) if name.starts_with(PARTIAL_PREFIX) => {}
                Ok(name) => names.push(name),
                Err(_) => report
                    .skipped
                    .push((entry.path(), "not a name this server writes".into())),
            }
        }
        names.sort();
        for on_disk in names {
            let (base, kept_version) = match split_versioned_path(&on_disk) {
                Some((base, version)) => (base, Some(version)),
                None => (on_disk.as_str(), None),
            };
            let path = dir.join(&on_disk);
            let Some(name) = unmap_file_name(base) else {
                report.skipped.push((
                    path,
                    "its name was shortened on disk (over 240 bytes mapped), the original name cannot be recovered".into(),
                ));
                continue;
            };
            let (size, cksum, sha256) = hash_file(&path).map_err(rebuild_err(&path))?;
            found.push(Found {
                client,
                name,
                path_name: format!("{dir_name}/{on_disk}"),
                kept_version,
                size,
                cksum,
                sha256,
            });
        }
    }
    Ok(found)
}

/// Length, POSIX cksum and SHA-256 of a file, read in 64 KiB pieces.
fn hash_file(path: &Path) -> io::Result<(u64, u32, [u8; 32])> {
    let mut file = File::open(path)?;
    let mut sha = Sha256::new();
    let mut cksum = Cksum::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        let Some(piece) = buf.get(..n).filter(|p| !p.is_empty()) else {
            break;
        };
        sha.update(piece);
        cksum.update(piece);
    }
    Ok((cksum.len(), cksum.finalize(), sha.finalize().into()))
}
