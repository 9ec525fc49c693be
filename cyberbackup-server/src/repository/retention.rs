//! Server-side retention: the operator's policies (`[retention]`, `[client_retention.NAME]`
//! in the config) applied by the scheduled prune, without any key. The engine is the
//! client's (`cyberbackup_core::repo::retention`, restic's rules); the server feeds it what
//! it can read: the envelope's time (calendar in UTC) and the envelope's group (a keyed hash
//! of host and paths, so snapshots of one source are judged together while the server learns
//! neither). Tags are encrypted, so `keep-tag` exists only on the client.

use std::collections::BTreeMap;

use cyberbackup_core::names::ClientId;
use cyberbackup_core::repo::retention::{RetentionPolicy, RetentionSnapshot};
use cyberbackup_core::repo::{SnapshotId, Timestamp};

use super::{RepoStore, RepoStoreError};

/// The retention policies of a server: a default and per-client replacements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicies {
    /// For every client without its own entry; `None`: keep everything.
    pub default: Option<RetentionPolicy>,
    /// By client name: replaces the default (`None`: keep everything for this client).
    pub per_client: BTreeMap<Vec<u8>, Option<RetentionPolicy>>,
}

impl RetentionPolicies {
    /// The policy for the client named `name`, if any applies.
    #[must_use]
    pub fn for_client(&self, name: &[u8]) -> Option<&RetentionPolicy> {
        match self.per_client.get(name) {
            Some(own) => own.as_ref(),
            None => self.default.as_ref(),
        }
    }
}

impl RepoStore {
    /// Forgets the client's snapshots that `policy` does not keep, judged at `now` (Unix
    /// seconds); returns the forgotten ones. Blobs stay until a prune.
    ///
    /// # Errors
    /// [`RepoStoreError::Retention`] for a policy the engine refuses, or a catalog failure.
    pub async fn apply_retention(
        &self,
        client: ClientId,
        policy: &RetentionPolicy,
        now: u64,
    ) -> Result<Vec<SnapshotId>, RepoStoreError> {
        let snapshots = self.inner.catalog.list_snapshots(client.0).await?;
        let judged: Vec<RetentionSnapshot<'_, Option<[u8; 32]>>> = snapshots
            .iter()
            .map(|s| RetentionSnapshot {
                id: s.id,
                time: s.time,
                utc_offset_secs: 0,
                group: s.group,
                tags: &[],
            })
            .collect();
        let now = Timestamp {
            secs: i64::try_from(now).unwrap_or(i64::MAX),
            nanos: 0,
        };
        let decisions = policy
            .apply(&judged, Some(now))
            .map_err(|e| RepoStoreError::Retention(e.to_string()))?;
        let mut forgotten = Vec::new();
        for decision in decisions.iter().filter(|d| !d.is_kept()) {
            match self.forget(client, decision.id).await {
                Ok(()) => {}
                // Forgotten by the client meanwhile.
                Err(RepoStoreError::NotFound { .. }) => continue,
                Err(other) => return Err(other),
            }
            tracing::info!(
                client = %client,
                snapshot = %decision.id.to_hex(),
                "retention policy forgot a snapshot"
            );
            forgotten.push(decision.id);
        }
        Ok(forgotten)
    }
}
