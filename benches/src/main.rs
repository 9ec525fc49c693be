//! `cyberbackup-bench`: the end-to-end benchmark harness. It starts the real
//! `cyberbackup-server` binary (and real clients) on 127.0.0.1 in temporary directories and
//! reports each scenario as a table and, with `--json FILE`, as JSON, with PASS / FALL SHORT
//! against the targets of issue 7. See `docs/benchmarks.md`.
//!
//! ```text
//! cargo run --release -p cyberbackup-bench -- single-file --compare-sizes
//! cargo run --release -p cyberbackup-bench -- many-clients many-files catalog peer
//! cargo run --release -p cyberbackup-bench -- compare --json compare.json
//! cargo run --release -p cyberbackup-bench -- soak --clients 1000 --minutes 10 --seed 1
//! cargo run --release -p cyberbackup-bench -- service --clients 8 --size 32MiB
//! cargo run --release -p cyberbackup-bench -- --smoke
//! ```
//!
//! The exit code is 1 when a scenario failed (an error, a file not verified, a client
//! failure), whatever the timings; falling short of a target does not fail the run.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
// A command-line harness prints its report.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod browse;
mod catalog;
mod chart;
mod compare;
mod data;
mod driver;
mod many_clients;
mod many_files;
mod peer;
mod procfs;
mod report;
mod server;
mod service;
mod single_file;
mod soak;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::report::{Machine, Report};
use crate::server::Binaries;

/// A scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// One large file over v3: MB/s against single-core AES-CBC, peak RSS, chart.
    SingleFile,
    /// N concurrent clients, each registering and backing up 1 MiB.
    ManyClients,
    /// One client backing up many small files over one connection.
    ManyFiles,
    /// Admin and client listings on a generated catalog.
    Catalog,
    /// The client UI's snapshot browser on a snapshot of many files: time of each page.
    Browse,
    /// restic on the same file, when installed.
    Peer,
    /// Snapshots next to restic, borg and rustic (those installed) on four trees: init,
    /// first, unchanged and modified backup, verified full and one-file restore, repository
    /// size; median of --reps runs; then our client on 1 and 2 cores and with a repository
    /// of 1 × and 10 × the tree. (Replaces `snapshots`.)
    #[value(alias = "snapshots")]
    Compare,
    /// Load and soak: N clients for --minutes, random sizes, disconnects and reconnects;
    /// server RSS and descriptors over time. Only when named (not in the default set).
    Soak,
    /// Several servers, one service: 1, 2 and 3 servers on one PostgreSQL catalog and one
    /// S3 bucket behind a round-robin proxy; backup throughput of --clients clients of
    /// --size each, and objects and catalog rows per stored GiB. Only when named.
    Service,
}

/// End-to-end benchmarks of CyberBackup against the real server binary.
#[derive(Debug, Parser)]
#[command(name = "cyberbackup-bench", about)]
struct Cli {
    /// Scenarios to run, in order [default: all].
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// single-file / peer: file size (B, KiB, MiB, GiB) [default: 1GiB; smoke 64MiB].
    #[arg(long, value_parser = data::parse_size)]
    size: Option<u64>,
    /// single-file: also upload a file of `--compare-size` and compare peak RSS.
    #[arg(long)]
    compare_sizes: bool,
    /// single-file: the larger size for --compare-sizes [default: 3 × --size].
    #[arg(long, value_parser = data::parse_size)]
    compare_size: Option<u64>,
    /// many-clients / soak: number of clients [default: 1000; smoke 50, soak smoke 20].
    #[arg(long)]
    clients: Option<usize>,
    /// many-files: number of (small) files [default: 10000; smoke 200].
    #[arg(long)]
    files: Option<usize>,
    /// many-files: size of each file [default: 4KiB].
    #[arg(long, value_parser = data::parse_size, default_value = "4KiB")]
    file_size: u64,
    /// soak: how long the clients keep uploading, in minutes [default: 10; smoke 1/3].
    #[arg(long)]
    minutes: Option<f64>,
    /// soak: seed of file sizes, contents and disconnects.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// browse: files in the snapshot [default: 100000; smoke 2000].
    #[arg(long, value_name = "N")]
    browse_files: Option<usize>,
    /// catalog: file rows [default: 1000000; smoke 20000].
    #[arg(long)]
    rows: Option<usize>,
    /// compare: the trees, comma-separated [default: source,mixed,tiny,big].
    #[arg(long, value_enum, value_delimiter = ',')]
    datasets: Vec<compare::dataset::Kind>,
    /// compare: runs per tool and tree [default: 3; smoke 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    reps: Option<u32>,
    /// compare: bytes copied from the toolchain and cargo registry for the source tree
    /// (also the source part of the mixed home) [default: 64MiB; smoke 3MiB].
    #[arg(long, value_parser = data::parse_size)]
    source_size: Option<u64>,
    /// compare: total of the mixed home's three binaries [default: 192MiB; smoke 6MiB].
    #[arg(long, value_parser = data::parse_size)]
    binaries_size: Option<u64>,
    /// compare: the mixed home's generated text [default: 64MiB; smoke 1MiB].
    #[arg(long, value_parser = data::parse_size)]
    text_size: Option<u64>,
    /// compare: files of the tiny-files tree [default: 10000; smoke 300].
    #[arg(long)]
    tiny_files: Option<usize>,
    /// compare: size of the one big file [default: 384MiB; smoke 16MiB].
    #[arg(long, value_parser = data::parse_size)]
    big_size: Option<u64>,
    /// compare: skip the runs of our client on 1 and 2 cores and with a repository of 1 ×
    /// and 10 × the tree.
    #[arg(long)]
    no_extras: bool,
    /// compare: folder of the charts (`bench-compare-<tree>.png`) [default: docs/images;
    /// none in smoke].
    #[arg(long, value_name = "DIR")]
    chart_dir: Option<PathBuf>,
    /// Small sizes for CI: 64 MiB, 50 clients, 200 files, 20,000 rows, no chart unless
    /// --chart is given. Timings are printed but mean little.
    #[arg(long)]
    smoke: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// single-file chart (PNG) [default: docs/images/bench-single-file.png; none in smoke].
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// Do not draw the chart.
    #[arg(long, conflicts_with = "chart")]
    no_chart: bool,
    /// Use prebuilt binaries from this directory instead of building them with cargo.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Where temporary directories go [default: the system temp dir]. Needs about 2 ×
    /// (--compare-size) of free space.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(report) => {
            let failures = report.failures();
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("\n{} scenario failure(s):", failures.len());
                for failure in failures {
                    eprintln!("  {failure}");
                }
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<Report> {
    let fd_limit = server::raise_fd_limit();
    let bins = match &cli.bin_dir {
        Some(dir) => Binaries::in_dir(dir)?,
        None => Binaries::build()?,
    };
    let work = cli.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&work)
        .with_context(|| format!("cannot create the work directory {}", work.display()))?;
    let scenarios = if cli.scenarios.is_empty() {
        // The soak runs for minutes, the service needs PostgreSQL and an S3 server: only when
        // asked for by name.
        Scenario::value_variants()
            .iter()
            .copied()
            .filter(|s| !matches!(s, Scenario::Soak | Scenario::Service))
            .collect()
    } else {
        cli.scenarios.clone()
    };
    let smoke = cli.smoke;
    let size = cli.size.unwrap_or(if smoke { 64 << 20 } else { 1 << 30 });
    let clients = cli.clients.unwrap_or(if smoke { 50 } else { 1000 });
    let files = cli.files.unwrap_or(if smoke { 200 } else { 10_000 });
    let rows = cli.rows.unwrap_or(if smoke { 20_000 } else { 1_000_000 });
    let chart = match (&cli.chart, cli.no_chart || smoke) {
        (Some(path), _) => Some(path.clone()),
        (None, true) => None,
        (None, false) => Some(server::workspace_root().join("docs/images/bench-single-file.png")),
    };
    if clients + 64 > usize::try_from(fd_limit).unwrap_or(usize::MAX) {
        eprintln!(
            "warning: the descriptor limit is {fd_limit}; {clients} clients need more — raise it with `ulimit -n 4096`"
        );
    }

    let mut report = Report {
        machine: Machine::detect(),
        sections: Vec::new(),
        notes: Vec::new(),
    };
    eprintln!(
        "server {}\nclient {}\nwork dir {}",
        bins.server.display(),
        bins.client.display(),
        work.display()
    );
    for scenario in scenarios {
        eprintln!("running {scenario:?} ...");
        let started = std::time::Instant::now();
        let mut section = match scenario {
            Scenario::SingleFile => {
                for (name, why) in single_file::Protocol::SKIPPED {
                    report.notes.push(format!("{name}: skipped ({why})"));
                }
                let options = single_file::Options {
                    size,
                    compare_size: cli
                        .compare_sizes
                        .then(|| cli.compare_size.unwrap_or(size.saturating_mul(3))),
                    chart: chart.clone(),
                    cbc_len: if smoke {
                        64 << 20
                    } else {
                        single_file::CBC_BUFFER_LEN
                    },
                };
                single_file::run(&bins, &work, &options)
            }
            Scenario::ManyClients => many_clients::run(&bins, &work, clients),
            Scenario::Service => {
                let (section, notes) = service::run(
                    &bins,
                    &work,
                    cli.clients.unwrap_or(8),
                    cli.size.unwrap_or(32 << 20),
                );
                report.notes.extend(notes);
                section
            }
            Scenario::Soak => {
                let minutes = cli.minutes.unwrap_or(if smoke { 1.0 / 3.0 } else { 10.0 });
                if !(minutes.is_finite() && minutes > 0.0) {
                    anyhow::bail!("--minutes must be a positive number of minutes, e.g. 10 or 0.5");
                }
                let options = soak::Options {
                    clients: cli.clients.unwrap_or(if smoke { 20 } else { 1000 }),
                    duration: std::time::Duration::from_secs_f64(minutes * 60.0),
                    seed: cli.seed,
                };
                soak::run(&bins, &work, options)
            }
            Scenario::ManyFiles => many_files::run(&bins, &work, files, cli.file_size),
            Scenario::Catalog => catalog::run(&work, rows),
            Scenario::Browse => browse::run(
                &bins,
                &work,
                cli.browse_files
                    .unwrap_or(if smoke { 2000 } else { 100_000 }),
            ),
            Scenario::Compare => {
                let base = if smoke {
                    compare::dataset::Sizes::SMOKE
                } else {
                    compare::dataset::Sizes::DEFAULT
                };
                let options = compare::Options {
                    datasets: if cli.datasets.is_empty() {
                        compare::dataset::Kind::value_variants().to_vec()
                    } else {
                        cli.datasets.clone()
                    },
                    sizes: compare::dataset::Sizes {
                        source_bytes: cli.source_size.unwrap_or(base.source_bytes),
                        binary_bytes: cli.binaries_size.unwrap_or(base.binary_bytes),
                        text_bytes: cli.text_size.unwrap_or(base.text_bytes),
                        tiny_files: cli.tiny_files.unwrap_or(base.tiny_files),
                        big_bytes: cli.big_size.unwrap_or(base.big_bytes),
                    },
                    reps: cli.reps.map_or(if smoke { 1 } else { 3 }, |n| n as usize),
                    chart_dir: match (&cli.chart_dir, cli.no_chart || smoke) {
                        (Some(dir), _) => Some(dir.clone()),
                        (None, true) => None,
                        (None, false) => Some(server::workspace_root().join("docs/images")),
                    },
                    extras: !cli.no_extras,
                };
                let (section, notes) = compare::run(&bins, &work, &options);
                report.notes.extend(notes);
                section
            }
            Scenario::Peer => match peer::restic_version() {
                Some(version) => peer::run(&work, size, &version),
                None => {
                    report.notes.push(peer::SKIPPED.to_owned());
                    continue;
                }
            },
        };
        section.row(
            "scenario run time (incl. setup)",
            format!("{:.1} s", started.elapsed().as_secs_f64()),
        );
        eprint!(
            "{}",
            Report {
                machine: report.machine.clone(),
                sections: vec![section.clone()],
                notes: Vec::new(),
            }
            .to_text()
            .split_once('\n')
            .map_or("", |(_, rest)| rest)
        );
        report.sections.push(section);
    }
    println!("{}", report.to_text());
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report)
}
