//! `cyberbackup-client` binary: parses the command line, runs the library, prints the
//! outcome and maps it to an exit code. The only place that prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use cyberbackup_client::cli::{self, Cli, Command, LegacyArgs, TransferArgs};
use cyberbackup_client::error::{EXIT_FILES_FAILED, EXIT_OK, EXIT_USAGE};
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
            eprintln!(
                "\nerror: nothing to do — give a command, or run in a directory with transfer.info"
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Command::Ui(args) = &command {
        return run_ui(args);
    }
    if cyberbackup_client::v4::cli::handles(&command) {
        let outcome = cyberbackup_client::v4::cli::run(command);
        for line in &outcome.stdout {
            println!("{line}");
        }
        for line in &outcome.stderr {
            eprintln!("{line}");
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
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut progress: Box<dyn ProgressSink> = if std::io::stderr().is_terminal() && !json {
        Box::new(BarProgress::new())
    } else {
        Box::new(LineProgress::new(std::io::stderr()))
    };
    let result = runtime.block_on(cli::execute(command, progress.as_mut()));
    drop(progress);
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
            eprintln!("CyberBackup UI: open http://{address}{suffix} (Ctrl-C to stop)");
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
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn print_human(result: &Result<BackupReport, ClientError>) {
    match result {
        Ok(report) => {
            for file in &report.files {
                println!("{}", file.summary());
            }
            let verified = report.files.iter().filter(|f| f.verified).count();
            println!(
                "{verified} of {} files backed up to {} (protocol {})",
                report.files.len(),
                report.server,
                report.protocol
            );
        }
        Err(err) => {
            // A fatal error after some files were settled: say which ones made it.
            if let Some(report) = err.partial_report() {
                for file in &report.files {
                    println!("{}", file.summary());
                }
            }
            eprintln!("error: {err}");
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
    println!("{value:#}");
}
