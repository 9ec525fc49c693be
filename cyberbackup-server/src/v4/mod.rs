//! Protocol v4 on the server (`docs/protocol-v4.md`): the server key, the connection driver
//! of [`cyberbackup_core::v4::server::ServerSession`], its effects against the catalog and
//! storage, resumable partial files, enrollment tokens, and the version byte the connection
//! dispatches on (byte 16: 3 → v3, 4 → v4).

mod driver;
mod effects;
pub mod identity;
pub mod partial;
mod repository;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cyberbackup_core::v4::noise::{Fingerprint, to_hex};
use cyberbackup_core::v4::server::ServerConfig as SessionConfig;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub use crate::shared::V4State;
pub(crate) use driver::serve;

use crate::catalog::{Catalog, ClientId};
use crate::config::ServerConfig;
use crate::error::ServerError;

/// Offset of the version byte in the first header of a connection.
pub const VERSION_OFFSET: usize = 16;
/// Default validity of an enrollment token: 24 hours.
pub const DEFAULT_ENROLLMENT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Loads (or creates) the server key and logs the start-up notes: the fingerprint, and a
/// warning while `legacy_v3` accepts the insecure v3 protocol.
///
/// # Errors
/// [`ServerError::Io`] naming the key file and the fix.
pub fn open_state(config: &ServerConfig) -> Result<V4State, ServerError> {
    let path = config.v4_identity_path();
    let (keys, created) = identity::load_or_create(&path)
        .map_err(|e| ServerError::io(e.to_string(), std::io::Error::other("v4 server key")))?;
    let fingerprint = keys.public().fingerprint();
    if created {
        tracing::info!(file = %path.display(), %fingerprint, "created the v4 server key; give this fingerprint to clients");
    } else {
        tracing::info!(%fingerprint, "v4 server key loaded");
    }
    if config.legacy_v3 {
        tracing::warn!(
            "legacy_v3 = true: the insecure v3 protocol (no server authentication, RSA-1024, no integrity) is accepted for legacy clients; set legacy_v3 = false once every client speaks v4"
        );
    }
    Ok(V4State::new(
        keys,
        Arc::new(SessionConfig {
            idle_timeout: config.idle_timeout(),
            checkpoint_interval: config.checkpoint_interval_bytes.max(1),
            max_file_len: config.max_file_size,
            enrollment_required: config.enrollment_required,
            ..SessionConfig::default()
        }),
    ))
}

/// The fingerprint of the configured server key (created if missing), for
/// `cyberbackup-server fingerprint`.
///
/// # Errors
/// [`ServerError::Io`] naming the key file.
pub fn server_fingerprint(config: &ServerConfig) -> Result<(Fingerprint, PathBuf), ServerError> {
    let path = config.v4_identity_path();
    let (keys, _) = identity::load_or_create(&path)
        .map_err(|e| ServerError::io(e.to_string(), std::io::Error::other("v4 server key")))?;
    Ok((keys.public().fingerprint(), path))
}

/// A new enrollment token: 32 random bytes as 64 hex digits. Only its SHA-256 is stored.
/// With `for_client`, the token enrolls a new device of that existing client (a new or
/// replaced machine of the same account) instead of registering a new client. Returns the
/// token and its expiry (RFC 3339).
///
/// # Errors
/// [`ServerError::Catalog`].
pub async fn enroll(
    catalog: &Catalog,
    ttl: Duration,
    for_client: Option<ClientId>,
) -> Result<(String, String), ServerError> {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let token = to_hex(&secret);
    let expires = catalog
        .create_enrollment_token(token_hash(&token), ttl, for_client)
        .await?;
    Ok((token, expires))
}

/// SHA-256 of a token's text, as stored.
#[must_use]
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// `legacy_v3 = false`: answers a v3 request with one 1607 and closes.
pub(crate) async fn refuse_v3(
    stream: &mut TcpStream,
    write_limit: Duration,
    abort: &tokio_util::sync::CancellationToken,
) {
    tracing::warn!(
        "refused a protocol v3 connection: legacy_v3 = false on this server (clients must use protocol v4)"
    );
    let mut reply = Vec::new();
    cyberbackup_core::v3::frame::Response::ServerError.encode(&mut reply);
    let _ = crate::deadline::write_all(stream, &reply, write_limit, abort).await;
    let _ = stream.shutdown().await;
}
