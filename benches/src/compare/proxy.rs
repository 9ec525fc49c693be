//! A byte-counting TCP relay between our client and our server on 127.0.0.1: the bytes
//! that cross the socket in each direction, whatever the protocol carries. The server's
//! own `bytes_received` counter counts file content of single-file uploads only, and
//! nothing of a restore, so it cannot answer "how much went over the wire".
//!
//! Two threads per connection copy 256 KiB at a time; on loopback this costs a small share
//! of a core, which the harness reports next to the figures.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use anyhow::Context;

/// Bytes copied per read.
const BUFFER_LEN: usize = 256 * 1024;

/// Bytes relayed so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Traffic {
    /// Client → server.
    pub(crate) up: u64,
    /// Server → client.
    pub(crate) down: u64,
}

impl Traffic {
    /// Both directions.
    pub(crate) fn total(self) -> u64 {
        self.up + self.down
    }

    /// What was relayed since `earlier`.
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            up: self.up.saturating_sub(earlier.up),
            down: self.down.saturating_sub(earlier.down),
        }
    }
}

/// A running relay; stops accepting when dropped (connections in flight finish).
#[derive(Debug)]
pub(crate) struct CountingProxy {
    addr: SocketAddr,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl CountingProxy {
    /// Listens on a free port of 127.0.0.1 and relays every connection to `target`.
    ///
    /// # Errors
    /// No free port.
    pub(crate) fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind the relay")?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (u, d, s) = (Arc::clone(&up), Arc::clone(&down), Arc::clone(&stop));
        let accept = std::thread::spawn(move || {
            for incoming in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = incoming else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                relay(client, server, Arc::clone(&u), Arc::clone(&d));
            }
        });
        Ok(Self {
            addr,
            up,
            down,
            stop,
            accept: Some(accept),
        })
    }

    /// Where clients connect.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes relayed so far.
    pub(crate) fn traffic(&self) -> Traffic {
        Traffic {
            up: self.up.load(Ordering::Relaxed),
            down: self.down.load(Ordering::Relaxed),
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ignored = TcpStream::connect(self.addr);
        if let Some(handle) = self.accept.take() {
            let _ignored = handle.join();
        }
    }
}

/// Starts the two copying threads of one connection.
fn relay(client: TcpStream, server: TcpStream, up: Arc<AtomicU64>, down: Arc<AtomicU64>) {
    // Both ends as the client would see them: no Nagle delay added by the relay.
    let _ignored = client.set_nodelay(true);
    let _ignored = server.set_nodelay(true);
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || copy(client, server, &up));
    std::thread::spawn(move || copy(server2, client2, &down));
}

/// Copies `from` to `to` until EOF or an error, counting; then half-closes `to`.
fn copy(mut from: TcpStream, mut to: TcpStream, counter: &AtomicU64) {
    let mut buf = vec![0u8; BUFFER_LEN];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Counted before it is forwarded: once the peer has it, the count includes it.
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ignored = to.shutdown(Shutdown::Write);
    let _ignored = from.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_both_directions_exactly() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = echo.accept().unwrap();
            let mut got = Vec::new();
            socket.read_to_end(&mut got).unwrap();
            socket.write_all(&got[..got.len() / 2]).unwrap();
        });
        let proxy = CountingProxy::start(target).unwrap();

        let mut client = TcpStream::connect(proxy.addr()).unwrap();
        client.write_all(&[7u8; 300_000]).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).unwrap();
        server.join().unwrap();

        assert_eq!(back.len(), 150_000);
        assert_eq!(
            proxy.traffic(),
            Traffic {
                up: 300_000,
                down: 150_000
            }
        );
    }
}
