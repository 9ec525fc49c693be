//! Per-client quotas on stored bytes (docs/repository.md, "Server-side store"): a client's
//! usage is the sum of its stored packs' sizes, after deduplication and compression. A pack
//! whose put would take the usage above the hard quota is refused when the put begins,
//! before any byte is received; above the soft quota backups go on and the client is told
//! (`USAGE`) so that it can warn.
//!
//! Puts in flight count too: a put that passes the check *reserves* its size until its pack
//! is indexed or abandoned. The check and the reservation are one catalog transaction
//! (`Catalog::reserve_quota`), so two connections of one client, on one server or on two
//! servers sharing the catalog, cannot each fit a pack that together would pass the hard
//! quota. A reservation a dead server left behind stops counting after
//! [`RESERVATION_LIFETIME`].

use std::collections::BTreeMap;
use std::time::Duration;

use cyberbackup_core::names::ClientId;
use cyberbackup_core::v4::repository::{RepoUsage, human_bytes};
use rand_core::{OsRng, RngCore};

use crate::catalog::Catalog;
use crate::catalog::usage::QuotaCheck;

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

/// How long a reservation counts unless released: far longer than a pack put takes, short
/// enough that a server that died mid-put does not hold the space for long.
pub(super) const RESERVATION_LIFETIME: Duration = Duration::from_secs(3600);

/// Bytes a put in flight holds against its client's hard quota; released on drop (the
/// pack was indexed, so the stored bytes count it, or the put was abandoned).
#[derive(Debug)]
pub(crate) struct QuotaReservation {
    catalog: Catalog,
    /// `None` once released.
    id: Option<[u8; 16]>,
}

impl QuotaReservation {
    /// Releases the reservation now (its pack is indexed), so the client's next put is
    /// checked without it; a failure is logged and the row expires on its own.
    pub(super) async fn release(mut self) {
        if let Some(id) = self.id.take() {
            if let Err(err) = self.catalog.release_quota(id).await {
                tracing::warn!(%err, "cannot release a quota reservation (it expires on its own)");
            }
        }
    }
}

impl Drop for QuotaReservation {
    /// A put that ended otherwise (an error, a dropped connection) releases in the
    /// background.
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let catalog = self.catalog.clone();
        // Without a runtime (the process ending) the row expires instead.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = catalog.release_quota(id).await {
                    tracing::warn!(%err, "cannot release a quota reservation (it expires on its own)");
                }
            });
        }
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
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let now = super::unix_now();
        let catalog = &self.inner.catalog;
        let expires_at = now + RESERVATION_LIFETIME.as_secs();
        match catalog
            .reserve_quota(client.0, id, size, hard, now, expires_at)
            .await?
        {
            QuotaCheck::Reserved(id) => Ok(Some(QuotaReservation {
                catalog: catalog.clone(),
                id: Some(id),
            })),
            QuotaCheck::Exceeded { counted } => {
                tracing::warn!(
                    client = %String::from_utf8_lossy(&name),
                    stored = counted,
                    pack = size,
                    hard_quota = hard,
                    "pack refused: hard quota exceeded"
                );
                Err(RepoStoreError::QuotaExceeded {
                    message: format!(
                        "quota exceeded: {} stored + {} pack > {} hard quota for client {}; ask the operator to raise it or forget old snapshots",
                        human_bytes(counted),
                        human_bytes(size),
                        human_bytes(hard),
                        String::from_utf8_lossy(&name)
                    ),
                })
            }
        }
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
