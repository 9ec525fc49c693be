//! What the prunes running right now are doing: one [`PruneActivity`] per repository being
//! pruned (the scheduled prune, the admin API's and a client's `forget --prune` can run at
//! once on different repositories), read by `/api/v1/maintenance` and the dashboard, and
//! logged at each phase (`prune phase`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use cyberbackup_core::names::ClientId;
use serde::Serialize;

/// The steps of one prune, in order (`prune.rs`, module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrunePhase {
    /// Reading and verifying the reference chunks of every snapshot.
    LiveSet,
    /// Condemning unreferenced blobs and sweeping those past the grace period.
    Mark,
    /// Rewriting packs whose live bytes are below the threshold.
    Repack,
    /// Deleting pack objects whose deletion is due.
    Delete,
}

impl PrunePhase {
    /// The name logged and shown (`live-set`, `mark`, `repack`, `delete`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LiveSet => "live-set",
            Self::Mark => "mark",
            Self::Repack => "repack",
            Self::Delete => "delete",
        }
    }
}

/// One repository's prune in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PruneActivity {
    /// The client whose repository it is (hex).
    pub client_id: String,
    /// When this prune started.
    #[serde(serialize_with = "serialize_rfc3339")]
    pub started_at: SystemTime,
    /// The step it is in.
    pub phase: PrunePhase,
    /// Items of this phase done: reference chunks read, packs repacked, packs deleted.
    pub done: u64,
    /// Items this phase has in all (0 when it does not count: the mark).
    pub total: u64,
}

fn serialize_rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_seconds(*time).to_string())
}

/// The prunes in progress, shared by the store's clones. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PruneProgress(Arc<Mutex<BTreeMap<ClientId, PruneActivity>>>);

impl PruneProgress {
    /// The prunes running now, by client id.
    #[must_use]
    pub fn running(&self) -> Vec<PruneActivity> {
        self.lock().values().cloned().collect()
    }

    /// Records that the client's prune started; the entry goes when the guard drops (the
    /// prune finished or failed).
    pub(super) fn start(&self, client: ClientId) -> PruneTracker {
        self.lock().insert(
            client,
            PruneActivity {
                client_id: hex::encode(client.0),
                started_at: SystemTime::now(),
                phase: PrunePhase::LiveSet,
                done: 0,
                total: 0,
            },
        );
        PruneTracker {
            progress: self.clone(),
            client,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ClientId, PruneActivity>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, client: ClientId, change: impl FnOnce(&mut PruneActivity)) {
        if let Some(activity) = self.lock().get_mut(&client) {
            change(activity);
        }
    }
}

/// Updates one running prune's entry in [`PruneProgress`]; removes it on drop.
#[derive(Debug)]
pub(super) struct PruneTracker {
    progress: PruneProgress,
    client: ClientId,
}

impl PruneTracker {
    /// Enters `phase`, which has `total` items, and logs it.
    pub(super) fn phase(&self, phase: PrunePhase, total: u64) {
        tracing::info!(
            client = %hex::encode(self.client.0),
            phase = phase.as_str(),
            total,
            "prune phase"
        );
        self.progress.update(self.client, |activity| {
            activity.phase = phase;
            activity.done = 0;
            activity.total = total;
        });
    }

    /// Counts `items` more done in the current phase.
    pub(super) fn advance(&self, items: u64) {
        self.progress
            .update(self.client, |activity| activity.done += items);
    }
}

impl Drop for PruneTracker {
    fn drop(&mut self) {
        self.progress.lock().remove(&self.client);
    }
}
