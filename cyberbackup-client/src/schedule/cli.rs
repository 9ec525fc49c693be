//! The scheduling commands: `daemon` (run the sources' backups when due, until stopped) and
//! `schedule add | list | remove | run | install`. They use the same data directory and
//! identity as the UI (`--data-dir`, `--identity`), so sources added in either are one list,
//! and the daemon backs up with the server settings saved in the UI unless `--server` and
//! `--name` are given. What to print goes to a [`Printer`] (only `main.rs` prints).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::install::{unit_text, user_unit_dir, write_unit};
use super::{Retention, RunResult, Schedule, ScheduleEvent, Scheduler, Source, SourceStatus};
use crate::error::{EXIT_OK, EXIT_USAGE};
use crate::identity::IdentityFile;
use crate::snapshot::cli::{EXIT_FATAL, Printer, Stream};
use crate::ui::store::Store;
use crate::v4::cli::{printable, table};
use crate::{ClientError, ui};

/// Where the client keeps its files (shared with `ui`).
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Directory of the UI history, the sources and the schedule state [default:
    /// $XDG_DATA_HOME/cyberbackup or ~/.local/share/cyberbackup].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Identity file [default: as for `upload`]; the v4 identity is `cyberbackup-v4.json`
    /// beside it.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

impl DataArgs {
    /// The data directory.
    ///
    /// # Errors
    /// [`ClientError::Usage`] when no default location exists.
    pub fn data_dir(&self) -> Result<PathBuf, ClientError> {
        match &self.data_dir {
            Some(dir) => Ok(dir.clone()),
            None => ui::UiOptions::default_data_dir(),
        }
    }

    /// The v3 identity file (the v4 one is beside it).
    ///
    /// # Errors
    /// [`ClientError::Usage`] when no default location exists.
    pub fn identity(&self) -> Result<IdentityFile, ClientError> {
        match &self.identity {
            Some(path) => Ok(IdentityFile::new(path)),
            None => IdentityFile::default_location(),
        }
    }
}

/// Server settings that replace the UI's saved ones.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Server address, HOST:PORT [default: the one saved in the UI].
    #[arg(long, value_name = "HOST:PORT", env = "CYBERBACKUP_SERVER")]
    pub server: Option<String>,
    /// Client name [default: the one saved in the UI].
    #[arg(long, env = "CYBERBACKUP_NAME")]
    pub name: Option<String>,
}

/// Arguments of `daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Data directory and identity.
    #[command(flatten)]
    pub data: DataArgs,
    /// Server settings.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Arguments of `schedule add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The source's name (letters, digits, '.', '_', '-'); an existing one is replaced.
    pub name: String,
    /// Absolute paths of the folders and files to back up.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// When: hourly, "every 15m" (or 90s, 2h), "daily 02:30" (local time), or login.
    #[arg(long, value_name = "WHEN")]
    pub schedule: Schedule,
    /// Exclude paths matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// After each backup keep the newest N snapshots of this source.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// … and the newest of each of the last N hours.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// … and the newest of each of the last N days.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// … and the newest of each of the last N weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// … and the newest of each of the last N months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// … and the newest of each of the last N years. No --keep-* flag: keep every snapshot.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Data directory and identity.
    #[command(flatten)]
    pub data: DataArgs,
}

/// Arguments of `schedule list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Data directory and identity.
    #[command(flatten)]
    pub data: DataArgs,
}

/// Arguments of `schedule remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The source's name.
    pub name: String,
    /// Data directory and identity.
    #[command(flatten)]
    pub data: DataArgs,
}

/// Arguments of `schedule pause` and `schedule resume`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// The source's name.
    pub name: String,
    /// Data directory and identity.
    #[command(flatten)]
    pub data: DataArgs,
}

/// Arguments of `schedule run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The source's name.
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// Data directory and identity.
    #[command(flatten)]
    pub data: DataArgs,
    /// Server settings.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Arguments of `schedule install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Print the unit instead of writing it.
    #[arg(long)]
    pub print: bool,
    /// Data directory and identity.
    #[command(flatten)]
    pub data: DataArgs,
}

/// `schedule` subcommands.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add (or replace) a source: folders, excludes, a schedule and a retention.
    Add(AddArgs),
    /// List the sources with their last and next run.
    List(ListArgs),
    /// Remove a source (its snapshots stay in the repository).
    Remove(RemoveArgs),
    /// Stop running a source on its schedule until `resume` (`run` still backs it up).
    Pause(PauseArgs),
    /// Run a paused source on its schedule again.
    Resume(PauseArgs),
    /// Back up a source now, in the foreground.
    Run(RunArgs),
    /// Write a systemd user unit that starts the daemon at login.
    Install(InstallArgs),
}

/// Runs `daemon` until Ctrl-C or SIGTERM; returns the exit code.
pub fn run_daemon(args: &DaemonArgs, print: &mut Printer<'_>) -> u8 {
    let (scheduler, mut lines) = match scheduler(&args.data, &args.server, print) {
        Ok(scheduler) => scheduler,
        Err(code) => return code,
    };
    let Some(runtime) = runtime(print) else {
        return EXIT_FATAL;
    };
    print(
        Stream::Stderr,
        &format!(
            "cyberbackup daemon: scheduling the sources of {} (Ctrl-C to stop)",
            scheduler.sources().path().display()
        ),
    );
    runtime.block_on(async {
        tokio::select! {
            () = scheduler.run(stopped()) => {}
            () = print_lines(&mut lines, print) => {}
        }
    });
    print(Stream::Stderr, "cyberbackup daemon: stopped");
    EXIT_OK
}

/// Runs a `schedule` subcommand; returns the exit code.
pub fn run_schedule(command: ScheduleCommand, print: &mut Printer<'_>) -> u8 {
    match execute(command, print) {
        Ok(code) => code,
        Err(message) => {
            print(Stream::Stderr, &format!("error: {message}"));
            EXIT_FATAL
        }
    }
}

fn execute(command: ScheduleCommand, print: &mut Printer<'_>) -> Result<u8, String> {
    let data_dir = |data: &DataArgs| data.data_dir().map_err(|err| err.to_string());
    match command {
        ScheduleCommand::Add(add) => {
            let retention = Retention {
                keep_last: add.keep_last,
                keep_hourly: add.keep_hourly,
                keep_daily: add.keep_daily,
                keep_weekly: add.keep_weekly,
                keep_monthly: add.keep_monthly,
                keep_yearly: add.keep_yearly,
            };
            let file = super::SourcesFile::in_dir(&data_dir(&add.data)?);
            // Replacing a source keeps when it was added and whether it is paused.
            let (added, paused) = file
                .load()?
                .into_iter()
                .find(|source| source.name == add.name)
                .map_or_else(|| (Timestamp::now(), false), |old| (old.added, old.paused));
            let source = Source {
                name: add.name,
                paths: add.paths,
                exclude: add.exclude,
                schedule: add.schedule,
                retention,
                added,
                paused,
            };
            let line = format!(
                "source {} saved: {} ({}), {}; the daemon (or the UI) runs it",
                source.name,
                source.schedule,
                source
                    .paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                source.retention
            );
            file.upsert(source)?;
            print(Stream::Stdout, &line);
            Ok(EXIT_OK)
        }
        ScheduleCommand::List(list) => {
            let scheduler = Scheduler::new(
                data_dir(&list.data)?,
                PathBuf::new(),
                Arc::new(|| Err(String::new())),
                Arc::new(|_| {}),
            );
            let statuses = scheduler.overview()?;
            if list.json {
                let json = serde_json::to_string_pretty(&statuses)
                    .map_err(|err| format!("cannot encode the sources: {err}"))?;
                print(Stream::Stdout, &json);
                return Ok(EXIT_OK);
            }
            let rows: Vec<Vec<String>> = statuses.iter().map(list_row).collect();
            for line in table(
                &[
                    "NAME",
                    "SCHEDULE",
                    "PATHS",
                    "RETENTION",
                    "LAST RUN",
                    "RESULT",
                    "NEXT RUN",
                ],
                &rows,
            ) {
                print(Stream::Stdout, &line);
            }
            print(Stream::Stdout, &format!("{} source(s)", statuses.len()));
            for status in &statuses {
                if let Some(message) = &status.state.message {
                    print(
                        Stream::Stdout,
                        &format!("{}: {}", status.source.name, printable(message)),
                    );
                }
            }
            Ok(EXIT_OK)
        }
        ScheduleCommand::Remove(remove) => {
            let dir = data_dir(&remove.data)?;
            if !super::SourcesFile::in_dir(&dir).remove(&remove.name)? {
                return Err(format!(
                    "there is no source named {:?} — `cyberbackup-client schedule list` shows the sources",
                    remove.name
                ));
            }
            super::StateFile::in_dir(&dir).remove(&remove.name)?;
            print(
                Stream::Stdout,
                &format!(
                    "source {} removed; its snapshots stay in the repository",
                    remove.name
                ),
            );
            Ok(EXIT_OK)
        }
        ScheduleCommand::Pause(PauseArgs { name, data }) => {
            set_paused(&data_dir(&data)?, &name, true, print)
        }
        ScheduleCommand::Resume(PauseArgs { name, data }) => {
            set_paused(&data_dir(&data)?, &name, false, print)
        }
        ScheduleCommand::Run(run) => {
            let (scheduler, mut lines) = scheduler(&run.data, &run.server, print)
                .map_err(|_| "cannot find the data directory (see above)".to_owned())?;
            let runtime = runtime(print).ok_or("cannot start the async runtime")?;
            let state = runtime.block_on(async {
                let backup = async move {
                    let state = tokio::select! {
                        state = scheduler.run_now(&run.source) => Some(state),
                        () = stopped() => None,
                    };
                    // Ends the printing below once the last line is out.
                    drop(scheduler);
                    state
                };
                tokio::join!(backup, print_lines(&mut lines, print)).0
            });
            match state {
                None => Err("interrupted: no snapshot was saved".into()),
                Some(Err(message)) => Err(message),
                Some(Ok(state)) => Ok(match state.last_result {
                    Some(RunResult::Succeeded) => EXIT_OK,
                    Some(RunResult::Partial) => crate::snapshot::EXIT_PARTIAL,
                    _ => EXIT_FATAL,
                }),
            }
        }
        ScheduleCommand::Install(install) => {
            let dir = data_dir(&install.data)?;
            let identity = install.data.identity().map_err(|err| err.to_string())?;
            let exe = std::env::current_exe()
                .map_err(|err| format!("cannot find this program's path for the unit: {err}"))?;
            let absolute = |path: PathBuf| {
                std::path::absolute(&path)
                    .unwrap_or(path)
                    .display()
                    .to_string()
            };
            let args = [
                "daemon".to_owned(),
                "--data-dir".to_owned(),
                absolute(dir),
                "--identity".to_owned(),
                absolute(identity.path().to_path_buf()),
            ];
            let text = unit_text(&exe, &args);
            if install.print {
                for line in text.lines() {
                    print(Stream::Stdout, line);
                }
                return Ok(EXIT_OK);
            }
            let path = write_unit(&user_unit_dir()?, &text)?;
            print(Stream::Stdout, &format!("wrote {}", path.display()));
            print(
                Stream::Stdout,
                &format!(
                    "start it now and at every login with: systemctl --user daemon-reload && systemctl --user enable --now {}",
                    super::install::UNIT_NAME
                ),
            );
            Ok(EXIT_OK)
        }
    }
}

/// `schedule pause` and `schedule resume`.
fn set_paused(
    data_dir: &std::path::Path,
    name: &str,
    paused: bool,
    print: &mut Printer<'_>,
) -> Result<u8, String> {
    if !super::SourcesFile::in_dir(data_dir).set_paused(name, paused)? {
        return Err(format!(
            "there is no source named {name:?} — `cyberbackup-client schedule list` shows the sources"
        ));
    }
    let line = if paused {
        format!(
            "source {name} paused: it does not run on its schedule until `schedule resume {name}`"
        )
    } else {
        format!("source {name} resumed: it runs on its schedule again (a missed slot runs at once)")
    };
    print(Stream::Stdout, &line);
    Ok(EXIT_OK)
}

/// One `schedule list` row.
fn list_row(status: &SourceStatus) -> Vec<String> {
    let source = &status.source;
    let state = &status.state;
    let result = if status.running {
        "running".to_owned()
    } else {
        match state.last_result {
            Some(RunResult::Succeeded) => "ok".to_owned(),
            Some(RunResult::Partial) => "partial".to_owned(),
            Some(RunResult::Failed) => "failed".to_owned(),
            None => "-".to_owned(),
        }
    };
    vec![
        source.name.clone(),
        source.schedule.to_string(),
        printable(
            &source
                .paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        source.retention.to_string(),
        state
            .last_attempt
            .map_or_else(|| "never".to_owned(), local_time),
        result,
        match status.next_run {
            Some(next) => local_time(next),
            None if source.paused => "paused".to_owned(),
            None => "next login".to_owned(),
        },
    ]
}

/// `YYYY-MM-DD HH:MM` in this machine's time zone.
fn local_time(time: Timestamp) -> String {
    let tz = TimeZone::try_system().unwrap_or(TimeZone::UTC);
    tz.to_datetime(time).strftime("%Y-%m-%d %H:%M").to_string()
}

/// Prints the daemon's lines as they come, until every sender is gone.
async fn print_lines(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    print: &mut Printer<'_>,
) {
    while let Some(line) = lines.recv().await {
        print(Stream::Stderr, &line);
    }
}

/// The scheduler these arguments describe, with the lines its events print.
fn scheduler(
    data: &DataArgs,
    server: &ServerArgs,
    print: &mut Printer<'_>,
) -> Result<(Scheduler, tokio::sync::mpsc::UnboundedReceiver<String>), u8> {
    let paths = data.data_dir().and_then(|dir| Ok((dir, data.identity()?)));
    let (data_dir, identity) = match paths {
        Ok(paths) => paths,
        Err(err) => {
            print(Stream::Stderr, &format!("error: {err}"));
            return Err(EXIT_USAGE);
        }
    };
    let store = Store::new(data_dir.join(ui::STORE_FILE));
    let overrides = server.clone();
    let settings: super::SettingsSource = Arc::new(move || {
        let mut settings = store.load()?.settings;
        if let Some(server) = &overrides.server {
            settings.server.clone_from(server);
        }
        if let Some(name) = &overrides.name {
            settings.name.clone_from(name);
        }
        Ok(settings)
    });
    let (sender, lines) = tokio::sync::mpsc::unbounded_channel();
    let events: super::EventSink = Arc::new(move |event| {
        if let Some(line) = event_line(event) {
            let _ignored = sender.send(line);
        }
    });
    let scheduler = Scheduler::new(
        data_dir,
        crate::v4::identity_beside(identity.path()),
        settings,
        events,
    );
    Ok((scheduler, lines))
}

/// The line the daemon prints for an event (progress is not printed).
#[must_use]
pub fn event_line(event: &ScheduleEvent) -> Option<String> {
    let now = local_time(Timestamp::now());
    Some(match event {
        ScheduleEvent::Started { source } => format!("{now} {source}: backup started"),
        ScheduleEvent::Progress { .. } => return None,
        ScheduleEvent::Finished {
            source,
            result,
            message,
        } => {
            let how = match result {
                RunResult::Succeeded => "done",
                RunResult::Partial => "done, partial",
                RunResult::Failed => "failed",
            };
            format!("{now} {source}: {how}: {message}")
        }
        ScheduleEvent::Skipped { source, reason } => format!("{now} {source}: skipped: {reason}"),
        ScheduleEvent::Problem { message } => format!("{now} error: {message}"),
    })
}

fn runtime(print: &mut Printer<'_>) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(err) => {
            print(
                Stream::Stderr,
                &format!("error: cannot start the async runtime: {err}"),
            );
            None
        }
    }
}

/// Completes at Ctrl-C or SIGTERM (what `systemctl stop` sends).
async fn stopped() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
