//! Corruption of a stored repository (issue 19, item 2): the in-process server (real SQLite
//! catalog, real local backend) and an honest client (the client library) that backed up
//! a tree twice (two snapshots sharing a 1.5 MB file). With the server stopped, one thing is
//! damaged on its disk:
//!
//! * a pack: a byte flipped, truncated, deleted, or two packs' contents swapped;
//! * a blob index row (blob → pack, offset, length) in the catalog, with `rusqlite` on the
//!   real SQLite file: the offset moved, the length cut, the row pointed at another pack,
//!   the row deleted;
//! * a snapshot object (its envelope) on disk, a byte flipped.
//!
//! Each case must be detected: pack damage by the server's scrub (`scrub_now`, the
//! `cyberbackup-server scrub` command's cycle), everything by the client's `check
//! --read-data`, with a line naming the affected snapshots and the file path (or, for an
//! envelope, the snapshot); and a restore of each snapshot must never leave a wrong byte
//! under a final name: every file it wrote is byte-identical to the original, and one
//! whose content cannot be verified is reported by path and is not there. Runtime: a few
//! seconds.
#![allow(
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cyberbackup_client::snapshot::{CheckReport, RestoreFilter};
use cyberbackup_core::names::ClientId;
use cyberbackup_server::ServerConfig;
use cyberbackup_server::faults::Faults;
use support::{RepoClient, files_below, pattern, read_tree, start_with, test_config};

/// The big file both snapshots hold, whose blobs the cases damage.
const BIG: &str = "sub/big.bin";

#[derive(Debug, Clone, Copy)]
enum Damage {
    FlipPackByte,
    TruncatePack,
    DeletePack,
    SwapPacks,
    ShiftIndexOffset,
    CutIndexLength,
    IndexOtherPack,
    DeleteIndexRow,
    FlipEnvelopeByte,
}

impl Damage {
    /// Whether the server's scrub must find it (damage to a pack object).
    fn scrub_sees_it(self) -> bool {
        matches!(
            self,
            Self::FlipPackByte | Self::TruncatePack | Self::DeletePack | Self::SwapPacks
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_damage_is_detected_and_restore_writes_nothing_wrong() {
    let cases = [
        Damage::FlipPackByte,
        Damage::TruncatePack,
        Damage::DeletePack,
        Damage::SwapPacks,
        Damage::ShiftIndexOffset,
        Damage::CutIndexLength,
        Damage::IndexOtherPack,
        Damage::DeleteIndexRow,
        Damage::FlipEnvelopeByte,
    ];
    for damage in cases {
        run_case(damage).await;
    }
    eprintln!(
        "repository corruption: {} kinds of damage detected",
        cases.len()
    );
}

async fn run_case(damage: Damage) {
    let ctx = format!("{damage:?}");
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        min_free_disk_mb: 0,
        // The test runs the scrub itself, once the damage is done.
        scrub_bytes_per_sec: 0,
        ..test_config(&dir.path().join("data"))
    };
    let data = config.data_dir.clone();
    let server = start_with(config.clone(), Faults::none()).await;
    let client = RepoClient::new(dir.path(), server.addr, "alice", b"corruption-host");
    let tree = dir.path().join("src");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join(BIG), pattern(1_500_000, 7)).unwrap();
    std::fs::write(tree.join("a.txt"), b"first version of a").unwrap();
    let first_files = read_tree(&tree);
    let first = client.backup(tree.clone(), "first").await.unwrap();
    std::fs::write(tree.join("a.txt"), b"second version of a, longer").unwrap();
    std::fs::write(tree.join("new.txt"), pattern(20_000, 9)).unwrap();
    let second_files = read_tree(&tree);
    let second = client.backup(tree.clone(), "second").await.unwrap();
    let probe = client.connect().await.unwrap();
    let alice = probe.client_id().unwrap();
    probe.close().await.unwrap();
    server.stop().await;

    let big_pack = damage_it(damage, &data, alice, &first);

    if damage.scrub_sees_it() {
        let (report, corrupt) = cyberbackup_server::scrub::scrub_now(&config, None, None)
            .await
            .unwrap();
        let big_pack = big_pack.as_deref().unwrap();
        assert!(
            report.damaged >= 1,
            "{ctx}: the scrub found nothing: {report:?}"
        );
        assert!(
            corrupt
                .iter()
                .any(|c| c.object == big_pack && !c.reason.is_empty()),
            "{ctx}: the scrub did not mark pack {big_pack}: {corrupt:?}"
        );
    }

    let server = start_with(config.clone(), Faults::none()).await;
    let client = client.through(server.addr);
    let report = client.check_read_data().await.unwrap();
    assert!(
        !report.is_ok(),
        "{ctx}: check --read-data found nothing: {report:?}"
    );
    let source = tree.canonicalize().unwrap();
    let big_path = source.join(BIG).display().to_string();
    let affected: &[&str] = match damage {
        Damage::FlipEnvelopeByte => &[first.as_str()],
        _ => &[first.as_str(), second.as_str()],
    };
    // The big file, or the directory whose listing is lost with it (the pack may hold
    // trees too: then nothing below that directory can be named).
    let named_paths: Vec<String> = source
        .join(BIG)
        .ancestors()
        .map(|p| format!(": {}:", p.display()))
        .collect();
    for snapshot in affected {
        let short = &snapshot[..8];
        let named = |line: &&String| {
            line.starts_with(&format!("snapshot {short}"))
                && (matches!(damage, Damage::FlipEnvelopeByte)
                    || named_paths.iter().any(|p| line.contains(p.as_str())))
        };
        assert!(
            report.errors.iter().any(|line| named(&line)),
            "{ctx}: no line of check names snapshot {short} and {big_path} (or a directory \
             above it): {:#?}",
            report.errors
        );
    }
    if matches!(damage, Damage::TruncatePack | Damage::DeletePack) {
        // A pack the backend no longer has whole is damaged storage, not a passing failure
        // (STORAGE would tell the client to retry).
        assert!(
            report.errors.iter().any(|l| l.contains("[CORRUPT (13)]")),
            "{ctx}: no CORRUPT refusal: {:#?}",
            report.errors
        );
    }
    assert_no_wrong_byte(&ctx, &client, &first, &source, &first_files).await;
    assert_no_wrong_byte(&ctx, &client, &second, &source, &second_files).await;
    server.stop().await;
    eprintln!("{ctx}: {}", summary(&report));
}

/// Restores `snapshot` into a fresh directory: every file written is the original, and a
/// failed restore names the big file, which is not there.
async fn assert_no_wrong_byte(
    ctx: &str,
    client: &RepoClient,
    snapshot: &str,
    source: &Path,
    original: &BTreeMap<String, Vec<u8>>,
) {
    let target = tempfile::tempdir().unwrap();
    let outcome = match client.try_open().await {
        Ok(mut repo) => {
            let outcome = repo
                .restore(snapshot, b"/", target.path(), &RestoreFilter::default())
                .await;
            let _ = repo.into_remote().close().await;
            outcome
        }
        Err(err) => Err(err),
    };
    let restored_root = target.path().join(source.strip_prefix("/").unwrap());
    let restored = read_tree(&restored_root);
    for (path, content) in &restored {
        assert!(
            !path.rsplit('/').next().unwrap().starts_with(".cb-restore-"),
            "{ctx}: a restore temp file was left: {path}"
        );
        assert!(
            original.get(path) == Some(content),
            "{ctx}: {path} restored with wrong bytes ({} bytes)",
            content.len()
        );
    }
    match outcome {
        Ok(_) => assert!(
            restored.contains_key(BIG),
            "{ctx}: the restore of {snapshot} succeeded without {BIG}"
        ),
        Err(err) => {
            assert!(
                !restored.contains_key(BIG),
                "{ctx}: {BIG} restored despite {err}"
            );
            // The file, a directory above it whose listing is lost, or the snapshot.
            let message = err.to_string();
            let names_a_path = source
                .join(BIG)
                .ancestors()
                .any(|p| message.contains(&format!("{}: ", p.display())));
            assert!(
                names_a_path || message.contains(&snapshot[..8]),
                "{ctx}: the restore error names neither the file nor the snapshot: {message}"
            );
        }
    }
}

/// Does the damage with the server stopped; returns the pack (hex) it damaged, if one.
fn damage_it(damage: Damage, data: &Path, client: ClientId, first: &str) -> Option<String> {
    let repo = data.join("repository").join(client.to_hex());
    let db = rusqlite::Connection::open(data.join("defensive.db")).unwrap();
    // The pack and row of the big file's largest blob: no other blob of the tree is as long.
    let (blob, pack, offset, len): (Vec<u8>, Vec<u8>, i64, i64) = db
        .query_row(
            "SELECT BlobId, PackId, BlobOffset, BlobLen FROM repo_blobs
             WHERE ClientId = ?1 AND Class = 1 ORDER BY BlobLen DESC LIMIT 1",
            [client.0.to_vec()],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap();
    let pack_hex = hex::encode(&pack);
    let pack_path = pack_file(&repo, &pack_hex);
    let other_pack: Vec<u8> = db
        .query_row(
            "SELECT PackId FROM repo_packs WHERE ClientId = ?1 AND PackId != ?2 LIMIT 1",
            [client.0.to_vec(), pack],
            |row| row.get(0),
        )
        .unwrap();
    let update = |sql: &str| {
        let changed = db.execute(sql, [client.0.to_vec(), blob.clone()]).unwrap();
        assert_eq!(changed, 1, "{sql}");
    };
    match damage {
        Damage::FlipPackByte => {
            let mut bytes = std::fs::read(&pack_path).unwrap();
            let at = usize::try_from(offset + len / 2).unwrap();
            bytes[at] ^= 0x10;
            rewrite(&pack_path, &bytes);
        }
        Damage::TruncatePack => {
            let bytes = std::fs::read(&pack_path).unwrap();
            rewrite(&pack_path, &bytes[..bytes.len() / 2]);
        }
        Damage::DeletePack => std::fs::remove_file(&pack_path).unwrap(),
        Damage::SwapPacks => {
            let other_path = pack_file(&repo, &hex::encode(&other_pack));
            let (a, b) = (
                std::fs::read(&pack_path).unwrap(),
                std::fs::read(&other_path).unwrap(),
            );
            rewrite(&pack_path, &b);
            rewrite(&other_path, &a);
        }
        Damage::ShiftIndexOffset => update(
            "UPDATE repo_blobs SET BlobOffset = BlobOffset + 1 WHERE ClientId = ?1 AND BlobId = ?2",
        ),
        Damage::CutIndexLength => update(
            "UPDATE repo_blobs SET BlobLen = BlobLen - 1 WHERE ClientId = ?1 AND BlobId = ?2",
        ),
        Damage::IndexOtherPack => {
            let changed = db
                .execute(
                    "UPDATE repo_blobs SET PackId = ?3 WHERE ClientId = ?1 AND BlobId = ?2",
                    [client.0.to_vec(), blob.clone(), other_pack],
                )
                .unwrap();
            assert_eq!(changed, 1);
        }
        Damage::DeleteIndexRow => {
            update("DELETE FROM repo_blobs WHERE ClientId = ?1 AND BlobId = ?2");
        }
        Damage::FlipEnvelopeByte => {
            let path = repo.join("snapshots").join(first);
            let mut bytes = std::fs::read(&path).unwrap();
            let at = bytes.len() / 2;
            bytes[at] ^= 0x01;
            rewrite(&path, &bytes);
        }
    }
    db.close().unwrap();
    Some(pack_hex)
}

fn pack_file(repo: &Path, pack_hex: &str) -> PathBuf {
    repo.join("packs").join(&pack_hex[..2]).join(pack_hex)
}

/// Replaces a stored object's bytes (the backend keeps objects read-only).
fn rewrite(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn summary(report: &CheckReport) -> String {
    format!(
        "{} errors, {} damaged paths; first: {}",
        report.errors.len(),
        report.damaged.len(),
        report.errors.first().map_or("", String::as_str)
    )
}

/// `cyberbackup-server catalog rebuild` with the old catalog still readable brings the
/// repository back (config and key objects and devices from the old catalog, snapshots from
/// their objects, packs indexed by the next start-up): both snapshots are listed, restore
/// byte for byte and pass `check --read-data`. With the catalog lost altogether, the
/// repository cannot come back (its config and key objects were only there), but start-up
/// recovery keeps its packs and snapshot objects for the operator instead of deleting them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_rebuild_brings_the_repository_back_or_keeps_its_objects() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        min_free_disk_mb: 0,
        scrub_bytes_per_sec: 0,
        ..test_config(&dir.path().join("data"))
    };
    let data = config.data_dir.clone();
    let server = start_with(config.clone(), Faults::none()).await;
    let client = RepoClient::new(dir.path(), server.addr, "alice", b"rebuild-host");
    let tree = dir.path().join("src");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a.bin"), pattern(300_000, 3)).unwrap();
    let first_files = read_tree(&tree);
    let first = client.backup(tree.clone(), "first").await.unwrap();
    std::fs::write(tree.join("b.txt"), b"second backup").unwrap();
    let second_files = read_tree(&tree);
    let second = client.backup(tree.clone(), "second").await.unwrap();
    server.stop().await;
    let objects = files_below(&data.join("repository"));

    let report = cyberbackup_server::catalog::rebuild::rebuild(&config)
        .await
        .unwrap();
    assert_eq!((report.repositories, report.snapshots), (1, 2), "{report}");
    // The rebuilt snapshot rows keep the envelopes' content sizes (the dashboard's ratios).
    let catalog = cyberbackup_server::Catalog::open(data.join("defensive.db"))
        .await
        .unwrap();
    let alice = catalog.list_clients().await.unwrap().remove(0).id;
    let mut sizes: Vec<Option<u64>> = catalog
        .list_snapshots(alice)
        .await
        .unwrap()
        .iter()
        .map(|s| s.total_bytes)
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [Some(300_000), Some(300_013)]);
    drop(catalog);
    let server = start_with(config.clone(), Faults::none()).await;
    let client = client.through(server.addr);
    let source = tree.canonicalize().unwrap();
    for (id, files) in [(&first, &first_files), (&second, &second_files)] {
        let restored = client.restore_tree(id, &source).await.unwrap();
        assert!(&restored == files, "snapshot {id} after the rebuild");
    }
    let check = client.check_read_data().await.unwrap();
    assert!(check.is_ok() && check.snapshots == 2, "{check:?}");
    server.stop().await;

    // The catalog lost altogether: nothing to salvage the repository from.
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("defensive.db")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let report = cyberbackup_server::catalog::rebuild::rebuild(&config)
        .await
        .unwrap();
    assert_eq!(report.repositories, 0, "{report}");
    let server = start_with(config.clone(), Faults::none()).await;
    server.stop().await;
    assert_eq!(
        files_below(&data.join("repository")),
        objects,
        "start-up recovery deleted the objects of a repository the catalog does not know"
    );
}
