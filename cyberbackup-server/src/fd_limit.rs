//! The process's descriptor limit (`RLIMIT_NOFILE`): raised from the soft to the hard limit at
//! start-up, as most servers do, and checked against what `max_connections` needs, so the
//! server refuses to start instead of failing `accept` with "Too many open files" under load.

use crate::config::ConfigError;

/// Descriptors a backup connection may hold: its socket and the file it writes or reads.
pub const DESCRIPTORS_PER_CONNECTION: u64 = 2;

/// Descriptors the server needs besides its backup connections: the listeners, the catalog
/// (writer, read pool, WAL), the runtime, and the admin listener's connections.
pub const RESERVED_DESCRIPTORS: u64 = 64 + crate::http::ADMIN_MAX_CONNECTIONS as u64;

/// Descriptors `max_connections` needs.
#[must_use]
pub fn needed(max_connections: u32) -> u64 {
    u64::from(max_connections)
        .saturating_mul(DESCRIPTORS_PER_CONNECTION)
        .saturating_add(RESERVED_DESCRIPTORS)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the limit now in force
/// (`None`: unlimited, or not known on this platform).
///
/// # Errors
/// The `setrlimit` error (the soft limit then stays as it was).
pub fn raise_soft_limit() -> std::io::Result<Option<u64>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    if current != maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: maximum,
                maximum,
            },
        )?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// Raises the limit (see [`raise_soft_limit`]) and checks that `max_connections` fits.
///
/// # Errors
/// [`ConfigError::Invalid`] on `max_connections` when even the hard limit is too low, with
/// both fixes: raise the limit, or lower `max_connections`.
pub fn raise_and_check(max_connections: u32) -> Result<(), ConfigError> {
    let limit = match raise_soft_limit() {
        Ok(limit) => limit,
        Err(err) => {
            tracing::warn!(%err, "cannot raise the descriptor limit (RLIMIT_NOFILE)");
            rustix::process::getrlimit(rustix::process::Resource::Nofile).current
        }
    };
    let needed = needed(max_connections);
    match limit {
        Some(limit) if limit < needed => {
            let fits = limit.saturating_sub(RESERVED_DESCRIPTORS) / DESCRIPTORS_PER_CONNECTION;
            Err(ConfigError::Invalid {
                key: "max_connections",
                reason: format!(
                    "{max_connections} connections need {needed} file descriptors, but this process may open only {limit} (RLIMIT_NOFILE, hard limit) — raise the limit (`ulimit -Hn {needed}` as root, or LimitNOFILE={needed} in the systemd unit), or set max_connections to {fits} or less"
                ),
            })
        }
        limit => {
            tracing::info!(
                limit = limit.map_or_else(|| "unlimited".to_owned(), |l| l.to_string()),
                needed,
                "descriptor limit (RLIMIT_NOFILE)"
            );
            Ok(())
        }
    }
}
