//! Entry points of the v4 fuzz targets (`fuzz/fuzz_targets/decode_v4.rs`,
//! `handshake_v4.rs`, `repo_requests_v4.rs`, `repo_replies_v4.rs`) and of their stable
//! corpus replay. Not a stable API.

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

/// The client key of the repository targets' in-memory peers.
const FUZZ_CLIENT_PRIVATE_KEY: [u8; 32] = [0x11; 32];

/// Splits fuzz input into plaintext messages: each is a `u16` little-endian length, then
/// that many bytes (fewer at the end of the input; at most a transport message's plaintext).
fn messages(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [lo, hi, rest @ ..] = data {
        let len = usize::from(u16::from_le_bytes([*lo, *hi]))
            .min(rest.len())
            .min(super::wire::MAX_PLAINTEXT_LEN);
        let (message, tail) = rest.split_at(len);
        out.push(message);
        data = tail;
    }
    out
}

/// Seals `plaintext` as one transport frame.
fn seal(transport: &mut snow::TransportState, plaintext: &[u8]) -> Option<Bytes> {
    let mut ciphertext = vec![0u8; plaintext.len() + super::wire::TAG_LEN];
    let len = transport.write_message(plaintext, &mut ciphertext).ok()?;
    Some(super::wire::encode_frame(
        super::wire::kind::TRANSPORT,
        ciphertext.get(..len)?,
    ))
}

/// Feeds `bytes` to the server session and runs it (every effect answered with success)
/// until it needs more input; its transmits go to `sent`. Returns the repository effects
/// it asked for.
fn pump_server(
    session: &mut ServerSession<CountingRng>,
    bytes: &[u8],
    now: Instant,
    sent: &mut BytesMut,
) -> usize {
    let mut buf = BytesMut::from(bytes);
    let mut repository = 0;
    let _ = session.handle_bytes(now, &mut buf);
    loop {
        let mut answered = false;
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(bytes) => sent.extend_from_slice(&bytes),
                Output::Effect(effect) => {
                    answered |= effect.needs_answer();
                    repository += usize::from(matches!(effect, ServerEffect::Repository { .. }));
                    answer(session, effect, now);
                }
                _ => {}
            }
        }
        if !answered || session.is_closed() {
            return repository;
        }
        let _ = session.handle_bytes(now, &mut buf);
    }
}

/// Plaintext repository requests (and any other message) from an authenticated client, fed
/// to a v4 [`ServerSession`] past a real in-memory handshake, its effects all answered with
/// success. The input is a sequence of messages (`u16` LE length, bytes), each sealed as one
/// transport frame, so the fuzzer mutates what the server decodes, not ciphertext. Must
/// never panic.
pub fn repo_requests_v4(data: &[u8]) {
    let _ = repo_requests_v4_effects(data);
}

/// [`repo_requests_v4`], returning how many repository effects the server asked for (a test
/// checks that the seeds get past the handshake).
#[must_use]
pub fn repo_requests_v4_effects(data: &[u8]) -> usize {
    use super::codec::Frame;
    use super::wire::{encode_frame, hello_header, kind};
    let now = Instant::now();
    let mut session = fuzz_server(now);
    let keys = StaticKeypair::from_private(FUZZ_CLIENT_PRIVATE_KEY);
    let Ok(mut hs) = super::noise::handshake(&keys, true, [7; 32]) else {
        return 0;
    };
    let mut msg = vec![0u8; 1024];
    let Ok(len) = hs.write_message(&[], &mut msg) else {
        return 0;
    };
    let mut hello = hello_header().to_vec();
    hello.extend_from_slice(msg.get(..len).unwrap_or_default());
    let mut sent = BytesMut::new();
    pump_server(&mut session, &hello, now, &mut sent);
    let mut decoder = FrameDecoder::new(Side::FromServer);
    let Ok(Some(Frame::Handshake(msg2))) = decoder.decode(&mut sent) else {
        return 0;
    };
    let mut payload = vec![0u8; msg2.len()];
    if hs.read_message(&msg2, &mut payload).is_err() {
        return 0;
    }
    let mut auth = BytesMut::new();
    ClientAuth::Login.encode(&mut auth);
    let Ok(len) = hs.write_message(&auth, &mut msg) else {
        return 0;
    };
    let msg3 = encode_frame(kind::HANDSHAKE, msg.get(..len).unwrap_or_default());
    pump_server(&mut session, &msg3, now, &mut sent);
    let Ok(mut transport) = hs.into_transport_mode() else {
        return 0;
    };
    let mut repository = 0;
    for message in messages(data) {
        if session.is_closed() {
            break;
        }
        let Some(frame) = seal(&mut transport, message) else {
            break;
        };
        repository += pump_server(&mut session, &frame, now, &mut sent);
        sent.clear();
    }
    session.handle_eof(now);
    while session.poll_output().is_some() {}
    repository
}

/// Plaintext server messages fed to a v4 [`ClientSession`](super::client::ClientSession)
/// that logged in through a real in-memory handshake and waits for the answer to one
/// repository call, chosen by the first input byte (open, create, add key, have, put of a
/// pack or a snapshot, get, snapshots, forget, damaged, usage, remove key, prune). The rest
/// is a sequence of messages as in [`repo_requests_v4`], each sealed as one transport
/// frame. Must never panic.
pub fn repo_replies_v4(data: &[u8]) {
    let _ = repo_replies_v4_results(data);
}

/// [`repo_replies_v4`], returning how many repository calls ended (done or refused), so a
/// test checks that the seeds reach the client's repository replies.
#[must_use]
pub fn repo_replies_v4_results(data: &[u8]) -> usize {
    use super::client::{ClientConfig, ClientEvent, ClientSession};
    use super::codec::Frame;
    use super::wire::{encode_frame, kind};
    let now = Instant::now();
    let server_keys = StaticKeypair::from_private(FUZZ_SERVER_PRIVATE_KEY);
    let client_keys = StaticKeypair::from_private(FUZZ_CLIENT_PRIVATE_KEY);
    let pin = server_keys.public().fingerprint();
    let Ok(mut client) = ClientSession::new(
        Arc::new(ClientConfig::default()),
        &client_keys,
        Some(pin),
        ClientAuth::Login,
        &mut CountingRng(1),
        now,
    ) else {
        return 0;
    };
    let (choice, rest) = data.split_first().map_or((0, data), |(c, r)| (*c, r));
    client.repository(fuzz_call(choice));
    let mut ended = 0;
    let mut from_client = BytesMut::new();
    let mut drain = |client: &mut ClientSession, sent: &mut BytesMut| {
        while let Some(output) = client.poll_output() {
            match output {
                Output::Transmit(bytes) => sent.extend_from_slice(&bytes),
                Output::Event(ClientEvent::RepoDone { .. } | ClientEvent::OpFailed { .. }) => {
                    ended += 1;
                }
                _ => {}
            }
        }
    };
    drain(&mut client, &mut from_client);
    let Ok(mut hs) = super::noise::handshake(&server_keys, false, [9; 32]) else {
        return 0;
    };
    let mut decoder = FrameDecoder::new(Side::FromClient);
    let Ok(Some(Frame::Hello(msg1))) = decoder.decode(&mut from_client) else {
        return 0;
    };
    let mut scratch = vec![0u8; 1024];
    if hs.read_message(&msg1, &mut scratch).is_err() {
        return 0;
    }
    let mut hello = BytesMut::new();
    ServerHello {
        enrollment_required: false,
        checkpoint_interval: 1024,
    }
    .encode(&mut hello);
    let Ok(len) = hs.write_message(&hello, &mut scratch) else {
        return 0;
    };
    let mut msg2 =
        BytesMut::from(&encode_frame(kind::HANDSHAKE, scratch.get(..len).unwrap_or_default())[..]);
    let _ = client.handle_bytes(now, &mut msg2);
    drain(&mut client, &mut from_client);
    let Ok(Some(Frame::Handshake(msg3))) = decoder.decode(&mut from_client) else {
        return 0;
    };
    if hs.read_message(&msg3, &mut scratch).is_err() {
        return 0;
    }
    let Ok(mut transport) = hs.into_transport_mode() else {
        return 0;
    };
    let mut welcome = BytesMut::new();
    ServerMessage::Welcome {
        client_id: ClientId::ZERO,
        registered: false,
        name: NameField::decode(b"fuzz"),
    }
    .encode(&mut welcome);
    let welcome: &[u8] = &welcome;
    for message in std::iter::once(welcome).chain(messages(rest)) {
        if client.is_closed() {
            break;
        }
        let Some(frame) = seal(&mut transport, message) else {
            break;
        };
        let mut buf = BytesMut::from(&frame[..]);
        let _ = client.handle_bytes(now, &mut buf);
        drain(&mut client, &mut from_client);
        from_client.clear();
    }
    client.handle_eof(now);
    drain(&mut client, &mut from_client);
    ended
}

/// The repository call [`repo_replies_v4`] queues for `choice`.
fn fuzz_call(choice: u8) -> super::client::RepoCall {
    use super::client::RepoCall;
    use super::repository::{GetTarget, PutTarget};
    use crate::repo::{BlobId, PackId, SnapshotId};
    let small = || Bytes::from_static(b"fuzz object");
    match choice % 14 {
        0 => RepoCall::Open,
        1 => RepoCall::Create {
            config: small(),
            key: small(),
        },
        2 => RepoCall::AddKey { key: small() },
        3 => RepoCall::Have(vec![BlobId([choice; 32]); usize::from(choice / 14) + 1]),
        4 => RepoCall::Put {
            target: PutTarget::Pack(PackId([choice; 32])),
            object: Bytes::from(vec![choice; 100]),
        },
        5 => RepoCall::Put {
            target: PutTarget::Snapshot(SnapshotId([choice; 32])),
            object: small(),
        },
        6 => RepoCall::Get(GetTarget::Blob(BlobId([choice; 32]))),
        7 => RepoCall::Get(GetTarget::Snapshot(SnapshotId([choice; 32]))),
        8 => RepoCall::Snapshots,
        9 => RepoCall::Forget(SnapshotId([choice; 32])),
        10 => RepoCall::Damaged {
            after: (choice >= 128).then_some(BlobId([choice; 32])),
        },
        11 => RepoCall::Usage,
        12 => RepoCall::RemoveKey { key: small() },
        _ => RepoCall::Prune,
    }
}
