//! The keyless prune (`RepoStore::prune`, docs/repository.md "Prune") against a real SQLite
//! catalog and a real local backend: space of forgotten snapshots is given back, what a kept
//! snapshot references is never touched, a backup that asked `HAVE` before the prune still
//! commits within the grace period, an upload claims a condemned blob back, repacking moves
//! live blobs byte for byte, a damaged reference chunk stops the prune before it changes
//! anything, start-up recovery never re-indexes a pack pending deletion, and prunes racing
//! commits never break a committed snapshot. Time is moved with `prune_at`, never slept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod repo_fixture;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cyberbackup_core::repo::retention::RetentionPolicy;
use cyberbackup_core::repo::{BlobId, PackId, SealedSnapshot};
use cyberbackup_server::backend::faulty::FaultPlan;
use cyberbackup_server::repository::{
    PruneOptions, PrunePhase, PruneReport, RepoStore, RepoStoreError,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use repo_fixture::*;

const HOUR: u64 = 3600;

/// Grace of one hour, repack below 50 %, pack objects deleted as soon as they are retired.
fn options() -> PruneOptions {
    PruneOptions {
        grace: Duration::from_secs(HOUR),
        repack_below_percent: 50,
        deletion_delay: Duration::ZERO,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A committed snapshot made of one new data pack and one reference pack.
struct Backup {
    snapshot: SealedSnapshot,
    data_pack: PackId,
    ref_pack: PackId,
    blobs: Vec<(BlobId, Bytes)>,
}

/// Uploads a data pack of `plaintexts` and a reference pack listing its blobs plus `also`
/// (blobs of earlier backups), then commits a snapshot of them.
async fn backup(fx: &Fixture, repo: &mut Repo, plaintexts: &[&[u8]], also: &[BlobId]) -> Backup {
    let (data_pack, bytes, blobs) = repo.data_pack(plaintexts);
    put_pack(&fx.store, ALICE, data_pack, &bytes).await;
    let mut listed: Vec<BlobId> = blobs.iter().map(|(id, _)| *id).collect();
    listed.extend_from_slice(also);
    let (ref_pack, ref_bytes, chunks) = repo.ref_pack(&listed);
    put_pack(&fx.store, ALICE, ref_pack, &ref_bytes).await;
    let snapshot = repo.snapshot(chunks, 1_000 + plaintexts.len() as i64);
    commit(&fx.store, ALICE, &snapshot).await.unwrap();
    Backup {
        snapshot,
        data_pack,
        ref_pack,
        blobs,
    }
}

/// Every blob of `blobs` is indexed and reads back as the bytes stored.
async fn assert_readable(store: &RepoStore, blobs: &[(BlobId, Bytes)]) {
    for (id, bytes) in blobs {
        assert_eq!(&store.get_blob(ALICE, *id).await.unwrap(), bytes, "{id}");
    }
    let ids: Vec<BlobId> = blobs.iter().map(|(id, _)| *id).collect();
    assert!(store.have(ALICE, &ids).await.unwrap().iter().all(|h| *h));
}

async fn gone(store: &RepoStore, id: BlobId) -> bool {
    matches!(
        store.get_blob(ALICE, id).await,
        Err(RepoStoreError::NotFound { .. })
    )
}

fn ids(blobs: &[(BlobId, Bytes)]) -> Vec<BlobId> {
    blobs.iter().map(|(id, _)| *id).collect()
}

async fn a_forgotten_snapshot_is_reclaimed_and_the_kept_one_stays_whole(fx: Fixture) {
    let mut repo = Repo::new(1);
    create(&fx, ALICE, &repo).await;
    let shared = backup(&fx, &mut repo, &[b"shared by both snapshots"], &[]).await;
    let old = backup(
        &fx,
        &mut repo,
        &[b"only old #1", b"only old #2"],
        &ids(&shared.blobs),
    )
    .await;
    fx.store.forget(ALICE, shared.snapshot.id).await.unwrap();
    fx.store.forget(ALICE, old.snapshot.id).await.unwrap();
    let kept = backup(&fx, &mut repo, &[b"new"], &ids(&shared.blobs)).await;
    let old_pack_size = std::fs::metadata(fx.backend_path(&old.data_pack))
        .unwrap()
        .len();

    // Within the grace period nothing is deleted (the packs are too young to condemn).
    let report = fx.store.prune_at(ALICE, &options(), now()).await.unwrap();
    assert_eq!(
        (report.condemned, report.deleted_blobs, report.packs_deleted),
        (0, 0, 0)
    );
    // After it: the forgotten blobs are condemned by one run and deleted by the next.
    let later = now() + 2 * HOUR;
    let first = fx.store.prune_at(ALICE, &options(), later).await.unwrap();
    assert_eq!(first.snapshots, 1);
    assert!(first.condemned >= 2, "{first:?}");
    assert_eq!(first.deleted_blobs, 0, "{first:?}");
    assert!(
        fx.store
            .have(ALICE, &ids(&old.blobs))
            .await
            .unwrap()
            .iter()
            .all(|h| !h)
    );
    let second = fx
        .store
        .prune_at(ALICE, &options(), later + 2 * HOUR)
        .await
        .unwrap();
    assert_eq!(second.deleted_blobs, first.condemned, "{second:?}");
    for (id, _) in &old.blobs {
        assert!(gone(&fx.store, *id).await, "{id} still readable");
    }
    assert!(!fx.backend_path(&old.data_pack).exists());
    assert!(!fx.backend_path(&old.ref_pack).exists());
    assert!(!fx.backend_path(&shared.ref_pack).exists());
    assert!(second.bytes_freed >= old_pack_size, "{second:?}");
    // What the kept snapshot references is untouched.
    assert_readable(&fx.store, &shared.blobs).await;
    assert_readable(&fx.store, &kept.blobs).await;
    assert!(fx.backend_path(&shared.data_pack).exists());
    assert_eq!(fx.store.snapshots(ALICE).await.unwrap().len(), 1);
    // A third run finds nothing more to do.
    let third = fx
        .store
        .prune_at(ALICE, &options(), later + 4 * HOUR)
        .await
        .unwrap();
    assert_eq!(
        (third.condemned, third.deleted_blobs, third.packs_deleted),
        (0, 0, 0),
        "{third:?}"
    );
}

async fn a_backup_that_asked_before_the_prune_commits_and_keeps_its_blobs(fx: Fixture) {
    let mut repo = Repo::new(2);
    create(&fx, ALICE, &repo).await;
    let first = backup(&fx, &mut repo, &[b"reused by the backup in flight"], &[]).await;
    fx.store.forget(ALICE, first.snapshot.id).await.unwrap();
    // The backup in flight asks HAVE before the prune: the blob is there.
    assert_eq!(
        fx.store.have(ALICE, &ids(&first.blobs)).await.unwrap(),
        [true]
    );

    let later = now() + 2 * HOUR;
    let marked = fx.store.prune_at(ALICE, &options(), later).await.unwrap();
    assert!(marked.condemned >= 1, "{marked:?}");
    // Condemned: a new HAVE says absent, but the bytes are still stored.
    assert_eq!(
        fx.store.have(ALICE, &ids(&first.blobs)).await.unwrap(),
        [false]
    );
    // The backup in flight commits a snapshot referencing it (its own reference chunk).
    let (ref_pack, ref_bytes, chunks) = repo.ref_pack(&ids(&first.blobs));
    put_pack(&fx.store, ALICE, ref_pack, &ref_bytes).await;
    let snapshot = repo.snapshot(chunks, 2_000);
    commit(&fx.store, ALICE, &snapshot).await.unwrap();

    let swept = fx
        .store
        .prune_at(ALICE, &options(), later + 2 * HOUR)
        .await
        .unwrap();
    assert_eq!(
        swept.revived, 0,
        "the commit claimed it back already: {swept:?}"
    );
    assert_readable(&fx.store, &first.blobs).await;
    assert!(fx.backend_path(&first.data_pack).exists());
}

async fn an_upload_claims_a_condemned_blob_back(fx: Fixture) {
    let mut repo = Repo::new(3);
    create(&fx, ALICE, &repo).await;
    let first = backup(&fx, &mut repo, &[b"uploaded again"], &[]).await;
    fx.store.forget(ALICE, first.snapshot.id).await.unwrap();
    let later = now() + 2 * HOUR;
    fx.store.prune_at(ALICE, &options(), later).await.unwrap();
    assert_eq!(
        fx.store.have(ALICE, &ids(&first.blobs)).await.unwrap(),
        [false]
    );

    // A new backup uploads it again (new pack, new seal) and commits.
    let again = backup(&fx, &mut repo, &[b"uploaded again"], &[]).await;
    assert_eq!(again.blobs[0].0, first.blobs[0].0, "same content, same ID");
    fx.store
        .prune_at(ALICE, &options(), later + 2 * HOUR)
        .await
        .unwrap();
    // The blob now lives in the new pack; the old pack is gone.
    assert_readable(&fx.store, &again.blobs).await;
    assert!(fx.backend_path(&again.data_pack).exists());
    assert!(!fx.backend_path(&first.data_pack).exists());
}

async fn repack_moves_live_blobs_unchanged_and_frees_the_old_pack(fx: Fixture) {
    let mut repo = Repo::new(4);
    create(&fx, ALICE, &repo).await;
    // Incompressible, so the sealed blob stays large.
    let mut big = vec![0u8; 200_000];
    ChaCha20Rng::seed_from_u64(40).fill_bytes(&mut big);
    let mixed = backup(&fx, &mut repo, &[b"small and kept", &big], &[]).await;
    let keep = &mixed.blobs[..1];
    fx.store.forget(ALICE, mixed.snapshot.id).await.unwrap();
    let (ref_pack, ref_bytes, chunks) = repo.ref_pack(&ids(keep));
    put_pack(&fx.store, ALICE, ref_pack, &ref_bytes).await;
    commit(&fx.store, ALICE, &repo.snapshot(chunks, 3_000))
        .await
        .unwrap();

    let later = now() + 2 * HOUR;
    fx.store.prune_at(ALICE, &options(), later).await.unwrap();
    let report = fx
        .store
        .prune_at(ALICE, &options(), later + 2 * HOUR)
        .await
        .unwrap();
    assert_eq!(report.packs_repacked, 1, "{report:?}");
    assert_eq!(report.packs_written, 1, "{report:?}");
    assert!(!fx.backend_path(&mixed.data_pack).exists());
    assert!(report.bytes_freed > 200_000, "{report:?}");
    assert_readable(&fx.store, keep).await;
    assert!(gone(&fx.store, mixed.blobs[1].0).await);
    // The repacked pack is a valid pack under its own hash: a restart's recovery (which
    // parses every unindexed pack's header) and the store agree it is indexed.
    let store = fx.reopen().await;
    let recovered = store.recover().await.unwrap();
    assert_eq!((recovered.packs_indexed, recovered.packs_deleted), (0, 0));
    assert_readable(&store, keep).await;
}

async fn a_damaged_reference_chunk_stops_the_prune_before_it_changes_anything(fx: Fixture) {
    let mut repo = Repo::new(5);
    create(&fx, ALICE, &repo).await;
    let forgotten = backup(&fx, &mut repo, &[b"forgotten"], &[]).await;
    fx.store.forget(ALICE, forgotten.snapshot.id).await.unwrap();
    let kept = backup(&fx, &mut repo, &[b"kept"], &[]).await;
    let path = fx.backend_path(&kept.ref_pack);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let err = fx
        .store
        .prune_at(ALICE, &options(), now() + 4 * HOUR)
        .await
        .unwrap_err();
    assert!(matches!(err, RepoStoreError::PruneUnsafe { .. }), "{err:?}");
    assert!(err.to_string().contains("deleted nothing"), "{err}");
    // Even the forgotten snapshot's blob was not condemned.
    assert_eq!(
        fx.store.have(ALICE, &ids(&forgotten.blobs)).await.unwrap(),
        [true]
    );
    assert!(fx.backend_path(&forgotten.data_pack).exists());
}

async fn recovery_never_indexes_a_pack_pending_deletion(fx: Fixture) {
    let mut repo = Repo::new(6);
    create(&fx, ALICE, &repo).await;
    let forgotten = backup(&fx, &mut repo, &[b"forgotten"], &[]).await;
    fx.store.forget(ALICE, forgotten.snapshot.id).await.unwrap();
    let delayed = PruneOptions {
        deletion_delay: Duration::from_secs(HOUR),
        ..options()
    };
    let later = now() + 2 * HOUR;
    fx.store.prune_at(ALICE, &delayed, later).await.unwrap();
    let retired = fx
        .store
        .prune_at(ALICE, &delayed, later + 2 * HOUR)
        .await
        .unwrap();
    assert!(retired.packs_retired >= 2, "{retired:?}");
    assert_eq!(retired.packs_deleted, 0, "{retired:?}");
    assert!(fx.backend_path(&forgotten.data_pack).exists());

    // A crash now: the objects are still there, their rows are gone.
    let store = fx.reopen().await;
    let recovered = store.recover().await.unwrap();
    assert_eq!(recovered.packs_indexed, 0, "{recovered:?}");
    assert_eq!(
        store.have(ALICE, &ids(&forgotten.blobs)).await.unwrap(),
        [false]
    );
    // The delayed deletion runs when due.
    let due = store
        .prune_at(ALICE, &delayed, later + 4 * HOUR)
        .await
        .unwrap();
    assert_eq!(due.packs_deleted, retired.packs_retired, "{due:?}");
    assert!(!fx.backend_path(&forgotten.data_pack).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prunes_racing_commits_never_break_a_committed_snapshot() {
    let fx = Fixture::new().await;
    let mut repo = Repo::new(7);
    create(&fx, ALICE, &repo).await;
    // No grace at all, and every pack counts as old: the most aggressive prune. Commits
    // whose blobs it deleted first are refused (MissingBlobs); one that was committed must
    // keep every blob.
    const ROUNDS: u32 = 80;
    let aggressive = PruneOptions {
        grace: Duration::ZERO,
        repack_below_percent: 90,
        deletion_delay: Duration::ZERO,
    };
    let store = fx.store.clone();
    let pruner = tokio::spawn(async move {
        let mut runs: Vec<PruneReport> = Vec::new();
        for _ in 0..ROUNDS {
            runs.push(
                store
                    .prune_at(ALICE, &aggressive, now() + 10)
                    .await
                    .unwrap(),
            );
            tokio::task::yield_now().await;
        }
        runs
    });
    let mut committed = Vec::new();
    let mut previous: Vec<(BlobId, Bytes)> = Vec::new();
    for round in 0..ROUNDS {
        let content = format!("round {round}");
        let (pack, bytes, blobs) = repo.data_pack(&[content.as_bytes()]);
        put_pack(&fx.store, ALICE, pack, &bytes).await;
        // Each snapshot keeps its own blob and the previous round's.
        let mut listed = ids(&blobs);
        listed.extend(ids(&previous));
        let (ref_pack, ref_bytes, chunks) = repo.ref_pack(&listed);
        put_pack(&fx.store, ALICE, ref_pack, &ref_bytes).await;
        let snapshot = repo.snapshot(chunks, 10_000 + i64::from(round));
        match commit(&fx.store, ALICE, &snapshot).await {
            Ok(()) => {
                let mut kept = blobs.clone();
                kept.extend(previous.iter().cloned());
                committed.push(kept);
            }
            Err(RepoStoreError::MissingBlobs { .. }) => {}
            Err(other) => panic!("{other:?}"),
        }
        previous = blobs;
        tokio::task::yield_now().await;
    }
    let runs = pruner.await.unwrap();
    assert!(
        runs.iter().any(|r| r.deleted_blobs > 0),
        "the prunes did delete"
    );
    assert!(!committed.is_empty());
    let final_run = fx
        .store
        .prune_at(ALICE, &aggressive, now() + 20)
        .await
        .unwrap();
    assert_eq!(final_run.snapshots, committed.len() as u64);
    for blobs in &committed {
        assert_readable(&fx.store, blobs).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_committed_while_the_prune_reads_its_live_set_is_kept() {
    let plan = FaultPlan::new();
    let fx = Fixture::with_faults(Arc::clone(&plan)).await;
    let mut repo = Repo::new(10);
    create(&fx, ALICE, &repo).await;
    for round in 0..8u8 {
        backup(&fx, &mut repo, &[&[round; 40]], &[]).await;
    }
    // Every read of the prune's live set now takes 100 ms: a commit has time to land
    // between the prune's listing of reference chunks and its mark.
    plan.slow_gets(Duration::from_millis(100));
    let reads_before = plan.gets_started();
    let store = fx.store.clone();
    let aggressive = PruneOptions {
        grace: Duration::ZERO,
        ..options()
    };
    let pruner = tokio::spawn(async move { store.prune_at(ALICE, &aggressive, now() + 10).await });
    while plan.gets_started() == reads_before {
        tokio::task::yield_now().await;
    }
    let during = backup(&fx, &mut repo, &[b"committed during the live set"], &[]).await;
    assert!(
        !pruner.is_finished(),
        "the commit landed while the prune ran"
    );
    let report = pruner.await.unwrap().unwrap();
    plan.slow_gets(Duration::ZERO);

    assert_eq!(report.snapshots, 9, "{report:?}");
    assert_readable(&fx.store, &during.blobs).await;
    assert!(fx.backend_path(&during.data_pack).exists());
}

/// A pack a prune deletes while a scrub cycle is under way is not damage: the scrub neither
/// marks nor counts it (a false "scrub found corruption" alert otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packs_a_prune_deletes_during_a_scrub_are_not_reported_damaged() {
    let plan = FaultPlan::new();
    let fx = Fixture::with_faults(Arc::clone(&plan)).await;
    let mut repo = Repo::new(12);
    create(&fx, ALICE, &repo).await;
    let forgotten = backup(&fx, &mut repo, &[b"forgotten while scrubbed"], &[]).await;
    fx.store.forget(ALICE, forgotten.snapshot.id).await.unwrap();
    let (scrubber, catalog) = scrubber(&fx).await;
    // Every read takes 200 ms: the prune runs while the scrub reads its first pack.
    plan.slow_gets(Duration::from_millis(200));
    let reads_before = plan.gets_started();
    let scrub = tokio::spawn(async move {
        scrubber
            .run_cycle(None, &mut cyberbackup_server::scrub::Pacer::new(0))
            .await
    });
    while plan.gets_started() == reads_before {
        tokio::task::yield_now().await;
    }
    let aggressive = PruneOptions {
        grace: Duration::ZERO,
        ..options()
    };
    let pruned = fx
        .store
        .prune_at(ALICE, &aggressive, now() + 10)
        .await
        .unwrap();
    assert_eq!(pruned.packs_deleted, 2, "{pruned:?}");
    let report = scrub.await.unwrap().unwrap();
    plan.slow_gets(Duration::ZERO);
    assert_eq!(report.packs, 2, "{report:?}");
    assert_eq!(report.damaged, 0, "{report:?}");
    assert!(catalog.corrupt_objects(None, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_prune_shows_its_phase_and_progress_and_two_prunes_of_one_repository_take_turns()
{
    let plan = FaultPlan::new();
    let fx = Fixture::with_faults(Arc::clone(&plan)).await;
    let mut repo = Repo::new(11);
    create(&fx, ALICE, &repo).await;
    for round in 0..4u8 {
        backup(&fx, &mut repo, &[&[round; 40]], &[]).await;
    }
    assert!(fx.store.prune_progress().running().is_empty());
    // Each reference chunk read takes 200 ms: the prune sits in its live-set phase.
    plan.slow_gets(Duration::from_millis(200));
    let (first, second) = (fx.store.clone(), fx.store.clone());
    let pruner = tokio::spawn(async move { first.prune_at(ALICE, &options(), now()).await });
    let running = loop {
        let running = fx.store.prune_progress().running();
        if running.first().is_some_and(|a| a.total > 0) {
            break running;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(running.len(), 1, "{running:?}");
    let activity = &running[0];
    assert_eq!(activity.client_id, hex::encode(ALICE.0));
    assert_eq!(activity.phase, PrunePhase::LiveSet);
    assert_eq!(activity.total, 4, "one reference chunk per snapshot");
    assert!(activity.done < activity.total, "{activity:?}");

    // A second prune of the same repository waits for the first instead of interleaving.
    let waiting = tokio::spawn(async move { second.prune_at(ALICE, &options(), now()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fx.store.prune_progress().running().len(), 1);
    assert!(!waiting.is_finished());
    pruner.await.unwrap().unwrap();
    // The second starts only now, and its own live set takes as long again to read.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while fx.store.prune_progress().running().is_empty() {
        assert!(
            !waiting.is_finished(),
            "the second prune ran alongside the first"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second prune never started"
        );
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished());
    waiting.await.unwrap().unwrap();
    plan.slow_gets(Duration::ZERO);
    assert!(
        fx.store.prune_progress().running().is_empty(),
        "a finished prune leaves no activity behind"
    );
}

async fn the_servers_retention_policy_keeps_per_source_without_keys(fx: Fixture) {
    let mut repo = Repo::new(11);
    create(&fx, ALICE, &repo).await;
    // Two sources (paths), three daily snapshots each, committed out of order.
    let day = 86_400;
    let mut made = Vec::new();
    for (path, days) in [(&b"/home"[..], [3, 1, 2]), (&b"/etc"[..], [2, 3, 1])] {
        for d in days {
            let (pack, bytes, blobs) = repo.data_pack(&[format!("{path:?} day {d}").as_bytes()]);
            put_pack(&fx.store, ALICE, pack, &bytes).await;
            let (ref_pack, ref_bytes, chunks) = repo.ref_pack(&ids(&blobs));
            put_pack(&fx.store, ALICE, ref_pack, &ref_bytes).await;
            let snapshot = repo.snapshot_of(chunks, 1_700_000_000 + d * day, path);
            commit(&fx.store, ALICE, &snapshot).await.unwrap();
            made.push((path, d, snapshot.id));
        }
    }
    let policy = RetentionPolicy {
        keep_last: Some(1),
        keep_daily: Some(2),
        ..RetentionPolicy::default()
    };

    let forgotten = fx
        .store
        .apply_retention(ALICE, &policy, now())
        .await
        .unwrap();

    // Per source the two newest days stay (the newest is also "last 1"); day 1 goes.
    let expected_gone: Vec<_> = made
        .iter()
        .filter(|(_, d, _)| *d == 1)
        .map(|m| m.2)
        .collect();
    let mut forgotten_sorted = forgotten.clone();
    forgotten_sorted.sort();
    let mut expected_sorted = expected_gone.clone();
    expected_sorted.sort();
    assert_eq!(forgotten_sorted, expected_sorted);
    let listed: Vec<_> = fx
        .store
        .snapshots(ALICE)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed.len(), 4);
    assert!(expected_gone.iter().all(|id| !listed.contains(id)));
    // A second run finds nothing more to forget.
    let again = fx
        .store
        .apply_retention(ALICE, &policy, now())
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

async fn prune_needs_a_repository_and_only_touches_its_own_client(fx: Fixture) {
    let err = fx.store.prune(ALICE, &options()).await.unwrap_err();
    assert!(matches!(err, RepoStoreError::NoRepository), "{err:?}");

    let mut alice = Repo::new(8);
    let mut bob = Repo::new(9);
    create(&fx, ALICE, &alice).await;
    create(&fx, BOB, &bob).await;
    let (pack, bytes, bob_blobs) = bob.data_pack(&[b"bob's unreferenced blob"]);
    put_pack(&fx.store, BOB, pack, &bytes).await;
    let forgotten = backup(&fx, &mut alice, &[b"alice forgot this"], &[]).await;
    fx.store.forget(ALICE, forgotten.snapshot.id).await.unwrap();
    let later = now() + 2 * HOUR;
    fx.store.prune_at(ALICE, &options(), later).await.unwrap();
    fx.store
        .prune_at(ALICE, &options(), later + 2 * HOUR)
        .await
        .unwrap();
    assert!(gone(&fx.store, forgotten.blobs[0].0).await);
    // Bob's blob, referenced by nothing, is untouched by Alice's prune.
    assert_eq!(
        fx.store.get_blob(BOB, bob_blobs[0].0).await.unwrap(),
        bob_blobs[0].1
    );
}

on_both_engines!(
    a_forgotten_snapshot_is_reclaimed_and_the_kept_one_stays_whole,
    a_backup_that_asked_before_the_prune_commits_and_keeps_its_blobs,
    an_upload_claims_a_condemned_blob_back,
    repack_moves_live_blobs_unchanged_and_frees_the_old_pack,
    a_damaged_reference_chunk_stops_the_prune_before_it_changes_anything,
    recovery_never_indexes_a_pack_pending_deletion,
    the_servers_retention_policy_keeps_per_source_without_keys,
    prune_needs_a_repository_and_only_touches_its_own_client,
);
