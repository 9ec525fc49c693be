//! Rate limits on what a peer can make the server do: registrations (per source address and
//! for all addresses together, `governor`'s GCRA), and v3 files that fail to decrypt (per
//! client id).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cyberbackup_core::names::ClientId;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Addresses remembered before the per-address limiter forgets those back at full budget.
const KEYS_BEFORE_CLEANUP: usize = 4096;

/// Registrations (v3 1025, v4 first authentication) allowed per source address and in total
/// per minute; a limit of 0 is no limit.
#[derive(Debug)]
pub(crate) struct RegistrationLimiter {
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    total: Option<DefaultDirectRateLimiter>,
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegistrationRefused {
    /// This address used its budget.
    Address,
    /// All addresses together used the global budget.
    Total,
}

impl RegistrationLimiter {
    pub(crate) fn new(per_address_per_minute: u32, total_per_minute: u32) -> Self {
        let quota = |n| NonZeroU32::new(n).map(Quota::per_minute);
        Self {
            per_address: quota(per_address_per_minute).map(RateLimiter::keyed),
            total: quota(total_per_minute).map(RateLimiter::direct),
        }
    }

    /// Counts one registration from `peer`.
    ///
    /// # Errors
    /// Which budget is used up; nothing is counted against the other then.
    pub(crate) fn allow(&self, peer: IpAddr) -> Result<(), RegistrationRefused> {
        if let Some(per_address) = &self.per_address {
            if per_address.len() > KEYS_BEFORE_CLEANUP {
                per_address.retain_recent();
            }
            per_address
                .check_key(&peer)
                .map_err(|_| RegistrationRefused::Address)?;
        }
        if let Some(total) = &self.total {
            total.check().map_err(|_| RegistrationRefused::Total)?;
        }
        Ok(())
    }
}

impl RegistrationRefused {
    /// What to tell the peer.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::Address => "too many registrations from this address; wait a minute and retry",
            Self::Total => {
                "the server is receiving too many registrations; wait a minute and retry"
            }
        }
    }
}

/// Failures counted per client id in a fixed window; a client that reached the budget is
/// refused until its window ends. Memory is bounded by the ids that failed in the last window.
#[derive(Debug)]
pub(crate) struct FailureBudget {
    budget: u32,
    window: Duration,
    failures: Mutex<BTreeMap<ClientId, (Instant, u32)>>,
}

impl FailureBudget {
    /// `budget` failures per hour per client id; 0 is no limit.
    pub(crate) fn per_hour(budget: u32) -> Self {
        Self {
            budget,
            window: Duration::from_secs(3600),
            failures: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one failure of `client`.
    pub(crate) fn record(&self, client: ClientId, now: Instant) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failures.retain(|_, (start, _)| now.duration_since(*start) < self.window);
        let (_, count) = failures.entry(client).or_insert((now, 0));
        *count = count.saturating_add(1);
    }

    /// Whether `client` used its budget in the current window.
    pub(crate) fn is_exhausted(&self, client: ClientId, now: Instant) -> bool {
        if self.budget == 0 {
            return false;
        }
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failures.get(&client).is_some_and(|(start, count)| {
            now.duration_since(*start) < self.window && *count >= self.budget
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_global_budget_holds_across_addresses() {
        let limiter = RegistrationLimiter::new(3, 5);
        let results: Vec<_> = (1..=7u8)
            .map(|i| limiter.allow(IpAddr::from([127, 0, 0, i])))
            .collect();

        assert_eq!(results[..5], [Ok(()); 5]);
        assert_eq!(results[5..], [Err(RegistrationRefused::Total); 2]);
    }

    #[test]
    fn the_address_budget_holds_for_one_address() {
        let limiter = RegistrationLimiter::new(2, 0);
        let peer = IpAddr::from([10, 0, 0, 1]);

        let results: Vec<_> = (0..3).map(|_| limiter.allow(peer)).collect();
        let other = limiter.allow(IpAddr::from([10, 0, 0, 2]));

        assert_eq!(results, [Ok(()), Ok(()), Err(RegistrationRefused::Address)]);
        assert_eq!(other, Ok(()));
    }

    #[test]
    fn a_client_is_refused_after_its_failures_until_the_window_ends() {
        let budget = FailureBudget::per_hour(2);
        let (victim, other) = (ClientId([1; 16]), ClientId([2; 16]));
        let start = Instant::now();

        budget.record(victim, start);
        let after_one = budget.is_exhausted(victim, start);
        budget.record(victim, start);

        assert!(!after_one);
        assert!(budget.is_exhausted(victim, start));
        assert!(!budget.is_exhausted(other, start));
        assert!(!budget.is_exhausted(victim, start + Duration::from_secs(3600)));
    }
}
