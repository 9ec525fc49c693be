//! `ServerError`: the server's top-level error, and its process exit codes.

use std::io;

use crate::catalog::CatalogError;
use crate::config::ConfigError;
use crate::repository::RepoStoreError;
use crate::storage::StorageError;
use crate::telemetry::TelemetryError;

/// Any failure that stops the server or an admin command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Catalog failure.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// File storage failure.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The snapshot repository store could not be opened or recovered.
    #[error("snapshot repository store: {0}")]
    Repository(#[from] RepoStoreError),
    /// Logging could not be set up.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// Other IO, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. "cannot bind 0.0.0.0:1256".
        context: String,
        /// Underlying IO error.
        #[source]
        source: io::Error,
    },
    /// Start-up checks failed (`--check` or before running).
    #[error("{0} start-up check(s) failed")]
    ChecksFailed(usize),
}

impl ServerError {
    /// Wraps an IO error with context.
    #[must_use]
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Process exit code (sysexits.h): 78 configuration, 74 IO/catalog/storage,
    /// 1 failed checks, 70 internal.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 78,
            Self::Catalog(_) | Self::Storage(_) | Self::Repository(_) | Self::Io { .. } => 74,
            Self::ChecksFailed(_) => 1,
            Self::Telemetry(_) => 70,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_distinguish_causes() {
        let config = ServerError::Config(ConfigError::Invalid {
            key: "port",
            reason: "must be 1–65535".into(),
        });
        let io = ServerError::io("cannot bind", io::Error::other("x"));

        assert_eq!(config.exit_code(), 78);
        assert_eq!(io.exit_code(), 74);
        assert_eq!(ServerError::ChecksFailed(2).exit_code(), 1);
        assert_eq!(io.to_string(), "cannot bind: x");
    }
}
