//! Start-up checks (`--check`, and before serving): each failure says what to fix.

use std::fmt;
use std::net::TcpListener;
use std::path::Path;

use crate::config::ServerConfig;
use crate::storage::Storage;

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

/// Runs every check: port bindable, data directory usable (created, not world-writable,
/// writable), catalog openable and sound, free disk above `min_free_disk_mb`.
///
/// The port check binds and releases the port, so it fails while a server is running on it.
pub async fn run_checks(config: &ServerConfig) -> CheckReport {
    let mut items = Vec::new();
    let addr = (config.listen, config.port);
    items.push(CheckItem {
        name: "port",
        outcome: TcpListener::bind(addr)
            .map(|_| format!("{}:{} is bindable", config.listen, config.port))
            .map_err(|e| {
                format!(
                    "cannot bind {}:{}: {e} — stop the process using it, pick another --port, or run with privileges for ports < 1024",
                    config.listen, config.port
                )
            }),
    });

    let storage = Storage::open(&config.data_dir).and_then(|s| s.probe_writable().map(|()| s));
    items.push(CheckItem {
        name: "data_dir",
        outcome: storage
            .as_ref()
            .map(|s| format!("{} is writable", s.root().display()))
            .map_err(ToString::to_string),
    });

    let catalog_outcome = crate::catalog::integrity::inspect(config)
        .await
        .map(|()| format!("{} is sound", config.catalog_path().display()))
        .map_err(|e| e.to_string());
    items.push(CheckItem {
        name: "catalog",
        outcome: catalog_outcome,
    });

    items.push(CheckItem {
        name: "disk",
        outcome: check_free_space(&config.data_dir, config.min_free_disk_bytes()),
    });
    CheckReport { items }
}

/// Bytes available to unprivileged users on the file system holding `path`.
///
/// # Errors
/// The `statvfs` error.
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn check_free_space(path: &Path, min_bytes: u64) -> Result<String, String> {
    let free = free_space(path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
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
    async fn checks_pass_on_a_fresh_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_for(dir.path(), 0);

        let report = run_checks(&config).await;

        assert!(report.is_ok(), "{report}");
        assert_eq!(report.items.len(), 4);
        // Inspected, not created: the server creates it when it starts.
        assert!(!dir.path().join("data").join("defensive.db").exists());
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

    fn config_for(dir: &Path, min_free_disk_mb: u64) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1".parse().unwrap(),
            port: free_port(),
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
