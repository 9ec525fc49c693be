//! `snapshots`: a mixed tree (thousands of small source-like files in nested folders, plus
//! large incompressible binaries) backed up as a snapshot, backed up again unchanged, and
//! restored, by CyberBackup (real server and client binaries, the client's repository on the
//! server) and, in the same run on the same disk, by restic and borg when installed. Each
//! tool's wall time, throughput, client peak RSS (`VmHWM`) and repository size, and the
//! ratios CyberBackup / restic.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::data::{self, Noise};
use crate::procfs;
use crate::report::{Section, mib_from_kib};
use crate::server::{Binaries, ServerProcess, ServerSettings};

/// Passphrase of every throw-away repository.
const PASSWORD: &str = "cyberbackup-bench";
/// Words of the generated source files (compressible, like code).
const WORDS: &[&str] = &[
    "fn", "let", "mut", "impl", "struct", "pub", "return", "match", "Some", "None", "Ok", "Err",
    "self", "async", "await", "use", "crate", "where", "for", "in", "if", "else", "loop", "buffer",
    "length", "offset", "stream", "packet", "client", "server", "catalog", "snapshot",
];

/// The tree's shape.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// Small files (0.2 – 24 KiB of source-like text).
    pub(crate) small_files: usize,
    /// Total bytes of the large binaries (four files).
    pub(crate) large_bytes: u64,
}

/// One tool's figures.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Figures {
    first_secs: f64,
    first_hwm_kib: u64,
    second_secs: f64,
    second_hwm_kib: u64,
    restore_secs: f64,
    restore_hwm_kib: u64,
    repo_bytes: u64,
}

/// Runs the scenario.
pub(crate) fn run(bins: &Binaries, work: &Path, options: &Options) -> Section {
    let mut section = Section::new("snapshots");
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
    let dir = tempfile::Builder::new()
        .prefix("snapshots-")
        .tempdir_in(work)
        .context("cannot create a temporary directory")?;
    let tree = dir.path().join("tree");
    let tree_bytes = make_tree(&tree, options)?;
    // The tree's pages are written back before the first tool reads it: otherwise the
    // first one measured (ours) pays for the write-back of 300 MB the others do not see.
    let synced = Command::new("sync").status().context("cannot run sync")?;
    if !synced.success() {
        bail!("sync failed ({synced})");
    }
    section.row(
        "tree",
        format!(
            "{} small files + 4 binaries, {}",
            options.small_files,
            data::human(tree_bytes)
        ),
    );
    let mut all = serde_json::Map::new();
    let ours = cyberbackup(bins, dir.path(), &tree)?;
    report(section, "cyberbackup", &ours, tree_bytes);
    all.insert("cyberbackup".into(), serde_json::to_value(&ours)?);
    let mut peers: Vec<(&str, Figures)> = Vec::new();
    if crate::peer::restic_version().is_some() {
        let figures = restic(dir.path(), &tree)?;
        report(section, "restic", &figures, tree_bytes);
        all.insert("restic".into(), serde_json::to_value(&figures)?);
        peers.push(("restic", figures));
    } else {
        section.row("restic", "not installed (apt-get install restic)");
    }
    if installed("borg") {
        let figures = borg(dir.path(), &tree)?;
        report(section, "borg", &figures, tree_bytes);
        all.insert("borg".into(), serde_json::to_value(&figures)?);
        peers.push(("borg", figures));
    } else {
        section.row("borg", "not installed (apt-get install borgbackup)");
    }
    for (name, peer) in &peers {
        section.row(
            format!("ratios cyberbackup / {name}"),
            format!(
                "first backup throughput {:.2}x, unchanged backup time {:.2}x, restore throughput {:.2}x, peak RSS {:.2}x, repository size {:.2}x",
                peer.first_secs / ours.first_secs,
                ours.second_secs / peer.second_secs,
                peer.restore_secs / ours.restore_secs,
                ours.first_hwm_kib as f64 / peer.first_hwm_kib.max(1) as f64,
                ours.repo_bytes as f64 / peer.repo_bytes.max(1) as f64,
            ),
        );
    }
    section.data = serde_json::Value::Object(all);
    Ok(())
}

fn report(section: &mut Section, tool: &str, figures: &Figures, tree_bytes: u64) {
    let mb_s = |secs: f64| tree_bytes as f64 / secs / 1e6;
    section.row(
        format!("{tool}: first backup"),
        format!(
            "{:.2} s ({:.0} MB/s), peak RSS {}",
            figures.first_secs,
            mb_s(figures.first_secs),
            mib_from_kib(figures.first_hwm_kib)
        ),
    );
    section.row(
        format!("{tool}: unchanged second backup"),
        format!(
            "{:.2} s, peak RSS {}",
            figures.second_secs,
            mib_from_kib(figures.second_hwm_kib)
        ),
    );
    section.row(
        format!("{tool}: full restore"),
        format!(
            "{:.2} s ({:.0} MB/s), peak RSS {}",
            figures.restore_secs,
            mb_s(figures.restore_secs),
            mib_from_kib(figures.restore_hwm_kib)
        ),
    );
    section.row(
        format!("{tool}: repository size"),
        data::human(figures.repo_bytes),
    );
}

/// Writes the tree; returns its total size.
fn make_tree(root: &Path, options: &Options) -> anyhow::Result<u64> {
    let mut noise = Noise::new(42);
    let mut total = 0u64;
    let mut byte = [0u8; 8];
    for i in 0..options.small_files {
        let dir = root.join(format!("src{}/module{}", i % 17, i % 101));
        std::fs::create_dir_all(&dir)?;
        noise.fill(&mut byte);
        let target = 200 + (u64::from_le_bytes(byte) % (24 * 1024)) as usize;
        let mut text = String::with_capacity(target + 16);
        while text.len() < target {
            noise.fill(&mut byte);
            let word = WORDS[byte[0] as usize % WORDS.len()];
            text.push_str(word);
            text.push(if byte[1] % 9 == 0 { '\n' } else { ' ' });
        }
        std::fs::write(dir.join(format!("file{i}.rs")), &text)?;
        total += text.len() as u64;
    }
    let bins = root.join("assets");
    std::fs::create_dir_all(&bins)?;
    for i in 0..4u64 {
        let len = options.large_bytes / 4;
        data::write_file(&bins.join(format!("blob{i}.bin")), len, 1000 + i)?;
        total += len;
    }
    Ok(total)
}

/// Whether `tool --version` runs (borg; restic has `restic version` instead).
fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `command` to completion (its stderr in a temp file); its wall time and peak
/// `VmHWM`.
fn measured(command: Command, what: &str) -> anyhow::Result<(f64, u64)> {
    let log = std::env::temp_dir().join(format!(
        "cyberbackup-bench-{}-{}.err",
        std::process::id(),
        what.replace(' ', "-").replace(['(', ')'], "")
    ));
    let (secs, peaks) = procfs::run_sampled(command, what, &log)?;
    let _ = std::fs::remove_file(&log);
    Ok((secs, peaks.hwm_kib))
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn cyberbackup(bins: &Binaries, dir: &Path, tree: &Path) -> anyhow::Result<Figures> {
    let server_dir = dir.join("cb-server");
    std::fs::create_dir_all(&server_dir)?;
    let settings = ServerSettings {
        max_file_size: 4 << 30,
        ..ServerSettings::default()
    };
    let server = ServerProcess::start(&bins.server, &server_dir, &settings)?;
    let client_dir = dir.join("cb-client");
    std::fs::create_dir_all(&client_dir)?;
    let client = |args: &[&str]| {
        let mut command = Command::new(&bins.client);
        command
            .current_dir(&client_dir)
            .args(args)
            .args(["--server", &server.addr().to_string()])
            .args(["--v4-identity", "bench-v4.json", "--quiet"])
            .env("CYBERBACKUP_PASSWORD", PASSWORD)
            .env("HOME", &client_dir);
        command
    };
    let tree_arg = tree.to_str().context("the work directory is not UTF-8")?;
    let (first_secs, first_hwm_kib) = measured(
        client(&["backup", tree_arg, "--name", "bench"]),
        "cyberbackup-client backup",
    )?;
    let (second_secs, second_hwm_kib) = measured(
        client(&["backup", tree_arg, "--name", "bench"]),
        "cyberbackup-client backup (unchanged)",
    )?;
    let target = dir.join("cb-restored");
    let target_arg = target.to_str().context("the work directory is not UTF-8")?;
    let (restore_secs, restore_hwm_kib) = measured(
        client(&["restore", "latest", "--target", target_arg]),
        "cyberbackup-client restore",
    )?;
    let repo_bytes = du(&server_dir.join("data").join("repository"));
    server.stop()?;
    Ok(Figures {
        first_secs,
        first_hwm_kib,
        second_secs,
        second_hwm_kib,
        restore_secs,
        restore_hwm_kib,
        repo_bytes,
    })
}

fn restic(dir: &Path, tree: &Path) -> anyhow::Result<Figures> {
    let repo = dir.join("restic-repo");
    let restic = |args: &[&str]| {
        let mut command = Command::new("restic");
        command
            .arg("--repo")
            .arg(&repo)
            .args(["--no-cache", "--quiet"])
            .args(args)
            .env("RESTIC_PASSWORD", PASSWORD)
            .env_remove("RESTIC_REPOSITORY")
            .env_remove("RESTIC_PASSWORD_FILE");
        command
    };
    measured(restic(&["init"]), "restic init")?;
    let tree_arg = tree.to_str().context("the work directory is not UTF-8")?;
    let (first_secs, first_hwm_kib) = measured(restic(&["backup", tree_arg]), "restic backup")?;
    let (second_secs, second_hwm_kib) =
        measured(restic(&["backup", tree_arg]), "restic backup (unchanged)")?;
    let target = dir.join("restic-restored");
    let target_arg = target.to_str().context("the work directory is not UTF-8")?;
    let (restore_secs, restore_hwm_kib) = measured(
        restic(&["restore", "latest", "--target", target_arg]),
        "restic restore",
    )?;
    Ok(Figures {
        first_secs,
        first_hwm_kib,
        second_secs,
        second_hwm_kib,
        restore_secs,
        restore_hwm_kib,
        repo_bytes: du(&repo),
    })
}

fn borg(dir: &Path, tree: &Path) -> anyhow::Result<Figures> {
    let repo = dir.join("borg-repo");
    let target = dir.join("borg-restored");
    std::fs::create_dir_all(&target)?;
    let borg = |args: &[&str], cwd: &PathBuf| {
        let mut command = Command::new("borg");
        command
            .args(args)
            .current_dir(cwd)
            .env("BORG_PASSPHRASE", PASSWORD)
            .env("BORG_BASE_DIR", dir.join("borg-home"))
            .env_remove("BORG_REPO");
        command
    };
    let here = dir.to_path_buf();
    let repo_arg = repo.to_str().context("the work directory is not UTF-8")?;
    let tree_arg = tree.to_str().context("the work directory is not UTF-8")?;
    measured(
        borg(&["init", "--encryption=repokey-blake2", repo_arg], &here),
        "borg init",
    )?;
    let first = format!("{repo_arg}::first");
    let second = format!("{repo_arg}::second");
    let (first_secs, first_hwm_kib) =
        measured(borg(&["create", &first, tree_arg], &here), "borg create")?;
    let (second_secs, second_hwm_kib) = measured(
        borg(&["create", &second, tree_arg], &here),
        "borg create (unchanged)",
    )?;
    let (restore_secs, restore_hwm_kib) =
        measured(borg(&["extract", &second], &target), "borg extract")?;
    Ok(Figures {
        first_secs,
        first_hwm_kib,
        second_secs,
        second_hwm_kib,
        restore_secs,
        restore_hwm_kib,
        repo_bytes: du(&repo),
    })
}
