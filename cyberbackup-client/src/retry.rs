//! Reconnect policy: exponential backoff with a cap. Pure (no clock, no sleeping), so the
//! schedule is unit-tested; the driver sleeps for the delays it returns.

use std::time::Duration;

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
