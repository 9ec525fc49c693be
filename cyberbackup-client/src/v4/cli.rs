//! The v4 side of the command line: `upload` (v4 unless `--protocol v3`; run through
//! [`crate::cli::execute`] and printed like v3), `files` and `download` (run here; they
//! return what to print and `main.rs` prints).

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use cyberbackup_core::v4::noise::{Fingerprint, to_hex};
use cyberbackup_core::v4::wire::VersionRecord;

use super::{V4Client, V4ClientError, V4Options};
use crate::cli::{Command, UploadArgs};
use crate::error::{EXIT_OK, EXIT_USAGE};
use crate::{BackupReport, ClientError, ProgressSink, RetryPolicy};

/// Wire protocol of `upload`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// Authenticated, encrypted and resumable (`docs/protocol-v4.md`).
    #[default]
    V4,
    /// The legacy protocol, for v3-only servers (never with a v4 identity).
    V3,
}

/// Options of the v4 protocol, shared by `upload`, `files`, `download` and the snapshot commands.
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

/// Arguments of `files`.
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

/// Arguments of `download`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The file name on the server (as `files` shows it).
    #[arg(value_name = "NAME")]
    pub file: String,
    /// Version to restore [default: the newest].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub version: Option<u32>,
    /// Where to write it [default: ./NAME]; an existing directory gets DIR/NAME. Written to
    /// a temp file, verified, then renamed.
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

/// Whether `command` is one that [`run`] executes (`files`, `download`). `upload` over v4
/// goes through [`crate::cli::execute`] like v3, so both print the same way.
#[must_use]
pub fn handles(command: &Command) -> bool {
    matches!(command, Command::Files(_) | Command::Download(_))
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
        Err(err) => {
            return failed(
                EXIT_USAGE,
                command.json(),
                format!("cannot start the async runtime: {err}"),
            );
        }
    };
    runtime.block_on(async move {
        match command {
            Command::Files(args) => list(args).await,
            Command::Download(args) => restore(args).await,
            _ => failed(
                EXIT_USAGE,
                false,
                "not a `files` or `download` command".into(),
            ),
        }
    })
}

/// `--v4-identity`, else `cyberbackup-v4.json` beside the v3 identity (`--identity`), else
/// beside the default `me.info`.
fn identity_path(args: &V4Args, v3_identity: Option<&Path>) -> Result<PathBuf, V4ClientError> {
    match (&args.v4_identity, v3_identity) {
        (Some(path), _) => Ok(path.clone()),
        (None, Some(me_info)) => Ok(super::identity_beside(me_info)),
        (None, None) => V4Options::default_identity_path(),
    }
}

pub(crate) fn options(
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

/// `upload` over v4: checks the arguments as the v3 path does, expands the paths and runs
/// [`super::backup`], reporting progress to `progress`.
///
/// # Errors
/// As [`super::backup`]; [`ClientError::Usage`] for a bad name, address or glob.
pub async fn backup(
    args: UploadArgs,
    progress: &mut dyn ProgressSink,
) -> Result<BackupReport, ClientError> {
    crate::identity::check_client_name(&args.name).map_err(|why| ClientError::Usage {
        message: format!("{why} (got {:?})", args.name),
    })?;
    crate::legacy::parse_address(&args.server).map_err(|why| ClientError::Usage {
        message: format!("--server: {why}"),
    })?;
    let files = crate::cli::expand_paths(&args.paths, &args.include, &args.exclude)?;
    let options = options(
        &args.server,
        Some(args.name.clone()),
        &args.v4,
        args.identity.as_deref(),
    )
    .map_err(|error| ClientError::V4 {
        server: args.server.clone(),
        error,
    })?;
    let retry = RetryPolicy::with_retries(args.transfer.retries);
    super::backup(&options, &files, retry, progress).await
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
            stdout: vec![
                serde_json::json!({
                    "ok": true,
                    "exit_code": EXIT_OK,
                    "server": args.server,
                    "versions": entries.iter().map(record_json).collect::<Vec<_>>(),
                    "error": null,
                })
                .to_string(),
            ],
            ..Outcome::default()
        },
        Ok(entries) => Outcome {
            stdout: listing_table(&entries),
            ..Outcome::default()
        },
        Err(error) => failed_v4(&args.server, args.json, error),
    }
}

async fn restore(args: RestoreArgs) -> Outcome {
    let output = match &args.output {
        // The name is checked as a file name (no separators) before anything is written.
        Some(dir) if dir.is_dir() => dir.join(&args.file),
        Some(path) => path.clone(),
        None => Path::new(".").join(&args.file),
    };
    let result = async {
        let options = options(&args.server, args.name.clone(), &args.v4, None)?;
        let mut client = V4Client::connect(&options).await?;
        let record = client.restore(&args.file, args.version, &output).await?;
        client.close().await?;
        Ok::<_, V4ClientError>(record)
    }
    .await;
    match result {
        Ok(record) if args.json => {
            let mut restored = record_json(&record);
            restored["output"] = output.display().to_string().into();
            restored["verified"] = true.into();
            Outcome {
                stdout: vec![
                    serde_json::json!({
                        "ok": true,
                        "exit_code": EXIT_OK,
                        "server": args.server,
                        "restored": restored,
                        "error": null,
                    })
                    .to_string(),
                ],
                ..Outcome::default()
            }
        }
        Ok(record) => {
            let mut stdout = table(
                &[
                    "NAME",
                    "VERSION",
                    "SIZE",
                    "STORED (UTC)",
                    "SHA-256",
                    "OUTPUT",
                ],
                &[row(&record, Some(&output))],
            );
            stdout.push(format!(
                "restored {:?} version {} to {} (size and SHA-256 verified)",
                record.name.to_string_lossy(),
                record.version,
                output.display()
            ));
            Outcome {
                stdout,
                ..Outcome::default()
            }
        }
        Err(error) => failed_v4(&args.server, args.json, error),
    }
}

/// The listing as an aligned table (name, version, size, stored time in UTC, SHA-256) and
/// a count.
#[must_use]
pub fn listing_table(entries: &[VersionRecord]) -> Vec<String> {
    let rows: Vec<Vec<String>> = entries.iter().map(|record| row(record, None)).collect();
    let mut lines = table(
        &["NAME", "VERSION", "SIZE", "STORED (UTC)", "SHA-256"],
        &rows,
    );
    let files = entries
        .iter()
        .map(|record| record.name.as_bytes())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    lines.push(format!("{} version(s) of {files} file(s)", entries.len()));
    lines
}

fn row(record: &VersionRecord, output: Option<&Path>) -> Vec<String> {
    let mut cells = vec![
        printable(&record.name.to_string_lossy()),
        record.version.to_string(),
        record.size.to_string(),
        utc_time(record.created_unix_secs, ' '),
        to_hex(&record.sha256),
    ];
    if let Some(output) = output {
        cells.push(output.display().to_string());
    }
    cells
}

/// A name as a table shows it: control characters (a newline, an escape sequence) and the
/// bidirectional overrides that reorder text on screen are written as `\u{..}` escapes
/// (`\n`, `\t`), so one row is one line and shows what is stored. Names cannot contain
/// `\`, so the escapes are unambiguous.
pub(crate) fn printable(name: &str) -> String {
    let mut shown = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Columns a cell takes on a terminal (wide CJK characters take two).
fn width(cell: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(cell)
}

/// Left-aligned text columns, right-aligned numbers (VERSION, SIZE), two spaces apart,
/// aligned by terminal width.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for row in rows {
        for (column, cell) in widths.iter_mut().zip(row) {
            *column = (*column).max(width(cell));
        }
    }
    let numeric = |column: &str| matches!(column, "VERSION" | "SIZE");
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for ((cell, column_width), column) in cells.zip(&widths).zip(header) {
            if !out.is_empty() {
                out.push_str("  ");
            }
            let pad = column_width.saturating_sub(width(cell));
            if numeric(column) {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_owned()
    };
    let mut lines = vec![line(&mut header.iter().copied())];
    for row in rows {
        lines.push(line(&mut row.iter().map(String::as_str)));
    }
    lines
}

/// Unix seconds as `YYYY-MM-DD<sep>HH:MM:SS` (UTC), with a `Z` for the RFC 3339 form.
fn utc_time(unix_secs: u64, separator: char) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_secs);
    let text = humantime::format_rfc3339_seconds(time).to_string();
    if separator == 'T' {
        text
    } else {
        text.trim_end_matches('Z')
            .replacen('T', &separator.to_string(), 1)
    }
}

fn record_json(record: &VersionRecord) -> serde_json::Value {
    serde_json::json!({
        "name": record.name.to_string_lossy(),
        "version": record.version,
        "size": record.size,
        "stored": utc_time(record.created_unix_secs, 'T'),
        "stored_unix_secs": record.created_unix_secs,
        "sha256": to_hex(&record.sha256),
        "cksum": record.cksum,
    })
}

fn failed_v4(server: &str, json: bool, error: V4ClientError) -> Outcome {
    let error = ClientError::V4 {
        server: server.to_owned(),
        error,
    };
    failed_with_kind(error.exit_code(), json, error.kind(), error.to_string())
}

fn failed(code: u8, json: bool, message: String) -> Outcome {
    failed_with_kind(code, json, "usage", message)
}

/// A failure: the message on stderr, and with `--json` also the JSON envelope on stdout.
fn failed_with_kind(code: u8, json: bool, kind: &str, message: String) -> Outcome {
    let stdout = if json {
        vec![
            serde_json::json!({
                "ok": false,
                "exit_code": code,
                "error": { "kind": kind, "message": message },
            })
            .to_string(),
        ]
    } else {
        Vec::new()
    };
    Outcome {
        stdout,
        stderr: vec![format!("error: {message}")],
        code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_civil_dates() {
        assert_eq!(utc_time(0, 'T'), "1970-01-01T00:00:00Z");
        assert_eq!(utc_time(951_782_400, ' '), "2000-02-29 00:00:00");
        assert_eq!(utc_time(1_700_000_000, 'T'), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn names_are_shown_on_one_line_without_escape_sequences() {
        assert_eq!(printable("a\nb.txt"), "a\\nb.txt");
        assert_eq!(printable("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(printable("x\u{202e}txt.exe"), "x\\u{202e}txt.exe");
        assert_eq!(printable("报告 café.txt"), "报告 café.txt");
    }

    #[test]
    fn wide_names_keep_the_columns_aligned() {
        let lines = table(
            &["NAME", "SIZE"],
            &[
                vec!["报告.txt".into(), "5".into()],
                vec!["ab.txt".into(), "12345".into()],
            ],
        );
        assert_eq!(
            lines,
            ["NAME       SIZE", "报告.txt      5", "ab.txt    12345"]
        );
    }

    #[test]
    fn tables_align_text_left_and_numbers_right() {
        let lines = table(
            &["NAME", "SIZE"],
            &[
                vec!["a.txt".into(), "5".into()],
                vec!["longer-name".into(), "12345".into()],
            ],
        );
        assert_eq!(
            lines,
            [
                "NAME          SIZE",
                "a.txt            5",
                "longer-name  12345"
            ]
        );
    }
}
