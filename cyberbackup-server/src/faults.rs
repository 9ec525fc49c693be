//! Fault injection for the storage and catalog operations that connection effects perform.
//!
//! Production servers carry [`Faults::none`]: every check is one `Option` test. Tests build
//! a server with [`Server::bind_with_faults`](crate::Server::bind_with_faults) and an
//! implementation of [`FaultInjector`] that fails chosen operations on demand (disk full,
//! EIO, fsync or rename failure, database busy). The injected error takes the path of a real
//! one: the same [`StorageError::Io`](crate::StorageError::Io) or
//! [`CatalogError::Query`](crate::CatalogError::Query) the operation would return.

use std::fmt;
use std::io;
use std::sync::Arc;

/// An operation that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FaultPoint {
    /// Creating the temp file of a transfer.
    CreateTemp,
    /// Writing plaintext to the temp file.
    Write,
    /// Flushing and fsyncing the temp file (before 1603).
    Fsync,
    /// Renaming the temp file into place (after 1029).
    Rename,
    /// Inserting a client (1025).
    CatalogRegister,
    /// Storing a public key (1026).
    CatalogStoreKey,
    /// Inserting the row of a new transfer.
    CatalogBeginFile,
    /// Recording a received file's size and checksums.
    CatalogMarkReceived,
    /// Recording the intent to commit (`committing`).
    CatalogBeginCommit,
    /// Marking the file verified after the rename.
    CatalogCommit,
}

/// Decides, before each operation, whether it fails.
pub trait FaultInjector: Send + Sync + fmt::Debug {
    /// `Some(error)` makes `point` fail with `error` instead of running.
    fn check(&self, point: FaultPoint) -> Option<io::Error>;
}

/// A cheap, cloneable handle to an optional [`FaultInjector`].
#[derive(Debug, Clone, Default)]
pub struct Faults(Option<Arc<dyn FaultInjector>>);

impl Faults {
    /// No fault is ever injected (production).
    #[must_use]
    pub fn none() -> Self {
        Self(None)
    }

    /// Faults decided by `injector`.
    #[must_use]
    pub fn new(injector: Arc<dyn FaultInjector>) -> Self {
        Self(Some(injector))
    }

    /// The error to fail `point` with, if any.
    #[must_use]
    pub fn check(&self, point: FaultPoint) -> Option<io::Error> {
        self.0.as_ref().and_then(|injector| injector.check(point))
    }
}
