//! Schema migrations, recorded in a `schema_version` table, and connection settings.
//!
//! Column names follow the legacy `defensive.db` of the v3 assignment (spec section 10): `clients(ID,
//! Name, PublicKey, LastSeen, AESKey)` and `files(ID, FileName, PathName, Verified)`, extended with
//! versioning and transfer bookkeeping. `clients.AESKey` exists for compatibility only and is
//! always NULL (enforced by a CHECK): session keys are never persisted.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction};

use super::error::CatalogError;

/// How long a connection waits on a lock before failing with `SQLITE_BUSY`.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One schema change: a short name (`--check` lists pending ones) and its SQL.
struct Migration {
    name: &'static str,
    sql: &'static str,
}

/// Migrations in order; migration `i` brings the schema to version `i + 1`. Never edit a
/// released migration: append a new one.
const MIGRATIONS: &[Migration] = &[
    // 1: initial schema.
    Migration {
        name: "initial schema",
        sql: r"
    CREATE TABLE clients (
        ID           BLOB PRIMARY KEY CHECK (length(ID) = 16),
        Name         BLOB NOT NULL UNIQUE,
        PublicKey    BLOB,
        LastSeen     TEXT,
        AESKey       BLOB CHECK (AESKey IS NULL),
        Protocol     INTEGER,
        RegisteredAt TEXT NOT NULL
    );
    CREATE TABLE files (
        RowId          INTEGER PRIMARY KEY,
        ID             BLOB NOT NULL REFERENCES clients(ID),
        FileName       BLOB NOT NULL,
        PathName       TEXT NOT NULL,
        Verified       INTEGER NOT NULL DEFAULT 0 CHECK (Verified IN (0, 1)),
        Version        INTEGER NOT NULL,
        State          TEXT NOT NULL
                       CHECK (State IN ('receiving', 'received', 'verified', 'discarded')),
        Size           INTEGER,
        CiphertextSize INTEGER,
        Cksum          INTEGER,
        Sha256         BLOB,
        CreatedAt      TEXT NOT NULL,
        UpdatedAt      TEXT NOT NULL,
        VerifiedAt     TEXT,
        TempPath       TEXT
    );
    -- a client's files, one name's versions, max(Version) on begin
    CREATE INDEX files_by_client_name ON files(ID, FileName, Version);
    -- admin listing by client, keyset on the implicit trailing RowId
    CREATE INDEX files_by_client ON files(ID);
    -- admin listing filtered by verified, keyset on RowId
    CREATE INDEX files_by_verified ON files(Verified);
    -- admin listing by date range
    CREATE INDEX files_by_created ON files(CreatedAt);
    -- abandoned transfers: only the few unfinished rows are indexed
    CREATE INDEX files_unfinished_by_updated ON files(UpdatedAt)
        WHERE State IN ('receiving', 'received');
    ",
    },
    // 2: crash-safe commit. State `committing` records the intent to rename a received file
    // into place (with its SHA-256 already in the row) before the rename; `CommitKeep` is the
    // retention the commit runs with, so a reconciliation after a crash can finish it alone.
    // SQLite cannot alter a CHECK constraint, so the table is rebuilt.
    Migration {
        name: "crash-safe commit",
        sql: r"
    CREATE TABLE files_v2 (
        RowId          INTEGER PRIMARY KEY,
        ID             BLOB NOT NULL REFERENCES clients(ID),
        FileName       BLOB NOT NULL,
        PathName       TEXT NOT NULL,
        Verified       INTEGER NOT NULL DEFAULT 0 CHECK (Verified IN (0, 1)),
        Version        INTEGER NOT NULL,
        State          TEXT NOT NULL
                       CHECK (State IN ('receiving', 'received', 'committing', 'verified',
                                        'discarded')),
        Size           INTEGER,
        CiphertextSize INTEGER,
        Cksum          INTEGER,
        Sha256         BLOB,
        CreatedAt      TEXT NOT NULL,
        UpdatedAt      TEXT NOT NULL,
        VerifiedAt     TEXT,
        TempPath       TEXT,
        CommitKeep     INTEGER
    );
    INSERT INTO files_v2 (RowId, ID, FileName, PathName, Verified, Version, State, Size,
                          CiphertextSize, Cksum, Sha256, CreatedAt, UpdatedAt, VerifiedAt,
                          TempPath)
        SELECT RowId, ID, FileName, PathName, Verified, Version, State, Size, CiphertextSize,
               Cksum, Sha256, CreatedAt, UpdatedAt, VerifiedAt, TempPath
        FROM files;
    DROP TABLE files;
    ALTER TABLE files_v2 RENAME TO files;
    CREATE INDEX files_by_client_name ON files(ID, FileName, Version);
    CREATE INDEX files_by_client ON files(ID);
    CREATE INDEX files_by_verified ON files(Verified);
    CREATE INDEX files_by_created ON files(CreatedAt);
    CREATE INDEX files_unfinished_by_updated ON files(UpdatedAt)
        WHERE State IN ('receiving', 'received');
    CREATE INDEX files_committing_by_updated ON files(UpdatedAt) WHERE State = 'committing';
    ",
    },
    // 3: protocol v4 (docs/protocol-v4.md). A v4 client's PublicKey is its 32-byte X25519
    // static key, unique among v4 clients. Enrollment tokens are stored as SHA-256 only.
    // A resumable upload is a `files` row in `receiving` (TempPath = its partial file) plus
    // its size and durable offset here; no foreign key, so a later rebuild of `files` stays
    // possible.
    Migration {
        name: "protocol v4",
        sql: r"
    CREATE UNIQUE INDEX clients_v4_public_key ON clients(PublicKey) WHERE Protocol = 4;
    CREATE TABLE enrollment_tokens (
        TokenHash BLOB PRIMARY KEY CHECK (length(TokenHash) = 32),
        CreatedAt TEXT NOT NULL,
        ExpiresAt TEXT NOT NULL,
        UsedAt    TEXT,
        UsedBy    BLOB
    );
    CREATE TABLE v4_uploads (
        RowId         INTEGER PRIMARY KEY,
        Size          INTEGER NOT NULL,
        DurableOffset INTEGER NOT NULL DEFAULT 0
    );
    ",
    },
    // 4: substring search on file names (`FileFilter::name_contains`, docs/admin-api.md).
    // A contentless FTS5 table with the trigram tokenizer (case sensitive, like `instr`)
    // indexes each name's bytes read as UTF-8 text: `CAST(FileName AS TEXT)` converts
    // nothing, and the tokenizer decodes invalid sequences into stand-in code points the same
    // way for names and queries. `queries::list_files` uses it for substrings of three or more
    // characters and confirms every candidate with `instr` on the stored bytes. Its rowid is
    // `files.RowId`; the triggers keep it in step with every insert, delete and rename. A
    // later rebuild of `files` (as in migration 2) must recreate the triggers and refill it.
    Migration {
        name: "file-name search index",
        sql: r"
    CREATE VIRTUAL TABLE files_name_trigram USING fts5(
        Name, content = '', tokenize = 'trigram case_sensitive 1'
    );
    INSERT INTO files_name_trigram (rowid, Name)
        SELECT RowId, CAST(FileName AS TEXT) FROM files;
    CREATE TRIGGER files_name_trigram_insert AFTER INSERT ON files BEGIN
        INSERT INTO files_name_trigram (rowid, Name)
            VALUES (new.RowId, CAST(new.FileName AS TEXT));
    END;
    CREATE TRIGGER files_name_trigram_delete AFTER DELETE ON files BEGIN
        INSERT INTO files_name_trigram (files_name_trigram, rowid, Name)
            VALUES ('delete', old.RowId, CAST(old.FileName AS TEXT));
    END;
    CREATE TRIGGER files_name_trigram_update AFTER UPDATE OF RowId, FileName ON files BEGIN
        INSERT INTO files_name_trigram (files_name_trigram, rowid, Name)
            VALUES ('delete', old.RowId, CAST(old.FileName AS TEXT));
        INSERT INTO files_name_trigram (rowid, Name)
            VALUES (new.RowId, CAST(new.FileName AS TEXT));
    END;
    ",
    },
    // 5: the keyless snapshot repository store (`crate::repository`, docs/repository.md,
    // "Server-side store"). One repository per client; every table is keyed by the client id
    // first, so every query is one client's. `repo_blobs` is the blob index (blob ID -> pack,
    // offset, length, class 1 sealed / 2 reference chunk); `Verified` = 1 on a reference
    // chunk whose bytes were checked against its ID and whose every listed blob was indexed
    // by a commit. Plain SQL (no WITHOUT ROWID, no INSERT OR IGNORE) so the same statements
    // run on PostgreSQL later; `StoredAt` columns are Unix seconds.
    Migration {
        name: "snapshot repository store",
        sql: r"
    CREATE TABLE repositories (
        ClientId  BLOB PRIMARY KEY CHECK (length(ClientId) = 16),
        Config    BLOB NOT NULL,
        CreatedAt TEXT NOT NULL
    );
    CREATE TABLE repo_keys (
        ClientId  BLOB NOT NULL REFERENCES repositories(ClientId),
        Seq       INTEGER NOT NULL,
        KeyObject BLOB NOT NULL,
        AddedAt   TEXT NOT NULL,
        PRIMARY KEY (ClientId, Seq)
    );
    CREATE TABLE repo_packs (
        ClientId BLOB NOT NULL REFERENCES repositories(ClientId),
        PackId   BLOB NOT NULL CHECK (length(PackId) = 32),
        Size     INTEGER NOT NULL,
        StoredAt INTEGER NOT NULL,
        PRIMARY KEY (ClientId, PackId)
    );
    CREATE TABLE repo_blobs (
        ClientId   BLOB NOT NULL REFERENCES repositories(ClientId),
        BlobId     BLOB NOT NULL CHECK (length(BlobId) = 32),
        PackId     BLOB NOT NULL,
        BlobOffset INTEGER NOT NULL,
        BlobLen    INTEGER NOT NULL,
        Class      INTEGER NOT NULL CHECK (Class IN (1, 2)),
        Verified   INTEGER NOT NULL DEFAULT 0 CHECK (Verified IN (0, 1)),
        PRIMARY KEY (ClientId, BlobId)
    );
    CREATE INDEX repo_blobs_by_pack ON repo_blobs(ClientId, PackId);
    CREATE TABLE repo_snapshots (
        ClientId   BLOB NOT NULL REFERENCES repositories(ClientId),
        SnapshotId BLOB NOT NULL CHECK (length(SnapshotId) = 32),
        Size       INTEGER NOT NULL,
        TimeSecs   INTEGER NOT NULL,
        TimeNanos  INTEGER NOT NULL,
        StoredAt   INTEGER NOT NULL,
        PRIMARY KEY (ClientId, SnapshotId)
    );
    CREATE TABLE repo_snapshot_refs (
        ClientId   BLOB NOT NULL,
        SnapshotId BLOB NOT NULL,
        Seq        INTEGER NOT NULL,
        RefChunkId BLOB NOT NULL,
        PRIMARY KEY (ClientId, SnapshotId, Seq)
    );
    ",
    },
    // 6: keyless prune (`crate::repository::prune`, docs/repository.md, "Prune").
    // `CondemnedAt` (Unix seconds) is set on a blob no snapshot referenced when a prune looked,
    // cleared when a commit or an upload claims it again; a blob condemned longer than the
    // grace period is deleted. `repo_pack_deletions` lists packs whose index rows are gone and
    // whose object is deleted after `DeleteAfter`, so a crash between the two never re-indexes
    // a dead pack and a read already in flight still finds its bytes.
    Migration {
        name: "keyless prune",
        sql: r"
    ALTER TABLE repo_blobs ADD COLUMN CondemnedAt INTEGER;
    CREATE INDEX repo_blobs_condemned ON repo_blobs(ClientId, CondemnedAt);
    CREATE TABLE repo_pack_deletions (
        ClientId    BLOB NOT NULL,
        PackId      BLOB NOT NULL CHECK (length(PackId) = 32),
        Size        INTEGER NOT NULL,
        DeleteAfter INTEGER NOT NULL,
        PRIMARY KEY (ClientId, PackId)
    );
    ",
    },
    // 7: devices (docs/operations.md, "Device roles"). Every v4 client key is a device of
    // its client (account); a client gains devices through enrollment tokens bound to it
    // (`ForClient`). `append-only` (the default, also for keys registered before this
    // migration) may back up and read but never forget a snapshot; `manage` may.
    Migration {
        name: "devices",
        sql: r"
    CREATE TABLE v4_devices (
        PublicKey BLOB PRIMARY KEY CHECK (length(PublicKey) = 32),
        ClientId  BLOB NOT NULL REFERENCES clients(ID),
        Role      TEXT NOT NULL DEFAULT 'append-only' CHECK (Role IN ('append-only', 'manage')),
        AddedAt   TEXT NOT NULL
    );
    CREATE INDEX v4_devices_by_client ON v4_devices(ClientId);
    INSERT INTO v4_devices (PublicKey, ClientId, AddedAt)
        SELECT PublicKey, ID, RegisteredAt FROM clients
        WHERE Protocol = 4 AND PublicKey IS NOT NULL;
    ALTER TABLE enrollment_tokens ADD COLUMN ForClient BLOB;
    ",
    },
    // 8: server-side retention (`crate::repository::retention`). `GroupKey` is the
    // envelope's group (a keyed hash of host and paths): the server groups snapshots by it
    // without learning either. NULL for snapshots recorded before this migration.
    Migration {
        name: "server-side retention",
        sql: r"
    ALTER TABLE repo_snapshots ADD COLUMN GroupKey BLOB;
    ",
    },
    // 9: scrub (`crate::scrub`). `ScrubbedAt` is when a scrub last read the object whole
    // (Unix milliseconds, NULL = never; a cycle reads the oldest first, so a restart goes
    // on where it stopped); `CorruptAt` (Unix seconds) and `CorruptReason` say that the
    // latest scrub found it damaged or missing, and are cleared when a later scrub finds it
    // whole again. Legacy flat files (`files`) carry the same three columns.
    Migration {
        name: "scrub",
        sql: r"
    ALTER TABLE repo_packs ADD COLUMN ScrubbedAt INTEGER;
    ALTER TABLE repo_packs ADD COLUMN CorruptAt INTEGER;
    ALTER TABLE repo_packs ADD COLUMN CorruptReason TEXT;
    CREATE INDEX repo_packs_by_scrubbed ON repo_packs(ScrubbedAt);
    CREATE INDEX repo_packs_corrupt ON repo_packs(ClientId) WHERE CorruptAt IS NOT NULL;
    ALTER TABLE files ADD COLUMN ScrubbedAt INTEGER;
    ALTER TABLE files ADD COLUMN CorruptAt INTEGER;
    ALTER TABLE files ADD COLUMN CorruptReason TEXT;
    CREATE INDEX files_verified_by_scrubbed ON files(ScrubbedAt) WHERE State = 'verified';
    CREATE INDEX files_corrupt ON files(ID) WHERE CorruptAt IS NOT NULL;
    ",
    },
    // 10: forget tombstones (`crate::repository::recovery`). A forget deletes the snapshot's
    // record and writes its tombstone in one transaction, then deletes the object, then the
    // tombstone. Start-up recovery deletes an unrecorded snapshot object only when it has a
    // tombstone (an interrupted forget); any other unrecorded object is checked like a commit
    // and recorded again (an interrupted commit, or a catalog restored from an older backup).
    Migration {
        name: "forget tombstones",
        sql: r"
    CREATE TABLE repo_forgotten (
        ClientId    BLOB NOT NULL CHECK (length(ClientId) = 16),
        SnapshotId  BLOB NOT NULL CHECK (length(SnapshotId) = 32),
        ForgottenAt INTEGER NOT NULL,
        PRIMARY KEY (ClientId, SnapshotId)
    );
    ",
    },
    // 11: the envelope's totals (`crate::http::accounts`, the dashboard's accounts). The
    // envelope's content size and blob count of each snapshot, which the server reads
    // without a key (docs/repository.md, "Snapshots"); NULL for snapshots recorded before
    // this migration. `repo_snapshots_by_stored` serves each account's latest backup.
    Migration {
        name: "snapshot envelope totals",
        sql: r"
    ALTER TABLE repo_snapshots ADD COLUMN TotalBytes INTEGER;
    ALTER TABLE repo_snapshots ADD COLUMN BlobCount INTEGER;
    CREATE INDEX repo_snapshots_by_stored ON repo_snapshots(ClientId, StoredAt);
    ",
    },
];

/// Newest schema version this build knows.
#[must_use]
pub fn latest_version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// Opens the writer connection, creating the file, and applies connection settings:
/// WAL journal, `synchronous=FULL` (a committed row survives power loss, and files are
/// acknowledged only after their row is committed), foreign keys, busy timeout.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, CatalogError> {
    let open_err = |source| CatalogError::Open {
        path: path.to_path_buf(),
        source,
    };
    create_private(path).map_err(|source| CatalogError::Private {
        path: path.to_path_buf(),
        source,
    })?;
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(open_err(rusqlite::Error::InvalidParameterName(format!(
            "journal_mode is {mode}, WAL is required (is the file on a network file system?)"
        ))));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    Ok(conn)
}

/// Creates the database file with mode 0600 when missing and takes group and other access
/// away from an existing one and its `-wal` / `-shm` (SQLite gives those the database's mode):
/// the catalog holds names, public keys, file names and hashes.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::metadata(&file) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                let private = meta.permissions().mode() & 0o7700;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(private))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Opens a read-only connection for the read pool and reads the schema once, so that the
/// connection holds every descriptor it will ever hold (SQLite opens the WAL of a connection
/// at its first read).
pub(crate) fn open_reader(path: &Path) -> Result<Connection, CatalogError> {
    let open_err = |source| CatalogError::Open {
        path: path.to_path_buf(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(open_err)?;
    Ok(conn)
}

/// Brings the schema to [`latest_version`]; a no-op when already there. Each migration runs in
/// its own transaction together with its `schema_version` update.
///
/// # Errors
/// [`CatalogError::SchemaTooNew`] for a database from a newer server, [`CatalogError::Migrate`]
/// when a migration fails.
pub(crate) fn migrate(conn: &mut Connection) -> Result<u32, CatalogError> {
    let migrate_err = |version| move |source| CatalogError::Migrate { version, source };
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(migrate_err(0))?;
    let current = current_version(conn).map_err(migrate_err(0))?;
    let latest = latest_version();
    if current > latest {
        return Err(CatalogError::SchemaTooNew {
            found: current,
            supported: latest,
        });
    }
    for (version, migration) in (1..=latest)
        .zip(MIGRATIONS)
        .skip_while(|(v, _)| *v <= current)
    {
        let tx = conn.transaction().map_err(migrate_err(version))?;
        apply(&tx, migration.sql, version).map_err(migrate_err(version))?;
        tx.commit().map_err(migrate_err(version))?;
    }
    Ok(latest)
}

/// The migrations a catalog at schema `version` still needs, as `(version, name)`: what
/// `run` would apply (`--check` lists them without applying any).
pub(crate) fn pending_migrations(version: u32) -> Vec<(u32, &'static str)> {
    (1..=latest_version())
        .zip(MIGRATIONS)
        .filter(|(v, _)| *v > version)
        .map(|(v, migration)| (v, migration.name))
        .collect()
}

/// Version recorded in `schema_version` (0 for a fresh database).
pub(crate) fn current_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |row| row.get(0),
    )
}

fn apply(tx: &Transaction<'_>, sql: &str, version: u32) -> rusqlite::Result<()> {
    tx.execute_batch(sql)?;
    tx.execute("DELETE FROM schema_version", [])?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES (?1)",
        [version],
    )?;
    Ok(())
}

/// A catalog at `path` migrated only up to `version` (an older server's), for tests of
/// what a newer server does with it.
#[cfg(test)]
pub(crate) fn create_at_version(path: &Path, version: u32) -> Connection {
    let mut conn = open_writer(path).unwrap();
    conn.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        .unwrap();
    for (number, migration) in (1..=version).zip(MIGRATIONS) {
        let tx = conn.transaction().unwrap();
        apply(&tx, migration.sql, number).unwrap();
        tx.commit().unwrap();
    }
    conn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_idempotent_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("defensive.db");

        let mut conn = open_writer(&path).unwrap();
        assert_eq!(current_version(&conn).unwrap_or(0), 0);
        assert_eq!(migrate(&mut conn).unwrap(), latest_version());
        drop(conn);

        let mut conn = open_writer(&path).unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), latest_version());
        assert_eq!(current_version(&conn).unwrap(), latest_version());
        let rows: u32 = conn
            .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
    }

    #[test]
    fn connection_settings_are_wal_and_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&dir.path().join("defensive.db")).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous=FULL is 2");
    }

    #[test]
    fn catalog_files_are_private_even_when_they_existed_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("fresh.db");
        let old = dir.path().join("old.db");
        drop(Connection::open(&old).unwrap());
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

        let mut conn = open_writer(&fresh).unwrap();
        migrate(&mut conn).unwrap();
        let old_conn = open_writer(&old).unwrap();

        assert_eq!(mode(&fresh), 0o600);
        assert_eq!(mode(&dir.path().join("fresh.db-wal")), 0o600);
        assert_eq!(mode(&dir.path().join("fresh.db-shm")), 0o600);
        assert_eq!(mode(&old), 0o600);
        drop((conn, old_conn));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("defensive.db");
        let mut conn = open_writer(&path).unwrap();
        migrate(&mut conn).unwrap();
        conn.execute("UPDATE schema_version SET version = 999", [])
            .unwrap();

        let err = migrate(&mut conn).unwrap_err();

        assert!(
            matches!(err, CatalogError::SchemaTooNew { found: 999, .. }),
            "{err}"
        );
    }

    #[test]
    fn aes_key_column_cannot_hold_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_writer(&dir.path().join("defensive.db")).unwrap();
        migrate(&mut conn).unwrap();

        let result = conn.execute(
            "INSERT INTO clients (ID, Name, AESKey, RegisteredAt) VALUES (?1, ?2, ?3, 'x')",
            rusqlite::params![[0u8; 16], b"n".as_slice(), [1u8; 32]],
        );

        assert!(result.is_err());
    }

    #[test]
    fn listing_queries_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_writer(&dir.path().join("defensive.db")).unwrap();
        migrate(&mut conn).unwrap();
        let plan = |sql: &str| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            rows.join("; ")
        };

        let by_client =
            plan("SELECT * FROM files WHERE ID = x'00' AND RowId > 5 ORDER BY RowId LIMIT 100");
        let abandoned = plan(
            "SELECT RowId FROM files WHERE State IN ('receiving','received') AND UpdatedAt < 'z'",
        );

        assert!(
            by_client.contains("USING INDEX files_by_client"),
            "{by_client}"
        );
        assert!(!by_client.contains("TEMP B-TREE"), "{by_client}");
        assert!(
            abandoned.contains("files_unfinished_by_updated"),
            "{abandoned}"
        );
        // The maintenance sweep's lookup of each kept-version file.
        let kept_version = plan(
            "SELECT EXISTS (SELECT 1 FROM files WHERE ID = x'00' AND FileName = x'61'
             AND Version = 1 AND (PathName = 'p.~1~' OR (PathName = 'p' AND State <> 'discarded')))",
        );
        assert!(
            kept_version.contains("files_by_client_name (ID=? AND FileName=? AND Version=?)"),
            "{kept_version}"
        );
    }

    #[test]
    fn v4_clients_registered_before_devices_existed_become_append_only_devices() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = create_at_version(&dir.path().join("defensive.db"), 6);
        conn.execute(
            "INSERT INTO clients (ID, Name, PublicKey, Protocol, RegisteredAt)
             VALUES (?1, 'alice', ?2, 4, '2026-01-01T00:00:00Z')",
            rusqlite::params![[0xA1u8; 16], [7u8; 32]],
        )
        .unwrap();

        migrate(&mut conn).unwrap();
        let device: (Vec<u8>, String) = conn
            .query_row(
                "SELECT ClientId, Role FROM v4_devices WHERE PublicKey = ?1",
                [[7u8; 32]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();

        assert_eq!(device, (vec![0xA1; 16], "append-only".to_owned()));
    }

    #[test]
    fn name_index_is_filled_from_rows_older_than_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = create_at_version(&dir.path().join("defensive.db"), 3);
        conn.execute_batch(
            "INSERT INTO clients (ID, Name, RegisteredAt) VALUES (x'01010101010101010101010101010101', 'a', 'x');
             INSERT INTO files (ID, FileName, PathName, Version, State, CreatedAt, UpdatedAt)
                 VALUES (x'01010101010101010101010101010101', CAST('old-report.txt' AS BLOB), 'p', 1,
                         'verified', 'x', 'x');",
        )
        .unwrap();

        migrate(&mut conn).unwrap();
        let found: Vec<i64> = conn
            .prepare(
                "SELECT rowid FROM files_name_trigram WHERE files_name_trigram MATCH '\"report\"'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();

        assert_eq!(found, [1]);
    }
}
