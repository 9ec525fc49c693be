//! Catalog side of the keyless prune (`crate::repository::prune`, docs/repository.md,
//! "Prune"): condemning blobs no snapshot references, sweeping those condemned longer than
//! the grace period, moving live blobs to repacked packs, and the pending pack deletions
//! (`repo_pack_deletions`, migration 6). Every query is keyed by the client id; each write
//! is one transaction, so a crash leaves either the state before it or the state after it.

use super::sql::{Conn, Engine, FromColumn, Params, params};

use cyberbackup_core::repo::{BlobClass, BlobId, PackEntry, PackId, SnapshotId};

use super::error::{CatalogError, query_err};
use super::model::ClientId;
use super::queries::{to_i64, to_u64};
use super::{Catalog, queries};

/// What [`Catalog::mark_unreferenced`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MarkOutcome {
    /// Blobs condemned now (no snapshot referenced them, their pack was old enough).
    pub condemned: u64,
    /// Condemned blobs found referenced again, and claimed back.
    pub revived: u64,
}

/// What [`Catalog::sweep_condemned`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Blob rows deleted.
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
}

/// Packs left without any index row, now pending deletion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmptiedPacks {
    /// How many.
    pub packs: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// A pack whose live bytes are a small share of its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepackCandidate {
    /// The pack.
    pub pack: PackId,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes of the blobs still indexed in it.
    pub live_bytes: u64,
}

/// A pack whose object is to be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingDeletion {
    /// The owning client.
    pub client: ClientId,
    /// The pack.
    pub pack: PackId,
    /// Its size in bytes.
    pub size: u64,
}

impl Catalog {
    /// Every client that has a repository.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn repository_clients(&self) -> Result<Vec<ClientId>, CatalogError> {
        self.read(|c| {
            collect(
                c,
                "SELECT ClientId FROM repositories ORDER BY ClientId",
                (),
                "repository_clients",
            )
        })
        .await
    }

    /// The reference chunks of the client's snapshots (each once), or of only `snapshot`.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn referenced_chunks(
        &self,
        client: ClientId,
        snapshot: Option<SnapshotId>,
    ) -> Result<Vec<BlobId>, CatalogError> {
        self.read(move |c| {
            const OP: &str = "referenced_chunks";
            let ids: Vec<[u8; 32]> = match snapshot {
                None => collect(
                    c,
                    "SELECT DISTINCT RefChunkId FROM repo_snapshot_refs WHERE ClientId = ?1",
                    params![&client],
                    OP,
                )?,
                Some(id) => collect(
                    c,
                    "SELECT RefChunkId FROM repo_snapshot_refs
                     WHERE ClientId = ?1 AND SnapshotId = ?2",
                    params![&client, &id.0],
                    OP,
                )?,
            };
            Ok(ids.into_iter().map(BlobId).collect())
        })
        .await
    }

    /// In one transaction: every blob of the client in `live` that is condemned is claimed
    /// back; every other blob not yet condemned, in a pack stored before `old_before`, is
    /// condemned at `now` (and a reference chunk loses its `Verified` mark, so the next
    /// commit that names it reads it again).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn mark_unreferenced(
        &self,
        client: ClientId,
        live: Vec<BlobId>,
        now: u64,
        old_before: u64,
    ) -> Result<MarkOutcome, CatalogError> {
        self.write(move |c| mark(c, &client, &live, now, old_before))
            .await
    }

    /// Deletes the client's blob rows condemned at or before `condemned_by`.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn sweep_condemned(
        &self,
        client: ClientId,
        condemned_by: u64,
    ) -> Result<SweepOutcome, CatalogError> {
        self.write(move |c| {
            const OP: &str = "sweep_condemned";
            let by = to_i64("condemned by", condemned_by)?;
            let tx = c.immediate().map_err(query_err(OP))?;
            let (blobs, bytes): (i64, i64) = tx
                .query_row(
                    "SELECT count(*), coalesce(sum(BlobLen), 0) FROM repo_blobs
                     WHERE ClientId = ?1 AND CondemnedAt IS NOT NULL AND CondemnedAt <= ?2",
                    params![&client, by],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(query_err(OP))?;
            tx.execute(
                "DELETE FROM repo_blobs
                 WHERE ClientId = ?1 AND CondemnedAt IS NOT NULL AND CondemnedAt <= ?2",
                params![&client, by],
            )
            .map_err(query_err(OP))?;
            tx.commit().map_err(query_err(OP))?;
            Ok(SweepOutcome {
                blobs: to_u64("blob count", blobs)?,
                blob_bytes: to_u64("blob bytes", bytes)?,
            })
        })
        .await
    }

    /// Moves every pack row of the client that no blob row points at any more (all its blobs
    /// swept or moved, or all of them duplicates of blobs indexed elsewhere) to the pending
    /// deletions, to delete after `delete_after`.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn retire_empty_packs(
        &self,
        client: ClientId,
        delete_after: u64,
    ) -> Result<EmptiedPacks, CatalogError> {
        self.write(move |c| retire_empty(c, &client, delete_after))
            .await
    }

    /// The client's packs whose indexed bytes are below `live_percent` % of their blob
    /// region (the pack's size less a header and trailer of `tail_fixed` bytes plus
    /// `tail_per_entry` per indexed blob), least live first. A pack nothing was removed from
    /// is never a candidate, however small; nor is one the scrub found damaged (copying it
    /// would give its bad bytes a new pack with a matching hash, hiding the damage).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn repack_candidates(
        &self,
        client: ClientId,
        live_percent: u8,
        tail_fixed: u64,
        tail_per_entry: u64,
    ) -> Result<Vec<RepackCandidate>, CatalogError> {
        self.read(move |c| {
            const OP: &str = "repack_candidates";
            let rows: Vec<([u8; 32], i64, i64)> = c
                .prepare(
                    "SELECT p.PackId, p.Size, sum(b.BlobLen) AS Live
                     FROM repo_packs p JOIN repo_blobs b
                          ON b.ClientId = p.ClientId AND b.PackId = p.PackId
                     WHERE p.ClientId = ?1 AND p.CorruptAt IS NULL
                     GROUP BY p.PackId, p.Size
                     HAVING sum(b.BlobLen) * 100 < (p.Size - ?3 - ?4 * count(*)) * ?2
                     ORDER BY sum(b.BlobLen) * 1.0 / p.Size, p.PackId",
                )
                .and_then(|mut s| {
                    let tail = (
                        i64::try_from(tail_fixed).unwrap_or(i64::MAX),
                        i64::try_from(tail_per_entry).unwrap_or(i64::MAX),
                    );
                    s.query_map(
                        params![&client, i64::from(live_percent), tail.0, tail.1],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )?
                    .collect()
                })
                .map_err(query_err(OP))?;
            rows.into_iter()
                .map(|(pack, size, live)| {
                    Ok(RepackCandidate {
                        pack: PackId(pack),
                        size: to_u64("pack size", size)?,
                        live_bytes: to_u64("live bytes", live)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// The blobs indexed in one pack, in pack order.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails or a stored class is unknown.
    pub async fn pack_blobs(
        &self,
        client: ClientId,
        pack: PackId,
    ) -> Result<Vec<PackEntry>, CatalogError> {
        self.read(move |c| {
            const OP: &str = "pack_blobs";
            let rows: Vec<([u8; 32], i64, u32, u8)> = c
                .prepare(
                    "SELECT BlobId, BlobOffset, BlobLen, Class FROM repo_blobs
                     WHERE ClientId = ?1 AND PackId = ?2 ORDER BY BlobOffset",
                )
                .and_then(|mut s| {
                    s.query_map(params![&client, &pack.0], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?
                    .collect()
                })
                .map_err(query_err(OP))?;
            rows.into_iter()
                .map(|(id, offset, len, class)| {
                    Ok(PackEntry {
                        class: BlobClass::from_byte(class).ok_or(CatalogError::OutOfRange {
                            field: "blob class",
                            value: class.to_string(),
                        })?,
                        id: BlobId(id),
                        offset: to_u64("blob offset", offset)?,
                        len,
                    })
                })
                .collect()
        })
        .await
    }

    /// Indexes a repacked pack and moves to it, in one transaction, every blob of `entries`
    /// still indexed in `from` (its old pack). Blobs indexed elsewhere meanwhile stay there.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn move_to_repacked(
        &self,
        client: ClientId,
        pack: PackId,
        size: u64,
        entries: Vec<(PackEntry, PackId)>,
        stored_at: u64,
    ) -> Result<u64, CatalogError> {
        self.write(move |c| move_blobs(c, &client, &pack, size, &entries, stored_at))
            .await
    }

    /// Which of `packs` are pending deletion for the client.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn packs_pending_deletion(
        &self,
        client: ClientId,
        packs: Vec<PackId>,
    ) -> Result<Vec<bool>, CatalogError> {
        self.read(move |c| {
            let ids: Vec<[u8; 32]> = packs.iter().map(|p| p.0).collect();
            let found = queries::ids_present(
                c,
                "SELECT PackId FROM repo_pack_deletions WHERE ClientId = ?1 AND PackId IN",
                &client,
                &ids,
                "packs_pending_deletion",
            )?;
            Ok(ids.iter().map(|id| found.contains(id)).collect())
        })
        .await
    }

    /// The client's pending deletions due at `now`.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn due_pack_deletions(
        &self,
        client: ClientId,
        now: u64,
    ) -> Result<Vec<PendingDeletion>, CatalogError> {
        self.read(move |c| {
            const OP: &str = "due_pack_deletions";
            let rows: Vec<([u8; 32], i64)> = c
                .prepare(
                    "SELECT PackId, Size FROM repo_pack_deletions
                     WHERE ClientId = ?1 AND DeleteAfter <= ?2 ORDER BY PackId",
                )
                .and_then(|mut s| {
                    s.query_map(
                        params![&client, to_i64("now", now).unwrap_or(i64::MAX)],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?
                    .collect()
                })
                .map_err(query_err(OP))?;
            rows.into_iter()
                .map(|(pack, size)| {
                    Ok(PendingDeletion {
                        client,
                        pack: PackId(pack),
                        size: to_u64("pack size", size)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Whether the deletion of `pack` is still pending (an upload of the same pack ID since
    /// cancels it).
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn pack_deletion_pending(
        &self,
        client: ClientId,
        pack: PackId,
    ) -> Result<bool, CatalogError> {
        Ok(self
            .packs_pending_deletion(client, vec![pack])
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }

    /// Forgets a pending deletion whose object was deleted.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn finish_pack_deletion(
        &self,
        client: ClientId,
        pack: PackId,
    ) -> Result<(), CatalogError> {
        self.write(move |c| {
            c.execute(
                "DELETE FROM repo_pack_deletions WHERE ClientId = ?1 AND PackId = ?2",
                params![&client, &pack.0],
            )
            .map_err(query_err("finish_pack_deletion"))?;
            Ok(())
        })
        .await
    }

    /// The client's stored packs: how many, and their total size in bytes.
    ///
    /// # Errors
    /// A [`CatalogError`] if the database fails.
    pub async fn repository_usage(&self, client: ClientId) -> Result<(u64, u64), CatalogError> {
        self.read(move |c| {
            const OP: &str = "repository_usage";
            let (packs, bytes): (i64, i64) = c
                .query_row(
                    "SELECT count(*), coalesce(sum(Size), 0) FROM repo_packs WHERE ClientId = ?1",
                    [&client],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(query_err(OP))?;
            Ok((to_u64("pack count", packs)?, to_u64("pack bytes", bytes)?))
        })
        .await
    }
}

/// Runs `sql` and collects its first column.
fn collect<T: FromColumn>(
    conn: &Conn,
    sql: &str,
    params: impl Params,
    op: &'static str,
) -> Result<Vec<T>, CatalogError> {
    conn.query_map(sql, params, |r| r.get(0))
        .map_err(query_err(op))
}

fn mark(
    conn: &mut Conn,
    client: &ClientId,
    live: &[BlobId],
    now: u64,
    old_before: u64,
) -> Result<MarkOutcome, CatalogError> {
    const OP: &str = "mark_unreferenced";
    let now = to_i64("now", now)?;
    let old_before = to_i64("old before", old_before)?;
    let tx = conn.immediate().map_err(query_err(OP))?;
    // A temporary table of this connection, emptied before and after: the live set can be
    // millions of IDs, too many for one statement's parameters.
    tx.execute_batch(match tx.engine() {
        Engine::Sqlite => {
            "CREATE TEMP TABLE IF NOT EXISTS prune_live (BlobId BLOB PRIMARY KEY);
             DELETE FROM prune_live;"
        }
        Engine::Postgres => {
            "CREATE TEMP TABLE IF NOT EXISTS prune_live (BlobId BYTEA PRIMARY KEY);
             DELETE FROM prune_live;"
        }
    })
    .map_err(query_err(OP))?;
    {
        let mut insert = tx
            .prepare("INSERT INTO prune_live (BlobId) VALUES (?1) ON CONFLICT DO NOTHING")
            .map_err(query_err(OP))?;
        for id in live {
            insert.execute([&id.0]).map_err(query_err(OP))?;
        }
    }
    let revived = tx
        .execute(
            "UPDATE repo_blobs SET CondemnedAt = NULL
             WHERE ClientId = ?1 AND CondemnedAt IS NOT NULL
               AND BlobId IN (SELECT BlobId FROM prune_live)",
            [client],
        )
        .map_err(query_err(OP))?;
    let condemned = tx
        .execute(
            "UPDATE repo_blobs SET CondemnedAt = ?2, Verified = 0
             WHERE ClientId = ?1 AND CondemnedAt IS NULL
               AND BlobId NOT IN (SELECT BlobId FROM prune_live)
               AND PackId IN (SELECT PackId FROM repo_packs
                              WHERE ClientId = ?1 AND StoredAt < ?3)",
            params![client, now, old_before],
        )
        .map_err(query_err(OP))?;
    tx.execute("DELETE FROM prune_live", ())
        .map_err(query_err(OP))?;
    tx.commit().map_err(query_err(OP))?;
    Ok(MarkOutcome {
        condemned: condemned as u64,
        revived: revived as u64,
    })
}

fn retire_empty(
    conn: &mut Conn,
    client: &ClientId,
    delete_after: u64,
) -> Result<EmptiedPacks, CatalogError> {
    const OP: &str = "retire_empty_packs";
    let delete_after = to_i64("delete after", delete_after)?;
    let tx = conn.immediate().map_err(query_err(OP))?;
    // No alias: SQLite's DELETE does not take one.
    let empty = "FROM repo_packs WHERE ClientId = ?1 AND NOT EXISTS
                 (SELECT 1 FROM repo_blobs b
                  WHERE b.ClientId = ?1 AND b.PackId = repo_packs.PackId)";
    let (packs, bytes): (i64, i64) = tx
        .query_row(
            &format!("SELECT count(*), coalesce(sum(Size), 0) {empty}"),
            [client],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(query_err(OP))?;
    tx.execute(
        &format!(
            "INSERT INTO repo_pack_deletions (ClientId, PackId, Size, DeleteAfter)
             SELECT ClientId, PackId, Size, ?2 {empty}
             ON CONFLICT (ClientId, PackId) DO UPDATE SET
                 Size = excluded.Size, DeleteAfter = excluded.DeleteAfter"
        ),
        params![client, delete_after],
    )
    .map_err(query_err(OP))?;
    tx.execute(&format!("DELETE {empty}"), [client])
        .map_err(query_err(OP))?;
    tx.commit().map_err(query_err(OP))?;
    Ok(EmptiedPacks {
        packs: to_u64("pack count", packs)?,
        bytes: to_u64("pack bytes", bytes)?,
    })
}

fn move_blobs(
    conn: &mut Conn,
    client: &ClientId,
    pack: &PackId,
    size: u64,
    entries: &[(PackEntry, PackId)],
    stored_at: u64,
) -> Result<u64, CatalogError> {
    const OP: &str = "move_to_repacked";
    let tx = conn.immediate().map_err(query_err(OP))?;
    tx.execute(
        "INSERT INTO repo_packs (ClientId, PackId, Size, StoredAt) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (ClientId, PackId) DO NOTHING",
        params![
            client,
            &pack.0,
            to_i64("pack size", size)?,
            to_i64("stored at", stored_at)?
        ],
    )
    .map_err(query_err(OP))?;
    tx.execute(
        "DELETE FROM repo_pack_deletions WHERE ClientId = ?1 AND PackId = ?2",
        params![client, &pack.0],
    )
    .map_err(query_err(OP))?;
    let mut moved = 0;
    {
        let mut update = tx
            .prepare(
                "UPDATE repo_blobs SET PackId = ?3, BlobOffset = ?4
                 WHERE ClientId = ?1 AND BlobId = ?2 AND PackId = ?5 AND BlobLen = ?6",
            )
            .map_err(query_err(OP))?;
        for (entry, from) in entries {
            moved += update
                .execute(params![
                    client,
                    &entry.id.0,
                    &pack.0,
                    to_i64("blob offset", entry.offset)?,
                    &from.0,
                    entry.len,
                ])
                .map_err(query_err(OP))? as u64;
        }
    }
    tx.commit().map_err(query_err(OP))?;
    Ok(moved)
}
