//! All SQL of the catalog. Functions here are synchronous and run either on the writer thread
//! (mutations) or on a read-pool connection (queries); `now` is the caller's RFC 3339 timestamp.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use super::error::{CatalogError, query_err};
use super::model::{
    AbandonedTransfer, CatalogStats, ClientId, ClientRecord, CommitResult, CommittingFile,
    DEFAULT_PAGE, FileFilter, FileRecord, FileRowId, FileState, KeptVersion, KeyOutcome,
    ReceivedFile, RegisterOutcome, SupersededFile,
};
use super::timestamp::format_rfc3339;
use crate::storage::versioned_path;

/// Inserts a client unless its name (or id) is taken.
pub(crate) fn register_client(
    conn: &Connection,
    id: &ClientId,
    name: &[u8],
    protocol: u8,
    now: &str,
) -> Result<RegisterOutcome, CatalogError> {
    const OP: &str = "register_client";
    let name_taken = conn
        .query_row("SELECT 1 FROM clients WHERE Name = ?1", [name], |_| Ok(()))
        .optional()
        .map_err(query_err(OP))?
        .is_some();
    if name_taken {
        return Ok(RegisterOutcome::NameTaken);
    }
    let id_taken = conn
        .query_row("SELECT 1 FROM clients WHERE ID = ?1", [id], |_| Ok(()))
        .optional()
        .map_err(query_err(OP))?
        .is_some();
    if id_taken {
        return Ok(RegisterOutcome::IdTaken);
    }
    conn.execute(
        "INSERT INTO clients (ID, Name, PublicKey, LastSeen, AESKey, Protocol, RegisteredAt)
         VALUES (?1, ?2, NULL, ?3, NULL, ?4, ?3)",
        params![id, name, now, protocol],
    )
    .map_err(query_err(OP))?;
    Ok(RegisterOutcome::Registered)
}

/// Like [`register_client`], but a taken name whose client never stored a public key (and so
/// has no files) is given to the new registration: the old row is deleted and the new one
/// inserted in one transaction.
pub(crate) fn register_or_replace_keyless(
    conn: &mut Connection,
    id: &ClientId,
    name: &[u8],
    protocol: u8,
    now: &str,
) -> Result<RegisterOutcome, CatalogError> {
    const OP: &str = "register_or_replace_keyless";
    let tx = immediate(conn).map_err(query_err(OP))?;
    let keyless: Option<ClientId> = tx
        .query_row(
            "SELECT c.ID FROM clients c
             WHERE c.Name = ?1 AND c.PublicKey IS NULL
               AND NOT EXISTS (SELECT 1 FROM files f WHERE f.ID = c.ID)",
            [name],
            |r| r.get(0),
        )
        .optional()
        .map_err(query_err(OP))?;
    if let Some(previous) = keyless {
        tx.execute("DELETE FROM clients WHERE ID = ?1", [previous])
            .map_err(query_err(OP))?;
    }
    let outcome = register_client(&tx, id, name, protocol, now)?;
    if outcome != RegisterOutcome::Registered {
        // Leave the keyless client in place: the id collided, nothing is replaced.
        return Ok(outcome);
    }
    tx.commit().map_err(query_err(OP))?;
    Ok(match keyless {
        Some(previous) => RegisterOutcome::Replaced { previous },
        None => RegisterOutcome::Registered,
    })
}

/// Stores the client's first public key. A client that already has a key keeps it unless
/// the offered key is byte-identical (a harmless repeat).
pub(crate) fn store_first_public_key(
    conn: &Connection,
    id: &ClientId,
    der: &[u8],
    now: &str,
) -> Result<KeyOutcome, CatalogError> {
    const OP: &str = "store_first_public_key";
    let n = conn
        .execute(
            "UPDATE clients SET PublicKey = ?2, LastSeen = ?3
             WHERE ID = ?1 AND (PublicKey IS NULL OR PublicKey = ?2)",
            params![id, der, now],
        )
        .map_err(query_err(OP))?;
    if n == 1 {
        return Ok(KeyOutcome::Stored);
    }
    let exists = conn
        .query_row("SELECT 1 FROM clients WHERE ID = ?1", [id], |_| Ok(()))
        .optional()
        .map_err(query_err(OP))?
        .is_some();
    Ok(if exists {
        KeyOutcome::KeyAlreadySet
    } else {
        KeyOutcome::UnknownClient
    })
}

/// Looks a client up by id.
pub(crate) fn client_by_id(
    conn: &Connection,
    id: &ClientId,
) -> Result<Option<ClientRecord>, CatalogError> {
    conn.query_row(
        &format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE ID = ?1"),
        [id],
        client_from_row,
    )
    .optional()
    .map_err(query_err("client_by_id"))
}

/// All clients ordered by name.
pub(crate) fn list_clients(conn: &Connection) -> Result<Vec<ClientRecord>, CatalogError> {
    const OP: &str = "list_clients";
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {CLIENT_COLUMNS} FROM clients ORDER BY Name"
        ))
        .map_err(query_err(OP))?;
    let rows = stmt
        .query_map([], client_from_row)
        .map_err(query_err(OP))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(query_err(OP))?;
    Ok(rows)
}

/// Stores the client's DER public key; `false` when the client does not exist.
pub(crate) fn set_public_key(
    conn: &Connection,
    id: &ClientId,
    der: &[u8],
    now: &str,
) -> Result<bool, CatalogError> {
    let n = conn
        .execute(
            "UPDATE clients SET PublicKey = ?2, LastSeen = ?3 WHERE ID = ?1",
            params![id, der, now],
        )
        .map_err(query_err("set_public_key"))?;
    Ok(n == 1)
}

/// Updates `LastSeen`; `false` when the client does not exist.
pub(crate) fn touch_client(
    conn: &Connection,
    id: &ClientId,
    now: &str,
) -> Result<bool, CatalogError> {
    let n = conn
        .execute(
            "UPDATE clients SET LastSeen = ?2 WHERE ID = ?1",
            params![id, now],
        )
        .map_err(query_err("touch_client"))?;
    Ok(n == 1)
}

/// Inserts a `receiving` row with version = highest existing version of this name + 1.
pub(crate) fn begin_file(
    conn: &mut Connection,
    client: &ClientId,
    name: &[u8],
    path_name: &str,
    temp_path: Option<&str>,
    now: &str,
) -> Result<(FileRowId, u32), CatalogError> {
    const OP: &str = "begin_file";
    let tx = immediate(conn).map_err(query_err(OP))?;
    let version: u32 = tx
        .query_row(
            "SELECT COALESCE(MAX(Version), 0) + 1 FROM files WHERE ID = ?1 AND FileName = ?2",
            params![client, name],
            |r| r.get(0),
        )
        .map_err(query_err(OP))?;
    tx.execute(
        "INSERT INTO files (ID, FileName, PathName, Verified, Version, State, CreatedAt, UpdatedAt, TempPath)
         VALUES (?1, ?2, ?3, 0, ?4, 'receiving', ?5, ?5, ?6)",
        params![client, name, path_name, version, now, temp_path],
    )
    .map_err(query_err(OP))?;
    let row = FileRowId(tx.last_insert_rowid());
    tx.commit().map_err(query_err(OP))?;
    Ok((row, version))
}

/// Records content facts and moves a `receiving` row to `received`.
pub(crate) fn mark_received(
    conn: &Connection,
    row: FileRowId,
    facts: &ReceivedFile,
    now: &str,
) -> Result<(), CatalogError> {
    const OP: &str = "mark_received";
    let size = to_i64("Size", facts.size)?;
    let ciphertext_size = to_i64("CiphertextSize", facts.ciphertext_size)?;
    let n = conn
        .execute(
            "UPDATE files SET State = 'received', Size = ?2, CiphertextSize = ?3, Cksum = ?4,
                 Sha256 = ?5, UpdatedAt = ?6
             WHERE RowId = ?1 AND State = 'receiving'",
            params![row.0, size, ciphertext_size, facts.cksum, facts.sha256, now],
        )
        .map_err(query_err(OP))?;
    if n == 1 {
        return Ok(());
    }
    Err(state_error(conn, row, "receiving", OP))
}

/// Records the intent to commit: `received` → `committing`, with the retention to apply.
pub(crate) fn begin_commit(
    conn: &Connection,
    row: FileRowId,
    keep_versions: u32,
    now: &str,
) -> Result<(), CatalogError> {
    const OP: &str = "begin_commit";
    let n = conn
        .execute(
            "UPDATE files SET State = 'committing', CommitKeep = ?2, UpdatedAt = ?3
             WHERE RowId = ?1 AND State = 'received'",
            params![row.0, keep_versions, now],
        )
        .map_err(query_err(OP))?;
    if n == 1 {
        return Ok(());
    }
    Err(state_error(conn, row, "received", OP))
}

/// Rows in state `committing` last updated before `cutoff` (every one for `None`).
pub(crate) fn committing_files(
    conn: &Connection,
    cutoff: Option<&str>,
) -> Result<Vec<CommittingFile>, CatalogError> {
    const OP: &str = "committing_files";
    let mut stmt = conn
        .prepare(
            "SELECT RowId, ID, FileName, PathName, TempPath, Sha256, COALESCE(CommitKeep, 1)
             FROM files
             WHERE State = 'committing' AND (?1 IS NULL OR UpdatedAt < ?1)
             ORDER BY RowId",
        )
        .map_err(query_err(OP))?;
    let rows = stmt
        .query_map([cutoff], |r| {
            Ok(CommittingFile {
                row: FileRowId(r.get(0)?),
                client_id: r.get(1)?,
                file_name: r.get(2)?,
                path_name: r.get(3)?,
                temp_path: r.get(4)?,
                sha256: r.get(5)?,
                keep_versions: r.get::<_, u32>(6)?.max(1),
            })
        })
        .map_err(query_err(OP))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(query_err(OP))?;
    Ok(rows)
}

/// Marks a `received` (or `committing`) row verified and applies the retention of
/// `keep_versions` (≥ 1).
pub(crate) fn commit_file(
    conn: &mut Connection,
    row: FileRowId,
    keep_versions: u32,
    now: &str,
) -> Result<CommitResult, CatalogError> {
    const OP: &str = "commit_file";
    let tx = immediate(conn).map_err(query_err(OP))?;
    let found = tx
        .query_row(
            "SELECT ID, FileName, PathName, Version, State FROM files WHERE RowId = ?1",
            [row.0],
            |r| {
                Ok((
                    r.get::<_, ClientId>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, String>(4)?,
                ))
            },
        )
        .optional()
        .map_err(query_err(OP))?;
    let Some((client, name, path_name, version, state)) = found else {
        return Err(CatalogError::NoSuchFile { row: row.0 });
    };
    if state != FileState::Received.as_str() && state != FileState::Committing.as_str() {
        return Err(CatalogError::InvalidState {
            row: row.0,
            expected: "received or committing",
            found: state,
        });
    }
    tx.execute(
        "UPDATE files SET State = 'verified', Verified = 1, VerifiedAt = ?2, UpdatedAt = ?2,
             TempPath = NULL, CommitKeep = NULL
         WHERE RowId = ?1",
        params![row.0, now],
    )
    .map_err(query_err(OP))?;

    let others = {
        let mut stmt = tx
            .prepare(
                "SELECT RowId, Version, PathName FROM files
                 WHERE ID = ?1 AND FileName = ?2 AND State = 'verified' AND RowId <> ?3
                 ORDER BY Version DESC",
            )
            .map_err(query_err(OP))?;
        stmt.query_map(params![client, name, row.0], |r| {
            Ok((
                FileRowId(r.get(0)?),
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(query_err(OP))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(query_err(OP))?
    };
    let retained = usize::try_from(keep_versions.saturating_sub(1)).unwrap_or(usize::MAX);
    let mut previous = None;
    let mut superseded = Vec::new();
    for (index, (other_row, other_version, other_path)) in others.into_iter().enumerate() {
        let at_current_path = other_path == path_name;
        if index < retained {
            if at_current_path {
                let kept_path = versioned_path(&path_name, other_version);
                tx.execute(
                    "UPDATE files SET PathName = ?2, UpdatedAt = ?3 WHERE RowId = ?1",
                    params![other_row.0, kept_path, now],
                )
                .map_err(query_err(OP))?;
                previous = Some(KeptVersion {
                    row: other_row,
                    version: other_version,
                    path_name: kept_path,
                });
            }
            continue;
        }
        tx.execute("DELETE FROM files WHERE RowId = ?1", [other_row.0])
            .map_err(query_err(OP))?;
        // The file at the current path was replaced by the rename: nothing to delete.
        if !at_current_path {
            superseded.push(SupersededFile {
                row: other_row,
                path_name: other_path,
            });
        }
    }
    tx.commit().map_err(query_err(OP))?;
    Ok(CommitResult {
        path_name,
        version,
        previous,
        superseded,
    })
}

/// The verified row currently stored at the file's base path: `(row, version)`.
pub(crate) fn current_version(
    conn: &Connection,
    client: &ClientId,
    name: &[u8],
) -> Result<Option<(FileRowId, u32)>, CatalogError> {
    conn.query_row(
        "SELECT f.RowId, f.Version FROM files f
         WHERE f.ID = ?1 AND f.FileName = ?2 AND f.State = 'verified'
           AND f.PathName = (SELECT PathName FROM files WHERE ID = ?1 AND FileName = ?2
                             ORDER BY Version DESC LIMIT 1)
         ORDER BY f.Version DESC LIMIT 1",
        params![client, name],
        |r| Ok((FileRowId(r.get(0)?), r.get(1)?)),
    )
    .optional()
    .map_err(query_err("current_version"))
}

/// Marks an unfinished (`receiving`/`received`/`committing`) row discarded; `false` if it was
/// not unfinished.
pub(crate) fn discard_file(
    conn: &Connection,
    row: FileRowId,
    now: &str,
) -> Result<bool, CatalogError> {
    let n = conn
        .execute(
            "UPDATE files SET State = 'discarded', Verified = 0, TempPath = NULL, UpdatedAt = ?2
             WHERE RowId = ?1 AND State IN ('receiving', 'received', 'committing')",
            params![row.0, now],
        )
        .map_err(query_err("discard_file"))?;
    Ok(n == 1)
}

/// Unfinished rows whose `UpdatedAt` is before `cutoff`.
pub(crate) fn abandoned_transfers(
    conn: &Connection,
    cutoff: &str,
) -> Result<Vec<AbandonedTransfer>, CatalogError> {
    const OP: &str = "abandoned_transfers";
    let mut stmt = conn
        .prepare(
            "SELECT RowId, TempPath FROM files
             WHERE State IN ('receiving', 'received') AND UpdatedAt < ?1
             ORDER BY RowId",
        )
        .map_err(query_err(OP))?;
    let rows = stmt
        .query_map([cutoff], |r| {
            Ok(AbandonedTransfer {
                row: FileRowId(r.get(0)?),
                temp_path: r.get(1)?,
            })
        })
        .map_err(query_err(OP))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(query_err(OP))?;
    Ok(rows)
}

/// One page of files matching `filter`, ordered by row id.
pub(crate) fn list_files(
    conn: &Connection,
    filter: &FileFilter,
) -> Result<Vec<FileRecord>, CatalogError> {
    const OP: &str = "list_files";
    let mut sql = String::from(
        "SELECT f.RowId, f.ID, c.Name, f.FileName, f.PathName, f.Version, f.State, f.Verified,
                f.Size, f.CiphertextSize, f.Cksum, f.Sha256, f.CreatedAt, f.UpdatedAt, f.VerifiedAt
         FROM files f JOIN clients c ON c.ID = f.ID WHERE 1 = 1",
    );
    let mut args: Vec<Value> = Vec::new();
    let mut push = |sql: &mut String, clause: &str, value: Value| {
        args.push(value);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(client) = &filter.client_name {
        // A subquery keeps the plan on files_by_client instead of scanning clients.
        push(
            &mut sql,
            " AND f.ID = (SELECT ID FROM clients WHERE Name = ?)",
            Value::Blob(client.clone()),
        );
    }
    if let Some(part) = &filter.name_contains {
        push(
            &mut sql,
            " AND instr(f.FileName, ?) > 0",
            Value::Blob(part.clone()),
        );
    }
    if let Some(verified) = filter.verified {
        push(
            &mut sql,
            " AND f.Verified = ?",
            Value::Integer(i64::from(verified)),
        );
    }
    if let Some(since) = filter.since {
        push(
            &mut sql,
            " AND f.CreatedAt >= ?",
            Value::Text(format_rfc3339(since)),
        );
    }
    if let Some(until) = filter.until {
        push(
            &mut sql,
            " AND f.CreatedAt < ?",
            Value::Text(format_rfc3339(until)),
        );
    }
    if !filter.include_discarded {
        sql.push_str(" AND f.State <> 'discarded'");
    }
    if let Some(after) = filter.after_row {
        push(&mut sql, " AND f.RowId > ?", Value::Integer(after.0));
    }
    let limit = if filter.limit == 0 {
        DEFAULT_PAGE
    } else {
        filter.limit
    };
    push(
        &mut sql,
        " ORDER BY f.RowId LIMIT ?",
        Value::Integer(i64::from(limit)),
    );

    let mut stmt = conn.prepare(&sql).map_err(query_err(OP))?;
    let rows = stmt
        .query_map(params_from_iter(args), file_from_row)
        .map_err(query_err(OP))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(query_err(OP))?;
    Ok(rows)
}

/// Runs `PRAGMA integrity_check`; `true` when SQLite answers `ok`.
pub(crate) fn integrity_check(conn: &Connection) -> Result<bool, CatalogError> {
    let answer: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(query_err("integrity_check"))?;
    Ok(answer == "ok")
}

/// Counts clients, verified files and their bytes.
pub(crate) fn stats(conn: &Connection) -> Result<CatalogStats, CatalogError> {
    const OP: &str = "stats";
    let clients: i64 = conn
        .query_row("SELECT COUNT(*) FROM clients", [], |r| r.get(0))
        .map_err(query_err(OP))?;
    let (files, bytes): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(Size), 0) FROM files WHERE State = 'verified'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(query_err(OP))?;
    Ok(CatalogStats {
        clients: to_u64("clients", clients)?,
        files: to_u64("files", files)?,
        bytes_stored: to_u64("bytes_stored", bytes)?,
    })
}

/// Checkpoints the WAL into the main database file and truncates it.
pub(crate) fn checkpoint(conn: &Connection) -> Result<(), CatalogError> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(query_err("checkpoint"))
}

const CLIENT_COLUMNS: &str = "ID, Name, PublicKey, LastSeen, Protocol, RegisteredAt";

fn client_from_row(r: &Row<'_>) -> rusqlite::Result<ClientRecord> {
    Ok(ClientRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        public_key: r.get(2)?,
        last_seen: r.get(3)?,
        protocol: r.get(4)?,
        registered_at: r.get(5)?,
    })
}

fn file_from_row(r: &Row<'_>) -> rusqlite::Result<FileRecord> {
    let state: String = r.get(6)?;
    let Some(state) = FileState::parse(&state) else {
        return Err(rusqlite::Error::FromSqlConversionFailure(
            6,
            rusqlite::types::Type::Text,
            format!("unknown file state {state:?}").into(),
        ));
    };
    Ok(FileRecord {
        row: FileRowId(r.get(0)?),
        client_id: r.get(1)?,
        client_name: r.get(2)?,
        file_name: r.get(3)?,
        path_name: r.get(4)?,
        version: r.get(5)?,
        state,
        verified: r.get(7)?,
        size: opt_u64(r, 8)?,
        ciphertext_size: opt_u64(r, 9)?,
        cksum: r.get(10)?,
        sha256: r.get(11)?,
        created_at: r.get(12)?,
        updated_at: r.get(13)?,
        verified_at: r.get(14)?,
    })
}

fn opt_u64(r: &Row<'_>, idx: usize) -> rusqlite::Result<Option<u64>> {
    let Some(v) = r.get::<_, Option<i64>>(idx)? else {
        return Ok(None);
    };
    u64::try_from(v)
        .map(Some)
        .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

fn to_i64(field: &'static str, v: u64) -> Result<i64, CatalogError> {
    i64::try_from(v).map_err(|_| CatalogError::OutOfRange {
        field,
        value: v.to_string(),
    })
}

fn to_u64(field: &'static str, v: i64) -> Result<u64, CatalogError> {
    u64::try_from(v).map_err(|_| CatalogError::OutOfRange {
        field,
        value: v.to_string(),
    })
}

fn state_error(
    conn: &Connection,
    row: FileRowId,
    expected: &'static str,
    op: &'static str,
) -> CatalogError {
    let found = conn
        .query_row("SELECT State FROM files WHERE RowId = ?1", [row.0], |r| {
            r.get::<_, String>(0)
        })
        .optional();
    match found {
        Ok(Some(found)) => CatalogError::InvalidState {
            row: row.0,
            expected,
            found,
        },
        Ok(None) => CatalogError::NoSuchFile { row: row.0 },
        Err(source) => CatalogError::Query { op, source },
    }
}

/// Starts a write transaction that takes the write lock at once (`BEGIN IMMEDIATE`). A
/// deferred transaction that reads first and then writes fails with `SQLITE_BUSY_SNAPSHOT`,
/// without waiting, when another connection (an admin command, a checkpoint) committed in
/// between; an immediate one waits on the busy timeout instead.
fn immediate(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}
