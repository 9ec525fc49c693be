//! `many-clients`: N clients in this process (tokio tasks driving `ClientSession`), each
//! registering with a pre-generated key and backing up a 1 MiB file, all at once, against
//! the real server binary with the registration rate limit off.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use cyberbackup_core::crypto::ClientKeyPair;
use cyberbackup_core::v3::ClientConfig;
use rand_core::OsRng;

use crate::data;
use crate::driver::{self, Timing};
use crate::procfs::{self, Sampler, Watch};
use crate::report::{Section, Target, Verdict, mib_from_kib, percentile};
use crate::server::{Binaries, ServerProcess, ServerSettings};

/// Size of each client's file.
const FILE_LEN: u64 = 1024 * 1024;
/// Target: server peak RSS.
const SERVER_RSS_TARGET_KIB: u64 = 256 * 1024;

/// Generates `n` RSA-1024 key pairs on every core (before any clock starts).
///
/// # Errors
/// Key generation failed.
pub(crate) fn generate_keys(n: usize) -> anyhow::Result<Vec<ClientKeyPair>> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per_thread = n.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let count = per_thread.min(n.saturating_sub(t * per_thread));
            std::thread::spawn(move || {
                (0..count)
                    .map(|_| ClientKeyPair::generate(&mut OsRng))
                    .collect::<Result<Vec<_>, _>>()
            })
        })
        .collect();
    let mut keys = Vec::with_capacity(n);
    for handle in handles {
        let batch = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a key generation thread panicked"))?
            .map_err(|e| anyhow::anyhow!("RSA key generation failed: {e}"))?;
        keys.extend(batch);
    }
    Ok(keys)
}

/// Runs the scenario with `clients` clients.
pub(crate) fn run(bins: &Binaries, work: &Path, clients: usize) -> Section {
    let mut section = Section::new("many-clients");
    if let Err(error) = run_inner(bins, work, clients, &mut section) {
        section.failures.push(format!("{error:#}"));
    }
    section
}

fn run_inner(
    bins: &Binaries,
    work: &Path,
    clients: usize,
    section: &mut Section,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("many-clients-")
        .tempdir_in(work)
        .context("cannot create a temporary directory")?;
    let input = dir.path().join("one-mib.bin");
    data::write_file(&input, FILE_LEN, 42)?;
    let keygen_start = Instant::now();
    let keys = generate_keys(clients)?;
    let keygen_secs = keygen_start.elapsed().as_secs_f64();

    let server_dir = dir.path().join("server");
    std::fs::create_dir(&server_dir)?;
    let settings = ServerSettings {
        registrations_per_minute: 0,
        max_connections: 1024,
        ..ServerSettings::default()
    };
    let server = ServerProcess::start(&bins.server, &server_dir, &settings)?;
    let sampler = Sampler::start(vec![Watch {
        pid: server.pid(),
        count_fds: true,
    }]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let addr = server.addr();
    let config = Arc::new(ClientConfig::default());
    let start = Instant::now();
    let results: Vec<anyhow::Result<Timing>> = runtime.block_on(async {
        let tasks: Vec<_> = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let input = input.clone();
                let config = Arc::clone(&config);
                tokio::spawn(async move {
                    let name = format!("bench-client-{i:05}");
                    driver::register_and_backup(addr, &name, key, &input, config).await
                })
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(
                task.await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("task failed: {e}"))),
            );
        }
        results
    });
    let wall = start.elapsed();
    let series = sampler.finish();
    let peaks = procfs::peaks(&series, 0);
    let log = server.log_tail();
    server.stop()?;
    drop(runtime);

    let mut totals = Vec::new();
    let mut files = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for result in results {
        match result {
            Ok(t) => {
                totals.push(t.total.as_secs_f64() * 1e3);
                files.push(t.file.as_secs_f64() * 1e3);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    totals.sort_by(f64::total_cmp);
    files.sort_by(f64::total_cmp);
    let ok = totals.len();
    let failures = errors.len();
    let files_per_s = ok as f64 / wall.as_secs_f64();
    section.row(
        "clients × file",
        format!("{clients} × {}", data::human(FILE_LEN)),
    );
    section.row(
        "key pairs pre-generated (not timed)",
        format!("{clients} in {keygen_secs:.1} s"),
    );
    section.row("wall time", format!("{:.2} s", wall.as_secs_f64()));
    section.row("files/s", format!("{files_per_s:.0}"));
    section.row(
        "throughput",
        format!(
            "{:.0} MB/s",
            ok as f64 * FILE_LEN as f64 / wall.as_secs_f64() / 1e6
        ),
    );
    section.row("failures", failures.to_string());
    section.row(
        "latency per client, connect → 1604: p50 / p99",
        format!(
            "{:.0} ms / {:.0} ms",
            percentile(&totals, 50.0),
            percentile(&totals, 99.0)
        ),
    );
    section.row(
        "latency per file, keys exchanged → 1604: p50 / p99",
        format!(
            "{:.0} ms / {:.0} ms",
            percentile(&files, 50.0),
            percentile(&files, 99.0)
        ),
    );
    section.row("server peak RSS (VmHWM)", mib_from_kib(peaks.hwm_kib));
    section.row("server peak open descriptors", peaks.fds.to_string());
    section.targets.push(Target::new(
        format!("{clients} clients × 1 MiB: failures"),
        "0",
        failures.to_string(),
        Verdict::of(failures == 0),
    ));
    section.targets.push(Target::new(
        format!("{clients} clients × 1 MiB: server peak RSS"),
        "≤ 256 MiB",
        mib_from_kib(peaks.hwm_kib),
        Verdict::of(peaks.hwm_kib <= SERVER_RSS_TARGET_KIB),
    ));
    if let Some(first) = errors.first() {
        section.failures.push(format!(
            "{failures} of {clients} clients failed; first error: {first}\nserver log:\n{log}"
        ));
    }
    section.data = serde_json::json!({
        "clients": clients,
        "file_bytes": FILE_LEN,
        "keygen_secs": keygen_secs,
        "wall_secs": wall.as_secs_f64(),
        "files_per_s": files_per_s,
        "failures": failures,
        "latency_total_ms": {"p50": percentile(&totals, 50.0), "p99": percentile(&totals, 99.0), "max": totals.last()},
        "latency_file_ms": {"p50": percentile(&files, 50.0), "p99": percentile(&files, 99.0), "max": files.last()},
        "server": peaks,
        "errors": errors.iter().take(10).collect::<Vec<_>>(),
    });
    Ok(())
}
