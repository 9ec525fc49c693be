//! `service`: one, two and three server processes sharing one PostgreSQL catalog, one S3
//! bucket (moto_server) and one v4 key behind a round-robin proxy (docs/deployment.md,
//! "Several servers, one service"). For each count, `--clients` real client processes back up
//! a tree of `--size` incompressible bytes each, all at once, through the proxy: the
//! aggregate throughput, and then what the stored data costs — objects in the bucket and rows
//! in the catalog per stored GiB. PostgreSQL and moto_server are started here (the tests'
//! own harnesses); without them the scenario is skipped with the install command. Only run
//! when named.

#[path = "../../cyberbackup-server/tests/postgres_server/mod.rs"]
mod postgres_server;
#[path = "../../cyberbackup-server/tests/round_robin/mod.rs"]
mod round_robin;
#[path = "../../cyberbackup-server/tests/s3_server/mod.rs"]
mod s3_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use cyberbackup_server::backend::Backend;
use cyberbackup_server::backend::s3::S3Backend;
use futures_util::TryStreamExt;

use crate::data;
use crate::report::Section;
use crate::server::{Binaries, ServerProcess, ServerSettings};

/// Server counts measured, in order.
const SERVER_COUNTS: [usize; 3] = [1, 2, 3];
/// Bytes in a GiB.
const GIB: f64 = (1u64 << 30) as f64;

/// Runs the scenario: `clients` clients of `size` bytes each, against 1, 2 and 3 servers.
pub(crate) fn run(
    bins: &Binaries,
    work: &Path,
    clients: usize,
    size: u64,
) -> (Section, Vec<String>) {
    let mut section = Section::new("service");
    let mut notes = Vec::new();
    let Some(pg) = postgres_server::PgServer::start_or_skip() else {
        notes.push(format!(
            "service: skipped (PostgreSQL not installed; {})",
            postgres_server::INSTALL
        ));
        return (section, notes);
    };
    let Some(s3) = s3_server::S3Server::start_or_skip() else {
        notes.push(format!(
            "service: skipped (moto_server not installed; {})",
            s3_server::INSTALL
        ));
        return (section, notes);
    };
    if let Err(error) = run_inner(bins, work, &pg, &s3, clients, size, &mut section) {
        section.failures.push(format!("{error:#}"));
    }
    (section, notes)
}

/// One server count's figures.
#[derive(Debug, serde::Serialize)]
struct Run {
    servers: usize,
    wall_secs: f64,
    mb_per_s: f64,
    stored_bytes: u64,
    objects: u64,
    catalog_rows: u64,
    catalog_bytes: u64,
    rows_by_table: Vec<TableCost>,
}

fn run_inner(
    bins: &Binaries,
    work: &Path,
    pg: &postgres_server::PgServer,
    s3: &s3_server::S3Server,
    clients: usize,
    size: u64,
    section: &mut Section,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("service-")
        .tempdir_in(work)
        .context("cannot create a temporary directory")?;
    let sources: Vec<PathBuf> = (0..clients)
        .map(|i| {
            let source = dir.path().join(format!("tree-{i}"));
            std::fs::create_dir_all(&source)?;
            data::write_file(&source.join("data.bin"), size, 7000 + i as u64)?;
            Ok(source)
        })
        .collect::<anyhow::Result<_>>()?;

    let mut runs = Vec::new();
    for servers in SERVER_COUNTS {
        let run = run_with(bins, dir.path(), pg, s3, servers, &sources, size)?;
        runs.push(run);
    }

    section.row(
        "clients × tree (incompressible)",
        format!("{clients} × {}, all at once", data::human(size)),
    );
    let one = runs.first().map_or(1.0, |r| r.mb_per_s);
    for run in &runs {
        section.row(
            format!("{} server(s): throughput", run.servers),
            format!(
                "{:.0} MB/s ({:.2} × one server), {:.1} s",
                run.mb_per_s,
                run.mb_per_s / one,
                run.wall_secs
            ),
        );
    }
    if let Some(last) = runs.last() {
        let gib = last.stored_bytes as f64 / GIB;
        section.row(
            "per stored GiB: objects in the bucket",
            format!(
                "{:.1} ({} objects, {})",
                last.objects as f64 / gib,
                last.objects,
                data::human(last.stored_bytes)
            ),
        );
        section.row(
            "per stored GiB: catalog rows",
            format!(
                "{:.0} ({} rows)",
                last.catalog_rows as f64 / gib,
                last.catalog_rows
            ),
        );
        section.row(
            "per stored GiB: catalog bytes (tables and indexes)",
            data::human(per_gib(last.catalog_bytes, last.stored_bytes)),
        );
        let tables: Vec<String> = last
            .rows_by_table
            .iter()
            .filter(|t| t.rows > 0)
            .map(|t| format!("{} {} ({})", t.table, t.rows, data::human(t.bytes)))
            .collect();
        section.row("catalog rows by table", tables.join(", "));
    }
    section.data = serde_json::json!({
        "clients": clients,
        "bytes_per_client": size,
        "runs": runs,
    });
    Ok(())
}

/// `servers` servers on a fresh database and bucket prefix, every client backing up once.
fn run_with(
    bins: &Binaries,
    root: &Path,
    pg: &postgres_server::PgServer,
    s3: &s3_server::S3Server,
    servers: usize,
    sources: &[PathBuf],
    size: u64,
) -> anyhow::Result<Run> {
    let run_dir = root.join(format!("servers-{servers}"));
    std::fs::create_dir_all(&run_dir)?;
    // No password on the test server: the URL prints whole.
    let catalog = pg.database().to_string();
    let prefix = format!("service-{servers}");
    let key = run_dir.join("server-key-v4.json");
    let settings = s3.settings(&prefix);
    let shared = format!(
        "catalog = \"{catalog}\"\nidentity_key_file = {key:?}\n\n[storage]\nbackend = \"s3\"\n\
         bucket = \"{}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nprefix = \"{prefix}\"\n\
         access_key_id = \"{}\"\nsecret_access_key = \"{}\"\nallow_http = true\n",
        settings.bucket,
        settings.endpoint.unwrap_or_default(),
        s3_server::ACCESS_KEY,
        s3_server::SECRET_KEY,
    );
    let server_settings = ServerSettings {
        registrations_per_minute: 0,
        extra: shared,
        ..ServerSettings::default()
    };
    // One at a time: the first creates the key and migrates the catalog.
    let mut processes = Vec::new();
    for index in 0..servers {
        let dir = run_dir.join(format!("server-{index}"));
        std::fs::create_dir_all(&dir)?;
        processes.push(ServerProcess::start(&bins.server, &dir, &server_settings)?);
    }
    let proxy = round_robin::RoundRobin::start(processes.iter().map(ServerProcess::addr).collect())
        .context("cannot start the round-robin proxy")?;

    let start = Instant::now();
    let children: Vec<_> = sources
        .iter()
        .enumerate()
        .map(|(i, source)| {
            let home = run_dir.join(format!("client-{i}"));
            std::fs::create_dir_all(&home)?;
            Command::new(&bins.client)
                .current_dir(&home)
                .env_remove("CYBERBACKUP_PASSWORD")
                .env("HOME", &home)
                .env("XDG_CONFIG_HOME", home.join("config"))
                .args(["backup", "--quiet"])
                .arg(source)
                .args(["--server", &proxy.address.to_string()])
                .args(["--name", &format!("bench-{i}")])
                .args(["--v4-identity", "identity-v4.json"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("cannot start the client")
        })
        .collect::<anyhow::Result<_>>()?;
    for child in children {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "a backup through {servers} server(s) failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let wall = start.elapsed().as_secs_f64();
    for process in processes {
        process.stop()?;
    }

    let (objects, stored_bytes) = bucket_totals(s3, &prefix)?;
    let rows_by_table = catalog_rows(&catalog)?;
    let total = size as f64 * sources.len() as f64;
    Ok(Run {
        servers,
        wall_secs: wall,
        mb_per_s: total / wall / 1e6,
        stored_bytes,
        objects,
        catalog_rows: rows_by_table.iter().map(|t| t.rows).sum(),
        catalog_bytes: rows_by_table.iter().map(|t| t.bytes).sum(),
        rows_by_table,
    })
}

/// Objects and bytes under the bucket's `prefix`.
fn bucket_totals(s3: &s3_server::S3Server, prefix: &str) -> anyhow::Result<(u64, u64)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let backend = Arc::new(S3Backend::new(&s3.config(Some(prefix)))?);
        let listed: Vec<_> = backend.list(None).try_collect().await?;
        Ok((
            listed.len() as u64,
            listed.iter().map(|o| o.len_bytes).sum(),
        ))
    })
}

/// Rows and bytes of every table of the catalog at `url`.
fn catalog_rows(url: &str) -> anyhow::Result<Vec<TableCost>> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)
        .with_context(|| format!("cannot connect to {url}"))?;
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' ORDER BY table_name",
            &[],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut rows = Vec::new();
    for table in tables {
        let row = client.query_one(
            &format!("SELECT count(*), pg_total_relation_size('\"{table}\"') FROM \"{table}\""),
            &[],
        )?;
        let (count, bytes): (i64, i64) = (row.get(0), row.get(1));
        rows.push(TableCost {
            table,
            rows: u64::try_from(count).unwrap_or(0),
            bytes: u64::try_from(bytes).unwrap_or(0),
        });
    }
    Ok(rows)
}

/// One catalog table's rows and its size on disk with its indexes.
#[derive(Debug, serde::Serialize)]
struct TableCost {
    table: String,
    rows: u64,
    bytes: u64,
}

/// `amount` scaled to one GiB of `stored` bytes, in whole units (0 when nothing is stored).
fn per_gib(amount: u64, stored: u64) -> u64 {
    if stored == 0 {
        return 0;
    }
    let scaled = u128::from(amount) * (1u128 << 30) / u128::from(stored);
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::per_gib;

    #[test]
    fn per_gib_scales_to_one_stored_gib() {
        assert_eq!(per_gib(1 << 20, 1 << 30), 1 << 20);
        assert_eq!(per_gib(3, 1 << 29), 6);
        assert_eq!(per_gib(5, 0), 0);
    }
}
