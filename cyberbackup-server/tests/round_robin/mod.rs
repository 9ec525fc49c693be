//! A round-robin TCP proxy on 127.0.0.1, standing in for the load balancer (HAProxy) in
//! front of several servers: each connection goes to the next server that accepts it (one
//! that refuses is skipped, as a health check would), and its bytes are copied both ways until
//! either side closes. It counts the connections open on each server. Shared by the service
//! test (`cyberbackup-client/tests/service.rs`) and the `service` benchmark.
#![allow(dead_code, unreachable_pub)]

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a server gets to accept a connection before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A running proxy; it accepts until the process ends.
pub struct RoundRobin {
    /// The one address of the service.
    pub address: SocketAddr,
    /// Connections open on each server.
    open: Arc<Vec<AtomicUsize>>,
}

impl RoundRobin {
    /// Listens on a free port and spreads connections over `servers`.
    ///
    /// # Errors
    /// No free port.
    pub fn start(servers: Vec<SocketAddr>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let open: Arc<Vec<AtomicUsize>> =
            Arc::new(servers.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = Arc::clone(&open);
        std::thread::spawn(move || {
            let next = AtomicUsize::new(0);
            for incoming in listener.incoming() {
                let Ok(client) = incoming else { continue };
                let picked = (0..servers.len()).find_map(|_| {
                    let index = next.fetch_add(1, Ordering::Relaxed) % servers.len();
                    TcpStream::connect_timeout(&servers[index], CONNECT_TIMEOUT)
                        .ok()
                        .map(|upstream| (index, upstream))
                });
                // No server accepts: the client sees its connection closed.
                let Some((index, upstream)) = picked else {
                    continue;
                };
                counts[index].fetch_add(1, Ordering::SeqCst);
                let counts = Arc::clone(&counts);
                std::thread::spawn(move || {
                    pipe_both_ways(client, upstream);
                    counts[index].fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self { address, open })
    }

    /// Connections open now on server `index`.
    pub fn open_on(&self, index: usize) -> usize {
        self.open[index].load(Ordering::SeqCst)
    }
}

/// Copies each way until one side ends, then closes both.
fn pipe_both_ways(client: TcpStream, upstream: TcpStream) {
    let (Ok(mut client_read), Ok(mut upstream_write)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    let forward = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut upstream_write);
        let _ = upstream_write.shutdown(Shutdown::Write);
    });
    let (mut upstream_read, mut client_write) = (upstream, client);
    let _ = std::io::copy(&mut upstream_read, &mut client_write);
    let _ = client_write.shutdown(Shutdown::Both);
    let _ = upstream_read.shutdown(Shutdown::Both);
    let _ = forward.join();
}
