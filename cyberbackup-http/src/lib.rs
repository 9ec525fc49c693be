//! The HTTP listener set-up shared by the server's admin dashboard and the client's web UI:
//! an axum [`Router`] served over hyper's HTTP/1 connections with a header-read timeout (it
//! also closes kept-alive connections that send no next request), a cap on concurrent
//! connections, and a graceful shutdown bounded in time.
//!
//! `axum::serve` sets no timer, so hyper's header-read timeout never fires there: one peer
//! could hold a connection (and a descriptor of the process) forever with a silent or slow
//! request, and a few thousand such peers starved the backup port of descriptors.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Limits of one HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time a client has to send a request's headers, counted from the end of the previous
    /// response on a kept-alive connection (so it is also the idle timeout).
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Time open connections get to finish their requests once shutdown begins; then they
    /// are dropped.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes. Handlers can
/// extract `ConnectInfo<SocketAddr>` as with axum's `into_make_service_with_connect_info`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    tracing::warn!(%err, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move {
                tower_service::Service::call(&mut app, request.map(Body::new)).await
                    as Result<_, Infallible>
            }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, %peer, "HTTP connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("HTTP connections still open after the shutdown grace period: dropping them");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::SocketAddr;
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::{Notify, oneshot};

    use super::*;

    const LIMITS: HttpLimits = HttpLimits {
        header_read_timeout: Duration::from_millis(500),
        max_connections: 2,
        shutdown_grace: Duration::from_secs(1),
    };

    struct Started {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
        /// Notified when a request to `/never` reached its handler (which never answers).
        in_handler: Arc<Notify>,
    }

    async fn start() -> Started {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let in_handler = Arc::new(Notify::new());
        let notify = Arc::clone(&in_handler);
        let app =
            Router::new()
                .route(
                    "/",
                    get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                        peer.ip().to_string()
                    }),
                )
                .route(
                    "/never",
                    get(move || async move {
                        notify.notify_one();
                        std::future::pending::<&'static str>().await
                    }),
                );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app, LIMITS, async move {
            let _ = stopped.await;
        }));
        Started {
            addr,
            stop,
            task,
            in_handler,
        }
    }

    /// Reads until EOF; `Some(bytes)` when the server closed within `wait`.
    async fn read_to_close(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        tokio::time::timeout(wait, stream.read_to_end(&mut out))
            .await
            .ok()
            .map(|_| out)
    }

    #[tokio::test]
    async fn a_silent_or_slow_header_connection_is_closed_after_the_header_timeout() {
        let server = start().await;
        let addr = server.addr;
        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();

        assert!(
            read_to_close(&mut silent, Duration::from_secs(5))
                .await
                .is_some()
        );
        assert!(
            read_to_close(&mut slow, Duration::from_secs(5))
                .await
                .is_some()
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_until_one_closes() {
        let server = start().await;
        let addr = server.addr;
        let _held: Vec<TcpStream> = vec![
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        let mut third = TcpStream::connect(addr).await.unwrap();
        third
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();

        // Not served while the two held connections are open…
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(200), third.read(&mut byte)).await;
        assert!(early.is_err(), "served beyond the cap: {early:?}");
        // …then served once the header timeout closed them.
        let reply = read_to_close(&mut third, Duration::from_secs(5))
            .await
            .unwrap();
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("127.0.0.1"), "{reply}");
    }

    #[tokio::test]
    async fn shutdown_ends_after_the_grace_period_despite_a_request_that_never_ends() {
        let server = start().await;
        let mut open = TcpStream::connect(server.addr).await.unwrap();
        open.write_all(b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        server.in_handler.notified().await;
        let started = Instant::now();

        server.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server.task)
            .await
            .unwrap()
            .unwrap();

        let elapsed = started.elapsed();
        assert!(elapsed >= LIMITS.shutdown_grace, "{elapsed:?}");
        assert!(elapsed < LIMITS.shutdown_grace * 3, "{elapsed:?}");
    }
}
