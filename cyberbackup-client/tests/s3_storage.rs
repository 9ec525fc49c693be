//! Snapshots stored in S3: the reference server with `[storage] backend = "s3"` against a
//! real S3 server process (moto_server, started here; skipped with a one-line note when not
//! installed, a failure under `CYBERBACKUP_REQUIRE_S3=1`), and the real client binary. A
//! backup's packs and snapshot objects land in the bucket and nowhere on the server's disk,
//! the bucket holds no plaintext and no file name, and `check --read-data` and a restore
//! read them back byte for byte; `/diagnostics` names the bucket and hides the secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../cyberbackup-server/tests/s3_server/mod.rs"]
mod s3_server;
mod support;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use cyberbackup_server::backend::Backend;
use cyberbackup_server::backend::config::StorageConfig;
use cyberbackup_server::backend::copy::copy_all;
use cyberbackup_server::backend::local::{LocalBackend, LocalConfig};
use cyberbackup_server::backend::s3::S3Backend;
use futures_util::TryStreamExt;
use support::{
    RealServer, check_read_data, client_command, files_under, output_text as text, restore_latest,
    write_pattern,
};

const CONTENT_MARKER: &str = "S3-PLAINTEXT-MARKER-51c2";
const NAME_MARKER: &str = "s3-secret-file-name-77";

fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Every object under the bucket's prefix, with its bytes.
fn bucket_objects(s3: &s3_server::S3Server, prefix: &str) -> Vec<(String, Vec<u8>)> {
    block_on(async {
        let backend = Arc::new(S3Backend::new(&s3.config(Some(prefix))).unwrap());
        let listed: Vec<_> = backend.list(None).try_collect().await.unwrap();
        let mut objects = Vec::new();
        for info in listed {
            let bytes = backend.get(&info.key, None).await.unwrap();
            objects.push((info.key.to_string(), bytes.to_vec()));
        }
        objects
    })
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[test]
fn a_backup_to_an_s3_backed_server_lands_in_the_bucket_as_ciphertext_and_restores_exactly() {
    let Some(s3) = s3_server::S3Server::start_or_skip() else {
        return;
    };
    let storage = StorageConfig::S3(s3.settings("site-a"));
    let server = RealServer::start_configured(move |config| config.storage = storage);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    fs::create_dir_all(source.join("nested")).unwrap();
    fs::write(
        source.join("nested").join(NAME_MARKER),
        format!("{CONTENT_MARKER}\n").repeat(4096),
    )
    .unwrap();
    // Big enough for several chunks and a multipart pack upload (parts of 8 MiB).
    write_pattern(&source.join("big.bin"), 20 << 20, 7);

    let backup = client_command(
        dir.path(),
        &server,
        "alice",
        &["backup", "src", "--name", "alice"],
    )
    .output()
    .unwrap();
    assert_eq!(backup.status.code(), Some(0), "{}", text(&backup));

    let objects = bucket_objects(&s3, "site-a");
    let packs: Vec<_> = objects
        .iter()
        .filter(|(key, _)| key.contains("/packs/") || key.starts_with("packs/"))
        .collect();
    assert!(
        packs.iter().map(|(_, bytes)| bytes.len()).sum::<usize>() > 20 << 20,
        "the packs are not in the bucket: {:?}",
        objects
            .iter()
            .map(|(k, b)| (k, b.len()))
            .collect::<Vec<_>>()
    );
    for (key, bytes) in &objects {
        for marker in [CONTENT_MARKER, NAME_MARKER] {
            assert!(
                !contains(bytes, marker),
                "{marker:?} in bucket object {key}"
            );
            assert!(!key.contains(marker), "{marker:?} in bucket key {key}");
        }
    }
    // Nothing of the repository on the server's own disk but the catalog and keys.
    let local_repository = server.data.path().join("data").join("repository");
    assert!(
        files_under(&local_repository).is_empty(),
        "repository objects on the local disk: {:?}",
        files_under(&local_repository)
    );

    // The operator sees the backend, never its secret.
    let (status, diagnostics) = server.admin_get("/diagnostics");
    assert_eq!(status, 200, "{diagnostics}");
    assert!(
        diagnostics.contains(&format!(
            "s3 {}/site-a at http://{}",
            s3_server::BUCKET,
            s3.addr
        )),
        "{diagnostics}"
    );
    assert!(
        !diagnostics.contains(s3_server::SECRET_KEY),
        "{diagnostics}"
    );

    check_read_data(dir.path(), &server, "alice");
    let restored = restore_latest(dir.path(), &server, "alice", &source);
    for relative in [Path::new("big.bin"), &Path::new("nested").join(NAME_MARKER)] {
        assert_eq!(
            fs::read(restored.join(relative)).unwrap(),
            fs::read(source.join(relative)).unwrap(),
            "{} differs after the restore",
            relative.display()
        );
    }
}

/// The documented move from one disk to object storage: back up on the default local
/// backend, stop, `storage copy` (its library function) into the bucket, delete the local
/// objects, restart on `[storage] backend = "s3"`: every snapshot restores from the bucket,
/// and the next backup deduplicates against what was copied.
#[test]
fn a_local_repository_copied_into_a_bucket_serves_its_snapshots_from_there() {
    let Some(s3) = s3_server::S3Server::start_or_skip() else {
        return;
    };
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    fs::create_dir_all(&source).unwrap();
    write_pattern(&source.join("data.bin"), 6 << 20, 11);
    let backup = client_command(
        dir.path(),
        &server,
        "bob",
        &["backup", "src", "--name", "bob"],
    )
    .output()
    .unwrap();
    assert_eq!(backup.status.code(), Some(0), "{}", text(&backup));
    let data = server.stop();

    let local_root = data.path().join("data").join("repository");
    let local_files = files_under(&local_root).len();
    let report = block_on(copy_all(
        Arc::new(LocalBackend::open(LocalConfig::new(&local_root)).unwrap()),
        Arc::new(S3Backend::new(&s3.config(Some("moved"))).unwrap()),
        |_| {},
    ))
    .unwrap();
    assert_eq!(
        report.copied,
        u64::try_from(local_files).unwrap(),
        "{report:?}"
    );
    fs::remove_dir_all(&local_root).unwrap();

    let storage = StorageConfig::S3(s3.settings("moved"));
    let server = RealServer::restart_configured(data, move |config| config.storage = storage);
    let restored = restore_latest(dir.path(), &server, "bob", &source);
    assert_eq!(
        fs::read(restored.join("data.bin")).unwrap(),
        fs::read(source.join("data.bin")).unwrap()
    );
    let objects_before = bucket_objects(&s3, "moved").len();
    let again = client_command(dir.path(), &server, "bob", &["backup", "src", "--json"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    // Only the new snapshot object (and perhaps a small metadata pack) is added.
    assert!(
        bucket_objects(&s3, "moved").len() <= objects_before + 2,
        "the second backup did not deduplicate against the copied packs"
    );
}
