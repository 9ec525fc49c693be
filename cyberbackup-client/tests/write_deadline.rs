//! Issue 12 item 19: a server that stops reading in the middle of an upload fails the client
//! with the same network error as a server that stops answering, within the response
//! timeout, instead of leaving it "sending" forever. The real server is used; it stops
//! reading because its first write to storage blocks (a fault injected at
//! `FaultPoint::Write`) until the test releases it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cyberbackup_client::v4::{V4Client, V4ClientError, V4Options};
use cyberbackup_client::{
    Client, ClientError, ClientOptions, IdentityFile, NoProgress, RetryPolicy,
};
use cyberbackup_core::v4::V4Error;
use cyberbackup_server::faults::{FaultInjector, FaultPoint};
use support::{RealServer, write_pattern};

/// The response timeout of the clients under test.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bigger than every socket buffer between the two ends, so the client's writes block.
const FILE_LEN: u64 = 48 * 1024 * 1024;
/// A failure guard only: the clients must fail long before.
const GUARD: Duration = Duration::from_secs(60);

/// Blocks every storage write until released (or for a minute, as a guard).
#[derive(Debug, Default)]
struct Stall {
    released: Mutex<bool>,
    wake: Condvar,
}

impl Stall {
    fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.wake.notify_all();
    }
}

impl FaultInjector for Stall {
    fn check(&self, point: FaultPoint) -> Option<io::Error> {
        if point == FaultPoint::Write {
            let released = self.released.lock().unwrap();
            let _unused = self
                .wake
                .wait_timeout_while(released, GUARD, |released| !*released)
                .unwrap();
        }
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v3_upload_to_a_server_that_stops_reading_fails_with_the_timeout_error() {
    let stall = Arc::new(Stall::default());
    let server = RealServer::start_with_injector(stall.clone());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    write_pattern(&file, FILE_LEN, 5);
    let mut options = ClientOptions::new(
        server.server(),
        "stalled",
        IdentityFile::new(dir.path().join("me.info")),
    );
    options.response_timeout = RESPONSE_TIMEOUT;
    options.retry = RetryPolicy::with_retries(0);
    let mut client = Client::new(options).unwrap();

    let started = Instant::now();
    let result = tokio::time::timeout(GUARD, client.backup(&[file], &mut NoProgress)).await;
    let took = started.elapsed();
    stall.release();

    let err = result.expect("the client hung on a server that stopped reading");
    let err = err.unwrap_err();
    let timeout = match &err {
        ClientError::RetriesExhausted { last, .. } => last.as_ref(),
        other => other,
    };
    assert!(
        matches!(timeout, ClientError::Timeout { seconds: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("did not answer for 2 s"), "{err}");
    eprintln!("v3: failed after {took:?}: {err}");
    assert!(took < RESPONSE_TIMEOUT * 5, "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v4_upload_to_a_server_that_stops_reading_fails_with_the_timeout_error() {
    let stall = Arc::new(Stall::default());
    let server = RealServer::start_with_injector(stall.clone());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.bin");
    write_pattern(&file, FILE_LEN, 6);
    let mut options =
        V4Options::new(server.server(), dir.path().join("v4.json")).with_name("stalled4");
    options.response_timeout = RESPONSE_TIMEOUT;
    let mut client = V4Client::connect(&options).await.unwrap();

    let started = Instant::now();
    let result = tokio::time::timeout(GUARD, client.upload(&file, None)).await;
    let took = started.elapsed();
    stall.release();

    let err = result
        .expect("the client hung on a server that stopped reading")
        .unwrap_err();
    assert!(
        matches!(err, V4ClientError::Session(V4Error::IdleTimeout)),
        "{err:?}"
    );
    eprintln!("v4: failed after {took:?}: {err}");
    assert!(took < RESPONSE_TIMEOUT * 5, "{took:?}");
}
