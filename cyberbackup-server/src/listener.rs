//! The accept loop: binds the backup port, enforces the connection limit, starts one task
//! per connection, runs maintenance and the scrub, and shuts down gracefully.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::connection;
use crate::error::ServerError;
use crate::http::AdminServer;
use crate::maintenance;
use crate::rate_limit::{FailureBudget, RegistrationLimiter};
use crate::repository::RepoStore;
use crate::shared::{Shared, Stats};
use crate::storage::Storage;

/// Connections open per source address, capped at `max_connections_per_address` so that one
/// address cannot take the slots every other client needs. IPv6 peers count per /64 (one
/// host usually holds a whole /64); IPv4-mapped IPv6 peers count as their IPv4 address.
#[derive(Debug)]
struct AddressSlots {
    limit: usize,
    /// Open connections and whether a refusal was logged since the address connected.
    open: Mutex<HashMap<IpAddr, (usize, bool)>>,
}

impl AddressSlots {
    fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `peer`; `None` when its address is at the cap.
    fn acquire(self: &Arc<Self>, peer: IpAddr) -> Option<AddressSlot> {
        let source = source_of(peer);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, warned) = open.entry(source).or_insert((0, false));
        if *count >= self.limit {
            if !std::mem::replace(warned, true) {
                tracing::warn!(
                    %source,
                    limit = self.limit,
                    "refusing connections from this address: it holds max_connections_per_address connections already"
                );
            }
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            slots: Arc::clone(self),
            source,
        })
    }

    fn release(&self, source: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((count, _)) = open.get_mut(&source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&source);
            }
        }
    }
}

/// The address a connection counts against (see [`AddressSlots`]).
fn source_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// One connection's place in [`AddressSlots`], given back on drop.
#[derive(Debug)]
struct AddressSlot {
    slots: Arc<AddressSlots>,
    source: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.slots.release(self.source);
    }
}

/// A server bound to its port, ready to [`serve`](Server::serve).
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Opens the catalog and storage under the data directory and binds the backup port.
    ///
    /// # Errors
    /// A [`ServerError`] naming what could not be opened or bound, and how to fix it.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        Self::bind_with_faults(config, crate::faults::Faults::none()).await
    }

    /// [`bind`](Self::bind) with `faults` injected into the storage and catalog operations of
    /// connections (fault-injection tests; see [`crate::faults`]). Start-up recovery
    /// ([`maintenance::recover`]) runs before the port is bound.
    ///
    /// # Errors
    /// As [`bind`](Self::bind).
    pub async fn bind_with_faults(
        config: ServerConfig,
        faults: crate::faults::Faults,
    ) -> Result<Self, ServerError> {
        let storage = Storage::open(&config.data_dir)?.with_faults(faults.clone());
        let catalog = crate::catalog::integrity::open_checked(&config)
            .await?
            .with_faults(faults);
        maintenance::recover(&catalog, &storage, config.abandoned_after()).await?;
        let repo = RepoStore::from_config(&config, catalog.clone())?;
        repo.recover().await?;
        tracing::info!(
            storage = %config.storage.describe(&config.data_dir, crate::repository::REPOSITORY_DIR),
            "snapshot repositories opened"
        );
        let address = SocketAddr::new(config.listen, config.port);
        let listener = TcpListener::bind(address).await.map_err(|source| {
            ServerError::io(
                format!(
                    "cannot listen on {address} (is another server using the port? choose another with --port or port.info)"
                ),
                source,
            )
        })?;
        let session_config = Arc::new(cyberbackup_core::v3::ServerConfig {
            idle_timeout: config.idle_timeout(),
            max_file_len: config
                .max_file_size
                .min(cyberbackup_core::limits::MAX_V3_FILE_LEN),
        });
        let registrations = RegistrationLimiter::new(
            config.registrations_per_minute,
            config.registrations_per_minute_total,
        );
        let decrypt_failures = FailureBudget::per_hour(config.v3_failed_files_per_hour);
        let v4 = Arc::new(crate::v4::open_state(&config)?);
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                config,
                session_config,
                catalog,
                storage,
                stats: Arc::new(Stats::default()),
                registrations,
                decrypt_failures,
                live: crate::live::LiveState::new(crate::telemetry::RecentEvents::global()),
                v4,
                repo,
            }),
        })
    }

    /// The address the server listens on (useful with port 0).
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addr(&self) -> Result<SocketAddr, ServerError> {
        self.listener
            .local_addr()
            .map_err(|source| ServerError::io("cannot read the listening address", source))
    }

    /// Live counters.
    #[must_use]
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.shared.stats)
    }

    /// Binds this server's admin listener (dashboard, `/metrics`, `/health`) at `address`:
    /// the configured `admin_listen`, or port 0 in tests.
    ///
    /// # Errors
    /// A [`ServerError`] when the address cannot be bound, saying how to fix it.
    pub async fn bind_admin(&self, address: SocketAddr) -> Result<AdminServer, ServerError> {
        AdminServer::bind(&self.shared, address).await
    }

    /// Accepts connections until `shutdown` is cancelled; then stops accepting, gives
    /// running transfers the configured grace period, aborts what is left (their partial
    /// files are deleted) and flushes the catalog.
    ///
    /// # Errors
    /// A [`ServerError`] if the catalog cannot be flushed at the end.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let shared = self.shared;
        let maintenance = maintenance::spawn_with_report(
            shared.catalog.clone(),
            shared.storage.clone(),
            shared.config.maintenance_interval(),
            shared.config.abandoned_after(),
            shared.config.min_free_disk_bytes(),
            shutdown.clone(),
            shared.live.maintenance().clone(),
        );
        let prune = shared.repo.spawn_scheduled_prune(
            shared.config.prune_interval(),
            shared.config.prune_options(),
            shared.config.retention_policies(),
            shutdown.clone(),
            shared.live.prune().clone(),
        );
        let scrub = crate::scrub::spawn(
            crate::scrub::Scrubber::new(
                shared.catalog.clone(),
                shared.repo.clone(),
                shared.storage.clone(),
                Arc::clone(shared.live.scrub()),
            ),
            shared.config.scrub_bytes_per_sec,
            shared.config.scrub_interval(),
            shutdown.clone(),
        );
        let metrics_upkeep =
            tokio::spawn(Arc::clone(&shared.live).keep_metrics_bounded(shutdown.clone()));
        let limit = usize::try_from(shared.config.max_connections.max(1)).unwrap_or(usize::MAX);
        let permits = Arc::new(Semaphore::new(limit));
        let addresses = AddressSlots::new(shared.config.max_connections_per_address);
        let mut tasks = JoinSet::new();
        let connections_done = CancellationToken::new();
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let accepted = tokio::time::Instant::now().into_std();
            let Some(slot) = addresses.acquire(peer.ip()) else {
                tracing::debug!(%peer, "connection refused: max_connections_per_address reached");
                shared.live.record(|| {
                    metrics::counter!("cyberbackup_connections_refused_total", "reason" => "per_address_limit")
                        .increment(1);
                });
                drop(stream);
                continue;
            };
            let shared = Arc::clone(&shared);
            let shutdown = shutdown.clone();
            let abort = connections_done.clone();
            tasks.spawn(async move {
                shared.stats.connection_opened();
                connection::serve(stream, peer, accepted, &shared, shutdown, abort).await;
                shared.stats.connection_closed();
                drop(slot);
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        drop(self.listener);
        tracing::info!(
            running = tasks.len(),
            grace_secs = shared.config.shutdown_grace_secs,
            "shutting down: no new connections; waiting for running transfers"
        );
        let grace = tokio::time::sleep(shared.config.shutdown_grace());
        tokio::pin!(grace);
        loop {
            tokio::select! {
                joined = tasks.join_next() => if joined.is_none() { break },
                () = &mut grace => {
                    tracing::warn!(running = tasks.len(), "grace period over: aborting running transfers");
                    connections_done.cancel();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let _ = maintenance.await;
        let _ = prune.await;
        if let Some(scrub) = scrub {
            let _ = scrub.await;
        }
        let _ = metrics_upkeep.await;
        shared.catalog.close().await?;
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Runs the server from `config` until SIGINT or SIGTERM. First raises the descriptor limit
/// ([`crate::fd_limit`]).
///
/// # Errors
/// A [`ServerError`] if start-up fails (descriptor limit too low for `max_connections`,
/// data directory, catalog, port).
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    crate::fd_limit::raise_and_check(config.max_connections)?;
    let server = Server::bind(config).await?;
    let address = server.local_addr()?;
    tracing::info!(%address, data_dir = %server.shared.config.data_dir.display(), "cyberbackup-server listening");
    let shutdown = CancellationToken::new();
    let admin = if server.shared.config.admin_enabled {
        let admin = server.bind_admin(server.shared.config.admin_listen).await?;
        tracing::info!(address = %admin.local_addr()?, "admin dashboard listening");
        Some(tokio::spawn(admin.serve(shutdown.clone())))
    } else {
        None
    };
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let served = server.serve(shutdown).await;
    if let Some(admin) = admin {
        match admin.await {
            Ok(Err(err)) => tracing::warn!(%err, "admin listener failed"),
            Err(err) => tracing::warn!(%err, "admin listener task failed"),
            Ok(Ok(())) => {}
        }
    }
    served
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(err) => {
                    tracing::warn!(%err, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
