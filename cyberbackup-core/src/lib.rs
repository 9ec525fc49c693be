//! # cyberbackup-core
//!
//! The CyberBackup v3 wire protocol as a sans-IO library: frame codecs over `bytes`,
//! streaming crypto (POSIX cksum, AES-256-CBC, RSA-OAEP key transport) and the transfer
//! state machines [`session::ServerSession`] and [`session::ClientSession`].
//!
//! ## The sans-IO contract
//! Nothing in this crate touches sockets, files, clocks or OS randomness. The caller (a
//! *driver*) owns the IO: it feeds received bytes with `handle_bytes`, passes the current
//! time to every call, gives the session a seeded or OS-backed RNG at construction, and
//! drains [`session::Output`]s with `poll_output`: bytes to transmit, effects to carry out
//! (look up a client, append to a file…) whose results it reports back with the matching
//! `handle_*` call, events to show, and a close request. File content always moves as
//! bounded `Bytes` pieces, so memory per transfer is constant whatever the file size.
//!
//! ## The canonical driver loop
//! ```no_run
//! # use cyberbackup_core::session::{Output, ServerSession, ServerConfig};
//! # fn socket_read(_: &mut bytes::BytesMut) -> usize { 0 }
//! # fn socket_write(_: &[u8]) {}
//! # fn perform(_: &cyberbackup_core::session::ServerEffect, _: &mut ServerSession<rand_core::OsRng>) {}
//! let now = std::time::Instant::now();
//! let mut session = ServerSession::new(ServerConfig::default().into(), rand_core::OsRng, now);
//! let mut buf = bytes::BytesMut::new();
//! loop {
//!     // 1. Feed what is buffered; the session consumes until it needs an effect answered.
//!     if let Err(err) = session.handle_bytes(std::time::Instant::now(), &mut buf) {
//!         eprintln!("peer error: {err}");
//!     }
//!     // 2. Drain outputs in order, performing effects and answering them.
//!     let (mut closed, mut answered) = (false, false);
//!     while let Some(output) = session.poll_output() {
//!         match output {
//!             Output::Transmit(bytes) => socket_write(&bytes),
//!             Output::Effect(effect) => {
//!                 answered |= effect.needs_answer();
//!                 perform(&effect, &mut session);
//!             }
//!             Output::Event(_) => {}
//!             Output::Close(_) => closed = true,
//!         }
//!     }
//!     if closed { break; }
//!     // 3. After an answer the buffer may still hold frames: feed it again before reading.
//!     if answered { continue; }
//!     // 4. Wait for more bytes or the deadline from `poll_timeout` (then `handle_timeout`).
//!     if socket_read(&mut buf) == 0 { session.handle_eof(std::time::Instant::now()); }
//! }
//! ```
#![cfg_attr(not(fuzzing), warn(missing_docs))]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::cast_possible_truncation
    )
)]

pub mod codec;
pub mod crypto;
pub mod frame;
pub mod identity;
pub mod limits;
pub mod session;
pub mod v4;
pub mod web;

#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "test-util")]
pub mod testing;
