//! `ServerConfig`: defaults < TOML file < `CYBERBACKUP_*` environment < command-line flags,
//! plus the legacy `port.info`.
//!
//! The port comes from the first of: `--port`, `CYBERBACKUP_PORT`, `port` in the file,
//! `port.info` in the working directory (one integer 1–65535, surrounding whitespace allowed),
//! and finally 1256 (with a warning when `port.info` is missing or invalid), as the v3 spec
//! requires.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use cyberbackup_core::repo::retention::{KeepWithin, RetentionPolicy};

use crate::backend::config::StorageConfig;
use crate::catalog::{CatalogLocation, DeviceRole};
use crate::repository::{QuotaLimits, Quotas, RetentionPolicies};

/// File name of the catalog inside the data directory.
pub const CATALOG_FILE_NAME: &str = "defensive.db";

/// Port used when neither configuration nor `port.info` gives one.
pub const DEFAULT_PORT: u16 = 1256;
/// Name of the legacy port file, read from the working directory.
pub const PORT_INFO_FILE: &str = "port.info";
/// Config file read from the working directory when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "cyberbackup-server.toml";
/// Prefix of the environment variables.
pub const ENV_PREFIX: &str = "CYBERBACKUP_";
/// Environment variable naming the config file (like `--config`).
pub const ENV_CONFIG: &str = "CYBERBACKUP_CONFIG";
/// The admin API token. `Debug` and `--print-config` never show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct AdminToken(String);

impl AdminToken {
    /// Wraps a token.
    #[must_use]
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token text (compare it in constant time).
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl Serialize for AdminToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

impl FromStr for AdminToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("the admin token must not be empty".into());
        }
        Ok(Self(s.to_owned()))
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected \"text\" or \"json\"".into()),
        }
    }
}

/// Errors while loading or validating configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error(
        "cannot read config file {path}: {source} — check the path given with --config or CYBERBACKUP_CONFIG"
    )]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this server.
    #[error("invalid config file {path}: {source}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// Parser error (with line and column).
        #[source]
        source: toml::de::Error,
    },
    /// An environment variable does not parse.
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    Env {
        /// Variable name.
        var: String,
        /// Its value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A setting has an unusable value.
    #[error("invalid setting {key}: {reason}")]
    Invalid {
        /// Config key.
        key: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The effective configuration cannot be written as TOML.
    #[error("cannot print configuration: {0}")]
    Serialize(#[source] toml::ser::Error),
}

/// The effective server configuration. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: IpAddr,
    /// TCP port.
    pub port: u16,
    /// Directory holding `defensive.db` and `files/`.
    pub data_dir: PathBuf,
    /// Concurrent connections accepted; more wait in the backlog.
    pub max_connections: u32,
    /// Seconds a connection may stay idle between requests.
    pub idle_timeout_secs: u64,
    /// Seconds allowed to receive one request once it started.
    pub read_timeout_secs: u64,
    /// Seconds running transfers get to finish on shutdown.
    pub shutdown_grace_secs: u64,
    /// Verified versions kept per client file (≥ 1; older ones are `<name>.~<version>~`).
    pub keep_versions: u32,
    /// Seconds between maintenance runs.
    pub maintenance_interval_secs: u64,
    /// Seconds after which an unfinished transfer is discarded.
    pub abandoned_after_secs: u64,
    /// Free space (MiB) below which the server refuses to start and new files.
    pub min_free_disk_mb: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// Largest accepted file (plaintext bytes).
    pub max_file_size: u64,
    /// Registrations (1025) accepted per source IP per minute; 0 disables the limit.
    pub registrations_per_minute: u32,
    /// Whether the admin HTTP listener (dashboard, API, health, metrics) runs.
    pub admin_enabled: bool,
    /// Address of the admin HTTP listener.
    pub admin_listen: SocketAddr,
    /// Token required by the admin listener; mandatory when `admin_listen` is not loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<AdminToken>,
    /// Host names (without port) the admin listener answers besides `localhost` and IP
    /// addresses, e.g. the public name of a reverse proxy in front of it.
    pub admin_hosts: Vec<String>,
    /// Accept the legacy v3 protocol (insecure; a warning is logged at start-up while true).
    pub legacy_v3: bool,
    /// File holding the v4 server key (default: `<data_dir>/server-v4.key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_key_file: Option<PathBuf>,
    /// v4 registration needs a token from `cyberbackup-server enroll`.
    pub enrollment_required: bool,
    /// Bytes between durable checkpoints of a v4 upload (resume points).
    pub checkpoint_interval_bytes: u64,
    /// Start even when the catalog fails `PRAGMA quick_check` (the operator accepts the risk).
    pub allow_damaged_catalog: bool,
    /// Where the catalog is: `sqlite:PATH` or a `postgres://` URL (default: the SQLite file
    /// in the data directory). Printed without its password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogLocation>,
    /// Registrations (v3 and v4) accepted per minute from all addresses together; 0 disables.
    pub registrations_per_minute_total: u32,
    /// v3 files that may fail to decrypt per client id per hour before its uploads are refused.
    pub v3_failed_files_per_hour: u32,
    /// Concurrent connections accepted from one source address (IPv6: one /64); more are
    /// closed at once, so one address cannot take every slot.
    pub max_connections_per_address: u32,
    /// Seconds between prunes of every snapshot repository; 0 disables the scheduled prune.
    pub prune_interval_secs: u64,
    /// Seconds an unreferenced blob stays claimable before a prune deletes it (and the age a
    /// pack must reach before its blobs can be condemned): longer than the longest backup.
    pub prune_grace_secs: u64,
    /// A prune rewrites packs whose live bytes are below this percentage of their size
    /// (0 never repacks).
    pub repack_below_percent: u8,
    /// Role of a newly registered v4 device (`append-only` cannot forget snapshots).
    pub default_device_role: DeviceRole,

    /// Bytes per second the scrub reads stored objects back at; 0 disables the scrub.
    pub scrub_bytes_per_sec: u64,
    /// Seconds from the start of one scrub cycle to the start of the next.
    pub scrub_interval_secs: u64,
    /// An account whose last backup is older than this many seconds is shown `warn`.
    pub backup_warn_after_secs: u64,
    /// An account whose last backup is older than this many seconds is shown `alert`.
    pub backup_alert_after_secs: u64,
    /// Stored repository bytes per client above which its backups warn; 0 = none.
    pub quota_soft_bytes: u64,
    /// Stored repository bytes per client a pack may not take it above; 0 = none.
    pub quota_hard_bytes: u64,
    /// Quotas by client name, overriding `quota_soft_bytes` / `quota_hard_bytes` (file only:
    /// `[client_quotas.NAME]` tables).
    pub client_quotas: BTreeMap<String, ClientQuota>,
    /// The retention policy the scheduled prune applies to every repository (file only:
    /// the `[retention]` table; empty: keep everything).
    pub retention: RetentionConfig,
    /// Per-client policies by client name, replacing `retention` (file only:
    /// `[client_retention.NAME]` tables; an empty table keeps everything for that client).
    pub client_retention: BTreeMap<String, RetentionConfig>,
    /// Where the snapshot repositories' objects live (file only: the `[storage]` table;
    /// default: `<data_dir>/repository`).
    pub storage: StorageConfig,
}

/// A retention policy as the config writes it (restic's `forget` vocabulary). Snapshots
/// are grouped by host and paths (the envelope's keyed group) and counted in UTC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Keep the newest N snapshots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    /// … days.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// … ISO weeks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// … months.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// … years.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot within this of the newest (`30d`, `1y6m`, `2w`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<String>,
}

impl RetentionConfig {
    /// The engine's policy; `None` when no rule is set (keep everything).
    ///
    /// # Errors
    /// The rule that is wrong, in words.
    pub fn policy(&self) -> Result<Option<RetentionPolicy>, String> {
        let keep_within = self
            .keep_within
            .as_deref()
            .map(str::parse::<KeepWithin>)
            .transpose()
            .map_err(|e| e.to_string())?;
        let policy = RetentionPolicy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within,
            ..RetentionPolicy::default()
        };
        if policy.is_empty() {
            return Ok(None);
        }
        policy.validate().map_err(|e| e.to_string())?;
        Ok(Some(policy))
    }
}

/// One client's quotas in `[client_quotas.NAME]`; a key not given falls back to
/// `quota_soft_bytes` / `quota_hard_bytes`, and 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientQuota {
    /// Soft quota in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_bytes: Option<u64>,
    /// Hard quota in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hard_bytes: Option<u64>,
}

/// Default scrub rate: 16 MiB/s reads 1 TiB in about 18 hours, a small share of a disk.
pub const DEFAULT_SCRUB_BYTES_PER_SEC: u64 = 16 * 1024 * 1024;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: DEFAULT_PORT,
            data_dir: PathBuf::from("./data"),
            max_connections: 1024,
            idle_timeout_secs: 60,
            read_timeout_secs: 30,
            shutdown_grace_secs: 30,
            keep_versions: 10,
            maintenance_interval_secs: 300,
            abandoned_after_secs: 3600,
            min_free_disk_mb: 100,
            log_format: LogFormat::Text,
            max_file_size: 4 * 1024 * 1024 * 1024,
            registrations_per_minute: 30,
            admin_enabled: true,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            admin_token: None,
            admin_hosts: Vec::new(),
            legacy_v3: true,
            identity_key_file: None,
            enrollment_required: false,
            checkpoint_interval_bytes: 8 * 1024 * 1024,
            allow_damaged_catalog: false,
            catalog: None,
            registrations_per_minute_total: 300,
            v3_failed_files_per_hour: 5,
            max_connections_per_address: 256,
            prune_interval_secs: 86_400,
            prune_grace_secs: 86_400,
            repack_below_percent: 50,
            default_device_role: DeviceRole::AppendOnly,
            scrub_bytes_per_sec: DEFAULT_SCRUB_BYTES_PER_SEC,
            scrub_interval_secs: 86_400,
            backup_warn_after_secs: 26 * 3600,
            backup_alert_after_secs: 72 * 3600,
            quota_soft_bytes: 0,
            quota_hard_bytes: 0,
            client_quotas: BTreeMap::new(),
            retention: RetentionConfig::default(),
            client_retention: BTreeMap::new(),
            storage: StorageConfig::Local,
        }
    }
}

/// One layer of settings (file, environment or flags); `None` = not set in this layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ConfigOverrides {
    /// Address to listen on [default: 0.0.0.0]
    #[arg(long, global = true, value_name = "IP")]
    pub listen: Option<IpAddr>,
    /// TCP port [default: port.info, else 1256]
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Data directory (catalog and files) [default: ./data]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Maximum concurrent connections [default: 1024]
    #[arg(long, global = true, value_name = "N")]
    pub max_connections: Option<u32>,
    /// Idle timeout in seconds [default: 60]
    #[arg(long, global = true, value_name = "SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Per-request read timeout in seconds [default: 30]
    #[arg(long, global = true, value_name = "SECS")]
    pub read_timeout_secs: Option<u64>,
    /// Shutdown grace period in seconds [default: 30]
    #[arg(long, global = true, value_name = "SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Verified versions kept per file [default: 10]
    #[arg(long, global = true, value_name = "N")]
    pub keep_versions: Option<u32>,
    /// Seconds between maintenance runs [default: 300]
    #[arg(long, global = true, value_name = "SECS")]
    pub maintenance_interval_secs: Option<u64>,
    /// Seconds before an unfinished transfer is discarded [default: 3600]
    #[arg(long, global = true, value_name = "SECS")]
    pub abandoned_after_secs: Option<u64>,
    /// Minimum free disk space in MiB [default: 100]
    #[arg(long, global = true, value_name = "MIB")]
    pub min_free_disk_mb: Option<u64>,
    /// Log format [default: text]
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Largest accepted file in bytes [default: 4294967296]
    #[arg(long, global = true, value_name = "BYTES")]
    pub max_file_size: Option<u64>,
    /// Registrations per source IP per minute, 0 = unlimited [default: 30]
    #[arg(long, global = true, value_name = "N")]
    pub registrations_per_minute: Option<u32>,
    /// Run the admin HTTP listener (dashboard, API, /health, /metrics) [default: true]
    #[arg(long, global = true, value_name = "BOOL")]
    pub admin_enabled: Option<bool>,
    /// Admin HTTP listener address [default: 127.0.0.1:9091]
    #[arg(long, global = true, value_name = "IP:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Admin API token, required off loopback [env: CYBERBACKUP_ADMIN_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN")]
    pub admin_token: Option<AdminToken>,
    /// Host names the admin listener answers besides localhost and IP addresses, comma-separated
    #[arg(long, global = true, value_name = "NAMES", value_delimiter = ',')]
    pub admin_hosts: Option<Vec<String>>,
    /// Accept the legacy v3 protocol [default: true]
    #[arg(long, global = true, value_name = "BOOL")]
    pub legacy_v3: Option<bool>,
    /// v4 server key file [default: <data_dir>/server-v4.key]
    #[arg(long, global = true, value_name = "PATH")]
    pub identity_key_file: Option<PathBuf>,
    /// v4 registration requires an enrollment token [default: false]
    #[arg(long, global = true, value_name = "BOOL")]
    pub enrollment_required: Option<bool>,
    /// Bytes between durable checkpoints of a v4 upload [default: 8388608]
    #[arg(long, global = true, value_name = "BYTES")]
    pub checkpoint_interval_bytes: Option<u64>,
    /// Start although the catalog fails its integrity check [default: false]
    #[arg(long, global = true, value_name = "BOOL")]
    pub allow_damaged_catalog: Option<bool>,
    /// Catalog database: sqlite:PATH or postgres://USER:PASSWORD@HOST:PORT/DB [default: <data_dir>/defensive.db]
    // Text until `apply` parses it: a value the TOML parser refused would be quoted, password
    // and all, in its error.
    #[arg(long, global = true, value_name = "URL")]
    pub catalog: Option<String>,
    /// Registrations per minute from all addresses together, 0 = unlimited [default: 300]
    #[arg(long, global = true, value_name = "N")]
    pub registrations_per_minute_total: Option<u32>,
    /// v3 files failing to decrypt per client id per hour before refusing it, 0 = unlimited [default: 5]
    #[arg(long, global = true, value_name = "N")]
    pub v3_failed_files_per_hour: Option<u32>,
    /// Concurrent connections from one source address (IPv6: per /64) [default: 256]
    #[arg(long, global = true, value_name = "N")]
    pub max_connections_per_address: Option<u32>,
    /// Seconds between scheduled prunes of the snapshot repositories; 0 disables [default: 86400]
    #[arg(long, global = true, value_name = "SECS")]
    pub prune_interval_secs: Option<u64>,
    /// Seconds an unreferenced blob stays claimable before a prune deletes it [default: 86400]
    #[arg(long, global = true, value_name = "SECS")]
    pub prune_grace_secs: Option<u64>,
    /// Repack packs whose live bytes are below this percentage; 0 never [default: 50]
    #[arg(long, global = true, value_name = "PERCENT")]
    pub repack_below_percent: Option<u8>,
    /// Role of newly registered v4 devices [default: append-only]
    #[arg(long, global = true, value_enum)]
    pub default_device_role: Option<DeviceRole>,
    /// Scrub read rate in bytes per second, 0 = no scrub [default: 16777216]
    #[arg(long, global = true, value_name = "BYTES")]
    pub scrub_bytes_per_sec: Option<u64>,
    /// Seconds from one scrub cycle's start to the next [default: 86400]
    #[arg(long, global = true, value_name = "SECS")]
    pub scrub_interval_secs: Option<u64>,
    /// Seconds after an account's last backup before the dashboard shows it amber [default: 93600]
    #[arg(long, global = true, value_name = "SECS")]
    pub backup_warn_after_secs: Option<u64>,
    /// Seconds after an account's last backup before the dashboard shows it red [default: 259200]
    #[arg(long, global = true, value_name = "SECS")]
    pub backup_alert_after_secs: Option<u64>,
    /// Soft quota on each client's stored repository bytes, 0 = none [default: 0]
    #[arg(long, global = true, value_name = "BYTES")]
    pub quota_soft_bytes: Option<u64>,
    /// Hard quota on each client's stored repository bytes, 0 = none [default: 0]
    #[arg(long, global = true, value_name = "BYTES")]
    pub quota_hard_bytes: Option<u64>,
    /// Quotas by client name (config file only).
    #[arg(skip)]
    pub client_quotas: Option<BTreeMap<String, ClientQuota>>,
    /// Retention policy of every repository (config file only).
    #[arg(skip)]
    pub retention: Option<RetentionConfig>,
    /// Retention policies by client name (config file only).
    #[arg(skip)]
    pub client_retention: Option<BTreeMap<String, RetentionConfig>>,
    /// Where repository objects live (config file only).
    #[arg(skip)]
    pub storage: Option<StorageConfig>,
}

/// What `port.info` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortInfo {
    /// A valid port.
    Port(u16),
    /// No `port.info` file.
    Missing,
    /// The file exists but does not hold one integer 1–65535 (the reason is given).
    Invalid(String),
}

/// A configuration and the notes produced while loading it (logged once logging is up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedConfig {
    /// The effective configuration.
    pub config: ServerConfig,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
    /// Warnings, e.g. an invalid `port.info`.
    pub warnings: Vec<String>,
}

impl ServerConfig {
    /// Builds the effective configuration.
    ///
    /// `config_file` is `--config`; without it `CYBERBACKUP_CONFIG`, then
    /// `<cwd>/cyberbackup-server.toml` if it exists. `env` holds the process environment
    /// (only `CYBERBACKUP_*` entries are looked at); `cwd` is where `port.info` and the default
    /// config file are looked for. The result is [validated](Self::validate).
    ///
    /// # Errors
    /// [`ConfigError`] for an unreadable or invalid file, a bad variable or an invalid value.
    pub fn load(
        flags: &ConfigOverrides,
        config_file: Option<&Path>,
        env: &BTreeMap<String, String>,
        cwd: &Path,
    ) -> Result<LoadedConfig, ConfigError> {
        let file = match (config_file, env.get(ENV_CONFIG)) {
            (Some(path), _) => Some(path.to_path_buf()),
            (None, Some(path)) => Some(PathBuf::from(path)),
            (None, None) => Some(cwd.join(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file()),
        };
        let from_file = match &file {
            Some(path) => read_file(path)?,
            None => ConfigOverrides::default(),
        };
        let from_env = ConfigOverrides::from_env(env)?;

        let mut config = Self::default();
        let mut warnings = Vec::new();
        let explicit_port = [flags.port, from_env.port, from_file.port]
            .into_iter()
            .flatten()
            .next();
        if explicit_port.is_none() {
            match read_port_info(cwd) {
                PortInfo::Port(port) => config.port = port,
                PortInfo::Missing => warnings.push(format!(
                    "{PORT_INFO_FILE} not found in {}; using default port {DEFAULT_PORT}",
                    cwd.display()
                )),
                PortInfo::Invalid(reason) => warnings.push(format!(
                    "{PORT_INFO_FILE} in {} is invalid ({reason}); using default port {DEFAULT_PORT}",
                    cwd.display()
                )),
            }
        }
        config.apply(&from_file)?;
        config.apply(&from_env)?;
        config.apply(flags)?;
        config.validate()?;
        Ok(LoadedConfig {
            config,
            file,
            warnings,
        })
    }

    /// Checks values that are wrong whatever the machine (zero limits, port 0).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        };
        if self.port == 0 {
            return invalid("port", "must be 1–65535");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1");
        }
        if self.max_connections_per_address == 0 {
            return invalid(
                "max_connections_per_address",
                "must be at least 1 (set it to max_connections to disable the per-address cap)",
            );
        }
        if let Err(reason) = self.retention.policy() {
            return invalid("retention", &reason);
        }
        if let Some((name, reason)) = self
            .client_retention
            .iter()
            .find_map(|(name, policy)| policy.policy().err().map(|reason| (name, reason)))
        {
            return invalid(
                "client_retention",
                &format!("[client_retention.{name}]: {reason}"),
            );
        }
        if self.repack_below_percent > 100 {
            return invalid(
                "repack_below_percent",
                "must be between 0 and 100 (0 never repacks)",
            );
        }
        if self.keep_versions == 0 {
            return invalid(
                "keep_versions",
                "must be at least 1 (1 keeps only the newest version)",
            );
        }
        let positive = [
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("read_timeout_secs", self.read_timeout_secs),
            ("maintenance_interval_secs", self.maintenance_interval_secs),
            ("abandoned_after_secs", self.abandoned_after_secs),
            ("max_file_size", self.max_file_size),
            ("checkpoint_interval_bytes", self.checkpoint_interval_bytes),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return invalid(key, "must be greater than 0");
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        if self.admin_enabled && !self.admin_listen.ip().is_loopback() && self.admin_token.is_none()
        {
            return invalid(
                "admin_token",
                "is required when admin_listen is not a loopback address — set admin_token (or CYBERBACKUP_ADMIN_TOKEN), or listen on 127.0.0.1",
            );
        }
        let bare_name = |name: &String| {
            !name.is_empty()
                && !name
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, ':' | '/' | '[' | ']' | '@'))
        };
        if self.scrub_interval_secs == 0 {
            return invalid("scrub_interval_secs", "must be greater than 0");
        }
        if self.backup_warn_after_secs == 0 {
            return invalid("backup_warn_after_secs", "must be greater than 0");
        }
        if self.backup_alert_after_secs < self.backup_warn_after_secs {
            return invalid(
                "backup_alert_after_secs",
                "must not be below backup_warn_after_secs (an account turns amber before it turns red)",
            );
        }
        let quotas = self.quotas();
        let crossed = |limits: &QuotaLimits| matches!((limits.soft_bytes, limits.hard_bytes), (Some(soft), Some(hard)) if soft > hard);
        if crossed(&quotas.default) {
            return invalid(
                "quota_soft_bytes",
                "must not be above quota_hard_bytes (the soft quota warns before the hard one refuses)",
            );
        }
        if quotas.per_client.values().any(crossed) {
            return invalid(
                "client_quotas",
                "a client's soft_bytes is above its hard_bytes (the soft quota warns before the hard one refuses)",
            );
        }
        if let StorageConfig::S3(s3) = &self.storage
            && s3.bucket.trim().is_empty()
        {
            return invalid(
                "storage",
                "[storage] backend = \"s3\" needs bucket = \"NAME\" (an existing bucket)",
            );
        }
        if !self.admin_hosts.iter().all(bare_name) {
            return invalid(
                "admin_hosts",
                "takes host names without scheme or port, e.g. [\"backup.example.com\"] (IP addresses and localhost are always answered)",
            );
        }
        Ok(())
    }

    /// The effective configuration as TOML (`--print-config`).
    ///
    /// # Errors
    /// [`ConfigError::Serialize`], e.g. for a non-UTF-8 data directory.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(ConfigError::Serialize)
    }

    /// Path of the SQLite catalog in the data directory (the default catalog).
    #[must_use]
    pub fn catalog_path(&self) -> PathBuf {
        self.data_dir.join(CATALOG_FILE_NAME)
    }

    /// Where the catalog is: the `catalog` setting, else [`catalog_path`](Self::catalog_path).
    #[must_use]
    pub fn catalog_location(&self) -> CatalogLocation {
        self.catalog
            .clone()
            .unwrap_or_else(|| CatalogLocation::Sqlite(self.catalog_path()))
    }

    /// `idle_timeout_secs` as a duration.
    #[must_use]
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// `read_timeout_secs` as a duration.
    #[must_use]
    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_secs)
    }

    /// `shutdown_grace_secs` as a duration.
    #[must_use]
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// `maintenance_interval_secs` as a duration.
    #[must_use]
    pub fn maintenance_interval(&self) -> Duration {
        Duration::from_secs(self.maintenance_interval_secs)
    }

    /// `abandoned_after_secs` as a duration.
    #[must_use]
    pub fn abandoned_after(&self) -> Duration {
        Duration::from_secs(self.abandoned_after_secs)
    }

    /// The retention policies the scheduled prune applies (validated when the config was
    /// loaded; a policy that fails here is left out and keeps everything).
    #[must_use]
    pub fn retention_policies(&self) -> RetentionPolicies {
        RetentionPolicies {
            default: self.retention.policy().ok().flatten(),
            per_client: self
                .client_retention
                .iter()
                .map(|(name, policy)| (name.clone().into_bytes(), policy.policy().ok().flatten()))
                .collect(),
        }
    }

    /// `prune_interval_secs` as a duration (zero: no scheduled prune).
    #[must_use]
    pub fn prune_interval(&self) -> Duration {
        Duration::from_secs(self.prune_interval_secs)
    }

    /// How the scheduled prune runs (`prune_grace_secs`, `repack_below_percent`).
    #[must_use]
    pub fn prune_options(&self) -> crate::repository::PruneOptions {
        crate::repository::PruneOptions {
            grace: Duration::from_secs(self.prune_grace_secs),
            repack_below_percent: self.repack_below_percent,
            deletion_delay: Duration::from_secs(self.prune_grace_secs.min(600)),
        }
    }

    /// `scrub_interval_secs` as a duration.
    #[must_use]
    pub fn scrub_interval(&self) -> Duration {
        Duration::from_secs(self.scrub_interval_secs)
    }

    /// The quotas the repository store enforces: `quota_*_bytes` for every client, and
    /// `client_quotas` by name (each key falling back to the global one; 0 = none).
    #[must_use]
    pub fn quotas(&self) -> Quotas {
        let limit = |bytes: u64| (bytes != 0).then_some(bytes);
        let default = QuotaLimits {
            soft_bytes: limit(self.quota_soft_bytes),
            hard_bytes: limit(self.quota_hard_bytes),
        };
        let per_client = self
            .client_quotas
            .iter()
            .map(|(name, quota)| {
                let limits = QuotaLimits {
                    soft_bytes: limit(quota.soft_bytes.unwrap_or(self.quota_soft_bytes)),
                    hard_bytes: limit(quota.hard_bytes.unwrap_or(self.quota_hard_bytes)),
                };
                (name.as_bytes().to_vec(), limits)
            })
            .collect();
        Quotas {
            default,
            per_client,
        }
    }

    /// `min_free_disk_mb` in bytes.
    #[must_use]
    pub fn min_free_disk_bytes(&self) -> u64 {
        self.min_free_disk_mb.saturating_mul(1024 * 1024)
    }

    fn apply(&mut self, layer: &ConfigOverrides) -> Result<(), ConfigError> {
        let ConfigOverrides {
            listen,
            port,
            data_dir,
            max_connections,
            idle_timeout_secs,
            read_timeout_secs,
            shutdown_grace_secs,
            keep_versions,
            maintenance_interval_secs,
            abandoned_after_secs,
            min_free_disk_mb,
            log_format,
            max_file_size,
            registrations_per_minute,
            admin_enabled,
            admin_listen,
            admin_token,
            admin_hosts,
            legacy_v3,
            identity_key_file,
            enrollment_required,
            checkpoint_interval_bytes,
            allow_damaged_catalog,
            catalog,
            registrations_per_minute_total,
            v3_failed_files_per_hour,
            max_connections_per_address,
            prune_interval_secs,
            prune_grace_secs,
            repack_below_percent,
            default_device_role,
            scrub_bytes_per_sec,
            scrub_interval_secs,
            backup_warn_after_secs,
            backup_alert_after_secs,
            quota_soft_bytes,
            quota_hard_bytes,
            client_quotas,
            retention,
            client_retention,
            storage,
        } = layer.clone();
        set(&mut self.listen, listen);
        set(&mut self.port, port);
        set(&mut self.data_dir, data_dir);
        set(&mut self.max_connections, max_connections);
        set(&mut self.idle_timeout_secs, idle_timeout_secs);
        set(&mut self.read_timeout_secs, read_timeout_secs);
        set(&mut self.shutdown_grace_secs, shutdown_grace_secs);
        set(&mut self.keep_versions, keep_versions);
        set(
            &mut self.maintenance_interval_secs,
            maintenance_interval_secs,
        );
        set(&mut self.abandoned_after_secs, abandoned_after_secs);
        set(&mut self.min_free_disk_mb, min_free_disk_mb);
        set(&mut self.log_format, log_format);
        set(&mut self.max_file_size, max_file_size);
        set(&mut self.registrations_per_minute, registrations_per_minute);
        set(&mut self.admin_enabled, admin_enabled);
        set(&mut self.admin_listen, admin_listen);
        if admin_token.is_some() {
            self.admin_token = admin_token;
        }
        set(&mut self.admin_hosts, admin_hosts);
        set(&mut self.legacy_v3, legacy_v3);
        if identity_key_file.is_some() {
            self.identity_key_file = identity_key_file;
        }
        set(&mut self.enrollment_required, enrollment_required);
        set(
            &mut self.checkpoint_interval_bytes,
            checkpoint_interval_bytes,
        );
        set(&mut self.allow_damaged_catalog, allow_damaged_catalog);
        if let Some(text) = catalog {
            let location =
                CatalogLocation::parse(&text).map_err(|reason| ConfigError::Invalid {
                    key: "catalog",
                    reason,
                })?;
            self.catalog = Some(location);
        }
        set(
            &mut self.registrations_per_minute_total,
            registrations_per_minute_total,
        );
        set(&mut self.v3_failed_files_per_hour, v3_failed_files_per_hour);
        set(
            &mut self.max_connections_per_address,
            max_connections_per_address,
        );
        set(&mut self.prune_interval_secs, prune_interval_secs);
        set(&mut self.prune_grace_secs, prune_grace_secs);
        set(&mut self.repack_below_percent, repack_below_percent);
        set(&mut self.default_device_role, default_device_role);
        set(&mut self.scrub_bytes_per_sec, scrub_bytes_per_sec);
        set(&mut self.scrub_interval_secs, scrub_interval_secs);
        set(&mut self.backup_warn_after_secs, backup_warn_after_secs);
        set(&mut self.backup_alert_after_secs, backup_alert_after_secs);
        set(&mut self.quota_soft_bytes, quota_soft_bytes);
        set(&mut self.quota_hard_bytes, quota_hard_bytes);
        set(&mut self.client_quotas, client_quotas);
        set(&mut self.retention, retention);
        set(&mut self.client_retention, client_retention);
        set(&mut self.storage, storage);
        Ok(())
    }

    /// The v4 server key file: `identity_key_file`, else `<data_dir>/server-v4.key`.
    #[must_use]
    pub fn v4_identity_path(&self) -> PathBuf {
        self.identity_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("server-v4.key"))
    }
}

impl ConfigOverrides {
    /// Reads `CYBERBACKUP_<KEY>` variables (key upper-cased, e.g. `CYBERBACKUP_DATA_DIR`).
    ///
    /// # Errors
    /// [`ConfigError::Env`] for a value that does not parse.
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        Ok(Self {
            listen: env_var(env, "LISTEN")?,
            port: env_var::<u16>(env, "PORT")?.map(nonzero_port).transpose()?,
            data_dir: env_var(env, "DATA_DIR")?,
            max_connections: env_var(env, "MAX_CONNECTIONS")?,
            idle_timeout_secs: env_var(env, "IDLE_TIMEOUT_SECS")?,
            read_timeout_secs: env_var(env, "READ_TIMEOUT_SECS")?,
            shutdown_grace_secs: env_var(env, "SHUTDOWN_GRACE_SECS")?,
            keep_versions: env_var(env, "KEEP_VERSIONS")?,
            maintenance_interval_secs: env_var(env, "MAINTENANCE_INTERVAL_SECS")?,
            abandoned_after_secs: env_var(env, "ABANDONED_AFTER_SECS")?,
            min_free_disk_mb: env_var(env, "MIN_FREE_DISK_MB")?,
            log_format: env_var(env, "LOG_FORMAT")?,
            max_file_size: env_var(env, "MAX_FILE_SIZE")?,
            registrations_per_minute: env_var(env, "REGISTRATIONS_PER_MINUTE")?,
            admin_enabled: env_var(env, "ADMIN_ENABLED")?,
            admin_listen: env_var(env, "ADMIN_LISTEN")?,
            admin_token: env_var(env, "ADMIN_TOKEN")?,
            admin_hosts: env
                .get(&format!("{ENV_PREFIX}ADMIN_HOSTS"))
                .map(|names| names.split(',').map(|n| n.trim().to_owned()).collect()),
            legacy_v3: env_var(env, "LEGACY_V3")?,
            identity_key_file: env_var(env, "IDENTITY_KEY_FILE")?,
            enrollment_required: env_var(env, "ENROLLMENT_REQUIRED")?,
            checkpoint_interval_bytes: env_var(env, "CHECKPOINT_INTERVAL_BYTES")?,
            allow_damaged_catalog: env_var(env, "ALLOW_DAMAGED_CATALOG")?,
            catalog: env_var(env, "CATALOG")?,
            registrations_per_minute_total: env_var(env, "REGISTRATIONS_PER_MINUTE_TOTAL")?,
            v3_failed_files_per_hour: env_var(env, "V3_FAILED_FILES_PER_HOUR")?,
            max_connections_per_address: env_var(env, "MAX_CONNECTIONS_PER_ADDRESS")?,
            prune_interval_secs: env_var(env, "PRUNE_INTERVAL_SECS")?,
            prune_grace_secs: env_var(env, "PRUNE_GRACE_SECS")?,
            repack_below_percent: env_var(env, "REPACK_BELOW_PERCENT")?,
            default_device_role: env_var(env, "DEFAULT_DEVICE_ROLE")?,
            scrub_bytes_per_sec: env_var(env, "SCRUB_BYTES_PER_SEC")?,
            scrub_interval_secs: env_var(env, "SCRUB_INTERVAL_SECS")?,
            backup_warn_after_secs: env_var(env, "BACKUP_WARN_AFTER_SECS")?,
            backup_alert_after_secs: env_var(env, "BACKUP_ALERT_AFTER_SECS")?,
            quota_soft_bytes: env_var(env, "QUOTA_SOFT_BYTES")?,
            quota_hard_bytes: env_var(env, "QUOTA_HARD_BYTES")?,
            client_quotas: None,
            retention: None,
            client_retention: None,
            storage: None,
        })
    }
}

/// Reads and parses `<dir>/port.info`.
#[must_use]
pub fn read_port_info(dir: &Path) -> PortInfo {
    match std::fs::read(dir.join(PORT_INFO_FILE)) {
        Ok(bytes) => parse_port_info(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => PortInfo::Missing,
        Err(e) => PortInfo::Invalid(format!("cannot read it: {e}")),
    }
}

/// Parses the content of `port.info`: one decimal integer 1–65535, whitespace around it allowed.
#[must_use]
pub fn parse_port_info(bytes: &[u8]) -> PortInfo {
    let text = String::from_utf8_lossy(bytes);
    let digits = text.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return PortInfo::Invalid(format!(
            "expected one integer, found {:?}",
            truncate(digits)
        ));
    }
    match digits.parse::<u16>() {
        Ok(port) if port > 0 => PortInfo::Port(port),
        _ => PortInfo::Invalid(format!("{} is not a port number 1–65535", truncate(digits))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

fn nonzero_port(port: u16) -> Result<u16, ConfigError> {
    if port == 0 {
        return Err(ConfigError::Env {
            var: format!("{ENV_PREFIX}PORT"),
            value: "0".into(),
            reason: "must be 1–65535".into(),
        });
    }
    Ok(port)
}

fn env_var<T>(env: &BTreeMap<String, String>, key: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let var = format!("{ENV_PREFIX}{key}");
    let Some(value) = env.get(&var) else {
        return Ok(None);
    };
    match value.trim().parse() {
        Ok(v) => Ok(Some(v)),
        Err(e) => Err(ConfigError::Env {
            var,
            value: value.clone(),
            reason: e.to_string(),
        }),
    }
}

/// The `[storage]` table of the config file at `path` (`storage copy --to-config`).
///
/// # Errors
/// [`ConfigError`] for an unreadable or invalid file, or [`ConfigError::Invalid`] when it
/// has no `[storage]` table.
pub fn storage_of_file(path: &Path) -> Result<StorageConfig, ConfigError> {
    read_file(path)?.storage.ok_or_else(|| ConfigError::Invalid {
        key: "storage",
        reason: format!(
            "{} has no [storage] table — add the target backend there (backend = \"s3\", bucket = …)",
            path.display()
        ),
    })
}

fn read_file(path: &Path) -> Result<ConfigOverrides, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::ParseFile {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_off_loopback_needs_a_token_which_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let exposed = [("CYBERBACKUP_ADMIN_LISTEN", "0.0.0.0:9091")];
        let with_token = [
            ("CYBERBACKUP_ADMIN_LISTEN", "0.0.0.0:9091"),
            ("CYBERBACKUP_ADMIN_TOKEN", "s3cret-token"),
        ];

        let refused = load(dir.path(), &ConfigOverrides::default(), &exposed).unwrap_err();
        let accepted = load(dir.path(), &ConfigOverrides::default(), &with_token)
            .unwrap()
            .config;

        assert!(refused.to_string().contains("admin_token"), "{refused}");
        assert_eq!(accepted.admin_listen.port(), 9091);
        assert_eq!(
            accepted.admin_token.as_ref().map(AdminToken::expose),
            Some("s3cret-token")
        );
        assert!(!format!("{accepted:?}").contains("s3cret"));
        assert!(!accepted.to_toml().unwrap().contains("s3cret"));
    }

    #[test]
    fn quotas_come_from_the_file_and_env_with_per_client_overrides() {
        let dir = tempfile::tempdir().unwrap();
        fs_write(
            dir.path(),
            DEFAULT_CONFIG_FILE,
            "quota_hard_bytes = 1000\nscrub_bytes_per_sec = 0\n\
             [client_quotas.alice]\nhard_bytes = 5000\n\
             [client_quotas.bob]\nsoft_bytes = 10\nhard_bytes = 0\n",
        );
        let env = [("CYBERBACKUP_QUOTA_SOFT_BYTES", "800")];

        let config = load(dir.path(), &ConfigOverrides::default(), &env)
            .unwrap()
            .config;
        let quotas = config.quotas();
        let crossed = load(
            dir.path(),
            &ConfigOverrides::default(),
            &[("CYBERBACKUP_QUOTA_SOFT_BYTES", "2000")],
        )
        .unwrap_err();

        assert_eq!(config.scrub_bytes_per_sec, 0);
        let limits = |soft, hard| QuotaLimits {
            soft_bytes: soft,
            hard_bytes: hard,
        };
        assert_eq!(quotas.default, limits(Some(800), Some(1000)));
        assert_eq!(quotas.for_client(b"alice"), limits(Some(800), Some(5000)));
        assert_eq!(
            quotas.for_client(b"bob"),
            limits(Some(10), None),
            "0 = none"
        );
        assert_eq!(quotas.for_client(b"carol"), quotas.default);
        assert!(
            crossed.to_string().contains("quota_soft_bytes"),
            "{crossed}"
        );
        assert!(config.to_toml().unwrap().contains("[client_quotas.alice]"));
    }

    #[test]
    fn defaults_apply_without_any_source() {
        let dir = tempfile::tempdir().unwrap();

        let loaded = load(dir.path(), &ConfigOverrides::default(), &[]).unwrap();

        assert_eq!(loaded.config, ServerConfig::default());
        assert_eq!(loaded.file, None);
        assert_eq!(loaded.warnings.len(), 1, "missing port.info warns");
        assert!(loaded.warnings[0].contains("1256"));
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        fs_write(
            dir.path(),
            DEFAULT_CONFIG_FILE,
            "port = 1000\nkeep_versions = 2\nidle_timeout_secs = 5\nlog_format = \"json\"\n",
        );
        let env = [
            ("CYBERBACKUP_PORT", "2000"),
            ("CYBERBACKUP_KEEP_VERSIONS", "3"),
        ];
        let flags = ConfigOverrides {
            port: Some(3000),
            ..ConfigOverrides::default()
        };

        let file_only = load(dir.path(), &ConfigOverrides::default(), &[])
            .unwrap()
            .config;
        let file_env = load(dir.path(), &ConfigOverrides::default(), &env)
            .unwrap()
            .config;
        let all = load(dir.path(), &flags, &env).unwrap();

        assert_eq!((file_only.port, file_only.keep_versions), (1000, 2));
        assert_eq!((file_env.port, file_env.keep_versions), (2000, 3));
        assert_eq!((all.config.port, all.config.keep_versions), (3000, 3));
        assert_eq!(all.config.idle_timeout_secs, 5);
        assert_eq!(all.config.log_format, LogFormat::Json);
        assert_eq!(all.file, Some(dir.path().join(DEFAULT_CONFIG_FILE)));
        assert!(all.warnings.is_empty(), "{:?}", all.warnings);
    }

    #[test]
    fn port_info_is_used_only_without_an_explicit_port() {
        let dir = tempfile::tempdir().unwrap();
        fs_write(dir.path(), PORT_INFO_FILE, "4321\n");
        let flags = ConfigOverrides {
            port: Some(5000),
            ..ConfigOverrides::default()
        };

        let from_port_info = load(dir.path(), &ConfigOverrides::default(), &[]).unwrap();
        let from_flag = load(dir.path(), &flags, &[]).unwrap();
        let from_env = load(
            dir.path(),
            &ConfigOverrides::default(),
            &[("CYBERBACKUP_PORT", "6000")],
        )
        .unwrap();

        assert_eq!(from_port_info.config.port, 4321);
        assert!(from_port_info.warnings.is_empty());
        assert_eq!(from_flag.config.port, 5000);
        assert_eq!(from_env.config.port, 6000);
    }

    #[test]
    fn invalid_port_info_warns_and_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        fs_write(dir.path(), PORT_INFO_FILE, "port=80\n");

        let loaded = load(dir.path(), &ConfigOverrides::default(), &[]).unwrap();

        assert_eq!(loaded.config.port, DEFAULT_PORT);
        assert!(
            loaded.warnings[0].contains("invalid"),
            "{:?}",
            loaded.warnings
        );
    }

    #[test]
    fn port_info_parsing() {
        let cases: &[(&[u8], Option<u16>)] = &[
            (b"1256", Some(1256)),
            (b"8080\n", Some(8080)),
            (b"  9000 \r\n\t", Some(9000)),
            (b"65535", Some(65535)),
            (b"1", Some(1)),
            (b"0", None),
            (b"65536", None),
            (b"", None),
            (b"\n", None),
            (b"12 34", None),
            (b"+1256", None),
            (b"-1", None),
            (b"abc", None),
            (b"1256\n1257\n", None),
            (b"\xff\xfe", None),
        ];
        for (input, expected) in cases {
            let parsed = parse_port_info(input);
            match expected {
                Some(port) => assert_eq!(parsed, PortInfo::Port(*port), "{input:?}"),
                None => assert!(
                    matches!(parsed, PortInfo::Invalid(_)),
                    "{input:?} gave {parsed:?}"
                ),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_port_info(dir.path()), PortInfo::Missing);
    }

    #[test]
    fn bad_sources_give_actionable_errors() {
        let dir = tempfile::tempdir().unwrap();
        fs_write(dir.path(), "bad.toml", "prot = 1\n");
        let bad_file = ServerConfig::load(
            &ConfigOverrides::default(),
            Some(&dir.path().join("bad.toml")),
            &BTreeMap::new(),
            dir.path(),
        );
        let missing_file = ServerConfig::load(
            &ConfigOverrides::default(),
            Some(&dir.path().join("nope.toml")),
            &BTreeMap::new(),
            dir.path(),
        );
        let bad_env = load(
            dir.path(),
            &ConfigOverrides::default(),
            &[("CYBERBACKUP_MAX_CONNECTIONS", "many")],
        );
        let zero_keep = load(
            dir.path(),
            &ConfigOverrides::default(),
            &[("CYBERBACKUP_KEEP_VERSIONS", "0")],
        );

        assert!(
            matches!(bad_file, Err(ConfigError::ParseFile { .. })),
            "{bad_file:?}"
        );
        assert!(
            matches!(missing_file, Err(ConfigError::ReadFile { .. })),
            "{missing_file:?}"
        );
        let bad_env = bad_env.unwrap_err().to_string();
        assert!(bad_env.contains("CYBERBACKUP_MAX_CONNECTIONS"), "{bad_env}");
        assert!(
            matches!(
                zero_keep,
                Err(ConfigError::Invalid {
                    key: "keep_versions",
                    ..
                })
            ),
            "{zero_keep:?}"
        );
    }

    #[test]
    fn retention_tables_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        fs_write(
            dir.path(),
            DEFAULT_CONFIG_FILE,
            "[retention]\nkeep_daily = 7\nkeep_within = \"30d\"\n\
             [client_retention.bob]\n\
             [client_retention.carol]\nkeep_last = 3\n",
        );
        let loaded = load(dir.path(), &ConfigOverrides::default(), &[]).unwrap();
        let policies = loaded.config.retention_policies();
        assert_eq!(policies.for_client(b"alice").unwrap().keep_daily, Some(7));
        assert!(policies.for_client(b"alice").unwrap().keep_within.is_some());
        assert!(
            policies.for_client(b"bob").is_none(),
            "an empty table keeps all"
        );
        let carol = policies.for_client(b"carol").unwrap();
        assert_eq!((carol.keep_last, carol.keep_daily), (Some(3), None));

        for (text, key) in [
            ("[retention]\nkeep_within = \"soon\"\n", "retention"),
            ("[retention]\nkeep_daily = 0\n", "retention"),
            (
                "[client_retention.dave]\nkeep_weekly = 0\n",
                "client_retention",
            ),
        ] {
            fs_write(dir.path(), DEFAULT_CONFIG_FILE, text);
            let err = load(dir.path(), &ConfigOverrides::default(), &[]).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { key: k, .. } if k == key),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn printed_config_reads_back_identically() {
        let config = ServerConfig {
            port: 7777,
            log_format: LogFormat::Json,
            ..ServerConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        fs_write(dir.path(), "printed.toml", &config.to_toml().unwrap());

        let reread = ServerConfig::load(
            &ConfigOverrides::default(),
            Some(&dir.path().join("printed.toml")),
            &BTreeMap::new(),
            dir.path(),
        )
        .unwrap();

        assert_eq!(reread.config, config);
    }

    #[test]
    fn the_catalog_setting_picks_the_engine_and_its_password_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let default = load(dir.path(), &ConfigOverrides::default(), &[]).unwrap();
        assert_eq!(
            default.config.catalog_location(),
            CatalogLocation::Sqlite(default.config.catalog_path())
        );

        fs_write(
            dir.path(),
            "server.toml",
            "catalog = \"postgres://cb:pg-s3cret@db.internal:5432/catalog\"\n",
        );
        let env = BTreeMap::new();
        let from_file = ServerConfig::load(
            &ConfigOverrides::default(),
            Some(&dir.path().join("server.toml")),
            &env,
            dir.path(),
        )
        .unwrap()
        .config;
        assert_eq!(
            from_file.catalog_location().engine(),
            crate::catalog::Engine::Postgres
        );
        let printed = from_file.to_toml().unwrap();
        assert!(!printed.contains("pg-s3cret"), "{printed}");
        assert!(
            printed.contains("cb:<redacted>@db.internal:5432/catalog"),
            "{printed}"
        );

        let from_env = load(
            dir.path(),
            &ConfigOverrides::default(),
            &[("CYBERBACKUP_CATALOG", "sqlite:/srv/catalog.db")],
        )
        .unwrap();
        assert_eq!(
            from_env.config.catalog_location(),
            CatalogLocation::Sqlite("/srv/catalog.db".into())
        );
        let wrong = load(
            dir.path(),
            &ConfigOverrides::default(),
            &[("CYBERBACKUP_CATALOG", "mysql://root:pw@db/x")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            wrong.contains("sqlite:PATH") && !wrong.contains("pw@"),
            "{wrong}"
        );
    }

    fn load(
        cwd: &Path,
        flags: &ConfigOverrides,
        env: &[(&str, &str)],
    ) -> Result<LoadedConfig, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ServerConfig::load(flags, None, &env, cwd)
    }

    fn fs_write(dir: &Path, name: &str, content: &str) {
        std::fs::write(dir.join(name), content).unwrap();
    }
}
