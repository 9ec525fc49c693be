//! All SQL of the catalog. Functions here are synchronous and run either on the writer thread
//! (mutations) or on a read-pool connection (queries); `now` is the caller's RFC 3339 timestamp.

use std::collections::{BTreeMap, BTreeSet};

use super::sql::{Conn, Engine, OptionalExtension, Row, SqlError, Tx, Value, params};

use super::error::{CatalogError, query_err};
use super::model::{
    AbandonedTransfer, CatalogStats, ClientId, ClientRecord, ClientTotals, CommitResult,
    CommittingFile, DEFAULT_PAGE, FileFilter, FileRecord, FileRowId, FileState, KeptVersion,
    KeyOutcome, ReceivedFile, RegisterOutcome, SupersededFile,
};
use super::repo::{
    AddKeyOutcome, BlobLocation, NewSnapshot, RemoveKeyOutcome, RepoRecord, SnapshotRecord,
};
use super::scrub::{CorruptKind, CorruptObject, Damage, FileToScrub, PackToScrub};
use super::timestamp::format_rfc3339;
use super::usage::{RepoUsageRecord, SnapshotSummary};
use crate::storage::{VersionFile, versioned_path};
use cyberbackup_core::repo::{BlobClass, BlobId, PackEntry, PackId, SnapshotId, Timestamp};

/// Inserts a client unless its name (or id) is taken.
pub(crate) fn register_client(
    conn: &Conn,
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
    conn: &mut Conn,
    id: &ClientId,
    name: &[u8],
    protocol: u8,
    now: &str,
) -> Result<RegisterOutcome, CatalogError> {
    const OP: &str = "register_or_replace_keyless";
    let tx = conn.immediate().map_err(query_err(OP))?;
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
    conn: &Conn,
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
    conn: &Conn,
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
pub(crate) fn list_clients(conn: &Conn) -> Result<Vec<ClientRecord>, CatalogError> {
    const OP: &str = "list_clients";
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {CLIENT_COLUMNS} FROM clients ORDER BY Name"
        ))
        .map_err(query_err(OP))?;
    let rows = stmt
        .query_map((), client_from_row)
        .map_err(query_err(OP))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(query_err(OP))?;
    Ok(rows)
}

/// Stores the client's DER public key; `false` when the client does not exist.
pub(crate) fn set_public_key(
    conn: &Conn,
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
pub(crate) fn touch_client(conn: &Conn, id: &ClientId, now: &str) -> Result<bool, CatalogError> {
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
    conn: &mut Conn,
    client: &ClientId,
    name: &[u8],
    path_name: &str,
    temp_path: Option<&str>,
    now: &str,
) -> Result<(FileRowId, u32), CatalogError> {
    const OP: &str = "begin_file";
    let tx = conn.immediate().map_err(query_err(OP))?;
    let begun =
        insert_receiving(&tx, client, name, path_name, temp_path, now).map_err(query_err(OP))?;
    tx.commit().map_err(query_err(OP))?;
    Ok(begun)
}

/// The insert of [`begin_file`], inside the caller's write transaction (the v4 upload adds
/// its resume record in the same one).
pub(crate) fn insert_receiving(
    tx: &Tx<'_>,
    client: &ClientId,
    name: &[u8],
    path_name: &str,
    temp_path: Option<&str>,
    now: &str,
) -> Result<(FileRowId, u32), SqlError> {
    let version: u32 = tx.query_row(
        "SELECT COALESCE(MAX(Version), 0) + 1 FROM files WHERE ID = ?1 AND FileName = ?2",
        params![client, name],
        |r| r.get(0),
    )?;
    let row = tx.query_row(
        "INSERT INTO files (ID, FileName, PathName, Verified, Version, State, CreatedAt, UpdatedAt, TempPath)
         VALUES (?1, ?2, ?3, 0, ?4, 'receiving', ?5, ?5, ?6)
         RETURNING RowId",
        params![client, name, path_name, version, now, temp_path],
        |r| r.get(0),
    )?;
    Ok((FileRowId(row), version))
}

/// Records content facts and moves a `receiving` row to `received`.
pub(crate) fn mark_received(
    conn: &Conn,
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
    conn: &Conn,
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
    conn: &Conn,
    cutoff: Option<&str>,
) -> Result<Vec<CommittingFile>, CatalogError> {
    const OP: &str = "committing_files";
    let mut stmt = conn
        .prepare(
            "SELECT RowId, ID, FileName, PathName, TempPath, Sha256, COALESCE(CommitKeep, 1)
             FROM files
             WHERE State = 'committing' AND (UpdatedAt < ?1 OR ?1 IS NULL)
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
    conn: &mut Conn,
    row: FileRowId,
    keep_versions: u32,
    now: &str,
) -> Result<CommitResult, CatalogError> {
    const OP: &str = "commit_file";
    let tx = conn.immediate().map_err(query_err(OP))?;
    let found = tx
        .query_row(
            "SELECT ID, FileName, PathName, Version, State FROM files WHERE RowId = ?1",
            [row.0],
            |r| {
                Ok((
                    r.get::<_, ClientId>(0)?,
                    r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
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
    forget_resume_record(&tx, row).map_err(query_err(OP))?;

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
    conn: &Conn,
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

/// Marks an unfinished (`receiving`/`received`/`committing`) row discarded and forgets its v4
/// resume record, if any (an abandoned upload cannot be resumed); `false` if it was not
/// unfinished.
pub(crate) fn discard_file(
    conn: &mut Conn,
    row: FileRowId,
    now: &str,
) -> Result<bool, CatalogError> {
    const OP: &str = "discard_file";
    let tx = conn.immediate().map_err(query_err(OP))?;
    let n = tx
        .execute(
            "UPDATE files SET State = 'discarded', Verified = 0, TempPath = NULL, UpdatedAt = ?2
             WHERE RowId = ?1 AND State IN ('receiving', 'received', 'committing')",
            params![row.0, now],
        )
        .map_err(query_err(OP))?;
    if n == 1 {
        forget_resume_record(&tx, row).map_err(query_err(OP))?;
    }
    tx.commit().map_err(query_err(OP))?;
    Ok(n == 1)
}

/// Deletes the v4 resume record (`v4_uploads`) of a row that left state `receiving` for
/// good (committed or discarded).
fn forget_resume_record(conn: &Conn, row: FileRowId) -> Result<usize, SqlError> {
    conn.execute("DELETE FROM v4_uploads WHERE RowId = ?1", [row.0])
}

/// Whether a catalog row refers to the kept-version file `file`: a row stored at its path,
/// or a row that is not discarded stored at its base path with its version (a version that
/// a commit is moving to `<base>.~<version>~`, or one whose move a crash interrupted).
///
/// The lookup by (client, name, version) uses the `files_by_client_name` index; only when it
/// finds nothing (an orphan, or a shortened or foreign name) does the lookup by path scan
/// the client's rows, so that a file is never called unreferenced because its name did not
/// decode to the row's `FileName`.
pub(crate) fn version_file_referenced(
    conn: &Conn,
    file: &VersionFile,
) -> Result<bool, CatalogError> {
    const OP: &str = "version_file_referenced";
    if let Some(name) = &file.file_name {
        let by_name = conn
            .prepare(
                "SELECT EXISTS (SELECT 1 FROM files
                 WHERE ID = ?1 AND FileName = ?2 AND Version = ?3
                   AND (PathName = ?4 OR (PathName = ?5 AND State <> 'discarded')))",
            )
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![
                        file.client,
                        name,
                        file.version,
                        file.path_name,
                        file.base_path_name
                    ],
                    |r| r.get::<_, bool>(0),
                )
            })
            .map_err(query_err(OP))?;
        if by_name {
            return Ok(true);
        }
    }
    conn.prepare(
        "SELECT EXISTS (SELECT 1 FROM files
         WHERE ID = ?1
           AND (PathName = ?2 OR (PathName = ?3 AND Version = ?4 AND State <> 'discarded')))",
    )
    .and_then(|mut stmt| {
        stmt.query_row(
            params![
                file.client,
                file.path_name,
                file.base_path_name,
                file.version
            ],
            |r| r.get::<_, bool>(0),
        )
    })
    .map_err(query_err(OP))
}

/// Unfinished rows whose `UpdatedAt` is before `cutoff`.
pub(crate) fn abandoned_transfers(
    conn: &Conn,
    cutoff: &str,
) -> Result<Vec<AbandonedTransfer>, CatalogError> {
    const OP: &str = "abandoned_transfers";
    let mut stmt = conn
        .prepare(
            "SELECT f.RowId, f.TempPath,
                    f.State = 'receiving' AND f.TempPath IS NOT NULL AND u.RowId IS NOT NULL
             FROM files f LEFT JOIN v4_uploads u ON u.RowId = f.RowId
             WHERE f.State IN ('receiving', 'received') AND f.UpdatedAt < ?1
             ORDER BY f.UpdatedAt, f.RowId",
        )
        .map_err(query_err(OP))?;
    let rows = stmt
        .query_map([cutoff], |r| {
            Ok(AbandonedTransfer {
                row: FileRowId(r.get(0)?),
                temp_path: r.get(1)?,
                resumable: r.get(2)?,
            })
        })
        .map_err(query_err(OP))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(query_err(OP))?;
    Ok(rows)
}

/// Deletes clients registered before `cutoff` that never stored a public key and own no file
/// row (a registration that went no further, or a flood of them); returns how many.
pub(crate) fn remove_keyless_clients(conn: &Conn, cutoff: &str) -> Result<usize, CatalogError> {
    conn.execute(
        "DELETE FROM clients
         WHERE PublicKey IS NULL AND RegisteredAt < ?1
           AND NOT EXISTS (SELECT 1 FROM files WHERE files.ID = clients.ID)",
        [cutoff],
    )
    .map_err(query_err("remove_keyless_clients"))
}

/// Candidates the trigram index may hand to [`list_files`] for one page before the listing
/// continues with the scan from the last candidate. The index finds names fast, but when the
/// other filters reject most of its candidates (a common name within one client or a narrow
/// date range), the index of those filters is the better driver; the budget bounds the work
/// spent before switching (about 1.5 µs per candidate).
pub(crate) const TRIGRAM_CANDIDATE_BUDGET: usize = 2_000;

/// How [`list_files_with`] finds names containing [`FileFilter::name_contains`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameSearch {
    /// The trigram index (`files_name_trigram`, schema migration 4) when the substring allows
    /// it, for at most `budget` candidates per page; the scan otherwise.
    Trigram {
        /// Candidates examined before falling back to the scan.
        budget: usize,
    },
    /// `instr` on every row the other filters select (what the trigram search is tested
    /// against).
    #[cfg(test)]
    Scan,
}

/// One page of files matching `filter`, ordered by row id.
pub(crate) fn list_files(
    conn: &Conn,
    filter: &FileFilter,
) -> Result<Vec<FileRecord>, CatalogError> {
    list_files_with(
        conn,
        filter,
        NameSearch::Trigram {
            budget: TRIGRAM_CANDIDATE_BUDGET,
        },
    )
}

/// [`list_files`] with an explicit name-search strategy. Every strategy returns the same rows.
pub(crate) fn list_files_with(
    conn: &Conn,
    filter: &FileFilter,
    search: NameSearch,
) -> Result<Vec<FileRecord>, CatalogError> {
    const OP: &str = "list_files";
    let limit = usize::try_from(page_limit(filter)).unwrap_or(usize::MAX);
    let indexed = match (search, filter.name_contains.as_deref()) {
        // PostgreSQL has no name index (schema migration 4): it scans.
        _ if conn.engine() == Engine::Postgres => None,
        (NameSearch::Trigram { budget }, Some(part)) => {
            trigram_phrase(part).map(|phrase| (phrase, budget))
        }
        _ => None,
    };
    let Some((phrase, budget)) = indexed else {
        return scan_files(conn, filter);
    };

    // The index drives, in row-id order; each candidate row carries whether it passes the
    // other filters and the exact byte test, so the page is the same as the scan's.
    let mut query = SqlBuilder::new(&format!("SELECT {FILE_COLUMNS}, CASE WHEN 1 = 1"));
    push_conditions(&mut query, filter, conn.engine());
    query.text.push_str(
        " THEN 1 ELSE 0 END
         FROM files_name_trigram t JOIN files f ON f.RowId = t.rowid
              JOIN clients c ON c.ID = f.ID
         WHERE files_name_trigram MATCH ?",
    );
    query.bind_last(Value::Text(phrase));
    if let Some(after) = filter.after_row {
        query.push(" AND t.rowid > ?", Value::Integer(after.0));
    }
    query.text.push_str(" ORDER BY t.rowid");

    let mut page = Vec::new();
    let mut examined = 0usize;
    let mut over_budget = None;
    conn.query_each(&query.text, query.args, |row| {
        let candidate = FileRowId(row.get(0)?);
        if row.get::<_, bool>(FILE_COLUMN_COUNT)? {
            page.push(file_from_row(row)?);
            if page.len() >= limit {
                return Ok(false);
            }
        }
        examined += 1;
        if examined >= budget {
            over_budget = Some(candidate);
            return Ok(false);
        }
        Ok(true)
    })
    .map_err(query_err(OP))?;
    if let Some(candidate) = over_budget {
        let rest = FileFilter {
            after_row: Some(candidate),
            limit: u32::try_from(limit - page.len()).unwrap_or(u32::MAX),
            ..filter.clone()
        };
        page.extend(scan_files(conn, &rest)?);
    }
    Ok(page)
}

/// The scan: the other filters pick the index, `instr` tests each name.
fn scan_files(conn: &Conn, filter: &FileFilter) -> Result<Vec<FileRecord>, CatalogError> {
    const OP: &str = "list_files";
    let mut query = SqlBuilder::new(&format!(
        "SELECT {FILE_COLUMNS} FROM files f JOIN clients c ON c.ID = f.ID WHERE 1 = 1"
    ));
    push_conditions(&mut query, filter, conn.engine());
    if let Some(after) = filter.after_row {
        query.push(" AND f.RowId > ?", Value::Integer(after.0));
    }
    query.push(
        " ORDER BY f.RowId LIMIT ?",
        Value::Integer(i64::from(page_limit(filter))),
    );

    let mut stmt = conn.prepare(&query.text).map_err(query_err(OP))?;
    let rows = stmt
        .query_map(query.args, file_from_row)
        .map_err(query_err(OP))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(query_err(OP))?;
    Ok(rows)
}

/// The FTS5 query for names containing `part`, or `None` when the trigram index cannot
/// answer it and the scan must.
///
/// Names are indexed as their bytes read as UTF-8 (schema migration 4). When `part` is valid
/// UTF-8 and occurs in a name's bytes, the tokenizer decodes that stretch of the name exactly
/// as it decodes `part`: a sequence before it cannot swallow its first byte (never a
/// continuation byte), and inside it every character is complete. Only the last character
/// can differ: a non-ASCII one swallows continuation bytes that follow it in an invalid name,
/// so it is left out of the query. Whatever the index returns is then confirmed with `instr`.
/// The trigram tokenizer needs three characters; a NUL would end the FTS5 query text.
fn trigram_phrase(part: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(part).ok()?;
    if text.contains('\0') {
        return None;
    }
    let last = text.chars().next_back()?;
    let text = if last.is_ascii() {
        text
    } else {
        text.get(..text.len() - last.len_utf8())?
    };
    if text.chars().count() < 3 {
        return None;
    }
    Some(format!("\"{}\"", text.replace('"', "\"\"")))
}

/// Appends the filter's conditions except the cursor, each as ` AND …` on `f` (files).
fn push_conditions(query: &mut SqlBuilder, filter: &FileFilter, engine: Engine) {
    if let Some(client) = &filter.client_name {
        // A subquery keeps the plan on files_by_client instead of scanning clients.
        query.push(
            " AND f.ID = (SELECT ID FROM clients WHERE Name = ?)",
            Value::Blob(client.clone()),
        );
    }
    if let Some(part) = &filter.name_contains {
        let contains = match engine {
            Engine::Sqlite => " AND instr(f.FileName, ?) > 0",
            Engine::Postgres => " AND position(? IN f.FileName) > 0",
        };
        query.push(contains, Value::Blob(part.clone()));
    }
    if let Some(verified) = filter.verified {
        query.push(" AND f.Verified = ?", Value::Integer(i64::from(verified)));
    }
    if let Some(since) = filter.since {
        query.push(" AND f.CreatedAt >= ?", Value::Text(format_rfc3339(since)));
    }
    if let Some(until) = filter.until {
        query.push(" AND f.CreatedAt < ?", Value::Text(format_rfc3339(until)));
    }
    if !filter.include_discarded {
        query.text.push_str(" AND f.State <> 'discarded'");
    }
}

fn page_limit(filter: &FileFilter) -> u32 {
    if filter.limit == 0 {
        DEFAULT_PAGE
    } else {
        filter.limit
    }
}

/// SQL text with numbered placeholders (`?1`, `?2`, … in the order values are pushed).
struct SqlBuilder {
    text: String,
    args: Vec<Value>,
}

impl SqlBuilder {
    fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            args: Vec::new(),
        }
    }

    /// Appends `clause`, whose single `?` is bound to `value`.
    fn push(&mut self, clause: &str, value: Value) {
        self.args.push(value);
        self.text
            .push_str(&clause.replace('?', &format!("?{}", self.args.len())));
    }

    /// Binds `value` to a trailing `?` already in the text.
    fn bind_last(&mut self, value: Value) {
        self.args.push(value);
        self.text.push_str(&self.args.len().to_string());
    }
}

/// Verified files and bytes per client id (clients without verified files are absent).
pub(crate) fn client_totals(conn: &Conn) -> Result<BTreeMap<ClientId, ClientTotals>, CatalogError> {
    const OP: &str = "client_totals";
    let rows = conn
        .query_map(
            "SELECT ID, COUNT(*), COALESCE(SUM(Size), 0), max(VerifiedAt) FROM files
             WHERE State = 'verified' GROUP BY ID",
            (),
            |row| {
                Ok((
                    row.get::<_, ClientId>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Option<String>>(3)?,
                ))
            },
        )
        .map_err(query_err(OP))?;
    let mut totals = BTreeMap::new();
    for (id, files, bytes, last_verified_at) in rows {
        totals.insert(
            id,
            ClientTotals {
                files: to_u64("files", files)?,
                bytes: to_u64("bytes", bytes)?,
                last_verified_at,
            },
        );
    }
    Ok(totals)
}

/// Runs `PRAGMA integrity_check`; `true` when SQLite answers `ok`.
pub(crate) fn integrity_check(conn: &Conn) -> Result<bool, CatalogError> {
    if conn.engine() == Engine::Postgres {
        return Err(CatalogError::Unsupported {
            what: "the integrity check",
            engine: Engine::Postgres,
            instead: "PostgreSQL checks its own pages: create the cluster with data checksums (initdb -k) and use pg_amcheck",
        });
    }
    let answer: String = conn
        .query_row("PRAGMA integrity_check", (), |r| r.get(0))
        .map_err(query_err("integrity_check"))?;
    Ok(answer == "ok")
}

/// Merges a bounded amount of the file-name search index (FTS5 `merge`): inserts leave it
/// in many small segments, which slows deep pages; this keeps it compact a step at a time.
pub(crate) fn merge_name_index(conn: &Conn) -> Result<(), CatalogError> {
    if conn.engine() == Engine::Postgres {
        // No name index there (see migration 4).
        return Ok(());
    }
    conn.execute(
        "INSERT INTO files_name_trigram (files_name_trigram, rank) VALUES ('merge', 500)",
        (),
    )
    .map_err(query_err("merge_name_index"))?;
    Ok(())
}

/// Counts clients, verified files and their bytes.
pub(crate) fn stats(conn: &Conn) -> Result<CatalogStats, CatalogError> {
    const OP: &str = "stats";
    let clients: i64 = conn
        .query_row("SELECT COUNT(*) FROM clients", (), |r| r.get(0))
        .map_err(query_err(OP))?;
    let (files, bytes): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(Size), 0) FROM files WHERE State = 'verified'",
            (),
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
pub(crate) fn checkpoint(conn: &Conn) -> Result<(), CatalogError> {
    if conn.engine() == Engine::Postgres {
        // PostgreSQL checkpoints its WAL itself.
        return Ok(());
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", (), |_| Ok(()))
        .map_err(query_err("checkpoint"))
}

const CLIENT_COLUMNS: &str = "ID, Name, PublicKey, LastSeen, Protocol, RegisteredAt";

fn client_from_row(r: &Row<'_>) -> Result<ClientRecord, SqlError> {
    Ok(ClientRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        public_key: r.get(2)?,
        last_seen: r.get(3)?,
        protocol: r.get(4)?,
        registered_at: r.get(5)?,
    })
}

/// The columns [`file_from_row`] reads, from `files f JOIN clients c`.
const FILE_COLUMNS: &str = "f.RowId, f.ID, c.Name, f.FileName, f.PathName, f.Version, f.State, \
     f.Verified, f.Size, f.CiphertextSize, f.Cksum, f.Sha256, f.CreatedAt, f.UpdatedAt, f.VerifiedAt";
/// Number of [`FILE_COLUMNS`]; a query may add columns after them.
const FILE_COLUMN_COUNT: usize = 15;

fn file_from_row(r: &Row<'_>) -> Result<FileRecord, SqlError> {
    let state: String = r.get(6)?;
    let Some(state) = FileState::parse(&state) else {
        return Err(SqlError::Conversion {
            column: Some(6),
            problem: format!("unknown file state {state:?}"),
        });
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

fn opt_u64(r: &Row<'_>, idx: usize) -> Result<Option<u64>, SqlError> {
    let Some(v) = r.get::<_, Option<i64>>(idx)? else {
        return Ok(None);
    };
    u64::try_from(v)
        .map(Some)
        .map_err(|_| SqlError::Conversion {
            column: Some(idx),
            problem: format!("{v} is not a size"),
        })
}

pub(super) fn to_i64(field: &'static str, v: u64) -> Result<i64, CatalogError> {
    i64::try_from(v).map_err(|_| CatalogError::OutOfRange {
        field,
        value: v.to_string(),
    })
}

pub(super) fn to_u64(field: &'static str, v: i64) -> Result<u64, CatalogError> {
    u64::try_from(v).map_err(|_| CatalogError::OutOfRange {
        field,
        value: v.to_string(),
    })
}

fn state_error(
    conn: &Conn,
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

// ---- the snapshot repository store (`super::repo`, migration 5) ----

/// Blob IDs per `IN (…)` lookup: well under SQLite's parameter limit.
const REPO_LOOKUP_BATCH: usize = 500;

/// Inserts the client's repository with its first key object; `false` if it already has one.
pub(crate) fn create_repository(
    conn: &mut Conn,
    client: &ClientId,
    config: &[u8],
    key: &[u8],
    now: &str,
) -> Result<bool, CatalogError> {
    const OP: &str = "create_repository";
    let tx = conn.immediate().map_err(query_err(OP))?;
    if repository_exists(&tx, client)? {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO repositories (ClientId, Config, CreatedAt) VALUES (?1, ?2, ?3)",
        params![client, config, now],
    )
    .map_err(query_err(OP))?;
    tx.execute(
        "INSERT INTO repo_keys (ClientId, Seq, KeyObject, AddedAt) VALUES (?1, 0, ?2, ?3)",
        params![client, key, now],
    )
    .map_err(query_err(OP))?;
    tx.commit().map_err(query_err(OP))?;
    Ok(true)
}

/// Appends a key object unless the repository is missing, already holds these bytes, or
/// holds `max_keys` key objects.
pub(crate) fn add_repo_key(
    conn: &mut Conn,
    client: &ClientId,
    key: &[u8],
    max_keys: usize,
    now: &str,
) -> Result<AddKeyOutcome, CatalogError> {
    const OP: &str = "add_repo_key";
    let tx = conn.immediate().map_err(query_err(OP))?;
    if !repository_exists(&tx, client)? {
        return Ok(AddKeyOutcome::NoRepository);
    }
    let stored = tx
        .query_row(
            "SELECT 1 FROM repo_keys WHERE ClientId = ?1 AND KeyObject = ?2",
            params![client, key],
            |_| Ok(()),
        )
        .optional()
        .map_err(query_err(OP))?;
    if stored.is_some() {
        return Ok(AddKeyOutcome::AlreadyStored);
    }
    let (count, next): (i64, i64) = tx
        .query_row(
            "SELECT count(*), coalesce(max(Seq) + 1, 0) FROM repo_keys WHERE ClientId = ?1",
            [client],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(query_err(OP))?;
    if to_u64("repo key count", count)? >= max_keys as u64 {
        return Ok(AddKeyOutcome::TooMany);
    }
    tx.execute(
        "INSERT INTO repo_keys (ClientId, Seq, KeyObject, AddedAt) VALUES (?1, ?2, ?3, ?4)",
        params![client, next, key, now],
    )
    .map_err(query_err(OP))?;
    tx.commit().map_err(query_err(OP))?;
    Ok(AddKeyOutcome::Added)
}

/// Deletes the key object with exactly these bytes, unless it is the repository's last.
pub(crate) fn remove_repo_key(
    conn: &mut Conn,
    client: &ClientId,
    key: &[u8],
) -> Result<RemoveKeyOutcome, CatalogError> {
    const OP: &str = "remove_repo_key";
    let tx = conn.immediate().map_err(query_err(OP))?;
    if !repository_exists(&tx, client)? {
        return Ok(RemoveKeyOutcome::NoRepository);
    }
    let (count, stored): (i64, i64) = tx
        .query_row(
            "SELECT count(*), coalesce(sum(KeyObject = ?2), 0) FROM repo_keys WHERE ClientId = ?1",
            params![client, key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(query_err(OP))?;
    if stored == 0 {
        return Ok(RemoveKeyOutcome::NotStored);
    }
    if count <= 1 {
        return Ok(RemoveKeyOutcome::LastKey);
    }
    tx.execute(
        "DELETE FROM repo_keys WHERE ClientId = ?1 AND KeyObject = ?2",
        params![client, key],
    )
    .map_err(query_err(OP))?;
    tx.commit().map_err(query_err(OP))?;
    Ok(RemoveKeyOutcome::Removed)
}

/// Whether the client has a repository.
pub(crate) fn repository_exists(conn: &Conn, client: &ClientId) -> Result<bool, CatalogError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM repositories WHERE ClientId = ?1",
            [client],
            |_| Ok(()),
        )
        .optional()
        .map_err(query_err("repository_exists"))?
        .is_some())
}

/// The client's repository config and key objects (in the order they were added).
pub(crate) fn repository(
    conn: &Conn,
    client: &ClientId,
) -> Result<Option<RepoRecord>, CatalogError> {
    const OP: &str = "repository";
    let Some(config) = conn
        .query_row(
            "SELECT Config FROM repositories WHERE ClientId = ?1",
            [client],
            |r| r.get::<_, Vec<u8>>(0),
        )
        .optional()
        .map_err(query_err(OP))?
    else {
        return Ok(None);
    };
    let keys = conn
        .prepare("SELECT KeyObject FROM repo_keys WHERE ClientId = ?1 ORDER BY Seq")
        .and_then(|mut s| {
            s.query_map([client], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<Result<Vec<_>, SqlError>>()
        })
        .map_err(query_err(OP))?;
    Ok(Some(RepoRecord { config, keys }))
}

/// Which of `packs` are indexed for the client.
pub(crate) fn packs_indexed(
    conn: &Conn,
    client: &ClientId,
    packs: &[PackId],
) -> Result<Vec<bool>, CatalogError> {
    let ids: Vec<[u8; 32]> = packs.iter().map(|p| p.0).collect();
    let found = ids_present(
        conn,
        "SELECT PackId FROM repo_packs WHERE ClientId = ?1 AND PackId IN",
        client,
        &ids,
        "packs_indexed",
    )?;
    Ok(ids.iter().map(|id| found.contains(id)).collect())
}

/// Which of `snapshots` are recorded for the client.
pub(crate) fn snapshots_recorded(
    conn: &Conn,
    client: &ClientId,
    snapshots: &[SnapshotId],
) -> Result<Vec<bool>, CatalogError> {
    let ids: Vec<[u8; 32]> = snapshots.iter().map(|s| s.0).collect();
    let found = ids_present(
        conn,
        "SELECT SnapshotId FROM repo_snapshots WHERE ClientId = ?1 AND SnapshotId IN",
        client,
        &ids,
        "snapshots_recorded",
    )?;
    Ok(ids.iter().map(|id| found.contains(id)).collect())
}

/// Indexes a stored pack and its entries in one transaction. A blob already indexed keeps
/// its first location unless a prune condemned it: then it moves to this pack and is claimed
/// again. A pack already indexed is left as it is; a pending deletion of this pack ID (a
/// prune removed an identical pack) is cancelled, since the object was just stored again.
pub(crate) fn index_pack(
    conn: &mut Conn,
    client: &ClientId,
    pack: &PackId,
    size: u64,
    entries: &[PackEntry],
    stored_at: u64,
) -> Result<(), CatalogError> {
    const OP: &str = "index_pack";
    let size = to_i64("pack size", size)?;
    let stored_at = to_i64("stored at", stored_at)?;
    let tx = conn.immediate().map_err(query_err(OP))?;
    tx.execute(
        "INSERT INTO repo_packs (ClientId, PackId, Size, StoredAt) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (ClientId, PackId) DO NOTHING",
        params![client, &pack.0, size, stored_at],
    )
    .map_err(query_err(OP))?;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO repo_blobs (ClientId, BlobId, PackId, BlobOffset, BlobLen, Class)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (ClientId, BlobId) DO UPDATE SET
                     PackId = excluded.PackId, BlobOffset = excluded.BlobOffset,
                     BlobLen = excluded.BlobLen, Class = excluded.Class,
                     Verified = 0, CondemnedAt = NULL
                 WHERE repo_blobs.CondemnedAt IS NOT NULL
                    OR repo_blobs.PackId IN (SELECT PackId FROM repo_packs
                                             WHERE ClientId = ?1 AND CorruptAt IS NOT NULL)",
            )
            .map_err(query_err(OP))?;
        for entry in entries {
            insert
                .execute(params![
                    client,
                    &entry.id.0,
                    &pack.0,
                    to_i64("blob offset", entry.offset)?,
                    entry.len,
                    entry.class.to_byte(),
                ])
                .map_err(query_err(OP))?;
        }
    }
    tx.execute(
        "DELETE FROM repo_pack_deletions WHERE ClientId = ?1 AND PackId = ?2",
        params![client, &pack.0],
    )
    .map_err(query_err(OP))?;
    tx.commit().map_err(query_err(OP))
}

/// Where each of `ids` is stored for the client (`None`: not indexed).
pub(crate) fn blob_locations(
    conn: &Conn,
    client: &ClientId,
    ids: &[BlobId],
) -> Result<Vec<Option<BlobLocation>>, CatalogError> {
    const OP: &str = "blob_locations";
    let raw: Vec<[u8; 32]> = ids.iter().map(|id| id.0).collect();
    let mut found = BTreeMap::new();
    for batch in raw.chunks(REPO_LOOKUP_BATCH) {
        let sql = format!(
            "SELECT b.BlobId, b.PackId, b.BlobOffset, b.BlobLen, b.Class, b.Verified,
                    b.CondemnedAt IS NOT NULL, p.CorruptAt IS NOT NULL
             FROM repo_blobs b LEFT JOIN repo_packs p
                  ON p.ClientId = b.ClientId AND p.PackId = b.PackId
             WHERE b.ClientId = ?1 AND b.BlobId IN ({})",
            placeholders(batch.len())
        );
        let mut statement = conn.prepare(&sql).map_err(query_err(OP))?;
        let rows = statement
            .query_map(batch_params(client, batch), |r| {
                Ok((
                    r.get::<_, [u8; 32]>(0)?,
                    r.get::<_, [u8; 32]>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, u8>(4)?,
                    r.get::<_, bool>(5)?,
                    r.get::<_, bool>(6)?,
                    r.get::<_, Option<bool>>(7)?.unwrap_or(false),
                ))
            })
            .map_err(query_err(OP))?;
        for row in rows {
            let (id, pack, offset, len, class, verified, condemned, damaged) =
                row.map_err(query_err(OP))?;
            let class = BlobClass::from_byte(class).ok_or(CatalogError::OutOfRange {
                field: "blob class",
                value: class.to_string(),
            })?;
            found.insert(
                id,
                BlobLocation {
                    pack: PackId(pack),
                    offset: to_u64("blob offset", offset)?,
                    len,
                    class,
                    verified,
                    condemned,
                    damaged,
                },
            );
        }
    }
    Ok(raw.iter().map(|id| found.get(id).copied()).collect())
}

/// Up to `limit` blobs of `pack`, by offset, that lie wholly within `start..end` (the
/// blobs a ranged read of the pack returns whole).
pub(crate) fn blobs_in_range(
    conn: &Conn,
    client: &ClientId,
    pack: &PackId,
    range: std::ops::Range<u64>,
    limit: u32,
) -> Result<Vec<(BlobId, u64, u32)>, CatalogError> {
    const OP: &str = "blobs_in_range";
    let start = to_i64("range start", range.start)?;
    let end = to_i64("range end", range.end)?;
    let rows = conn
        .prepare(
            "SELECT BlobId, BlobOffset, BlobLen FROM repo_blobs
             WHERE ClientId = ?1 AND PackId = ?2 AND BlobOffset >= ?3
               AND BlobOffset + BlobLen <= ?4
             ORDER BY BlobOffset
             LIMIT ?5",
        )
        .and_then(|mut s| {
            s.query_map(params![client, &pack.0, start, end, limit], |r| {
                Ok((
                    r.get::<_, [u8; 32]>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, u32>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, SqlError>>()
        })
        .map_err(query_err(OP))?;
    rows.into_iter()
        .map(|(id, offset, len)| Ok((BlobId(id), to_u64("blob offset", offset)?, len)))
        .collect()
}

/// Records a snapshot that passed the commit check, its reference chunks, and the reference
/// chunks this commit verified, in one transaction; `false` if it was already recorded.
pub(crate) fn record_snapshot(
    conn: &mut Conn,
    client: &ClientId,
    snapshot: &NewSnapshot,
) -> Result<bool, CatalogError> {
    const OP: &str = "record_snapshot";
    let tx = conn.immediate().map_err(query_err(OP))?;
    let inserted = tx
        .execute(
            "INSERT INTO repo_snapshots
                 (ClientId, SnapshotId, Size, TimeSecs, TimeNanos, StoredAt, GroupKey,
                  TotalBytes, BlobCount)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (ClientId, SnapshotId) DO NOTHING",
            params![
                client,
                &snapshot.id.0,
                to_i64("snapshot size", snapshot.size)?,
                snapshot.time_secs,
                snapshot.time_nanos,
                to_i64("stored at", snapshot.stored_at)?,
                &snapshot.group,
                to_i64("snapshot content size", snapshot.total_bytes)?,
                to_i64("snapshot blob count", snapshot.blob_count)?,
            ],
        )
        .map_err(query_err(OP))?;
    if inserted == 0 {
        return Ok(false);
    }
    // Committed again after a forget: its old tombstone must not condemn the new object.
    tx.execute(
        "DELETE FROM repo_forgotten WHERE ClientId = ?1 AND SnapshotId = ?2",
        params![client, &snapshot.id.0],
    )
    .map_err(query_err(OP))?;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO repo_snapshot_refs (ClientId, SnapshotId, Seq, RefChunkId)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(query_err(OP))?;
        for (seq, chunk) in snapshot.ref_chunks.iter().enumerate() {
            insert
                .execute(params![client, &snapshot.id.0, seq as i64, &chunk.0])
                .map_err(query_err(OP))?;
        }
        let mut verify = tx
            .prepare(
                "UPDATE repo_blobs SET Verified = 1
                 WHERE ClientId = ?1 AND BlobId = ?2 AND Class = 2",
            )
            .map_err(query_err(OP))?;
        for chunk in &snapshot.verified_chunks {
            verify
                .execute(params![client, &chunk.0])
                .map_err(query_err(OP))?;
        }
        let mut revive = tx
            .prepare(
                "UPDATE repo_blobs SET CondemnedAt = NULL
                 WHERE ClientId = ?1 AND BlobId = ?2 AND CondemnedAt IS NOT NULL",
            )
            .map_err(query_err(OP))?;
        for blob in &snapshot.revived {
            revive
                .execute(params![client, &blob.0])
                .map_err(query_err(OP))?;
        }
    }
    tx.commit().map_err(query_err(OP))?;
    Ok(true)
}

/// The client's snapshots, oldest backup first.
pub(crate) fn list_snapshots(
    conn: &Conn,
    client: &ClientId,
) -> Result<Vec<SnapshotRecord>, CatalogError> {
    const OP: &str = "list_snapshots";
    let rows = conn
        .prepare(
            "SELECT SnapshotId, Size, StoredAt, TimeSecs, TimeNanos, GroupKey, TotalBytes,
                    BlobCount
             FROM repo_snapshots WHERE ClientId = ?1
             ORDER BY TimeSecs, TimeNanos, SnapshotId",
        )
        .and_then(|mut s| {
            s.query_map([client], |r| {
                Ok((
                    r.get::<_, [u8; 32]>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    Timestamp {
                        secs: r.get(3)?,
                        nanos: r.get(4)?,
                    },
                    r.get::<_, Option<[u8; 32]>>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                ))
            })?
            .collect::<Result<Vec<_>, SqlError>>()
        })
        .map_err(query_err(OP))?;
    rows.into_iter()
        .map(|(id, size, stored_at, time, group, total, blobs)| {
            Ok(SnapshotRecord {
                id: SnapshotId(id),
                size: to_u64("snapshot size", size)?,
                stored_at: to_u64("stored at", stored_at)?,
                time,
                group,
                total_bytes: total
                    .map(|t| to_u64("snapshot content size", t))
                    .transpose()?,
                blob_count: blobs
                    .map(|b| to_u64("snapshot blob count", b))
                    .transpose()?,
            })
        })
        .collect()
}

/// Per client with snapshots: their number, the newest `StoredAt`, the sum of the known
/// envelope content sizes and how many snapshots have one.
pub(crate) fn snapshot_summaries(
    conn: &Conn,
) -> Result<BTreeMap<ClientId, SnapshotSummary>, CatalogError> {
    const OP: &str = "snapshot_summaries";
    let rows = conn
        .prepare(
            "SELECT ClientId, count(*), max(StoredAt), COALESCE(SUM(TotalBytes), 0),
                    count(TotalBytes)
             FROM repo_snapshots GROUP BY ClientId",
        )
        .and_then(|mut s| {
            s.query_map((), |r| {
                Ok((
                    r.get::<_, ClientId>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?
            .collect::<Result<Vec<_>, SqlError>>()
        })
        .map_err(query_err(OP))?;
    rows.into_iter()
        .map(|(client, count, newest, total, with_total)| {
            let snapshots = to_u64("snapshots", count)?;
            let sized = to_u64("snapshots with a content size", with_total)?;
            Ok((
                client,
                SnapshotSummary {
                    snapshots,
                    last_stored_at: to_u64("stored at", newest)?,
                    total_bytes: (sized == snapshots)
                        .then(|| to_u64("snapshot content size", total))
                        .transpose()?,
                },
            ))
        })
        .collect()
}

/// Deletes a snapshot's record and its reference list and writes its tombstone (migration
/// 10); `false` if it was not recorded.
pub(crate) fn forget_snapshot(
    conn: &mut Conn,
    client: &ClientId,
    id: &SnapshotId,
    now: u64,
) -> Result<bool, CatalogError> {
    const OP: &str = "forget_snapshot";
    let now = to_i64("forgotten at", now)?;
    let tx = conn.immediate().map_err(query_err(OP))?;
    let deleted = tx
        .execute(
            "DELETE FROM repo_snapshots WHERE ClientId = ?1 AND SnapshotId = ?2",
            params![client, &id.0],
        )
        .map_err(query_err(OP))?;
    tx.execute(
        "DELETE FROM repo_snapshot_refs WHERE ClientId = ?1 AND SnapshotId = ?2",
        params![client, &id.0],
    )
    .map_err(query_err(OP))?;
    if deleted > 0 {
        tx.execute(
            "INSERT INTO repo_forgotten (ClientId, SnapshotId, ForgottenAt) VALUES (?1, ?2, ?3)
             ON CONFLICT (ClientId, SnapshotId) DO NOTHING",
            params![client, &id.0, now],
        )
        .map_err(query_err(OP))?;
    }
    tx.commit().map_err(query_err(OP))?;
    Ok(deleted > 0)
}

/// Which of `snapshots` have a forget tombstone.
pub(crate) fn snapshots_forgotten(
    conn: &Conn,
    client: &ClientId,
    snapshots: &[SnapshotId],
) -> Result<Vec<bool>, CatalogError> {
    let ids: Vec<[u8; 32]> = snapshots.iter().map(|s| s.0).collect();
    let found = ids_present(
        conn,
        "SELECT SnapshotId FROM repo_forgotten WHERE ClientId = ?1 AND SnapshotId IN",
        client,
        &ids,
        "snapshots_forgotten",
    )?;
    Ok(ids.iter().map(|id| found.contains(id)).collect())
}

/// Removes a snapshot's forget tombstone (its object is gone).
pub(crate) fn clear_tombstone(
    conn: &mut Conn,
    client: &ClientId,
    id: &SnapshotId,
) -> Result<(), CatalogError> {
    conn.execute(
        "DELETE FROM repo_forgotten WHERE ClientId = ?1 AND SnapshotId = ?2",
        params![client, &id.0],
    )
    .map_err(query_err("clear_tombstone"))?;
    Ok(())
}

// ---- scrub and repository usage (`super::scrub`, `super::usage`, migration 9) ----

/// Up to `limit` packs with `ScrubbedAt` NULL or before `before_ms`, never scrubbed first.
pub(crate) fn packs_to_scrub(
    conn: &Conn,
    before_ms: u64,
    client: Option<&ClientId>,
    limit: u32,
) -> Result<Vec<PackToScrub>, CatalogError> {
    const OP: &str = "packs_to_scrub";
    let before = to_i64("scrub cycle start", before_ms)?;
    let client = client.map(|c| c.to_vec());
    let rows = conn
        .prepare(
            "SELECT ClientId, PackId, Size FROM repo_packs
             WHERE (ScrubbedAt IS NULL OR ScrubbedAt < ?1) AND (ClientId = ?2 OR ?2 IS NULL)
             ORDER BY ScrubbedAt NULLS FIRST, ClientId, PackId
             LIMIT ?3",
        )
        .and_then(|mut s| {
            s.query_map(params![before, client, limit], |r| {
                Ok((
                    r.get::<_, ClientId>(0)?,
                    r.get::<_, [u8; 32]>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, SqlError>>()
        })
        .map_err(query_err(OP))?;
    rows.into_iter()
        .map(|(client, pack, size)| {
            Ok(PackToScrub {
                client,
                pack: PackId(pack),
                size: to_u64("pack size", size)?,
            })
        })
        .collect()
}

/// Sets a pack's `ScrubbedAt` and its corrupt mark (kept from the first finding while it
/// stays damaged, cleared when it is whole); `false` when the pack is not indexed.
pub(crate) fn record_pack_scrub(
    conn: &mut Conn,
    client: &ClientId,
    pack: &PackId,
    at_ms: u64,
    damage: Option<&Damage>,
) -> Result<bool, CatalogError> {
    let (found_at, reason) = damage_columns(damage)?;
    let updated = conn
        .execute(
            "UPDATE repo_packs SET ScrubbedAt = ?3,
                 CorruptAt = CASE WHEN COALESCE(CorruptAt, ?4) IS NOT NULL AND ?4 IS NOT NULL THEN COALESCE(CorruptAt, ?4) END,
                 CorruptReason = ?5
             WHERE ClientId = ?1 AND PackId = ?2",
            params![
                client,
                &pack.0,
                to_i64("scrubbed at", at_ms)?,
                found_at,
                reason
            ],
        )
        .map_err(query_err("record_pack_scrub"))?;
    Ok(updated > 0)
}

/// Up to `limit` verified files with a SHA-256 and `ScrubbedAt` NULL or before `before_ms`.
pub(crate) fn files_to_scrub(
    conn: &Conn,
    before_ms: u64,
    client: Option<&ClientId>,
    limit: u32,
) -> Result<Vec<FileToScrub>, CatalogError> {
    const OP: &str = "files_to_scrub";
    let before = to_i64("scrub cycle start", before_ms)?;
    let client = client.map(|c| c.to_vec());
    conn.prepare(
        "SELECT RowId, ID, PathName, Sha256 FROM files
         WHERE State = 'verified' AND length(Sha256) = 32
           AND (ScrubbedAt IS NULL OR ScrubbedAt < ?1) AND (ID = ?2 OR ?2 IS NULL)
         ORDER BY ScrubbedAt NULLS FIRST, RowId
         LIMIT ?3",
    )
    .and_then(|mut s| {
        s.query_map(params![before, client, limit], |r| {
            Ok(FileToScrub {
                row: FileRowId(r.get(0)?),
                client: r.get(1)?,
                path_name: r.get(2)?,
                sha256: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, SqlError>>()
    })
    .map_err(query_err(OP))
}

/// Sets a verified file's `ScrubbedAt` and corrupt mark while it is still at `path_name`.
pub(crate) fn record_file_scrub(
    conn: &mut Conn,
    row: FileRowId,
    path_name: &str,
    at_ms: u64,
    damage: Option<&Damage>,
) -> Result<bool, CatalogError> {
    let (found_at, reason) = damage_columns(damage)?;
    let updated = conn
        .execute(
            "UPDATE files SET ScrubbedAt = ?3,
                 CorruptAt = CASE WHEN COALESCE(CorruptAt, ?4) IS NOT NULL AND ?4 IS NOT NULL THEN COALESCE(CorruptAt, ?4) END,
                 CorruptReason = ?5
             WHERE RowId = ?1 AND PathName = ?2 AND State = 'verified'",
            params![
                row.0,
                path_name,
                to_i64("scrubbed at", at_ms)?,
                found_at,
                reason
            ],
        )
        .map_err(query_err("record_file_scrub"))?;
    Ok(updated > 0)
}

/// Whether the row is a verified file at `path_name`.
pub(crate) fn file_still_at(
    conn: &Conn,
    row: FileRowId,
    path_name: &str,
) -> Result<bool, CatalogError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM files WHERE RowId = ?1 AND PathName = ?2 AND State = 'verified'",
            params![row.0, path_name],
            |_| Ok(()),
        )
        .optional()
        .map_err(query_err("file_still_at"))?
        .is_some())
}

fn damage_columns(damage: Option<&Damage>) -> Result<(Option<i64>, Option<&str>), CatalogError> {
    Ok(match damage {
        Some(damage) => (
            Some(to_i64("corrupt at", damage.found_at)?),
            Some(damage.reason.as_str()),
        ),
        None => (None, None),
    })
}

/// Packs and verified files marked corrupt (up to `limit` of each), oldest finding first.
pub(crate) fn corrupt_objects(
    conn: &Conn,
    client: Option<&ClientId>,
    limit: u32,
) -> Result<Vec<CorruptObject>, CatalogError> {
    const OP: &str = "corrupt_objects";
    let client = client.map(|c| c.to_vec());
    let mut found = conn
        .prepare(
            "SELECT p.ClientId, c.Name, p.PackId, p.Size, p.CorruptAt,
                    p.CorruptReason
             FROM repo_packs p LEFT JOIN clients c ON c.ID = p.ClientId
             WHERE p.CorruptAt IS NOT NULL AND (p.ClientId = ?1 OR ?1 IS NULL)
             ORDER BY p.CorruptAt, p.ClientId, p.PackId LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![client, limit], |r| {
                Ok((
                    r.get::<_, ClientId>(0)?,
                    // A client deleted since: no name.
                    r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                    hex::encode(r.get::<_, [u8; 32]>(2)?),
                    None,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    CorruptKind::Pack,
                ))
            })?
            .collect::<Result<Vec<_>, SqlError>>()
        })
        .map_err(query_err(OP))?;
    let files = conn
        .prepare(
            "SELECT f.ID, c.Name, f.PathName, f.FileName, f.Version,
                    COALESCE(f.Size, 0), f.CorruptAt, f.CorruptReason
             FROM files f LEFT JOIN clients c ON c.ID = f.ID
             WHERE f.CorruptAt IS NOT NULL AND f.State = 'verified' AND (f.ID = ?1 OR ?1 IS NULL)
             ORDER BY f.CorruptAt, f.RowId LIMIT ?2",
        )
        .and_then(|mut s| {
            s.query_map(params![client, limit], |r| {
                Ok((
                    r.get::<_, ClientId>(0)?,
                    r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default(),
                    r.get::<_, String>(2)?,
                    Some((r.get::<_, Vec<u8>>(3)?, r.get::<_, u32>(4)?)),
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    CorruptKind::File,
                ))
            })?
            .collect::<Result<Vec<_>, SqlError>>()
        })
        .map_err(query_err(OP))?;
    found.extend(files);
    let mut objects = found
        .into_iter()
        .map(
            |(client_id, client_name, object, file, size, found_at, reason, kind)| {
                Ok(CorruptObject {
                    client_id,
                    client_name,
                    kind,
                    object,
                    file,
                    size: to_u64("object size", size)?,
                    found_at: to_u64("corrupt at", found_at)?,
                    reason: reason.unwrap_or_default(),
                })
            },
        )
        .collect::<Result<Vec<_>, CatalogError>>()?;
    objects.sort_by_key(|o| o.found_at);
    Ok(objects)
}

/// Packs plus verified files marked corrupt.
pub(crate) fn corrupt_object_count(conn: &Conn) -> Result<u64, CatalogError> {
    let count: i64 = conn
        .query_row(
            "SELECT (SELECT count(*) FROM repo_packs WHERE CorruptAt IS NOT NULL)
                  + (SELECT count(*) FROM files WHERE CorruptAt IS NOT NULL AND State = 'verified')",
            (),
            |r| r.get(0),
        )
        .map_err(query_err("corrupt_object_count"))?;
    to_u64("corrupt objects", count)
}

/// Up to `limit` blob IDs above `after` indexed in the client's packs marked corrupt.
pub(crate) fn damaged_blobs(
    conn: &Conn,
    client: &ClientId,
    after: Option<&BlobId>,
    limit: u32,
) -> Result<Vec<BlobId>, CatalogError> {
    let after = after.map_or_else(Vec::new, |id| id.0.to_vec());
    conn.prepare(
        "SELECT b.BlobId FROM repo_blobs b
         JOIN repo_packs p ON p.ClientId = b.ClientId AND p.PackId = b.PackId
         WHERE b.ClientId = ?1 AND p.CorruptAt IS NOT NULL AND b.BlobId > ?2
         ORDER BY b.BlobId LIMIT ?3",
    )
    .and_then(|mut s| {
        s.query_map(params![client, after, limit], |r| {
            r.get::<_, [u8; 32]>(0).map(BlobId)
        })?
        .collect::<Result<Vec<_>, SqlError>>()
    })
    .map_err(query_err("damaged_blobs"))
}

/// Bytes of the client's stored packs.
pub(crate) fn repo_stored_bytes(conn: &Conn, client: &ClientId) -> Result<u64, CatalogError> {
    let bytes: i64 = conn
        .query_row(
            "SELECT COALESCE(SUM(Size), 0) FROM repo_packs WHERE ClientId = ?1",
            [client],
            |r| r.get(0),
        )
        .map_err(query_err("repo_stored_bytes"))?;
    to_u64("stored bytes", bytes)
}

/// See [`Catalog::reserve_quota`](super::Catalog::reserve_quota); expired reservations of
/// the client are deleted on the way.
pub(crate) fn reserve_quota(
    conn: &mut Conn,
    client: &ClientId,
    reservation: &[u8; 16],
    bytes: u64,
    hard: u64,
    now: u64,
    expires_at: u64,
) -> Result<super::usage::QuotaCheck, CatalogError> {
    const OP: &str = "reserve_quota";
    let now = to_i64("now", now)?;
    let tx = conn.immediate().map_err(query_err(OP))?;
    tx.execute(
        "DELETE FROM repo_quota_reservations WHERE ClientId = ?1 AND ExpiresAt <= ?2",
        params![client, now],
    )
    .map_err(query_err(OP))?;
    let reserved: i64 = tx
        .query_row(
            "SELECT COALESCE(SUM(Bytes), 0) FROM repo_quota_reservations WHERE ClientId = ?1",
            [client],
            |r| r.get(0),
        )
        .map_err(query_err(OP))?;
    let counted = repo_stored_bytes(&tx, client)?.saturating_add(to_u64("reserved", reserved)?);
    if counted.saturating_add(bytes) > hard {
        return Ok(super::usage::QuotaCheck::Exceeded { counted });
    }
    tx.execute(
        "INSERT INTO repo_quota_reservations (ReservationId, ClientId, Bytes, ExpiresAt)
         VALUES (?1, ?2, ?3, ?4)",
        params![
            reservation,
            client,
            to_i64("reserved bytes", bytes)?,
            to_i64("expiry", expires_at)?
        ],
    )
    .map_err(query_err(OP))?;
    tx.commit().map_err(query_err(OP))?;
    Ok(super::usage::QuotaCheck::Reserved(*reservation))
}

/// See [`Catalog::release_quota`](super::Catalog::release_quota).
pub(crate) fn release_quota(conn: &mut Conn, reservation: &[u8; 16]) -> Result<(), CatalogError> {
    conn.execute(
        "DELETE FROM repo_quota_reservations WHERE ReservationId = ?1",
        [reservation],
    )
    .map_err(query_err("release_quota"))?;
    Ok(())
}

/// Packs, stored bytes and corrupt packs of every repository.
pub(crate) fn repo_usage(conn: &Conn) -> Result<Vec<RepoUsageRecord>, CatalogError> {
    const OP: &str = "repo_usage";
    let rows = conn
        .prepare(
            "SELECT r.ClientId, count(p.PackId), COALESCE(SUM(p.Size), 0),
                    count(p.CorruptAt)
             FROM repositories r LEFT JOIN repo_packs p ON p.ClientId = r.ClientId
             GROUP BY r.ClientId ORDER BY r.ClientId",
        )
        .and_then(|mut s| {
            s.query_map((), |r| {
                Ok((
                    r.get::<_, ClientId>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, SqlError>>()
        })
        .map_err(query_err(OP))?;
    rows.into_iter()
        .map(|(client_id, packs, bytes, corrupt)| {
            Ok(RepoUsageRecord {
                client_id,
                packs: to_u64("packs", packs)?,
                stored_bytes: to_u64("stored bytes", bytes)?,
                corrupt_packs: to_u64("corrupt packs", corrupt)?,
            })
        })
        .collect()
}

/// The subset of `ids` that `select_in` (a `SELECT id … WHERE ClientId = ?1 AND id IN`
/// prefix) finds, queried in batches.
pub(super) fn ids_present(
    conn: &Conn,
    select_in: &str,
    client: &ClientId,
    ids: &[[u8; 32]],
    op: &'static str,
) -> Result<BTreeSet<[u8; 32]>, CatalogError> {
    let mut found = BTreeSet::new();
    for batch in ids.chunks(REPO_LOOKUP_BATCH) {
        let sql = format!("{select_in} ({})", placeholders(batch.len()));
        let mut statement = conn.prepare(&sql).map_err(query_err(op))?;
        let rows = statement
            .query_map(batch_params(client, batch), |r| r.get::<_, [u8; 32]>(0))
            .map_err(query_err(op))?;
        for row in rows {
            found.insert(row.map_err(query_err(op))?);
        }
    }
    Ok(found)
}

/// `?2, ?3, …` for `n` values after the client id.
fn placeholders(n: usize) -> String {
    (2..n + 2)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn batch_params(client: &ClientId, batch: &[[u8; 32]]) -> Vec<Value> {
    let mut values = Vec::with_capacity(batch.len() + 1);
    values.push(Value::Blob(client.to_vec()));
    values.extend(batch.iter().map(|id| Value::Blob(id.to_vec())));
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::schema;

    const CLIENTS: [&[u8]; 3] = [b"alice", b"bob", "bj\u{f6}rk".as_bytes()];

    /// Names that trip naive substring search: LIKE wildcards, quotes, FTS5 query syntax,
    /// non-ASCII, and bytes that are not UTF-8 (a lone continuation byte, a cut sequence,
    /// continuation bytes after a complete character).
    const TRICKY: [&[u8]; 24] = [
        b"100% done.txt",
        b"100_percent.txt",
        b"it's \"quoted\".doc",
        b"O'Brien's notes",
        b"a*b?c[d].glob",
        b"NEAR(x y) AND z OR w NOT v",
        b"col:value ^start",
        b"back\\slash\\path",
        "r\u{e9}sum\u{e9}.pdf".as_bytes(),
        "R\u{c9}SUM\u{c9}.PDF".as_bytes(),
        "\u{65e5}\u{672c}\u{8a9e}\u{306e}\u{30d5}\u{30a1}\u{30a4}\u{30eb}.txt".as_bytes(),
        "emoji \u{1f600}\u{1f4be} backup".as_bytes(),
        "\u{fffd} replacement".as_bytes(),
        b"latin1 caf\xe9 menu",
        b"lone \x80 continuation",
        b"cut \xe6\x97 sequence",
        b"caf\xc3\xa9\x80\x80 swallowed",
        b"\xff\xfe\xfd invalid lead",
        b"tab\there",
        b"new\nline",
        b"%%%___",
        b"file-0001.dat",
        b"FILE-0001.DAT",
        b"   spaces   ",
    ];

    #[test]
    fn trigram_search_equals_the_scan_on_tricky_names() {
        let (_dir, conn) = catalog_with(&generated_names(1500));
        let everything = all_rows(&conn);
        let mut needles: Vec<Vec<u8>> = [
            &b"%"[..],
            b"_",
            b"%%",
            b"0% ",
            b"\"quoted\"",
            b"'s ",
            b"it's \"",
            b"*b?",
            b"[d]",
            b"NEAR(",
            b"AND z",
            b"col:",
            b"^st",
            b"\\sl",
            "sum\u{e9}".as_bytes(),
            "r\u{e9}s".as_bytes(),
            "SUM\u{c9}".as_bytes(),
            "caf\u{e9}".as_bytes(),
            "\u{672c}\u{8a9e}\u{306e}".as_bytes(),
            "\u{1f600}\u{1f4be}".as_bytes(),
            "\u{fffd} r".as_bytes(),
            b"caf\xe9",
            b" \x80 ",
            b"\xe6\x97 s",
            b"\x80\x80 sw",
            b"\xff\xfe",
            b"b\th",
            b"w\nl",
            b"file-0",
            b"FILE",
            b"ile",
            b".dat",
            b"-0001.",
            b"   ",
            b"no such name anywhere",
            b"a\0b",
        ]
        .iter()
        .map(|n| n.to_vec())
        .collect();
        // Windows of generated names, some cutting characters in half.
        let mut rng = Lcg(7);
        for _ in 0..60 {
            let name = &everything[rng.below(everything.len())].file_name;
            let len = 1 + rng.below(7.min(name.len()));
            let start = rng.below(name.len() - len + 1);
            needles.push(name[start..start + len].to_vec());
        }
        let mut indexed_hits = 0;

        for needle in &needles {
            for filter in filters(needle) {
                let expected: Vec<FileRowId> = everything
                    .iter()
                    .filter(|f| oracle(&filter, f))
                    .map(|f| f.row)
                    .collect();

                let scan = all_pages(&conn, &filter, NameSearch::Scan);
                let indexed = all_pages(&conn, &filter, NameSearch::Trigram { budget: 2_000 });
                let fallback = all_pages(&conn, &filter, NameSearch::Trigram { budget: 3 });

                let shown = String::from_utf8_lossy(needle);
                assert_eq!(scan, expected, "scan, {shown:?}, {filter:?}");
                assert_eq!(indexed, expected, "trigram, {shown:?}, {filter:?}");
                assert_eq!(fallback, expected, "trigram+scan, {shown:?}, {filter:?}");
                if trigram_phrase(needle).is_some() {
                    indexed_hits += expected.len();
                }
            }
        }
        assert!(
            indexed_hits > 1000,
            "the index answered {indexed_hits} rows"
        );
    }

    #[test]
    fn names_of_three_characters_or_more_come_from_the_index() {
        let (_dir, conn) = catalog_with(&[b"report.txt".to_vec(), b"xy".to_vec()]);
        let search = |conn: &Conn, part: &[u8]| -> usize {
            let filter = FileFilter {
                name_contains: Some(part.to_vec()),
                include_discarded: true,
                ..FileFilter::default()
            };
            list_files(conn, &filter).unwrap().len()
        };
        let before = (search(&conn, b"port"), search(&conn, b"xy"));

        // Emptying the index leaves `files` alone: only the short name is still found.
        conn.execute(
            "INSERT INTO files_name_trigram (files_name_trigram) VALUES ('delete-all')",
            (),
        )
        .unwrap();
        let after = (search(&conn, b"port"), search(&conn, b"xy"));

        assert_eq!(before, (1, 1));
        assert_eq!(after, (0, 1));
    }

    #[test]
    fn triggers_follow_inserts_renames_and_deletes() {
        let (_dir, conn) = catalog_with(&[b"alpha.txt".to_vec(), b"beta.txt".to_vec()]);
        let found = |conn: &Conn, part: &str| -> Vec<Vec<u8>> {
            let filter = FileFilter {
                name_contains: Some(part.as_bytes().to_vec()),
                include_discarded: true,
                ..FileFilter::default()
            };
            list_files(conn, &filter)
                .unwrap()
                .into_iter()
                .map(|f| f.file_name)
                .collect()
        };
        let inserted = found(&conn, "pha");

        conn.execute(
            "UPDATE files SET FileName = CAST('omega.txt' AS BLOB) WHERE FileName = CAST('alpha.txt' AS BLOB)",
            (),
        )
        .unwrap();
        let renamed = (found(&conn, "pha"), found(&conn, "ega"));
        conn.execute("UPDATE files SET State = 'discarded'", ())
            .unwrap();
        let other_update = found(&conn, ".txt").len();
        conn.execute(
            "DELETE FROM files WHERE FileName = CAST('beta.txt' AS BLOB)",
            (),
        )
        .unwrap();
        let deleted = (found(&conn, "eta"), found(&conn, ".txt").len());
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", (), |r| r.get(0))
            .unwrap();

        assert_eq!(inserted, [b"alpha.txt".to_vec()]);
        assert_eq!(renamed, (vec![], vec![b"omega.txt".to_vec()]));
        assert_eq!(other_update, 2);
        assert_eq!(deleted, (vec![], 1));
        assert_eq!(integrity, "ok");
    }

    #[test]
    fn trigram_phrase_needs_three_characters_and_drops_a_final_non_ascii_one() {
        assert_eq!(trigram_phrase(b"abc").as_deref(), Some("\"abc\""));
        assert_eq!(trigram_phrase(b"ab").as_deref(), None);
        assert_eq!(trigram_phrase(b"a\"b").as_deref(), Some("\"a\"\"b\""));
        assert_eq!(
            trigram_phrase("sum\u{e9}".as_bytes()).as_deref(),
            Some("\"sum\"")
        );
        assert_eq!(trigram_phrase("um\u{e9}".as_bytes()), None);
        assert_eq!(
            trigram_phrase("\u{e9}t\u{e9}s".as_bytes()).as_deref(),
            Some("\"\u{e9}t\u{e9}s\"")
        );
        assert_eq!(trigram_phrase(b"ab\xffcd"), None);
        assert_eq!(trigram_phrase(b"abc\0d"), None);
    }

    #[test]
    fn client_totals_count_verified_files_per_client() {
        let (_dir, conn) = catalog_with(&generated_names(300));

        let totals = client_totals(&conn).unwrap();

        let rows = all_rows(&conn);
        for (i, client) in CLIENTS.iter().enumerate() {
            let mine = rows
                .iter()
                .filter(|f| f.client_name == *client && f.state == FileState::Verified);
            let expected = ClientTotals {
                files: mine.clone().count() as u64,
                bytes: mine.clone().map(|f| f.size.unwrap_or(0)).sum(),
                last_verified_at: mine.filter_map(|f| f.verified_at.clone()).max(),
            };
            assert!(expected.files > 0);
            assert_eq!(totals.get(&client_id(i)), Some(&expected), "client {i}");
        }
        assert_eq!(totals.len(), CLIENTS.len());
    }

    /// The filters each needle is tried with, with pages of 7 rows.
    fn filters(needle: &[u8]) -> Vec<FileFilter> {
        let base = FileFilter {
            name_contains: Some(needle.to_vec()),
            limit: 7,
            ..FileFilter::default()
        };
        vec![
            base.clone(),
            FileFilter {
                verified: Some(false),
                ..base.clone()
            },
            FileFilter {
                client_name: Some(CLIENTS[2].to_vec()),
                include_discarded: true,
                ..base.clone()
            },
            FileFilter {
                since: Some(time(400)),
                until: Some(time(1200)),
                ..base.clone()
            },
            FileFilter {
                after_row: Some(FileRowId(700)),
                verified: Some(true),
                ..base
            },
        ]
    }

    /// The filter applied in Rust to a row read without any filter.
    fn oracle(filter: &FileFilter, f: &FileRecord) -> bool {
        let contains = |part: &[u8]| f.file_name.windows(part.len()).any(|w| w == part);
        filter.name_contains.as_deref().is_none_or(contains)
            && filter
                .client_name
                .as_ref()
                .is_none_or(|c| *c == f.client_name)
            && filter.verified.is_none_or(|v| v == f.verified)
            && filter
                .since
                .is_none_or(|s| f.created_at >= format_rfc3339(s))
            && filter
                .until
                .is_none_or(|u| f.created_at < format_rfc3339(u))
            && (filter.include_discarded || f.state != FileState::Discarded)
            && filter.after_row.is_none_or(|a| f.row > a)
    }

    fn all_pages(conn: &Conn, filter: &FileFilter, search: NameSearch) -> Vec<FileRowId> {
        let mut rows = Vec::new();
        let mut filter = filter.clone();
        loop {
            let page = list_files_with(conn, &filter, search).unwrap();
            assert!(page.len() <= filter.limit as usize);
            rows.extend(page.iter().map(|f| f.row));
            if page.len() < filter.limit as usize {
                return rows;
            }
            filter.after_row = page.last().map(|f| f.row);
        }
    }

    fn all_rows(conn: &Conn) -> Vec<FileRecord> {
        let filter = FileFilter {
            include_discarded: true,
            limit: u32::MAX,
            ..FileFilter::default()
        };
        list_files_with(conn, &filter, NameSearch::Scan).unwrap()
    }

    /// `n` names: the tricky ones in turn with a counter and a random suffix.
    fn generated_names(n: usize) -> Vec<Vec<u8>> {
        let mut rng = Lcg(42);
        (0..n)
            .map(|i| {
                let mut name = TRICKY[i % TRICKY.len()].to_vec();
                if i >= TRICKY.len() {
                    let extra = TRICKY[rng.below(TRICKY.len())];
                    let cut = rng.below(extra.len() + 1);
                    name.extend_from_slice(format!("-{i}-").as_bytes());
                    name.extend_from_slice(&extra[..cut]);
                }
                name
            })
            .collect()
    }

    /// A migrated catalog of the three clients and one row per name, spread over clients,
    /// states and creation times (`time(i)` for row `i`).
    fn catalog_with(names: &[Vec<u8>]) -> (tempfile::TempDir, Conn) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Conn::sqlite(schema::open_writer(&dir.path().join("defensive.db")).unwrap());
        schema::migrate(&mut conn).unwrap();
        let tx = conn.immediate().unwrap();
        for (i, name) in CLIENTS.iter().enumerate() {
            tx.execute(
                "INSERT INTO clients (ID, Name, RegisteredAt) VALUES (?1, ?2, 'x')",
                params![client_id(i), name],
            )
            .unwrap();
        }
        for (i, name) in names.iter().enumerate() {
            let (state, verified) = match i % 5 {
                0 => ("discarded", 0),
                1 => ("receiving", 0),
                _ => ("verified", 1),
            };
            tx.execute(
                "INSERT INTO files (ID, FileName, PathName, Verified, Version, State, Size,
                                    CreatedAt, UpdatedAt)
                 VALUES (?1, ?2, 'p', ?3, 1, ?4, ?5, ?6, ?6)",
                params![
                    client_id(i % 3),
                    name,
                    verified,
                    state,
                    i as i64,
                    format_rfc3339(time(i as u64))
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        (dir, conn)
    }

    fn client_id(i: usize) -> ClientId {
        [u8::try_from(i + 1).unwrap(); 16]
    }

    fn time(i: u64) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + 60 * i)
    }

    /// A small deterministic generator (tests must be reproducible).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            usize::try_from(self.0 >> 33).unwrap() % n.max(1)
        }
    }
}
