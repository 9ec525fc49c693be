//! `kill -9` of the server in the middle of its scheduled prune (issue 15): the server
//! **binary** runs as a child process (SQLite catalog and local repository in a temp
//! directory, a prune every second, a grace period of 5 s, repacks below 90 %), one client
//! (the client library: backup, forget, restore, check) backs up two seeded trees whose
//! files share content (so packs hold blobs of several snapshots) and forgets snapshots at
//! random, so the prune has blobs to condemn, sweep, repack and delete. Each iteration kills
//! the server once, in one of four seeded modes: at a seeded delay after a seeded `prune
//! phase` line of its log (no backup running, or a backup over a slow link started before
//! the line), a seeded time after such a backup was started at the line, or a seeded time
//! after that backup's pack went up (around its commit). After each restart on the same
//! data directory:
//!
//! * no staging file of the killed process survived start-up recovery, and the snapshot
//!   objects on disk are exactly the snapshots listed;
//! * every snapshot listed restores byte for byte to the tree it was taken of, every
//!   snapshot the client committed and did not forget is listed, no forgotten one is;
//! * a backup the kill interrupted failed with a lost connection (never a refusal) and left
//!   no snapshot or a complete one;
//! * `check --read-data` (the client library's `check(ReadData::All)`) finds nothing wrong;
//! * the server logged no error, and the next backup succeeds.
//!
//! Over the run at least one kill must land inside a prune (after a `prune phase` line and
//! before the `repository pruned` that ends it) and one during a backup, and the finished
//! prunes must have condemned, swept, repacked and deleted (checked from 15 iterations on).
//!
//! `PRUNE_CRASH_SEED` (default 0x5EED) reproduces the choices of a run (the kills' timing
//! still depends on the machine), `PRUNE_CRASH_ITERATIONS` (default 20) lengthens it.
//! Runtime: about 40 s in debug on 2 cores (50 s with a build running beside it).
#![allow(
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod repo_fixture;
mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cyberbackup_client::snapshot::{ReadData, RestoreFilter};
use cyberbackup_client::v4::V4ClientError;
use repo_fixture::files_under;
use support::{
    RepoClient, SplitMix64, free_port, read_tree, seed_from_env, spin, throttled_proxy, tree_diff,
    wait_ready,
};
use tokio::sync::mpsc;

/// Seconds between scheduled prunes.
const PRUNE_INTERVAL_SECS: u64 = 1;
/// The grace period: longer than any backup of this test takes.
const GRACE_SECS: u64 = 5;
/// The phases `src/repository/prune.rs` logs (`prune phase`, field `phase`), weighted
/// towards those of several steps a kill can come between (repack: stage, put, move the
/// rows; delete: delete the object, forget the pending deletion) over the one-transaction
/// mark and the read-only live set.
const PHASES: [&str; 10] = [
    "live-set", "mark", "mark", "repack", "repack", "repack", "repack", "delete", "delete",
    "delete",
];
/// Snapshots kept before the test forgets some.
const MAX_LIVE: usize = 3;
/// The file a backup in flight adds to the second tree, and the uplink it is sent over:
/// about 1.5 s of upload, so the backup is still running at the next prune.
const BIG_LEN: usize = 3 << 20;
const SLOW_UPLINK_BYTES_PER_SEC: u64 = 2 << 20;
const HOST: &[u8] = b"prune-crash-host";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_prune_leaves_every_snapshot_restorable() {
    let seed = seed_from_env("PRUNE_CRASH_SEED", 0x5EED);
    let iterations: usize = std::env::var("PRUNE_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    eprintln!("prune crash test: PRUNE_CRASH_SEED={seed:#x} PRUNE_CRASH_ITERATIONS={iterations}");
    let started = Instant::now();
    let mut rng = SplitMix64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("server.toml");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    write_config(&config, &data, port);
    let client = RepoClient::new(dir.path(), addr, "alice", HOST);
    let (proxy, uploaded) = throttled_proxy(addr, SLOW_UPLINK_BYTES_PER_SEC).await;
    let slow_client = client.through(proxy);
    let mut trees = Trees::new(dir.path().join("src"), &mut rng);
    let mut model = Model::default();
    let mut stats = Stats::default();
    let mut server = ServerProcess::spawn(&config);
    wait_ready(addr, &mut server.child).await;

    for iteration in 0..iterations {
        let ctx = format!("iteration {iteration}, PRUNE_CRASH_SEED={seed:#x}");
        // A fresh backup (after a restart, from the second iteration on) of each tree, or
        // of one of them, always succeeds.
        for tree in 0..2 {
            if tree == 1 && rng.below(3) == 0 {
                continue;
            }
            trees.mutate(tree, &mut rng);
            let tag = model.next_tag();
            let expected = trees.contents(tree);
            let id = client
                .backup(trees.path(tree), &tag)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: backup {tag} failed: {e}"));
            model.record(tag, expected, Status::Committed(id));
        }
        // Forget down to a few snapshots, chosen at random (not only the oldest), so packs
        // end up holding live and dead blobs side by side.
        while model.committed().len() > MAX_LIVE - usize::from(rng.below(2) == 0) {
            let live = model.committed();
            let tag = live[rng.below(live.len() as u64) as usize].clone();
            let Status::Committed(id) = model.status(&tag) else {
                unreachable!()
            };
            client
                .forget(&id)
                .await
                .unwrap_or_else(|e| panic!("{ctx}: forget {tag} failed: {e}"));
            model.set(&tag, Status::Forgotten);
        }

        // Kill at a seeded moment of the scheduled prune, while a backup runs in three of
        // four modes: 0 no backup; 1 a backup started before the awaited prune phase; 2
        // one started just after it; 3 aimed at the backup's commit instead (its pack is
        // up: the kill lands around the index, reference-list and snapshot puts), with
        // the prunes running every second meanwhile.
        let mode = rng.below(4);
        let phase = PHASES[rng.below(PHASES.len() as u64) as usize];
        let delay = Delay::pick(&mut rng);
        let backup_delay = Duration::from_millis(rng.below(2500));
        let commit_delay = Duration::from_millis(rng.below(150));
        if mode != 0 {
            trees.prepare_slow_backup(1, &mut rng);
        }
        let start_backup = |model: &mut Model| {
            let tag = model.next_tag();
            model.record(tag.clone(), trees.contents(1), Status::InDoubt);
            (tag.clone(), slow_client.spawn_backup(trees.path(1), tag))
        };
        server.drain();
        let before = uploaded.load(Ordering::SeqCst);
        let mut in_flight = (mode == 1 || mode == 3).then(|| start_backup(&mut model));
        if mode == 3 {
            let deadline = Instant::now() + Duration::from_secs(20);
            while uploaded.load(Ordering::SeqCst) < before + BIG_LEN as u64 {
                assert!(
                    Instant::now() < deadline,
                    "{ctx}: the backup never sent its pack"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        } else {
            server.wait_phase(phase, mode != 2).await;
        }
        match mode {
            2 => {
                in_flight = Some(start_backup(&mut model));
                tokio::time::sleep(backup_delay).await;
            }
            // The commit follows the pack by some 70 ms (debug build).
            3 => tokio::time::sleep(commit_delay).await,
            _ => delay.wait().await,
        }
        let life = server.kill();
        let killed_at = SystemTime::now();
        stats.kills += 1;
        if let Some(phase) = life.killed_inside_prune() {
            *stats.inside_prune.entry(phase).or_default() += 1;
        }
        stats.add_prunes(&life);
        if let Some(error) = life.errors.first() {
            panic!(
                "{ctx}: the server logged an error: {error}\n{}",
                life.tail()
            );
        }
        if let Some((tag, task)) = in_flight {
            match tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("the backup did not notice the kill")
                .unwrap()
            {
                Ok(id) => {
                    stats.backups_finished_before_kill += 1;
                    model.set(&tag, Status::Committed(id));
                }
                Err(error) if cut_off(&error) => stats.backups_interrupted += 1,
                Err(error) => panic!("{ctx}: the backup in flight failed: {error}"),
            }
        }

        server = ServerProcess::spawn(&config);
        wait_ready(addr, &mut server.child).await;
        verify(&ctx, &data, &client, &mut model, &mut stats, killed_at).await;
        let aim = match mode {
            0 | 1 => format!("{delay:?} after the {phase} phase"),
            2 => format!("{backup_delay:?} after a backup started at the {phase} phase"),
            _ => format!("{commit_delay:?} after the backup's pack"),
        };
        eprintln!(
            "{ctx}: mode {mode}, {aim}: {} ({:.1} s)",
            life.summary(),
            started.elapsed().as_secs_f64()
        );
    }

    // The last restart is followed by a backup too, and everything is verified once more.
    trees.mutate(0, &mut rng);
    let tag = model.next_tag();
    let expected = trees.contents(0);
    let id = client
        .backup(trees.path(0), &tag)
        .await
        .unwrap_or_else(|e| panic!("final backup failed: {e}"));
    model.record(tag, expected, Status::Committed(id));
    verify(
        "final",
        &data,
        &client,
        &mut model,
        &mut stats,
        SystemTime::now(),
    )
    .await;
    let life = server.kill();
    stats.add_prunes(&life);
    assert!(life.errors.is_empty(), "{:?}", life.errors);

    eprintln!(
        "prune crash test: {} kills in {:.1} s, {} inside a prune {:?}; {} backups interrupted \
         ({} left a complete snapshot, {} none), {} finished before the kill; {} snapshot \
         restores compared; prunes: {:?}",
        stats.kills,
        started.elapsed().as_secs_f64(),
        stats.inside_prune.values().sum::<usize>(),
        stats.inside_prune,
        stats.backups_interrupted,
        stats.interrupted_committed,
        stats.interrupted_absent,
        stats.backups_finished_before_kill,
        stats.restores,
        stats.prune_totals,
    );
    assert!(
        !stats.inside_prune.is_empty(),
        "no kill landed inside a prune (between a `prune phase` line and `repository pruned`)"
    );
    assert!(
        stats.backups_interrupted > 0,
        "no kill interrupted a backup"
    );
    // A blob is condemned once its pack is older than the grace period, swept (and its pack
    // repacked or retired) a grace period later, and the pack deleted one more after that.
    for field in [
        "condemned",
        "deleted_blobs",
        "packs_repacked",
        "packs_deleted",
    ] {
        assert!(
            iterations < 15 || stats.prune_totals.get(field).copied().unwrap_or(0) > 0,
            "the prunes never did any {field}: {:?}",
            stats.prune_totals
        );
    }
}

/// Seconds between scrub cycles in the scrub crash test, and its read rate: the stored
/// packs (some 8 MB) take about 2 s to read, so the scrub is nearly always running.
const SCRUB_INTERVAL_SECS: u64 = 1;
const SCRUB_BYTES_PER_SEC: u64 = 4 << 20;

/// `kill -9` of the server binary while its scrub reads the packs back (issue 19, item 1,
/// the scrub part): the scrub starts with the server, so a kill at a seeded delay after the
/// restart lands inside a cycle (counted when the killed process had not finished one), in
/// odd iterations with a backup over the slow link running too. After each restart the
/// checks of [`verify`] hold, and no pack is marked damaged: the catalog has no `CorruptAt`,
/// the server logged no damaged object, and `check --read-data` (in `verify`) sees no
/// damaged path. `SCRUB_CRASH_SEED` (default 0x5C2B) and `SCRUB_CRASH_ITERATIONS` (default
/// 12). About 25 s in debug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_scrub_marks_no_pack_damaged_and_loses_nothing() {
    let seed = seed_from_env("SCRUB_CRASH_SEED", 0x5C2B);
    let iterations: usize = std::env::var("SCRUB_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    eprintln!("scrub crash test: SCRUB_CRASH_SEED={seed:#x} SCRUB_CRASH_ITERATIONS={iterations}");
    let started = Instant::now();
    let mut rng = SplitMix64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("server.toml");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // No prune here (its interval is a day): only the scrub runs in the background.
    let extra = format!(
        "scrub_bytes_per_sec = {SCRUB_BYTES_PER_SEC}\nscrub_interval_secs = {SCRUB_INTERVAL_SECS}\n"
    );
    write_config_with(&config, &data, port, &extra);
    let text = fs::read_to_string(&config).unwrap().replace(
        &format!("prune_interval_secs = {PRUNE_INTERVAL_SECS}\n"),
        "prune_interval_secs = 86400\n",
    );
    fs::write(&config, text).unwrap();
    let client = RepoClient::new(dir.path(), addr, "alice", HOST);
    let (proxy, _) = throttled_proxy(addr, SLOW_UPLINK_BYTES_PER_SEC).await;
    let slow_client = client.through(proxy);
    let mut trees = Trees::new(dir.path().join("src"), &mut rng);
    let mut model = Model::default();
    let mut stats = Stats::default();
    let mut server = ServerProcess::spawn(&config);
    wait_ready(addr, &mut server.child).await;
    // Some megabytes of packs for the scrub to read.
    for round in 0..2 {
        trees.prepare_slow_backup(round, &mut rng);
        let tag = model.next_tag();
        let expected = trees.contents(round);
        let id = client.backup(trees.path(round), &tag).await.unwrap();
        model.record(tag, expected, Status::Committed(id));
    }
    let mut inside_scrub = 0;
    let mut cycles = 0;
    for iteration in 0..iterations {
        let ctx = format!("iteration {iteration}, SCRUB_CRASH_SEED={seed:#x}");
        let tree = iteration % 2;
        trees.mutate(tree, &mut rng);
        let tag = model.next_tag();
        let expected = trees.contents(tree);
        let id = client
            .backup(trees.path(tree), &tag)
            .await
            .unwrap_or_else(|e| panic!("{ctx}: backup {tag} failed: {e}"));
        model.record(tag, expected, Status::Committed(id));
        let in_flight = (iteration % 2 == 1).then(|| {
            trees.prepare_slow_backup(1, &mut rng);
            let tag = model.next_tag();
            model.record(tag.clone(), trees.contents(1), Status::InDoubt);
            (tag.clone(), slow_client.spawn_backup(trees.path(1), tag))
        });
        let delay = Duration::from_millis(rng.below(2000));
        tokio::time::sleep(delay).await;
        let life = server.kill();
        let killed_at = SystemTime::now();
        stats.kills += 1;
        cycles += life.scrub_cycles;
        if life.scrub_cycles == 0 {
            inside_scrub += 1;
        }
        if let Some(error) = life.errors.first() {
            panic!(
                "{ctx}: the server logged an error: {error}\n{}",
                life.tail()
            );
        }
        if let Some((tag, task)) = in_flight {
            match tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("the backup did not notice the kill")
                .unwrap()
            {
                Ok(id) => {
                    stats.backups_finished_before_kill += 1;
                    model.set(&tag, Status::Committed(id));
                }
                Err(error) if cut_off(&error) => stats.backups_interrupted += 1,
                Err(error) => panic!("{ctx}: the backup in flight failed: {error}"),
            }
        }
        server = ServerProcess::spawn(&config);
        wait_ready(addr, &mut server.child).await;
        assert_no_pack_marked_damaged(&ctx, &data);
        verify(&ctx, &data, &client, &mut model, &mut stats, killed_at).await;
        eprintln!(
            "{ctx}: killed {delay:?} after the backup, {} scrub cycles finished ({:.1} s)",
            life.scrub_cycles,
            started.elapsed().as_secs_f64()
        );
    }
    // Let one cycle finish on the last server: whole packs are still whole.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scrubbed = scrubbed_packs(&data);
        if scrubbed.0 == scrubbed.1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scrub cycle finished: {scrubbed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_no_pack_marked_damaged("final", &data);
    let life = server.kill();
    assert!(life.errors.is_empty(), "{:?}", life.errors);
    eprintln!(
        "scrub crash test: {} kills in {:.1} s, {inside_scrub} inside a scrub's first cycle, \
         {cycles} cycles finished between kills; {} backups interrupted, {} finished before \
         the kill; {} snapshot restores compared",
        stats.kills,
        started.elapsed().as_secs_f64(),
        stats.backups_interrupted,
        stats.backups_finished_before_kill,
        stats.restores,
    );
    assert!(inside_scrub > 0, "no kill landed inside a scrub cycle");
}

/// No pack of the catalog is marked damaged by a scrub.
fn assert_no_pack_marked_damaged(ctx: &str, data: &Path) {
    let db = rusqlite::Connection::open(data.join("defensive.db")).unwrap();
    let marked: Vec<(Vec<u8>, String)> = db
        .prepare("SELECT PackId, COALESCE(CorruptReason, '') FROM repo_packs WHERE CorruptAt IS NOT NULL")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        marked.is_empty(),
        "{ctx}: packs wrongly marked damaged: {:?}",
        marked
            .iter()
            .map(|(id, why)| format!("{}: {why}", hex::encode(id)))
            .collect::<Vec<_>>()
    );
}

/// (packs scrubbed since the server started, packs) from the catalog.
fn scrubbed_packs(data: &Path) -> (i64, i64) {
    let db = rusqlite::Connection::open(data.join("defensive.db")).unwrap();
    db.query_row(
        "SELECT COUNT(ScrubbedAt), COUNT(*) FROM repo_packs",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .unwrap()
}

/// The checks after a restart (module docs).
async fn verify(
    ctx: &str,
    data: &Path,
    client: &RepoClient,
    model: &mut Model,
    stats: &mut Stats,
    killed_at: SystemTime,
) {
    let staging = data.join("repo-staging");
    let leftovers: Vec<PathBuf> = fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m <= killed_at)
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "{ctx}: staging files of the killed server survived recovery: {leftovers:?}"
    );

    let mut repo = client.open().await;
    let listed = repo
        .snapshots()
        .await
        .unwrap_or_else(|e| panic!("{ctx}: snapshots: {e}"));
    let on_disk: BTreeSet<String> = files_under(&data.join("repository"))
        .into_iter()
        .filter_map(|p| {
            let (_, rest) = p.split_once("/snapshots/")?;
            Some(rest.to_owned())
        })
        .collect();
    let listed_ids: BTreeSet<String> = listed.iter().map(|s| s.id.to_hex()).collect();
    assert_eq!(
        on_disk, listed_ids,
        "{ctx}: the snapshot objects on disk are not the snapshots listed"
    );

    let mut seen = BTreeSet::new();
    for info in &listed {
        let [tag] = info.snapshot.tags.as_slice() else {
            panic!(
                "{ctx}: snapshot {} has tags {:?}",
                info.id, info.snapshot.tags
            );
        };
        let tag = String::from_utf8(tag.clone()).unwrap();
        let id = info.id.to_hex();
        match model.status(&tag) {
            Status::Committed(committed) => {
                assert_eq!(committed, id, "{ctx}: {tag} listed under another ID");
            }
            Status::InDoubt => {
                stats.interrupted_committed += 1;
                model.set(&tag, Status::Committed(id.clone()));
            }
            Status::Forgotten => panic!("{ctx}: the forgotten snapshot {tag} is listed again"),
            Status::Absent => panic!("{ctx}: {tag}, absent after an earlier restart, appeared"),
        }
        seen.insert(tag.clone());
        let target = tempfile::tempdir().unwrap();
        repo.restore(&id, b"/", target.path(), &RestoreFilter::default())
            .await
            .unwrap_or_else(|e| panic!("{ctx}: restore of {tag} ({id}) failed: {e}"));
        let expected = model.expected(&tag);
        let source = expected.source.strip_prefix("/").unwrap();
        let restored = read_tree(&target.path().join(source));
        assert!(
            restored == expected.files,
            "{ctx}: {tag} ({id}) restored differently: {}",
            tree_diff(&expected.files, &restored)
        );
        stats.restores += 1;
    }
    for tag in model.tags() {
        match model.status(&tag) {
            Status::Committed(_) => assert!(
                seen.contains(&tag),
                "{ctx}: the committed snapshot {tag} is gone"
            ),
            Status::InDoubt => {
                stats.interrupted_absent += 1;
                model.set(&tag, Status::Absent);
            }
            Status::Forgotten | Status::Absent => {}
        }
    }

    let report = repo
        .check(ReadData::All)
        .await
        .unwrap_or_else(|e| panic!("{ctx}: check --read-data: {e}"));
    assert!(report.is_ok(), "{ctx}: check --read-data: {report:?}");
    assert_eq!(report.snapshots, listed.len() as u64, "{ctx}: {report:?}");
    repo.into_remote().close().await.unwrap();
}

fn write_config(path: &Path, data: &Path, port: u16) {
    write_config_with(path, data, port, "");
}

/// [`write_config`] with `extra` lines appended (they override nothing it sets).
fn write_config_with(path: &Path, data: &Path, port: u16, extra: &str) {
    let mut config = format!(
        r#"listen = "127.0.0.1"
port = {port}
data_dir = "{data}"
registrations_per_minute = 0
min_free_disk_mb = 1
admin_enabled = false
log_format = "json"
default_device_role = "manage"
prune_interval_secs = {PRUNE_INTERVAL_SECS}
prune_grace_secs = {GRACE_SECS}
repack_below_percent = 90
"#,
        data = data.display()
    );
    config.push_str(extra);
    fs::write(path, config).unwrap();
}

/// The server binary as a child process, its stderr (JSON log lines) read by a thread.
struct ServerProcess {
    child: Child,
    prune_lines: mpsc::UnboundedReceiver<PruneLine>,
    reader: Option<std::thread::JoinHandle<Life>>,
}

/// A prune line of the server's log.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PruneLine {
    /// `prune phase` with its `phase` and `total` (items it has to do).
    Phase(String, u64),
    /// `repository pruned` with its report (`PruneReport`'s debug form).
    Pruned(String),
}

/// What one server process logged, from its start to its death.
#[derive(Debug, Default)]
struct Life {
    prune: Vec<PruneLine>,
    /// Scrub cycles the process finished (`scrub cycle done` / `found damaged` lines).
    scrub_cycles: usize,
    errors: Vec<String>,
    tail: VecDeque<String>,
}

impl ServerProcess {
    fn spawn(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cyberbackup-server"))
            .arg("--config")
            .arg(config)
            .env_remove("CYBERBACKUP_CONFIG")
            .env(
                "RUST_LOG",
                "warn,cyberbackup_server::repository=info,cyberbackup_server::scrub=info",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send, prune_lines) = mpsc::unbounded_channel();
        let reader = std::thread::spawn(move || {
            let mut life = Life::default();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(prune) = prune_line(&line) {
                    life.prune.push(prune.clone());
                    let _ = send.send(prune);
                }
                if line.contains("scrub cycle") {
                    life.scrub_cycles += 1;
                }
                if line.contains(r#""level":"ERROR""#) {
                    life.errors.push(line.clone());
                }
                life.tail.push_back(line);
                if life.tail.len() > 40 {
                    life.tail.pop_front();
                }
            }
            life
        });
        Self {
            child,
            prune_lines,
            reader: Some(reader),
        }
    }

    /// Forgets the prune lines seen so far.
    fn drain(&mut self) {
        while self.prune_lines.try_recv().is_ok() {}
    }

    /// Waits for a `prune phase` line of `phase`, with work to do if `busy` (the mark always
    /// has; the others when their `total` is not 0); after 2.5 s without one, for any phase
    /// line; after 10 s, gives up.
    async fn wait_phase(&mut self, phase: &str, busy: bool) {
        let preferred = Instant::now() + Duration::from_millis(2500);
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            let now = Instant::now();
            if now >= give_up {
                return;
            }
            let deadline = if now < preferred { preferred } else { give_up };
            match tokio::time::timeout_at(deadline.into(), self.prune_lines.recv()).await {
                Ok(Some(PruneLine::Phase(seen, total))) => {
                    let working = total > 0 || seen == "mark";
                    if (seen == phase && (working || !busy)) || now >= preferred {
                        return;
                    }
                }
                Ok(Some(PruneLine::Pruned(_))) | Err(_) => {}
                Ok(None) => panic!("the server died on its own"),
            }
        }
    }

    /// `kill -9`, then what the process logged.
    fn kill(mut self) -> Life {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap()
    }
}

impl Life {
    /// The phase a kill interrupted, when the last prune line is a phase line.
    fn killed_inside_prune(&self) -> Option<String> {
        match self.prune.last() {
            Some(PruneLine::Phase(phase, _)) => Some(phase.clone()),
            _ => None,
        }
    }

    fn summary(&self) -> String {
        let runs = self
            .prune
            .iter()
            .filter(|l| matches!(l, PruneLine::Pruned(_)))
            .count();
        match self.killed_inside_prune() {
            Some(phase) => format!("{runs} prunes finished, killed during {phase}"),
            None => format!("{runs} prunes finished, killed outside a prune"),
        }
    }

    fn tail(&self) -> String {
        self.tail.iter().fold(String::new(), |mut out, line| {
            let _ = writeln!(out, "{line}");
            out
        })
    }
}

fn prune_line(line: &str) -> Option<PruneLine> {
    if !line.contains("prune") {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    match json["message"].as_str()? {
        "prune phase" => Some(PruneLine::Phase(
            json["phase"].as_str()?.to_owned(),
            json["total"].as_u64()?,
        )),
        "repository pruned" => Some(PruneLine::Pruned(json["report"].as_str()?.to_owned())),
        _ => None,
    }
}

/// How long to wait after the awaited phase line before the kill.
#[derive(Debug, Clone, Copy)]
enum Delay {
    None,
    Spin(Duration),
    Sleep(Duration),
}

impl Delay {
    /// A repack with work takes some 5–20 ms (debug build), a deletion a few.
    fn pick(rng: &mut SplitMix64) -> Self {
        match rng.below(6) {
            0 => Self::None,
            1 | 2 => Self::Spin(Duration::from_micros(rng.below(3000))),
            _ => Self::Sleep(Duration::from_millis(rng.below(20))),
        }
    }

    async fn wait(self) {
        match self {
            Self::None => {}
            Self::Spin(wait) => spin(wait),
            Self::Sleep(wait) => tokio::time::sleep(wait).await,
        }
    }
}

/// Whether a backup failed because the server went away (not because it refused).
fn cut_off(error: &V4ClientError) -> bool {
    error.code().is_none()
        && matches!(
            error,
            V4ClientError::Network { .. } | V4ClientError::Session(_)
        )
}

/// What the client knows about each snapshot it tried to make, by tag.
#[derive(Debug, Default)]
struct Model {
    snapshots: BTreeMap<String, (Expected, Status)>,
}

#[derive(Debug, Clone)]
struct Expected {
    /// The backed-up directory (absolute).
    source: PathBuf,
    /// Its files (relative path → content) when the backup started.
    files: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Committed (the client got the ID), not forgotten.
    Committed(String),
    /// Forgotten by the client.
    Forgotten,
    /// Interrupted by a kill: committed or not, the next listing tells.
    InDoubt,
    /// Interrupted and not committed.
    Absent,
}

impl Model {
    /// A tag no snapshot of this run has (`b0`, `b1`, …).
    fn next_tag(&self) -> String {
        format!("b{}", self.snapshots.len())
    }

    fn record(&mut self, tag: String, expected: Expected, status: Status) {
        self.snapshots.insert(tag, (expected, status));
    }

    fn status(&self, tag: &str) -> Status {
        self.snapshots
            .get(tag)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("a snapshot tagged {tag:?} was never made"))
    }

    fn set(&mut self, tag: &str, status: Status) {
        self.snapshots.get_mut(tag).unwrap().1 = status;
    }

    fn expected(&self, tag: &str) -> &Expected {
        &self.snapshots[tag].0
    }

    fn tags(&self) -> Vec<String> {
        self.snapshots.keys().cloned().collect()
    }

    fn committed(&self) -> Vec<String> {
        self.snapshots
            .iter()
            .filter(|(_, (_, s))| matches!(s, Status::Committed(_)))
            .map(|(t, _)| t.clone())
            .collect()
    }
}

#[derive(Debug, Default)]
struct Stats {
    kills: usize,
    /// Kills after a `prune phase` line and before its `repository pruned`, by phase.
    inside_prune: BTreeMap<String, usize>,
    backups_interrupted: usize,
    backups_finished_before_kill: usize,
    interrupted_committed: usize,
    interrupted_absent: usize,
    restores: usize,
    /// The sums of the finished prunes' report fields.
    prune_totals: BTreeMap<String, u64>,
}

impl Stats {
    fn add_prunes(&mut self, life: &Life) {
        for line in &life.prune {
            let PruneLine::Pruned(report) = line else {
                continue;
            };
            let fields = report
                .trim_start_matches("PruneReport {")
                .trim_end_matches('}');
            for field in fields.split(',') {
                let Some((name, value)) = field.split_once(':') else {
                    continue;
                };
                if let Ok(value) = value.trim().parse::<u64>() {
                    *self.prune_totals.entry(name.trim().to_owned()).or_default() += value;
                }
            }
        }
    }
}

/// The two source trees: seeded files, some content shared between files and trees.
struct Trees {
    root: PathBuf,
    /// Contents files are drawn from (shared blobs).
    pool: Vec<Vec<u8>>,
    /// Next file name number.
    next_name: u64,
    /// Next modification time given to a written file (a rewrite within the file system's
    /// timestamp granularity would otherwise look unchanged to the backup's parent check).
    next_mtime: u64,
}

impl Trees {
    fn new(root: PathBuf, rng: &mut SplitMix64) -> Self {
        let pool = (0..16)
            .map(|_| {
                let len = 200 + rng.below(40_000) as usize;
                random_bytes(rng, len)
            })
            .collect();
        let mut trees = Self {
            root,
            pool,
            next_name: 0,
            next_mtime: 1_600_000_000,
        };
        for tree in 0..2 {
            fs::create_dir_all(trees.path(tree)).unwrap();
            for _ in 0..6 + rng.below(5) {
                trees.add_file(tree, rng);
            }
        }
        trees
    }

    fn path(&self, tree: usize) -> PathBuf {
        self.root.join(["one", "two"][tree])
    }

    fn files(&self, tree: usize) -> Vec<String> {
        files_under(&self.path(tree))
            .into_iter()
            .filter(|f| f != "big.bin")
            .collect()
    }

    fn content(&self, rng: &mut SplitMix64) -> Vec<u8> {
        if rng.below(2) == 0 {
            self.pool[rng.below(self.pool.len() as u64) as usize].clone()
        } else {
            let len = 1 + rng.below(48_000) as usize;
            random_bytes(rng, len)
        }
    }

    fn write(&mut self, path: &Path, content: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
        let mtime = UNIX_EPOCH + Duration::from_secs(self.next_mtime);
        self.next_mtime += 1;
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }

    fn add_file(&mut self, tree: usize, rng: &mut SplitMix64) {
        let name = self.next_name;
        self.next_name += 1;
        let relative = if rng.below(3) == 0 {
            format!("sub/f{name}.dat")
        } else {
            format!("f{name}.dat")
        };
        let content = self.content(rng);
        self.write(&self.path(tree).join(relative), &content);
    }

    /// One to four seeded changes: a file rewritten (with shared or new content), added or
    /// removed.
    fn mutate(&mut self, tree: usize, rng: &mut SplitMix64) {
        for _ in 0..1 + rng.below(4) {
            let files = self.files(tree);
            let pick = &files[rng.below(files.len() as u64) as usize];
            match rng.below(4) {
                0 | 1 => {
                    let content = self.content(rng);
                    self.write(&self.path(tree).join(pick), &content);
                }
                2 => self.add_file(tree, rng),
                _ if files.len() > 3 => fs::remove_file(self.path(tree).join(pick)).unwrap(),
                _ => self.add_file(tree, rng),
            }
        }
    }

    /// A new incompressible `big.bin` in `tree`, so a backup of it takes a while, and one
    /// or two new files of shared content: blobs the server may still hold unreferenced,
    /// so the backup's `HAVE` finds them and a prune may condemn them before it commits.
    fn prepare_slow_backup(&mut self, tree: usize, rng: &mut SplitMix64) {
        let content = random_bytes(rng, BIG_LEN);
        self.write(&self.path(tree).join("big.bin"), &content);
        for _ in 0..1 + rng.below(2) {
            let name = self.next_name;
            self.next_name += 1;
            let shared = self.pool[rng.below(self.pool.len() as u64) as usize].clone();
            self.write(&self.path(tree).join(format!("f{name}.dat")), &shared);
        }
    }

    fn contents(&self, tree: usize) -> Expected {
        let source = self.path(tree).canonicalize().unwrap();
        Expected {
            files: read_tree(&source),
            source,
        }
    }
}

fn random_bytes(rng: &mut SplitMix64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}
