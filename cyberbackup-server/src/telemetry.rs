//! Logging setup: human-readable text (default) or JSON lines, filtered by `RUST_LOG`
//! (default `info`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

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
    let recent = crate::http::RecentEvents::global().layer();
    let registry = tracing_subscriber::registry().with(filter).with(recent);
    match format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
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
