//! Results: one section per scenario (rows for the table, a JSON value), the targets with
//! their PASS / FALL SHORT verdicts, and the machine they were measured on.

use std::fmt::Write as _;

use serde::Serialize;

/// Verdict of one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum Verdict {
    /// The measurement meets the target.
    #[serde(rename = "PASS")]
    Pass,
    /// It does not.
    #[serde(rename = "FALL SHORT")]
    FallShort,
    /// Not measured in this run (the reason is in `measured`).
    #[serde(rename = "NOT RUN")]
    NotRun,
}

impl Verdict {
    /// `Pass` if `ok`, else `FallShort`.
    pub(crate) fn of(ok: bool) -> Self {
        if ok { Self::Pass } else { Self::FallShort }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::FallShort => "FALL SHORT",
            Self::NotRun => "NOT RUN",
        }
    }
}

/// One target, e.g. "server peak RSS ≤ 64 MiB".
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Target {
    /// What is compared.
    pub(crate) name: String,
    /// The goal.
    pub(crate) goal: String,
    /// What was measured.
    pub(crate) measured: String,
    /// The verdict.
    pub(crate) verdict: Verdict,
}

impl Target {
    /// A target with its verdict.
    pub(crate) fn new(
        name: impl Into<String>,
        goal: impl Into<String>,
        measured: impl Into<String>,
        verdict: Verdict,
    ) -> Self {
        Self {
            name: name.into(),
            goal: goal.into(),
            measured: measured.into(),
            verdict,
        }
    }
}

/// The results of one scenario.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Section {
    /// Scenario name (`single-file`, ...).
    pub(crate) scenario: String,
    /// `(metric, value)` rows of the table.
    pub(crate) rows: Vec<(String, String)>,
    /// Targets judged by this scenario.
    pub(crate) targets: Vec<Target>,
    /// Failures that make the run fail (files not verified, errors); empty when all went
    /// well. Targets that fall short are not failures.
    pub(crate) failures: Vec<String>,
    /// Raw figures for the JSON report.
    pub(crate) data: serde_json::Value,
}

impl Section {
    /// An empty section for `scenario`.
    pub(crate) fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            rows: Vec::new(),
            targets: Vec::new(),
            failures: Vec::new(),
            data: serde_json::Value::Null,
        }
    }

    /// Adds a table row.
    pub(crate) fn row(&mut self, metric: impl Into<String>, value: impl Into<String>) {
        self.rows.push((metric.into(), value.into()));
    }
}

/// The machine a run was made on.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Machine {
    /// `available_parallelism` (what `nproc` prints).
    pub(crate) nproc: usize,
    /// `model name` of /proc/cpuinfo.
    pub(crate) cpu: String,
    /// Load average at the start (1, 5, 15 min), from /proc/loadavg.
    pub(crate) loadavg: String,
    /// UTC date and time of the start.
    pub(crate) date: String,
    /// Whether the harness and binaries are release builds.
    pub(crate) release: bool,
}

impl Machine {
    /// Reads the machine's description.
    pub(crate) fn detect() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let loadavg = std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu,
            loadavg,
            date: cyberbackup_server::catalog::format_rfc3339(std::time::SystemTime::now()),
            release: !cfg!(debug_assertions),
        }
    }
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Report {
    /// Where it ran.
    pub(crate) machine: Machine,
    /// One section per scenario, in run order.
    pub(crate) sections: Vec<Section>,
    /// Lines printed as-is (skipped variants such as v4 and the peer).
    pub(crate) notes: Vec<String>,
}

impl Report {
    /// Every failure of every section, prefixed with its scenario.
    pub(crate) fn failures(&self) -> Vec<String> {
        self.sections
            .iter()
            .flat_map(|s| {
                s.failures
                    .iter()
                    .map(move |f| format!("{}: {f}", s.scenario))
            })
            .collect()
    }

    /// The human-readable tables.
    pub(crate) fn to_text(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "machine: nproc {}, CPU {:?}, load {}, {} ({} build)",
            m.nproc,
            m.cpu,
            m.loadavg,
            m.date,
            if m.release { "release" } else { "DEBUG" }
        );
        for section in &self.sections {
            let _ = writeln!(out, "\n== {} ==", section.scenario);
            let width = section
                .rows
                .iter()
                .map(|(k, _)| k.chars().count())
                .max()
                .unwrap_or(0);
            for (metric, value) in &section.rows {
                let pad = width - metric.chars().count();
                let _ = writeln!(out, "  {metric}{:pad$}  {value}", "");
            }
            for failure in &section.failures {
                let _ = writeln!(out, "  FAILURE: {failure}");
            }
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                let _ = writeln!(out, "{note}");
            }
        }
        let targets: Vec<&Target> = self.sections.iter().flat_map(|s| &s.targets).collect();
        if !targets.is_empty() {
            let _ = writeln!(out, "\n== targets ==");
            let name_w = targets
                .iter()
                .map(|t| t.name.chars().count())
                .max()
                .unwrap_or(0);
            let goal_w = targets
                .iter()
                .map(|t| t.goal.chars().count())
                .max()
                .unwrap_or(0);
            for t in targets {
                let (n, g) = (
                    name_w - t.name.chars().count(),
                    goal_w - t.goal.chars().count(),
                );
                let _ = writeln!(
                    out,
                    "  {:<10}  {}{:n$}  {}{:g$}  {}",
                    t.verdict.label(),
                    t.name,
                    "",
                    t.goal,
                    "",
                    t.measured,
                );
            }
        }
        out
    }
}

/// `n` in MiB with one decimal, from KiB.
pub(crate) fn mib_from_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The `p`-th percentile (0–100, nearest rank) of sorted `values`.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank: the smallest value with at least p % of the values at or below it.
    let wanted = p / 100.0 * sorted.len() as f64;
    let index = (0..sorted.len())
        .find(|&i| (i + 1) as f64 >= wanted)
        .unwrap_or(sorted.len() - 1);
    sorted[index]
}

/// The median of `values` (sorted on a copy).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();

        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn table_shows_verdicts_and_failures() {
        let mut section = Section::new("demo");
        section.row("speed", "1 MB/s");
        section.targets.push(Target::new(
            "speed",
            "≥ 2 MB/s",
            "1 MB/s",
            Verdict::FallShort,
        ));
        section.failures.push("file x not verified".into());
        let report = Report {
            machine: Machine::detect(),
            sections: vec![section],
            notes: vec!["v4: skipped".into()],
        };

        let text = report.to_text();

        assert!(text.contains("FALL SHORT  speed"));
        assert!(text.contains("FAILURE: file x not verified"));
        assert!(text.contains("v4: skipped"));
        assert_eq!(report.failures(), ["demo: file x not verified"]);
    }
}
