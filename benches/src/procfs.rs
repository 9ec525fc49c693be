//! Reading another process's memory, descriptors and IO counters from `/proc`, and a
//! sampler thread that records them every 100 ms.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Interval between two samples.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// What `/proc/<pid>` said about one process at one instant (`None`: could not be read,
/// e.g. the process had not started or had already exited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProcSample {
    /// Resident set size (`VmRSS`), KiB.
    pub(crate) rss_kib: Option<u64>,
    /// Peak resident set size so far (`VmHWM`), KiB.
    pub(crate) hwm_kib: Option<u64>,
    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub(crate) fds: Option<u64>,
    /// Bytes the process read through `read`-like calls (`rchar` of `/proc/<pid>/io`).
    pub(crate) read_bytes: Option<u64>,
    /// CPU time used so far (user + system, all threads), in clock ticks.
    pub(crate) cpu_ticks: Option<u64>,
}

/// Reads `/proc/<pid>/status`, `/proc/<pid>/io` and (if `count_fds`) `/proc/<pid>/fd`.
pub(crate) fn sample(pid: u32, count_fds: bool) -> ProcSample {
    let mut out = ProcSample::default();
    if let Some(status) = status_of(pid) {
        out.rss_kib = status_kib(&status, "VmRSS:");
        out.hwm_kib = status_kib(&status, "VmHWM:");
    }
    if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
        out.read_bytes = io
            .lines()
            .find_map(|line| line.strip_prefix("rchar:"))
            .and_then(|v| v.trim().parse().ok());
    }
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        out.cpu_ticks = stat_cpu_ticks(&stat);
    }
    if count_fds {
        out.fds = std::fs::read_dir(PathBuf::from(format!("/proc/{pid}/fd")))
            .ok()
            .map(|dir| dir.count() as u64);
    }
    out
}

/// `/proc/<pid>/status`, if readable.
fn status_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

/// utime + stime (fields 14 and 15) of `/proc/<pid>/stat`; the command name in field 2 may
/// hold spaces, so count from its closing parenthesis.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second of the `/proc/<pid>/stat` times.
pub(crate) fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// The value of a `Vm*:   1234 kB` line.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One row of the time series: seconds since the sampler started, then one sample per
/// watched process (in the order given to [`Sampler::start`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    /// Seconds since the sampler started.
    pub(crate) t_secs: f64,
    /// One sample per watched process.
    pub(crate) procs: Vec<ProcSample>,
}

/// A process to watch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Watch {
    /// Its pid.
    pub(crate) pid: u32,
    /// Whether to count its descriptors (costs a directory listing per sample).
    pub(crate) count_fds: bool,
}

/// A thread sampling processes every [`SAMPLE_INTERVAL`] until [`Sampler::finish`].
#[derive(Debug)]
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Row>>,
}

impl Sampler {
    /// Starts sampling `watch` at once.
    pub(crate) fn start(watch: Vec<Watch>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut rows = Vec::new();
            let mut next = start;
            loop {
                rows.push(Row {
                    t_secs: start.elapsed().as_secs_f64(),
                    procs: watch.iter().map(|w| sample(w.pid, w.count_fds)).collect(),
                });
                if flag.load(Ordering::Relaxed) {
                    return rows;
                }
                next += SAMPLE_INTERVAL;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Self { stop, handle }
    }

    /// Takes one last sample and returns the series.
    pub(crate) fn finish(self) -> Vec<Row> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// Peaks of one watched process over a series.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub(crate) struct Peaks {
    /// Highest `VmHWM` seen (the kernel's own peak), KiB.
    pub(crate) hwm_kib: u64,
    /// Highest sampled `VmRSS`, KiB.
    pub(crate) rss_kib: u64,
    /// Most descriptors seen open at once.
    pub(crate) fds: u64,
    /// CPU seconds used (user + system) at the last sample.
    pub(crate) cpu_secs: f64,
}

/// Peaks of process number `index` in `rows`.
pub(crate) fn peaks(rows: &[Row], index: usize) -> Peaks {
    let mut out = Peaks::default();
    for proc_sample in rows.iter().filter_map(|row| row.procs.get(index)) {
        out.hwm_kib = out.hwm_kib.max(proc_sample.hwm_kib.unwrap_or(0));
        out.rss_kib = out.rss_kib.max(proc_sample.rss_kib.unwrap_or(0));
        out.fds = out.fds.max(proc_sample.fds.unwrap_or(0));
        if let Some(ticks) = proc_sample.cpu_ticks {
            out.cpu_secs = out.cpu_secs.max(ticks as f64 / ticks_per_second());
        }
    }
    out
}

/// Runs `command` to completion (stdin and stdout closed, stderr to the file `stderr_log`,
/// so a chatty child never blocks on a full pipe) while sampling it; returns its wall time
/// and its peaks. A failure names `what` and quotes the child's stderr.
///
/// # Errors
/// The command cannot start or exits unsuccessfully.
pub(crate) fn run_sampled(
    command: std::process::Command,
    what: &str,
    stderr_log: &std::path::Path,
) -> anyhow::Result<(f64, Peaks)> {
    let run = run_watched(command, what, stderr_log, &[])?;
    Ok((run.wall_secs, run.child))
}

/// What [`run_watched`] measured.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub(crate) struct WatchedRun {
    /// Spawn to exit.
    pub(crate) wall_secs: f64,
    /// The child's peaks; `cpu_secs` read from the exited child before it is reaped, so it
    /// includes its last 100 ms.
    pub(crate) child: Peaks,
    /// Per other watched process: highest sampled `VmRSS` during the run (its `VmHWM` is
    /// the peak of its whole life, so says nothing about this run) and CPU seconds it used
    /// during the run.
    pub(crate) others: Vec<Peaks>,
}

/// [`run_sampled`], also sampling the already running processes `others` (a server the
/// child talks to).
///
/// # Errors
/// The command cannot start or exits unsuccessfully.
pub(crate) fn run_watched(
    mut command: std::process::Command,
    what: &str,
    stderr_log: &std::path::Path,
    others: &[u32],
) -> anyhow::Result<WatchedRun> {
    use anyhow::Context as _;
    let start = Instant::now();
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(stderr_log)?)
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let mut watch = vec![Watch {
        pid: child.id(),
        count_fds: false,
    }];
    watch.extend(others.iter().map(|&pid| Watch {
        pid,
        count_fds: false,
    }));
    let sampler = Sampler::start(watch);
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .context("the child's pid is out of range")?;
    // Wait for the exit without reaping, so /proc/<pid>/stat still holds the final CPU
    // times; `wait` reaps it afterwards. `VmHWM` is read at every poll too: a child that
    // lives a few milliseconds may never meet the sampler.
    let mut polled_hwm_kib = 0;
    loop {
        polled_hwm_kib = polled_hwm_kib.max(
            status_of(child.id())
                .and_then(|status| status_kib(&status, "VmHWM:"))
                .unwrap_or(0),
        );
        let exited = rustix::process::waitid(
            rustix::process::WaitId::Pid(pid),
            rustix::process::WaitIdOptions::EXITED
                | rustix::process::WaitIdOptions::NOWAIT
                | rustix::process::WaitIdOptions::NOHANG,
        )
        .with_context(|| format!("cannot wait for {what}"))?;
        if exited.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall_secs = start.elapsed().as_secs_f64();
    let final_ticks = sample(child.id(), false).cpu_ticks;
    let rows = sampler.finish();
    let status = child.wait()?;
    if !status.success() {
        anyhow::bail!(
            "{what} failed ({status}): {}",
            std::fs::read_to_string(stderr_log).unwrap_or_default()
        );
    }
    let mut child_peaks = peaks(&rows, 0);
    child_peaks.hwm_kib = child_peaks.hwm_kib.max(polled_hwm_kib);
    if let Some(ticks) = final_ticks {
        child_peaks.cpu_secs = child_peaks.cpu_secs.max(ticks as f64 / ticks_per_second());
    }
    let others = (1..=others.len())
        .map(|index| {
            let mut p = peaks(&rows, index);
            let first = rows
                .iter()
                .find_map(|row| row.procs.get(index).and_then(|s| s.cpu_ticks));
            let used = first.map_or(0.0, |ticks| ticks as f64 / ticks_per_second());
            p.cpu_secs = (p.cpu_secs - used).max(0.0);
            p
        })
        .collect();
    Ok(WatchedRun {
        wall_secs,
        child: child_peaks,
        others,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let status = "Name:\tx\nVmHWM:\t   20480 kB\nVmRSS:\t    1024 kB\n";

        assert_eq!(status_kib(status, "VmHWM:"), Some(20_480));
        assert_eq!(status_kib(status, "VmRSS:"), Some(1_024));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn samples_this_process() {
        let me = sample(std::process::id(), true);

        assert!(me.rss_kib.is_some_and(|kib| kib > 0));
        assert!(me.hwm_kib >= me.rss_kib);
        assert!(me.fds.is_some_and(|n| n >= 3));
        assert!(me.read_bytes.is_some());
        assert!(me.cpu_ticks.is_some());
    }

    #[test]
    fn watched_run_counts_the_child_cpu_to_its_exit() {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut busy = std::process::Command::new("sh");
        // About 30 ms of CPU: over before the sampler's second sample (at 100 ms), so only
        // the read of the exited, not yet reaped child sees it.
        busy.args(["-c", "i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done"]);

        let run = run_watched(busy, "busy loop", log.path(), &[std::process::id()]).unwrap();

        assert!(run.child.cpu_secs >= 0.015, "{run:?}");
        assert!(run.child.cpu_secs <= run.wall_secs + 0.05, "{run:?}");
        assert!(run.child.hwm_kib > 0, "{run:?}");
        assert_eq!(run.others.len(), 1);
        assert!(run.others[0].rss_kib > 0);
    }

    #[test]
    fn cpu_ticks_skip_names_with_spaces() {
        let stat = "42 (tokio rt) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0";

        assert_eq!(stat_cpu_ticks(stat), Some(280));
    }
}
