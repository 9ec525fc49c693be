//! What every connection task shares: the configuration, catalog, storage, limiters,
//! counters and live state. The protocol drivers, the accept loop and the admin side all
//! depend on this module; it depends on none of them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cyberbackup_core::names::ClientId;
use cyberbackup_core::v4::noise::{Fingerprint, StaticKeypair};
use cyberbackup_core::v4::server::ServerConfig as SessionConfig;

use crate::catalog::Catalog;
use crate::config::ServerConfig;
use crate::live::LiveState;
use crate::rate_limit::{FailureBudget, RegistrationLimiter};
use crate::repository::RepoStore;
use crate::storage::Storage;

/// Live counters of a running server, readable by tests and the admin side.
#[derive(Debug, Default)]
pub struct Stats {
    connections: AtomicUsize,
    active_transfers: AtomicUsize,
    bytes_received: AtomicU64,
    files_committed: AtomicU64,
    transfers_discarded: AtomicU64,
}

impl Stats {
    /// Connections open now.
    #[must_use]
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Files being received now.
    #[must_use]
    pub fn active_transfers(&self) -> usize {
        self.active_transfers.load(Ordering::Relaxed)
    }

    /// Plaintext bytes written to storage since start.
    #[must_use]
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    /// Files verified and committed since start.
    #[must_use]
    pub fn files_committed(&self) -> u64 {
        self.files_committed.load(Ordering::Relaxed)
    }

    /// Transfers discarded since start.
    #[must_use]
    pub fn transfers_discarded(&self) -> u64 {
        self.transfers_discarded.load(Ordering::Relaxed)
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn add_bytes_received(&self, len: usize) {
        self.bytes_received.fetch_add(len as u64, Ordering::Relaxed);
    }

    pub(crate) fn transfer_started(&self) {
        self.active_transfers.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn transfer_ended(&self, committed: bool) {
        self.active_transfers.fetch_sub(1, Ordering::Relaxed);
        if committed {
            self.files_committed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.transfers_discarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) session_config: Arc<cyberbackup_core::v3::ServerConfig>,
    pub(crate) catalog: Catalog,
    pub(crate) storage: Storage,
    pub(crate) stats: Arc<Stats>,
    pub(crate) registrations: RegistrationLimiter,
    /// v3 files that failed to decrypt, per client id.
    pub(crate) decrypt_failures: FailureBudget,
    /// Live state for the admin listener (transfers, throughput, metrics, maintenance).
    pub(crate) live: Arc<LiveState>,
    /// Protocol v4: server key, session settings, uploads in progress.
    pub(crate) v4: Arc<V4State>,
    /// The snapshot repositories (one per client), recovered at start-up.
    pub(crate) repo: RepoStore,
}

/// What every v4 connection shares: the server key, the session settings and the uploads in
/// progress (one connection per client file at a time).
#[derive(Debug)]
pub struct V4State {
    pub(crate) keys: StaticKeypair,
    pub(crate) session_config: Arc<SessionConfig>,
    busy: Mutex<HashSet<(ClientId, Vec<u8>)>>,
}

impl V4State {
    /// The state of a server with static key `keys` and session settings `session_config`.
    pub(crate) fn new(keys: StaticKeypair, session_config: Arc<SessionConfig>) -> Self {
        Self {
            keys,
            session_config,
            busy: Mutex::new(HashSet::new()),
        }
    }

    /// The server key's fingerprint.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        self.keys.public().fingerprint()
    }

    /// Marks `(client, name)` as being uploaded; `false` if another connection has it.
    pub(crate) fn claim(&self, client: ClientId, name: &[u8]) -> bool {
        self.busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((client, name.to_vec()))
    }

    pub(crate) fn release(&self, client: ClientId, name: &[u8]) {
        self.busy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(client, name.to_vec()));
    }
}
