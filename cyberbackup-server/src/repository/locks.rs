//! The per-repository locks of the store: the maintenance lock (commits, pack stores and
//! scrub reads shared; a prune's sweep and pack deletions exclusive) and the prune lock (one
//! prune of a repository at a time). Each is an in-process lock, then the catalog's lock of
//! the same name across every server on the catalog ([`crate::catalog::locks`]), always in
//! that order, so waiters of one process queue in memory and only one of them at a time
//! per mode waits in the database's queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cyberbackup_core::names::ClientId;
use tokio::sync::{Mutex as AsyncMutex, RwLock};

use super::RepoStoreError;
use crate::catalog::{Catalog, LockMode, ServiceLock, ServiceLockGuard};

/// One lock of type `L` per client, created on first use.
type ClientLocks<L> = Mutex<HashMap<ClientId, Arc<L>>>;

/// The store's locks (see the module docs).
#[derive(Debug, Default)]
pub(super) struct RepoLocks {
    maintenance: ClientLocks<RwLock<()>>,
    prune: ClientLocks<AsyncMutex<()>>,
}

/// A held lock: the process's guard and the service's.
#[must_use = "the lock is released when the guard is dropped"]
pub struct RepoLockGuard {
    // Field order is drop order: the service lock goes first, then the local one, the
    // reverse of taking them.
    _service: ServiceLockGuard,
    /// A tokio lock guard, held only to be dropped.
    _local: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for RepoLockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoLockGuard").finish_non_exhaustive()
    }
}

impl RepoLocks {
    /// The client's maintenance lock in `mode`.
    pub(super) async fn maintenance(
        &self,
        catalog: &Catalog,
        client: ClientId,
        mode: LockMode,
    ) -> Result<RepoLockGuard, RepoStoreError> {
        let lock = client_entry(&self.maintenance, client);
        let local: Box<dyn Send + Sync> = match mode {
            LockMode::Shared => Box::new(lock.read_owned().await),
            LockMode::Exclusive => Box::new(lock.write_owned().await),
        };
        let service = catalog
            .lock_service(ServiceLock::Maintenance(client.0), mode)
            .await?;
        Ok(RepoLockGuard {
            _service: service,
            _local: local,
        })
    }

    /// The client's prune lock.
    pub(super) async fn prune(
        &self,
        catalog: &Catalog,
        client: ClientId,
    ) -> Result<RepoLockGuard, RepoStoreError> {
        let local = Box::new(client_entry(&self.prune, client).lock_owned().await);
        let service = catalog
            .lock_service(ServiceLock::Prune(client.0), LockMode::Exclusive)
            .await?;
        Ok(RepoLockGuard {
            _service: service,
            _local: local,
        })
    }
}

/// The client's entry of `locks`.
fn client_entry<L: Default>(locks: &ClientLocks<L>, client: ClientId) -> Arc<L> {
    let mut locks = locks.lock().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(locks.entry(client).or_default())
}
