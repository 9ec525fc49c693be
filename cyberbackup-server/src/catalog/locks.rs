//! Locks that every server on one catalog sees: the per-repository maintenance and prune
//! locks, and the election of the one server that runs a scheduled job.
//!
//! On PostgreSQL a lock is a session advisory lock (`pg_advisory_lock[_shared]`) held on a
//! connection of its own for as long as its [`ServiceLockGuard`] lives: the database queues
//! waiters fairly (a shared request waits behind a queued exclusive one), and a server that
//! dies releases its locks with its sessions, so no lease has to expire. On SQLite the
//! catalog belongs to one server, whose in-process locks already exclude each other; the
//! guard is then empty.
//!
//! Advisory locks are the database's own mechanism for exactly this; no crate offers them
//! over the seam, so the few lines live here.

use std::sync::{Arc, Mutex, PoisonError};

use super::sql::Conn;
use super::{Catalog, CatalogError, CatalogLocation, Engine, Role, connect, error};

/// Idle lock connections kept for reuse; more are opened when more locks are held at once.
const IDLE_LOCK_CONNECTIONS: usize = 8;

/// First key of every lock of this module (the two-key form, a key space apart from the
/// one-key locks of the writer): "cb" and a version.
const KEY_SPACE: i32 = 0x6362_0001;

/// What a lock protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceLock {
    /// One client's repository against prune deletions: commits, pack stores and scrub
    /// reads hold it shared, a prune's sweep and deletions exclusively.
    Maintenance(super::ClientId),
    /// One client's prune from start to end: two prunes of one repository never interleave.
    Prune(super::ClientId),
    /// The scheduled prune pass over every repository: one server of the service runs it.
    ScheduledPrune,
    /// The scheduled scrub pass.
    ScheduledScrub,
    /// The scheduled maintenance of the legacy file store.
    ScheduledMaintenance,
}

impl ServiceLock {
    /// The lock's second key: its kind in the top byte, then 24 bits of the client's ID
    /// (two clients sharing them only wait for each other, never share a lock wrongly).
    fn key(self) -> i32 {
        let (kind, client): (u8, Option<super::ClientId>) = match self {
            Self::Maintenance(client) => (1, Some(client)),
            Self::Prune(client) => (2, Some(client)),
            Self::ScheduledPrune => (3, None),
            Self::ScheduledScrub => (4, None),
            Self::ScheduledMaintenance => (5, None),
        };
        let low = client.map_or([0; 3], |c| [c[0], c[1], c[2]]);
        i32::from_be_bytes([kind, low[0], low[1], low[2]])
    }
}

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// With other shared holders.
    Shared,
    /// Alone.
    Exclusive,
}

/// A held [`ServiceLock`]; released when dropped.
#[must_use = "the lock is released when the guard is dropped"]
pub struct ServiceLockGuard {
    held: Option<(Conn, Arc<LockConnections>)>,
}

impl std::fmt::Debug for ServiceLockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceLockGuard")
            .field("across_servers", &self.held.is_some())
            .finish()
    }
}

impl Drop for ServiceLockGuard {
    fn drop(&mut self) {
        let Some((conn, pool)) = self.held.take() else {
            return;
        };
        // The unlock is a round trip: off the async thread. Without a runtime (a process
        // ending) the connection closes, which releases the lock too.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || pool.give_back(conn));
        }
    }
}

/// The catalog's lock connections not in use.
pub(super) struct LockConnections {
    location: CatalogLocation,
    idle: Mutex<Vec<Conn>>,
}

impl LockConnections {
    pub(super) fn new(location: CatalogLocation) -> Self {
        Self {
            location,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Result<Conn, CatalogError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => connect(&self.location, Role::Reader),
        }
    }

    /// Releases the connection's lock and keeps it for reuse (a connection whose unlock
    /// failed is closed instead, which releases its lock).
    fn give_back(&self, conn: Conn) {
        if conn
            .execute_batch("SELECT pg_advisory_unlock_all()")
            .is_err()
        {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_LOCK_CONNECTIONS {
            idle.push(conn);
        }
    }

    /// Closes the idle connections.
    pub(super) fn close(&self) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Catalog {
    /// Waits for `lock` in `mode` and holds it across every server on this catalog until the
    /// guard drops (see the module docs). Dropping the future while it waits gives up.
    ///
    /// # Errors
    /// [`CatalogError::Connect`] or a database error.
    pub async fn lock_service(
        &self,
        lock: ServiceLock,
        mode: LockMode,
    ) -> Result<ServiceLockGuard, CatalogError> {
        let sql = match mode {
            LockMode::Shared => {
                "SELECT TRUE FROM (SELECT pg_advisory_lock_shared(?1, ?2)) AS locked"
            }
            LockMode::Exclusive => "SELECT TRUE FROM (SELECT pg_advisory_lock(?1, ?2)) AS locked",
        };
        self.acquire(lock, sql).await.map(|held| ServiceLockGuard {
            held: held.map(|(conn, _)| (conn, Arc::clone(&self.locks))),
        })
    }

    /// Takes `lock` exclusively if no server holds it; `None` when one does (it is running
    /// the job this lock elects for).
    ///
    /// # Errors
    /// [`CatalogError::Connect`] or a database error.
    pub async fn try_lock_service(
        &self,
        lock: ServiceLock,
    ) -> Result<Option<ServiceLockGuard>, CatalogError> {
        match self
            .acquire(lock, "SELECT pg_try_advisory_lock(?1, ?2)")
            .await?
        {
            None => Ok(Some(ServiceLockGuard { held: None })),
            Some((conn, true)) => Ok(Some(ServiceLockGuard {
                held: Some((conn, Arc::clone(&self.locks))),
            })),
            Some((conn, false)) => {
                let pool = Arc::clone(&self.locks);
                tokio::task::spawn_blocking(move || pool.give_back(conn));
                Ok(None)
            }
        }
    }

    /// Elects this server to run the scheduled `job` now: the guard of `lock` when no other
    /// server on the catalog holds it, else `None` (logged: that server runs it, or the lock
    /// could not be asked for, and the next interval tries again).
    pub async fn elect(&self, lock: ServiceLock, job: &'static str) -> Option<ServiceLockGuard> {
        match self.try_lock_service(lock).await {
            Ok(Some(guard)) => Some(guard),
            Ok(None) => {
                tracing::info!(job, "another server of the service is running it: skipped");
                None
            }
            Err(error) => {
                tracing::warn!(job, %error, "cannot ask the catalog which server runs it: skipped");
                None
            }
        }
    }

    /// Runs the lock statement `sql` for `lock` on a lock connection: `None` on SQLite
    /// (nothing to lock across servers), else the connection and what the statement
    /// answered (whether it holds the lock now).
    async fn acquire(
        &self,
        lock: ServiceLock,
        sql: &'static str,
    ) -> Result<Option<(Conn, bool)>, CatalogError> {
        if self.engine() != Engine::Postgres {
            return Ok(None);
        }
        let pool = Arc::clone(&self.locks);
        // A dropped caller leaves this to finish; its connection is then dropped with the
        // answer, closing the session and any lock it got.
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let answer = conn
                .query_row(sql, [KEY_SPACE, lock.key()], |row| row.get::<_, bool>(0))
                .map_err(error::query_err("take a lock shared by the servers"))?;
            Ok(Some((conn, answer)))
        })
        .await
        .map_err(CatalogError::Task)?
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::catalog::testing::TestGuard;

    /// Two catalogs on one PostgreSQL database: two servers of one service.
    async fn two_servers() -> Option<(TestGuard, Catalog, Catalog)> {
        let guard = TestGuard::postgres()?;
        let a = Catalog::open_at(guard.location.clone()).await.unwrap();
        let b = Catalog::open_at(guard.location.clone()).await.unwrap();
        Some((guard, a, b))
    }

    #[tokio::test]
    async fn an_exclusive_lock_on_one_server_holds_off_the_shared_holders_of_another() {
        let Some((_guard, a, b)) = two_servers().await else {
            return;
        };
        let client = [7; 16];
        let exclusive = a
            .lock_service(ServiceLock::Maintenance(client), LockMode::Exclusive)
            .await
            .unwrap();
        // Another repository's lock is not held off.
        let elsewhere = tokio::time::timeout(
            Duration::from_secs(10),
            b.lock_service(ServiceLock::Maintenance([9; 16]), LockMode::Shared),
        )
        .await
        .expect("another client's lock waited")
        .unwrap();
        let waiting = tokio::spawn({
            let b = b.clone();
            async move {
                b.lock_service(ServiceLock::Maintenance(client), LockMode::Shared)
                    .await
                    .unwrap()
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !waiting.is_finished(),
            "a shared lock was taken on one server while another held it exclusively"
        );

        drop(exclusive);
        let shared_b = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the shared lock was not granted after the exclusive one ended")
            .unwrap();
        // Shared holders on two servers share.
        let shared_a = tokio::time::timeout(
            Duration::from_secs(10),
            a.lock_service(ServiceLock::Maintenance(client), LockMode::Shared),
        )
        .await
        .expect("two shared holders excluded each other")
        .unwrap();
        drop((shared_a, shared_b, elsewhere));
    }

    #[tokio::test]
    async fn one_server_of_the_service_is_elected_for_each_scheduled_job() {
        let Some((_guard, a, b)) = two_servers().await else {
            return;
        };
        let elected = a.elect(ServiceLock::ScheduledPrune, "prune").await;
        assert!(elected.is_some(), "the first server was not elected");
        assert!(
            b.elect(ServiceLock::ScheduledPrune, "prune")
                .await
                .is_none(),
            "two servers were elected for one job"
        );
        assert!(
            b.elect(ServiceLock::ScheduledScrub, "scrub")
                .await
                .is_some(),
            "another job's election waited for this one"
        );

        drop(elected);
        // The release is a round trip in the background.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if b.elect(ServiceLock::ScheduledPrune, "prune")
                .await
                .is_some()
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the job stayed taken after its server let it go"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn keys_differ_by_kind_and_by_client() {
        let a = [1u8; 16];
        let mut b = [1u8; 16];
        b[2] = 9;
        let keys = [
            ServiceLock::Maintenance(a).key(),
            ServiceLock::Maintenance(b).key(),
            ServiceLock::Prune(a).key(),
            ServiceLock::ScheduledPrune.key(),
            ServiceLock::ScheduledScrub.key(),
            ServiceLock::ScheduledMaintenance.key(),
        ];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
    }
}
