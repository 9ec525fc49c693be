//! The process metrics of `/metrics` (the names the Prometheus client libraries use:
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_cpu_seconds_total`, `process_start_time_seconds`), read from `/proc/self`.
//! Elsewhere than Linux none are exported.

use std::path::Path;

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`). Linux exposes
/// them in USER_HZ, 100 on every architecture we build for; the Prometheus Go client's
/// procfs reader makes the same assumption.
const USER_HZ: u64 = 100;

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessStats {
    /// Resident set size, bytes.
    pub(crate) resident_bytes: u64,
    /// Open file descriptors.
    pub(crate) open_fds: u64,
    /// The soft descriptor limit (`None`: unlimited).
    pub(crate) max_fds: Option<u64>,
    /// User plus system CPU time, whole seconds (the counter of the metrics crate is an
    /// integer).
    pub(crate) cpu_seconds: u64,
    /// Start time, Unix seconds.
    pub(crate) start_time_secs: f64,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` when it cannot be read or parsed (not Linux).
    pub(crate) fn read() -> Option<Self> {
        let proc = Path::new("/proc");
        let stat = std::fs::read_to_string(proc.join("self/stat")).ok()?;
        let status = std::fs::read_to_string(proc.join("self/status")).ok()?;
        let system = std::fs::read_to_string(proc.join("stat")).ok()?;
        let open_fds = std::fs::read_dir(proc.join("self/fd")).ok()?.count();
        let limits = std::fs::read_to_string(proc.join("self/limits")).ok()?;
        parse(&stat, &status, &system, &limits, open_fds as u64)
    }
}

/// Builds [`ProcessStats`] from the text of `/proc/self/stat`, `/proc/self/status`,
/// `/proc/stat` and `/proc/self/limits`, and the descriptor count.
fn parse(
    stat: &str,
    status: &str,
    system: &str,
    limits: &str,
    open_fds: u64,
) -> Option<ProcessStats> {
    // The command name (field 2) is in parentheses and may hold spaces or ')'; the fields
    // after the last ')' start at field 3 (state).
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field n (1-based, proc(5)) is fields[n - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let (utime, stime, start_ticks) = (field(14)?, field(15)?, field(22)?);
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    let boot_secs: u64 = system
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok());
    Some(ProcessStats {
        resident_bytes: rss_kib.saturating_mul(1024),
        open_fds,
        max_fds,
        cpu_seconds: (utime + stime) / USER_HZ,
        start_time_secs: boot_secs as f64 + start_ticks as f64 / USER_HZ as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_text_with_a_hostile_command_name() {
        let stat = "4242 (cyber) backup) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 123400 900000000 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let status = "Name:\tcyber\nVmRSS:\t    8192 kB\nThreads:\t9\n";
        let system = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            65536                524288               files\n";

        let stats = parse(stat, status, system, limits, 17).unwrap();

        assert_eq!(
            stats,
            ProcessStats {
                resident_bytes: 8192 * 1024,
                open_fds: 17,
                max_fds: Some(65536),
                cpu_seconds: 3,
                start_time_secs: 1_700_001_234.0,
            }
        );
        assert_eq!(parse("garbage", status, system, limits, 1), None);
    }

    #[test]
    fn reads_this_process() {
        let stats = ProcessStats::read().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();

        assert!(stats.resident_bytes > 1 << 20, "{stats:?}");
        assert!(stats.open_fds >= 3, "{stats:?}");
        assert!(
            stats.start_time_secs > now - 3600.0 && stats.start_time_secs <= now + 1.0,
            "{stats:?}"
        );
    }
}
