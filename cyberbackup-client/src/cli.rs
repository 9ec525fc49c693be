//! The command line: clap definitions, expansion of directories into files, and the
//! execution of a parsed command (without printing: `main.rs` prints).

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::ClientError;
use crate::identity::IdentityFile;
use crate::progress::ProgressSink;
use crate::retry::RetryPolicy;
use crate::{BackupReport, Client, ClientOptions, legacy};

const EXIT_CODES_HELP: &str = "\
Exit codes of the snapshot commands (backup, restore, check, ...; restic's convention):
  0  done
  1  fatal error: nothing was committed (connection, server, identity, a blob or snapshot
     that fails verification; check: the repository has errors)
  2  usage error (command line)
  3  backup done, but some files or folders could not be read (each is reported)

Exit codes of the single-file mode (upload, files, download, legacy):
  0  every file was backed up and verified (files/download: done)
  1  some files failed (each is reported with the reason); download: no such file or
     version, or the download did not verify
  2  usage or configuration error (command line, transfer.info)
  3  network error (cannot connect, connection lost, server error or protocol violation)
  4  identity error (me.info or the v4 identity unreadable, unwritable or for another
     name; name taken; unknown key; enrollment token missing or invalid; server key
     changed)

Without arguments, if ./transfer.info exists, runs in legacy mode (like `legacy`).";

/// `cyberbackup-client`: back up files to a CyberBackup server (protocol v4, or the legacy
/// v3).
#[derive(Debug, Parser)]
#[command(name = "cyberbackup-client", version, about, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Snapshot commands.
    #[command(flatten)]
    Snapshot(crate::snapshot::cli::SnapshotCommand),
    /// Single-file mode: upload files and directories (recursively) as separate files with
    /// versions, not a snapshot (v4, or the legacy flat store with --protocol v3).
    Upload(UploadArgs),
    /// Legacy mode: read ./transfer.info and ./me.info, write ./me.info (drop-in for the
    /// old client).
    Legacy(LegacyArgs),
    /// Serve the local web UI (default http://127.0.0.1:9090/) until Ctrl-C; it also runs
    /// the scheduled backups while it is open.
    Ui(UiArgs),
    /// Run the scheduled backups (`schedule add`, or the UI's Sources) until stopped.
    Daemon(crate::schedule::cli::DaemonArgs),
    /// Scheduled backups: add, list, remove or run a source; install the systemd user unit.
    #[command(subcommand)]
    Schedule(crate::schedule::cli::ScheduleCommand),
    /// Single-file mode: list my uploaded files and their versions (protocol v4).
    Files(crate::v4::cli::ListArgs),
    /// Single-file mode: download a version of one of my uploaded files, verified (v4).
    Download(crate::v4::cli::RestoreArgs),
}

/// Arguments of `ui`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// Address to listen on; anything but loopback needs --token.
    #[arg(long, value_name = "IP:PORT", default_value = crate::ui::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Token the browser must present (?token=…); required off loopback.
    #[arg(long, env = "CYBERBACKUP_UI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Largest total size of uploaded files staged at once, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = crate::ui::DEFAULT_MAX_STAGING_MB)]
    pub max_staging_mb: u64,
    /// Data directory and identity.
    #[command(flatten)]
    pub data: crate::schedule::cli::DataArgs,
    /// Server address proposed until one is saved, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", env = "CYBERBACKUP_SERVER")]
    pub server: Option<String>,
    /// Client name proposed until one is saved.
    #[arg(long, env = "CYBERBACKUP_NAME")]
    pub name: Option<String>,
    /// Reconnects after network errors during a backup.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub retries: u32,
}

impl UiArgs {
    /// The UI server options these arguments describe.
    ///
    /// # Errors
    /// [`ClientError::Usage`] when no default location exists for the history or identity.
    pub fn options(&self) -> Result<crate::ui::UiOptions, ClientError> {
        let store_path = self.data.data_dir()?.join(crate::ui::STORE_FILE);
        let identity = self.data.identity()?;
        let mut options = crate::ui::UiOptions::new(store_path, identity);
        options.listen = self.listen;
        options.token.clone_from(&self.token);
        options.max_staging_bytes = self.max_staging_mb.saturating_mul(1024 * 1024);
        options.retries = self.retries;
        options.default_server.clone_from(&self.server);
        options.default_name.clone_from(&self.name);
        Ok(options)
    }
}

/// Arguments of `upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Files or directories to back up (directories recursively).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Server address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", env = "CYBERBACKUP_SERVER")]
    pub server: String,
    /// Client name to register (1 to 100 characters).
    #[arg(long, env = "CYBERBACKUP_NAME")]
    pub name: String,
    /// Identity file [default: $XDG_CONFIG_HOME/cyberbackup/me.info or
    /// ~/.config/cyberbackup/me.info].
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Only back up files in directories matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Skip files in directories matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Transfer options.
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// Protocol v4 options (v4 is the default).
    #[command(flatten)]
    pub v4: crate::v4::cli::V4Args,
}

/// Arguments of `legacy`.
#[derive(Debug, Args)]
pub struct LegacyArgs {
    /// Directory holding transfer.info and me.info.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Transfer options.
    #[command(flatten)]
    pub transfer: TransferArgs,
}

/// Options shared by both modes.
#[derive(Debug, Args, Default)]
pub struct TransferArgs {
    /// Ciphertext bytes per 1028 packet. A smaller size does not help servers that read a
    /// packet with one recv (measured: it does not); for servers that mishandle multi-packet
    /// files use --single-packet.
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u32).range(16..))]
    pub packet_size: u32,
    /// Send every file as a single packet.
    #[arg(long)]
    pub single_packet: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Reconnects after network errors (exponential backoff from 0.5 s).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,
}

impl Command {
    /// Whether JSON output was asked for.
    #[must_use]
    pub fn json(&self) -> bool {
        match self {
            Self::Upload(args) => args.transfer.json,
            Self::Legacy(args) => args.transfer.json,
            Self::Ui(_) | Self::Daemon(_) => false,
            Self::Schedule(crate::schedule::cli::ScheduleCommand::List(args)) => args.json,
            Self::Schedule(_) => false,
            Self::Files(args) => args.json,
            Self::Download(args) => args.json,
            Self::Snapshot(command) => command.json(),
        }
    }
}

/// Runs an `upload` (over v4 unless `--protocol v3`) or `legacy` command: builds the
/// options, expands the paths, backs up, closes.
///
/// # Errors
/// The fatal [`ClientError`]; per-file failures are in the report.
pub async fn execute(
    command: Command,
    progress: &mut dyn ProgressSink,
) -> Result<BackupReport, ClientError> {
    let (options, files) = match command {
        Command::Upload(args) if args.v4.protocol == crate::v4::cli::Protocol::V4 => {
            return crate::v4::cli::backup(args, progress).await;
        }
        Command::Upload(args) => {
            crate::v4::cli::refuse_v3_with_v4_identity(&args.v4, args.identity.as_deref())
                .map_err(|message| ClientError::Usage { message })?;
            let identity = match &args.identity {
                Some(path) => IdentityFile::new(path),
                None => IdentityFile::default_location()?,
            };
            legacy::parse_address(&args.server).map_err(|why| ClientError::Usage {
                message: format!("--server: {why}"),
            })?;
            let files = expand_paths(&args.paths, &args.include, &args.exclude)?;
            let mut options = ClientOptions::new(args.server, args.name, identity);
            apply(&mut options, &args.transfer);
            (options, files)
        }
        Command::Legacy(args) => {
            let job = legacy::load_job(&args.dir)?;
            let mut options =
                ClientOptions::new(job.transfer.server, job.transfer.name, job.identity);
            options.prefer_identity_name = true;
            apply(&mut options, &args.transfer);
            (options, job.transfer.files)
        }
        Command::Ui(_) => {
            return Err(ClientError::Usage {
                message: "`ui` runs a server, not a backup: call cyberbackup_client::ui".into(),
            });
        }
        Command::Daemon(_) | Command::Schedule(_) => {
            return Err(ClientError::Usage {
                message: "`daemon` and `schedule` are the scheduler's commands: run them with cyberbackup_client::schedule::cli".into(),
            });
        }
        Command::Files(_) | Command::Download(_) => {
            return Err(ClientError::Usage {
                message: "`files` and `download` are v4 commands: run them with cyberbackup_client::v4::cli::run".into(),
            });
        }
        Command::Snapshot(_) => {
            return Err(ClientError::Usage {
                message: "snapshot commands run with cyberbackup_client::snapshot::cli::run".into(),
            });
        }
    };
    let mut client = Client::new(options)?;
    let report = client.backup(&files, progress).await?;
    // Every file is settled; a failure to say goodbye does not change the outcome.
    let _ignored = client.close(progress).await;
    Ok(report)
}

fn apply(options: &mut ClientOptions, args: &TransferArgs) {
    options.packet_size = args.packet_size;
    options.single_packet = args.single_packet;
    options.retry = RetryPolicy::with_retries(args.retries);
}

/// Expands directories into their files (recursively, sorted), filtered by the globs,
/// which match the path relative to the directory given. Files named explicitly are kept
/// as they are (a missing one is reported as a failed file).
///
/// # Errors
/// [`ClientError::Usage`] for a bad glob or an unreadable directory.
pub fn expand_paths(
    paths: &[PathBuf],
    include: &[String],
    exclude: &[String],
) -> Result<Vec<PathBuf>, ClientError> {
    let include_set = glob_set(include, "--include")?;
    let exclude_set = glob_set(exclude, "--exclude")?;
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
            let entry = entry.map_err(|err| ClientError::Usage {
                message: format!("cannot read directory {}: {err}", path.display()),
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let relative = entry.path().strip_prefix(path).unwrap_or(entry.path());
            if wanted(relative, include.is_empty(), &include_set, &exclude_set) {
                files.push(entry.into_path());
            }
        }
    }
    Ok(files)
}

fn wanted(relative: &Path, include_all: bool, include: &GlobSet, exclude: &GlobSet) -> bool {
    (include_all || include.is_match(relative)) && !exclude.is_match(relative)
}

fn glob_set(patterns: &[String], flag: &str) -> Result<GlobSet, ClientError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern).map_err(|err| ClientError::Usage {
            message: format!("{flag} {pattern:?} is not a valid glob: {err}"),
        })?;
        builder.add(glob);
    }
    builder.build().map_err(|err| ClientError::Usage {
        message: format!("{flag}: {err}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap checks a subcommand's arguments only when it is parsed; this checks them all
    /// (two arguments named alike panic at run time otherwise).
    #[test]
    fn every_command_line_is_well_formed() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn directories_expand_recursively_with_globs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub/deep")).unwrap();
        for file in ["a.txt", "b.log", "sub/c.txt", "sub/deep/d.txt", "sub/e.tmp"] {
            std::fs::write(root.join(file), file).unwrap();
        }
        let all = expand_paths(&[root.to_path_buf()], &[], &[]).unwrap();
        assert_eq!(all.len(), 5);
        let txt = expand_paths(
            &[root.to_path_buf()],
            &["*.txt".into()],
            &["sub/deep/**".into()],
        )
        .unwrap();
        assert_eq!(txt, [root.join("a.txt"), root.join("sub/c.txt")]);
        let explicit = expand_paths(&[root.join("b.log")], &["*.txt".into()], &[]).unwrap();
        assert_eq!(explicit, [root.join("b.log")]);
    }

    #[test]
    fn bad_globs_are_usage_errors() {
        let err = expand_paths(&[], &["a[".into()], &[]).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        assert!(err.to_string().contains("--include"));
    }

    #[test]
    fn the_cli_parses_the_documented_synopsis() {
        let cli = Cli::try_parse_from([
            "cyberbackup-client",
            "upload",
            "a",
            "b",
            "--server",
            "h:1",
            "--name",
            "n",
            "--include",
            "*.txt",
            "--exclude",
            "x",
            "--packet-size",
            "1024",
            "--single-packet",
            "--json",
            "--retries",
            "0",
        ])
        .unwrap();
        let Some(Command::Upload(args)) = cli.command else {
            panic!("not backup");
        };
        assert_eq!(args.paths.len(), 2);
        assert_eq!(args.transfer.packet_size, 1024);
        assert!(args.transfer.single_packet && args.transfer.json);
        assert_eq!(args.transfer.retries, 0);
        assert!(
            Cli::try_parse_from(["cyberbackup-client", "upload", "a", "--server", "h:1"]).is_err()
        );
    }
}
