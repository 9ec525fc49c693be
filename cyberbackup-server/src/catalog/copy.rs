//! `cyberbackup-server catalog copy --to LOCATION`: the catalog's rows copied into another
//! catalog, typically the single node's SQLite file into the PostgreSQL database of the
//! scale-out layout (docs/deployment.md, "From one node to several"). Both sides are brought
//! to this server's schema first; the target must be empty, and gets everything in one
//! transaction, so an interrupted copy leaves it empty and can simply be run again.
//!
//! The columns come from the target's own table definitions (the same on both engines, see
//! the schema module), so a table gains its new columns here without a list to keep in step.

use super::error::query_err;
use super::sql::{Conn, Engine, Value};
use super::{CatalogError, CatalogLocation, connect_writer, schema};

/// Tables in an order that satisfies their foreign keys. `repo_quota_reservations` is not
/// copied: it holds only puts in flight, and a copy runs with the server stopped.
const TABLES: &[&str] = &[
    "clients",
    "files",
    "v4_uploads",
    "enrollment_tokens",
    "v4_devices",
    "repositories",
    "repo_keys",
    "repo_packs",
    "repo_blobs",
    "repo_snapshots",
    "repo_snapshot_refs",
    "repo_pack_deletions",
    "repo_forgotten",
];

/// What [`copy`] copied: rows per table, parents before the tables that refer to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// `(table, rows)`.
    pub tables: Vec<(&'static str, u64)>,
}

impl std::fmt::Display for CopyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (table, rows) in &self.tables {
            writeln!(f, "{table}: {rows} rows")?;
        }
        Ok(())
    }
}

/// Copies every row of the catalog at `from` into the empty catalog at `to` (run with the
/// server stopped, so that nothing changes meanwhile).
///
/// # Errors
/// [`CatalogError::Open`] / [`CatalogError::Connect`] / [`CatalogError::Migrate`] for either
/// side, [`CatalogError::TargetNotEmpty`] when `to` already holds clients, or the query that
/// failed (nothing is committed then).
pub async fn copy(from: CatalogLocation, to: CatalogLocation) -> Result<CopyReport, CatalogError> {
    tokio::task::spawn_blocking(move || copy_blocking(&from, &to))
        .await
        .map_err(CatalogError::Task)?
}

fn copy_blocking(from: &CatalogLocation, to: &CatalogLocation) -> Result<CopyReport, CatalogError> {
    const OP: &str = "catalog copy";
    let mut source = connect_writer(from)?;
    schema::migrate(&mut source)?;
    let mut target = connect_writer(to)?;
    schema::migrate(&mut target)?;
    let clients: i64 = target
        .query_row("SELECT COUNT(*) FROM clients", (), |r| r.get(0))
        .map_err(query_err(OP))?;
    if clients > 0 {
        return Err(CatalogError::TargetNotEmpty {
            target: to.to_string(),
            clients,
        });
    }
    let tx = target.immediate().map_err(query_err(OP))?;
    let mut tables = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let columns = columns_of(&tx, table)?;
        let list = columns.join(", ");
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({list}) VALUES ({})",
            placeholders.join(", ")
        );
        let mut rows = 0u64;
        let mut failed = None;
        source
            .query_each(&format!("SELECT {list} FROM {table}"), (), |row| {
                let values = (0..columns.len())
                    .map(|i| row.get::<_, Value>(i))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Err(err) = tx.execute(&insert, values) {
                    failed = Some(err);
                    return Ok(false);
                }
                rows += 1;
                Ok(true)
            })
            .map_err(query_err(OP))?;
        if let Some(err) = failed {
            return Err(query_err(OP)(err));
        }
        tables.push((*table, rows));
    }
    if tx.engine() == Engine::Postgres {
        // Rows came with their ids: the identity goes on after the highest.
        tx.execute_batch(
            "SELECT setval(pg_get_serial_sequence('files', 'rowid'),
                           COALESCE((SELECT MAX(RowId) FROM files), 0) + 1, false)",
        )
        .map_err(query_err(OP))?;
    }
    tx.commit().map_err(query_err(OP))?;
    Ok(CopyReport { tables })
}

/// The columns of `table` in the target, in their defined order.
fn columns_of(conn: &Conn, table: &str) -> Result<Vec<String>, CatalogError> {
    let op = "catalog copy: read the columns";
    match conn.engine() {
        Engine::Postgres => conn.query_map(
            "SELECT column_name FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = ?1
             ORDER BY ordinal_position",
            [table],
            |r| r.get(0),
        ),
        Engine::Sqlite => conn.query_map(
            "SELECT name FROM pragma_table_info(?1) ORDER BY cid",
            [table],
            |r| r.get(0),
        ),
    }
    .map_err(query_err(op))
}
