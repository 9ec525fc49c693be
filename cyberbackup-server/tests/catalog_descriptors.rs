#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The catalog's open descriptors are bounded and return to their post-open count after a
//! burst of concurrent reads (issue 8 item 5: the soak run saw `defensive.db` and its `-wal`
//! held open after the load). A real SQLite file in a temp directory; only descriptors of
//! this process whose target lies under that directory are counted, so other tests running
//! in the same process do not disturb the count.
//!
//! Runtime: well under a second (debug).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cyberbackup_server::Catalog;
use cyberbackup_server::catalog::{CATALOG_FILE_NAME, FileFilter};

/// Concurrent reads per burst: far more than the read pool.
const BURST: usize = 64;

/// Open descriptors of this process pointing under `dir`, by target.
fn catalog_fds(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .collect();
    found.sort();
    found
}

/// A catalog with a client and a few thousand file rows, so a listing with a name filter
/// does real work while the other reads of the burst start.
async fn seeded_catalog(dir: &Path) -> PathBuf {
    let path = dir.join(CATALOG_FILE_NAME);
    let catalog = Catalog::open(&path).await.unwrap();
    catalog
        .register_client([0xA1; 16], b"alice".to_vec(), 3)
        .await
        .unwrap();
    catalog.close().await.unwrap();
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    let tx = conn.transaction().unwrap();
    for i in 0..3000 {
        tx.execute(
            "INSERT INTO files (ID, FileName, PathName, Verified, Version, State, CreatedAt,
                                UpdatedAt, VerifiedAt, Size)
             VALUES (?1, ?2, ?3, 1, 1, 'verified', '2026-01-01T00:00:00.000Z',
                     '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', 10)",
            rusqlite::params![
                [0xA1u8; 16].as_slice(),
                format!("doc-{i}.txt").into_bytes(),
                format!("a1/doc-{i}.txt")
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    drop(conn);
    path
}

/// `BURST` reads at once: listings scanning every row, name lookups and stats.
async fn burst(catalog: &Catalog) {
    let mut tasks = Vec::new();
    for i in 0..BURST {
        let catalog = catalog.clone();
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => {
                    let filter = FileFilter {
                        verified: Some(true),
                        limit: 1000,
                        ..FileFilter::default()
                    };
                    assert_eq!(catalog.list_files(filter).await.unwrap().len(), 1000);
                }
                1 => assert_eq!(catalog.stats().await.unwrap().files, 3000),
                _ => assert_eq!(catalog.list_clients().await.unwrap().len(), 1),
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn descriptors_return_to_the_post_open_count_after_concurrent_reads() {
    let temp = tempfile::tempdir().unwrap();
    // Descriptor targets are canonical paths.
    let dir = temp.path().canonicalize().unwrap();
    let path = seeded_catalog(&dir).await;
    assert!(
        catalog_fds(&dir).is_empty(),
        "seeding left descriptors open"
    );

    let catalog = Catalog::open(&path).await.unwrap();
    let after_open = catalog_fds(&dir);
    // Sample the count while the bursts run: it must never grow past the post-open set.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (dir, stop) = (dir.clone(), Arc::clone(&stop));
        move || {
            let mut peak = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let now = catalog_fds(&dir);
                if now.len() > peak.len() {
                    peak = now;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            peak
        }
    });
    burst(&catalog).await;
    let after_first = catalog_fds(&dir);
    burst(&catalog).await;
    let after_second = catalog_fds(&dir);
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    catalog.close().await.unwrap();
    let after_close = catalog_fds(&dir);

    // The writer and the whole read pool are open from the start: database and WAL of each
    // connection plus the shared-memory index.
    let db = |fds: &[PathBuf]| fds.iter().filter(|p| **p == path).count();
    assert!(
        db(&after_open) > 1,
        "the read pool is opened with the catalog: {after_open:?}"
    );
    assert_eq!(after_first, after_open, "after the first burst");
    assert_eq!(after_second, after_open, "after the second burst");
    assert!(
        peak.len() <= after_open.len(),
        "{} descriptors during the bursts, {} after open: {peak:?}",
        peak.len(),
        after_open.len()
    );
    assert!(
        after_close.is_empty(),
        "left open by close: {after_close:?}"
    );
}
