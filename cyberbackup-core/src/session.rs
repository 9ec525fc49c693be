//! What every session (v3 and v4) shares: the ordered output queue and the idle deadline.

use std::time::{Duration, Instant};

use bytes::Bytes;

/// One thing a session asks its driver to do, drained in order with `poll_output`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Output<E, V, C> {
    /// Write these bytes to the peer.
    Transmit(Bytes),
    /// Carry out this effect; if it needs an answer, report it before anything else.
    Effect(E),
    /// Something happened that the driver may show or count.
    Event(V),
    /// Close the connection (after writing every earlier `Transmit`).
    Close(C),
}

/// The deadlines a session may arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Timer {
    /// No bytes from the peer for the idle timeout.
    Idle,
}

/// Deadline bookkeeping shared by both sessions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdleTimer {
    timeout: Duration,
    deadline: Option<Instant>,
}

impl IdleTimer {
    pub(crate) fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            deadline: now.checked_add(timeout),
        }
    }

    pub(crate) fn reset(&mut self, now: Instant) {
        self.deadline = now.checked_add(self.timeout);
    }

    pub(crate) fn disarm(&mut self) {
        self.deadline = None;
    }

    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| now >= deadline)
    }

    pub(crate) fn poll(&self) -> Option<(Instant, Timer)> {
        self.deadline.map(|deadline| (deadline, Timer::Idle))
    }
}
