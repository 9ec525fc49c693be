//! Entry points of the v4 fuzz targets (`fuzz/fuzz_targets/decode_v4.rs`,
//! `handshake_v4.rs`) and of their stable corpus replay. Not a stable API.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::codec::{FrameDecoder, Side};
use super::noise::StaticKeypair;
use super::repository::RepoRequest;
use super::server::{
    AuthDecision, RepoAnswer, ResumePoint, ServerConfig, ServerEffect, ServerSession,
};
use super::wire::{ClientAuth, ClientMessage, ServerHello, ServerMessage};
use super::{ContentDigest, Output};
use crate::fuzzing::CountingRng;
use crate::names::{ClientId, NameField};

/// The fixed server key of the handshake target, so seeds can be built against it.
pub const FUZZ_SERVER_PRIVATE_KEY: [u8; 32] = [0x24; 32];

/// Decodes arbitrary bytes as frames from either side and as every message and handshake
/// payload. Must never panic.
pub fn decode_v4(data: &[u8]) {
    for side in [Side::FromClient, Side::FromServer] {
        let mut buf = BytesMut::from(data);
        let mut decoder = FrameDecoder::new(side);
        while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        let _ = decoder.decode_eof(&buf);
    }
    let bytes = Bytes::copy_from_slice(data);
    let _ = ClientMessage::decode(bytes.clone());
    let _ = ServerMessage::decode(bytes);
    let _ = ClientAuth::decode(data);
    let _ = ServerHello::decode(data);
}

/// Feeds arbitrary bytes to a v4 [`ServerSession`] in pieces sized by the first byte,
/// answering every effect with success. Must never panic.
pub fn handshake_v4(data: &[u8]) {
    let now = Instant::now();
    let mut session = fuzz_server(now);
    let (chunk, body) = match data.split_first() {
        Some((first, rest)) => (usize::from(*first).max(1), rest),
        None => (1, data),
    };
    let mut buf = BytesMut::new();
    for piece in body.chunks(chunk) {
        buf.extend_from_slice(piece);
        let _ = session.handle_bytes(now, &mut buf);
        loop {
            let mut answered = false;
            while let Some(output) = session.poll_output() {
                if let Output::Effect(effect) = output {
                    answered |= effect.needs_answer();
                    answer(&mut session, effect, now);
                }
            }
            if !answered {
                break;
            }
            let _ = session.handle_bytes(now, &mut buf);
        }
    }
    session.handle_eof(now);
    while session.poll_output().is_some() {}
}

/// The server the handshake target drives: fixed key, `CountingRng(0)`, 1 KiB checkpoints.
/// Deterministic, so a recorded client stream replays through it (the seeds).
#[must_use]
pub fn fuzz_server(now: Instant) -> ServerSession<CountingRng> {
    let keys = StaticKeypair::from_private(FUZZ_SERVER_PRIVATE_KEY);
    let config = Arc::new(ServerConfig {
        checkpoint_interval: 1024,
        ..ServerConfig::default()
    });
    ServerSession::new(config, keys, CountingRng(0), now)
}

fn answer(session: &mut ServerSession<CountingRng>, effect: ServerEffect, now: Instant) {
    let _ = match effect {
        ServerEffect::Authenticate { .. } => session.handle_auth(
            now,
            AuthDecision::Accepted {
                client_id: ClientId::ZERO,
                name: NameField::decode(b"fuzz"),
                registered: false,
            },
        ),
        ServerEffect::OpenUpload { .. } => session.handle_upload_opened(
            now,
            Ok(ResumePoint {
                offset: 0,
                digest: ContentDigest::new(),
            }),
        ),
        ServerEffect::WriteUpload { .. } | ServerEffect::Checkpoint { .. } => {
            session.handle_storage(now, Ok(()))
        }
        ServerEffect::FinishUpload { .. } => session.handle_committed(now, Ok(1)),
        ServerEffect::ListVersions { .. } => session.handle_listing(now, Ok(Vec::new())),
        ServerEffect::OpenVersion { .. } => session.handle_version_opened(now, Ok(None)),
        ServerEffect::ReadVersion { .. } => session.handle_version_data(now, Ok(Bytes::new())),
        ServerEffect::Repository { request, .. } => session.handle_repository(
            now,
            Ok(match request {
                RepoRequest::Open => RepoAnswer::State {
                    config: None,
                    keys: Vec::new(),
                },
                RepoRequest::Have { ids } => RepoAnswer::Have(vec![true; ids.len()]),
                RepoRequest::Put { .. } => RepoAnswer::PutReady,
                RepoRequest::Get { .. } => RepoAnswer::Object(Bytes::from_static(b"fuzz object")),
                RepoRequest::Snapshots => RepoAnswer::Snapshots(Vec::new()),
                RepoRequest::Damaged { .. } => RepoAnswer::Damaged {
                    ids: Vec::new(),
                    more: false,
                },
                RepoRequest::Usage => RepoAnswer::Usage(super::repository::RepoUsage::default()),
                RepoRequest::Prune => {
                    RepoAnswer::Pruned(super::repository::RepoPruneReport::default())
                }
                _ => RepoAnswer::Done,
            }),
        ),
        ServerEffect::WritePut { .. } => session.handle_storage(now, Ok(())),
        ServerEffect::FinishPut => session.handle_repository(now, Ok(RepoAnswer::Stored)),
        _ => Ok(()),
    };
}
