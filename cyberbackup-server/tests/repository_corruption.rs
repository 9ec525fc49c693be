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
//!
//! The same damage to objects (packs flipped, truncated, deleted, swapped; an envelope
//! flipped) is then done to a repository on the S3 backend, in the bucket of a real S3 server
//! process (moto), with the same checks.
#![allow(
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod s3_server;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use cyberbackup_client::snapshot::{CheckReport, RestoreFilter};
use cyberbackup_core::names::ClientId;
use cyberbackup_server::ServerConfig;
use cyberbackup_server::backend::config::StorageConfig;
use cyberbackup_server::backend::s3::S3Backend;
use cyberbackup_server::backend::{Backend, BackendError, ContentHash, ObjectKey};
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

/// Where the repository's objects live, for the damage to reach them.
enum Objects {
    /// The local backend: `<data>/repository/<key>`, read-only files.
    Local(PathBuf),
    /// An S3 bucket.
    Bucket(S3Backend),
}

impl Objects {
    async fn read(&self, key: &str) -> Vec<u8> {
        match self {
            Self::Local(root) => std::fs::read(root.join(key)).unwrap(),
            Self::Bucket(bucket) => bucket.get(&object_key(key), None).await.unwrap().to_vec(),
        }
    }

    async fn write(&self, key: &str, bytes: &[u8]) {
        match self {
            Self::Local(root) => {
                // The backend keeps objects read-only.
                use std::os::unix::fs::PermissionsExt;
                let path = root.join(key);
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
                std::fs::write(&path, bytes).unwrap();
            }
            Self::Bucket(bucket) => bucket
                .put_bytes(
                    &object_key(key),
                    Bytes::copy_from_slice(bytes),
                    ContentHash::of(bytes),
                )
                .await
                .unwrap(),
        }
    }

    async fn delete(&self, key: &str) {
        match self {
            Self::Local(root) => std::fs::remove_file(root.join(key)).unwrap(),
            Self::Bucket(bucket) => match bucket.delete(&object_key(key)).await {
                Ok(()) | Err(BackendError::NotFound { .. }) => {}
                Err(err) => panic!("delete {key}: {err}"),
            },
        }
    }
}

fn object_key(key: &str) -> ObjectKey {
    ObjectKey::new(key).unwrap()
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
        run_case(damage, None).await;
    }
    eprintln!(
        "repository corruption: {} kinds of damage detected",
        cases.len()
    );
}

/// The damage to objects, done in an S3 bucket (the index rows live in the catalog, as
/// with the local backend, and are covered above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_to_objects_in_an_s3_bucket_is_detected_and_restore_writes_nothing_wrong() {
    let Some(s3) = s3_server::S3Server::start_or_skip() else {
        return;
    };
    let cases = [
        Damage::FlipPackByte,
        Damage::TruncatePack,
        Damage::DeletePack,
        Damage::SwapPacks,
        Damage::FlipEnvelopeByte,
    ];
    for (n, damage) in cases.into_iter().enumerate() {
        run_case(damage, Some((&s3, format!("case-{n}")))).await;
    }
    eprintln!(
        "repository corruption in a bucket: {} kinds of damage detected",
        cases.len()
    );
}

/// One case, on the local backend or (with a server and a key prefix) in an S3 bucket.
async fn run_case(damage: Damage, bucket: Option<(&s3_server::S3Server, String)>) {
    let ctx = format!(
        "{damage:?}{}",
        if bucket.is_some() {
            " in the bucket"
        } else {
            ""
        }
    );
    let dir = tempfile::tempdir().unwrap();
    let storage = bucket
        .as_ref()
        .map_or(StorageConfig::Local, |(s3, prefix)| {
            StorageConfig::S3(s3.settings(prefix))
        });
    let config = ServerConfig {
        min_free_disk_mb: 0,
        // The test runs the scrub itself, once the damage is done.
        scrub_bytes_per_sec: 0,
        storage,
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

    let objects = match &bucket {
        None => Objects::Local(data.join("repository")),
        Some((s3, prefix)) => Objects::Bucket(S3Backend::new(&s3.config(Some(prefix))).unwrap()),
    };
    let big_pack = damage_it(damage, &data, &objects, alice, &first).await;

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
async fn damage_it(
    damage: Damage,
    data: &Path,
    objects: &Objects,
    client: ClientId,
    first: &str,
) -> Option<String> {
    let repo = client.to_hex();
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
    let big_key = pack_key(&repo, &pack_hex);
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
            let mut bytes = objects.read(&big_key).await;
            let at = usize::try_from(offset + len / 2).unwrap();
            bytes[at] ^= 0x10;
            objects.write(&big_key, &bytes).await;
        }
        Damage::TruncatePack => {
            let bytes = objects.read(&big_key).await;
            objects.write(&big_key, &bytes[..bytes.len() / 2]).await;
        }
        Damage::DeletePack => objects.delete(&big_key).await,
        Damage::SwapPacks => {
            let other_key = pack_key(&repo, &hex::encode(&other_pack));
            let (a, b) = (objects.read(&big_key).await, objects.read(&other_key).await);
            objects.write(&big_key, &b).await;
            objects.write(&other_key, &a).await;
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
            let key = format!("{repo}/snapshots/{first}");
            let mut bytes = objects.read(&key).await;
            let at = bytes.len() / 2;
            bytes[at] ^= 0x01;
            objects.write(&key, &bytes).await;
        }
    }
    db.close().unwrap();
    Some(pack_hex)
}

/// A pack's key (`repository/layout.rs`).
fn pack_key(repo: &str, pack_hex: &str) -> String {
    format!("{repo}/packs/{}/{pack_hex}", &pack_hex[..2])
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
