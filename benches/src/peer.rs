//! `peer`: the same kind of file backed up by restic to a local repository, when `restic` is
//! on PATH, for a side-by-side figure (MB/s, peak RSS).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::data;
use crate::procfs;
use crate::report::{Section, mib_from_kib};

/// Password of the throw-away repository.
const PASSWORD: &str = "cyberbackup-bench";

/// `restic version`, or `None` when restic is not installed.
pub(crate) fn restic_version() -> Option<String> {
    let out = Command::new("restic").arg("version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The line printed when restic is missing.
pub(crate) const SKIPPED: &str = "peer: skipped (restic not installed; apt-get install restic)";

/// Runs the scenario with a `size`-byte file.
pub(crate) fn run(work: &Path, size: u64, version: &str) -> Section {
    let mut section = Section::new("peer");
    if let Err(error) = run_inner(work, size, version, &mut section) {
        section.failures.push(format!("{error:#}"));
    }
    section
}

fn run_inner(work: &Path, size: u64, version: &str, section: &mut Section) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("peer-")
        .tempdir_in(work)
        .context("cannot create a temporary directory")?;
    let input = dir.path().join(format!("big-{size}.bin"));
    data::write_file(&input, size, size ^ 0x5eed)?;
    let repo = dir.path().join("repo");
    let restic = |args: &[&str]| {
        let mut command = Command::new("restic");
        command
            .arg("--repo")
            .arg(&repo)
            .args(["--no-cache", "--quiet"])
            .args(args)
            .env("RESTIC_PASSWORD", PASSWORD)
            .env_remove("RESTIC_REPOSITORY")
            .env_remove("RESTIC_PASSWORD_FILE")
            .stdin(Stdio::null());
        command
    };
    let init = restic(&["init"])
        .output()
        .context("cannot run restic init")?;
    if !init.status.success() {
        bail!(
            "restic init failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let mut backup = restic(&["backup"]);
    backup.arg(&input);
    let (wall, peaks) =
        procfs::run_sampled(backup, "restic backup", &dir.path().join("restic.err"))?;
    let mb_per_s = size as f64 / wall / 1e6;
    section.row("restic", version.to_owned());
    section.row(
        format!("restic backup {} (new local repository)", data::human(size)),
        format!("{mb_per_s:.0} MB/s ({wall:.2} s)"),
    );
    section.row("restic peak RSS (VmHWM)", mib_from_kib(peaks.hwm_kib));
    section.data = serde_json::json!({
        "tool": version,
        "bytes": size,
        "wall_secs": wall,
        "mb_per_s": mb_per_s,
        "peak": peaks,
    });
    Ok(())
}
