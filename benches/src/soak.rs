//! `soak`: N clients in this process for a given time, each registering once (pre-generated
//! key) and then backing up files of random size (1 KiB – 4 MiB, content made on demand, never
//! held whole) over and over, each upload on a new connection (1027 reconnect), and now and
//! then dropping the connection at a random byte in the middle of an upload. Reports completed
//! uploads, failures by reason (the deliberate disconnects counted apart), the server's RSS
//! every second with a flatness verdict, and its open descriptors at the start, at the peak
//! and after every client stopped. Issue 8 item 5; not run in CI.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cyberbackup_core::crypto::ClientKeyPair;
use cyberbackup_core::identity::Identity;
use cyberbackup_core::names::NameField;
use cyberbackup_core::v3::{ClientConfig, ClientSession};
use rand_core::OsRng;
use tokio::net::TcpStream;

use crate::data::{self, Noise};
use crate::driver::{self, Source};
use crate::many_clients::generate_keys;
use crate::procfs::{self, Row, Sampler, Watch};
use crate::report::{Section, Target, Verdict, mib_from_kib};
use crate::server::{Binaries, ServerProcess, ServerSettings};

/// Smallest file.
const MIN_LEN: u64 = 1024;
/// Largest file.
const MAX_LEN: u64 = 4 * 1024 * 1024;
/// One upload in this many (after registration) is cut on purpose.
const CUT_ONE_IN: u64 = 8;
/// Descriptors the server may hold above or below its start-up count once every client left.
const FD_SLACK: u64 = 4;
/// How long the server gets to close its last connections after the clients stopped.
const FD_SETTLE: Duration = Duration::from_secs(10);
/// Pause after a failed upload, so a broken server is not hammered in a tight loop.
const FAILURE_PAUSE: Duration = Duration::from_millis(200);
/// Flatness: the last half's peak RSS may exceed the first half's by this factor.
const FLAT_FACTOR: f64 = 1.1;

/// What the scenario is asked to do.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// How long the clients keep starting uploads.
    pub(crate) duration: Duration,
    /// Seed of file sizes, contents and disconnects.
    pub(crate) seed: u64,
}

/// Counters shared by every client task.
#[derive(Debug, Default)]
struct Stats {
    completed: AtomicU64,
    bytes: AtomicU64,
    cuts: AtomicU64,
    registrations: AtomicU64,
    reconnects: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    first_errors: Mutex<Vec<String>>,
}

impl Stats {
    fn fail(&self, kind: &'static str, detail: String) {
        if let Ok(mut map) = self.failures.lock() {
            *map.entry(kind).or_default() += 1;
        }
        if let Ok(mut errors) = self.first_errors.lock() {
            if errors.len() < 10 {
                errors.push(detail);
            }
        }
    }
}

/// The next pseudo-random number of `noise`.
fn next(noise: &mut Noise) -> u64 {
    let mut bytes = [0u8; 8];
    noise.fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Runs the scenario.
pub(crate) fn run(bins: &Binaries, work: &Path, options: Options) -> Section {
    let mut section = Section::new("soak");
    if let Err(error) = run_inner(bins, work, options, &mut section) {
        section.failures.push(format!("{error:#}"));
    }
    section
}

/// One client: register, then upload until `stop_at`, reconnecting for every upload.
async fn client_loop(
    i: usize,
    key: ClientKeyPair,
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    stop_at: Instant,
    seed: u64,
    stats: Arc<Stats>,
) {
    let name = format!("soak-client-{i:05}");
    let mut rng = Noise::new(seed ^ (i as u64).wrapping_mul(0x0100_0000_01b3));
    let mut identity: Option<Identity> = None;
    while Instant::now() < stop_at {
        let len = MIN_LEN + next(&mut rng) % (MAX_LEN - MIN_LEN + 1);
        let content_seed = next(&mut rng);
        let cut_roll = next(&mut rng);
        // Never cut a registration: the key would be spent on a name the server now holds.
        let cut = (identity.is_some() && cut_roll % CUT_ONE_IN == 0)
            .then(|| 200 + (cut_roll / CUT_ONE_IN) % len);
        let stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) => {
                stats.fail("connect", format!("cannot connect to {addr}: {e}"));
                tokio::time::sleep(FAILURE_PAUSE).await;
                continue;
            }
        };
        let now = tokio::time::Instant::now().into_std();
        let session = match &identity {
            Some(identity) => {
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
                ClientSession::reconnect(Arc::clone(&config), identity.clone(), OsRng, now)
            }
            None => match NameField::new(name.as_bytes().to_vec()) {
                Ok(field) => {
                    stats.registrations.fetch_add(1, Ordering::Relaxed);
                    ClientSession::register(
                        Arc::clone(&config),
                        field,
                        Some(key.clone()),
                        OsRng,
                        now,
                    )
                }
                Err(e) => {
                    stats.fail("bad client name", format!("{name}: {e}"));
                    return;
                }
            },
        };
        let source = Source::Noise { seed: content_seed };
        match driver::drive(session, stream, "soak.bin", len, source, cut).await {
            Ok(outcome) if outcome.cut => {
                stats.cuts.fetch_add(1, Ordering::Relaxed);
            }
            Ok(outcome) => {
                if let Some(new) = outcome.identity {
                    identity = Some(new);
                }
                stats.completed.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(len, Ordering::Relaxed);
            }
            Err(failure) => {
                stats.fail(failure.kind, format!("{name}: {failure}"));
                tokio::time::sleep(FAILURE_PAUSE).await;
            }
        }
    }
}

/// RSS every whole second of `rows` (process 0): `(t, rss_kib, fds)`.
fn per_second(rows: &[Row]) -> Vec<(f64, u64, u64)> {
    let mut out = Vec::new();
    let mut next_second = 0.0;
    for row in rows {
        if row.t_secs + 1e-9 < next_second {
            continue;
        }
        let Some(sample) = row.procs.first() else {
            continue;
        };
        if let Some(rss) = sample.rss_kib {
            out.push((row.t_secs, rss, sample.fds.unwrap_or(0)));
            next_second = row.t_secs.floor() + 1.0;
        }
    }
    out
}

/// Peak RSS of the first and of the second half of `[0, end)`, from per-second samples.
fn halves(series: &[(f64, u64, u64)], end: f64) -> (u64, u64) {
    let mid = end / 2.0;
    let first = series
        .iter()
        .filter(|s| s.0 < mid)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let last = series
        .iter()
        .filter(|s| s.0 >= mid && s.0 <= end)
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    (first, last)
}

/// Whether the last half's peak stays within [`FLAT_FACTOR`] of the first half's.
fn is_flat(first_half_kib: u64, last_half_kib: u64) -> bool {
    first_half_kib > 0 && last_half_kib as f64 <= FLAT_FACTOR * first_half_kib as f64
}

/// The server's open descriptors by what they point at (`socket`, `anon_inode:[eventpoll]`,
/// a file path), to show what is left open when the count does not return to its baseline.
fn fd_kinds(pid: u32) -> BTreeMap<String, u64> {
    let mut kinds = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            let target = std::fs::read_link(entry.path())
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "?".to_owned());
            let kind = if target.starts_with("socket:") {
                "socket".to_owned()
            } else {
                target
            };
            *kinds.entry(kind).or_default() += 1;
        }
    }
    kinds
}

/// Descriptors in `kinds` other than the catalog's SQLite files (`defensive.db` and its
/// `-wal` / `-shm`): the server keeps a bounded pool of idle read connections, which opens
/// more of those under load and keeps them, by design.
fn non_catalog(kinds: &BTreeMap<String, u64>) -> u64 {
    kinds
        .iter()
        .filter(|(k, _)| !k.contains("defensive.db"))
        .map(|(_, n)| n)
        .sum()
}

/// Whether `after` is within [`FD_SLACK`] of `baseline`.
fn fds_back(baseline: u64, after: u64) -> bool {
    after.abs_diff(baseline) <= FD_SLACK
}

fn run_inner(
    bins: &Binaries,
    work: &Path,
    options: Options,
    section: &mut Section,
) -> anyhow::Result<()> {
    let Options {
        clients,
        duration,
        seed,
    } = options;
    let dir = tempfile::Builder::new()
        .prefix("soak-")
        .tempdir_in(work)
        .context("cannot create a temporary directory")?;
    let keygen_start = Instant::now();
    let keys = generate_keys(clients)?;
    let keygen_secs = keygen_start.elapsed().as_secs_f64();

    let server_dir = dir.path().join("server");
    std::fs::create_dir(&server_dir)?;
    let settings = ServerSettings {
        registrations_per_minute: 0,
        max_connections: u32::try_from(clients + 64).unwrap_or(u32::MAX),
        ..ServerSettings::default()
    };
    let server = ServerProcess::start(&bins.server, &server_dir, &settings)?;
    let pid = server.pid();
    // Let the start-up probe connection close before taking the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let fds_start = procfs::sample(pid, true).fds.unwrap_or(0);
    let kinds_start = fd_kinds(pid);
    let sampler = Sampler::start(vec![Watch {
        pid,
        count_fds: true,
    }]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let addr = server.addr();
    let config = Arc::new(ClientConfig::default());
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let stop_at = start + duration;
    runtime.block_on(async {
        let tasks: Vec<_> = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let config = Arc::clone(&config);
                let stats = Arc::clone(&stats);
                tokio::spawn(client_loop(i, key, addr, config, stop_at, seed, stats))
            })
            .collect();
        for task in tasks {
            if let Err(e) = task.await {
                stats.fail("task panicked", format!("a client task failed: {e}"));
            }
        }
    });
    let load_secs = start.elapsed().as_secs_f64();
    drop(runtime);
    // The server notices the last closes asynchronously: give it a moment.
    let settle_start = Instant::now();
    let mut fds_after = procfs::sample(pid, true).fds.unwrap_or(0);
    while !fds_back(fds_start, fds_after) && settle_start.elapsed() < FD_SETTLE {
        std::thread::sleep(Duration::from_millis(200));
        fds_after = procfs::sample(pid, true).fds.unwrap_or(0);
    }
    let kinds_after = fd_kinds(pid);
    let rows = sampler.finish();
    let peaks = procfs::peaks(&rows, 0);
    let log = server.log_tail();
    server.stop()?;

    let series = per_second(&rows);
    let rss_min = series.iter().map(|s| s.1).min().unwrap_or(0);
    let rss_max = series.iter().map(|s| s.1).max().unwrap_or(0);
    let (first_half, last_half) = halves(&series, load_secs);
    let flat = is_flat(first_half, last_half);
    let completed = stats.completed.load(Ordering::Relaxed);
    let bytes = stats.bytes.load(Ordering::Relaxed);
    let cuts = stats.cuts.load(Ordering::Relaxed);
    let failures = stats.failures.lock().map(|m| m.clone()).unwrap_or_default();
    let failed: u64 = failures.values().sum();
    let errors = stats
        .first_errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();

    section.row(
        "clients × duration",
        format!("{clients} × {:.0} s (seed {seed})", duration.as_secs_f64()),
    );
    section.row(
        "file sizes",
        format!(
            "{} – {}, uniform",
            data::human(MIN_LEN),
            data::human(MAX_LEN)
        ),
    );
    section.row(
        "key pairs pre-generated (not timed)",
        format!("{clients} in {keygen_secs:.1} s"),
    );
    section.row(
        "load time (until the last client stopped)",
        format!("{load_secs:.1} s"),
    );
    section.row(
        "registrations / reconnects (1027)",
        format!(
            "{} / {}",
            stats.registrations.load(Ordering::Relaxed),
            stats.reconnects.load(Ordering::Relaxed)
        ),
    );
    section.row(
        "completed uploads (verified)",
        format!(
            "{completed} ({}, {:.0} MB/s)",
            data::human(bytes),
            bytes as f64 / load_secs / 1e6
        ),
    );
    section.row("disconnects by design (cut mid-upload)", cuts.to_string());
    let by_reason = if failures.is_empty() {
        "none".to_owned()
    } else {
        failures
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    section.row("failures by reason", format!("{failed} ({by_reason})"));
    section.row(
        "server RSS min / max (per second)",
        format!("{} / {}", mib_from_kib(rss_min), mib_from_kib(rss_max)),
    );
    section.row(
        "server RSS peak: first half / last half",
        format!(
            "{} / {} → {}",
            mib_from_kib(first_half),
            mib_from_kib(last_half),
            if flat { "flat" } else { "GROWING" }
        ),
    );
    section.row("server peak RSS (VmHWM)", mib_from_kib(peaks.hwm_kib));
    section.row(
        "server descriptors: start / peak / after",
        format!("{fds_start} / {} / {fds_after}", peaks.fds),
    );
    section.targets.push(Target::new(
        format!("soak {clients} clients: server RSS flat"),
        "last-half peak ≤ 1.1 × first-half peak",
        format!(
            "{} vs {}",
            mib_from_kib(last_half),
            mib_from_kib(first_half)
        ),
        Verdict::of(flat),
    ));
    section.targets.push(Target::new(
        format!("soak {clients} clients: descriptors back to baseline"),
        format!("{fds_start} ± {FD_SLACK}"),
        fds_after.to_string(),
        Verdict::of(fds_back(fds_start, fds_after)),
    ));
    let (other_start, other_after) = (non_catalog(&kinds_start), non_catalog(&kinds_after));
    section.row(
        "descriptors other than catalog (SQLite) files: start / after",
        format!("{other_start} / {other_after}"),
    );
    section.targets.push(Target::new(
        format!("soak {clients} clients: sockets and files (not catalog pool) back to baseline"),
        format!("{other_start} ± {FD_SLACK}"),
        other_after.to_string(),
        Verdict::of(fds_back(other_start, other_after)),
    ));
    section.targets.push(Target::new(
        format!("soak {clients} clients: real failures"),
        "0",
        failed.to_string(),
        Verdict::of(failed == 0),
    ));
    if failed > 0 {
        section.failures.push(format!(
            "{failed} uploads failed ({by_reason}); first errors:\n{}\nserver log:\n{log}",
            errors.join("\n")
        ));
    }
    if !fds_back(fds_start, fds_after) {
        let changed: Vec<String> = kinds_after
            .iter()
            .filter(|(k, n)| kinds_start.get(*k) != Some(*n))
            .map(|(k, n)| format!("{k}: {} → {n}", kinds_start.get(k).copied().unwrap_or(0)))
            .collect();
        section.row("descriptors left open (by target)", changed.join(", "));
    }
    if completed == 0 {
        section
            .failures
            .push("no upload completed; see the server log above".to_owned());
    }
    section.data = serde_json::json!({
        "clients": clients,
        "duration_secs": duration.as_secs_f64(),
        "seed": seed,
        "min_file_bytes": MIN_LEN,
        "max_file_bytes": MAX_LEN,
        "keygen_secs": keygen_secs,
        "load_secs": load_secs,
        "registrations": stats.registrations.load(Ordering::Relaxed),
        "reconnects": stats.reconnects.load(Ordering::Relaxed),
        "completed": completed,
        "completed_bytes": bytes,
        "cut_by_design": cuts,
        "failures": failed,
        "failures_by_reason": failures,
        "errors": errors,
        "rss_kib": {"min": rss_min, "max": rss_max, "first_half_max": first_half, "last_half_max": last_half, "flat": flat},
        "fds": {"start": fds_start, "peak": peaks.fds, "after": fds_after, "back_to_baseline": fds_back(fds_start, fds_after), "non_catalog_start": other_start, "non_catalog_after": other_after},
        "fd_kinds": {"start": kinds_start, "after": kinds_after},
        "server": peaks,
        "series": series.iter().map(|(t, rss, fds)| serde_json::json!({"t": t, "rss_kib": rss, "fds": fds})).collect::<Vec<_>>(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::ProcSample;

    fn row(t_secs: f64, rss: u64) -> Row {
        Row {
            t_secs,
            procs: vec![ProcSample {
                rss_kib: Some(rss),
                fds: Some(7),
                ..ProcSample::default()
            }],
        }
    }

    #[test]
    fn series_keeps_one_sample_per_second() {
        let rows: Vec<Row> = (0..35)
            .map(|i| row(f64::from(i) * 0.1, 100 + i as u64))
            .collect();

        let series = per_second(&rows);

        let times: Vec<u64> = series.iter().map(|s| s.1).collect();
        assert_eq!(times, [100, 110, 120, 130]);
    }

    #[test]
    fn flatness_compares_half_peaks() {
        let series = vec![(0.0, 100, 0), (1.0, 200, 0), (2.0, 210, 0), (3.0, 150, 0)];

        let (first, last) = halves(&series, 4.0);

        assert_eq!((first, last), (200, 210));
        assert!(is_flat(first, last));
        assert!(!is_flat(200, 221));
        assert!(!is_flat(0, 0));
    }

    #[test]
    fn catalog_files_are_told_apart() {
        let kinds: BTreeMap<String, u64> = [
            ("socket".to_owned(), 3),
            ("/d/defensive.db".to_owned(), 5),
            ("/d/defensive.db-wal".to_owned(), 5),
            ("/dev/null".to_owned(), 1),
        ]
        .into();

        assert_eq!(non_catalog(&kinds), 4);
    }

    #[test]
    fn descriptors_allow_a_small_slack() {
        assert!(fds_back(20, 24));
        assert!(fds_back(20, 16));
        assert!(!fds_back(20, 25));
    }
}
