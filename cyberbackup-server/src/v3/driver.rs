//! One v3 connection: a `ServerSession` fed from the socket (bounded reads), its replies
//! written under the write deadline, its effects performed by [`Effects`], its deadlines
//! enforced (the request deadline, one idle period, shutdown), and its outcome counted.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use cyberbackup_core::session::Output;
use cyberbackup_core::v3::{CloseReason, ServerEffect, ServerEvent, ServerSession};
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::effects::Effects;
use crate::deadline::{self, RequestDeadline, log_request_timeout, log_write_failure};
use crate::shared::Shared;

/// Bytes asked of the socket per read: the read buffer never holds much more than this.
const READ_CHUNK: usize = 64 * 1024;

/// Serves a v3 connection whose first bytes are already in `buf` (their request started
/// `request`) until the session closes, the peer leaves, or shutdown.
pub(crate) async fn serve(
    stream: TcpStream,
    buf: BytesMut,
    request: RequestDeadline,
    peer: SocketAddr,
    shared: &Shared,
    shutdown: &CancellationToken,
    abort: &CancellationToken,
) {
    let mut effects = Effects::new(shared, peer.ip());
    let connection = shared.live.connection_opened();
    let reason = drive(
        stream,
        buf,
        request,
        shared,
        &mut effects,
        shutdown,
        abort,
        connection,
    )
    .await;
    effects.abort_all().await;
    shared.live.connection_closed(connection);
    if let CloseReason::Error(error) = &reason {
        let reason = crate::live::failure_reason(&format!("{error:?}"));
        shared.live.record(|| {
            metrics::counter!("cyberbackup_failures_total", "reason" => reason).increment(1);
        });
    }
    match &reason {
        CloseReason::Done | CloseReason::PeerClosed => effects.summary().log(None),
        other => effects.summary().log(Some(&format_args!("{other:?}"))),
    }
}

async fn drive(
    mut stream: TcpStream,
    mut buf: BytesMut,
    mut request: RequestDeadline,
    shared: &Shared,
    effects: &mut Effects<'_>,
    shutdown: &CancellationToken,
    abort: &CancellationToken,
    connection: u64,
) -> CloseReason {
    let mut session = ServerSession::new(shared.session_config.clone(), OsRng, now());
    if !buf.is_empty() {
        let _ = session.handle_bytes(now(), &mut buf);
    }
    let mut shutting_down = false;
    loop {
        let mut answered = false;
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(bytes) => {
                    request.on_reply();
                    let limit = shared.config.idle_timeout();
                    if let Err(err) = deadline::write_all(&mut stream, &bytes, limit, abort).await {
                        log_write_failure(&err);
                        session.handle_eof(now());
                    }
                }
                Output::Effect(effect) => {
                    answered |= effect.needs_answer();
                    shared.live.observe_effect(connection, &effect);
                    let kind = effect_kind(&effect);
                    let started = Instant::now();
                    if let Err(err) = effects.run(&mut session, effect).await {
                        tracing::error!(%err, "effect could not be answered");
                    }
                    let elapsed = started.elapsed().as_secs_f64();
                    shared.live.record(|| {
                        metrics::histogram!("cyberbackup_effect_duration_seconds", "effect" => kind)
                            .record(elapsed);
                    });
                }
                Output::Event(event) => {
                    if let ServerEvent::DecryptFailed { client_id } = &event {
                        effects.decrypt_failed(*client_id);
                        shared.live.record(|| {
                            metrics::counter!("cyberbackup_v3_decrypt_failures_total").increment(1);
                        });
                    }
                    if let ServerEvent::RequestFailed { error } = &event {
                        let reason = crate::live::failure_reason(&format!("{error:?}"));
                        shared.live.record(|| {
                            metrics::counter!("cyberbackup_failures_total", "reason" => reason)
                                .increment(1);
                        });
                    }
                    log_event(&event);
                }
                Output::Close(reason) => {
                    let _ = stream.shutdown().await;
                    return reason;
                }
            }
        }
        if answered {
            // The session stopped to wait for an answer: continue with what is buffered.
            let _ = session.handle_bytes(now(), &mut buf);
            continue;
        }
        if shutting_down && !session.has_open_transfer() {
            let _ = stream.shutdown().await;
            return CloseReason::Done;
        }
        let deadline =
            deadline::earliest(session.poll_timeout().map(|(at, _)| at), request.deadline());
        buf.reserve(READ_CHUNK);
        tokio::select! {
            // Bytes already waiting win over an expired deadline: a server that was slow to
            // get round to this connection must not blame the peer for it.
            biased;
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => session.handle_eof(now()),
                Ok(n) => {
                    request.on_received(now(), n);
                    let _ = session.handle_bytes(now(), &mut buf);
                }
            },
            () = deadline::sleep_until(deadline) => {
                if request.expired(now()) {
                    log_request_timeout(&request);
                    session.handle_eof(now());
                } else {
                    session.handle_timeout(now());
                }
            }
            () = shutdown.cancelled(), if !shutting_down => shutting_down = true,
            () = abort.cancelled() => {
                tracing::warn!("aborting the transfer: shutdown grace period is over");
                session.handle_eof(now());
            }
        }
    }
}

fn log_event(event: &ServerEvent) {
    match event {
        // Recorded once: a span shows each recording of a field again.
        ServerEvent::Registered { client_id } | ServerEvent::Reconnected { client_id } => {
            tracing::Span::current().record("client", tracing::field::display(client_id));
            tracing::info!(?event, "session");
        }
        ServerEvent::KeyExchanged { .. } => tracing::info!(?event, "session"),
        ServerEvent::RequestFailed { error } => tracing::warn!(%error, "request refused with 1607"),
        ServerEvent::FileDiscarded {
            transfer,
            file_name,
            received,
            reason,
        } => tracing::info!(
            transfer = transfer.0,
            file = %file_name.to_string_lossy(),
            received_bytes = received,
            %reason,
            "file discarded"
        ),
        ServerEvent::RegistrationRefused { name } => tracing::info!(
            name = %name.to_string_lossy(),
            "registration refused with 1601: the name is taken"
        ),
        ServerEvent::NonConformingClient { transfer, quirk } => tracing::warn!(
            transfer = transfer.0,
            %quirk,
            "non-conforming v3 client: accepted"
        ),
        ServerEvent::DecryptFailed { client_id } => tracing::warn!(
            client = %client_id,
            "a file failed to decrypt (wrong key or forged data): closing the connection"
        ),
        ServerEvent::PacketsDropped { packets } => {
            tracing::info!(
                packets,
                "dropped the rest of the failed file without replies"
            );
        }
        other => tracing::debug!(event = ?other, "session"),
    }
}

/// Label of an effect for the latency histogram (never formats the effect's data).
fn effect_kind(effect: &ServerEffect) -> &'static str {
    match effect {
        ServerEffect::RegisterClient { .. } => "register_client",
        ServerEffect::LookupClient { .. } => "lookup_client",
        ServerEffect::StorePublicKey { .. } => "store_public_key",
        ServerEffect::BeginFile { .. } => "begin_file",
        ServerEffect::AppendFile { .. } => "append_file",
        ServerEffect::FinishFile { .. } => "finish_file",
        ServerEffect::CommitFile { .. } => "commit_file",
        ServerEffect::AbortFile { .. } => "abort_file",
        _ => "other",
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
