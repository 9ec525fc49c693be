//! CyberBackup reference server: SQLite catalog, atomic file storage, configuration,
//! maintenance and logging. The network side (`listener`, `connection`, `effects`) drives
//! `cyberbackup-core` sessions on top of these pieces.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

// The catalog's unit tests share the integration tests' PostgreSQL harness, which names
// this crate by its name.
#[cfg(test)]
extern crate self as cyberbackup_server;

pub mod admin;
pub mod backend;
pub mod catalog;
pub mod check;
pub mod cli;
pub mod config;
mod connection;
mod deadline;
pub mod error;
pub mod faults;
pub mod fd_limit;
pub mod http;
pub mod listener;
pub mod live;
pub mod maintenance;
mod rate_limit;
pub mod repository;
pub mod scrub;
mod shared;
pub mod storage;
pub mod telemetry;
mod v3;
pub mod v4;

pub use catalog::{Catalog, CatalogError};
pub use config::{ConfigError, ServerConfig};
pub use error::ServerError;
pub use listener::{Server, run};
pub use shared::Stats;
pub use storage::{PartialFile, Storage, StorageError};
