//! One socket driving one v4 `ServerSession` (the canonical loop of
//! `docs/architecture.md`: feed, drain outputs in order, re-feed after an answered effect,
//! then wait for bytes, the deadline or shutdown).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cyberbackup_core::v4::server::{ServerEvent, ServerSession};
use cyberbackup_core::v4::wire::ErrorCode;
use cyberbackup_core::v4::{CloseReason, Output};
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::effects::V4Effects;
use crate::deadline::{self, RequestDeadline};
use crate::deadline::{log_request_timeout, log_write_failure};
use crate::shared::Shared;

/// Bytes asked of the socket per read (a frame is at most 65 539 bytes).
const READ_CHUNK: usize = 256 * 1024;

/// Serves a v4 connection whose first bytes are already in `buf` (their request started
/// `request`).
pub(crate) async fn serve(
    mut stream: TcpStream,
    mut buf: BytesMut,
    mut request: RequestDeadline,
    peer: SocketAddr,
    shared: &Shared,
    shutdown: &CancellationToken,
    abort: &CancellationToken,
    connection: u64,
) -> CloseReason {
    let mut effects = V4Effects::new(shared, peer.ip(), connection);
    let mut link = Link {
        stream: &mut stream,
        request: &mut request,
        write_limit: shared.config.idle_timeout(),
        abort,
    };
    let reason = drive(&mut link, &mut buf, shared, &mut effects, shutdown).await;
    effects.finish_connection().await;
    let _ = stream.shutdown().await;
    match &reason {
        CloseReason::Done | CloseReason::PeerClosed => effects.summary().log(None),
        CloseReason::Error(error) => effects.summary().log(Some(error)),
        other => effects.summary().log(Some(&format_args!("{other:?}"))),
    }
    reason
}

/// The socket with the deadlines the peer is held to.
struct Link<'a> {
    stream: &'a mut TcpStream,
    request: &'a mut RequestDeadline,
    write_limit: std::time::Duration,
    abort: &'a CancellationToken,
}

async fn drive(
    link: &mut Link<'_>,
    buf: &mut BytesMut,
    shared: &Shared,
    effects: &mut V4Effects<'_>,
    shutdown: &CancellationToken,
) -> CloseReason {
    let state = &shared.v4;
    let mut session = ServerSession::new(
        state.session_config.clone(),
        state.keys.clone(),
        OsRng,
        now(),
    );
    let _ = session.handle_bytes(now(), buf);
    let mut shutting_down = false;
    // Transmits wait here until the next effect, the end of the drain or the close: a
    // closing connection settles its upload (and releases its claim on the name) before its
    // last frame, often an error the client answers by reconnecting at once, is sent.
    let mut unsent: Vec<Bytes> = Vec::new();
    loop {
        let mut answered = false;
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(bytes) => unsent.push(bytes),
                Output::Effect(effect) => {
                    flush(link, &mut unsent, &mut session).await;
                    answered |= effect.needs_answer();
                    if let Err(err) = effects.run(&mut session, effect).await {
                        tracing::debug!(%err, "v4 effect answer");
                    }
                }
                Output::Event(event) => log_event(&event),
                Output::Close(reason) => {
                    effects.finish_connection().await;
                    flush(link, &mut unsent, &mut session).await;
                    return reason;
                }
            }
        }
        flush(link, &mut unsent, &mut session).await;
        if answered {
            let _ = session.handle_bytes(now(), buf);
            continue;
        }
        if shutting_down && !session.has_open_upload() {
            return CloseReason::Done;
        }
        let deadline = deadline::earliest(
            session.poll_timeout().map(|(at, _)| at),
            link.request.deadline(),
        );
        buf.reserve(READ_CHUNK);
        tokio::select! {
            read = link.stream.read_buf(buf) => match read {
                Ok(0) | Err(_) => session.handle_eof(now()),
                Ok(n) => {
                    link.request.on_received(now(), n);
                    let _ = session.handle_bytes(now(), buf);
                }
            },
            () = deadline::sleep_until(deadline) => {
                if link.request.expired(now()) {
                    log_request_timeout(link.request);
                    session.handle_eof(now());
                } else {
                    session.handle_timeout(now());
                }
            }
            () = shutdown.cancelled(), if !shutting_down => shutting_down = true,
            () = link.abort.cancelled() => {
                tracing::warn!("shutdown grace period over: closing the v4 connection (uploads stay resumable)");
                session.handle_eof(now());
            }
        }
    }
}

/// Writes the transmits gathered so far (a reply: the request was received whole); a failed
/// or stalled write ends the session as an EOF would.
async fn flush<R: rand_core::CryptoRngCore>(
    link: &mut Link<'_>,
    unsent: &mut Vec<Bytes>,
    session: &mut ServerSession<R>,
) {
    if !unsent.is_empty() {
        link.request.on_reply();
    }
    for bytes in unsent.drain(..) {
        if let Err(err) =
            deadline::write_all(link.stream, &bytes, link.write_limit, link.abort).await
        {
            log_write_failure(&err);
            session.handle_eof(now());
            break;
        }
    }
}

fn log_event(event: &ServerEvent) {
    match event {
        ServerEvent::Authenticated {
            client_id,
            registered,
        } => {
            tracing::Span::current().record("client", tracing::field::display(client_id));
            // The connection's span now names the client.
            tracing::info!(registered, "v4 client authenticated");
        }
        // A refusal the user caused (a typo in a restore, a taken name) is not a server
        // problem: it stays out of the dashboard's warnings.
        ServerEvent::Refused { code, message } if is_user_mistake(*code) => {
            tracing::info!(%code, reason = %message, "v4 request refused");
        }
        ServerEvent::Refused { code, message } => {
            tracing::warn!(%code, reason = %message, "v4 request refused");
        }
        other => tracing::debug!(event = ?other, "v4 session"),
    }
}

/// Refusals that answer what the user asked for (no such file, a name in use, a file too
/// large, no or a wrong enrollment token, no repository yet or one already), as opposed to the server failing or a peer
/// misbehaving.
fn is_user_mistake(code: ErrorCode) -> bool {
    [
        ErrorCode::UNKNOWN_CLIENT,
        ErrorCode::NAME_TAKEN,
        ErrorCode::ENROLLMENT_REQUIRED,
        ErrorCode::ENROLLMENT_INVALID,
        ErrorCode::NOT_FOUND,
        ErrorCode::TOO_LARGE,
        ErrorCode::BAD_NAME,
        ErrorCode::BUSY,
        ErrorCode::NO_REPOSITORY,
        ErrorCode::EXISTS,
    ]
    .contains(&code)
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
