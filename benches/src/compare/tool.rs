//! The tools compared and how each runs a step: CyberBackup (the real server and client
//! binaries, the client talking to the server through the byte-counting relay), restic,
//! borg and rustic, each on its own new repository with its documented defaults, encryption
//! on and zstd level 3 where the tool lets one choose (ours, restic's `auto` and rustic's
//! default are zstd 3; borg's default is lz4, so it gets `--compression zstd,3`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;

use super::proxy::{CountingProxy, Traffic};
use crate::procfs::{self, Peaks};
use crate::server::{Binaries, ServerProcess, ServerSettings};

/// Passphrase of every throw-away repository.
pub(crate) const PASSWORD: &str = "cyberbackup-bench";

/// A tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Tool {
    /// Our client and server.
    Cyberbackup,
    /// restic (local repository).
    Restic,
    /// borg (local repository).
    Borg,
    /// rustic (local repository).
    Rustic,
}

impl Tool {
    /// Every tool, in report order.
    pub(crate) const ALL: [Self; 4] = [Self::Cyberbackup, Self::Restic, Self::Borg, Self::Rustic];

    /// Its name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Cyberbackup => "cyberbackup",
            Self::Restic => "restic",
            Self::Borg => "borg",
            Self::Rustic => "rustic",
        }
    }

    /// Its version line, or `None` when it is not on PATH (ours: the binary's `--version`).
    pub(crate) fn version(self, bins: &Binaries) -> Option<String> {
        let (program, arg): (&Path, &str) = match self {
            Self::Cyberbackup => (&bins.client, "--version"),
            Self::Restic => (Path::new("restic"), "version"),
            Self::Borg => (Path::new("borg"), "--version"),
            Self::Rustic => (Path::new("rustic"), "--version"),
        };
        let out = Command::new(program)
            .arg(arg)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The line printed when it is not installed.
    pub(crate) fn skipped_note(self) -> &'static str {
        match self {
            Self::Cyberbackup => "cyberbackup: skipped (the client binary does not run)",
            Self::Restic => "restic: skipped (not installed; apt-get install restic)",
            Self::Borg => "borg: skipped (not installed; apt-get install borgbackup)",
            Self::Rustic => "rustic: skipped (not installed; cargo install rustic-rs --locked)",
        }
    }
}

/// A step of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Step {
    /// A new repository (ours: the server started on an empty data directory until it
    /// accepts; the repository itself is created by the first backup).
    Init,
    /// The first backup.
    First,
    /// The same tree again, unchanged.
    Unchanged,
    /// After the scripted small modification.
    Modified,
    /// The latest snapshot into an empty directory.
    Restore,
    /// One file of the latest snapshot.
    RestoreOne,
}

impl Step {
    /// Every step, in run order.
    pub(crate) const ALL: [Self; 6] = [
        Self::Init,
        Self::First,
        Self::Unchanged,
        Self::Modified,
        Self::Restore,
        Self::RestoreOne,
    ];

    /// Its label in tables and charts.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Init => "init",
            Self::First => "first backup",
            Self::Unchanged => "unchanged backup",
            Self::Modified => "modified backup",
            Self::Restore => "full restore",
            Self::RestoreOne => "restore one file",
        }
    }
}

/// What one step measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct StepRun {
    /// Wall time of the step.
    pub(crate) wall_secs: f64,
    /// CPU seconds of every process involved (ours: client and server).
    pub(crate) cpu_secs: f64,
    /// Peak RSS of the tool's command (`VmHWM`), KiB.
    pub(crate) client_hwm_kib: u64,
    /// Ours: the server's highest sampled `VmRSS` during the step, KiB.
    pub(crate) server_rss_kib: Option<u64>,
    /// Ours: bytes over the socket (both directions).
    pub(crate) socket: Option<Traffic>,
}

/// One tool on one new repository in `dir`.
#[derive(Debug)]
pub(crate) struct Session {
    tool: Tool,
    dir: PathBuf,
    repo: PathBuf,
    client_bin: PathBuf,
    server: Option<(ServerProcess, CountingProxy)>,
    backups: usize,
    /// Prefix of the command (`taskset -c 0`), for the scaling runs.
    pin: Option<String>,
}

impl Session {
    /// A session of `tool` in the empty directory `dir`.
    pub(crate) fn new(tool: Tool, bins: &Binaries, dir: &Path) -> Self {
        let repo = match tool {
            Tool::Cyberbackup => dir.join("cb-server").join("data"),
            _ => dir.join("repo"),
        };
        Self {
            tool,
            dir: dir.to_path_buf(),
            repo,
            client_bin: bins.client.clone(),
            server: None,
            backups: 0,
            pin: None,
        }
    }

    /// Runs the tool's command under `taskset -c CPUS` from now on.
    pub(crate) fn pin(&mut self, cpus: &str) {
        self.pin = Some(cpus.to_owned());
    }

    /// Creates the repository (ours: starts the server).
    ///
    /// # Errors
    /// The tool fails.
    pub(crate) fn init(&mut self, bins: &Binaries) -> anyhow::Result<StepRun> {
        if self.tool != Tool::Cyberbackup {
            return self.run(Step::Init, &[]);
        }
        let server_dir = self.dir.join("cb-server");
        std::fs::create_dir_all(&server_dir)?;
        let settings = ServerSettings {
            max_file_size: 16 << 30,
            ..ServerSettings::default()
        };
        let started = Instant::now();
        let server = ServerProcess::start(&bins.server, &server_dir, &settings)?;
        let wall_secs = started.elapsed().as_secs_f64();
        let sample = procfs::sample(server.pid(), false);
        let proxy = CountingProxy::start(server.addr())?;
        self.server = Some((server, proxy));
        Ok(StepRun {
            wall_secs,
            cpu_secs: sample.cpu_ticks.unwrap_or(0) as f64 / procfs::ticks_per_second(),
            client_hwm_kib: 0,
            server_rss_kib: sample.rss_kib,
            socket: None,
        })
    }

    /// Backs `tree` up (the step says which backup it is, for the logs).
    ///
    /// # Errors
    /// The tool fails.
    pub(crate) fn backup(&mut self, step: Step, tree: &Path) -> anyhow::Result<StepRun> {
        self.backups += 1;
        self.run(step, &[tree.as_os_str()])
    }

    /// Restores the latest snapshot into `target`, or with `file` only that file (an
    /// absolute path in the backed-up tree).
    ///
    /// # Errors
    /// The tool fails.
    pub(crate) fn restore(
        &mut self,
        target: &Path,
        file: Option<&Path>,
    ) -> anyhow::Result<StepRun> {
        std::fs::create_dir_all(target)?;
        let step = if file.is_some() {
            Step::RestoreOne
        } else {
            Step::Restore
        };
        match file {
            Some(file) => self.run(step, &[target.as_os_str(), file.as_os_str()]),
            None => self.run(step, &[target.as_os_str()]),
        }
    }

    /// Bytes of the repository on disk (ours: the server's repository folder, packs and
    /// index, without the catalog database).
    pub(crate) fn repo_bytes(&self) -> u64 {
        match self.tool {
            Tool::Cyberbackup => du(&self.repo.join("repository")),
            _ => du(&self.repo),
        }
    }

    /// Stops the server, if any.
    ///
    /// # Errors
    /// The server does not stop.
    pub(crate) fn finish(self) -> anyhow::Result<()> {
        if let Some((server, proxy)) = self.server {
            drop(proxy);
            server.stop()?;
        }
        Ok(())
    }

    /// Builds and measures the command of `step`; `args` are the tree (backups) or the
    /// target and optional file (restores).
    fn run(&mut self, step: Step, args: &[&std::ffi::OsStr]) -> anyhow::Result<StepRun> {
        let mut command = self.command(step, args)?;
        let what = format!("{} {}", self.tool.name(), step.label());
        let log = self
            .dir
            .join(format!("{}.err", step.label().replace(' ', "-")));
        let server_pid = self.server.as_ref().map(|(server, _)| server.pid());
        let before = self.server.as_ref().map(|(_, proxy)| proxy.traffic());
        if let Some(cpus) = &self.pin {
            let program = command.get_program().to_owned();
            let rest: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
            let mut pinned = Command::new("taskset");
            pinned.args(["-c", cpus]).arg(program).args(rest);
            for (key, value) in command.get_envs() {
                match value {
                    Some(value) => pinned.env(key, value),
                    None => pinned.env_remove(key),
                };
            }
            if let Some(cwd) = command.get_current_dir() {
                pinned.current_dir(cwd);
            }
            command = pinned;
        }
        let others: Vec<u32> = server_pid.into_iter().collect();
        let run = procfs::run_watched(command, &what, &log, &others)?;
        let server: Option<&Peaks> = run.others.first();
        let socket = match (&self.server, before) {
            (Some((_, proxy)), Some(before)) => Some(proxy.traffic().since(before)),
            _ => None,
        };
        Ok(StepRun {
            wall_secs: run.wall_secs,
            cpu_secs: run.child.cpu_secs + server.map_or(0.0, |p| p.cpu_secs),
            client_hwm_kib: run.child.hwm_kib,
            server_rss_kib: server.map(|p| p.rss_kib),
            socket,
        })
    }

    /// The command line of `step`.
    fn command(&self, step: Step, args: &[&std::ffi::OsStr]) -> anyhow::Result<Command> {
        let dir = &self.dir;
        let repo = &self.repo;
        let mut command = match self.tool {
            Tool::Cyberbackup => {
                let (_, proxy) = self
                    .server
                    .as_ref()
                    .context("the server is not running (init first)")?;
                let client_dir = dir.join("cb-client");
                std::fs::create_dir_all(&client_dir)?;
                let mut c = Command::new(&self.client_bin);
                c.current_dir(&client_dir)
                    .env("CYBERBACKUP_PASSWORD", PASSWORD)
                    .env("HOME", &client_dir);
                match step {
                    Step::Init => {}
                    Step::First | Step::Unchanged | Step::Modified => {
                        c.arg("backup").args(args).args(["--name", "bench"]);
                    }
                    Step::Restore => {
                        c.args(["restore", "latest", "--target"]).arg(args[0]);
                    }
                    Step::RestoreOne => {
                        let mut spec = std::ffi::OsString::from("latest:");
                        spec.push(args[1]);
                        c.arg("restore").arg(spec).arg("--target").arg(args[0]);
                    }
                }
                c.args(["--server", &proxy.addr().to_string()]).args([
                    "--v4-identity",
                    "bench-v4.json",
                    "--quiet",
                ]);
                c
            }
            Tool::Restic => {
                let mut c = Command::new("restic");
                c.arg("--repo")
                    .arg(repo)
                    .arg("--quiet")
                    .env("RESTIC_PASSWORD", PASSWORD)
                    .env("XDG_CACHE_HOME", dir.join("cache"))
                    .env_remove("RESTIC_REPOSITORY")
                    .env_remove("RESTIC_PASSWORD_FILE");
                match step {
                    // Format 2: the one with compression (auto: zstd's default level).
                    Step::Init => c.args(["init", "--repository-version", "2"]),
                    Step::First | Step::Unchanged | Step::Modified => c.arg("backup").args(args),
                    Step::Restore => c.args(["restore", "latest", "--target"]).arg(args[0]),
                    Step::RestoreOne => c
                        .args(["restore", "latest", "--target"])
                        .arg(args[0])
                        .arg("--include")
                        .arg(args[1]),
                };
                c
            }
            Tool::Borg => {
                let mut c = Command::new("borg");
                c.env("BORG_PASSPHRASE", PASSWORD)
                    .env("BORG_BASE_DIR", dir.join("borg-home"))
                    .env_remove("BORG_REPO")
                    .current_dir("/");
                let repo = repo.to_str().context("the work directory is not UTF-8")?;
                let archive = |n: usize| format!("{repo}::backup{n}");
                match step {
                    Step::Init => c.args(["init", "--encryption=repokey-blake2", repo]),
                    Step::First | Step::Unchanged | Step::Modified => c
                        .args(["create", "--compression", "zstd,3"])
                        .arg(archive(self.backups))
                        .args(args),
                    Step::Restore => c
                        .current_dir(args[0])
                        .args(["extract"])
                        .arg(archive(self.backups)),
                    Step::RestoreOne => {
                        let file = Path::new(args[1]);
                        c.current_dir(args[0])
                            .args(["extract"])
                            .arg(archive(self.backups))
                            .arg(file.strip_prefix("/").unwrap_or(file))
                    }
                };
                c
            }
            Tool::Rustic => {
                let mut c = Command::new("rustic");
                c.arg("--repository")
                    .arg(repo)
                    .env("RUSTIC_PASSWORD", PASSWORD)
                    .env("XDG_CACHE_HOME", dir.join("cache"))
                    // No profile of the user's (rustic.toml) changes the defaults.
                    .env("XDG_CONFIG_HOME", dir.join("config"))
                    .env_remove("RUSTIC_REPOSITORY");
                match step {
                    Step::Init => c.arg("init"),
                    Step::First | Step::Unchanged | Step::Modified => c.arg("backup").args(args),
                    Step::Restore => c.args(["restore", "latest"]).arg(args[0]),
                    Step::RestoreOne => {
                        let mut spec = std::ffi::OsString::from("latest:");
                        spec.push(args[1]);
                        c.arg("restore").arg(spec).arg(args[0])
                    }
                };
                c
            }
        };
        command.stdin(Stdio::null());
        Ok(command)
    }
}

/// Bytes of the regular files below `path`.
pub(crate) fn du(path: &Path) -> u64 {
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
