//! Logging setup: human-readable text (default) or JSON lines, filtered by `RUST_LOG`
//! (default `info`).

use tracing_subscriber::EnvFilter;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(TelemetryError)
}
