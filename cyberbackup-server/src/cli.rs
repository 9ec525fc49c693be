//! Command-line interface (clap derive). Every configuration key is also a flag; see
//! `docs/operations.md`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::ConfigOverrides;

/// CyberBackup reference server.
#[derive(Debug, Parser)]
#[command(name = "cyberbackup-server", version, about)]
pub struct Cli {
    /// TOML config file [default: ./cyberbackup-server.toml if present; env CYBERBACKUP_CONFIG]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Settings that override the config file and the environment.
    #[command(flatten)]
    pub overrides: ConfigOverrides,
    /// Run the start-up checks, print the results and exit (0 = all passed, 1 = some failed).
    #[arg(long, conflicts_with = "print_config")]
    pub check: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// What to do (default: run the server).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Run,
    /// List registered clients.
    Clients,
    /// List stored files.
    Files(FilesArgs),
    /// Issue a single-use enrollment token for a v4 client registration.
    Enroll(EnrollArgs),
    /// Print the fingerprint of the v4 server key (creating the key if needed).
    Fingerprint,
    /// Catalog maintenance (`catalog backup`, `catalog rebuild`).
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Devices (registered client keys) and their roles (`devices list`, `devices set-role`).
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Storage backend maintenance (`storage copy`).
    #[command(subcommand)]
    Storage(StorageCommand),
    /// Run one full scrub cycle now (unthrottled unless --rate is given) and print what it
    /// found; safe while the server runs.
    Scrub(ScrubArgs),
}

/// Subcommands of `devices`.
#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List every v4 device: its client, fingerprint, role and when it was added.
    List,
    /// Set a device's role: `append-only` (back up and restore, never forget) or `manage`
    /// (may also forget snapshots). Applies at once, also to open connections.
    SetRole(SetRoleArgs),
}

/// Arguments of `devices set-role`.
#[derive(Debug, Args)]
pub struct SetRoleArgs {
    /// The client's registered name.
    pub name: String,
    /// Which of its devices (a prefix of the fingerprint `devices list` shows); needed when
    /// it has more than one.
    #[arg(long, value_name = "FINGERPRINT")]
    pub device: Option<String>,
    /// The new role.
    #[arg(value_enum)]
    pub role: crate::catalog::DeviceRole,
}

/// Arguments of `scrub`.
#[derive(Debug, Args)]
pub struct ScrubArgs {
    /// Only the objects of the client with this name.
    #[arg(long, value_name = "NAME")]
    pub client: Option<String>,
    /// Read at most this many bytes per second (default: as fast as the disk allows).
    #[arg(long, value_name = "BYTES")]
    pub rate: Option<u64>,
}

/// Subcommands of `catalog`.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the catalog from the stored files (server stopped): the old catalog is moved
    /// aside, every stored file is registered again as a verified version of its client, with
    /// its hashes recomputed.
    Rebuild,
    /// Write a consistent copy of the catalog to FILE (mode 0600; never over an existing
    /// file), safe while the server runs: SQLite's online backup.
    Backup {
        /// Where to write the copy.
        file: PathBuf,
    },
    /// Copy every row of this server's catalog into another, empty one (server stopped),
    /// e.g. the data directory's SQLite file into PostgreSQL; then set `catalog` to it.
    /// Nothing is committed unless the whole copy succeeds.
    Copy {
        /// The target: postgres://USER:PASSWORD@HOST:PORT/DB or sqlite:PATH.
        #[arg(long, value_name = "URL")]
        to: crate::catalog::CatalogLocation,
    },
}

/// Subcommands of `storage`.
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Copy every repository object from this server's `[storage]` backend into the
    /// `[storage]` backend of another config file (e.g. from the data directory into an S3
    /// bucket), checking every object's hash; objects already there are skipped, so an
    /// interrupted copy is resumed by running it again. Stop the server first, then point
    /// its config at the new backend.
    Copy {
        /// The config file whose `[storage]` table is the target.
        #[arg(long, value_name = "FILE")]
        to_config: PathBuf,
    },
}

/// Arguments of `enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Enroll a new device of this existing client (a new or replaced machine of the same
    /// account, which then recovers its repository with the passphrase) instead of a new
    /// client.
    #[arg(long, value_name = "NAME")]
    pub client: Option<String>,
    /// Seconds the token stays valid.
    #[arg(long, value_name = "SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl_secs: u64,
}

/// Arguments of `files`.
#[derive(Debug, Args)]
pub struct FilesArgs {
    /// Only files of the client with this name.
    #[arg(long, value_name = "NAME")]
    pub client: Option<String>,
    /// Only file names containing this text.
    #[arg(long, value_name = "TEXT")]
    pub contains: Option<String>,
    /// Also list discarded transfers.
    #[arg(long)]
    pub all: bool,
    /// Write CSV instead of a table.
    #[arg(long)]
    pub csv: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_parse_before_and_after_subcommands() {
        let cli = Cli::try_parse_from([
            "cyberbackup-server",
            "--port",
            "4000",
            "files",
            "--client",
            "alice",
            "--csv",
            "--data-dir",
            "/srv/cb",
        ])
        .unwrap();

        assert_eq!(cli.overrides.port, Some(4000));
        assert_eq!(cli.overrides.data_dir, Some(PathBuf::from("/srv/cb")));
        let Some(Command::Files(files)) = cli.command else {
            panic!("expected files subcommand");
        };
        assert_eq!(files.client.as_deref(), Some("alice"));
        assert!(files.csv);
    }

    #[test]
    fn catalog_rebuild_parses_with_the_data_dir() {
        let cli = Cli::try_parse_from([
            "cyberbackup-server",
            "catalog",
            "rebuild",
            "--data-dir",
            "/srv/cb",
        ])
        .unwrap();

        assert!(matches!(
            cli.command,
            Some(Command::Catalog(CatalogCommand::Rebuild))
        ));
        assert_eq!(cli.overrides.data_dir, Some(PathBuf::from("/srv/cb")));
    }

    #[test]
    fn scrub_parses_its_client_and_rate() {
        let cli = Cli::try_parse_from([
            "cyberbackup-server",
            "scrub",
            "--client",
            "bob",
            "--rate",
            "1000",
        ])
        .unwrap();

        let Some(Command::Scrub(scrub)) = cli.command else {
            panic!("expected the scrub subcommand");
        };
        assert_eq!(scrub.client.as_deref(), Some("bob"));
        assert_eq!(scrub.rate, Some(1000));
    }

    #[test]
    fn port_zero_is_rejected() {
        let result = Cli::try_parse_from(["cyberbackup-server", "--port", "0"]);

        assert!(result.is_err());
    }
}
