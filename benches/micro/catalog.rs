#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The server's SQLite catalog through `cyberbackup_server::Catalog`:
//! - `catalog_insert/file_lifecycle`: one file's rows as the server writes them (begin,
//!   received, commit: three single-writer transactions with `synchronous=FULL`);
//! - `catalog_query/*`: `list_files` pages of 100 on a 100,000-row catalog (filled with
//!   direct inserts through rusqlite, on the schema the real `Catalog::open` created).

use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use cyberbackup_server::Catalog;
use cyberbackup_server::catalog::{FileFilter, FileRowId, ReceivedFile, format_rfc3339};

mod common;

const ROWS: usize = 100_000;
const CLIENTS: usize = 100;
const KINDS: [&str; 10] = [
    "report", "photo", "notes", "invoice", "mail", "scan", "draft", "budget", "slides", "backup",
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn insert(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let catalog = rt
        .block_on(Catalog::open(dir.path().join("defensive.db")))
        .unwrap();
    let client = [7u8; 16];
    rt.block_on(catalog.register_client(client, b"bench".to_vec(), 3))
        .unwrap();
    let mut group = c.benchmark_group("catalog_insert");
    let mut n = 0u64;
    group.bench_function("file_lifecycle", |b| {
        b.iter(|| {
            n += 1;
            let name = format!("file-{n}.bin");
            rt.block_on(async {
                let (row, _version) = catalog
                    .begin_file(client, name.clone().into_bytes(), name, None)
                    .await
                    .unwrap();
                catalog
                    .mark_received(
                        row,
                        ReceivedFile {
                            size: 4096,
                            ciphertext_size: 4112,
                            cksum: 1,
                            sha256: [0; 32],
                        },
                    )
                    .await
                    .unwrap();
                black_box(catalog.commit_file(row, 1).await.unwrap())
            })
        });
    });
    group.finish();
    rt.block_on(catalog.close()).unwrap();
}

fn query(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("defensive.db");
    rt.block_on(async {
        let catalog = Catalog::open(&path).await.unwrap();
        catalog.close().await.unwrap();
    });
    fill(&path);
    let catalog = rt.block_on(Catalog::open(&path)).unwrap();
    let mut group = c.benchmark_group("catalog_query");
    let filters = [
        (
            "admin_name_contains_verified_page100",
            FileFilter {
                name_contains: Some(b"invoice".to_vec()),
                verified: Some(true),
                limit: 100,
                ..FileFilter::default()
            },
        ),
        (
            "admin_name_contains_deep_page100",
            FileFilter {
                name_contains: Some(b"invoice".to_vec()),
                after_row: Some(FileRowId(90_000)),
                limit: 100,
                ..FileFilter::default()
            },
        ),
        (
            "client_listing_page100",
            FileFilter {
                client_name: Some(b"client-00050".to_vec()),
                limit: 100,
                ..FileFilter::default()
            },
        ),
    ];
    for (name, filter) in filters {
        assert_eq!(
            rt.block_on(catalog.list_files(filter.clone()))
                .unwrap()
                .len(),
            100
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(catalog.list_files(black_box(filter.clone())))
                    .unwrap()
            });
        });
    }
    group.finish();
    rt.block_on(catalog.close()).unwrap();
}

/// `ROWS` verified files of `CLIENTS` clients, interleaved, in one transaction.
fn fill(path: &std::path::Path) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    let at = format_rfc3339(UNIX_EPOCH + Duration::from_secs(1_750_000_000));
    for c in 0..CLIENTS {
        tx.execute(
            "INSERT INTO clients (ID, Name, Protocol, RegisteredAt) VALUES (?1, ?2, 3, ?3)",
            rusqlite::params![id(c).to_vec(), format!("client-{c:05}").into_bytes(), at],
        )
        .unwrap();
    }
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO files (ID, FileName, PathName, Verified, Version, State, Size,
                                    CreatedAt, UpdatedAt)
                 VALUES (?1, ?2, ?4, 1, 1, 'verified', 4096, ?3, ?3)",
            )
            .unwrap();
        for i in 0..ROWS {
            let name = format!("{}-{i:07}.dat", KINDS[i % KINDS.len()]);
            stmt.execute(rusqlite::params![
                id(i % CLIENTS).to_vec(),
                name.as_bytes(),
                at,
                name
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn id(c: usize) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(c as u64 + 1).to_be_bytes());
    id
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = insert, query
}
criterion_main!(benches);
