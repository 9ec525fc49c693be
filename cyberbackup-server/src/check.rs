//! Start-up checks (`--check`): each failure says what to fix. They change nothing on disk: a
//! data directory or catalog that does not exist yet is reported as created by `run`.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use crate::backend::config::StorageConfig;
use crate::catalog::CatalogLocation;
use crate::catalog::integrity::SchemaStatus;
use crate::config::ServerConfig;
use crate::repository::REPOSITORY_DIR;
use crate::storage::Storage;
use futures_util::StreamExt;

/// Result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    /// Short name, e.g. `port`.
    pub name: &'static str,
    /// `Ok(detail)` or `Err(actionable message)`.
    pub outcome: Result<String, String>,
}

/// Results of all checks, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckReport {
    /// One entry per check.
    pub items: Vec<CheckItem>,
}

impl CheckReport {
    /// Whether every check passed.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.failures() == 0
    }

    /// Number of failed checks.
    #[must_use]
    pub fn failures(&self) -> usize {
        self.items.iter().filter(|i| i.outcome.is_err()).count()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            match &item.outcome {
                Ok(detail) => writeln!(f, "ok    {:<10} {detail}", item.name)?,
                Err(message) => writeln!(f, "FAIL  {:<10} {message}", item.name)?,
            }
        }
        Ok(())
    }
}

/// Runs every check: backup port and (when enabled) admin listener bindable, data directory
/// usable (not world-writable, writable), catalog openable and sound, free disk above
/// `min_free_disk_mb`.
///
/// The bind checks bind and release the addresses, so they fail while a server runs on them.
/// Nothing is created: a missing data directory passes when `run` can create it (its nearest
/// existing parent is writable), a missing catalog passes as "created by `run`".
pub async fn run_checks(config: &ServerConfig) -> CheckReport {
    let mut items = vec![CheckItem {
        name: "port",
        outcome: check_bind(
            SocketAddr::new(config.listen, config.port),
            "pick another --port",
        ),
    }];
    if config.admin_enabled {
        items.push(CheckItem {
            name: "admin",
            outcome: check_bind(
                config.admin_listen,
                "set admin_listen to a free address, or admin_enabled = false",
            ),
        });
    }

    items.push(CheckItem {
        name: "data_dir",
        outcome: check_data_dir(&config.data_dir),
    });

    let location = config.catalog_location();
    let schema = || async {
        match crate::catalog::integrity::schema_status(location.clone()).await {
            Ok(status) => describe_schema(&location, &status),
            Err(e) => Err(e.to_string()),
        }
    };
    let catalog_outcome = match &location {
        CatalogLocation::Sqlite(path) => match crate::catalog::integrity::inspect(config).await {
            Ok(()) if !path.exists() => Ok(format!(
                "{} does not exist yet; `run` creates it",
                path.display()
            )),
            Ok(()) => schema().await,
            Err(e) => Err(e.to_string()),
        },
        CatalogLocation::Postgres(_) => schema().await,
    };
    items.push(CheckItem {
        name: "catalog",
        outcome: catalog_outcome,
    });

    items.push(CheckItem {
        name: "disk",
        outcome: check_free_space(&config.data_dir, config.min_free_disk_bytes()),
    });
    if let StorageConfig::S3(_) = &config.storage {
        items.push(CheckItem {
            name: "storage",
            outcome: check_storage(config).await,
        });
    }
    CheckReport { items }
}

/// How long the storage check waits for the store's first answer.
const STORAGE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Lists the first object of the configured object store: the bucket exists, the
/// credentials are accepted and the endpoint answers (nothing is written).
async fn check_storage(config: &ServerConfig) -> Result<String, String> {
    let described = config.storage.describe(&config.data_dir, REPOSITORY_DIR);
    let fix = "check bucket, endpoint, region and the credentials in [storage] (or AWS_*), and that the bucket exists";
    let backend = config
        .storage
        .open(&config.data_dir, REPOSITORY_DIR)
        .map_err(|e| format!("{described}: {e} — {fix}"))?;
    let first = tokio::time::timeout(STORAGE_CHECK_TIMEOUT, async {
        backend.list(None).next().await.transpose()
    })
    .await;
    match first {
        Ok(Ok(_)) => Ok(format!("{described} answers")),
        Ok(Err(e)) => Err(format!("{described}: {e} — {fix}")),
        Err(_) => Err(format!(
            "{described}: no answer within {} s — {fix}",
            STORAGE_CHECK_TIMEOUT.as_secs()
        )),
    }
}

/// The catalog line of a sound catalog: its schema version and the migrations `run` would
/// apply (listed, not applied); a schema newer than this server fails.
fn describe_schema(catalog: &CatalogLocation, status: &SchemaStatus) -> Result<String, String> {
    let SchemaStatus {
        version,
        latest,
        pending,
    } = status;
    if version > latest {
        return Err(format!(
            "{} has schema version {version}, newer than this server's {latest} — run the server version that wrote it, or restore the catalog from a backup made before the upgrade",
            catalog
        ));
    }
    if pending.is_empty() {
        return Ok(format!(
            "{} is sound, schema version {version} (current)",
            catalog
        ));
    }
    let listed: Vec<String> = pending
        .iter()
        .map(|(version, name)| format!("{version} {name}"))
        .collect();
    Ok(format!(
        "{} is sound, schema version {version} of {latest}; `run` will apply {} pending migration(s): {} (back the catalog up first: `cyberbackup-server catalog backup FILE`)",
        catalog,
        pending.len(),
        listed.join(", ")
    ))
}

/// Binds `addr` and releases it at once.
fn check_bind(addr: SocketAddr, fix: &str) -> Result<String, String> {
    TcpListener::bind(addr)
        .map(|_| format!("{addr} is bindable"))
        .map_err(|e| {
            format!(
                "cannot bind {addr}: {e} — stop the process using it, {fix}, or run with privileges for ports < 1024"
            )
        })
}

/// An existing data directory is opened and probed (the probe file is removed again); a
/// missing one only needs a writable parent.
fn check_data_dir(data_dir: &Path) -> Result<String, String> {
    if data_dir.exists() {
        let storage = Storage::open(data_dir).and_then(|s| s.probe_writable().map(|()| s));
        return storage
            .map(|s| format!("{} is writable", s.root().display()))
            .map_err(|e| e.to_string());
    }
    let parent = existing_ancestor(data_dir);
    rustix::fs::access(parent, rustix::fs::Access::WRITE_OK)
        .map(|()| format!("{} does not exist yet; `run` creates it", data_dir.display()))
        .map_err(|e| {
            format!(
                "{} does not exist and cannot be created: {} is not writable ({e}) — create it, or choose another --data-dir",
                data_dir.display(),
                parent.display()
            )
        })
}

/// `path`, or its nearest parent that exists.
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("."))
}

fn check_free_space(path: &Path, min_bytes: u64) -> Result<String, String> {
    let path = existing_ancestor(path);
    let free = crate::storage::free_space(path)
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    let mib = |b: u64| b / (1024 * 1024);
    if free < min_bytes {
        return Err(format!(
            "only {} MiB free on {}, below min_free_disk_mb = {} — free space or lower the threshold",
            mib(free),
            path.display(),
            mib(min_bytes)
        ));
    }
    Ok(format!("{} MiB free", mib(free)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn checks_pass_on_a_fresh_data_dir_and_create_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_for(dir.path(), 0);

        let report = run_checks(&config).await;

        assert!(report.is_ok(), "{report}");
        let names: Vec<_> = report.items.iter().map(|i| i.name).collect();
        assert_eq!(names, ["port", "admin", "data_dir", "catalog", "disk"]);
        assert!(report.to_string().contains("`run` creates it"), "{report}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_taken_admin_port_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = config_for(dir.path(), 0);
        config.admin_listen = busy.local_addr().unwrap();

        let report = run_checks(&config).await;
        config.admin_enabled = false;
        let without_admin = run_checks(&config).await;

        let failed: Vec<_> = report
            .items
            .iter()
            .filter(|i| i.outcome.is_err())
            .map(|i| i.name)
            .collect();
        assert_eq!(failed, ["admin"], "{report}");
        assert!(report.to_string().contains("admin_listen"), "{report}");
        assert!(without_admin.is_ok(), "{without_admin}");
    }

    #[tokio::test]
    async fn checks_report_busy_port_world_writable_dir_and_low_disk() {
        let dir = tempfile::tempdir().unwrap();
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = config_for(dir.path(), u64::MAX / (2 << 20));
        config.port = busy.local_addr().unwrap().port();
        std::fs::create_dir(&config.data_dir).unwrap();
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o777)).unwrap();

        let report = run_checks(&config).await;

        let failed: Vec<_> = report
            .items
            .iter()
            .filter(|i| i.outcome.is_err())
            .map(|i| i.name)
            .collect();
        assert_eq!(failed, ["port", "data_dir", "disk"], "{report}");
        assert!(report.to_string().contains("world-writable"), "{report}");
    }

    #[tokio::test]
    async fn an_older_catalog_lists_its_pending_migrations_and_none_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_for(dir.path(), 0);
        Storage::open(&config.data_dir).unwrap();
        let old = crate::catalog::schema::create_at_version(&config.catalog_path(), 6);
        drop(old);

        let report = run_checks(&config).await;

        let latest = crate::catalog::latest_schema_version();
        let text = report.to_string();
        assert!(report.is_ok(), "{report}");
        assert!(
            text.contains(&format!("schema version 6 of {latest}")),
            "{text}"
        );
        assert!(
            text.contains("7 devices, 8 server-side retention, 9 scrub"),
            "{text}"
        );
        let status = crate::catalog::integrity::schema_status(config.catalog_location())
            .await
            .unwrap();
        assert_eq!(status.version, 6, "--check applied a migration");
    }

    #[tokio::test]
    async fn a_current_catalog_has_no_pending_migration_and_a_newer_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_for(dir.path(), 0);
        crate::catalog::Catalog::open(config.catalog_path())
            .await
            .unwrap()
            .close()
            .await
            .unwrap();

        let current = run_checks(&config).await;
        rusqlite::Connection::open(config.catalog_path())
            .unwrap()
            .execute("UPDATE schema_version SET version = version + 1", [])
            .unwrap();
        let newer = run_checks(&config).await;

        assert!(current.to_string().contains("(current)"), "{current}");
        let failed: Vec<_> = newer
            .items
            .iter()
            .filter(|i| i.outcome.is_err())
            .map(|i| i.name)
            .collect();
        assert_eq!(failed, ["catalog"], "{newer}");
        assert!(
            newer.to_string().contains("newer than this server"),
            "{newer}"
        );
    }

    fn config_for(dir: &Path, min_free_disk_mb: u64) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1".parse().unwrap(),
            port: free_port(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            data_dir: dir.join("data"),
            min_free_disk_mb,
            ..ServerConfig::default()
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}
