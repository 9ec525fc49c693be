//! Logging setup: human-readable text (default) or JSON lines, filtered by `RUST_LOG`
//! (default `info`). Text is coloured only when stderr is a terminal and `NO_COLOR` is not
//! set (<https://no-color.org>), so log files and pipes get no escape codes.

use std::ffi::OsStr;
use std::fmt::Display;
use std::io::IsTerminal;
use std::time::Instant;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

mod recent;

pub use recent::{RecentEvent, RecentEvents, RecentLayer};

/// The global subscriber could not be installed (usually: one is already installed).
#[derive(Debug, thiserror::Error)]
#[error("cannot initialise logging: {0}")]
pub struct TelemetryError(#[source] Box<dyn std::error::Error + Send + Sync>);

/// Installs the global `tracing` subscriber writing to stderr.
///
/// # Errors
/// [`TelemetryError`] if a global subscriber is already set.
pub fn init(format: LogFormat) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Warnings and errors are also kept for the admin dashboard (`/api/v1/events`).
    let recent = RecentEvents::global().layer();
    let registry = tracing_subscriber::registry().with(filter).with(recent);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(use_color(
                        std::io::stderr().is_terminal(),
                        std::env::var_os("NO_COLOR").as_deref(),
                    ))
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    }
    .map_err(|e| TelemetryError(Box::new(e)))
}

/// What one backup connection did, logged as one INFO line when it closes (the per-file
/// lines are DEBUG).
#[derive(Debug)]
pub(crate) struct ConnectionSummary {
    protocol: u8,
    opened: Instant,
    files: u64,
    bytes: u64,
}

impl ConnectionSummary {
    /// A connection speaking `protocol` (3 or 4) opened now.
    pub(crate) fn new(protocol: u8) -> Self {
        Self {
            protocol,
            opened: Instant::now(),
            files: 0,
            bytes: 0,
        }
    }

    /// `len` plaintext bytes were written to storage.
    pub(crate) fn received(&mut self, len: usize) {
        self.bytes = self.bytes.saturating_add(len as u64);
    }

    /// A file was verified and committed.
    pub(crate) fn committed(&mut self) {
        self.files += 1;
    }

    /// Logs the summary; `error` is why the server closed the connection, if it did.
    pub(crate) fn log(&self, error: Option<&dyn Display>) {
        let duration_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (protocol, files, bytes) = (self.protocol, self.files, self.bytes);
        match error {
            None => tracing::info!(protocol, files, bytes, duration_ms, "connection closed"),
            Some(error) => tracing::info!(
                protocol,
                files,
                bytes,
                duration_ms,
                %error,
                "connection closed by the server"
            ),
        }
    }
}

/// Whether text logs are coloured: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string.
fn use_color(terminal: bool, no_color: Option<&OsStr>) -> bool {
    terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_color(true, None));
        assert!(use_color(true, Some(OsStr::new(""))));
        assert!(!use_color(true, Some(OsStr::new("1"))));
        assert!(!use_color(false, None));
        assert!(!use_color(false, Some(OsStr::new(""))));
    }
}
