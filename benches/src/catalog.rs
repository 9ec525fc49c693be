//! `catalog`: a catalog of N file rows created through `cyberbackup_server::Catalog` (so the
//! schema and migrations are the server's own), filled with direct rusqlite inserts in one
//! transaction, then the admin and per-client listings timed through `Catalog::list_files`.

use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context;
use cyberbackup_server::Catalog;
use cyberbackup_server::catalog::{FileFilter, FileRowId, format_rfc3339};
use rusqlite::params;

use crate::report::{Section, Target, Verdict, median};

/// Files per client in the generated catalog.
const FILES_PER_CLIENT: usize = 1000;
/// Timed runs per query; the median is reported.
const RUNS: usize = 20;
/// Page size of every listing.
const PAGE: u32 = 100;
/// Target: milliseconds per page.
const PAGE_TARGET_MS: f64 = 10.0;
/// File name stems; one in ten names contains each.
const KINDS: [&str; 10] = [
    "report", "photo", "notes", "invoice", "mail", "scan", "draft", "budget", "slides", "backup",
];

/// Fills the catalog at `path` (already migrated) with `rows` files of `rows / 1000`
/// clients, interleaved as uploads from many clients would be: 98 % verified, 1 %
/// discarded, 1 % still receiving.
fn fill(path: &Path, rows: usize) -> anyhow::Result<usize> {
    let mut conn = rusqlite::Connection::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let clients = rows.div_ceil(FILES_PER_CLIENT).max(1);
    let base = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let tx = conn.transaction()?;
    {
        let mut insert_client = tx.prepare(
            "INSERT INTO clients (ID, Name, PublicKey, LastSeen, AESKey, Protocol, RegisteredAt)
             VALUES (?1, ?2, ?3, ?4, NULL, 3, ?4)",
        )?;
        for c in 0..clients {
            let at = format_rfc3339(base);
            insert_client.execute(params![
                client_id(c).to_vec(),
                client_name(c).into_bytes(),
                vec![0x30u8; 160],
                at
            ])?;
        }
        let mut insert_file = tx.prepare(
            "INSERT INTO files (ID, FileName, PathName, Verified, Version, State, Size,
                                CiphertextSize, Cksum, Sha256, CreatedAt, UpdatedAt, VerifiedAt,
                                TempPath)
             VALUES (?1, ?2, ?11, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, NULL)",
        )?;
        let sha = [0xabu8; 32];
        for i in 0..rows {
            let (verified, state) = match i % 100 {
                0 => (0, "receiving"),
                1 => (0, "discarded"),
                _ => (1, "verified"),
            };
            let name = file_name(i);
            let at = format_rfc3339(base + Duration::from_secs(30 * i as u64));
            let size = 4096 + i64::try_from(i % 1_000_000).unwrap_or(0);
            insert_file.execute(params![
                client_id(i % clients).to_vec(),
                name.as_bytes(),
                verified,
                state,
                size,
                size / 16 * 16 + 16,
                i64::try_from((i as u64).wrapping_mul(2_654_435_761) % (1 << 32)).unwrap_or(0),
                sha.to_vec(),
                at,
                (verified == 1).then_some(at.clone()),
                name,
            ])?;
        }
    }
    tx.commit()?;
    Ok(clients)
}

fn client_id(c: usize) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(c as u64 + 1).to_be_bytes());
    id[8..].copy_from_slice(&0x00c0_ffee_u64.to_be_bytes());
    id
}

fn client_name(c: usize) -> String {
    format!("client-{c:05}")
}

fn file_name(i: usize) -> String {
    format!("{}-{i:07}.dat", KINDS[i % KINDS.len()])
}

/// One timed listing.
struct Query {
    label: String,
    filter: FileFilter,
    expect_full_page: bool,
}

/// Runs the scenario with `rows` file rows.
pub(crate) fn run(work: &Path, rows: usize) -> Section {
    let mut section = Section::new("catalog");
    if let Err(error) = run_inner(work, rows, &mut section) {
        section.failures.push(format!("{error:#}"));
    }
    section
}

fn run_inner(work: &Path, rows: usize, section: &mut Section) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("catalog-")
        .tempdir_in(work)
        .context("cannot create a temporary directory")?;
    let path = dir.path().join("defensive.db");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let catalog = Catalog::open(&path).await?;
        catalog.close().await
    })?;
    let fill_start = Instant::now();
    let clients = fill(&path, rows)?;
    let fill_secs = fill_start.elapsed().as_secs_f64();
    let db_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);

    let deep = FileRowId(i64::try_from(rows / 10 * 9).unwrap_or(i64::MAX));
    let one_client = client_name(clients / 2).into_bytes();
    let rare = format!("-{:07}.", rows - 1).into_bytes();
    let queries = [
        Query {
            label: "admin: verified files named *invoice*, first page".into(),
            filter: FileFilter {
                name_contains: Some(b"invoice".to_vec()),
                verified: Some(true),
                limit: PAGE,
                ..FileFilter::default()
            },
            expect_full_page: true,
        },
        Query {
            label: "admin: verified files named *invoice*, page at 90 % (keyset)".into(),
            filter: FileFilter {
                name_contains: Some(b"invoice".to_vec()),
                verified: Some(true),
                after_row: Some(deep),
                limit: PAGE,
                ..FileFilter::default()
            },
            expect_full_page: true,
        },
        Query {
            label: "client listing: one client's files, first page".into(),
            filter: FileFilter {
                client_name: Some(one_client.clone()),
                limit: PAGE,
                ..FileFilter::default()
            },
            expect_full_page: rows >= FILES_PER_CLIENT,
        },
        Query {
            label: "client listing: one client's files, page at 90 %".into(),
            filter: FileFilter {
                client_name: Some(one_client),
                after_row: Some(deep),
                limit: PAGE,
                ..FileFilter::default()
            },
            expect_full_page: rows >= 10 * FILES_PER_CLIENT,
        },
        Query {
            label: "admin: name filter matching one row (worst case for a scan)".into(),
            filter: FileFilter {
                name_contains: Some(rare),
                limit: PAGE,
                ..FileFilter::default()
            },
            expect_full_page: false,
        },
    ];
    section.row(
        "rows / clients",
        format!("{rows} files of {clients} clients"),
    );
    section.row(
        "generation (one transaction, not timed below)",
        format!("{fill_secs:.1} s, {}", crate::data::human(db_bytes)),
    );
    let mut json = Vec::new();
    let timings = runtime.block_on(async {
        let catalog = Catalog::open(&path).await?;
        let mut out = Vec::new();
        for query in &queries {
            // One warm-up run (statement cache, page cache), then the timed runs.
            let first = catalog.list_files(query.filter.clone()).await?;
            let mut ms = Vec::with_capacity(RUNS);
            for _ in 0..RUNS {
                let start = Instant::now();
                let page = catalog.list_files(query.filter.clone()).await?;
                ms.push(start.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box(page);
            }
            out.push((first.len(), ms));
        }
        catalog.close().await?;
        Ok::<_, cyberbackup_server::CatalogError>(out)
    })?;
    for (query, (returned, ms)) in queries.iter().zip(timings) {
        let med = median(&ms);
        section.row(
            format!("{} ({returned} rows)", query.label),
            format!("{med:.2} ms (median of {RUNS})"),
        );
        if query.expect_full_page && returned != PAGE as usize {
            section.failures.push(format!(
                "{}: returned {returned} rows, expected a full page of {PAGE}",
                query.label
            ));
        }
        section.targets.push(Target::new(
            format!("catalog {rows} rows: {}", query.label),
            "≤ 10 ms per page",
            format!("{med:.2} ms"),
            Verdict::of(med <= PAGE_TARGET_MS),
        ));
        json.push(serde_json::json!({
            "query": query.label,
            "rows_returned": returned,
            "median_ms": med,
            "runs_ms": ms,
        }));
    }
    section.data = serde_json::json!({
        "rows": rows,
        "clients": clients,
        "fill_secs": fill_secs,
        "db_bytes": db_bytes,
        "queries": json,
    });
    Ok(())
}
