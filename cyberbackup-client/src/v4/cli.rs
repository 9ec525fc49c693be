//! The v4 side of the command line: `backup` (v4 unless `--protocol v3`), `list` and
//! `restore`. Runs the commands and returns what to print; `main.rs` prints.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use cyberbackup_core::v4::noise::{Fingerprint, to_hex};
use cyberbackup_core::v4::wire::VersionRecord;

use super::{V4Client, V4ClientError, V4Identity, V4Options, upload_resuming};
use crate::cli::{BackupArgs, Command};
use crate::error::{EXIT_FILES_FAILED, EXIT_OK, EXIT_USAGE};

/// Wire protocol of `backup`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// Authenticated, encrypted and resumable (`docs/protocol-v4.md`).
    #[default]
    V4,
    /// The legacy protocol, for v3-only servers (never with a v4 identity).
    V3,
}

/// Options of the v4 protocol, shared by `backup`, `list` and `restore`.
#[derive(Debug, Clone, Default, Args)]
pub struct V4Args {
    /// Protocol: v4 (default) or v3 for legacy servers.
    #[arg(long, value_enum, default_value_t = Protocol::V4)]
    pub protocol: Protocol,
    /// v4 identity file [default: cyberbackup-v4.json beside the default me.info].
    #[arg(long, value_name = "FILE")]
    pub v4_identity: Option<PathBuf>,
    /// The server key fingerprint to require (`sha256:…`, from `cyberbackup-server
    /// fingerprint`) instead of trusting the first key seen.
    #[arg(long, value_name = "FINGERPRINT")]
    pub server_fingerprint: Option<Fingerprint>,
    /// Enrollment token from `cyberbackup-server enroll` (servers that require one).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CYBERBACKUP_ENROLL_TOKEN",
        hide_env_values = true
    )]
    pub enroll_token: Option<String>,
}

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Server address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", env = "CYBERBACKUP_SERVER")]
    pub server: String,
    /// Client name, to register when the identity does not exist yet.
    #[arg(long, env = "CYBERBACKUP_NAME")]
    pub name: Option<String>,
    /// v4 options.
    #[command(flatten)]
    pub v4: V4Args,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The file name on the server (as `list` shows it).
    #[arg(value_name = "NAME")]
    pub file: String,
    /// Version to restore [default: the newest].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub version: Option<u32>,
    /// Where to write it [default: ./NAME]. Written to a temp file, verified, then renamed.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Server address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", env = "CYBERBACKUP_SERVER")]
    pub server: String,
    /// Client name, to register when the identity does not exist yet.
    #[arg(long, env = "CYBERBACKUP_NAME")]
    pub name: Option<String>,
    /// v4 options.
    #[command(flatten)]
    pub v4: V4Args,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a v4 command produced: lines for stdout and stderr, and the exit code.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Lines for stdout.
    pub stdout: Vec<String>,
    /// Lines for stderr.
    pub stderr: Vec<String>,
    /// Process exit code.
    pub code: u8,
}

/// Whether `command` runs over v4 (`list`, `restore`, `backup` without `--protocol v3`).
#[must_use]
pub fn handles(command: &Command) -> bool {
    match command {
        Command::List(_) | Command::Restore(_) => true,
        Command::Backup(args) => args.v4.protocol == Protocol::V4,
        _ => false,
    }
}

/// Refuses v3 when a v4 identity exists: an identity created over v4 never falls back.
///
/// # Errors
/// A usage message naming the identity file.
pub fn refuse_v3_with_v4_identity(args: &V4Args, v3_identity: Option<&Path>) -> Result<(), String> {
    let path = identity_path(args, v3_identity).map_err(|e| e.to_string())?;
    if path.exists() {
        return Err(format!(
            "--protocol v3 refused: a v4 identity exists at {} and v4 identities never fall back to v3 (the server refuses v3 for them too); use protocol v4, or give a v3 identity with --identity and --v4-identity pointing elsewhere",
            path.display()
        ));
    }
    Ok(())
}

/// Runs a v4 command to completion on its own runtime.
#[must_use]
pub fn run(command: Command) -> Outcome {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return failed(EXIT_USAGE, format!("cannot start the async runtime: {err}")),
    };
    runtime.block_on(async move {
        match command {
            Command::List(args) => list(args).await,
            Command::Restore(args) => restore(args).await,
            Command::Backup(args) => backup(args).await,
            _ => failed(EXIT_USAGE, "not a v4 command".into()),
        }
    })
}

/// `--v4-identity`, else `cyberbackup-v4.json` beside the v3 identity (`--identity`), else
/// beside the default `me.info`.
fn identity_path(args: &V4Args, v3_identity: Option<&Path>) -> Result<PathBuf, V4ClientError> {
    match (&args.v4_identity, v3_identity) {
        (Some(path), _) => Ok(path.clone()),
        (None, Some(me_info)) => Ok(me_info
            .parent()
            .unwrap_or(Path::new("."))
            .join(super::DEFAULT_IDENTITY_FILE)),
        (None, None) => V4Options::default_identity_path(),
    }
}

fn options(
    server: &str,
    name: Option<String>,
    args: &V4Args,
    v3_identity: Option<&Path>,
) -> Result<V4Options, V4ClientError> {
    let mut options = V4Options::new(server, identity_path(args, v3_identity)?);
    options.name = name;
    options.enroll_token.clone_from(&args.enroll_token);
    options.server_fingerprint = args.server_fingerprint;
    Ok(options)
}

async fn backup(args: BackupArgs) -> Outcome {
    let files = match crate::cli::expand_paths(&args.paths, &args.include, &args.exclude) {
        Ok(files) => files,
        Err(err) => return failed(err.exit_code(), err.to_string()),
    };
    let options = match options(
        &args.server,
        Some(args.name.clone()),
        &args.v4,
        args.identity.as_deref(),
    ) {
        Ok(options) => options,
        Err(err) => return failed(err.exit_code(), err.to_string()),
    };
    if let Ok(Some(identity)) = V4Identity::load(&options.identity)
        && identity.name != args.name
    {
        return failed(
            EXIT_USAGE,
            format!(
                "the v4 identity {} belongs to {:?}, not {:?}; use --v4-identity for another client",
                options.identity.display(),
                identity.name,
                args.name
            ),
        );
    }
    let mut outcome = Outcome::default();
    let attempts = args.transfer.retries.saturating_add(1);
    let (mut verified, mut failed_files) = (0, 0);
    for path in &files {
        match upload_resuming(&options, path, None, attempts).await {
            Ok(done) => {
                verified += 1;
                let resumed = if done.resumed_from > 0 {
                    format!(", resumed at {}", done.resumed_from)
                } else {
                    String::new()
                };
                outcome.stdout.push(format!(
                    "verified {} as {:?} version {} ({} bytes, sha256 {}, cksum {}{resumed})",
                    path.display(),
                    done.name,
                    done.version,
                    done.size,
                    to_hex(&done.sha256),
                    done.cksum
                ));
            }
            Err(err @ (V4ClientError::Failed(_) | V4ClientError::Local { .. })) => {
                failed_files += 1;
                outcome
                    .stdout
                    .push(format!("FAILED {}: {err}", path.display()));
            }
            Err(err) => {
                outcome.stderr.push(format!("error: {err}"));
                outcome.code = err.exit_code();
                return outcome;
            }
        }
    }
    outcome.stdout.push(format!(
        "{verified} of {} files backed up to {} (protocol v4)",
        files.len(),
        args.server
    ));
    outcome.code = if failed_files == 0 {
        EXIT_OK
    } else {
        EXIT_FILES_FAILED
    };
    outcome
}

async fn list(args: ListArgs) -> Outcome {
    let result = async {
        let options = options(&args.server, args.name.clone(), &args.v4, None)?;
        let mut client = V4Client::connect(&options).await?;
        let entries = client.list().await?;
        client.close().await?;
        Ok::<_, V4ClientError>(entries)
    }
    .await;
    match result {
        Ok(entries) if args.json => Outcome {
            stdout: vec![listing_json(&entries)],
            ..Outcome::default()
        },
        Ok(entries) => Outcome {
            stdout: listing_table(&entries),
            ..Outcome::default()
        },
        Err(err) => failed(err.exit_code(), err.to_string()),
    }
}

async fn restore(args: RestoreArgs) -> Outcome {
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| Path::new(".").join(&args.file));
    let result = async {
        let options = options(&args.server, args.name.clone(), &args.v4, None)?;
        let mut client = V4Client::connect(&options).await?;
        let record = client.restore(&args.file, args.version, &output).await?;
        client.close().await?;
        Ok::<_, V4ClientError>(record)
    }
    .await;
    match result {
        Ok(record) if args.json => Outcome {
            stdout: vec![
                serde_json::json!({
                    "restored": record_json(&record),
                    "output": output.display().to_string(),
                })
                .to_string(),
            ],
            ..Outcome::default()
        },
        Ok(record) => Outcome {
            stdout: vec![format!(
                "restored {:?} version {} ({} bytes, sha256 verified) to {}",
                record.name.to_string_lossy(),
                record.version,
                record.size,
                output.display()
            )],
            ..Outcome::default()
        },
        Err(err) => failed(err.exit_code(), err.to_string()),
    }
}

/// The listing as aligned lines: name, version, size, stored time, SHA-256.
#[must_use]
pub fn listing_table(entries: &[VersionRecord]) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<32} {:>7} {:>14} {:>12}  {}",
        "NAME", "VERSION", "SIZE", "STORED", "SHA-256"
    )];
    for record in entries {
        lines.push(format!(
            "{:<32} {:>7} {:>14} {:>12}  {}",
            record.name.to_string_lossy(),
            record.version,
            record.size,
            record.created_unix_secs,
            to_hex(&record.sha256)
        ));
    }
    lines.push(format!("{} version(s)", entries.len()));
    lines
}

fn listing_json(entries: &[VersionRecord]) -> String {
    serde_json::Value::Array(entries.iter().map(record_json).collect()).to_string()
}

fn record_json(record: &VersionRecord) -> serde_json::Value {
    serde_json::json!({
        "name": record.name.to_string_lossy(),
        "version": record.version,
        "size": record.size,
        "stored_unix_secs": record.created_unix_secs,
        "sha256": to_hex(&record.sha256),
        "cksum": record.cksum,
    })
}

fn failed(code: u8, message: String) -> Outcome {
    Outcome {
        stdout: Vec::new(),
        stderr: vec![format!("error: {message}")],
        code,
    }
}
