//! `single-file`: one large file backed up by the `cyberbackup-client` binary to the
//! `cyberbackup-server` binary over v3, beside the single-core AES-256-CBC ceiling measured in
//! the same run, with the RSS of both processes sampled every 100 ms.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::BytesMut;
use cyberbackup_core::crypto::{AesKey, CbcEncryptor};

use crate::data::{self, Noise};
use crate::procfs::{self, Peaks, Row, Sampler, Watch};
use crate::report::{Section, Target, Verdict, mib_from_kib};
use crate::server::{Binaries, ServerProcess, ServerSettings};

/// Bytes encrypted by the AES-256-CBC baseline per run (smoke mode: 64 MiB).
pub(crate) const CBC_BUFFER_LEN: usize = 256 * 1024 * 1024;
/// v4 transport frame (plaintext bytes per AEAD seal).
const GCM_FRAME_LEN: usize = 64 * 1024;
/// Plaintext fed to the encryptor at a time: the client's default read size.
const CBC_PIECE_LEN: usize = 1024 * 1024;
/// Baseline runs; the median is reported.
const CBC_RUNS: usize = 3;
/// Target: v3 throughput at least this fraction of the single-core CBC ceiling.
const CBC_RATIO_TARGET: f64 = 0.7;
/// Target: server peak RSS during the upload.
const SERVER_RSS_TARGET_KIB: u64 = 64 * 1024;
/// Target: client peak RSS during the upload.
const CLIENT_RSS_TARGET_KIB: u64 = 32 * 1024;
/// Target: peak RSS of a run 3× larger differs by less than this fraction.
const GROWTH_TARGET: f64 = 0.10;

/// The protocol versions this scenario measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// The legacy protocol: AES-256-CBC, serial on the client.
    V3,
    /// Noise XX with AES-256-GCM frames of 64 KiB.
    V4,
}

impl Protocol {
    /// Every protocol to measure, in table order.
    pub(crate) const ALL: [Self; 2] = [Self::V3, Self::V4];

    /// Protocols the harness must mention as skipped, with the reason (none since v4
    /// landed; kept so a future protocol can be listed before it works).
    pub(crate) const SKIPPED: [(&'static str, &'static str); 0] = [];

    fn label(self) -> &'static str {
        match self {
            Self::V3 => "v3",
            Self::V4 => "v4",
        }
    }

    /// The single-core crypto each byte must pass on the client.
    fn ceiling_label(self) -> &'static str {
        match self {
            Self::V3 => "AES-CBC encrypt",
            Self::V4 => "AES-GCM seal",
        }
    }
}

/// The result of one upload.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Upload {
    /// Protocol used.
    pub(crate) protocol: &'static str,
    /// File size in bytes.
    pub(crate) bytes: u64,
    /// Client process wall time, spawn to exit (includes start-up, key generation and
    /// registration, a few tens of ms).
    pub(crate) wall_secs: f64,
    /// `bytes / wall_secs` in MB/s (10^6 bytes).
    pub(crate) mb_per_s: f64,
    /// Server peaks.
    pub(crate) server: Peaks,
    /// Client peaks.
    pub(crate) client: Peaks,
    /// Time series: seconds, server RSS KiB, client RSS KiB, client bytes read.
    #[serde(skip)]
    pub(crate) series: Vec<Row>,
}

/// Single-core throughput of a cipher over a `len`-byte buffer: median over the runs, per
/// wall-clock second and per CPU-second of the measuring thread (the latter does not drop
/// when other processes take the core).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct Ceiling {
    /// MB (10^6 bytes) per wall-clock second.
    pub(crate) wall_mb_per_s: f64,
    /// MB per CPU-second of the measuring thread.
    pub(crate) cpu_mb_per_s: f64,
}

/// Times `run` (one pass over `len` bytes) [`CBC_RUNS`] times on this thread.
fn measure_ceiling(len: usize, mut run: impl FnMut()) -> Ceiling {
    let thread_cpu = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    };
    let mut wall_rates = Vec::with_capacity(CBC_RUNS);
    let mut cpu_rates = Vec::with_capacity(CBC_RUNS);
    for _ in 0..CBC_RUNS {
        let start = Instant::now();
        let cpu_start = thread_cpu();
        run();
        let cpu = (thread_cpu() - cpu_start).max(1e-6);
        wall_rates.push(len as f64 / start.elapsed().as_secs_f64() / 1e6);
        cpu_rates.push(len as f64 / cpu / 1e6);
    }
    Ceiling {
        wall_mb_per_s: crate::report::median(&wall_rates),
        cpu_mb_per_s: crate::report::median(&cpu_rates),
    }
}

/// `CbcEncryptor` over a `len`-byte buffer fed in 1 MiB pieces (the client's read size).
pub(crate) fn cbc_encrypt_ceiling(len: usize) -> Ceiling {
    let mut input = vec![0u8; len];
    Noise::new(1).fill(&mut input);
    let key = AesKey::from_bytes([7; 32]);
    let mut out = BytesMut::with_capacity(CBC_PIECE_LEN + 16);
    measure_ceiling(len, || {
        let mut encryptor = CbcEncryptor::new(&key);
        for piece in input.chunks(CBC_PIECE_LEN) {
            out.clear();
            encryptor.update(piece, &mut out);
            std::hint::black_box(&out);
        }
        out.clear();
        encryptor.finish(&mut out);
        std::hint::black_box(&out);
    })
}

/// AES-256-GCM seal with the cipher the v4 transport uses (snow's ring resolver, through the
/// same `Cipher` trait and its copy into the output buffer) over a `len`-byte buffer in
/// 64 KiB frames.
pub(crate) fn gcm_seal_ceiling(len: usize) -> Ceiling {
    use snow::resolvers::{CryptoResolver, RingResolver};
    let mut buf = vec![0u8; len];
    Noise::new(2).fill(&mut buf);
    let Some(mut cipher) = RingResolver.resolve_cipher(&snow::params::CipherChoice::AESGCM) else {
        unreachable!("snow's ring resolver always provides AES-GCM");
    };
    cipher.set(&[9u8; 32]);
    let mut out = vec![0u8; GCM_FRAME_LEN + 16];
    measure_ceiling(len, || {
        for (n, frame) in buf.chunks(GCM_FRAME_LEN).enumerate() {
            let written = cipher.encrypt(n as u64, b"", frame, &mut out);
            std::hint::black_box(&out[..written]);
        }
    })
}

/// Backs up a `size`-byte file once over `protocol`.
///
/// # Errors
/// The file cannot be written, a process does not start, or the backup fails.
pub(crate) fn upload(
    bins: &Binaries,
    work: &Path,
    size: u64,
    protocol: Protocol,
) -> anyhow::Result<Upload> {
    let dir = tempfile::Builder::new()
        .prefix("single-file-")
        .tempdir_in(work)
        .context("cannot create a temporary directory")?;
    let input = dir.path().join(format!("big-{size}.bin"));
    data::write_file(&input, size, size)?;
    let server_dir = dir.path().join("server");
    std::fs::create_dir(&server_dir)?;
    let server = ServerProcess::start(&bins.server, &server_dir, &ServerSettings::default())?;

    let out_path = dir.path().join("client.json");
    let err_path = dir.path().join("client.err");
    let start = Instant::now();
    let mut command = Command::new(&bins.client);
    command
        .arg("upload")
        .arg(&input)
        .arg("--server")
        .arg(server.addr().to_string())
        .args(["--name", "bench-single", "--json", "--retries", "0"])
        .arg("--identity")
        .arg(dir.path().join("me.info"));
    match protocol {
        // The client's default is protocol v4 since issue 5.
        Protocol::V3 => command.args(["--protocol", "v3"]),
        // First use: creates the v4 identity, registers, trusts the server key it sees.
        Protocol::V4 => command
            .args(["--protocol", "v4", "--v4-identity"])
            .arg(dir.path().join("v4.json")),
    };
    let mut client = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("cannot start {}", bins.client.display()))?;
    let sampler = Sampler::start(vec![
        Watch {
            pid: server.pid(),
            count_fds: false,
        },
        Watch {
            pid: client.id(),
            count_fds: false,
        },
    ]);
    let status = loop {
        // Poll rather than wait: the sampler must read the client's VmHWM before it is
        // reaped, so sample once more right before the exit is collected.
        if let Some(status) = client.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall_secs = start.elapsed().as_secs_f64();
    let series = sampler.finish();
    let server_peaks = procfs::peaks(&series, 0);
    let client_peaks = procfs::peaks(&series, 1);
    let stored = stored_len(&server.data_dir(), &input);
    let log = server.log_tail();
    server.stop()?;
    if !status.success() {
        bail!(
            "the client failed ({status}): {}\n{}\nserver log:\n{log}",
            std::fs::read_to_string(&out_path).unwrap_or_default(),
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
    }
    if stored != Some(size) {
        bail!("the server stored {stored:?} bytes, expected {size}; server log:\n{log}");
    }
    Ok(Upload {
        protocol: protocol.label(),
        bytes: size,
        wall_secs,
        mb_per_s: size as f64 / wall_secs / 1e6,
        server: server_peaks,
        client: client_peaks,
        series,
    })
}

/// Length of the stored copy of `input` under `<data>/files/<client>/`.
fn stored_len(data_dir: &Path, input: &Path) -> Option<u64> {
    let name = input.file_name()?;
    let clients = std::fs::read_dir(data_dir.join("files")).ok()?;
    clients
        .filter_map(Result::ok)
        .map(|entry| entry.path().join(name))
        .find_map(|path: PathBuf| std::fs::metadata(path).ok())
        .map(|meta| meta.len())
}

/// Options of the scenario.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// File size.
    pub(crate) size: u64,
    /// Also upload a file this large and compare peak RSS.
    pub(crate) compare_size: Option<u64>,
    /// Where to write the chart (none: no chart).
    pub(crate) chart: Option<PathBuf>,
    /// Bytes encrypted by the CBC baseline.
    pub(crate) cbc_len: usize,
}

/// Runs the scenario.
pub(crate) fn run(bins: &Binaries, work: &Path, options: &Options) -> Section {
    let mut section = Section::new("single-file");
    if let Err(error) = run_inner(bins, work, options, &mut section) {
        section.failures.push(format!("{error:#}"));
    }
    section
}

fn run_inner(
    bins: &Binaries,
    work: &Path,
    options: &Options,
    section: &mut Section,
) -> anyhow::Result<()> {
    let ceiling = cbc_encrypt_ceiling(options.cbc_len);
    let cbc = ceiling.wall_mb_per_s;
    section.row(
        format!(
            "AES-256-CBC encrypt, one core (CbcEncryptor, {})",
            data::human(options.cbc_len as u64)
        ),
        format!(
            "{cbc:.0} MB/s ({:.0} MB per CPU-second)",
            ceiling.cpu_mb_per_s
        ),
    );
    let gcm = gcm_seal_ceiling(options.cbc_len);
    section.row(
        format!(
            "AES-256-GCM seal, one core (ring via snow, 64 KiB frames, {})",
            data::human(options.cbc_len as u64)
        ),
        format!(
            "{:.0} MB/s ({:.0} MB per CPU-second)",
            gcm.wall_mb_per_s, gcm.cpu_mb_per_s
        ),
    );
    let size_label = data::human(options.size);
    let mut json_uploads = Vec::new();
    let mut first: Option<Upload> = None;
    for protocol in Protocol::ALL {
        let limit = match protocol {
            Protocol::V3 => ceiling,
            Protocol::V4 => gcm,
        };
        let name = protocol.ceiling_label();
        let up = match upload(bins, work, options.size, protocol) {
            Ok(up) => up,
            Err(error) if protocol != Protocol::V3 => {
                // Report the failure and go on: v3 figures and the chart still count.
                section.row(format!("{} upload", protocol.label()), "FAILED");
                section
                    .failures
                    .push(format!("{} upload: {error:#}", protocol.label()));
                continue;
            }
            Err(error) => return Err(error),
        };
        let ratio = up.mb_per_s / limit.wall_mb_per_s;
        section.row(
            format!("{} upload {size_label}", up.protocol),
            format!(
                "{:.0} MB/s ({:.2} s), {ratio:.2} × {name}",
                up.mb_per_s, up.wall_secs
            ),
        );
        let client_rate = up.bytes as f64 / up.client.cpu_secs.max(1e-3) / 1e6;
        let server_rate = up.bytes as f64 / up.server.cpu_secs.max(1e-3) / 1e6;
        section.row(
            format!("{} CPU time: client / server", up.protocol),
            format!(
                "{:.2} s / {:.2} s = {client_rate:.0} / {server_rate:.0} MB per CPU-second ({:.2} × {name} per CPU-second for the client)",
                up.client.cpu_secs,
                up.server.cpu_secs,
                client_rate / limit.cpu_mb_per_s
            ),
        );
        section.row(
            format!("{} server peak RSS (VmHWM)", up.protocol),
            mib_from_kib(up.server.hwm_kib),
        );
        section.row(
            format!("{} client peak RSS (VmHWM)", up.protocol),
            mib_from_kib(up.client.hwm_kib),
        );
        section.targets.push(Target::new(
            format!("single file {} {size_label}", up.protocol),
            format!(
                "≥ {CBC_RATIO_TARGET} × {name} ({:.0} MB/s)",
                limit.wall_mb_per_s * CBC_RATIO_TARGET
            ),
            format!("{:.0} MB/s = {ratio:.2} ×", up.mb_per_s),
            Verdict::of(ratio >= CBC_RATIO_TARGET),
        ));
        section.targets.push(Target::new(
            format!("server peak RSS, {} {size_label} upload", up.protocol),
            "≤ 64 MiB",
            mib_from_kib(up.server.hwm_kib),
            Verdict::of(up.server.hwm_kib <= SERVER_RSS_TARGET_KIB),
        ));
        section.targets.push(Target::new(
            format!("client peak RSS, {} {size_label} upload", up.protocol),
            "≤ 32 MiB",
            mib_from_kib(up.client.hwm_kib),
            Verdict::of(up.client.hwm_kib > 0 && up.client.hwm_kib <= CLIENT_RSS_TARGET_KIB),
        ));
        json_uploads.push(serde_json::to_value(&up)?);
        if first.is_none() {
            first = Some(up);
        }
    }
    let Some(first) = first else {
        bail!("no protocol to measure");
    };
    for (name, why) in Protocol::SKIPPED {
        section.row(format!("{name} upload"), format!("skipped ({why})"));
    }
    if let Some(path) = &options.chart {
        crate::chart::single_file(path, &first, cbc)?;
        section.row("chart", path.display().to_string());
    }
    let mut growth_json = serde_json::Value::Null;
    match options.compare_size {
        Some(big) => {
            let large = upload(bins, work, big, Protocol::V3)?;
            let big_label = data::human(big);
            let growth = |a: u64, b: u64| (b as f64 - a as f64).abs() / (a.max(1) as f64);
            let server_growth = growth(first.server.hwm_kib, large.server.hwm_kib);
            let client_growth = growth(first.client.hwm_kib, large.client.hwm_kib);
            section.row(
                format!("v3 upload {big_label}"),
                format!("{:.0} MB/s ({:.2} s)", large.mb_per_s, large.wall_secs),
            );
            section.row(
                format!("peak RSS {size_label} → {big_label}, server"),
                format!(
                    "{} → {} ({:+.1} %)",
                    mib_from_kib(first.server.hwm_kib),
                    mib_from_kib(large.server.hwm_kib),
                    100.0 * server_growth
                ),
            );
            section.row(
                format!("peak RSS {size_label} → {big_label}, client"),
                format!(
                    "{} → {} ({:+.1} %)",
                    mib_from_kib(first.client.hwm_kib),
                    mib_from_kib(large.client.hwm_kib),
                    100.0 * client_growth
                ),
            );
            section.targets.push(Target::new(
                format!("peak RSS flat, {size_label} vs {big_label}"),
                "differ < 10 %",
                format!(
                    "server {:.1} %, client {:.1} %",
                    100.0 * server_growth,
                    100.0 * client_growth
                ),
                Verdict::of(server_growth < GROWTH_TARGET && client_growth < GROWTH_TARGET),
            ));
            growth_json = serde_json::json!({
                "large": large,
                "server_growth": server_growth,
                "client_growth": client_growth,
            });
        }
        None => section.targets.push(Target::new(
            "peak RSS flat, 1 GiB vs 3 GiB",
            "differ < 10 %",
            "not measured (add --compare-sizes)",
            Verdict::NotRun,
        )),
    }
    section.data = serde_json::json!({
        "cbc_encrypt_mb_per_s": cbc,
        "cbc_encrypt_mb_per_cpu_s": ceiling.cpu_mb_per_s,
        "gcm_seal_mb_per_s": gcm.wall_mb_per_s,
        "gcm_seal_mb_per_cpu_s": gcm.cpu_mb_per_s,
        "uploads": json_uploads,
        "skipped": Protocol::SKIPPED.iter().map(|(p, why)| serde_json::json!({"protocol": p, "reason": why})).collect::<Vec<_>>(),
        "compare_sizes": growth_json,
        "series": first.series.iter().map(|row| {
            let get = |i: usize| row.procs.get(i).copied().unwrap_or_default();
            serde_json::json!([row.t_secs, get(0).rss_kib, get(1).rss_kib, get(1).read_bytes])
        }).collect::<Vec<_>>(),
    });
    Ok(())
}
