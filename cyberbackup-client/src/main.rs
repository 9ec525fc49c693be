//! `cyberbackup-client` binary: parses the command line, runs the library, prints the
//! outcome and maps it to an exit code. The only place that prints; a closed stdout or
//! stderr (`list | head -2`) ends the output, never the process with a panic.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use cyberbackup_client::cli::{self, Cli, Command, LegacyArgs, TransferArgs};
use cyberbackup_client::error::{EXIT_FILES_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE};
use cyberbackup_client::{
    BackupReport, BarProgress, ClientError, LineProgress, ProgressSink, legacy,
};

fn main() -> ExitCode {
    let no_arguments = std::env::args_os().len() <= 1;
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ignored = err.print();
            return ExitCode::from(if err.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_OK
            });
        }
    };
    let command = match cli.command {
        Some(command) => command,
        None if no_arguments && legacy::has_transfer_info(std::path::Path::new(".")) => {
            Command::Legacy(LegacyArgs {
                dir: ".".into(),
                transfer: TransferArgs {
                    packet_size: 1024 * 1024,
                    retries: 3,
                    ..TransferArgs::default()
                },
            })
        }
        None => {
            let _ignored = Cli::command().print_help();
            err_line(
                "\nerror: nothing to do — give a command, or run in a directory with transfer.info",
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Command::Ui(args) = &command {
        return run_ui(args);
    }
    let mut print = |stream, line: &str| match stream {
        cyberbackup_client::snapshot::cli::Stream::Stdout => out_lines([line]),
        cyberbackup_client::snapshot::cli::Stream::Stderr => err_line(line),
    };
    if let Command::Daemon(args) = &command {
        return ExitCode::from(cyberbackup_client::schedule::cli::run_daemon(
            args, &mut print,
        ));
    }
    if let Command::Schedule(command) = command {
        return ExitCode::from(cyberbackup_client::schedule::cli::run_schedule(
            command, &mut print,
        ));
    }
    if let Command::Snapshot(command) = command {
        return ExitCode::from(cyberbackup_client::snapshot::cli::run(command, &mut print));
    }
    if cyberbackup_client::v4::cli::handles(&command) {
        let outcome = cyberbackup_client::v4::cli::run(command);
        out_lines(&outcome.stdout);
        for line in &outcome.stderr {
            err_line(line);
        }
        return ExitCode::from(outcome.code);
    }
    let json = command.json();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            err_line(&format!("error: cannot start the async runtime: {err}"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut progress: Box<dyn ProgressSink> = if std::io::stderr().is_terminal() && !json {
        Box::new(BarProgress::new())
    } else {
        Box::new(LineProgress::new(std::io::stderr()))
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = cli::execute(command, progress.as_mut()) => Some(result),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Clears the bars (before anything else is printed).
    drop(progress);
    let Some(result) = result else {
        // The run's connection is dropped with it; what the server holds stays consistent.
        err_line(
            "interrupted (Ctrl-C): the backup stopped. Run the same command again: verified files are not sent again, and over v4 an interrupted upload resumes from the server's last checkpoint",
        );
        return ExitCode::from(EXIT_INTERRUPTED);
    };
    let code = match &result {
        Ok(report) if report.all_verified() => EXIT_OK,
        Ok(_) => EXIT_FILES_FAILED,
        Err(err) => err.exit_code(),
    };
    if json {
        print_json(&result, code);
    } else {
        print_human(&result);
    }
    ExitCode::from(code)
}

/// `cyberbackup-client ui`: serves the web UI until Ctrl-C.
fn run_ui(args: &cli::UiArgs) -> ExitCode {
    let result = args.options().and_then(|options| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|err| ClientError::Usage {
                message: format!("cannot start the async runtime: {err}"),
            })?;
        runtime.block_on(async {
            let token = options.token.clone();
            let server = cyberbackup_client::ui::UiServer::bind(options).await?;
            let address = server.local_addr()?;
            let suffix = token.map_or_else(String::new, |t| format!("/?token={t}"));
            err_line(&format!(
                "CyberBackup UI: open http://{address}{suffix} (Ctrl-C to stop)"
            ));
            server
                .serve(async {
                    let _ignored = tokio::signal::ctrl_c().await;
                })
                .await
        })
    });
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(err) => {
            err_line(&format!("error: {err}"));
            ExitCode::from(err.exit_code())
        }
    }
}

fn print_human(result: &Result<BackupReport, ClientError>) {
    match result {
        Ok(report) => {
            let verified = report.files.iter().filter(|f| f.verified).count();
            let total = format!(
                "{verified} of {} files backed up to {} (protocol {})",
                report.files.len(),
                report.server,
                report.protocol
            );
            let lines = report
                .files
                .iter()
                .map(cyberbackup_client::FileReport::summary);
            out_lines(lines.chain(std::iter::once(total)));
        }
        Err(err) => {
            // A fatal error after some files were settled: say which ones made it.
            if let Some(report) = err.partial_report() {
                out_lines(
                    report
                        .files
                        .iter()
                        .map(cyberbackup_client::FileReport::summary),
                );
            }
            err_line(&format!("error: {err}"));
        }
    }
}

fn print_json(result: &Result<BackupReport, ClientError>, code: u8) {
    let value = match result {
        Ok(report) => serde_json::json!({
            "ok": code == EXIT_OK,
            "exit_code": code,
            "report": report,
            "error": null,
        }),
        Err(err) => serde_json::json!({
            "ok": false,
            "exit_code": code,
            "report": err.partial_report(),
            "error": { "kind": err.kind(), "message": err.to_string() },
        }),
    };
    out_lines([format!("{value:#}")]);
}

/// Writes `lines` to stdout. A reader that went away (`| head`) ends the output quietly: a
/// closed pipe is a normal end, and the exit code stays the run's.
fn out_lines<I>(lines: I)
where
    I: IntoIterator,
    I::Item: std::fmt::Display,
{
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        if let Err(err) = writeln!(stdout, "{line}") {
            if err.kind() != std::io::ErrorKind::BrokenPipe {
                err_line(&format!("error: cannot write to stdout: {err}"));
            }
            return;
        }
    }
    let _ignored = stdout.flush();
}

/// Writes one line to stderr, best effort (it may be a closed pipe too).
fn err_line(line: &str) {
    let _ignored = writeln!(std::io::stderr().lock(), "{line}");
}
