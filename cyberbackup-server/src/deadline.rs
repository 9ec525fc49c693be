//! The deadlines a connection holds its peer to besides the session's idle timer, shared by
//! the v3 and v4 drivers: a started request must arrive within `read_timeout_secs` (plus time
//! at [`MIN_RECEIVE_RATE`] for the bytes it carries, so large file content is not cut off), and
//! a write the peer does not take within `idle_timeout_secs` ends the connection.
//!
//! Without the request deadline a peer that trickles one byte every few seconds resets the
//! idle timer forever and holds its connection slot (docs/reliability.md, "Hostile load").

use std::io;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Bytes per second a started request must at least arrive at, on top of
/// `read_timeout_secs`: 1 KiB/s, far below any real link, far above a trickle.
pub(crate) const MIN_RECEIVE_RATE: u64 = 1024;

/// When the request being received must be complete.
///
/// A request starts with the first byte received after the server's last reply (or after
/// accept) and ends with the server's next reply; a request with no reply of its own (a v3
/// file packet, a v4 data frame) runs on into the next one, and the rate allowance keeps a
/// steady upload within its deadline.
#[derive(Debug, Clone)]
pub(crate) struct RequestDeadline {
    read_timeout: Duration,
    started: Option<Instant>,
    received: u64,
}

impl RequestDeadline {
    /// No request started yet.
    pub(crate) fn new(read_timeout: Duration) -> Self {
        Self {
            read_timeout,
            started: None,
            received: 0,
        }
    }

    /// `len` bytes of a request arrived at `now`.
    pub(crate) fn on_received(&mut self, now: Instant, len: usize) {
        if len == 0 {
            return;
        }
        self.started.get_or_insert(now);
        self.received = self
            .received
            .saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
    }

    /// The server replied: the request was received whole.
    pub(crate) fn on_reply(&mut self) {
        self.started = None;
        self.received = 0;
    }

    /// The deadline of the request being received, if one started.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let started = self.started?;
        let allowance =
            Duration::from_millis(self.received.saturating_mul(1000) / MIN_RECEIVE_RATE);
        started.checked_add(self.read_timeout.saturating_add(allowance))
    }

    /// Whether the deadline passed at `now`.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|deadline| now >= deadline)
    }

    /// Seconds since the request started and the bytes it carried (for the log line).
    pub(crate) fn progress(&self, now: Instant) -> (u64, u64) {
        let elapsed = self.started.map_or(0, |started| {
            now.saturating_duration_since(started).as_secs()
        });
        (elapsed, self.received)
    }
}

/// The earlier of two optional deadlines.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Writes all of `bytes`, failing with [`io::ErrorKind::TimedOut`] when the peer takes none
/// of them for `limit` (it stopped reading) and with [`io::ErrorKind::Interrupted`] when
/// `abort` is cancelled (the shutdown grace period is over).
pub(crate) async fn write_all(
    stream: &mut TcpStream,
    bytes: &[u8],
    limit: Duration,
    abort: &CancellationToken,
) -> io::Result<()> {
    tokio::select! {
        written = tokio::time::timeout(limit, stream.write_all(bytes)) => match written {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer read nothing for {} s", limit.as_secs()),
            )),
        },
        () = abort.cancelled() => Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the shutdown grace period is over",
        )),
    }
}

/// `deadline` as a future (pending forever when `None`).
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Logs a request that did not arrive within its deadline (a trickle, or a stalled link).
pub(crate) fn log_request_timeout(request: &RequestDeadline) {
    let (secs, bytes) = request.progress(tokio::time::Instant::now().into_std());
    tracing::info!(
        secs,
        bytes,
        "closing: a request did not arrive within read_timeout_secs (at least {} bytes/s are needed once a request started)",
        MIN_RECEIVE_RATE
    );
}

/// Logs a failed write: at INFO when the peer stopped reading, else at DEBUG (it left).
pub(crate) fn log_write_failure(err: &io::Error) {
    if err.kind() == io::ErrorKind::TimedOut {
        tracing::info!(%err, "closing: the peer stopped reading (idle_timeout_secs)");
    } else {
        tracing::debug!(%err, "write failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_has_the_read_timeout_plus_time_for_its_bytes() {
        let start = Instant::now();
        let mut deadline = RequestDeadline::new(Duration::from_secs(30));
        assert_eq!(deadline.deadline(), None);

        deadline.on_received(start, 23);
        deadline.on_received(start + Duration::from_secs(5), 2048 - 23);

        assert_eq!(deadline.deadline(), Some(start + Duration::from_secs(32)));
        assert!(!deadline.expired(start + Duration::from_secs(31)));
        assert!(deadline.expired(start + Duration::from_secs(32)));
    }

    #[test]
    fn a_reply_ends_the_request() {
        let start = Instant::now();
        let mut deadline = RequestDeadline::new(Duration::from_secs(30));
        deadline.on_received(start, 100);

        deadline.on_reply();
        deadline.on_received(start + Duration::from_secs(40), 1);

        assert_eq!(deadline.deadline(), Some(start + Duration::from_secs(70)));
    }
}
