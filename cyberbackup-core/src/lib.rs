//! # cyberbackup-core
//!
//! The CyberBackup protocols as a sans-IO library, side by side: [`v3`], the legacy wire
//! protocol (frame codecs over `bytes`, the transfer state machines [`v3::ServerSession`]
//! and [`v3::ClientSession`], with the streaming crypto of [`crypto`]: POSIX cksum,
//! AES-256-CBC, RSA-OAEP key transport) and [`v4`] (Noise XX, AEAD frames, resume), and
//! beside them the snapshot repository format [`repo`] (keyed chunking, sealed blobs, packs,
//! trees, snapshots). What the protocols share — the output queue and idle deadline
//! ([`session`]) and names and client ids ([`names`]) — sits beside them too.
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
//! # use cyberbackup_core::session::Output;
//! # use cyberbackup_core::v3::{ServerConfig, ServerSession};
//! # fn socket_read(_: &mut bytes::BytesMut) -> usize { 0 }
//! # fn socket_write(_: &[u8]) {}
//! # fn perform(_: &cyberbackup_core::v3::ServerEffect, _: &mut ServerSession<rand_core::OsRng>) {}
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

pub mod crypto;
pub mod identity;
pub mod limits;
pub mod names;
pub mod repo;
pub mod session;
pub mod v3;
pub mod v4;
pub mod web;

#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "test-util")]
pub mod testing;
