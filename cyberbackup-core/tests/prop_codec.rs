#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of the codecs and the streaming crypto:
//! - encode → decode round trip of every request (1025–1031), 1028 frame and response
//!   (1600–1607);
//! - the decoded items do not depend on how the byte stream is chunked;
//! - the decoders and the server session never panic on arbitrary or mutated bytes (through
//!   the same `cyberbackup_core::fuzzing` entry points the fuzz targets use);
//! - streamed == one-shot for `Cksum`, `CbcEncryptor` and `CbcDecryptor`, and
//!   decrypt(encrypt(x)) == x, with the raw `cbc` crate as an independent oracle.
//!
//! Case counts are modest on purpose: the whole file runs in a few seconds in debug.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeEncrypt, KeyIvInit};
use cyberbackup_core::crypto::{AesKey, CbcDecryptor, CbcEncryptor, Cksum, cbc_ciphertext_len};
use cyberbackup_core::fuzzing::{self, CountingRng};
use cyberbackup_core::limits::{
    FILE_META_LEN, FILE_RECEIVED_LEN, MAX_CONTENT_PIECE, NAME_FIELD_LEN, PROTOCOL_VERSION_V3,
};
use cyberbackup_core::names::{ClientId, NameField};
use cyberbackup_core::session::Output;
use cyberbackup_core::v3::codec::{Inbound, RequestDecoder, ResponseDecoder};
use cyberbackup_core::v3::frame::{
    FileMeta, Request, RequestCode, RequestHeader, Response, ResponseCode, ResponseHeader,
};
use cyberbackup_core::v3::{ServerConfig, ServerEffect, ServerSession};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Relative to the package root (cargo's working directory for tests).
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/prop_codec.txt",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Round trips

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn every_request_round_trips(client_id in client_id(), request in request()) {
        let mut wire = Vec::new();
        request.encode(client_id, &mut wire);
        let frame = Frame::Request { client_id, request };
        prop_assert_eq!(decode_requests(vec![&wire[..]]), frame.expected());
    }

    #[test]
    fn file_frames_round_trip(
        client_id in client_id(),
        meta in file_meta(),
        content in vec(any::<u8>(), 0..3000),
    ) {
        let frame = Frame::File { client_id, meta, content };
        prop_assert_eq!(decode_requests(vec![&frame.encode()[..]]), frame.expected());
    }

    #[test]
    fn every_response_round_trips(response in response()) {
        let mut wire = Vec::new();
        response.encode(&mut wire);
        prop_assert_eq!(wire.len(), 7 + response_payload_len(&response));
        prop_assert_eq!(decode_responses(vec![&wire[..]]), vec![expected_response(&response)]);
    }

    // -----------------------------------------------------------------------------------
    // Chunking independence

    #[test]
    fn request_stream_decodes_the_same_whatever_the_chunking(
        frames in vec(frame(), 1..6),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let expected: Vec<Item> = frames.iter().flat_map(Frame::expected).collect();
        prop_assert_eq!(decode_requests(split(&wire, &cuts)), expected);
    }

    #[test]
    fn response_stream_decodes_the_same_whatever_the_chunking(
        responses in vec(response(), 1..8),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let mut wire = Vec::new();
        for response in &responses {
            response.encode(&mut wire);
        }
        let expected: Vec<_> = responses.iter().map(expected_response).collect();
        prop_assert_eq!(decode_responses(split(&wire, &cuts)), expected);
    }

    // -----------------------------------------------------------------------------------
    // Never panic

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(data in vec(any::<u8>(), 0..2048)) {
        fuzzing::decode_frames(&data);
        fuzzing::server_session(&data);
    }

    #[test]
    fn decoders_never_panic_on_mutated_valid_streams(
        frames in vec(frame(), 1..4),
        responses in vec(response(), 0..3),
        mutations in vec((any::<Index>(), any::<u8>()), 0..6),
        keep in any::<Index>(),
        chunk in any::<u8>(),
    ) {
        let mut wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        for response in &responses {
            response.encode(&mut wire);
        }
        for (at, byte) in &mutations {
            let at = at.index(wire.len());
            wire[at] ^= byte;
        }
        wire.truncate(keep.index(wire.len() + 1));
        fuzzing::decode_frames(&wire);
        let mut with_chunk = vec![chunk];
        with_chunk.extend_from_slice(&wire);
        fuzzing::server_session(&with_chunk);
    }

    // -----------------------------------------------------------------------------------
    // Streaming crypto

    #[test]
    fn cksum_streamed_equals_one_shot(
        data in vec(any::<u8>(), 0..5000),
        cuts in vec(any::<Index>(), 0..10),
    ) {
        let mut hasher = Cksum::new();
        for piece in split(&data, &cuts) {
            hasher.update(piece);
        }
        prop_assert_eq!(hasher.len(), data.len() as u64);
        prop_assert_eq!(hasher.finalize(), Cksum::of(&data));
    }

    #[test]
    fn cbc_encrypt_streamed_equals_one_shot_and_the_raw_crate(
        key in any::<[u8; 32]>(),
        plain in vec(any::<u8>(), 0..3000),
        cuts in vec(any::<Index>(), 0..10),
    ) {
        let key = AesKey::from_bytes(key);
        let streamed = encrypt(&key, split(&plain, &cuts));
        let one_shot = encrypt(&key, vec![&plain[..]]);
        prop_assert_eq!(&streamed, &one_shot);
        prop_assert_eq!(streamed.len() as u64, cbc_ciphertext_len(plain.len() as u64));
        let raw = cbc::Encryptor::<aes::Aes256>::new(key.as_bytes().into(), &[0u8; 16].into())
            .encrypt_padded_vec::<Pkcs7>(&plain);
        prop_assert_eq!(&streamed[..], &raw[..]);
    }

    #[test]
    fn cbc_decrypt_streamed_inverts_encrypt(
        key in any::<[u8; 32]>(),
        plain in vec(any::<u8>(), 0..3000),
        enc_cuts in vec(any::<Index>(), 0..10),
        dec_cuts in vec(any::<Index>(), 0..10),
    ) {
        let key = AesKey::from_bytes(key);
        let cipher = encrypt(&key, split(&plain, &enc_cuts));
        let mut decryptor = CbcDecryptor::new(&key);
        let mut out = BytesMut::new();
        for piece in split(&cipher, &dec_cuts) {
            decryptor.update(piece, &mut out);
            // At most one held-back block and one partial block stay inside.
            prop_assert!(out.len() as u64 + 32 > decryptor.ciphertext_len());
        }
        prop_assert_eq!(decryptor.ciphertext_len(), cipher.len() as u64);
        decryptor.finish(&mut out).unwrap();
        prop_assert_eq!(&out[..], &plain[..]);
    }

    // -----------------------------------------------------------------------------------
    // The server's inbound pipeline (decode → decrypt → cksum → AppendFile) is chunking-proof

    #[test]
    fn server_pipeline_stores_the_plaintext_whatever_the_chunking(
        key in any::<[u8; 32]>(),
        plain in vec(any::<u8>(), 0..2500),
        packet_len in 1usize..1500,
        cuts in vec(any::<Index>(), 0..10),
    ) {
        let key = AesKey::from_bytes(key);
        let client_id = ClientId([7; 16]);
        let cipher = encrypt(&key, vec![&plain[..]]);
        let packets: Vec<&[u8]> = cipher.chunks(packet_len).collect();
        let total = u16::try_from(packets.len()).unwrap();
        let mut wire = Vec::new();
        for (i, packet) in packets.iter().enumerate() {
            let meta = FileMeta {
                // The whole ciphertext's size in every packet (H3 style).
                content_size: u32::try_from(cipher.len()).unwrap(),
                orig_file_size: u32::try_from(plain.len()).unwrap(),
                packet_number: u16::try_from(i + 1).unwrap(),
                total_packets: total,
                file_name: NameField::new(&b"prop.bin"[..]).unwrap(),
            };
            let content_len = u32::try_from(packet.len()).unwrap();
            meta.encode_frame_head(client_id, content_len, &mut wire);
            wire.extend_from_slice(packet);
        }
        let (stored, transmits) = drive_server(key, client_id, &wire, &cuts);
        prop_assert_eq!(&stored[..], &plain[..]);
        let expected = Response::FileReceived {
            client_id,
            content_size: u32::try_from(cipher.len()).unwrap(),
            file_name: NameField::new(&b"prop.bin"[..]).unwrap(),
            cksum: Cksum::of(&plain),
        };
        prop_assert_eq!(transmits, vec![expected.to_bytes()]);
    }
}

#[test]
fn every_request_code_and_response_code_is_covered() {
    let name = || NameField::new(&b"alice"[..]).unwrap();
    let id = ClientId([0xab; 16]);
    let requests = [
        Request::Register { name: name() },
        Request::PublicKey {
            name: name(),
            public_key: Bytes::from(vec![0x30; 160]),
        },
        Request::Reconnect { name: name() },
        Request::CrcOk { file_name: name() },
        Request::CrcRetry { file_name: name() },
        Request::CrcAbort { file_name: name() },
    ];
    let mut frames: Vec<Frame> = requests
        .into_iter()
        .map(|request| Frame::Request {
            client_id: id,
            request,
        })
        .collect();
    frames.insert(
        3,
        Frame::File {
            client_id: id,
            meta: FileMeta {
                content_size: 16,
                orig_file_size: 3,
                packet_number: 1,
                total_packets: 1,
                file_name: name(),
            },
            content: vec![0x5a; 16],
        },
    );
    let codes: Vec<u16> = frames
        .iter()
        .map(|frame| match frame {
            Frame::Request { request, .. } => request.code().0,
            Frame::File { .. } => RequestCode::SEND_FILE.0,
        })
        .collect();
    assert_eq!(codes, (1025..=1031).collect::<Vec<u16>>());
    let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
    let expected: Vec<Item> = frames.iter().flat_map(Frame::expected).collect();
    // Byte by byte: the most extreme chunking.
    assert_eq!(decode_requests(wire.chunks(1).collect()), expected);

    let responses = [
        Response::Registered { client_id: id },
        Response::RegistrationFailed,
        Response::PublicKeyAccepted {
            client_id: id,
            encrypted_key: Bytes::from(vec![1; 128]),
        },
        Response::FileReceived {
            client_id: id,
            content_size: 16,
            file_name: name(),
            cksum: 0xdead_beef,
        },
        Response::Acknowledged { client_id: id },
        Response::ReconnectAccepted {
            client_id: id,
            encrypted_key: Bytes::from(vec![2; 128]),
        },
        Response::ReconnectRefused { client_id: id },
        Response::ServerError,
    ];
    let codes: Vec<ResponseCode> = responses.iter().map(Response::code).collect();
    assert_eq!(codes, ResponseCode::ALL);
    let mut wire = Vec::new();
    for response in &responses {
        response.encode(&mut wire);
    }
    let expected: Vec<_> = responses.iter().map(expected_response).collect();
    assert_eq!(decode_responses(wire.chunks(1).collect()), expected);
}

#[test]
fn large_file_content_comes_in_bounded_pieces() {
    let content: Vec<u8> = (0..(MAX_CONTENT_PIECE * 2 + 12_345))
        .map(|i| u8::try_from((i * 7 + 3) % 251).unwrap())
        .collect();
    let frame = Frame::File {
        client_id: ClientId::ZERO,
        meta: FileMeta {
            content_size: 1,
            orig_file_size: 2,
            packet_number: 3,
            total_packets: 4,
            file_name: NameField::new(&b"big"[..]).unwrap(),
        },
        content,
    };
    let wire = frame.encode();
    let mut buf = BytesMut::from(&wire[..]);
    let mut decoder = RequestDecoder::new();
    let mut pieces = Vec::new();
    while let Some(item) = decoder.decode(&mut buf).unwrap() {
        if let Inbound::FileContent(piece) = item {
            pieces.push(piece.len());
        }
    }
    assert_eq!(
        pieces,
        [MAX_CONTENT_PIECE, MAX_CONTENT_PIECE, 12_345],
        "one-shot input is cut into MAX_CONTENT_PIECE pieces"
    );
    assert_eq!(decode_requests(vec![&wire[..]]), frame.expected());
}

// ---------------------------------------------------------------------------------------
// Strategies

fn client_id() -> impl Strategy<Value = ClientId> {
    any::<[u8; 16]>().prop_map(ClientId)
}

/// A name our encoder can send: 1 to 254 bytes, no NUL.
fn name_field() -> impl Strategy<Value = NameField> {
    vec(1u8.., 1..=NAME_FIELD_LEN - 1).prop_map(|text| NameField::new(text).unwrap())
}

fn bytes_in(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), len).prop_map(Bytes::from)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        name_field().prop_map(|name| Request::Register { name }),
        // The decoder accepts 1..=300 key bytes after the name.
        (name_field(), bytes_in(1..=300))
            .prop_map(|(name, public_key)| Request::PublicKey { name, public_key }),
        name_field().prop_map(|name| Request::Reconnect { name }),
        name_field().prop_map(|file_name| Request::CrcOk { file_name }),
        name_field().prop_map(|file_name| Request::CrcRetry { file_name }),
        name_field().prop_map(|file_name| Request::CrcAbort { file_name }),
    ]
}

fn file_meta() -> impl Strategy<Value = FileMeta> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
        name_field(),
    )
        .prop_map(
            |(content_size, orig_file_size, packet_number, total_packets, file_name)| FileMeta {
                content_size,
                orig_file_size,
                packet_number,
                total_packets,
                file_name,
            },
        )
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (client_id(), request())
            .prop_map(|(client_id, request)| Frame::Request { client_id, request }),
        (client_id(), file_meta(), vec(any::<u8>(), 0..600)).prop_map(
            |(client_id, meta, content)| Frame::File {
                client_id,
                meta,
                content
            }
        ),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        client_id().prop_map(|client_id| Response::Registered { client_id }),
        Just(Response::RegistrationFailed),
        (client_id(), bytes_in(0..=512)).prop_map(|(client_id, encrypted_key)| {
            Response::PublicKeyAccepted {
                client_id,
                encrypted_key,
            }
        }),
        (client_id(), any::<u32>(), name_field(), any::<u32>()).prop_map(
            |(client_id, content_size, file_name, cksum)| Response::FileReceived {
                client_id,
                content_size,
                file_name,
                cksum,
            }
        ),
        client_id().prop_map(|client_id| Response::Acknowledged { client_id }),
        (client_id(), bytes_in(0..=512)).prop_map(|(client_id, encrypted_key)| {
            Response::ReconnectAccepted {
                client_id,
                encrypted_key,
            }
        }),
        client_id().prop_map(|client_id| Response::ReconnectRefused { client_id }),
        Just(Response::ServerError),
    ]
}

// ---------------------------------------------------------------------------------------
// Model of the stream: what we encode and what the decoder must yield

#[derive(Clone, Debug)]
enum Frame {
    Request {
        client_id: ClientId,
        request: Request,
    },
    File {
        client_id: ClientId,
        meta: FileMeta,
        content: Vec<u8>,
    },
}

/// A decoded item, with consecutive content pieces merged (piece sizes depend on chunking).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    Request {
        header: RequestHeader,
        request: Request,
    },
    FileHeader {
        header: RequestHeader,
        meta: FileMeta,
        content_len: u32,
    },
    Content(Vec<u8>),
    FileEnd,
}

impl Frame {
    fn encode(&self) -> Vec<u8> {
        let mut wire = Vec::new();
        match self {
            Self::Request { client_id, request } => request.encode(*client_id, &mut wire),
            Self::File {
                client_id,
                meta,
                content,
            } => {
                let content_len = u32::try_from(content.len()).unwrap();
                meta.encode_frame_head(*client_id, content_len, &mut wire);
                wire.extend_from_slice(content);
            }
        }
        wire
    }

    /// The items the decoder must yield, built from the spec rather than the encoder.
    fn expected(&self) -> Vec<Item> {
        match self {
            Self::Request { client_id, request } => {
                let key_len = match request {
                    Request::PublicKey { public_key, .. } => public_key.len(),
                    _ => 0,
                };
                let header = RequestHeader {
                    client_id: *client_id,
                    version: PROTOCOL_VERSION_V3,
                    code: request.code(),
                    payload_len: u32::try_from(NAME_FIELD_LEN + key_len).unwrap(),
                };
                vec![Item::Request {
                    header,
                    request: request.clone(),
                }]
            }
            Self::File {
                client_id,
                meta,
                content,
            } => {
                let content_len = u32::try_from(content.len()).unwrap();
                let header = RequestHeader {
                    client_id: *client_id,
                    version: PROTOCOL_VERSION_V3,
                    code: RequestCode::SEND_FILE,
                    payload_len: content_len + u32::try_from(FILE_META_LEN).unwrap(),
                };
                let mut items = vec![Item::FileHeader {
                    header,
                    meta: meta.clone(),
                    content_len,
                }];
                if !content.is_empty() {
                    items.push(Item::Content(content.clone()));
                }
                items.push(Item::FileEnd);
                items
            }
        }
    }
}

fn response_payload_len(response: &Response) -> usize {
    match response {
        Response::RegistrationFailed | Response::ServerError => 0,
        Response::Registered { .. }
        | Response::Acknowledged { .. }
        | Response::ReconnectRefused { .. } => 16,
        Response::PublicKeyAccepted { encrypted_key, .. }
        | Response::ReconnectAccepted { encrypted_key, .. } => 16 + encrypted_key.len(),
        Response::FileReceived { .. } => FILE_RECEIVED_LEN,
    }
}

fn expected_response(response: &Response) -> (ResponseHeader, Response) {
    let header = ResponseHeader {
        version: PROTOCOL_VERSION_V3,
        code: response.code(),
        payload_len: u32::try_from(response_payload_len(response)).unwrap(),
    };
    (header, response.clone())
}

// ---------------------------------------------------------------------------------------
// Helpers

/// Cuts `data` at the given positions (in any order, duplicates allowed).
fn split<'a>(data: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|cut| cut.index(data.len() + 1)).collect();
    at.push(0);
    at.push(data.len());
    at.sort_unstable();
    at.windows(2).map(|pair| &data[pair[0]..pair[1]]).collect()
}

/// Feeds the pieces to a `RequestDecoder` and returns the merged items. Checks the
/// piece bound and that the stream ends at a frame boundary with nothing left over.
fn decode_requests(pieces: Vec<&[u8]>) -> Vec<Item> {
    let mut decoder = RequestDecoder::new();
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        while let Some(inbound) = decoder.decode(&mut buf).unwrap() {
            let item = match inbound {
                Inbound::Request { header, request } => Item::Request { header, request },
                Inbound::FileHeader {
                    header,
                    meta,
                    content_len,
                } => Item::FileHeader {
                    header,
                    meta,
                    content_len,
                },
                Inbound::FileContent(piece) => {
                    assert!(!piece.is_empty(), "empty content piece");
                    assert!(piece.len() <= MAX_CONTENT_PIECE, "oversized piece");
                    if let Some(Item::Content(previous)) = items.last_mut() {
                        previous.extend_from_slice(&piece);
                        continue;
                    }
                    Item::Content(piece.to_vec())
                }
                Inbound::FileEnd => Item::FileEnd,
            };
            items.push(item);
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    decoder.decode_eof(&buf).unwrap();
    assert!(decoder.is_at_frame_boundary());
    items
}

fn decode_responses(pieces: Vec<&[u8]>) -> Vec<(ResponseHeader, Response)> {
    let mut decoder = ResponseDecoder::new();
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        while let Some(item) = decoder.decode(&mut buf).unwrap() {
            items.push(item);
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    items
}

fn encrypt(key: &AesKey, pieces: Vec<&[u8]>) -> Vec<u8> {
    let mut encryptor = CbcEncryptor::new(key);
    let mut out = BytesMut::new();
    for piece in pieces {
        encryptor.update(piece, &mut out);
    }
    encryptor.finish(&mut out);
    out.to_vec()
}

/// Runs a server session with an injected key over `wire` cut at `cuts`, answering every
/// effect with success. Returns the appended plaintext and the transmitted frames.
fn drive_server(
    key: AesKey,
    client_id: ClientId,
    wire: &[u8],
    cuts: &[Index],
) -> (Vec<u8>, Vec<Bytes>) {
    let now = Instant::now();
    let mut session = ServerSession::new(Arc::new(ServerConfig::default()), CountingRng(1), now);
    session.inject_session_key(client_id, NameField::new(&b"prop"[..]).unwrap(), key);
    let mut buf = BytesMut::new();
    let mut stored = Vec::new();
    let mut transmits = Vec::new();
    for piece in split(wire, cuts) {
        buf.extend_from_slice(piece);
        loop {
            session.handle_bytes(now, &mut buf).unwrap();
            let mut answered = false;
            while let Some(output) = session.poll_output() {
                match output {
                    Output::Transmit(frame) => transmits.push(frame),
                    Output::Effect(effect) => {
                        if let ServerEffect::AppendFile { data, .. } = &effect {
                            stored.extend_from_slice(data);
                        }
                        assert!(
                            matches!(
                                effect,
                                ServerEffect::BeginFile { .. }
                                    | ServerEffect::AppendFile { .. }
                                    | ServerEffect::FinishFile { .. }
                            ),
                            "unexpected effect {effect:?}"
                        );
                        session.handle_storage(now, Ok(())).unwrap();
                        answered = true;
                    }
                    Output::Event(_) => {}
                    Output::Close(reason) => panic!("session closed: {reason:?}"),
                }
            }
            if !answered {
                break;
            }
        }
    }
    assert!(buf.is_empty());
    (stored, transmits)
}
