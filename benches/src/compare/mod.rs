//! `compare`: CyberBackup next to restic, borg and rustic on the same trees, on the same
//! disk, in the same run (issue 18). Per dataset (see [`dataset`]) and tool, `reps` times
//! on a new repository each: init, first backup, unchanged backup, backup after the
//! scripted modification (see [`tree::modify`]), full restore into an empty directory
//! (verified against the tree), restore of one file (verified), repository size. Tools run
//! interleaved (rep 1 of every tool, then rep 2, …) so a change of the machine's load hits
//! all of them. Figures: median and range of the wall time, MB/s, CPU seconds of every
//! process, peak RSS of the tool's process (and our server's), bytes over the socket (ours,
//! counted by [`proxy`]), repository size; verdicts against the targets of issue 14; a
//! chart per dataset. Then our client alone: pinned to 1 and 2 cores, and its memory when
//! the repository already holds 1 × and 10 × the tree.

pub(crate) mod dataset;
mod proxy;
pub(crate) mod tool;
mod tree;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use self::dataset::{Dataset, Kind, Sizes};
use self::tool::{Session, Step, StepRun, Tool};
use crate::data::{self, Noise};
use crate::report::{Section, Target, Verdict, median, mib_from_kib};
use crate::server::Binaries;

/// How long the runs wait after deleting a tree's directories before the next tree. ext4
/// without a journal (this project's benchmark machine) skips inodes freed in the last 30 s
/// when it allocates one, scanning the inode table for them: a restore right after a
/// deletion of thousands of files creates each file several times slower (`perf`: most of
/// the time in `ext4_create` → `recently_deleted`). So nothing is deleted while a tree's
/// runs last (each run keeps its repository and restored files until the end of the tree)
/// and the next tree waits this long.
const FREED_INODE_WAIT: std::time::Duration = std::time::Duration::from_secs(35);

/// What to run.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// The trees, in order.
    pub(crate) datasets: Vec<Kind>,
    /// Their sizes.
    pub(crate) sizes: Sizes,
    /// Runs per tool and tree (the median and range are reported).
    pub(crate) reps: usize,
    /// Where the charts go (`compare-<dataset>.png`); none if `None`.
    pub(crate) chart_dir: Option<PathBuf>,
    /// Whether to run the scaling and repository-size runs of our client.
    pub(crate) extras: bool,
}

/// Median and range.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub(crate) struct Stat {
    /// Median.
    pub(crate) median: f64,
    /// Smallest.
    pub(crate) min: f64,
    /// Largest.
    pub(crate) max: f64,
}

impl Stat {
    fn of(values: &[f64]) -> Self {
        Self {
            median: median(values),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// One run of one tool on one tree.
#[derive(Clone, Debug, Default, serde::Serialize)]
struct Run {
    steps: BTreeMap<Step, StepRun>,
    repo_bytes: u64,
    /// Files the full restore's tree comparison checked.
    restored_files: usize,
    /// Whether the full restore and the one-file restore matched the tree.
    verified: bool,
}

/// One step over the runs.
#[derive(Clone, Debug, serde::Serialize)]
struct StepSummary {
    wall_secs: Stat,
    /// Tree bytes / median wall time (backups and full restore).
    mb_per_s: Option<f64>,
    cpu_secs: f64,
    client_hwm_kib: u64,
    server_rss_kib: Option<u64>,
    socket_bytes: Option<u64>,
}

/// One tool on one tree.
#[derive(Clone, Debug, serde::Serialize)]
struct ToolResult {
    tool: Tool,
    version: String,
    runs: Vec<Run>,
    steps: BTreeMap<Step, StepSummary>,
    repo_bytes: u64,
    /// Every run verified.
    verified: bool,
}

impl ToolResult {
    fn summarise(tool: Tool, version: String, runs: Vec<Run>, tree_bytes: u64) -> Self {
        let mut steps = BTreeMap::new();
        for step in Step::ALL {
            let of: Vec<&StepRun> = runs.iter().filter_map(|r| r.steps.get(&step)).collect();
            if of.is_empty() {
                continue;
            }
            let med =
                |f: &dyn Fn(&StepRun) -> f64| median(&of.iter().map(|s| f(s)).collect::<Vec<_>>());
            let med_u64 =
                |f: &dyn Fn(&StepRun) -> u64| median_u64(of.iter().map(|s| f(s)).collect());
            let wall = Stat::of(&of.iter().map(|s| s.wall_secs).collect::<Vec<_>>());
            let moves_tree = matches!(
                step,
                Step::First | Step::Unchanged | Step::Modified | Step::Restore
            );
            steps.insert(
                step,
                StepSummary {
                    wall_secs: wall,
                    mb_per_s: moves_tree.then(|| tree_bytes as f64 / wall.median / 1e6),
                    cpu_secs: med(&|s| s.cpu_secs),
                    client_hwm_kib: med_u64(&|s| s.client_hwm_kib),
                    server_rss_kib: of[0]
                        .server_rss_kib
                        .map(|_| med_u64(&|s| s.server_rss_kib.unwrap_or(0))),
                    socket_bytes: of[0]
                        .socket
                        .map(|_| med_u64(&|s| s.socket.map_or(0, |t| t.total()))),
                },
            );
        }
        let repo_bytes = median_u64(runs.iter().map(|r| r.repo_bytes).collect());
        let verified = !runs.is_empty() && runs.iter().all(|r| r.verified);
        Self {
            tool,
            version,
            runs,
            steps,
            repo_bytes,
            verified,
        }
    }

    fn wall(&self, step: Step) -> Option<f64> {
        self.steps.get(&step).map(|s| s.wall_secs.median)
    }

    /// The largest peak RSS of the tool's process over all steps.
    fn client_hwm_kib(&self) -> u64 {
        self.steps
            .values()
            .map(|s| s.client_hwm_kib)
            .max()
            .unwrap_or(0)
    }
}

/// Runs the scenario; the second value holds the notes of skipped tools.
pub(crate) fn run(bins: &Binaries, work: &Path, options: &Options) -> (Section, Vec<String>) {
    let mut section = Section::new("compare");
    let mut notes = Vec::new();
    if let Err(error) = run_inner(bins, work, options, &mut section, &mut notes) {
        section.failures.push(format!("{error:#}"));
    }
    (section, notes)
}

fn run_inner(
    bins: &Binaries,
    work: &Path,
    options: &Options,
    section: &mut Section,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("compare-")
        .tempdir_in(work)
        .context("cannot create a temporary directory")?;
    let mut tools = Vec::new();
    for tool in Tool::ALL {
        match tool.version(bins) {
            Some(version) => {
                section.row(format!("{}: version", tool.name()), version.clone());
                tools.push((tool, version));
            }
            None => notes.push(tool.skipped_note().to_owned()),
        }
    }
    if !tools.iter().any(|(t, _)| *t == Tool::Cyberbackup) {
        bail!("{} does not run", bins.client.display());
    }
    section.row(
        "method",
        format!(
            "median of {} run(s) [range], new repository per run, tools interleaved; ours over 127.0.0.1 through a byte-counting relay",
            options.reps
        ),
    );
    let mut datasets_json = Vec::new();
    let mut extras = serde_json::Map::new();
    for &kind in &options.datasets {
        eprintln!("  compare: building the {} tree ...", kind.name());
        let ds_dir = dir.path().join(kind.name());
        let ds = dataset::build(kind, &ds_dir.join("tree"), &options.sizes)?;
        // Written back before the first tool reads it, so no tool pays for the write-back.
        sync()?;
        section.row(format!("{}: tree", kind.name()), ds.describe());
        let mut per_tool: Vec<(Tool, String, Vec<Run>)> = tools
            .iter()
            .map(|(t, v)| (*t, v.clone(), Vec::new()))
            .collect();
        for rep in 0..options.reps {
            for (tool, _, runs) in &mut per_tool {
                eprint!(
                    "  compare: {} {} run {} ...",
                    kind.name(),
                    tool.name(),
                    rep + 1
                );
                let started = std::time::Instant::now();
                let rep_dir = ds_dir.join(format!("{}-{rep}", tool.name()));
                match run_one(*tool, bins, &ds, &rep_dir) {
                    Ok(run) => {
                        eprintln!(" {:.1} s", started.elapsed().as_secs_f64());
                        runs.push(run);
                    }
                    Err(error) => {
                        eprintln!(" failed");
                        section.failures.push(format!(
                            "{} {} run {}: {error:#}",
                            kind.name(),
                            tool.name(),
                            rep + 1
                        ));
                    }
                }
            }
        }
        let results: Vec<ToolResult> = per_tool
            .into_iter()
            .map(|(tool, version, runs)| ToolResult::summarise(tool, version, runs, ds.bytes()))
            .collect();
        for result in &results {
            report_tool(section, kind, result);
            if !result.verified {
                section.failures.push(format!(
                    "{} {}: not every run ran and verified",
                    kind.name(),
                    result.tool.name()
                ));
            }
        }
        judge(section, kind, &results);
        if let Some(chart_dir) = &options.chart_dir {
            let path = chart_dir.join(format!("bench-compare-{}.png", kind.name()));
            let series: Vec<(&str, Vec<Option<Stat>>)> = results
                .iter()
                .map(|r| {
                    (
                        r.tool.name(),
                        Step::ALL
                            .iter()
                            .map(|s| r.steps.get(s).map(|x| x.wall_secs))
                            .collect(),
                    )
                })
                .collect();
            let labels: Vec<&str> = Step::ALL.iter().map(|s| s.label()).collect();
            let title = format!("compare: {} tree, {}", kind.name(), ds.describe());
            crate::chart::compare(&path, &title, &labels, &series)?;
            section.row(
                format!("{}: chart", kind.name()),
                path.display().to_string(),
            );
        }
        if options.extras && kind == scaling_kind(&options.datasets) {
            extras.insert("scaling".into(), scaling(bins, &ds, &ds_dir, section)?);
        }
        if options.extras && kind == memory_kind(&options.datasets) {
            extras.insert("memory".into(), memory(bins, &ds, &ds_dir, section)?);
        }
        datasets_json.push(serde_json::json!({
            "dataset": kind,
            "files": ds.files.len(),
            "bytes": ds.bytes(),
            "tools": results,
        }));
        std::fs::remove_dir_all(&ds_dir)
            .with_context(|| format!("cannot remove {}", ds_dir.display()))?;
        if Some(&kind) != options.datasets.last() {
            std::thread::sleep(FREED_INODE_WAIT);
        }
    }
    section.data = serde_json::json!({
        "reps": options.reps,
        "sizes": options.sizes,
        "datasets": datasets_json,
        "skipped": notes,
        "extras": extras,
    });
    Ok(())
}

/// One run of `tool` on `ds` in the new directory `dir`, which stays until every tool ran on
/// the tree (see [`FREED_INODE_WAIT`]).
fn run_one(tool: Tool, bins: &Binaries, ds: &Dataset, dir: &Path) -> anyhow::Result<Run> {
    std::fs::create_dir_all(dir)?;
    let mut session = Session::new(tool, bins, dir);
    let mut run = Run::default();
    run.steps.insert(Step::Init, session.init(bins)?);
    run.steps
        .insert(Step::First, session.backup(Step::First, &ds.root)?);
    run.steps
        .insert(Step::Unchanged, session.backup(Step::Unchanged, &ds.root)?);
    let change = tree::modify(ds)?;
    let result = modified_steps(&mut session, ds, dir, &change.deleted_rel, &mut run);
    change.undo()?;
    result?;
    run.repo_bytes = session.repo_bytes();
    session.finish()?;
    run.verified = true;
    Ok(run)
}

/// The steps on the modified tree: backup, full restore (verified), one file (verified).
fn modified_steps(
    session: &mut Session,
    ds: &Dataset,
    dir: &Path,
    deleted: &[PathBuf],
    run: &mut Run,
) -> anyhow::Result<()> {
    run.steps
        .insert(Step::Modified, session.backup(Step::Modified, &ds.root)?);
    let target = dir.join("restored");
    run.steps
        .insert(Step::Restore, session.restore(&target, None)?);
    run.restored_files = tree::compare(&ds.root, &tree::restored_root(&target, &ds.root))?;
    // The file in the middle of the sorted list that the modification did not delete.
    let middle = ds.files.len() / 2;
    let one = ds
        .files
        .iter()
        .skip(middle)
        .chain(ds.files.iter().take(middle))
        .find(|f| !deleted.contains(&f.rel))
        .context("the tree has no file left")?;
    let original = ds.root.join(&one.rel);
    let target = dir.join("restored-one");
    run.steps
        .insert(Step::RestoreOne, session.restore(&target, Some(&original))?);
    let candidates = [
        target.join(original.strip_prefix("/").unwrap_or(&original)),
        target.join(one.rel.file_name().unwrap_or_default()),
        target.clone(),
    ];
    let restored = candidates.iter().find(|p| p.is_file()).with_context(|| {
        format!(
            "the one-file restore wrote no file {} below {}",
            one.rel.display(),
            target.display()
        )
    })?;
    tree::compare_file(&original, restored)?;
    Ok(())
}

/// Table rows of one tool on one tree.
fn report_tool(section: &mut Section, kind: Kind, result: &ToolResult) {
    let prefix = format!("{} / {}", kind.name(), result.tool.name());
    for (step, s) in &result.steps {
        let mut value = format!(
            "{:.2} s [{:.2}–{:.2}]",
            s.wall_secs.median, s.wall_secs.min, s.wall_secs.max
        );
        if let Some(mb) = s
            .mb_per_s
            .filter(|_| matches!(step, Step::First | Step::Restore))
        {
            value.push_str(&format!(", {mb:.0} MB/s"));
        }
        value.push_str(&format!(", CPU {:.2} s", s.cpu_secs));
        if s.client_hwm_kib > 0 {
            value.push_str(&format!(", RSS {}", mib_from_kib(s.client_hwm_kib)));
        }
        if let Some(kib) = s.server_rss_kib {
            value.push_str(&format!(", server RSS {}", mib_from_kib(kib)));
        }
        if let Some(bytes) = s.socket_bytes {
            value.push_str(&format!(", socket {}", data::human(bytes)));
        }
        section.row(format!("{prefix} / {}", step.label()), value);
    }
    section.row(
        format!("{prefix} / repository"),
        data::human(result.repo_bytes),
    );
}

/// The targets of issue 14 against restic on this tree.
fn judge(section: &mut Section, kind: Kind, results: &[ToolResult]) {
    let ours = results.iter().find(|r| r.tool == Tool::Cyberbackup);
    let restic = results.iter().find(|r| r.tool == Tool::Restic);
    let name = |what: &str| format!("compare {}: {what}", kind.name());
    let (Some(ours), Some(restic)) = (ours, restic) else {
        for (what, goal) in GOALS {
            section.targets.push(Target::new(
                name(what),
                goal,
                "restic or our run missing",
                Verdict::NotRun,
            ));
        }
        return;
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let measured = [
        // Throughput ratio = time of restic / time of ours.
        ratio(restic.wall(Step::First), ours.wall(Step::First)).map(|r| (r, r >= 2.0)),
        ratio(ours.wall(Step::Unchanged), restic.wall(Step::Unchanged)).map(|r| (r, r <= 0.5)),
        ratio(restic.wall(Step::Restore), ours.wall(Step::Restore)).map(|r| (r, r >= 2.0)),
        ratio(
            Some(ours.client_hwm_kib() as f64),
            Some(restic.client_hwm_kib() as f64),
        )
        .map(|r| (r, r <= 0.5)),
        ratio(Some(ours.repo_bytes as f64), Some(restic.repo_bytes as f64)).map(|r| (r, r <= 1.0)),
    ];
    for ((what, goal), m) in GOALS.iter().zip(measured) {
        let target = match m {
            Some((r, ok)) => Target::new(name(what), *goal, format!("{r:.2} ×"), Verdict::of(ok)),
            None => Target::new(name(what), *goal, "not measured", Verdict::NotRun),
        };
        section.targets.push(target);
    }
}

/// The targets of issue 14, as ratios to restic.
const GOALS: [(&str, &str); 5] = [
    ("first backup throughput / restic", "≥ 2 ×"),
    ("unchanged backup time / restic", "≤ 0.5 ×"),
    ("full restore throughput / restic", "≥ 2 ×"),
    ("client peak RSS / restic", "≤ 0.5 ×"),
    ("repository size / restic", "≤ 1 ×"),
];

/// The tree of the scaling runs: the mixed home if chosen, else the first.
fn scaling_kind(kinds: &[Kind]) -> Kind {
    if kinds.contains(&Kind::Mixed) {
        Kind::Mixed
    } else {
        kinds.first().copied().unwrap_or(Kind::Mixed)
    }
}

/// The tree of the repository-size runs: the source tree if chosen, else the first.
fn memory_kind(kinds: &[Kind]) -> Kind {
    if kinds.contains(&Kind::Source) {
        Kind::Source
    } else {
        kinds.first().copied().unwrap_or(Kind::Source)
    }
}

/// Our first backup of `ds` with the client pinned to 1 core and to 2 cores (the server
/// unpinned), one run each.
fn scaling(
    bins: &Binaries,
    ds: &Dataset,
    ds_dir: &Path,
    section: &mut Section,
) -> anyhow::Result<serde_json::Value> {
    let mut out = Vec::new();
    for (cores, cpus) in [(1, "0"), (2, "0,1")] {
        eprintln!("  compare: scaling, client on {cores} core(s) ...");
        let dir = ds_dir.join(format!("scaling-{cores}"));
        std::fs::create_dir_all(&dir)?;
        let mut session = Session::new(Tool::Cyberbackup, bins, &dir);
        session.init(bins)?;
        session.pin(cpus);
        let first = session.backup(Step::First, &ds.root)?;
        session.finish()?;
        std::fs::remove_dir_all(&dir)?;
        let mb_per_s = ds.bytes() as f64 / first.wall_secs / 1e6;
        section.row(
            format!(
                "scaling ({}) / client on {cores} core(s) / first backup",
                ds.kind.name()
            ),
            format!(
                "{:.2} s, {mb_per_s:.0} MB/s, CPU {:.2} s (client + server), RSS {}",
                first.wall_secs,
                first.cpu_secs,
                mib_from_kib(first.client_hwm_kib)
            ),
        );
        out.push(serde_json::json!({"cores": cores, "mb_per_s": mb_per_s, "first": first}));
    }
    if let [one, two] = out.as_slice() {
        let speedup =
            two["mb_per_s"].as_f64().unwrap_or(0.0) / one["mb_per_s"].as_f64().unwrap_or(1.0);
        section.row(
            format!("scaling ({}) / 2 cores ÷ 1 core", ds.kind.name()),
            format!("{speedup:.2} ×"),
        );
    }
    Ok(serde_json::Value::Array(out))
}

/// Our client's memory when backing `ds` up into a repository that already holds 1 × and
/// 10 × its size: files of the same sizes as the tree's, generated text (no deduplication
/// with the tree or each other), backed up first from another folder.
fn memory(
    bins: &Binaries,
    ds: &Dataset,
    ds_dir: &Path,
    section: &mut Section,
) -> anyhow::Result<serde_json::Value> {
    let prefill = ds_dir.join("prefill");
    let mut out = Vec::new();
    let mut written = 0;
    for factor in [1usize, 10] {
        eprintln!("  compare: repository holding {factor} × the tree ...");
        let this = prefill.join(format!("x{factor}"));
        while written < factor {
            let mut noise = Noise::new(5000 + written as u64);
            let copy = this.join(format!("copy{written}"));
            for entry in &ds.files {
                let path = copy.join(&entry.rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                dataset::write_text(&path, entry.len, &mut noise)?;
            }
            written += 1;
        }
        // 10 × reuses the copies of 1 ×: move them into its folder.
        if factor == 10 {
            std::fs::rename(prefill.join("x1").join("copy0"), this.join("copy0"))?;
        }
        sync()?;
        let dir = ds_dir.join(format!("memory-{factor}"));
        std::fs::create_dir_all(&dir)?;
        let mut session = Session::new(Tool::Cyberbackup, bins, &dir);
        session.init(bins)?;
        let fill = session.backup(Step::First, &this)?;
        let held = session.repo_bytes();
        let backup = session.backup(Step::First, &ds.root)?;
        session.finish()?;
        std::fs::remove_dir_all(&dir)?;
        section.row(
            format!(
                "memory ({}) / repository prefilled with {factor} × the tree's bytes ({} stored)",
                ds.kind.name(),
                data::human(held)
            ),
            format!(
                "first backup of the tree: {:.2} s, client RSS {} (filling it: {})",
                backup.wall_secs,
                mib_from_kib(backup.client_hwm_kib),
                mib_from_kib(fill.client_hwm_kib)
            ),
        );
        out.push(serde_json::json!({
            "factor": factor,
            "repo_bytes_before": held,
            "fill": fill,
            "backup": backup,
        }));
    }
    std::fs::remove_dir_all(&prefill)?;
    Ok(serde_json::Value::Array(out))
}

/// The median (nearest rank, as [`median`]) of whole numbers; 0 for none.
fn median_u64(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0)
}

/// `sync`: dirty pages written back.
fn sync() -> anyhow::Result<()> {
    let synced = Command::new("sync").status().context("cannot run sync")?;
    if !synced.success() {
        bail!("sync failed ({synced})");
    }
    Ok(())
}
