//! The keyless repository store (`cyberbackup_server::repository`) against a real SQLite
//! catalog and a real local backend in a temp directory, with repositories built by the
//! core's own writers (`BlobSealer`, `PackWriter`, `RefListBuilder`, `Snapshot::seal`) under
//! a seeded RNG: pack put and get, hash and header checks, the snapshot commit check,
//! client isolation, staging files, crash recovery, forget, and that nothing in the data
//! directory is plaintext. Runtime: about a second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod repo_fixture;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use cyberbackup_core::repo::{BlobId, PackId};
use cyberbackup_server::backend::faulty::FaultPlan;
use cyberbackup_server::backend::local::{LocalBackend, LocalConfig};
use cyberbackup_server::backend::{Backend, BackendError, ContentHash};
use cyberbackup_server::catalog::Catalog;
use cyberbackup_server::repository::{
    BlobReader, ObjectClass, PruneOptions, PutStart, QuotaLimits, Quotas, RecoveryReport,
    RepoStore, RepoStoreError,
};
use cyberbackup_server::scrub::{Pacer, ScrubReport, Scrubber};
use repo_fixture::*;

async fn pack_round_trip_and_have(fx: Fixture) {
    let mut repo = Repo::new(1);
    create(&fx, ALICE, &repo).await;
    let (pack, bytes, blobs) = repo.data_pack(&[b"one", b"two two", MARKER]);
    put_pack(&fx.store, ALICE, pack, &bytes).await;

    let unknown = BlobId([9; 32]);
    let mut ids: Vec<BlobId> = blobs.iter().map(|(id, _)| *id).collect();
    ids.push(unknown);
    assert_eq!(
        fx.store.have(ALICE, &ids).await.unwrap(),
        [true, true, true, false]
    );
    for (id, sealed) in &blobs {
        assert_eq!(fx.store.get_blob(ALICE, *id).await.unwrap(), sealed);
    }
    assert!(matches!(
        fx.store.get_blob(ALICE, unknown).await,
        Err(RepoStoreError::NotFound { what: "blob", .. })
    ));
    assert_eq!(
        fx.objects().await,
        [pack_key(ALICE, &pack).to_string()],
        "the pack is stored under its documented key"
    );
    // The same pack again is already stored: nothing to send.
    let again = fx
        .store
        .begin_put(ALICE, ObjectClass::Pack, pack.0, bytes.len() as u64)
        .await
        .unwrap();
    assert!(matches!(again, PutStart::AlreadyStored), "{again:?}");
    assert_eq!(files_under(&fx.staging()), Vec::<String>::new());
}

async fn a_duplicate_blob_keeps_its_first_location(fx: Fixture) {
    let mut repo = Repo::new(2);
    create(&fx, ALICE, &repo).await;
    let (first, first_bytes, blobs) = repo.data_pack(&[b"shared blob"]);
    // The same plaintext sealed again (another salt): the same ID, other bytes.
    let (second, second_bytes, again) = repo.data_pack(&[b"shared blob", b"other"]);
    assert_eq!(blobs[0].0, again[0].0);
    assert_ne!(blobs[0].1, again[0].1);
    put_pack(&fx.store, ALICE, first, &first_bytes).await;
    put_pack(&fx.store, ALICE, second, &second_bytes).await;
    assert_eq!(
        fx.store.get_blob(ALICE, blobs[0].0).await.unwrap(),
        blobs[0].1
    );
    assert_eq!(
        fx.store.get_blob(ALICE, again[1].0).await.unwrap(),
        again[1].1
    );
}

async fn hash_mismatch_leaves_nothing(fx: Fixture) {
    let mut repo = Repo::new(3);
    create(&fx, ALICE, &repo).await;
    let (pack, bytes, blobs) = repo.data_pack(&[b"payload"]);
    let mut tampered = bytes.clone();
    tampered[3] ^= 1;
    let err = put(&fx.store, ALICE, ObjectClass::Pack, pack.0, &tampered)
        .await
        .unwrap_err();
    match &err {
        RepoStoreError::HashMismatch { expected, actual } => {
            assert_eq!(*expected, pack.to_hex());
            assert_eq!(*actual, PackId::of(&tampered).to_hex());
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("nothing was stored"), "{err}");
    assert_eq!(
        fx.objects().await,
        Vec::<String>::new(),
        "no backend object"
    );
    assert_eq!(fx.store.have(ALICE, &[blobs[0].0]).await.unwrap(), [false]);
    // No pack row either: the put may start again.
    let again = fx
        .store
        .begin_put(ALICE, ObjectClass::Pack, pack.0, bytes.len() as u64)
        .await
        .unwrap();
    assert!(matches!(again, PutStart::Receiving(_)), "{again:?}");
    drop(again);
    assert_eq!(files_under(&fx.staging()), Vec::<String>::new());
}

async fn a_pack_whose_header_does_not_parse_is_refused(fx: Fixture) {
    let repo = Repo::new(4);
    create(&fx, ALICE, &repo).await;
    for bytes in [
        b"not a pack at all, just bytes".to_vec(),
        b"short".to_vec(),
        // A valid trailer pointing at a header that is not one.
        [&[0u8; 20][..], &20u32.to_le_bytes(), b"CBPK"].concat(),
    ] {
        let id = PackId::of(&bytes);
        let err = put(&fx.store, ALICE, ObjectClass::Pack, id.0, &bytes)
            .await
            .unwrap_err();
        assert!(matches!(err, RepoStoreError::BadObject(_)), "{err:?}");
    }
    assert_eq!(fx.objects().await, Vec::<String>::new());
    assert_eq!(files_under(&fx.staging()), Vec::<String>::new());
}

async fn a_put_must_have_the_announced_length(fx: Fixture) {
    let mut repo = Repo::new(5);
    create(&fx, ALICE, &repo).await;
    let (pack, bytes, _) = repo.data_pack(&[b"x"]);
    let PutStart::Receiving(mut staged) = fx
        .store
        .begin_put(ALICE, ObjectClass::Pack, pack.0, bytes.len() as u64)
        .await
        .unwrap()
    else {
        panic!("not stored yet")
    };
    staged
        .write(Bytes::copy_from_slice(&bytes[..10]))
        .await
        .unwrap();
    let err = fx.store.finish_put(staged).await.unwrap_err();
    assert!(matches!(err, RepoStoreError::BadObject(_)), "{err}");
    let PutStart::Receiving(mut staged) = fx
        .store
        .begin_put(ALICE, ObjectClass::Pack, pack.0, 4)
        .await
        .unwrap()
    else {
        panic!("not stored yet")
    };
    let err = staged
        .write(Bytes::from_static(b"12345"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("announced"), "{err}");
    let err = fx
        .store
        .begin_put(ALICE, ObjectClass::Pack, pack.0, (64 << 20) + 1)
        .await
        .unwrap_err();
    assert!(matches!(err, RepoStoreError::TooLarge { .. }), "{err:?}");
}

async fn a_commit_with_a_missing_blob_is_refused_and_nothing_is_listed(fx: Fixture) {
    let mut repo = Repo::new(6);
    create(&fx, ALICE, &repo).await;
    let (data, data_bytes, blobs) = repo.data_pack(&[b"stored"]);
    put_pack(&fx.store, ALICE, data, &data_bytes).await;
    let never_sent = repo.sealer.id(b"never sent");
    let (refs, ref_bytes, chunks) = repo.ref_pack(&[blobs[0].0, never_sent]);
    put_pack(&fx.store, ALICE, refs, &ref_bytes).await;

    let snapshot = repo.snapshot(chunks.clone(), 1_700_000_000);
    let err = commit(&fx.store, ALICE, &snapshot).await.unwrap_err();
    match &err {
        RepoStoreError::MissingBlobs { missing, example } => {
            assert_eq!(*missing, 1);
            assert_eq!(*example, format!("blob {never_sent}"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fx.store.snapshots(ALICE).await.unwrap(), []);
    assert!(matches!(
        fx.store.get_snapshot(ALICE, snapshot.id).await,
        Err(RepoStoreError::NotFound {
            what: "snapshot",
            ..
        })
    ));
    assert!(
        !fx.objects()
            .await
            .contains(&snapshot_key(ALICE, &snapshot).to_string()),
        "no snapshot object"
    );

    // A reference chunk that was never uploaded is missing too.
    let (_, _, unsent_chunks) = repo.ref_pack(&[blobs[0].0]);
    let snapshot = repo.snapshot(unsent_chunks.clone(), 1_700_000_001);
    let err = commit(&fx.store, ALICE, &snapshot).await.unwrap_err();
    match &err {
        RepoStoreError::MissingBlobs { missing, example } => {
            assert_eq!(*missing, 1);
            assert_eq!(*example, format!("reference chunk {}", unsent_chunks[0]));
        }
        other => panic!("{other:?}"),
    }
    // A sealed blob named as a reference chunk is not one.
    let snapshot = repo.snapshot(vec![blobs[0].0], 1_700_000_002);
    let err = commit(&fx.store, ALICE, &snapshot).await.unwrap_err();
    assert!(
        matches!(&err, RepoStoreError::MissingBlobs { missing: 1, .. }),
        "{err:?}"
    );
    assert_eq!(fx.store.snapshots(ALICE).await.unwrap(), []);
    assert_eq!(files_under(&fx.staging()), Vec::<String>::new());
}

async fn a_commit_after_all_packs_is_listed_and_readable(fx: Fixture) {
    let mut repo = Repo::new(7);
    create(&fx, ALICE, &repo).await;
    let (data, data_bytes, blobs) = repo.data_pack(&[b"a", b"b", b"c"]);
    let ids: Vec<BlobId> = blobs.iter().map(|(id, _)| *id).collect();
    let (refs, ref_bytes, chunks) = repo.ref_pack(&ids);
    put_pack(&fx.store, ALICE, data, &data_bytes).await;
    put_pack(&fx.store, ALICE, refs, &ref_bytes).await;
    assert_eq!(
        fx.store.have(ALICE, &chunks).await.unwrap(),
        vec![true; chunks.len()],
        "reference chunks are blobs too"
    );

    let first = repo.snapshot(chunks.clone(), 1_700_000_100);
    commit(&fx.store, ALICE, &first).await.unwrap();
    // A second snapshot naming the same, now verified, chunks.
    let second = repo.snapshot(chunks.clone(), 1_700_000_000);
    commit(&fx.store, ALICE, &second).await.unwrap();

    let listed = fx.store.snapshots(ALICE).await.unwrap();
    let listed_ids: Vec<_> = listed.iter().map(|s| s.id).collect();
    assert_eq!(listed_ids, [second.id, first.id], "oldest backup first");
    assert_eq!(listed[1].size, first.bytes.len() as u64);
    assert!(listed[1].stored_at > 1_700_000_000, "{listed:?}");
    assert_eq!(
        fx.store.get_snapshot(ALICE, first.id).await.unwrap(),
        first.bytes
    );
    // Committing the same snapshot again is already stored.
    let again = fx
        .store
        .begin_put(
            ALICE,
            ObjectClass::Snapshot,
            first.id.0,
            first.bytes.len() as u64,
        )
        .await
        .unwrap();
    assert!(matches!(again, PutStart::AlreadyStored), "{again:?}");
    // The stored object is the backend's, under its documented key.
    let stored = fx
        .backend
        .get(&snapshot_key(ALICE, &first), None)
        .await
        .unwrap();
    assert_eq!(stored, first.bytes);
}

async fn a_snapshot_under_another_id_is_refused(fx: Fixture) {
    let mut repo = Repo::new(8);
    create(&fx, ALICE, &repo).await;
    let snapshot = repo.snapshot(Vec::new(), 1);
    let err = put(
        &fx.store,
        ALICE,
        ObjectClass::Snapshot,
        [7; 32],
        &snapshot.bytes,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RepoStoreError::HashMismatch { .. }),
        "{err:?}"
    );
    let bytes = b"CBSN not an envelope";
    let err = put(&fx.store, ALICE, ObjectClass::Snapshot, [8; 32], bytes)
        .await
        .unwrap_err();
    assert!(matches!(err, RepoStoreError::BadObject(_)), "{err:?}");
    assert_eq!(fx.store.snapshots(ALICE).await.unwrap(), []);
    assert_eq!(fx.objects().await, Vec::<String>::new());
}

async fn clients_cannot_reach_each_others_repositories(fx: Fixture) {
    let mut alice = Repo::new(9);
    let bob = Repo::new(10);
    create(&fx, ALICE, &alice).await;
    create(&fx, BOB, &bob).await;
    let (data, data_bytes, blobs) = alice.data_pack(&[b"alice's data"]);
    let (refs, ref_bytes, chunks) = alice.ref_pack(&[blobs[0].0]);
    put_pack(&fx.store, ALICE, data, &data_bytes).await;
    put_pack(&fx.store, ALICE, refs, &ref_bytes).await;
    let snapshot = alice.snapshot(chunks.clone(), 5);
    commit(&fx.store, ALICE, &snapshot).await.unwrap();

    assert_eq!(fx.store.have(BOB, &[blobs[0].0]).await.unwrap(), [false]);
    assert!(matches!(
        fx.store.get_blob(BOB, blobs[0].0).await,
        Err(RepoStoreError::NotFound { .. })
    ));
    assert!(matches!(
        fx.store.get_snapshot(BOB, snapshot.id).await,
        Err(RepoStoreError::NotFound { .. })
    ));
    assert_eq!(fx.store.snapshots(BOB).await.unwrap(), []);
    assert!(matches!(
        fx.store.forget(BOB, snapshot.id).await,
        Err(RepoStoreError::NotFound { .. })
    ));
    // Bob cannot commit a snapshot resting on Alice's chunks.
    let err = commit(&fx.store, BOB, &snapshot).await.unwrap_err();
    assert!(
        matches!(err, RepoStoreError::MissingBlobs { .. }),
        "{err:?}"
    );
    // Bob's own upload of the same pack is his, stored under his key.
    let start = fx
        .store
        .begin_put(BOB, ObjectClass::Pack, data.0, data_bytes.len() as u64)
        .await
        .unwrap();
    assert!(matches!(start, PutStart::Receiving(_)), "{start:?}");
    drop(start);
    assert_eq!(
        fx.store.snapshots(ALICE).await.unwrap().len(),
        1,
        "Alice's snapshot is still there"
    );
    assert_eq!(
        fx.store.state(BOB).await.unwrap().unwrap().config,
        bob.config
    );
}

async fn every_operation_needs_a_repository(fx: Fixture) {
    let mut repo = Repo::new(11);
    let s = &fx.store;
    assert_eq!(s.state(NOBODY).await.unwrap(), None);
    let no_repo = |r: Result<(), RepoStoreError>| {
        assert!(matches!(r, Err(RepoStoreError::NoRepository)), "{r:?}");
    };
    no_repo(s.add_key(NOBODY, repo.key.clone()).await);
    no_repo(s.have(NOBODY, &[BlobId([1; 32])]).await.map(drop));
    no_repo(
        s.begin_put(NOBODY, ObjectClass::Pack, [1; 32], 10)
            .await
            .map(drop),
    );
    no_repo(s.get_blob(NOBODY, BlobId([1; 32])).await.map(drop));
    no_repo(
        s.get_snapshot(NOBODY, repo.snapshot(Vec::new(), 1).id)
            .await
            .map(drop),
    );
    no_repo(s.snapshots(NOBODY).await.map(drop));
    no_repo(s.forget(NOBODY, repo.snapshot(Vec::new(), 2).id).await);
}

async fn create_checks_its_objects_and_refuses_a_second_repository(fx: Fixture) {
    let mut repo = Repo::new(12);
    let s = &fx.store;
    let err = s
        .create(ALICE, Bytes::from_static(b"CBRC garbage"), repo.key.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, RepoStoreError::BadObject(_)), "{err:?}");
    let err = s
        .create(ALICE, repo.config.clone(), Bytes::from_static(b"CBKY?"))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoStoreError::BadObject(_)), "{err:?}");
    assert_eq!(s.state(ALICE).await.unwrap(), None, "nothing created");

    create(&fx, ALICE, &repo).await;
    let err = s
        .create(ALICE, repo.config.clone(), repo.key.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, RepoStoreError::Exists), "{err:?}");

    let err = s
        .add_key(ALICE, Bytes::from_static(b"not a key"))
        .await
        .unwrap_err();
    assert!(matches!(err, RepoStoreError::BadObject(_)), "{err:?}");
    let mut keys = vec![repo.key.clone()];
    for _ in 1..64 {
        let key = repo.another_key();
        s.add_key(ALICE, key.clone()).await.unwrap();
        keys.push(key);
    }
    // Adding a stored key again changes nothing.
    s.add_key(ALICE, keys[3].clone()).await.unwrap();
    let err = s.add_key(ALICE, repo.another_key()).await.unwrap_err();
    assert!(
        matches!(err, RepoStoreError::TooLarge { max: 64, .. }),
        "{err:?}"
    );
    let state = s.state(ALICE).await.unwrap().unwrap();
    assert_eq!(state.config, repo.config);
    assert_eq!(state.keys, keys);
}

async fn staging_files_are_private_and_an_abort_leaves_none(fx: Fixture) {
    let mut repo = Repo::new(13);
    create(&fx, ALICE, &repo).await;
    let (pack, bytes, _) = repo.data_pack(&[MARKER]);
    let begin = || {
        fx.store
            .begin_put(ALICE, ObjectClass::Pack, pack.0, bytes.len() as u64)
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fx.staging()), 0o700);

    let PutStart::Receiving(mut staged) = begin().await.unwrap() else {
        panic!("not stored yet")
    };
    staged
        .write(Bytes::copy_from_slice(&bytes[..20]))
        .await
        .unwrap();
    let files = files_under(&fx.staging());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(mode(&fx.staging().join(&files[0])), 0o600);
    assert_eq!(fx.objects().await, Vec::<String>::new(), "nothing visible");
    fx.store.abort_put(staged).await;
    assert_eq!(files_under(&fx.staging()), Vec::<String>::new());

    // A dropped put (a connection that went away) leaves none either.
    let PutStart::Receiving(mut staged) = begin().await.unwrap() else {
        panic!("not stored yet")
    };
    staged
        .write(Bytes::copy_from_slice(&bytes[..20]))
        .await
        .unwrap();
    drop(staged);
    assert_eq!(files_under(&fx.staging()), Vec::<String>::new());
    assert_eq!(fx.objects().await, Vec::<String>::new());
}

async fn recovery_indexes_an_unindexed_pack_and_cleans_up(fx: Fixture) {
    let mut repo = Repo::new(14);
    create(&fx, ALICE, &repo).await;
    let (pack, bytes, blobs) = repo.data_pack(&[b"stored before the crash", b"second"]);
    // A crash between the backend's put and the index transaction: the pack is in the
    // backend, not in the catalog.
    fx.backend
        .put(
            &pack_key(ALICE, &pack),
            bytes.clone().into(),
            ContentHash::of(&bytes),
        )
        .await
        .unwrap();
    // A damaged unindexed pack, a snapshot object without a record, a staging file.
    let damaged = b"damaged pack bytes".to_vec();
    let damaged_id = PackId::of(&damaged);
    fx.backend
        .put(
            &pack_key(ALICE, &damaged_id),
            damaged.clone().into(),
            ContentHash::of(&damaged),
        )
        .await
        .unwrap();
    // (Its one reference chunk is stored nowhere, so it cannot pass a commit.)
    let orphan = repo.snapshot(vec![BlobId([7; 32])], 3);
    fx.backend
        .put(
            &snapshot_key(ALICE, &orphan),
            orphan.bytes.clone().into(),
            ContentHash::of(&orphan.bytes),
        )
        .await
        .unwrap();
    std::fs::write(fx.staging().join("put-left-by-a-crash"), b"partial").unwrap();
    // A backend put's temp file beside the pack (a crash before its rename).
    let put_temp = fx
        .backend_path(&pack)
        .with_file_name(".put-left-by-a-crash");
    std::fs::write(&put_temp, b"partial").unwrap();
    assert_eq!(fx.store.have(ALICE, &[blobs[0].0]).await.unwrap(), [false]);

    // Restart: a new store on the same data directory.
    let store = fx.reopen().await;
    let report = store.recover().await.unwrap();
    assert_eq!(
        report,
        RecoveryReport {
            staging_files_removed: 1,
            interrupted_puts_removed: 1,
            packs_indexed: 1,
            packs_deleted: 1,
            snapshots_deleted: 1,
            snapshots_recorded: 0,
            unknown_objects: 0,
            kept_without_repository: 0,
        }
    );
    let ids: Vec<BlobId> = blobs.iter().map(|(id, _)| *id).collect();
    assert_eq!(store.have(ALICE, &ids).await.unwrap(), [true, true]);
    assert_eq!(store.get_blob(ALICE, ids[1]).await.unwrap(), blobs[1].1);
    assert_eq!(fx.objects().await, [pack_key(ALICE, &pack).to_string()]);
    assert_eq!(files_under(&fx.staging()), Vec::<String>::new());
    assert!(!put_temp.exists(), "the put's temp file survived recovery");
    assert_eq!(store.snapshots(ALICE).await.unwrap(), []);
    // A second recovery finds nothing to do.
    assert_eq!(store.recover().await.unwrap(), RecoveryReport::default());
}

/// An unrecorded snapshot object is an interrupted commit (or a catalog older than the
/// repository) unless a forget left its tombstone: recovery records the first when it passes
/// the commit check, deletes one that does not, and deletes the object of an interrupted
/// forget instead of bringing the snapshot back.
#[tokio::test]
async fn recovery_records_an_interrupted_commit_and_finishes_an_interrupted_forget() {
    let plan = FaultPlan::new();
    let fx = Fixture::with_faults(Arc::clone(&plan)).await;
    let mut repo = Repo::new(15);
    create(&fx, ALICE, &repo).await;
    let (data, data_bytes, blobs) = repo.data_pack(&[b"kept through the crash"]);
    let ids: Vec<BlobId> = blobs.iter().map(|(id, _)| *id).collect();
    let (refs, ref_bytes, chunks) = repo.ref_pack(&ids);
    put_pack(&fx.store, ALICE, data, &data_bytes).await;
    put_pack(&fx.store, ALICE, refs, &ref_bytes).await;
    // A commit whose object was stored but whose record a crash prevented.
    let interrupted = repo.snapshot(chunks.clone(), 1_700_000_001);
    let dangling = repo.snapshot(vec![BlobId([7; 32])], 1_700_000_002);
    for snapshot in [&interrupted, &dangling] {
        fx.backend
            .put(
                &snapshot_key(ALICE, snapshot),
                snapshot.bytes.clone().into(),
                ContentHash::of(&snapshot.bytes),
            )
            .await
            .unwrap();
    }
    // A forget whose object deletion failed: record gone, tombstone written, object left.
    let forgotten = repo.snapshot(chunks.clone(), 1_700_000_003);
    commit(&fx.store, ALICE, &forgotten).await.unwrap();
    plan.unavailable(1);
    fx.store.forget(ALICE, forgotten.id).await.unwrap();
    assert_eq!(plan.injected(), 1, "the forget's delete did not fail");

    let store = fx.reopen().await;
    let report = store.recover().await.unwrap();

    assert_eq!(
        (report.snapshots_recorded, report.snapshots_deleted),
        (1, 2),
        "{report:?}"
    );
    let listed: Vec<_> = store
        .snapshots(ALICE)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, [interrupted.id]);
    assert_eq!(
        store.get_snapshot(ALICE, interrupted.id).await.unwrap(),
        interrupted.bytes
    );
    let objects = fx.objects().await;
    assert!(objects.contains(&snapshot_key(ALICE, &interrupted).to_string()));
    for gone in [&dangling, &forgotten] {
        assert!(
            !objects.contains(&snapshot_key(ALICE, gone).to_string()),
            "{objects:?}"
        );
    }
    // The client that commits the interrupted snapshot again is told it is stored.
    assert!(matches!(
        store
            .begin_put(
                ALICE,
                ObjectClass::Snapshot,
                interrupted.id.0,
                interrupted.bytes.len() as u64
            )
            .await
            .unwrap(),
        PutStart::AlreadyStored
    ));
    assert_eq!(store.recover().await.unwrap(), RecoveryReport::default());
}

async fn forget_removes_the_snapshot_but_keeps_its_blobs(fx: Fixture) {
    let mut repo = Repo::new(15);
    create(&fx, ALICE, &repo).await;
    let (data, data_bytes, blobs) = repo.data_pack(&[b"kept"]);
    let (refs, ref_bytes, chunks) = repo.ref_pack(&[blobs[0].0]);
    put_pack(&fx.store, ALICE, data, &data_bytes).await;
    put_pack(&fx.store, ALICE, refs, &ref_bytes).await;
    let gone = repo.snapshot(chunks.clone(), 10);
    let kept = repo.snapshot(chunks.clone(), 20);
    commit(&fx.store, ALICE, &gone).await.unwrap();
    commit(&fx.store, ALICE, &kept).await.unwrap();

    fx.store.forget(ALICE, gone.id).await.unwrap();
    let listed: Vec<_> = fx
        .store
        .snapshots(ALICE)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, [kept.id]);
    assert!(matches!(
        fx.store.get_snapshot(ALICE, gone.id).await,
        Err(RepoStoreError::NotFound { .. })
    ));
    assert!(matches!(
        fx.store.forget(ALICE, gone.id).await,
        Err(RepoStoreError::NotFound { .. })
    ));
    assert!(
        !fx.objects()
            .await
            .contains(&snapshot_key(ALICE, &gone).to_string()),
        "the forgotten snapshot's object is deleted"
    );
    assert_eq!(fx.store.have(ALICE, &[blobs[0].0]).await.unwrap(), [true]);
    assert_eq!(
        fx.store.get_snapshot(ALICE, kept.id).await.unwrap(),
        kept.bytes
    );
    // A forgotten snapshot may be committed again.
    commit(&fx.store, ALICE, &gone).await.unwrap();
    assert_eq!(fx.store.snapshots(ALICE).await.unwrap().len(), 2);
}

async fn the_data_directory_holds_no_plaintext(fx: Fixture) {
    let mut repo = Repo::new(16);
    create(&fx, ALICE, &repo).await;
    let marker_file = [MARKER, b" ", MARKER, b" and more of the same file"].concat();
    let (data, data_bytes, blobs) = repo.data_pack(&[&marker_file, MARKER]);
    let ids: Vec<BlobId> = blobs.iter().map(|(id, _)| *id).collect();
    let (refs, ref_bytes, chunks) = repo.ref_pack(&ids);
    put_pack(&fx.store, ALICE, data, &data_bytes).await;
    put_pack(&fx.store, ALICE, refs, &ref_bytes).await;
    let snapshot = repo.snapshot(chunks, 99);
    commit(&fx.store, ALICE, &snapshot).await.unwrap();
    // Check the catalog's pages and WAL too, as the writer left them.
    drop(fx.store.clone());

    let files = files_under(&fx.data());
    assert!(
        files.iter().any(|f| f.starts_with("repository/")),
        "{files:?}"
    );
    let catalog = fx.catalog_files();
    assert!(!catalog.is_empty(), "no catalog file found");
    let every = files.iter().map(|f| fx.data().join(f)).chain(catalog);
    for file in every {
        let bytes = std::fs::read(&file).unwrap();
        for marker in [MARKER, HOST_MARKER, b"secret-project".as_slice()] {
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker),
                "{} holds plaintext {:?}",
                file.display(),
                String::from_utf8_lossy(marker)
            );
        }
    }
}

#[tokio::test]
async fn the_server_opens_and_recovers_the_store_at_start_up() {
    use std::os::unix::fs::DirBuilderExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let staging = data.join("repo-staging");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&staging)
        .unwrap();
    std::fs::write(staging.join("put-left-by-a-crash"), b"partial").unwrap();
    let config = cyberbackup_server::ServerConfig {
        listen: std::net::Ipv4Addr::LOCALHOST.into(),
        port: 0,
        data_dir: data.clone(),
        ..cyberbackup_server::ServerConfig::default()
    };
    let server = cyberbackup_server::listener::Server::bind(config)
        .await
        .unwrap();
    assert_eq!(files_under(&staging), Vec::<String>::new(), "staging swept");
    assert!(data.join("repository").is_dir(), "the local backend's root");
    drop(server);
    // The store the server opened uses the catalog's repository tables.
    let (store, _) = open(dir.path()).await;
    let repo = Repo::new(17);
    store
        .create(ALICE, repo.config.clone(), repo.key.clone())
        .await
        .unwrap();
    assert_eq!(store.snapshots(ALICE).await.unwrap(), []);
}

#[tokio::test]
async fn a_failed_backend_put_indexes_nothing_and_the_put_can_be_retried() {
    use cyberbackup_server::backend::faulty::Faulty;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let catalog = Catalog::open(data.join("defensive.db")).await.unwrap();
    let plan = FaultPlan::new();
    let local = LocalBackend::open(LocalConfig::new(data.join("repository"))).unwrap();
    let store = RepoStore::new(
        Arc::new(Faulty::new(local, Arc::clone(&plan))),
        catalog,
        data.join("repo-staging"),
        64 << 20,
    );
    store.recover().await.unwrap();
    let mut repo = Repo::new(18);
    store
        .create(ALICE, repo.config.clone(), repo.key.clone())
        .await
        .unwrap();
    let (pack, bytes, blobs) = repo.data_pack(&[b"retried"]);

    plan.fail_puts(1);
    let err = put(&store, ALICE, ObjectClass::Pack, pack.0, &bytes)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RepoStoreError::Backend(e) if e.is_retryable()),
        "{err:?}"
    );
    assert_eq!(plan.injected(), 1);
    assert_eq!(store.have(ALICE, &[blobs[0].0]).await.unwrap(), [false]);
    assert_eq!(
        files_under(&data.join("repo-staging")),
        Vec::<String>::new()
    );

    put(&store, ALICE, ObjectClass::Pack, pack.0, &bytes)
        .await
        .unwrap();
    assert_eq!(store.have(ALICE, &[blobs[0].0]).await.unwrap(), [true]);
}

// ---- scrub and quotas ----

async fn cycle(scrubber: &Scrubber) -> ScrubReport {
    scrubber.run_cycle(None, &mut Pacer::new(0)).await.unwrap()
}

async fn scrub_marks_a_flipped_or_missing_pack_lists_its_blobs_and_clears_the_mark_once_restored(
    fx: Fixture,
) {
    let mut repo = Repo::new(1);
    create(&fx, ALICE, &repo).await;
    let (first, first_bytes, first_blobs) = repo.data_pack(&[b"one", b"two", b"three"]);
    let (second, second_bytes, _) = repo.data_pack(&[b"four"]);
    put_pack(&fx.store, ALICE, first, &first_bytes).await;
    put_pack(&fx.store, ALICE, second, &second_bytes).await;
    let (scrubber, catalog) = scrubber(&fx).await;
    let clean = cycle(&scrubber).await;
    let path = fx.backend_path(&first);
    let mut flipped = first_bytes.clone();
    flipped[10] ^= 0x01;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, &flipped).unwrap();

    let found = cycle(&scrubber).await;
    let marked = catalog.corrupt_objects(None, 100).await.unwrap();
    let (page, more) = fx.store.damaged_blobs(ALICE, None, 2).await.unwrap();
    let (rest, last) = fx
        .store
        .damaged_blobs(ALICE, page.last().copied(), 2)
        .await
        .unwrap();
    let mut appended = first_bytes.clone();
    appended.extend_from_slice(b"garbage after the pack");
    std::fs::write(&path, &appended).unwrap();
    let longer = cycle(&scrubber).await;
    let longer_reason = catalog.corrupt_objects(None, 100).await.unwrap()[0]
        .reason
        .clone();
    std::fs::write(&path, &first_bytes).unwrap();
    let restored = cycle(&scrubber).await;
    let cleared = catalog.corrupt_object_count().await.unwrap();
    std::fs::remove_file(fx.backend_path(&second)).unwrap();
    let lost = cycle(&scrubber).await;
    let missing = catalog.corrupt_objects(None, 100).await.unwrap();

    assert_eq!((clean.packs, clean.damaged), (2, 0));
    assert_eq!(clean.bytes, (first_bytes.len() + second_bytes.len()) as u64);
    assert_eq!(
        (found.packs, found.damaged),
        (2, 1),
        "every pack, every cycle"
    );
    assert_eq!(marked.len(), 1);
    assert_eq!(marked[0].object, first.to_hex());
    assert!(marked[0].reason.contains("BLAKE3"), "{}", marked[0].reason);
    let mut expected: Vec<BlobId> = first_blobs.iter().map(|(id, _)| *id).collect();
    expected.sort();
    assert!(more && !last, "pages of 2 of 3 blobs");
    assert_eq!(
        [page, rest].concat(),
        expected,
        "every blob of the damaged pack, in order"
    );
    assert_eq!(longer.damaged, 1, "bytes appended to a pack are damage too");
    assert!(longer_reason.contains("more than"), "{longer_reason}");
    assert_eq!(restored.damaged, 0);
    assert_eq!(cleared, 0, "a pack found whole again loses its mark");
    assert_eq!(lost.damaged, 1);
    assert_eq!(missing[0].object, second.to_hex());
    assert!(
        missing[0].reason.contains("missing"),
        "{}",
        missing[0].reason
    );
}

async fn a_cycle_reads_never_scrubbed_packs_first_so_a_restart_goes_on_where_it_stopped(
    fx: Fixture,
) {
    let mut repo = Repo::new(2);
    create(&fx, ALICE, &repo).await;
    let (old, old_bytes, _) = repo.data_pack(&[b"old"]);
    put_pack(&fx.store, ALICE, old, &old_bytes).await;
    let (scrubber, catalog) = scrubber(&fx).await;
    cycle(&scrubber).await;
    let (new, new_bytes, _) = repo.data_pack(&[b"new"]);
    put_pack(&fx.store, ALICE, new, &new_bytes).await;

    let next = catalog
        .packs_to_scrub(i64::MAX as u64, None, 1)
        .await
        .unwrap();

    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].pack, new,
        "the pack never scrubbed comes before the one scrubbed"
    );
}

async fn a_pack_above_the_hard_quota_is_refused_before_anything_is_staged(fx: Fixture) {
    let mut repo = Repo::new(3);
    create(&fx, ALICE, &repo).await;
    let (first, first_bytes, _) = repo.data_pack(&[b"fits"]);
    let (second, second_bytes, _) = repo.data_pack(&[b"does not fit"]);
    let hard = first_bytes.len() as u64 + 10;
    let store = fx.store.clone().with_quotas(Quotas {
        default: QuotaLimits {
            soft_bytes: Some(1),
            hard_bytes: Some(hard),
        },
        ..Quotas::default()
    });
    put_pack(&store, ALICE, first, &first_bytes).await;

    let refused = store
        .begin_put(
            ALICE,
            ObjectClass::Pack,
            second.0,
            second_bytes.len() as u64,
        )
        .await;
    let again = store
        .begin_put(ALICE, ObjectClass::Pack, first.0, first_bytes.len() as u64)
        .await
        .unwrap();
    let usage = store.usage(ALICE).await.unwrap();

    let Err(RepoStoreError::QuotaExceeded { message }) = refused else {
        panic!("expected a quota refusal, got {refused:?}");
    };
    assert!(
        message.starts_with("quota exceeded: ") && message.contains(" hard quota for client "),
        "{message}"
    );
    assert!(files_under(&fx.staging()).is_empty(), "nothing staged");
    assert!(
        matches!(again, PutStart::AlreadyStored),
        "a stored pack is not counted twice"
    );
    assert_eq!(usage.stored_bytes, first_bytes.len() as u64);
    assert_eq!((usage.soft_quota_bytes, usage.hard_quota_bytes), (1, hard));
    assert!(usage.is_over_soft());
}

async fn puts_in_flight_count_against_the_hard_quota_until_they_end(fx: Fixture) {
    let mut repo = Repo::new(4);
    create(&fx, ALICE, &repo).await;
    let (first, first_bytes, _) = repo.data_pack(&[b"first connection"]);
    let (second, second_bytes, _) = repo.data_pack(&[b"second connection"]);
    // Room for either pack, not for both.
    let hard = (first_bytes.len() + second_bytes.len()) as u64 - 1;
    let store = fx.store.clone().with_quotas(Quotas {
        default: QuotaLimits {
            soft_bytes: None,
            hard_bytes: Some(hard),
        },
        ..Quotas::default()
    });
    let begin =
        |id: [u8; 32], len: usize| store.begin_put(ALICE, ObjectClass::Pack, id, len as u64);

    let Ok(PutStart::Receiving(open)) = begin(first.0, first_bytes.len()).await else {
        panic!("the first pack fits");
    };
    let refused = begin(second.0, second_bytes.len()).await;
    assert!(
        matches!(refused, Err(RepoStoreError::QuotaExceeded { .. })),
        "the first put's bytes are reserved: {refused:?}"
    );
    store.abort_put(open).await;
    let Ok(PutStart::Receiving(mut open)) = begin(second.0, second_bytes.len()).await else {
        panic!("an abandoned put gives its reservation back");
    };
    open.write(Bytes::from(second_bytes.clone())).await.unwrap();
    store.finish_put(open).await.unwrap();
    let refused = begin(first.0, first_bytes.len()).await;
    assert!(
        matches!(refused, Err(RepoStoreError::QuotaExceeded { .. })),
        "the stored pack counts once it is indexed: {refused:?}"
    );
    assert_eq!(
        store.usage(ALICE).await.unwrap().stored_bytes,
        second_bytes.len() as u64
    );
}

async fn blobs_of_a_damaged_pack_are_uploaded_again_by_the_next_backup_and_move_to_its_pack(
    fx: Fixture,
) {
    let mut repo = Repo::new(3);
    create(&fx, ALICE, &repo).await;
    let (damaged, damaged_bytes, blobs) = repo.data_pack(&[b"healed by the next backup"]);
    put_pack(&fx.store, ALICE, damaged, &damaged_bytes).await;
    let (scrubber, _catalog) = scrubber(&fx).await;
    let path = fx.backend_path(&damaged);
    let mut flipped = damaged_bytes.clone();
    flipped[3] ^= 0x01;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, &flipped).unwrap();
    let ids: Vec<BlobId> = blobs.iter().map(|(id, _)| *id).collect();
    assert_eq!(fx.store.have(ALICE, &ids).await.unwrap(), [true]);

    assert_eq!(cycle(&scrubber).await.damaged, 1);
    // Damaged: a new backup is told to send it again rather than deduplicate against it.
    assert_eq!(fx.store.have(ALICE, &ids).await.unwrap(), [false]);
    let (fresh, fresh_bytes, fresh_blobs) = repo.data_pack(&[b"healed by the next backup"]);
    assert_eq!(fresh_blobs[0].0, ids[0]);
    put_pack(&fx.store, ALICE, fresh, &fresh_bytes).await;

    assert_eq!(fx.store.have(ALICE, &ids).await.unwrap(), [true]);
    assert_eq!(
        fx.store.get_blob(ALICE, ids[0]).await.unwrap(),
        fresh_blobs[0].1,
        "the blob is read from the new pack"
    );
}

async fn a_damaged_pack_is_never_repacked_so_its_damage_stays_visible(fx: Fixture) {
    let mut repo = Repo::new(4);
    create(&fx, ALICE, &repo).await;
    // Incompressible, so the dead blob is most of the pack.
    let big: Vec<u8> = (0..100_000u32)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect();
    let (pack, bytes, blobs) = repo.data_pack(&[b"kept, then damaged", &big]);
    put_pack(&fx.store, ALICE, pack, &bytes).await;
    let kept = [blobs[0].0];
    let (ref_pack, ref_bytes, chunks) = repo.ref_pack(&kept);
    put_pack(&fx.store, ALICE, ref_pack, &ref_bytes).await;
    commit(&fx.store, ALICE, &repo.snapshot(chunks, 10))
        .await
        .unwrap();
    // The kept blob's bytes are hit; the scrub marks the pack.
    let path = fx.backend_path(&pack);
    let mut flipped = bytes.clone();
    flipped[3] ^= 0x01;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, &flipped).unwrap();
    let (scrubber, _catalog) = scrubber(&fx).await;
    assert_eq!(cycle(&scrubber).await.damaged, 1);

    // Two prunes long after: the big blob is condemned, then swept, so the pack is mostly
    // dead, yet it is not copied into a fresh pack.
    let options = PruneOptions {
        grace: std::time::Duration::from_secs(3600),
        repack_below_percent: 90,
        deletion_delay: std::time::Duration::ZERO,
    };
    let later = 4_000_000_000;
    fx.store.prune_at(ALICE, &options, later).await.unwrap();
    let swept = fx
        .store
        .prune_at(ALICE, &options, later + 7200)
        .await
        .unwrap();

    assert_eq!(swept.deleted_blobs, 1, "{swept:?}");
    assert_eq!(swept.packs_repacked, 0, "{swept:?}");
    assert_eq!(fx.store.have(ALICE, &kept).await.unwrap(), [false]);
    assert!(path.exists());
}

/// `count` plaintexts of 1–3 KiB that do not compress (a restore's small files).
fn small_files(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed | 1;
    (0..count)
        .map(|i| {
            (0..1024 + (i * 37) % 2048)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()[0]
                })
                .collect()
        })
        .collect()
}

fn as_slices(files: &[Vec<u8>]) -> Vec<&[u8]> {
    files.iter().map(Vec::as_slice).collect()
}

/// A connection's reader serves every blob right whatever the order: through its pack in
/// order (the readahead), backwards, alternating between two packs; a stretch it holds
/// serves no other client and no blob it does not hold.
async fn a_blob_reader_serves_every_blob_in_any_order(fx: Fixture) {
    let mut repo = Repo::new(31);
    create(&fx, ALICE, &repo).await;
    create(&fx, BOB, &Repo::new(32)).await;
    let first_files = small_files(300, 1);
    let second_files = small_files(300, 2);
    let (first, first_bytes, first_blobs) = repo.data_pack(&as_slices(&first_files));
    let (second, second_bytes, second_blobs) = repo.data_pack(&as_slices(&second_files));
    put_pack(&fx.store, ALICE, first, &first_bytes).await;
    put_pack(&fx.store, ALICE, second, &second_bytes).await;

    let mut reader = BlobReader::default();
    for (id, sealed) in first_blobs.iter().chain(&second_blobs) {
        assert_eq!(&reader.read(&fx.store, ALICE, *id).await.unwrap(), sealed);
    }
    for (id, sealed) in first_blobs.iter().rev() {
        assert_eq!(&reader.read(&fx.store, ALICE, *id).await.unwrap(), sealed);
    }
    for (a, b) in first_blobs.iter().zip(&second_blobs) {
        for (id, sealed) in [a, b] {
            assert_eq!(&reader.read(&fx.store, ALICE, *id).await.unwrap(), sealed);
        }
    }
    // Two reads in order: the stretch now holds ALICE's next blobs; BOB asks for one of them
    // through the same reader.
    for (id, _) in &first_blobs[9..11] {
        reader.read(&fx.store, ALICE, *id).await.unwrap();
    }
    assert!(matches!(
        reader.read(&fx.store, BOB, first_blobs[11].0).await,
        Err(RepoStoreError::NotFound { what: "blob", .. })
    ));
    assert!(matches!(
        reader.read(&fx.store, ALICE, BlobId([9; 32])).await,
        Err(RepoStoreError::NotFound { what: "blob", .. })
    ));
}

/// Reads that follow each other through a pack cost a handful of backend reads, not one per
/// blob; reads in any other order cost one each (no bytes read for nothing); a stretch past
/// the end of a truncated pack still serves the whole blobs before the cut.
#[tokio::test]
async fn sequential_blob_reads_share_ranged_reads_and_a_truncated_pack_keeps_its_whole_blobs() {
    let plan = FaultPlan::new();
    let fx = Fixture::with_faults(Arc::clone(&plan)).await;
    let mut repo = Repo::new(33);
    create(&fx, ALICE, &repo).await;
    let files = small_files(300, 3);
    let (pack, bytes, blobs) = repo.data_pack(&as_slices(&files));
    put_pack(&fx.store, ALICE, pack, &bytes).await;

    let before = plan.gets_started();
    let mut reader = BlobReader::default();
    for (id, sealed) in &blobs {
        assert_eq!(&reader.read(&fx.store, ALICE, *id).await.unwrap(), sealed);
    }
    let in_order = plan.gets_started() - before;
    assert!(
        in_order <= 12,
        "300 blobs read in pack order took {in_order} backend reads"
    );

    let before = plan.gets_started();
    let mut reader = BlobReader::default();
    for (id, sealed) in blobs.iter().rev() {
        assert_eq!(&reader.read(&fx.store, ALICE, *id).await.unwrap(), sealed);
    }
    assert_eq!(
        plan.gets_started() - before,
        blobs.len(),
        "backwards: one read per blob"
    );

    // Cut the pack in the middle of blob 200: the blobs before it are still whole.
    let cut = bytes.len() / 3 * 2;
    let path = fx.backend_path(&pack);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, &bytes[..cut]).unwrap();
    let mut reader = BlobReader::default();
    let mut whole = 0;
    for (id, sealed) in &blobs {
        match reader.read(&fx.store, ALICE, *id).await {
            Ok(read) => {
                assert_eq!(&read, sealed);
                whole += 1;
            }
            Err(err) => assert!(
                matches!(
                    err,
                    RepoStoreError::Backend(BackendError::InvalidRange { .. })
                ),
                "{err:?}"
            ),
        }
    }
    // Where each sealed blob ends in the pack (they follow each other in order).
    let mut ends = Vec::new();
    let mut from = 0;
    for (_, sealed) in &blobs {
        let at = from
            + bytes[from..]
                .windows(sealed.len())
                .position(|w| w == sealed)
                .unwrap();
        from = at + sealed.len();
        ends.push(from);
    }
    let expected = ends.iter().take_while(|&&end| end <= cut).count();
    assert!(expected > 150, "the cut keeps most blobs whole: {expected}");
    assert_eq!(whole, expected, "every blob before the cut is served");
}

on_both_engines!(
    pack_round_trip_and_have,
    a_duplicate_blob_keeps_its_first_location,
    hash_mismatch_leaves_nothing,
    a_pack_whose_header_does_not_parse_is_refused,
    a_put_must_have_the_announced_length,
    a_commit_with_a_missing_blob_is_refused_and_nothing_is_listed,
    a_commit_after_all_packs_is_listed_and_readable,
    a_snapshot_under_another_id_is_refused,
    clients_cannot_reach_each_others_repositories,
    every_operation_needs_a_repository,
    create_checks_its_objects_and_refuses_a_second_repository,
    staging_files_are_private_and_an_abort_leaves_none,
    recovery_indexes_an_unindexed_pack_and_cleans_up,
    forget_removes_the_snapshot_but_keeps_its_blobs,
    the_data_directory_holds_no_plaintext,
    scrub_marks_a_flipped_or_missing_pack_lists_its_blobs_and_clears_the_mark_once_restored,
    a_cycle_reads_never_scrubbed_packs_first_so_a_restart_goes_on_where_it_stopped,
    a_pack_above_the_hard_quota_is_refused_before_anything_is_staged,
    puts_in_flight_count_against_the_hard_quota_until_they_end,
    blobs_of_a_damaged_pack_are_uploaded_again_by_the_next_backup_and_move_to_its_pack,
    a_damaged_pack_is_never_repacked_so_its_damage_stays_visible,
    a_blob_reader_serves_every_blob_in_any_order,
);
