//! Protocol v4 (`docs/protocol-v4.md`): a Noise `XX` handshake (`snow`), AEAD on every
//! later frame, SHA-256 per file, resumable uploads, listing and restore. Sans-IO like v3:
//! sessions consume bytes, emit [`Output`]s (bytes, effects, events, close) and take the
//! time and the RNG from their caller.
//!
//! - [`wire`]: constants, frame headers, handshake payloads and application messages;
//! - [`codec`]: the frame decoder;
//! - [`noise`]: keys, fingerprints and the seeded Noise builder;
//! - [`repository`]: the repository messages (snapshots, packs, blobs);
//! - [`server`] / [`client`]: the two session state machines.

pub mod client;
pub mod codec;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod noise;
pub mod repository;
pub mod server;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod wire;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

pub use error::{Refusal, StorageFailure, V4Error};

use crate::crypto::Cksum;
use crate::session::IdleTimer;

/// One thing a v4 session asks its driver to do, drained in order with `poll_output`: the
/// v3 sessions' [`Output`](crate::session::Output) with v4's [`CloseReason`].
pub type Output<E, V> = crate::session::Output<E, V, CloseReason>;

/// Why a v4 session asks to close the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The session finished its work (`BYE`).
    Done,
    /// The peer closed its side.
    PeerClosed,
    /// The peer was silent longer than the timeout.
    IdleTimeout,
    /// A fatal error; the reply (if any) was queued before this.
    Error(V4Error),
}

/// Running SHA-256, POSIX cksum and length of a file's plaintext. A server driver builds one
/// over the durable prefix of a resumed upload and hands it to the session.
#[derive(Clone, Debug, Default)]
pub struct ContentDigest {
    sha256: Sha256,
    cksum: Cksum,
}

impl ContentDigest {
    /// A digest over no bytes.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds more plaintext.
    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        self.cksum.update(data);
    }

    /// Bytes fed so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.cksum.len()
    }

    /// Whether nothing was fed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.cksum.is_empty()
    }

    /// `(sha256, cksum)` of everything fed.
    #[must_use]
    pub fn finalize(self) -> ([u8; 32], u32) {
        (self.sha256.finalize().into(), self.cksum.finalize())
    }
}

/// Seals `plaintext` as one `TRANSPORT` frame (header, ciphertext, tag).
fn seal(transport: &mut snow::TransportState, plaintext: &[u8]) -> Result<Bytes, V4Error> {
    let len = plaintext.len() + wire::TAG_LEN;
    let mut out = BytesMut::zeroed(wire::FRAME_HEADER_LEN + len);
    let written = {
        let (header, body) = out.split_at_mut(wire::FRAME_HEADER_LEN);
        let mut header: &mut [u8] = header;
        wire::put_frame_header(&mut header, wire::kind::TRANSPORT, len);
        transport
            .write_message(plaintext, body)
            .map_err(|e| V4Error::handshake("transport encryption", &e))?
    };
    out.truncate(wire::FRAME_HEADER_LEN + written);
    Ok(out.freeze())
}

/// Opens one `TRANSPORT` frame payload; any failure is [`V4Error::Decrypt`].
fn open(transport: &mut snow::TransportState, ciphertext: &[u8]) -> Result<Bytes, V4Error> {
    let mut plaintext = vec![0u8; ciphertext.len()];
    let len = transport
        .read_message(ciphertext, &mut plaintext)
        .map_err(|_| V4Error::Decrypt)?;
    plaintext.truncate(len);
    if plaintext.is_empty() {
        return Err(V4Error::Wire(wire::WireError::FrameTooShort { len: 0 }));
    }
    Ok(Bytes::from(plaintext))
}
