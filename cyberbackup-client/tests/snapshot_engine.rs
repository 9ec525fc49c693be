//! The snapshot engine against an in-memory repository remote (a test double of the v4
//! repository operations: it indexes packs by their cleartext headers and refuses a snapshot
//! whose reference chunks or blobs are missing, as the real server does). The end-to-end
//! tests with the real server are the lead's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cyberbackup_client::snapshot::{
    ArchiveFormat, BackupEvent, BackupObserver, BackupOptions, BackupSummary, DiffKind,
    ExcludeOptions, KeyOptions, NoObserver, OpenedBy, ReadData, RemoteRepo, RepoRemote, Repository,
    RestoreFilter, RestoreSummary, SnapshotListing,
};
use cyberbackup_client::v4::V4ClientError;
use cyberbackup_core::repo::{
    BlobClass, BlobId, KdfParams, PackHeader, PackId, RefChunk, SnapshotEnvelope, SnapshotId,
};
use cyberbackup_core::v4::client::OpFailure;
use cyberbackup_core::v4::repository::{RepoPruneReport, RepoUsage};
use cyberbackup_core::v4::wire::ErrorCode;

// ---------------------------------------------------------------- the in-memory remote

#[derive(Default)]
struct Store {
    config: Option<Bytes>,
    keys: Vec<Bytes>,
    packs: HashMap<PackId, Vec<u8>>,
    index: HashMap<BlobId, (PackId, usize, usize, BlobClass)>,
    snapshots: Vec<(SnapshotId, Bytes, u64)>,
    packs_put: usize,
    pack_bytes_put: usize,
    have_batches: Vec<usize>,
    /// Blob requests: one per `get_blob`, one per `get_blobs` window.
    get_windows: usize,
    /// Fault: HAVE answers one bool fewer than asked.
    short_have: bool,
    /// Packs the "server's scrub" marked damaged: DAMAGED lists their blobs.
    damaged_packs: std::collections::HashSet<PackId>,
    /// Fault: the next OPEN answers "no repository" although there is one (another process
    /// created it right after this one looked).
    hide_repository_once: bool,
}

#[derive(Clone, Default)]
struct MemRemote(Arc<Mutex<Store>>);

fn refused(code: ErrorCode, message: &str) -> V4ClientError {
    V4ClientError::Failed(OpFailure::Refused {
        code,
        message: message.into(),
    })
}

impl MemRemote {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.0.lock().unwrap()
    }

    /// Flips one byte inside the stored blob `id` (a damaged disk).
    fn corrupt(&self, id: BlobId) {
        let mut store = self.store();
        let (pack, offset, len, _) = store.index[&id];
        let bytes = store.packs.get_mut(&pack).unwrap();
        bytes[offset + len / 2] ^= 0x40;
    }
}

impl RepoRemote for MemRemote {
    async fn open(&mut self) -> Result<Option<RemoteRepo>, V4ClientError> {
        let mut store = self.store();
        if std::mem::take(&mut store.hide_repository_once) {
            return Ok(None);
        }
        Ok(store.config.clone().map(|config| RemoteRepo {
            config,
            keys: store.keys.clone(),
        }))
    }

    async fn create(&mut self, config: Bytes, key: Bytes) -> Result<(), V4ClientError> {
        let mut store = self.store();
        if store.config.is_some() {
            return Err(refused(ErrorCode::EXISTS, "repository exists"));
        }
        store.config = Some(config);
        store.keys.push(key);
        Ok(())
    }

    async fn add_key(&mut self, key: Bytes) -> Result<(), V4ClientError> {
        self.store().keys.push(key);
        Ok(())
    }

    async fn have(&mut self, ids: &[BlobId]) -> Result<Vec<bool>, V4ClientError> {
        assert!(ids.len() <= 2000, "HAVE batch of {}", ids.len());
        let mut store = self.store();
        store.have_batches.push(ids.len());
        let answered = ids.len() - usize::from(store.short_have && !ids.is_empty());
        Ok(ids[..answered]
            .iter()
            .map(|id| store.index.contains_key(id))
            .collect())
    }

    async fn put_pack(&mut self, id: PackId, pack: Bytes) -> Result<(), V4ClientError> {
        if PackId::of(&pack) != id {
            return Err(refused(ErrorCode::HASH_MISMATCH, "pack hash"));
        }
        let header = PackHeader::parse_pack(&pack)
            .map_err(|_| refused(ErrorCode::CORRUPT, "bad pack header"))?;
        let mut store = self.store();
        for entry in header.entries {
            let offset = usize::try_from(entry.offset).unwrap();
            store
                .index
                .insert(entry.id, (id, offset, entry.len as usize, entry.class));
        }
        store.packs_put += 1;
        store.pack_bytes_put += pack.len();
        store.packs.insert(id, pack.to_vec());
        Ok(())
    }

    async fn put_snapshot(&mut self, id: SnapshotId, object: Bytes) -> Result<(), V4ClientError> {
        let (envelope, computed) = SnapshotEnvelope::decode(&object)
            .map_err(|_| refused(ErrorCode::CORRUPT, "bad snapshot"))?;
        if computed != id {
            return Err(refused(ErrorCode::HASH_MISMATCH, "snapshot hash"));
        }
        let mut store = self.store();
        for chunk_id in &envelope.ref_chunks {
            let missing = || refused(ErrorCode::NOT_FOUND, "missing blobs");
            let &(pack, offset, len, class) = store.index.get(chunk_id).ok_or_else(missing)?;
            assert_eq!(class, BlobClass::RefChunk);
            let bytes = &store.packs[&pack][offset..offset + len];
            let chunk = RefChunk::decode_verified(bytes, chunk_id).unwrap();
            if chunk.ids().iter().any(|id| !store.index.contains_key(id)) {
                return Err(missing());
            }
        }
        let stored_at = store.snapshots.len() as u64;
        store.snapshots.push((id, object, stored_at));
        Ok(())
    }

    async fn get_blob(&mut self, id: BlobId) -> Result<Bytes, V4ClientError> {
        let mut store = self.store();
        store.get_windows += 1;
        let &(pack, offset, len, _) = store
            .index
            .get(&id)
            .ok_or_else(|| refused(ErrorCode::NOT_FOUND, "no such blob"))?;
        Ok(Bytes::copy_from_slice(
            &store.packs[&pack][offset..offset + len],
        ))
    }

    async fn get_blobs(&mut self, ids: &[BlobId]) -> Result<Vec<Bytes>, V4ClientError> {
        let mut blobs = Vec::with_capacity(ids.len());
        for id in ids {
            blobs.push(self.get_blob(*id).await?);
        }
        self.store().get_windows -= ids.len().saturating_sub(1);
        Ok(blobs)
    }

    async fn get_snapshot(&mut self, id: SnapshotId) -> Result<Bytes, V4ClientError> {
        let store = self.store();
        store
            .snapshots
            .iter()
            .find(|(sid, _, _)| *sid == id)
            .map(|(_, bytes, _)| bytes.clone())
            .ok_or_else(|| refused(ErrorCode::NOT_FOUND, "no such snapshot"))
    }

    async fn snapshots(&mut self) -> Result<Vec<SnapshotListing>, V4ClientError> {
        Ok(self
            .store()
            .snapshots
            .iter()
            .map(|(id, bytes, stored_at)| SnapshotListing {
                id: *id,
                size: bytes.len() as u64,
                stored_at: *stored_at,
            })
            .collect())
    }

    async fn forget(&mut self, id: SnapshotId) -> Result<(), V4ClientError> {
        let mut store = self.store();
        let before = store.snapshots.len();
        store.snapshots.retain(|(sid, _, _)| *sid != id);
        if store.snapshots.len() == before {
            return Err(refused(ErrorCode::NOT_FOUND, "no such snapshot"));
        }
        Ok(())
    }

    async fn damaged(
        &mut self,
        after: Option<BlobId>,
    ) -> Result<(Vec<BlobId>, bool), V4ClientError> {
        let store = self.store();
        let mut ids: Vec<BlobId> = store
            .index
            .iter()
            .filter(|(_, (pack, ..))| store.damaged_packs.contains(pack))
            .map(|(id, _)| *id)
            .filter(|id| after.is_none_or(|after| id.as_bytes() > after.as_bytes()))
            .collect();
        ids.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        // Pages of 2 so that the paging is exercised.
        let more = ids.len() > 2;
        ids.truncate(2);
        Ok((ids, more))
    }

    async fn usage(&mut self) -> Result<RepoUsage, V4ClientError> {
        Ok(RepoUsage {
            stored_bytes: self.store().packs.values().map(|p| p.len() as u64).sum(),
            ..RepoUsage::default()
        })
    }

    async fn remove_key(&mut self, key: Bytes) -> Result<(), V4ClientError> {
        let mut store = self.store();
        let before = store.keys.len();
        store.keys.retain(|stored| *stored != key);
        assert_eq!(
            store.keys.len() + 1,
            before,
            "removed one stored key object"
        );
        Ok(())
    }

    async fn prune(&mut self) -> Result<RepoPruneReport, V4ClientError> {
        unreachable!("the engine never prunes on its own")
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn a_tree_with_odd_names_links_and_modes_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let expected_files = make_tree(&src);
    let (remote, mut repo) = open_new(dir.path()).await;

    let summary = backup(&mut repo, &[&src]).await;
    assert_eq!(summary.exit_code(), 0, "{:?}", summary.unreadable);
    assert_eq!(summary.files_new, expected_files);
    assert!(remote.store().packs_put >= 1);

    let target = dir.path().join("restored");
    let restored = restore_latest(&mut repo, &src, &target).await.unwrap();
    assert_eq!(restored.hardlinks, 1);
    assert!(restored.warnings.is_empty(), "{:?}", restored.warnings);
    let listed = repo
        .ls("latest", format!("{}/a/same.txt", src.display()).as_bytes())
        .await
        .unwrap();
    let owner = &listed[0].entry.meta;
    assert_eq!(
        owner.uid,
        fs::metadata(src.join("a/same.txt")).unwrap().uid()
    );
    assert!(
        !owner.user.is_empty() && !owner.group.is_empty(),
        "owner names not recorded"
    );
    assert_eq!(owner.xattrs.len(), 1);
    assert_same_tree(&src, &target);
}

#[tokio::test]
async fn an_unchanged_tree_is_backed_up_without_reading_a_file_and_one_change_sends_about_one_chunk()
 {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let files = make_tree(&src);
    let (remote, mut repo) = open_new(dir.path()).await;
    let first = backup(&mut repo, &[&src]).await;
    assert!(first.bytes_read > 6 << 20);

    let second = backup(&mut repo, &[&src]).await;
    assert_eq!(second.parent.as_deref(), Some(first.snapshot_id.as_str()));
    assert_eq!(second.bytes_read, 0, "an unchanged file was read");
    assert_eq!(second.files_unmodified, files);
    assert_eq!(second.files_new + second.files_changed, 0);
    // Only trees above the backup path (their mtimes may move) and reference chunks.
    assert!(
        second.bytes_added < 64 << 10,
        "{} bytes added",
        second.bytes_added
    );

    let big = src.join("big.bin");
    let mut content = fs::read(&big).unwrap();
    content[100] ^= 0xFF;
    fs::write(&big, &content).unwrap();
    let packs_before = remote.store().pack_bytes_put;
    let blobs_before: std::collections::HashSet<BlobId> =
        remote.store().index.keys().copied().collect();
    let third = backup(&mut repo, &[&src]).await;
    assert_eq!(third.files_changed, 1);
    assert_eq!(third.bytes_read, content.len() as u64);
    assert!(third.blobs_added <= 12, "{} blobs", third.blobs_added);
    // The changed byte lies before the first cut (chunks are 512 KiB .. 8 MiB, average 1 MiB),
    // and a cut depends only on the 64 bytes before it: exactly the first chunk is new, and
    // what was sent is that chunk plus small trees and reference chunks, not the 6 MiB file.
    // (The chunk's size depends on the repository's random chunker key, so the bound is the
    // chunk, not a fixed number: a fixed 3 MiB failed when the first chunk was larger.)
    {
        let store = remote.store();
        let new_chunks: Vec<usize> = store
            .index
            .iter()
            .filter(|(id, entry)| !blobs_before.contains(*id) && entry.2 > 64 << 10)
            .map(|(_, entry)| entry.2)
            .collect();
        assert_eq!(new_chunks.len(), 1, "new data chunks: {new_chunks:?}");
        assert!(
            new_chunks[0] < content.len(),
            "the whole file was one chunk"
        );
        let sent = store.pack_bytes_put - packs_before;
        assert!(
            sent >= new_chunks[0] && sent < new_chunks[0] + (256 << 10),
            "{sent} bytes sent for a one-byte change in a chunk of {}",
            new_chunks[0]
        );
    }
    assert!(repo.check(ReadData::All).await.unwrap().is_ok());
}

#[tokio::test]
async fn an_unchanged_backup_fetches_the_parents_trees_many_per_request_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for a in 0..30 {
        for b in 0..6 {
            let folder = src.join(format!("p{a:02}/q{b}"));
            fs::create_dir_all(&folder).unwrap();
            fs::write(folder.join("f.txt"), format!("{a} {b}")).unwrap();
        }
    }
    let (remote, mut repo) = open_new(dir.path()).await;
    backup(&mut repo, &[&src]).await;

    remote.store().get_windows = 0;
    let second = backup(&mut repo, &[&src]).await;
    assert_eq!(second.files_unmodified, 180);
    assert_eq!(second.files_new + second.files_changed, 0);
    // 211 folders below the backup path (and those above it): one request each without
    // fetching ahead.
    let windows = remote.store().get_windows;
    assert!(windows <= 12, "{windows} blob requests for 211 folders");

    // Folders gone, a folder new, a file changed deep down: the walk leaves the parent's
    // order and the trees it is served still match the folders it is in.
    fs::remove_dir_all(src.join("p03")).unwrap();
    fs::remove_dir_all(src.join("p17/q2")).unwrap();
    fs::create_dir_all(src.join("p05/new")).unwrap();
    fs::write(src.join("p05/new/g.txt"), "new").unwrap();
    fs::write(src.join("p29/q5/f.txt"), "changed, longer").unwrap();
    let third = backup(&mut repo, &[&src]).await;
    assert_eq!(third.files_new, 1);
    assert_eq!(third.files_changed, 1);
    assert_eq!(third.files_unmodified, 180 - 6 - 1 - 1);
    let target = dir.path().join("restored");
    restore_latest(&mut repo, &src, &target).await.unwrap();
    assert_same_tree(&src, &target);
}

#[derive(Default)]
struct Events(Vec<BackupEvent>);

impl BackupObserver for Events {
    fn event(&mut self, event: &BackupEvent) {
        self.0.push(event.clone());
    }
}

#[tokio::test]
async fn progress_reports_the_prescan_total_then_every_file_and_the_summary_serialises() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let files = make_tree(&src);
    let (_remote, mut repo) = open_new(dir.path()).await;
    let mut events = Events::default();
    let options = BackupOptions {
        paths: vec![src.clone()],
        ..BackupOptions::default()
    };
    let summary = repo.backup(&options, &mut events).await.unwrap();
    let BackupEvent::Scanned {
        total_files,
        total_bytes,
    } = events.0[0].clone()
    else {
        panic!("first event: {:?}", events.0[0]);
    };
    assert_eq!(total_files, files);
    assert_eq!(total_bytes, summary.bytes_processed);
    let statuses: Vec<_> = events.0[1..]
        .iter()
        .filter_map(|event| match event {
            BackupEvent::Status {
                files_done,
                bytes_done,
                ..
            } => Some((*files_done, *bytes_done)),
            _ => None,
        })
        .collect();
    assert_eq!(statuses.len() as u64, files);
    assert_eq!(statuses.last(), Some(&(files, total_bytes)));
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["message_type"], "summary");
    assert_eq!(json["snapshot_id"], summary.snapshot_id.as_str());
    assert_eq!(json["files_new"], files);
    let status = serde_json::to_value(&events.0[1]).unwrap();
    assert_eq!(status["message_type"], "status");
}

#[tokio::test]
async fn restore_skips_files_already_correct_and_rewrites_a_changed_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let files = make_tree(&src);
    let (_remote, mut repo) = open_new(dir.path()).await;
    backup(&mut repo, &[&src]).await;
    let target = dir.path().join("restored");
    let path = src.as_os_str().as_bytes();
    let filter = RestoreFilter::default();
    let first = repo
        .restore("latest", path, &target, &filter)
        .await
        .unwrap();
    // Hard links are made, not written.
    assert_eq!(first.files_restored, files - 1);

    fs::write(target.join("a/same.txt"), b"changed!").unwrap();
    let again = repo
        .restore("latest", path, &target, &filter)
        .await
        .unwrap();
    assert_eq!(again.files_restored, 1);
    assert_eq!(again.files_skipped, files - 2);
    assert_eq!(
        again.bytes_written,
        fs::metadata(src.join("a/same.txt")).unwrap().len()
    );
    assert_same_tree(&src, &target);

    // A symlink where the snapshot has a directory is replaced, not followed.
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::remove_dir_all(target.join("b")).unwrap();
    symlink(&outside, target.join("b")).unwrap();
    repo.restore("latest", path, &target, &filter)
        .await
        .unwrap();
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote through a symlink"
    );
    assert_same_tree(&src, &target);
}

#[tokio::test]
async fn thousands_of_blobs_are_asked_about_in_have_batches_of_at_most_2000() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for d in 0..5 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..600 {
            fs::write(src.join(format!("d{d}/f{f}")), format!("file {d}/{f}")).unwrap();
        }
    }
    let (remote, mut repo) = open_new(dir.path()).await;
    let summary = backup(&mut repo, &[&src]).await;
    assert_eq!(summary.files_new, 3000);
    assert!(summary.blobs_added > 3000);
    let batches = remote.store().have_batches.clone();
    assert!(batches.iter().all(|&n| n <= 2000), "{batches:?}");
    assert!(batches.contains(&2000), "no full batch: {batches:?}");
    let report = repo.check(ReadData::No).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.errors);
    assert!(report.blobs > 3000);
    let mut out = Vec::new();
    let path = format!("{}/d4/f599", src.display());
    repo.dump("latest", path.as_bytes(), &mut out)
        .await
        .unwrap();
    assert_eq!(out, b"file 4/599");
}

#[tokio::test]
async fn a_folder_exported_as_zip_reads_back_in_pythons_zipfile_with_every_byte_mode_link_and_time()
{
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    // An odd second: the DOS field rounds it down, the extended timestamp keeps it.
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_001);
    fs::File::options()
        .write(true)
        .open(src.join("run.sh"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let (_remote, mut repo) = open_new(dir.path()).await;
    backup(&mut repo, &[&src]).await;
    let zip_path = dir.path().join("src.zip");
    let mut out = tokio::fs::File::create(&zip_path).await.unwrap();

    let summary = repo
        .export(
            "latest",
            src.as_os_str().as_bytes(),
            ArchiveFormat::Zip,
            &mut out,
        )
        .await
        .unwrap();
    drop(out);

    assert!(summary.archive);
    let read = std::process::Command::new("python3")
        .arg("-c")
        .arg(READ_ZIP)
        .arg(&zip_path)
        .output()
        .expect("python3 runs");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let members: Vec<serde_json::Value> = serde_json::from_slice(&read.stdout).unwrap();
    let mut expected = std::collections::BTreeMap::new();
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        let relative = entry.path().strip_prefix(dir.path()).unwrap();
        let mut name = String::from_utf8_lossy(relative.as_os_str().as_bytes()).into_owned();
        let meta = entry.path().symlink_metadata().unwrap();
        let data = if meta.is_symlink() {
            fs::read_link(entry.path())
                .unwrap()
                .into_os_string()
                .into_vec()
        } else if meta.is_dir() {
            name.push('/');
            Vec::new()
        } else {
            fs::read(entry.path()).unwrap()
        };
        expected.insert(name, (meta.mode(), meta.mtime(), data));
    }
    assert_eq!(members.len(), expected.len(), "one member per entry");
    for member in &members {
        let name = member["name"].as_str().unwrap();
        let (mode, mtime, data) = &expected[name];
        assert_eq!(member["mode"], *mode, "mode of {name}");
        assert_eq!(member["mtime"], *mtime, "mtime of {name}");
        assert_eq!(
            member["dos_time"],
            json_dos_time(*mtime),
            "DOS time of {name}"
        );
        assert!(
            hex::decode(member["data"].as_str().unwrap()).unwrap() == *data,
            "content of {name}"
        );
    }
    assert!(expected.contains_key("src/empty-dir/"));
    assert!(expected.contains_key("src/odd/bad\u{FFFD}\u{FFFD}utf8"));
    assert_eq!(expected["src/rel-link"].2, b"a/same.txt");
    assert_eq!(expected["src/run.sh"].1, 1_000_000_001);
}

/// Reads a zip with Python's `zipfile` (which checks every CRC-32 and local header) and
/// prints each member: name, Unix mode, extended-timestamp mtime, DOS time, content (hex).
const READ_ZIP: &str = r#"
import json, struct, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as archive:
    assert archive.testzip() is None
    members = []
    for info in archive.infolist():
        assert info.flag_bits & 0x800, info.filename
        extra, mtime = info.extra, None
        while len(extra) >= 4:
            tag, size = struct.unpack("<HH", extra[:4])
            if tag == 0x5455 and extra[4] & 1:
                mtime = struct.unpack("<i", extra[5:9])[0]
            extra = extra[4 + size:]
        members.append({
            "name": info.filename,
            "mode": info.external_attr >> 16,
            "mtime": mtime,
            "dos_time": list(info.date_time),
            "data": archive.read(info).hex(),
        })
json.dump(members, sys.stdout)
"#;

/// What `zipfile` reports as the DOS time of `secs`: UTC, seconds rounded down to even.
fn json_dos_time(secs: i64) -> serde_json::Value {
    let utc = jiff::tz::TimeZone::UTC.to_datetime(jiff::Timestamp::from_second(secs).unwrap());
    serde_json::json!([
        utc.year(),
        utc.month(),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second() / 2 * 2
    ])
}

#[tokio::test]
async fn a_have_answer_of_the_wrong_length_fails_the_backup_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"content").unwrap();
    let (remote, mut repo) = open_new(dir.path()).await;
    remote.store().short_have = true;
    let options = BackupOptions {
        paths: vec![src.clone()],
        ..BackupOptions::default()
    };
    let err = repo.backup(&options, &mut NoObserver).await.unwrap_err();
    assert!(
        matches!(
            err,
            V4ClientError::Session(cyberbackup_core::v4::V4Error::Protocol(_))
        ),
        "{err}"
    );
    assert!(remote.store().snapshots.is_empty());
}

#[tokio::test]
async fn restore_include_and_exclude_rules_pick_what_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    let (_remote, mut repo) = open_new(dir.path()).await;
    backup(&mut repo, &[&src]).await;
    let path = src.as_os_str().as_bytes();

    let only_txt = dir.path().join("only-txt");
    let filter = RestoreFilter {
        include: vec!["*.txt".into()],
        exclude: vec!["b".into()],
    };
    repo.restore("latest", path, &only_txt, &filter)
        .await
        .unwrap();
    let mut found = Vec::new();
    collect(&only_txt, &only_txt, &mut found);
    let mut expected = vec!["a".to_string(), "a/same.txt".into(), "deep".into()];
    let mut at = String::from("deep");
    for level in 0..40 {
        at.push_str(&format!("/level{level}"));
        expected.push(at.clone());
    }
    expected.push(format!("{at}/bottom.txt"));
    expected.sort();
    assert_eq!(found, expected);
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push(path.strip_prefix(root).unwrap().display().to_string());
        if path.is_dir() && !path.is_symlink() {
            collect(root, &path, out);
        }
    }
    out.sort();
}

#[tokio::test]
async fn check_names_the_snapshot_and_files_whose_blobs_lie_in_a_pack_the_server_found_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("victim.txt"), b"precious bytes ".repeat(100)).unwrap();
    let (remote, mut repo) = open_new(dir.path()).await;
    backup(&mut repo, &[&src]).await;
    let clean = repo.check(ReadData::No).await.unwrap();
    let victim = format!("{}/victim.txt", src.display());
    let entries = repo.ls("latest", victim.as_bytes()).await.unwrap();
    let cyberbackup_core::repo::EntryKind::File { content } = &entries[0].entry.kind else {
        panic!("not a file");
    };
    let pack = remote.store().index[&content[0]].0;
    remote.store().damaged_packs.insert(pack);

    let report = repo.check(ReadData::No).await.unwrap();

    assert!(clean.is_ok() && clean.damaged.is_empty(), "{clean:?}");
    assert!(!report.is_ok());
    let named: Vec<&str> = report.damaged.iter().map(|d| d.path.as_str()).collect();
    assert!(named.contains(&victim.as_str()), "{named:?}");
    let snapshot = repo.snapshots().await.unwrap()[0].id.to_hex();
    assert!(
        report
            .damaged
            .iter()
            .all(|d| snapshot.starts_with(&d.snapshot))
    );
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains(&victim) && e.contains("damaged")),
        "{:?}",
        report.errors
    );
}

#[tokio::test]
async fn a_corrupted_blob_fails_the_restore_of_that_file_and_nothing_is_written_under_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("victim.txt"), b"precious bytes ".repeat(100)).unwrap();
    let (remote, mut repo) = open_new(dir.path()).await;
    backup(&mut repo, &[&src]).await;
    let victim = format!("{}/victim.txt", src.display());
    let entries = repo.ls("latest", victim.as_bytes()).await.unwrap();
    let cyberbackup_core::repo::EntryKind::File { content } = &entries[0].entry.kind else {
        panic!("not a file");
    };
    remote.corrupt(content[0]);

    let target = dir.path().join("restored");
    let err = restore_latest(&mut repo, &src, &target).await.unwrap_err();
    assert!(
        matches!(err, V4ClientError::Corrupt { ref path, .. } if path.ends_with("victim.txt")),
        "{err}"
    );
    let left: Vec<_> = fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    let mut sink = Vec::new();
    assert!(matches!(
        repo.dump("latest", victim.as_bytes(), &mut sink).await,
        Err(V4ClientError::Corrupt { .. })
    ));
    let report = repo.check(ReadData::All).await.unwrap();
    // The blob that fails verification, then the file that uses it.
    assert_eq!(report.errors.len(), 2, "{:?}", report.errors);
    assert!(
        report.errors[1].contains("victim.txt: 1 of its blobs are missing or fail verification"),
        "{:?}",
        report.errors
    );
    assert!(repo.check(ReadData::No).await.unwrap().is_ok());
}

#[tokio::test]
async fn exclude_rules_leave_out_globs_listed_patterns_and_tagged_caches() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::write(src.join("keep/a.txt"), b"a").unwrap();
    fs::write(src.join("keep/b.tmp"), b"b").unwrap();
    fs::write(src.join("keep/Photo.JPG"), b"c").unwrap();
    fs::write(src.join("keep/listed.log"), b"d").unwrap();
    fs::write(
        src.join("cache/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    fs::write(src.join("cache/blob"), b"cached").unwrap();
    let list = dir.path().join("excludes");
    fs::write(&list, "# comment\n*.log\n").unwrap();
    let (_remote, mut repo) = open_new(dir.path()).await;
    let options = BackupOptions {
        paths: vec![src.clone()],
        exclude: ExcludeOptions {
            exclude: vec!["*.tmp".into()],
            iexclude: vec!["*.jpg".into()],
            exclude_files: vec![list],
            exclude_caches: true,
            one_file_system: true,
        },
        ..BackupOptions::default()
    };
    let summary = repo.backup(&options, &mut NoObserver).await.unwrap();
    assert_eq!(summary.files_new, 1);
    let names: Vec<String> = repo
        .ls("latest", src.as_os_str().as_bytes())
        .await
        .unwrap()
        .iter()
        .map(|e| e.display_path()[src.as_os_str().len()..].to_string())
        .collect();
    assert_eq!(names, ["", "/cache", "/keep", "/keep/a.txt"]);
}

#[tokio::test]
async fn an_unreadable_path_is_a_warning_and_the_rest_is_backed_up() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("ok.txt"), b"fine").unwrap();
    let (_remote, mut repo) = open_new(dir.path()).await;
    let missing = dir.path().join("vanished");
    let summary = backup(&mut repo, &[&src, &missing]).await;
    assert_eq!(summary.exit_code(), 3);
    assert_eq!(summary.unreadable.len(), 1);
    assert!(
        summary.unreadable[0].contains("vanished"),
        "{:?}",
        summary.unreadable
    );
    assert_eq!(summary.files_new, 1);
    let mut out = Vec::new();
    let path = format!("{}/ok.txt", src.display());
    repo.dump("latest", path.as_bytes(), &mut out)
        .await
        .unwrap();
    assert_eq!(out, b"fine");
}

#[tokio::test]
async fn browse_lists_resolves_finds_diffs_and_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/one.txt"), b"1").unwrap();
    fs::write(src.join("gone.txt"), b"2").unwrap();
    let (_remote, mut repo) = open_new(dir.path()).await;
    let a = backup(&mut repo, &[&src]).await.snapshot_id;
    fs::remove_file(src.join("gone.txt")).unwrap();
    fs::write(src.join("d/one.txt"), b"one").unwrap();
    fs::write(src.join("new.txt"), b"3").unwrap();
    let options = BackupOptions {
        paths: vec![src.clone()],
        tags: vec!["daily".into()],
        ..BackupOptions::default()
    };
    let b = repo
        .backup(&options, &mut NoObserver)
        .await
        .unwrap()
        .snapshot_id;

    let list = repo.snapshots().await.unwrap();
    assert_eq!(list.len(), 2);
    let json = serde_json::to_value(list[1].to_json()).unwrap();
    assert_eq!(json["id"], b.as_str());
    assert_eq!(json["short_id"], &b[..8]);
    assert_eq!(json["parent"], a.as_str());
    assert_eq!(json["tags"][0], "daily");
    assert_eq!(json["paths"][0], src.display().to_string());
    assert_eq!(json["summary"]["files"], 2);
    assert_eq!(list[1].table_row()[0], &b[..8]);

    assert_eq!(repo.resolve(&b[..10]).await.unwrap().to_hex(), b);
    assert_eq!(repo.resolve("latest").await.unwrap().to_hex(), b);
    assert!(matches!(
        repo.resolve("zz").await,
        Err(V4ClientError::SnapshotNotFound { .. })
    ));
    assert!(matches!(
        repo.resolve("").await,
        Err(V4ClientError::SnapshotNotFound { .. })
    ));

    let found = repo.find("*.txt").await.unwrap();
    let hits: Vec<(bool, String)> = found
        .iter()
        .map(|m| (m.snapshot.to_hex() == a, m.found.display_path()))
        .collect();
    let at = |name: &str| format!("{}/{name}", src.display());
    assert!(hits.contains(&(true, at("gone.txt"))));
    assert!(hits.contains(&(false, at("new.txt"))));
    assert_eq!(hits.len(), 4);

    let diff = repo.diff(&a, &b).await.unwrap();
    let lines: Vec<(DiffKind, String)> = diff
        .iter()
        .map(|d| (d.kind, String::from_utf8(d.path.clone()).unwrap()))
        .collect();
    assert_eq!(
        lines,
        [
            (DiffKind::Modified, at("d/one.txt")),
            (DiffKind::Removed, at("gone.txt")),
            (DiffKind::Added, at("new.txt")),
        ]
    );

    assert!(matches!(
        repo.ls("latest", at("nope").as_bytes()).await,
        Err(V4ClientError::PathNotInSnapshot { .. })
    ));
    repo.forget(&a).await.unwrap();
    assert_eq!(repo.snapshots().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_limited_diff_keeps_the_first_changes_by_path_and_counts_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("m")).unwrap();
    fs::write(src.join("m/changed"), b"1").unwrap();
    fs::write(src.join("m/removed"), b"2").unwrap();
    let (_remote, mut repo) = open_new(dir.path()).await;
    let a = backup(&mut repo, &[&src]).await.snapshot_id;
    fs::write(src.join("m/changed"), b"one").unwrap();
    fs::remove_file(src.join("m/removed")).unwrap();
    // Added in an order unlike path order, some in a new folder (listed with its content).
    for i in (0..20).rev() {
        fs::write(src.join(format!("add{i:02}")), b"new").unwrap();
    }
    fs::create_dir(src.join("a-dir")).unwrap();
    for i in 0..4 {
        fs::write(src.join(format!("a-dir/{i}")), b"new").unwrap();
    }
    let b = backup(&mut repo, &[&src]).await.snapshot_id;
    let all = repo.diff(&a, &b).await.unwrap();
    assert_eq!(all.len(), 27);

    let page = repo.diff_limited(&a, &b, 10).await.unwrap();

    assert_eq!(page.changes, all[..10]);
    assert_eq!(
        (page.total, page.added, page.removed, page.modified),
        (27, 25, 1, 1)
    );
    let whole = repo.diff_limited(&a, &b, 100).await.unwrap();
    assert_eq!(whole.changes, all);
    assert_eq!(whole.total, 27);
}

#[tokio::test]
async fn keys_open_with_the_device_key_recover_with_the_passphrase_and_refuse_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let remote = MemRemote::default();
    let machine_a = key_options(&dir.path().join("a/identity.json"));
    let created = Repository::open(remote.clone(), &machine_a).await.unwrap();
    assert_eq!(created.opened().opened_by, OpenedBy::Created);
    assert!(
        created
            .opened()
            .warning
            .as_deref()
            .unwrap()
            .contains("key passwd")
    );
    let key_file = dir.path().join("a/cyberbackup-device.key");
    assert_eq!(
        fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let mut reopened = Repository::open(remote.clone(), &machine_a).await.unwrap();
    assert_eq!(reopened.opened().opened_by, OpenedBy::DeviceKey);
    assert_eq!(reopened.opened().config, created.opened().config);

    let machine_b = key_options(&dir.path().join("b/identity.json"));
    let err = Repository::open(remote.clone(), &machine_b)
        .await
        .unwrap_err();
    assert!(matches!(err, V4ClientError::NoUsableKey { .. }), "{err}");

    reopened
        .add_passphrase_key(b"correct horse", b"recovery", small_kdf())
        .await
        .unwrap();
    let wrong =
        Repository::open(remote.clone(), &machine_b.clone().with_passphrase(b"wrong")).await;
    assert!(matches!(wrong, Err(V4ClientError::NoUsableKey { .. })));
    let recovered = Repository::open(
        remote.clone(),
        &machine_b.clone().with_passphrase(b"correct horse"),
    )
    .await
    .unwrap();
    assert_eq!(recovered.opened().opened_by, OpenedBy::Recovered);
    let kinds: Vec<&str> = recovered.key_list().iter().map(|k| k.kind).collect();
    assert_eq!(kinds, ["device", "passphrase", "device"]);
    // Machine B now opens with its own device key.
    let again = Repository::open(remote.clone(), &machine_b).await.unwrap();
    assert_eq!(again.opened().opened_by, OpenedBy::DeviceKey);
}

/// The UI and the scheduler (or two backups started at once) on one machine, both first
/// use: the one that finds the repository created between its look and its create opens that
/// repository with the one device key, instead of failing with "exists".
#[tokio::test]
async fn a_repository_another_process_created_meanwhile_is_opened_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let remote = MemRemote::default();
    let machine = key_options(&dir.path().join("identity.json"));
    let first = Repository::open(remote.clone(), &machine).await.unwrap();
    assert_eq!(first.opened().opened_by, OpenedBy::Created);

    remote.store().hide_repository_once = true;
    let second = Repository::open(remote.clone(), &machine).await.unwrap();
    assert_eq!(second.opened().opened_by, OpenedBy::DeviceKey);
    assert_eq!(second.opened().config, first.opened().config);
    assert_eq!(remote.store().keys.len(), 1, "no second key object");
}

#[tokio::test]
async fn a_repository_created_with_a_passphrase_opens_on_a_new_machine_and_a_tampered_config_does_not()
 {
    let dir = tempfile::tempdir().unwrap();
    let remote = MemRemote::default();
    let with_pass = key_options(&dir.path().join("a/id")).with_passphrase(b"pw");
    let created = Repository::open(remote.clone(), &with_pass).await.unwrap();
    assert!(created.opened().warning.is_none());
    assert_eq!(remote.store().keys.len(), 2);
    let new_machine = key_options(&dir.path().join("b/id")).with_passphrase(b"pw");
    Repository::open(remote.clone(), &new_machine)
        .await
        .unwrap();

    let mut config = remote.store().config.clone().unwrap().to_vec();
    config[20] ^= 1;
    remote.store().config = Some(Bytes::from(config));
    let err = Repository::open(remote.clone(), &key_options(&dir.path().join("a/id")))
        .await
        .unwrap_err();
    assert!(matches!(err, V4ClientError::Repo { .. }), "{err}");
}

// ---------------------------------------------------------------- helpers

fn small_kdf() -> KdfParams {
    KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    }
}

fn key_options(identity: &Path) -> KeyOptions {
    KeyOptions {
        kdf: small_kdf(),
        ..KeyOptions::new(identity)
    }
}

async fn open_new(dir: &Path) -> (MemRemote, Repository<MemRemote>) {
    let remote = MemRemote::default();
    let repo = Repository::open(remote.clone(), &key_options(&dir.join("identity.json")))
        .await
        .unwrap();
    (remote, repo)
}

/// Restores the backup path `src` of the latest snapshot, unfiltered, into `target`.
async fn restore_latest(
    repo: &mut Repository<MemRemote>,
    src: &Path,
    target: &Path,
) -> Result<RestoreSummary, V4ClientError> {
    repo.restore(
        "latest",
        src.as_os_str().as_bytes(),
        target,
        &RestoreFilter::default(),
    )
    .await
}

async fn backup(repo: &mut Repository<MemRemote>, paths: &[&Path]) -> BackupSummary {
    let options = BackupOptions {
        paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        ..BackupOptions::default()
    };
    repo.backup(&options, &mut NoObserver).await.unwrap()
}

/// Builds the test tree; returns the number of regular files (hard links count once each).
fn make_tree(root: &Path) -> u64 {
    let mut files = 0;
    let mut file = |path: PathBuf, content: &[u8], mode: u32| {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        files += 1;
    };
    file(root.join("a/same.txt"), b"in a", 0o644);
    file(root.join("b/same.txt"), b"in b, longer", 0o600);
    file(root.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    let mut deep = root.join("deep");
    for level in 0..40 {
        deep.push(format!("level{level}"));
    }
    file(deep.join("bottom.txt"), b"deep down", 0o640);
    for name in [
        b"new\nline".to_vec(),
        b"back\\slash".to_vec(),
        vec![b'n'; 255],
        b"bad\xff\xfeutf8".to_vec(),
        " spaced ".as_bytes().to_vec(),
    ] {
        file(
            root.join("odd").join(OsStr::from_bytes(&name)),
            &name,
            0o644,
        );
    }
    // Several chunks (chunks average 1 MiB) of incompressible bytes.
    let mut big = vec![0u8; 6 << 20];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for byte in &mut big {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state.to_le_bytes()[0];
    }
    file(root.join("big.bin"), &big, 0o644);
    file(root.join("empty-file"), b"", 0o644);
    file(root.join("links/first"), b"linked content", 0o644);
    fs::hard_link(root.join("links/first"), root.join("links/second")).unwrap();
    files += 1;
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::set_permissions(root.join("empty-dir"), fs::Permissions::from_mode(0o700)).unwrap();
    for (path, value) in [
        (root.join("a/same.txt"), &b"kept"[..]),
        (root.join("b"), b"on a dir"),
    ] {
        rustix::fs::lsetxattr(&path, "user.note", value, rustix::fs::XattrFlags::empty()).unwrap();
    }
    symlink("a/same.txt", root.join("rel-link")).unwrap();
    symlink("/nowhere/at/all", root.join("dangling")).unwrap();
    symlink(
        OsStr::from_bytes(b"odd/bad\xff\xfeutf8"),
        root.join("odd-link"),
    )
    .unwrap();
    files
}

/// Same names, kinds, contents, modes, mtimes, symlink targets and hard links.
fn assert_same_tree(a: &Path, b: &Path) {
    let ma = fs::symlink_metadata(a).unwrap();
    let mb = fs::symlink_metadata(b).unwrap();
    assert_eq!(ma.file_type(), mb.file_type(), "{}", b.display());
    assert_eq!(
        (ma.mtime(), ma.mtime_nsec()),
        (mb.mtime(), mb.mtime_nsec()),
        "mtime of {}",
        b.display()
    );
    if ma.file_type().is_symlink() {
        assert_eq!(fs::read_link(a).unwrap(), fs::read_link(b).unwrap());
        return;
    }
    assert_eq!(ma.mode(), mb.mode(), "mode of {}", b.display());
    assert_eq!(
        xattrs(a),
        xattrs(b),
        "extended attributes of {}",
        b.display()
    );
    if ma.is_file() {
        assert_eq!(ma.nlink(), mb.nlink(), "links of {}", b.display());
        assert!(
            fs::read(a).unwrap() == fs::read(b).unwrap(),
            "content of {}",
            b.display()
        );
        return;
    }
    let names = |dir: &Path| {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(a), names(b), "entries of {}", b.display());
    for name in names(a) {
        assert_same_tree(&a.join(&name), &b.join(&name));
    }
    if a.join("links").exists() {
        let first = fs::metadata(b.join("links/first")).unwrap();
        let second = fs::metadata(b.join("links/second")).unwrap();
        assert_eq!(first.ino(), second.ino(), "hard link not restored");
    }
}

fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut list = vec![0u8; 4096];
    let len = rustix::fs::llistxattr(path, &mut list[..]).unwrap();
    list[..len]
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| {
            let mut value = vec![0u8; 4096];
            let len = rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut value[..]).unwrap();
            (name.to_vec(), value[..len].to_vec())
        })
        .collect()
}
