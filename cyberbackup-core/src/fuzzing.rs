//! Entry points shared by the fuzz targets, the proptests and the stable corpus replay
//! (`tests/fuzz_corpus.rs`). Not a stable API.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rand_core::{CryptoRng, RngCore};

use crate::session::Output;
use crate::v3::codec::{RequestDecoder, ResponseDecoder};
use crate::v3::{RegistrationOutcome, ServerConfig, ServerEffect, ServerSession, StoredClient};

pub use crate::repo::fuzzing::{
    repo_config, repo_key_object, repo_pack_header, repo_ref_chunk, repo_sealed_blob,
    repo_snapshot, repo_tree,
};

/// Decodes arbitrary bytes as a client-to-server stream, then as a server-to-client stream.
/// Must never panic.
pub fn decode_frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut decoder = RequestDecoder::new();
    while let Ok(Some(_)) = decoder.decode(&mut buf) {}
    let _ = decoder.decode_eof(&buf);
    let mut buf = BytesMut::from(data);
    let mut decoder = ResponseDecoder::new();
    while let Ok(Some(_)) = decoder.decode(&mut buf) {}
}

/// Feeds arbitrary bytes to a [`ServerSession`] in pieces sized by the first byte, answering
/// every effect with success (a registered client with no key for lookups). Must never panic.
pub fn server_session(data: &[u8]) {
    let now = Instant::now();
    let session = ServerSession::new(Arc::new(ServerConfig::default()), CountingRng(0), now);
    feed_server(session, data, now);
}

/// Like [`server_session`], but with a session key already established (the one
/// [`FUZZ_SESSION_KEY`] names), so 1028 frames reach decryption, the packet-scheme rules
/// and the storage effects. Must never panic.
pub fn server_session_with_key(data: &[u8]) {
    let now = Instant::now();
    let mut session = ServerSession::new(Arc::new(ServerConfig::default()), CountingRng(0), now);
    let name = crate::names::NameField::decode(b"fuzz");
    session.inject_session_key(
        crate::names::ClientId::ZERO,
        name,
        crate::crypto::AesKey::from_bytes(FUZZ_SESSION_KEY),
    );
    feed_server(session, data, now);
}

/// The session key [`server_session_with_key`] uses, so seeds can be encrypted with it.
pub const FUZZ_SESSION_KEY: [u8; 32] = [0x42; 32];

fn feed_server(mut session: ServerSession<CountingRng>, data: &[u8], now: Instant) {
    let (chunk, body) = match data.split_first() {
        Some((first, rest)) => (usize::from(*first).max(1), rest),
        None => (1, data),
    };
    let mut buf = BytesMut::new();
    for piece in body.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            if session.handle_bytes(now, &mut buf).is_err() {
                return;
            }
            let mut answered = false;
            while let Some(output) = session.poll_output() {
                if let Output::Effect(effect) = output {
                    answered |= answer(&mut session, now, &effect);
                }
            }
            if !answered {
                break;
            }
        }
    }
    session.handle_eof(now);
    while session.poll_output().is_some() {}
}

fn answer<R: rand_core::CryptoRngCore>(
    session: &mut ServerSession<R>,
    now: Instant,
    effect: &ServerEffect,
) -> bool {
    let result = match effect {
        ServerEffect::RegisterClient { .. } => {
            session.handle_registration(now, RegistrationOutcome::Registered)
        }
        ServerEffect::LookupClient { client_id } => session.handle_client_lookup(
            now,
            Some(StoredClient {
                client_id: *client_id,
                name: bytes::Bytes::from_static(b"fuzz"),
                public_key: None,
            }),
        ),
        ServerEffect::AbortFile { .. } => return false,
        _ => session.handle_storage(now, Ok(())),
    };
    result.is_ok()
}

/// A deterministic, *insecure* RNG for fuzzing and tests only: its output is predictable,
/// so it must never reach a real driver (it is `doc(hidden)` with the rest of this module).
#[derive(Debug, Clone)]
pub struct CountingRng(pub u64);

impl RngCore for CountingRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for CountingRng {}
