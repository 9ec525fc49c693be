//! Per-client quotas on stored bytes (docs/repository.md, "Server-side store"): a client's
//! usage is the sum of its stored packs' sizes, after deduplication and compression. A pack
//! whose put would take the usage above the hard quota is refused when the put begins,
//! before any byte is received; above the soft quota backups go on and the client is told
//! (`USAGE`) so that it can warn.
//!
//! Puts in flight count too: a put that passes the check *reserves* its size until its pack
//! is indexed or abandoned, and checks of one client run one at a time, so two connections of
//! one client cannot each fit a pack that together would pass the hard quota. (Reservations
//! live in this process: servers sharing one catalog each enforce their own.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cyberbackup_core::names::ClientId;
use cyberbackup_core::v4::repository::{RepoUsage, human_bytes};

use super::{RepoStore, RepoStoreError};

/// One client's limits; `None` = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Above this many stored bytes the client is warned.
    pub soft_bytes: Option<u64>,
    /// A pack that would take the stored bytes above this is refused.
    pub hard_bytes: Option<u64>,
}

/// The quotas of every client: the defaults, and overrides by client name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Limits of a client without an override.
    pub default: QuotaLimits,
    /// Limits by client name (the name's bytes as registered).
    pub per_client: BTreeMap<Vec<u8>, QuotaLimits>,
}

impl Quotas {
    /// Whether no client has any limit (then no lookup is needed on a put).
    #[must_use]
    pub fn is_unlimited(&self) -> bool {
        self.default == QuotaLimits::default()
            && self
                .per_client
                .values()
                .all(|limits| *limits == QuotaLimits::default())
    }

    /// The limits of the client named `name`.
    #[must_use]
    pub fn for_client(&self, name: &[u8]) -> QuotaLimits {
        self.per_client.get(name).copied().unwrap_or(self.default)
    }
}

/// One client's quota checks and the bytes its puts in flight reserved.
#[derive(Debug, Default)]
pub(super) struct QuotaGate {
    /// Held across one check-and-reserve.
    check: tokio::sync::Mutex<()>,
    reserved: AtomicU64,
}

/// Bytes a put in flight holds against its client's hard quota; released on drop (the
/// pack was indexed, so the stored bytes count it, or the put was abandoned).
#[derive(Debug)]
pub(crate) struct QuotaReservation {
    gate: Arc<QuotaGate>,
    bytes: u64,
}

impl Drop for QuotaReservation {
    fn drop(&mut self) {
        self.gate.reserved.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl RepoStore {
    /// The client's stored bytes and its quotas (0 = none, as `USAGE_RESULT` carries them).
    ///
    /// # Errors
    /// [`RepoStoreError::NoRepository`], [`RepoStoreError::Catalog`].
    pub async fn usage(&self, client: ClientId) -> Result<RepoUsage, RepoStoreError> {
        self.require_repository(client).await?;
        let (_, limits) = self.limits_of(client).await?;
        Ok(RepoUsage {
            stored_bytes: self.inner.catalog.repo_stored_bytes(client.0).await?,
            soft_quota_bytes: limits.soft_bytes.unwrap_or(0),
            hard_quota_bytes: limits.hard_bytes.unwrap_or(0),
        })
    }

    /// Refuses a pack of `size` bytes that would take the client above its hard quota,
    /// counting what its other puts in flight reserved; else reserves `size` until the
    /// returned reservation drops (`None`: the client has no hard quota).
    pub(super) async fn check_quota(
        &self,
        client: ClientId,
        size: u64,
    ) -> Result<Option<QuotaReservation>, RepoStoreError> {
        if self.inner.quotas.is_unlimited() {
            return Ok(None);
        }
        let (name, limits) = self.limits_of(client).await?;
        let Some(hard) = limits.hard_bytes else {
            return Ok(None);
        };
        let gate = super::client_lock(&self.inner.quota_gates, client);
        let _one_check = gate.check.lock().await;
        let stored = self.inner.catalog.repo_stored_bytes(client.0).await?;
        let stored = stored.saturating_add(gate.reserved.load(Ordering::SeqCst));
        if stored.saturating_add(size) > hard {
            tracing::warn!(
                client = %String::from_utf8_lossy(&name),
                stored,
                pack = size,
                hard_quota = hard,
                "pack refused: hard quota exceeded"
            );
            return Err(RepoStoreError::QuotaExceeded {
                message: format!(
                    "quota exceeded: {} stored + {} pack > {} hard quota for client {}; ask the operator to raise it or forget old snapshots",
                    human_bytes(stored),
                    human_bytes(size),
                    human_bytes(hard),
                    String::from_utf8_lossy(&name)
                ),
            });
        }
        gate.reserved.fetch_add(size, Ordering::SeqCst);
        Ok(Some(QuotaReservation {
            gate: Arc::clone(&gate),
            bytes: size,
        }))
    }

    /// The client's name and limits.
    async fn limits_of(&self, client: ClientId) -> Result<(Vec<u8>, QuotaLimits), RepoStoreError> {
        let name = self
            .inner
            .catalog
            .client_by_id(client.0)
            .await?
            .map(|record| record.name)
            .unwrap_or_default();
        let limits = self.inner.quotas.for_client(&name);
        Ok((name, limits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_by_name_and_defaults_apply_otherwise() {
        let quotas = Quotas {
            default: QuotaLimits {
                soft_bytes: Some(10),
                hard_bytes: None,
            },
            per_client: BTreeMap::from([(
                b"alice".to_vec(),
                QuotaLimits {
                    soft_bytes: None,
                    hard_bytes: Some(5),
                },
            )]),
        };

        assert_eq!(quotas.for_client(b"alice").hard_bytes, Some(5));
        assert_eq!(quotas.for_client(b"bob"), quotas.default);
        assert!(!quotas.is_unlimited());
        assert!(Quotas::default().is_unlimited());
    }
}
