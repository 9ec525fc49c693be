//! Reconnect policy: exponential backoff with a cap. Pure (no clock, no sleeping), so the
//! schedule is unit-tested; the driver sleeps for the delays it returns.

use std::time::Duration;

/// Shortest wait before retrying after `rate_limited` (the server's default per-address budget
/// refills one registration every 2 s).
pub const RATE_LIMITED_DELAY: Duration = Duration::from_secs(2);

/// Longest wait before retrying after `rate_limited`.
pub const RATE_LIMITED_MAX_DELAY: Duration = Duration::from_secs(60);

/// How often and how patiently to reconnect after a network error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Reconnects allowed after the first attempt failed (0 = never reconnect).
    pub max_retries: u32,
    /// Delay before the first reconnect.
    pub initial_delay: Duration,
    /// Upper bound of any delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A policy with `max_retries` reconnects and the default delays.
    #[must_use]
    pub fn with_retries(max_retries: u32) -> Self {
        Self {
            max_retries,
            ..Self::default()
        }
    }

    /// The delay before reconnect number `retry` (1-based), or `None` once the policy is
    /// exhausted. Doubles from `initial_delay` and never exceeds `max_delay`.
    #[must_use]
    pub fn delay(&self, retry: u32) -> Option<Duration> {
        if retry == 0 || retry > self.max_retries {
            return None;
        }
        let factor = 2u32.checked_pow(retry - 1).unwrap_or(u32::MAX);
        let delay = self
            .initial_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay);
        Some(delay.min(self.max_delay))
    }

    /// The delay before retry number `retry` after the server answered `rate_limited`: the
    /// usual delay, but at least [`RATE_LIMITED_DELAY`] doubled per retry (a registration
    /// budget refills over seconds, so quick retries would all be refused too); `None` once
    /// the policy is exhausted.
    #[must_use]
    pub fn rate_limited_delay(&self, retry: u32) -> Option<Duration> {
        let usual = self.delay(retry)?;
        let factor = 2u32.checked_pow(retry - 1).unwrap_or(u32::MAX);
        let floor = RATE_LIMITED_DELAY
            .checked_mul(factor)
            .unwrap_or(RATE_LIMITED_MAX_DELAY)
            .min(RATE_LIMITED_MAX_DELAY);
        Some(usual.max(floor))
    }

    /// Every delay of the schedule, in order.
    pub fn schedule(&self) -> impl Iterator<Item = Duration> + '_ {
        (1..=self.max_retries).filter_map(|retry| self.delay(retry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_then_cap_and_stop() {
        let policy = RetryPolicy {
            max_retries: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
        };
        let ms: Vec<u128> = policy.schedule().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        assert_eq!(policy.delay(6), None);
        assert_eq!(policy.delay(0), None);
    }

    #[test]
    fn rate_limited_retries_wait_at_least_two_seconds_doubling() {
        let policy = RetryPolicy::with_retries(8);
        let secs: Vec<u64> = (1..=8)
            .filter_map(|retry| policy.rate_limited_delay(retry))
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(policy.rate_limited_delay(9), None);
    }

    #[test]
    fn zero_retries_means_no_reconnect() {
        assert_eq!(RetryPolicy::with_retries(0).delay(1), None);
        assert_eq!(RetryPolicy::with_retries(0).schedule().count(), 0);
    }

    #[test]
    fn huge_retry_numbers_do_not_overflow() {
        let policy = RetryPolicy {
            max_retries: u32::MAX,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        };
        assert_eq!(policy.delay(40), Some(Duration::from_secs(60)));
        assert_eq!(policy.delay(u32::MAX), Some(Duration::from_secs(60)));
    }
}
