//! One accepted socket: reads until the version byte of the first header, then hands the
//! connection to its protocol's driver (`v3`, `v4`), or refuses v3 when `legacy_v3` is off.
//! Until then it enforces one idle period from accept and the request deadline.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::deadline::{RequestDeadline, log_request_timeout};
use crate::shared::Shared;
use crate::v4::VERSION_OFFSET;

/// Bytes asked of the socket per read: the read buffer never holds much more than this.
const READ_CHUNK: usize = 64 * 1024;

/// Serves one connection accepted at `accepted` until the session closes, the peer leaves,
/// or shutdown.
pub(crate) async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    accepted: Instant,
    shared: &Shared,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    let span = tracing::info_span!("connection", %peer, client = tracing::field::Empty);
    async move {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
        let mut request = RequestDeadline::new(shared.config.read_timeout());
        // Dispatch on the version byte at offset 16 of the first header (docs/protocol-v4.md
        // §2). No request has started yet, so shutdown ends the connection at once.
        let idle_deadline = accepted + shared.config.idle_timeout();
        let dispatched = tokio::select! {
            () = shutdown.cancelled() => None,
            read = read_version(&mut stream, idle_deadline, &mut request) => read,
        };
        let Some((buf, version)) = dispatched else {
            tracing::debug!("closed before a first request arrived");
            return;
        };
        match version {
            4 => {
                let connection = shared.live.connection_opened();
                crate::v4::serve(
                    stream, buf, request, peer, shared, &shutdown, &abort, connection,
                )
                .await;
                shared.live.connection_closed(connection);
                return;
            }
            3 if !shared.config.legacy_v3 => {
                crate::v4::refuse_v3(&mut stream, shared.config.idle_timeout(), &abort).await;
                return;
            }
            _ => {}
        }
        crate::v3::serve(stream, buf, request, peer, shared, &shutdown, &abort).await;
    }
    .instrument(span)
    .await;
}

/// Reads until the version byte of the first header is available; returns the bytes read
/// and the version. `None` when the peer closed, sent nothing before `idle_deadline` (one
/// idle period from accept: the session that follows does not start another), or did not
/// complete the header within the request deadline.
async fn read_version(
    stream: &mut TcpStream,
    idle_deadline: Instant,
    request: &mut RequestDeadline,
) -> Option<(BytesMut, u8)> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        if let Some(&version) = buf.get(VERSION_OFFSET) {
            return Some((buf, version));
        }
        let deadline = request.deadline().unwrap_or(idle_deadline);
        let read = tokio::time::timeout_at(deadline.into(), stream.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => request.on_received(now(), n),
            Ok(_) => return None,
            Err(_) => {
                log_request_timeout(request);
                return None;
            }
        }
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
