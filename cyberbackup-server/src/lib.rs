//! CyberBackup reference server: SQLite catalog, atomic file storage, configuration,
//! maintenance and logging. The network side (`listener`, `connection`, `effects`) drives
//! `cyberbackup-core` sessions on top of these pieces.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod admin;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
pub mod error;
pub mod maintenance;
pub mod storage;
pub mod telemetry;

pub use catalog::{Catalog, CatalogError};
pub use config::{ConfigError, ServerConfig};
pub use error::ServerError;
pub use storage::{PartialFile, Storage, StorageError};

/// Runs the server until shutdown.
///
/// # Errors
/// Currently always [`ServerError::NotImplemented`]: the network side is being written.
#[allow(clippy::unused_async)] // placeholder: the real implementation awaits
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    let _ = config;
    Err(ServerError::NotImplemented(
        "network server (listener/connection/effects)",
    ))
}
