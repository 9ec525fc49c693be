//! `cyberbackup-server` binary: parses the command line, loads the configuration and calls the
//! library. The only place that prints.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use cyberbackup_server::admin;
use cyberbackup_server::backend::copy::copy_all;
use cyberbackup_server::catalog::v4::SetRoleOutcome;
use cyberbackup_server::catalog::{
    Catalog, CatalogError, CatalogLocation, Engine, FileFilter, integrity, rebuild,
};
use cyberbackup_server::check::run_checks;
use cyberbackup_server::cli::{
    CatalogCommand, Cli, Command, DevicesCommand, EnrollArgs, FilesArgs, ScrubArgs, SetRoleArgs,
    StorageCommand,
};
use cyberbackup_server::config::{ENV_PREFIX, LoadedConfig, ServerConfig};
use cyberbackup_server::repository::{REPOSITORY_DIR, RepoStoreError};
use cyberbackup_server::{ServerError, telemetry};

/// glibc malloc arenas the server uses (glibc's default is 8 per core).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 2;

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`], unless the operator chose a setting
/// (`MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` in the environment). With the default, each of the
/// many threads that handle connections and blocking file work could get its own arena, and
/// freed transfer buffers stayed spread over them: in the 1,000-client soak the RSS kept
/// the memory of each new peak and climbed from ~220 to ~300 MiB in 10 minutes; with 2
/// arenas it peaks at ~160 MiB and stays there (docs/benchmarks.md, "Soak").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    let chosen = ["MALLOC_ARENA_MAX", "GLIBC_TUNABLES"];
    if chosen.iter().any(|var| std::env::var_os(var).is_some()) {
        return;
    }
    // SAFETY: `mallopt` takes and returns plain integers (no pointer, no memory handed
    // over) and glibc serialises it with its own malloc lock, so any call is sound; it runs
    // here first thing in `main`, before any thread exists. A refusal (return 0) only
    // leaves glibc's default in place.
    let accepted = unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
    if accepted == 0 {
        eprintln!("warning: glibc refused M_ARENA_MAX={MALLOC_ARENAS}; keeping its default");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

/// How often [`start_malloc_trimmer`] returns free heap pages to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts a thread that calls `malloc_trim(0)` every [`MALLOC_TRIM_INTERVAL`]. glibc keeps
/// freed memory in its arenas, so without it the RSS stays at the highest load seen (in the
/// soak, each new burst of concurrent transfers raised it for good while the bytes in use
/// went back down); trimming lets the RSS follow what is in use.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn start_malloc_trimmer() {
    let trimmer = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(MALLOC_TRIM_INTERVAL);
                // SAFETY: `malloc_trim` takes and returns plain integers (no pointer, no
                // memory handed over) and glibc locks each arena while it trims it, so it is
                // sound from any thread at any time; it only releases pages malloc holds free.
                let _released = unsafe { libc::malloc_trim(0) };
            }
        });
    if let Err(err) = trimmer {
        eprintln!("warning: cannot start the malloc-trim thread ({err}); memory is not trimmed");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn start_malloc_trimmer() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    start_malloc_trimmer();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&ServerError::io("cannot start the tokio runtime", e)),
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode, ServerError> {
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    let cwd = std::env::current_dir()
        .map_err(|e| ServerError::io("cannot read the working directory", e))?;
    let LoadedConfig {
        config,
        file,
        warnings,
    } = ServerConfig::load(&cli.overrides, cli.config.as_deref(), &env, &cwd)?;

    if cli.print_config {
        print!("{}", config.to_toml()?);
        return Ok(ExitCode::SUCCESS);
    }
    if cli.check {
        for warning in &warnings {
            println!("warn  {warning}");
        }
        let report = run_checks(&config).await;
        print!("{report}");
        return Ok(if report.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            telemetry::init(config.log_format)?;
            if let Some(file) = &file {
                tracing::info!(file = %file.display(), "configuration file loaded");
            }
            for warning in &warnings {
                tracing::warn!("{warning}");
            }
            cyberbackup_server::run(config).await?;
        }
        Command::Clients => {
            let catalog = open_existing(&config).await?;
            let mut out = std::io::stdout().lock();
            admin::write_clients(&catalog, &mut out).await?;
            out.flush()
                .map_err(|e| ServerError::io("cannot write to stdout", e))?;
        }
        Command::Files(FilesArgs {
            client,
            contains,
            all,
            csv,
        }) => {
            let catalog = open_existing(&config).await?;
            let filter = FileFilter {
                client_name: client.map(String::into_bytes),
                name_contains: contains.map(String::into_bytes),
                include_discarded: all,
                ..FileFilter::default()
            };
            let mut out = std::io::stdout().lock();
            admin::write_files(&catalog, filter, csv, &mut out).await?;
            out.flush()
                .map_err(|e| ServerError::io("cannot write to stdout", e))?;
        }
        Command::Enroll(EnrollArgs { client, ttl_secs }) => {
            let catalog = integrity::open_checked(&config).await?;
            let ttl = std::time::Duration::from_secs(ttl_secs);
            let owner = match &client {
                None => None,
                Some(name) => {
                    let found = catalog
                        .list_devices()
                        .await?
                        .into_iter()
                        .find(|d| d.client_name == name.as_bytes());
                    let Some(device) = found else {
                        return Err(ServerError::io(
                            format!(
                                "no v4 client is registered as {name:?} — `cyberbackup-server devices list` shows the names"
                            ),
                            std::io::Error::from(std::io::ErrorKind::NotFound),
                        ));
                    };
                    Some(device.client_id)
                }
            };
            let (token, expires) = cyberbackup_server::v4::enroll(&catalog, ttl, owner).await?;
            catalog.close().await?;
            println!("{token}");
            match client {
                None => eprintln!(
                    "single-use enrollment token, valid until {expires}; give it to the new client: cyberbackup-client backup DIR --server HOST:PORT --name NAME --enroll-token {token}"
                ),
                Some(name) => eprintln!(
                    "single-use token enrolling a new device of {name:?}, valid until {expires}; on the new machine: cyberbackup-client recover --server HOST:PORT --name {name} --enroll-token {token} (it asks for the repository passphrase)"
                ),
            }
        }
        Command::Fingerprint => {
            // The catalog exists whenever the key does: a key without a catalog means a lost one.
            integrity::open_checked(&config).await?.close().await?;
            let (fingerprint, path) = cyberbackup_server::v4::server_fingerprint(&config)?;
            println!("{fingerprint}");
            eprintln!("v4 server key: {}", path.display());
        }
        Command::Devices(DevicesCommand::List) => {
            let catalog = open_existing(&config).await?;
            let mut out = std::io::stdout().lock();
            admin::write_devices(&catalog, &mut out).await?;
            out.flush()
                .map_err(|e| ServerError::io("cannot write to stdout", e))?;
        }
        Command::Devices(DevicesCommand::SetRole(SetRoleArgs { name, device, role })) => {
            let catalog = open_existing(&config).await?;
            let outcome = catalog
                .set_device_role(name.clone().into_bytes(), device, role)
                .await?;
            catalog.close().await?;
            let problem = match outcome {
                SetRoleOutcome::Set(_) => {
                    println!("{name}: {role}");
                    return Ok(ExitCode::SUCCESS);
                }
                SetRoleOutcome::NoSuchClient => format!(
                    "no device is registered as {name:?} — `cyberbackup-server devices list` shows the names"
                ),
                SetRoleOutcome::NoSuchDevice => format!(
                    "{name:?} has no device whose fingerprint starts that way — `cyberbackup-server devices list` shows them"
                ),
                SetRoleOutcome::Ambiguous(devices) => format!(
                    "{name:?} has {} devices; name one with --device FINGERPRINT (a prefix is enough): {}",
                    devices.len(),
                    devices.join(", ")
                ),
            };
            return Err(ServerError::io(
                problem,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        Command::Catalog(CatalogCommand::Backup { file }) => {
            let path = sqlite_catalog(
                &config,
                "catalog backup",
                "back it up with pg_dump (docs/deployment.md, \"Backing up the catalog\")",
            )?;
            if !path.is_file() {
                return Err(no_catalog(&path));
            }
            let report = cyberbackup_server::catalog::backup::backup(path, file).await?;
            println!(
                "catalog backed up to {} ({} bytes, schema version {})",
                report.path.display(),
                report.bytes,
                report.schema_version
            );
        }
        Command::Storage(StorageCommand::Copy { to_config }) => {
            let target = cyberbackup_server::config::storage_of_file(&to_config)?;
            let (from, to) = (
                config.storage.describe(&config.data_dir, REPOSITORY_DIR),
                target.describe(&config.data_dir, REPOSITORY_DIR),
            );
            if from == to {
                return Err(ServerError::io(
                    format!(
                        "{} is this server's storage already ({from}) — name a config file whose [storage] is the target",
                        to_config.display()
                    ),
                    std::io::Error::from(std::io::ErrorKind::InvalidInput),
                ));
            }
            let storage_err = |e| ServerError::from(RepoStoreError::from(e));
            let source = config
                .storage
                .open(&config.data_dir, REPOSITORY_DIR)
                .map_err(storage_err)?;
            let sink = target
                .open(&config.data_dir, REPOSITORY_DIR)
                .map_err(storage_err)?;
            eprintln!("copying repository objects from {from} to {to}");
            let report = copy_all(source, sink, |report| {
                let done = report.copied + report.skipped;
                if done % 100 == 0 {
                    eprintln!(
                        "  {done} objects ({} copied, {} bytes)",
                        report.copied, report.bytes
                    );
                }
            })
            .await
            .map_err(storage_err)?;
            println!(
                "copied {} objects ({} bytes), {} already there; point [storage] of the server's config at {to} and start it",
                report.copied, report.bytes, report.skipped
            );
        }
        Command::Catalog(CatalogCommand::Copy { to }) => {
            let from = config.catalog_location();
            if let CatalogLocation::Sqlite(path) = &from {
                if !path.is_file() {
                    return Err(no_catalog(path));
                }
            }
            if from == to {
                return Err(ServerError::io(
                    format!(
                        "catalog copy: {to} is this server's own catalog — give another one with --to"
                    ),
                    std::io::Error::from(std::io::ErrorKind::InvalidInput),
                ));
            }
            let report = cyberbackup_server::catalog::copy::copy(from, to.clone()).await?;
            print!("{report}");
            println!(
                "catalog copied to {to}; set catalog = \"{to}\" (with its password) and start the server"
            );
        }
        Command::Catalog(CatalogCommand::Rebuild) => {
            let report = rebuild::rebuild(&config).await?;
            print!("{report}");
        }
        Command::Scrub(ScrubArgs { client, rate }) => {
            let (report, corrupt) =
                cyberbackup_server::scrub::scrub_now(&config, client.as_deref(), rate).await?;
            let mut out = std::io::stdout().lock();
            cyberbackup_server::scrub::write_summary(&report, &corrupt, &mut out)
                .and_then(|()| out.flush())
                .map_err(|e| ServerError::io("cannot write to stdout", e))?;
            if !corrupt.is_empty() {
                return Ok(ExitCode::from(3));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the catalog for an admin command without creating one in a mistyped directory
/// (a PostgreSQL catalog is opened as configured).
async fn open_existing(config: &ServerConfig) -> Result<Catalog, ServerError> {
    let location = config.catalog_location();
    if let CatalogLocation::Sqlite(path) = &location {
        if !path.is_file() {
            return Err(no_catalog(path));
        }
    }
    Ok(Catalog::open_at(location).await?)
}

/// The SQLite file of the catalog, for a command only a SQLite catalog has.
fn sqlite_catalog(
    config: &ServerConfig,
    what: &'static str,
    instead: &'static str,
) -> Result<std::path::PathBuf, ServerError> {
    match config.catalog_location() {
        CatalogLocation::Sqlite(path) => Ok(path),
        CatalogLocation::Postgres(_) => Err(CatalogError::Unsupported {
            what,
            engine: Engine::Postgres,
            instead,
        }
        .into()),
    }
}

/// The error of an admin command pointed at a data directory without a catalog.
fn no_catalog(path: &std::path::Path) -> ServerError {
    ServerError::io(
        format!(
            "no catalog at {} — check --data-dir / CYBERBACKUP_DATA_DIR",
            path.display()
        ),
        std::io::Error::from(std::io::ErrorKind::NotFound),
    )
}

fn fail(error: &ServerError) -> ExitCode {
    // Our messages already embed their cause; printing the chain would repeat it.
    eprintln!("error: {error}");
    ExitCode::from(error.exit_code())
}
