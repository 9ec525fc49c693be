//! The snapshot commands of the command line (restic's names, which users know): `backup`,
//! `snapshots`, `ls`, `find`, `diff`, `restore`, `dump`, `check`, `forget`, `key` and
//! `recover`. Each opens one v4 connection, opens (or on first use creates) the repository
//! and calls [`Repository`]; what to print goes to a [`Printer`] (only `main.rs` prints).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use cyberbackup_core::v4::repository::{RepoPruneReport, RepoUsage, human_bytes};
use zeroize::Zeroizing;

use cyberbackup_core::repo::KdfParams;
use cyberbackup_core::repo::retention::{KeepWithin, RetentionPolicy};

use super::{
    ArchiveFormat, BackupEvent, BackupObserver, BackupOptions, ExcludeOptions, ForgetGroup,
    ForgetPolicy, GroupBy, KeyOptions, ReadData, Repository, RestoreFilter, parse_local_time,
};
use crate::error::{EXIT_OK, EXIT_USAGE};
use crate::v4::cli::{V4Args, options as v4_options, printable, table};
use crate::v4::{V4Client, V4ClientError};

/// Exit code of a fatal failure (restic's 1).
pub const EXIT_FATAL: u8 = 1;

/// Where a line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Results.
    Stdout,
    /// Progress, warnings and errors.
    Stderr,
}

/// Receives the lines a command prints, as they come (`main.rs` writes them and survives a
/// closed pipe).
pub type Printer<'a> = dyn FnMut(Stream, &str) + Send + 'a;

/// Options every snapshot command shares: the server, the identity and the passphrase.
#[derive(Debug, Clone, Args)]
pub struct RepoArgs {
    /// Server address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", env = "CYBERBACKUP_SERVER")]
    pub server: String,
    /// Client name, to register when the identity does not exist yet.
    #[arg(long, env = "CYBERBACKUP_NAME")]
    pub name: Option<String>,
    /// File holding the repository passphrase (its first line) [default:
    /// $CYBERBACKUP_PASSWORD, else a prompt on a terminal, else none].
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// v4 options (`--protocol` must stay v4: snapshots need it).
    #[command(flatten)]
    pub v4: V4Args,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but errors (and the result of `dump`, `ls`, …).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Arguments of `backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Files and directories to back up.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Tag the snapshot (repeatable).
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Host name to record [default: this machine's].
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Exclude paths matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Exclude paths matching this glob, ignoring case (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub iexclude: Vec<String>,
    /// Read exclude globs from FILE, one per line (repeatable).
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Skip directories holding a CACHEDIR.TAG with the standard signature.
    #[arg(long)]
    pub exclude_caches: bool,
    /// Do not cross into other file systems.
    #[arg(long, short = 'x')]
    pub one_file_system: bool,
    /// Read every file, even those the parent snapshot says are unchanged.
    #[arg(long)]
    pub force: bool,
    /// The snapshot's time instead of now, local time "YYYY-MM-DD HH:MM:SS".
    #[arg(long, value_name = "TIME")]
    pub time: Option<String>,
    /// Repository options.
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// Arguments of commands that take only the repository options.
#[derive(Debug, Args)]
pub struct PlainArgs {
    /// Repository options.
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// Arguments of `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Snapshot: an ID, a unique ID prefix, or `latest`.
    pub snapshot: String,
    /// Only this path and what is below it.
    #[arg(default_value = "/")]
    pub path: String,
    /// Repository options.
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// Arguments of `find`.
#[derive(Debug, Args)]
pub struct FindArgs {
    /// Glob over names (`*.rs`) or paths (`/etc/**`).
    pub pattern: String,
    /// Repository options.
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// Arguments of `diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older snapshot.
    pub first: String,
    /// The newer snapshot.
    pub second: String,
    /// Repository options.
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// Arguments of `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// `SNAPSHOT` or `SNAPSHOT:PATH` (SNAPSHOT is an ID, a unique prefix or `latest`).
    pub snapshot: String,
    /// Directory to restore into (created if missing).
    #[arg(long, short = 't', value_name = "DIR")]
    pub target: PathBuf,
    /// Only restore paths matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Do not restore paths matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Repository options.
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// Arguments of `dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Snapshot: an ID, a unique prefix or `latest`.
    pub snapshot: String,
    /// Path in the snapshot: a file is written as it is, a folder or symlink as an archive.
    pub path: String,
    /// The archive a folder or symlink is written as: tar or zip (restic's `--archive`).
    #[arg(long, value_name = "FORMAT", default_value = "tar", value_parser = archive_format)]
    pub archive: ArchiveFormat,
    /// Repository options.
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also fetch and verify every data blob.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Fetch and verify this share of the data blobs (`10%`).
    #[arg(long, value_name = "N%", value_parser = parse_percent)]
    pub read_data_subset: Option<u8>,
    /// Repository options.
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// Arguments of `forget`: snapshots to forget, or a policy (restic's `--keep-*` flags).
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Snapshots to forget (IDs, unique prefixes or `latest`); or give a --keep-* policy.
    pub snapshots: Vec<String>,
    /// Keep the newest N snapshots.
    #[arg(long, value_name = "N", value_parser = positive)]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have snapshots.
    #[arg(long, value_name = "N", value_parser = positive)]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have snapshots.
    #[arg(long, value_name = "N", value_parser = positive)]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have snapshots.
    #[arg(long, value_name = "N", value_parser = positive)]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months that have snapshots.
    #[arg(long, value_name = "N", value_parser = positive)]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years that have snapshots.
    #[arg(long, value_name = "N", value_parser = positive)]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot within DURATION of the group's newest (7d, 2w3d, 1y6m, 12h).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub keep_within: Option<KeepWithin>,
    /// Keep every snapshot with all of these tags (TAG[,TAG…], repeatable).
    #[arg(long, value_name = "TAGS")]
    pub keep_tag: Vec<String>,
    /// Group snapshots by host, paths, both (host,paths) or not at all ('').
    #[arg(long, value_name = "GROUPING", default_value = "host,paths", value_parser = group_by)]
    pub group_by: GroupBy,
    /// With a policy: only snapshots of this host (repeatable).
    #[arg(long, value_name = "HOST")]
    pub host: Vec<String>,
    /// With a policy: only snapshots whose paths include this one (repeatable).
    #[arg(long, value_name = "PATH")]
    pub path: Vec<String>,
    /// With a policy: only snapshots carrying this tag (repeatable: all of them), e.g.
    /// `source:documents` for a scheduled source's snapshots.
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Print what would be forgotten and why, and forget nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Then have the server prune the repository (needs the manage role). Unreferenced data
    /// is condemned now and deleted once the server's grace period has passed.
    #[arg(long)]
    pub prune: bool,
    /// Repository options.
    #[command(flatten)]
    pub repo: RepoArgs,
}

impl ForgetArgs {
    /// The policy the flags give (empty when no --keep-* flag was given).
    fn plan(&self) -> ForgetPolicy {
        ForgetPolicy {
            policy: RetentionPolicy {
                keep_last: self.keep_last,
                keep_hourly: self.keep_hourly,
                keep_daily: self.keep_daily,
                keep_weekly: self.keep_weekly,
                keep_monthly: self.keep_monthly,
                keep_yearly: self.keep_yearly,
                keep_within: self.keep_within,
                keep_tags: self
                    .keep_tag
                    .iter()
                    .map(|set| {
                        set.split(',')
                            .filter(|tag| !tag.is_empty())
                            .map(|tag| tag.as_bytes().to_vec())
                            .collect()
                    })
                    .collect(),
                allow_empty: false,
            },
            group_by: self.group_by,
            hosts: self.host.iter().map(|h| h.as_bytes().to_vec()).collect(),
            paths: self.path.iter().map(|p| p.as_bytes().to_vec()).collect(),
            tags: self.tag.iter().map(|t| t.as_bytes().to_vec()).collect(),
        }
    }
}

fn positive(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("must be a positive number".into()),
    }
}

fn duration(text: &str) -> Result<KeepWithin, String> {
    text.parse()
        .map_err(|err: cyberbackup_core::repo::retention::RetentionError| err.to_string())
}

fn archive_format(text: &str) -> Result<ArchiveFormat, String> {
    text.parse()
}

fn group_by(text: &str) -> Result<GroupBy, String> {
    text.parse()
}

/// `key` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// List the repository's key objects.
    List(PlainArgs),
    /// Add a passphrase key object (the new passphrase from --new-password-file or a prompt).
    Add(KeyAddArgs),
    /// Change the passphrase: add a key object for the new passphrase, then remove those the
    /// current one (CYBERBACKUP_PASSWORD, --password-file or a prompt) opens. No data is
    /// re-encrypted.
    Passwd(KeyAddArgs),
    /// Remove a key object by its ID from `key list` (a lost device, an old passphrase).
    Remove(KeyRemoveArgs),
}

/// Arguments of `key remove`.
#[derive(Debug, Args)]
pub struct KeyRemoveArgs {
    /// The key object's ID as `key list` shows it (a unique prefix is enough).
    pub id: String,
    /// Repository options.
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// Arguments of `key add` and `key passwd`.
#[derive(Debug, Args)]
pub struct KeyAddArgs {
    /// File holding the new passphrase (its first line) [default: a prompt].
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
    /// Repository options.
    #[command(flatten)]
    pub repo: RepoArgs,
}

fn parse_percent(text: &str) -> Result<u8, String> {
    let number = text.strip_suffix('%').unwrap_or(text);
    match number.parse::<u8>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err(format!("{text:?}: give a percentage from 1% to 100%")),
    }
}

/// The snapshot commands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Back up files and directories as a new snapshot (incremental, deduplicated,
    /// encrypted on this machine).
    Backup(BackupArgs),
    /// List the snapshots.
    Snapshots(PlainArgs),
    /// List the files of a snapshot.
    Ls(LsArgs),
    /// Find files by name or path in every snapshot.
    Find(FindArgs),
    /// Show what changed between two snapshots.
    Diff(DiffArgs),
    /// Restore a snapshot (or one path of it) into a directory, verified.
    Restore(RestoreArgs),
    /// Write one file of a snapshot to stdout.
    Dump(DumpArgs),
    /// Verify the repository: every snapshot opens, every tree decodes, every blob is stored
    /// (and with --read-data, every blob decrypts to its ID).
    Check(CheckArgs),
    /// Remove snapshots from the repository's listing (their data stays until a prune).
    Forget(ForgetArgs),
    /// Manage the repository's key objects.
    #[command(subcommand)]
    Key(KeyCommand),
    /// On a new machine: open the repository with its passphrase and enroll this machine's
    /// device key.
    Recover(PlainArgs),
}

impl SnapshotCommand {
    /// Whether JSON output was asked for.
    #[must_use]
    pub fn json(&self) -> bool {
        self.repo().json
    }

    fn repo(&self) -> &RepoArgs {
        match self {
            Self::Backup(args) => &args.repo,
            Self::Snapshots(args) | Self::Recover(args) => &args.repo,
            Self::Ls(args) => &args.repo,
            Self::Find(args) => &args.repo,
            Self::Diff(args) => &args.repo,
            Self::Restore(args) => &args.repo,
            Self::Dump(args) => &args.repo,
            Self::Check(args) => &args.repo,
            Self::Forget(args) => &args.repo,
            Self::Key(KeyCommand::List(args)) => &args.repo,
            Self::Key(KeyCommand::Add(args) | KeyCommand::Passwd(args)) => &args.repo,
            Self::Key(KeyCommand::Remove(args)) => &args.repo,
        }
    }
}

/// Runs a snapshot command to completion on its own runtime; returns the exit code (0 done,
/// 1 fatal, 2 usage, 3 backup done with unreadable files).
pub fn run(command: SnapshotCommand, print: &mut Printer<'_>) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            print(
                Stream::Stderr,
                &format!("error: cannot start the async runtime: {err}"),
            );
            return EXIT_FATAL;
        }
    };
    let json = command.repo().json;
    match runtime.block_on(execute(command, print)) {
        Ok(code) => code,
        Err(error) => {
            let code = if matches!(error, V4ClientError::Usage { .. }) {
                EXIT_USAGE
            } else {
                EXIT_FATAL
            };
            if json {
                let line = serde_json::json!({
                    "message_type": "error",
                    "error": error.to_string(),
                    "exit_code": code,
                });
                print(Stream::Stdout, &line.to_string());
            }
            print(Stream::Stderr, &format!("error: {error}"));
            code
        }
    }
}

async fn execute(command: SnapshotCommand, print: &mut Printer<'_>) -> Result<u8, V4ClientError> {
    let args = command.repo().clone();
    if args.v4.protocol != crate::v4::cli::Protocol::V4 {
        return Err(V4ClientError::Usage {
            message: "snapshots need protocol v4; drop --protocol v3 (v3-only servers support `upload` only)".into(),
        });
    }
    let options = v4_options(&args.server, args.name.clone(), &args.v4, None)?;
    let passphrase = passphrase(&args, matches!(command, SnapshotCommand::Recover(_)))?;
    let mut keys = KeyOptions::new(&options.identity);
    if let Some(passphrase) = &passphrase {
        keys = keys.with_passphrase(passphrase);
    }
    let client = V4Client::connect(&options).await?;
    let mut repo = Repository::open(client, &keys).await?;
    if let Some(warning) = &repo.opened().warning {
        if !args.quiet {
            print(Stream::Stderr, &format!("warning: {warning}"));
        }
    }
    let code = match command {
        SnapshotCommand::Backup(backup) => run_backup(&mut repo, backup, print).await?,
        SnapshotCommand::Snapshots(_) => {
            let snapshots = repo.snapshots().await?;
            if args.json {
                let list: Vec<_> = snapshots.iter().map(super::SnapshotInfo::to_json).collect();
                print(Stream::Stdout, &to_json(&list));
            } else {
                let rows: Vec<Vec<String>> =
                    snapshots.iter().map(|s| s.table_row().to_vec()).collect();
                for line in table(&["ID", "TIME", "HOST", "PATHS", "TAGS", "SIZE"], &rows) {
                    print(Stream::Stdout, &line);
                }
                print(Stream::Stdout, &format!("{} snapshot(s)", snapshots.len()));
            }
            EXIT_OK
        }
        SnapshotCommand::Ls(ls) => {
            for entry in repo.ls(&ls.snapshot, ls.path.as_bytes()).await? {
                print(Stream::Stdout, &printable(&entry.display_path()));
            }
            EXIT_OK
        }
        SnapshotCommand::Find(find) => {
            for found in repo.find(&find.pattern).await? {
                let line = format!(
                    "{}  {}",
                    &found.snapshot.to_hex()[..8],
                    printable(&found.found.display_path())
                );
                print(Stream::Stdout, &line);
            }
            EXIT_OK
        }
        SnapshotCommand::Diff(diff) => {
            for entry in repo.diff(&diff.first, &diff.second).await? {
                let mark = match entry.kind {
                    super::DiffKind::Added => '+',
                    super::DiffKind::Removed => '-',
                    super::DiffKind::Modified => 'M',
                };
                let path = printable(&String::from_utf8_lossy(&entry.path));
                print(Stream::Stdout, &format!("{mark}    {path}"));
            }
            EXIT_OK
        }
        SnapshotCommand::Restore(restore) => {
            let (snapshot, path) = match restore.snapshot.split_once(':') {
                Some((snapshot, path)) => (snapshot.to_owned(), path.to_owned()),
                None => (restore.snapshot.clone(), "/".to_owned()),
            };
            let filter = RestoreFilter {
                include: restore.include.clone(),
                exclude: restore.exclude.clone(),
            };
            let summary = repo
                .restore(&snapshot, path.as_bytes(), &restore.target, &filter)
                .await?;
            if args.json {
                print(Stream::Stdout, &to_json(&summary));
            } else if !args.quiet {
                print(
                    Stream::Stdout,
                    &format!(
                        "restored {} file(s) ({} bytes), {} already correct, {} folder(s), {} symlink(s), {} hard link(s) into {}",
                        summary.files_restored,
                        summary.bytes_written,
                        summary.files_skipped,
                        summary.dirs,
                        summary.symlinks,
                        summary.hardlinks,
                        restore.target.display()
                    ),
                );
            }
            EXIT_OK
        }
        SnapshotCommand::Dump(dump) => {
            let mut stdout = tokio::io::stdout();
            repo.export(
                &dump.snapshot,
                dump.path.as_bytes(),
                dump.archive,
                &mut stdout,
            )
            .await?;
            EXIT_OK
        }
        SnapshotCommand::Check(check) => {
            let read = match (check.read_data, check.read_data_subset) {
                (true, _) => ReadData::All,
                (false, Some(percent)) => ReadData::Percent(percent),
                (false, None) => ReadData::No,
            };
            let report = repo.check(read).await?;
            if args.json {
                print(Stream::Stdout, &to_json(&report));
            }
            for error in &report.errors {
                print(Stream::Stderr, &format!("error: {error}"));
            }
            if !args.json && !args.quiet {
                print(
                    Stream::Stdout,
                    &format!(
                        "{} snapshot(s), {} tree(s), {} blob(s) referenced, {} blob(s) read and verified: {}",
                        report.snapshots,
                        report.trees,
                        report.blobs,
                        report.blobs_read,
                        if report.is_ok() {
                            "no errors".to_owned()
                        } else {
                            format!("{} error(s)", report.errors.len())
                        }
                    ),
                );
            }
            if report.is_ok() { EXIT_OK } else { EXIT_FATAL }
        }
        SnapshotCommand::Forget(forget) => run_forget(&mut repo, &forget, print).await?,
        SnapshotCommand::Key(KeyCommand::List(_)) => {
            let keys = repo.key_list();
            if args.json {
                print(Stream::Stdout, &to_json(&keys));
            } else {
                let rows: Vec<Vec<String>> = keys
                    .iter()
                    .map(|key| {
                        vec![
                            format!("{}{}", if key.current { "*" } else { "" }, key.id),
                            key.kind.to_owned(),
                            printable(&key.label),
                        ]
                    })
                    .collect();
                for line in table(&["ID", "KIND", "LABEL"], &rows) {
                    print(Stream::Stdout, &line);
                }
                if !args.quiet {
                    print(Stream::Stdout, "* opened the repository in this session");
                }
            }
            EXIT_OK
        }
        SnapshotCommand::Key(KeyCommand::Add(add)) => {
            let new = new_passphrase(&add)?;
            repo.add_passphrase_key(&new, &super::host_name(), KdfParams::DEFAULT)
                .await?;
            if !args.quiet {
                print(Stream::Stdout, "added a passphrase key object");
            }
            EXIT_OK
        }
        SnapshotCommand::Key(KeyCommand::Passwd(add)) => {
            let needs_current = passphrase.is_none() && repo.opened().has_passphrase_key();
            let current = match passphrase {
                Some(current) => Some(current),
                None if needs_current => prompt("current repository passphrase: ")?,
                None => None,
            };
            let new = new_passphrase(&add)?;
            let replaced = repo
                .change_passphrase(
                    current.as_deref().map(Vec::as_slice),
                    &new,
                    KdfParams::DEFAULT,
                )
                .await?;
            if !args.quiet {
                let message = match replaced {
                    0 => "the repository's first passphrase is set".to_owned(),
                    1 => "passphrase changed: the old passphrase no longer opens the repository"
                        .to_owned(),
                    n => format!(
                        "passphrase changed: {n} key objects of the old passphrase were removed"
                    ),
                };
                print(Stream::Stdout, &message);
            }
            EXIT_OK
        }
        SnapshotCommand::Key(KeyCommand::Remove(remove)) => {
            let removed = repo.remove_key(&remove.id).await?;
            if !args.quiet {
                print(
                    Stream::Stdout,
                    &format!(
                        "removed {} key object {} ({})",
                        removed.kind,
                        removed.id,
                        printable(&removed.label)
                    ),
                );
            }
            EXIT_OK
        }
        SnapshotCommand::Recover(_) => {
            if !args.quiet {
                print(
                    Stream::Stdout,
                    &format!(
                        "repository opened ({:?}); this machine's device key is enrolled",
                        repo.opened().opened_by
                    ),
                );
            }
            EXIT_OK
        }
    };
    repo.into_remote().close().await?;
    Ok(code)
}

async fn run_backup(
    repo: &mut Repository<V4Client>,
    args: BackupArgs,
    print: &mut Printer<'_>,
) -> Result<u8, V4ClientError> {
    let options = BackupOptions {
        paths: args.paths.clone(),
        tags: args.tag.clone(),
        host: args.host.as_ref().map(|host| host.as_bytes().to_vec()),
        exclude: ExcludeOptions {
            exclude: args.exclude.clone(),
            iexclude: args.iexclude.clone(),
            exclude_files: args.exclude_file.clone(),
            exclude_caches: args.exclude_caches,
            one_file_system: args.one_file_system,
        },
        parent: None,
        force: args.force,
        time: args.time.as_deref().map(parse_local_time).transpose()?,
    };
    let mut progress = Progress::new(&args.repo, print);
    let summary = repo.backup(&options, &mut progress).await?;
    progress.finish();
    let print = progress.print;
    if args.repo.json {
        print(Stream::Stdout, &to_json(&summary));
    } else if !args.repo.quiet {
        print(
            Stream::Stdout,
            &format!(
                "snapshot {} saved: {} new, {} changed, {} unmodified file(s), {} folder(s); {} bytes processed, {} bytes added in {} pack(s), {:.1} s",
                &summary.snapshot_id[..8.min(summary.snapshot_id.len())],
                summary.files_new,
                summary.files_changed,
                summary.files_unmodified,
                summary.dirs,
                summary.bytes_processed,
                summary.bytes_added,
                summary.packs_uploaded,
                summary.duration_secs
            ),
        );
    }
    for path in &summary.unreadable {
        print(Stream::Stderr, &format!("warning: not backed up: {path}"));
    }
    match repo.usage().await {
        Ok(usage) if usage.is_over_soft() => print(Stream::Stderr, &soft_quota_warning(&usage)),
        Ok(_) => {}
        Err(err) => print(
            Stream::Stderr,
            &format!(
                "warning: the snapshot is saved, but the server did not say how much this repository stores: {err}"
            ),
        ),
    }
    Ok(summary.exit_code())
}

/// `forget`: explicit snapshots, or a policy with a table (or JSON) of every decision.
async fn run_forget(
    repo: &mut Repository<V4Client>,
    forget: &ForgetArgs,
    print: &mut Printer<'_>,
) -> Result<u8, V4ClientError> {
    let args = &forget.repo;
    let plan = forget.plan();
    let usage = |message: &str| V4ClientError::Usage {
        message: message.into(),
    };
    // With --json: one object, `forget` (the policy's groups) or `forgotten` (the IDs
    // named), and with --prune a `prune` report (null on a dry run).
    let mut out = serde_json::Map::new();
    if forget.snapshots.is_empty() {
        if plan.policy.is_empty() {
            return Err(usage(
                "give snapshots to forget or a --keep-* policy (e.g. --keep-daily 7)",
            ));
        }
        let groups = repo.forget_policy(&plan, forget.dry_run).await?;
        if args.json && !forget.prune {
            print(Stream::Stdout, &to_json(&groups));
            return Ok(EXIT_OK);
        }
        if args.json {
            out.insert("forget".into(), serde_json::json!(groups));
        } else if !args.quiet {
            print_forget_tables(&groups, forget.dry_run, print);
        }
    } else {
        if !plan.policy.is_empty() {
            return Err(usage("give snapshots or a --keep-* policy, not both"));
        }
        if !forget.host.is_empty() || !forget.path.is_empty() {
            return Err(usage(
                "--host and --path select snapshots for a --keep-* policy; leave them out when naming snapshots",
            ));
        }
        let mut forgotten = Vec::new();
        for spec in &forget.snapshots {
            let id = if forget.dry_run {
                repo.resolve(spec).await?
            } else {
                repo.forget(spec).await?
            };
            if args.json {
                forgotten.push(id.to_hex());
            } else if !args.quiet {
                let verb = if forget.dry_run {
                    "would forget"
                } else {
                    "forgot"
                };
                print(Stream::Stdout, &format!("{verb} snapshot {}", id.to_hex()));
            }
        }
        out.insert("forgotten".into(), serde_json::json!(forgotten));
    }
    if forget.prune {
        let report = if forget.dry_run {
            None
        } else {
            Some(repo.prune().await?)
        };
        out.insert(
            "prune".into(),
            report.map_or(serde_json::Value::Null, |r| prune_json(&r)),
        );
        if !args.json && !args.quiet {
            print_prune_report(report.as_ref(), print);
        }
    }
    if args.json {
        print(Stream::Stdout, &to_json(&out));
    }
    Ok(EXIT_OK)
}

/// The text report of `forget --prune` (`None`: a dry run).
fn print_prune_report(report: Option<&RepoPruneReport>, print: &mut Printer<'_>) {
    let Some(r) = report else {
        print(Stream::Stdout, "dry run: nothing was pruned");
        return;
    };
    let grace = humantime::format_duration(Duration::from_secs(r.grace_secs));
    let lines = [
        format!(
            "pruned: {} snapshots kept; {} blobs no snapshot references were condemned",
            r.snapshots, r.condemned
        ),
        format!(
            "deleted {} blobs ({}) condemned over {grace} ago; repacked {} packs",
            r.deleted_blobs,
            human_bytes(r.deleted_blob_bytes),
            r.packs_repacked
        ),
        format!(
            "space given back: {} in {} packs; {} in {} packs waits for deletion",
            human_bytes(r.bytes_freed),
            r.packs_deleted,
            human_bytes(r.bytes_retired),
            r.packs_retired
        ),
    ];
    for line in lines {
        print(Stream::Stdout, &line);
    }
    if r.condemned > 0 {
        print(
            Stream::Stdout,
            &format!(
                "the condemned blobs are deleted by a prune once {grace} have passed (a backup in flight may still claim them)"
            ),
        );
    }
}

fn prune_json(r: &RepoPruneReport) -> serde_json::Value {
    serde_json::json!({
        "snapshots": r.snapshots,
        "condemned": r.condemned,
        "deleted_blobs": r.deleted_blobs,
        "deleted_blob_bytes": r.deleted_blob_bytes,
        "packs_repacked": r.packs_repacked,
        "packs_retired": r.packs_retired,
        "bytes_retired": r.bytes_retired,
        "packs_deleted": r.packs_deleted,
        "bytes_freed": r.bytes_freed,
        "grace_secs": r.grace_secs,
    })
}

fn print_forget_tables(groups: &[ForgetGroup], dry_run: bool, print: &mut Printer<'_>) {
    let (mut kept, mut removed) = (0, 0);
    for group in groups {
        let mut title = Vec::new();
        if let Some(host) = &group.host {
            title.push(format!("host {}", printable(host)));
        }
        if let Some(paths) = &group.paths {
            title.push(format!("paths {}", printable(&paths.join(", "))));
        }
        let title = if title.is_empty() {
            "all snapshots".to_owned()
        } else {
            title.join(", ")
        };
        print(Stream::Stdout, &format!("snapshots of {title}:"));
        let rows: Vec<Vec<String>> = group
            .snapshots
            .iter()
            .map(|entry| {
                vec![
                    entry.short_id.clone(),
                    entry.time.clone(),
                    if entry.keep { "keep" } else { "remove" }.to_owned(),
                    printable(&entry.reasons.join(", ")),
                ]
            })
            .collect();
        for line in table(&["ID", "TIME", "ACTION", "REASONS"], &rows) {
            print(Stream::Stdout, &line);
        }
        let group_kept = group.snapshots.iter().filter(|entry| entry.keep).count();
        kept += group_kept;
        removed += group.snapshots.len() - group_kept;
        print(Stream::Stdout, "");
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    print(
        Stream::Stdout,
        &format!("{kept} snapshot(s) kept, {verb} {removed}"),
    );
}

/// What a backup prints when the repository is above its soft quota.
fn soft_quota_warning(usage: &RepoUsage) -> String {
    let hard = if usage.hard_quota_bytes == 0 {
        "there is no hard quota".to_owned()
    } else {
        format!(
            "the server refuses packs above the hard quota of {}",
            human_bytes(usage.hard_quota_bytes)
        )
    };
    format!(
        "warning: this repository stores {}, above its soft quota of {}; {hard} — forget old snapshots or ask the operator to raise the quota",
        human_bytes(usage.stored_bytes),
        human_bytes(usage.soft_quota_bytes)
    )
}

/// Backup progress: a bar on a terminal, JSON status lines with `--json`, nothing with
/// `--quiet` or without a terminal.
struct Progress<'p, 'a> {
    print: &'p mut Printer<'a>,
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    last_status: Option<std::time::Instant>,
}

impl<'p, 'a> Progress<'p, 'a> {
    fn new(args: &RepoArgs, print: &'p mut Printer<'a>) -> Self {
        let bar = (!args.json && !args.quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Self {
            print,
            json: args.json,
            bar,
            last_status: None,
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl BackupObserver for Progress<'_, '_> {
    fn event(&mut self, event: &BackupEvent) {
        if let Some(bar) = &self.bar {
            match event {
                BackupEvent::Scanned { total_bytes, .. } => bar.set_length(*total_bytes),
                BackupEvent::Status {
                    bytes_done,
                    files_done,
                    total_files,
                    current_file,
                    ..
                } => {
                    bar.set_position(*bytes_done);
                    bar.set_message(format!(
                        "{files_done}/{total_files} files {}",
                        printable(current_file)
                    ));
                }
                BackupEvent::Skipped { message, .. } => bar.println(format!("warning: {message}")),
            }
            return;
        }
        if let BackupEvent::Skipped { message, .. } = event {
            (self.print)(Stream::Stderr, &format!("warning: {message}"));
        }
        if self.json {
            // Status lines at most every 250 ms: a tree of small files does not flood stdout.
            let now = std::time::Instant::now();
            let due = self
                .last_status
                .is_none_or(|last| now.duration_since(last).as_millis() >= 250);
            if matches!(event, BackupEvent::Status { .. }) && !due {
                return;
            }
            self.last_status = Some(now);
            (self.print)(Stream::Stdout, &to_json(event));
        }
    }
}

/// The passphrase: `--password-file`, else `CYBERBACKUP_PASSWORD`, else a prompt when stdin
/// is a terminal (always asked for `recover`), else none (a scripted run never blocks).
fn passphrase(
    args: &RepoArgs,
    required: bool,
) -> Result<Option<Zeroizing<Vec<u8>>>, V4ClientError> {
    if let Some(path) = &args.password_file {
        return read_password_file(path).map(Some);
    }
    if let Some(value) = std::env::var_os("CYBERBACKUP_PASSWORD") {
        return Ok(Some(Zeroizing::new(
            std::os::unix::ffi::OsStrExt::as_bytes(value.as_os_str()).to_vec(),
        )));
    }
    if !required {
        return Ok(None);
    }
    prompt("repository passphrase: ")?.map(Some).ok_or_else(|| V4ClientError::Usage {
        message: "recover needs the repository passphrase: set CYBERBACKUP_PASSWORD or give --password-file".into(),
    })
}

/// The new passphrase of `key add` / `key passwd`: --new-password-file, else a prompt.
fn new_passphrase(add: &KeyAddArgs) -> Result<Zeroizing<Vec<u8>>, V4ClientError> {
    match &add.new_password_file {
        Some(path) => read_password_file(path),
        None => prompt("new repository passphrase: ")?.ok_or_else(|| V4ClientError::Usage {
            message: "no terminal to ask for the new passphrase: give --new-password-file".into(),
        }),
    }
}

fn read_password_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, V4ClientError> {
    let text = Zeroizing::new(std::fs::read(path).map_err(|source| V4ClientError::Local {
        what: "cannot read the password file",
        path: path.to_path_buf(),
        source,
    })?);
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(V4ClientError::Usage {
            message: format!("the password file {} is empty", path.display()),
        });
    }
    Ok(Zeroizing::new(line.to_vec()))
}

/// Asks on the terminal without echo; `None` without a terminal.
fn prompt(question: &str) -> Result<Option<Zeroizing<Vec<u8>>>, V4ClientError> {
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let answer = rpassword::prompt_password(question).map_err(|source| V4ClientError::Local {
        what: "cannot read the passphrase from the terminal",
        path: PathBuf::from("/dev/tty"),
        source,
    })?;
    Ok(Some(Zeroizing::new(answer.into_bytes())))
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"))
}
