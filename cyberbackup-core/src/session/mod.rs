//! Transfer state machines for both ends of a v3 connection, plus what they share: the
//! output queue, timers and errors.

mod client;
mod error;
mod server;

use std::time::{Duration, Instant};

use bytes::Bytes;

pub use client::{
    ClientConfig, ClientEffect, ClientEvent, ClientOutput, ClientSession, FileFailure, FileId,
    FileSpec, PacketScheme, TransferPhase,
};
pub use error::{PeerMisbehaved, SessionError};
pub use server::{
    ClientQuirk, DiscardReason, RegistrationOutcome, ServerConfig, ServerEffect, ServerEvent,
    ServerOutput, ServerSession, StorageFailure, StoredClient, TransferId,
};

/// One thing a session asks its driver to do, drained in order with `poll_output`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Output<E, V, C = CloseReason> {
    /// Write these bytes to the peer.
    Transmit(Bytes),
    /// Carry out this effect; if it needs an answer, report it before anything else.
    Effect(E),
    /// Something happened that the driver may show or count.
    Event(V),
    /// Close the connection (after writing every earlier `Transmit`).
    Close(C),
}

/// Why a session asks to close the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The session finished its work.
    Done,
    /// The peer closed its side.
    PeerClosed,
    /// The peer was silent longer than the idle timeout.
    IdleTimeout,
    /// A fatal error; the reply (if any) was queued before this.
    Error(SessionError),
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
