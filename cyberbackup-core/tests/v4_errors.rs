#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]
//! Every row of the error table of `docs/protocol-v4.md` §5.3, and the promise that goes
//! with it: a fatal error is an `ERROR` frame *before* the server closes; a bad file name in
//! `UPLOAD`/`RESTORE` is the non-fatal `BAD_NAME` and the connection goes on.
//!
//! The client is written from the spec, not with the crate's client session: `snow`
//! directly (`Noise_XX_25519_AESGCM_SHA256`, the prologue of §4), raw plaintexts (type byte
//! and body as in §5.1), so every malformed message can be sent. The server is the core's
//! v4 `ServerSession`; its effects are answered by the test (a refusal of any code where
//! the table says the driver decides). In memory and deterministic (seeded RNGs).

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cyberbackup_core::names::{ClientId, FileName, NameField};
use cyberbackup_core::v4::codec::{Frame, FrameDecoder, Side};
use cyberbackup_core::v4::noise::{StaticKeypair, prologue};
use cyberbackup_core::v4::repository::{RepoReply, RepoRequest};
use cyberbackup_core::v4::server::{
    AuthDecision, RepoAnswer, ResumePoint, ServerConfig, ServerEffect, ServerSession,
};
use cyberbackup_core::v4::wire::{
    ErrorCode, ServerMessage, VersionRecord, encode_frame, hello_header, kind,
};
use cyberbackup_core::v4::{ContentDigest, Output, Refusal, StorageFailure};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

const SERVER_KEY: [u8; 32] = [0x51; 32];
const CLIENT_KEY: [u8; 32] = [0x17; 32];
const MAX_FILE_LEN: u64 = 1_000_000;

/// How the test answers the server's effects.
#[derive(Clone, Default)]
struct Answers {
    /// `Authenticate`: refuse with this code instead of accepting.
    auth: Option<ErrorCode>,
    /// `OpenUpload`: refuse with this code instead of opening.
    open_upload: Option<ErrorCode>,
    /// `WriteUpload`: fail the storage.
    write_fails: bool,
    /// `OpenUpload`: an impossible resume point (a driver bug: the server fails).
    impossible_resume: bool,
    /// `FinishUpload`: fail the commit.
    commit_fails: bool,
    /// `OpenVersion`: this version record (else not found); `ReadVersion` returns `content`.
    version: Option<(VersionRecord, Vec<u8>)>,
}

/// A client written from the spec, connected in memory to a `ServerSession`.
struct RawClient {
    server: ServerSession<ChaCha20Rng>,
    answers: Answers,
    transport: Option<snow::TransportState>,
    to_client: BytesMut,
    decoder: FrameDecoder,
    closed: bool,
    effects: Vec<ServerEffect>,
    now: Instant,
}

impl RawClient {
    /// Runs the handshake with `auth` as the ClientAuth payload (§4) and returns the client
    /// and the server's first transport message (`WELCOME` or a fatal `ERROR`), if any.
    fn connect(auth: &[u8], answers: Answers) -> (Self, Option<ServerMessage>) {
        let now = Instant::now();
        let config = Arc::new(ServerConfig {
            max_file_len: MAX_FILE_LEN,
            checkpoint_interval: 1024,
            ..ServerConfig::default()
        });
        let server = ServerSession::new(
            config,
            StaticKeypair::from_private(SERVER_KEY),
            ChaCha20Rng::seed_from_u64(7),
            now,
        );
        let mut client = Self {
            server,
            answers,
            transport: None,
            to_client: BytesMut::new(),
            decoder: FrameDecoder::new(Side::FromServer),
            closed: false,
            effects: Vec::new(),
            now,
        };
        let params: snow::params::NoiseParams = "Noise_XX_25519_AESGCM_SHA256".parse().unwrap();
        let mut hs = snow::Builder::with_resolver(params, Box::new(SeededResolver(9)))
            .local_private_key(&CLIENT_KEY)
            .unwrap()
            .prologue(&prologue())
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut msg = vec![0u8; 65_535];
        let len = hs.write_message(&[], &mut msg).unwrap();
        assert_eq!(len, 32);
        let mut hello = hello_header().to_vec();
        hello.extend_from_slice(&msg[..len]);
        client.feed(&hello);
        let Some(Frame::Handshake(msg2)) = client.next_frame() else {
            panic!("no message 2");
        };
        let mut server_hello = vec![0u8; msg2.len()];
        hs.read_message(&msg2, &mut server_hello).unwrap();
        let len = hs.write_message(auth, &mut msg).unwrap();
        client.feed(&encode_frame(kind::HANDSHAKE, &msg[..len]));
        client.transport = Some(hs.into_transport_mode().unwrap());
        let first = client.recv();
        (client, first)
    }

    /// A registered client (LOGIN accepted).
    fn logged_in(answers: Answers) -> Self {
        let (client, first) = Self::connect(&[1], answers);
        assert!(
            matches!(first, Some(ServerMessage::Welcome { .. })),
            "{first:?}"
        );
        client
    }

    /// Seals `plaintext` (type byte and body) as one TRANSPORT frame and feeds it.
    fn send(&mut self, plaintext: &[u8]) {
        let mut ciphertext = vec![0u8; plaintext.len() + 16];
        let len = self
            .transport
            .as_mut()
            .unwrap()
            .write_message(plaintext, &mut ciphertext)
            .unwrap();
        self.feed(&encode_frame(kind::TRANSPORT, &ciphertext[..len]));
    }

    /// Feeds raw bytes and runs the server loop, answering effects per `answers`.
    fn feed(&mut self, bytes: &[u8]) {
        let mut buf = BytesMut::from(bytes);
        let _ = self.server.handle_bytes(self.now, &mut buf);
        loop {
            let mut answered = false;
            while let Some(output) = self.server.poll_output() {
                match output {
                    Output::Transmit(bytes) => self.to_client.extend_from_slice(&bytes),
                    Output::Effect(effect) => {
                        answered |= effect.needs_answer();
                        self.effects.push(effect.clone());
                        self.answer(effect);
                    }
                    Output::Event(_) => {}
                    Output::Close(_) => self.closed = true,
                }
            }
            if !answered || self.closed {
                return;
            }
            let _ = self.server.handle_bytes(self.now, &mut buf);
        }
    }

    fn answer(&mut self, effect: ServerEffect) {
        let (now, answers) = (self.now, self.answers.clone());
        let refusal = |code: ErrorCode| Refusal::new(code, format!("refused with {code}"));
        let failure = || StorageFailure {
            reason: "disk on fire".into(),
        };
        let server = &mut self.server;
        let _ = match effect {
            ServerEffect::Authenticate { .. } => server.handle_auth(
                now,
                match answers.auth {
                    Some(code) => AuthDecision::Refused(refusal(code)),
                    None => AuthDecision::Accepted {
                        client_id: ClientId([3; 16]),
                        name: NameField::new(Bytes::from_static(b"raw")).unwrap(),
                        registered: false,
                    },
                },
            ),
            ServerEffect::OpenUpload { .. } => server.handle_upload_opened(
                now,
                match (answers.open_upload, answers.impossible_resume) {
                    (Some(code), _) => Err(refusal(code)),
                    (None, true) => Ok(ResumePoint {
                        offset: 5,
                        digest: ContentDigest::new(),
                    }),
                    (None, false) => Ok(ResumePoint::start()),
                },
            ),
            ServerEffect::WriteUpload { .. } | ServerEffect::Checkpoint { .. } => server
                .handle_storage(
                    now,
                    if answers.write_fails {
                        Err(failure())
                    } else {
                        Ok(())
                    },
                ),
            ServerEffect::FinishUpload { .. } => server.handle_committed(
                now,
                if answers.commit_fails {
                    Err(failure())
                } else {
                    Ok(1)
                },
            ),
            ServerEffect::ListVersions { .. } => server.handle_listing(now, Ok(Vec::new())),
            ServerEffect::OpenVersion { .. } => {
                server.handle_version_opened(now, Ok(answers.version.map(|(record, _)| record)))
            }
            ServerEffect::ReadVersion { offset, max } => {
                let content = answers.version.map(|(_, data)| data).unwrap_or_default();
                let start = (offset as usize).min(content.len());
                let end = (start + max).min(content.len());
                server.handle_version_data(now, Ok(Bytes::copy_from_slice(&content[start..end])))
            }
            ServerEffect::Repository { request, .. } => server.handle_repository(
                now,
                Ok(match request {
                    RepoRequest::Put { .. } => RepoAnswer::PutReady,
                    RepoRequest::Have { ids } => RepoAnswer::Have(vec![false; ids.len()]),
                    _ => RepoAnswer::Done,
                }),
            ),
            ServerEffect::WritePut { .. } => server.handle_storage(now, Ok(())),
            ServerEffect::FinishPut => server.handle_repository(now, Ok(RepoAnswer::Stored)),
            _ => Ok(()),
        };
    }

    fn next_frame(&mut self) -> Option<Frame> {
        self.decoder.decode(&mut self.to_client).unwrap()
    }

    /// The next message from the server, if it sent one.
    fn recv(&mut self) -> Option<ServerMessage> {
        let Frame::Transport(ciphertext) = self.next_frame()? else {
            panic!("expected a transport frame");
        };
        let mut plaintext = vec![0u8; ciphertext.len()];
        let len = self
            .transport
            .as_mut()
            .unwrap()
            .read_message(&ciphertext, &mut plaintext)
            .unwrap();
        plaintext.truncate(len);
        Some(ServerMessage::decode(Bytes::from(plaintext)).unwrap())
    }

    /// Every message the server sent since the last call.
    fn recv_all(&mut self) -> Vec<ServerMessage> {
        std::iter::from_fn(|| self.recv()).collect()
    }

    /// Sends LIST and expects an answer: the connection is still usable.
    fn assert_still_usable(&mut self, context: &str) {
        assert!(!self.closed, "{context}: the server closed");
        self.send(&[0x04]);
        let answer = self.recv_all();
        assert!(
            matches!(answer.as_slice(), [ServerMessage::ListEnd { count: 0 }]),
            "{context}: after LIST: {answer:?}"
        );
    }
}

/// The one `ERROR` the server sent, with its code and fatality.
fn only_error(messages: &[ServerMessage], context: &str) -> (ErrorCode, bool, String) {
    match messages {
        [
            ServerMessage::Error {
                code,
                fatal,
                message,
            },
        ] => (*code, *fatal, message.clone()),
        other => panic!("{context}: expected one ERROR, got {other:?}"),
    }
}

/// The code and fatality of the one `ERROR` the server sent.
fn code_and_fatality(messages: &[ServerMessage], context: &str) -> (ErrorCode, bool) {
    let (code, fatal, _) = only_error(messages, context);
    (code, fatal)
}

/// Sends `plaintext` on a fresh logged-in connection: the server must answer with a fatal
/// `PROTOCOL` error and then close.
fn assert_fatal_protocol(plaintext: &[u8], context: &str) {
    let mut client = RawClient::logged_in(Answers::default());
    client.send(plaintext);
    let (code, fatal, message) = only_error(&client.recv_all(), context);
    assert_eq!(
        (code, fatal),
        (ErrorCode::PROTOCOL, true),
        "{context}: {message}"
    );
    assert!(client.closed, "{context}: the server did not close");
}

fn upload(size: u64, flags: u8, name: &[u8]) -> Vec<u8> {
    let mut message = vec![0x01];
    message.extend_from_slice(&size.to_le_bytes());
    message.push(flags);
    message.push(name.len() as u8);
    message.extend_from_slice(name);
    message
}

fn restore(version: u32, name: &[u8]) -> Vec<u8> {
    let mut message = vec![0x05];
    message.extend_from_slice(&version.to_le_bytes());
    message.push(name.len() as u8);
    message.extend_from_slice(name);
    message
}

fn register(name: &[u8], token: &[u8]) -> Vec<u8> {
    let mut auth = vec![2, name.len() as u8];
    auth.extend_from_slice(name);
    auth.push(token.len() as u8);
    auth.extend_from_slice(token);
    auth
}

/// Row 1 (`PROTOCOL`), malformed messages: an unknown type, a truncated or over-long body,
/// reserved flag bits, and valid messages at the wrong time. Each one used to close the
/// connection without a word for most of these (14 of 30 in the outside attack).
#[test]
fn every_malformed_or_unexpected_message_gets_a_fatal_protocol_error_before_the_close() {
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for kind in [0x00u8, 0x07, 0x3F, 0x41, 0x44, 0x7F, 0xFF] {
        cases.push((format!("unknown type {kind:#04x}"), vec![kind]));
    }
    for len in 0..9 {
        let mut message = vec![0x01];
        message.extend(std::iter::repeat_n(0u8, len));
        cases.push((format!("UPLOAD with a {len}-byte body"), message));
    }
    for flags in [0x02u8, 0x80, 0xFF] {
        cases.push((
            format!("UPLOAD flags {flags:#04x}"),
            upload(10, flags, b"a.txt"),
        ));
    }
    let mut long = upload(10, 0, b"a.txt");
    long.push(0);
    cases.push(("UPLOAD with a trailing byte".into(), long));
    let mut short = upload(10, 0, b"a.txt");
    short.truncate(short.len() - 1);
    cases.push(("UPLOAD name shorter than its length".into(), short));
    cases.push(("RESTORE with a 3-byte body".into(), vec![0x05, 0, 0, 0]));
    let mut long = restore(0, b"a.txt");
    long.push(9);
    cases.push(("RESTORE with a trailing byte".into(), long));
    cases.push(("LIST with a trailing byte".into(), vec![0x04, 0]));
    cases.push(("BYE with a trailing byte".into(), vec![0x06, 1]));
    cases.push(("DATA without content".into(), vec![0x02]));
    cases.push(("DATA without an upload".into(), vec![0x02, 1, 2, 3]));
    let mut end = vec![0x03];
    end.extend_from_slice(&[0; 32]);
    cases.push(("UPLOAD_END without an upload".into(), end));
    cases.push(("UPLOAD_END truncated".into(), vec![0x03, 0, 0]));
    cases.push(("UPLOAD_END with a trailing byte".into(), {
        let mut end = vec![0x03];
        end.extend_from_slice(&[0; 33]);
        end
    }));
    assert!(cases.len() >= 30, "{}", cases.len());
    for (context, plaintext) in &cases {
        assert_fatal_protocol(plaintext, context);
    }

    // Inside an upload: another request, DATA past the size, an early UPLOAD_END.
    for (context, second) in [
        ("LIST in the middle of an upload", vec![0x04]),
        ("UPLOAD in the middle of an upload", upload(3, 0, b"b.txt")),
        ("DATA beyond the announced size", vec![0x02, 1, 2, 3, 4]),
        ("UPLOAD_END before the data", {
            let mut end = vec![0x03];
            end.extend_from_slice(&[0; 32]);
            end
        }),
    ] {
        let mut client = RawClient::logged_in(Answers::default());
        client.send(&upload(3, 0, b"a.txt"));
        assert_eq!(
            client.recv_all(),
            [ServerMessage::UploadReady { offset: 0 }],
            "{context}"
        );
        client.send(&second);
        let (code, fatal, message) = only_error(&client.recv_all(), context);
        assert_eq!(
            (code, fatal),
            (ErrorCode::PROTOCOL, true),
            "{context}: {message}"
        );
        assert!(client.closed, "{context}");
    }
}

fn put(class: u8, size: u64) -> Vec<u8> {
    let mut message = vec![0x14, class];
    message.extend_from_slice(&[7; 32]);
    message.extend_from_slice(&size.to_le_bytes());
    message
}

/// The repository messages of §9a: a malformed body, a `PUT_END` or `DATA` outside a put,
/// and, inside a put, anything but its `DATA` and `PUT_END` are fatal `PROTOCOL` errors.
#[test]
fn malformed_or_misplaced_repository_messages_are_fatal_protocol_errors() {
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("REPO_OPEN with a trailing byte", vec![0x10, 0]),
        ("REPO_CREATE truncated", vec![0x11, 5, 0, 1]),
        ("KEY_ADD without its key", vec![0x12]),
        ("HAVE of no id", vec![0x13, 0, 0]),
        ("HAVE shorter than its count", vec![0x13, 2, 0, 1, 2, 3]),
        ("PUT of an unknown class", put(9, 10)),
        ("PUT of a blob", put(3, 10)),
        ("PUT of an empty object", put(1, 0)),
        ("PUT_END without a PUT", vec![0x15]),
        ("GET of a pack", {
            let mut get = vec![0x16, 1];
            get.extend_from_slice(&[0; 32]);
            get
        }),
        ("FORGET truncated", vec![0x18, 1, 2]),
        ("SNAPSHOTS with a trailing byte", vec![0x17, 1]),
    ];
    let mut too_many = vec![0x13];
    too_many.extend_from_slice(&2001u16.to_le_bytes());
    too_many.extend(std::iter::repeat_n(0u8, 2001 * 32));
    cases.push(("HAVE of 2001 ids", too_many));
    for (context, plaintext) in &cases {
        assert_fatal_protocol(plaintext, context);
    }
    for (context, second) in [
        ("DATA beyond the announced object size", vec![0x02; 12]),
        ("PUT_END before all bytes", vec![0x15]),
        ("HAVE in the middle of a PUT", {
            let mut have = vec![0x13, 1, 0];
            have.extend_from_slice(&[0; 32]);
            have
        }),
        ("UPLOAD in the middle of a PUT", upload(3, 0, b"b.txt")),
    ] {
        let mut client = RawClient::logged_in(Answers::default());
        client.send(&put(1, 10));
        assert_eq!(
            client.recv_all(),
            [ServerMessage::Repo(RepoReply::PutReady)],
            "{context}"
        );
        client.send(&second);
        let (code, fatal, message) = only_error(&client.recv_all(), context);
        assert_eq!(
            (code, fatal),
            (ErrorCode::PROTOCOL, true),
            "{context}: {message}"
        );
        assert!(client.closed, "{context}");
    }
    // A complete put is answered PUT_DONE and the connection goes on.
    let mut client = RawClient::logged_in(Answers::default());
    client.send(&put(1, 3));
    client.recv_all();
    client.send(&[0x02, 1, 2, 3]);
    client.send(&[0x15]);
    assert_eq!(client.recv_all(), [ServerMessage::Repo(RepoReply::PutDone)]);
    client.assert_still_usable("after a PUT");
}

/// Row 1 for the handshake: a ClientAuth (§4) that breaks its layout is answered with a
/// fatal `PROTOCOL` error (the transport keys exist by then) and never reaches the driver.
#[test]
fn every_malformed_client_auth_gets_a_fatal_protocol_error() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("mode 0", vec![0]),
        ("mode 3", vec![3]),
        ("mode 0xFF", vec![0xFF]),
        ("LOGIN with a trailing byte", vec![1, 0]),
        ("REGISTER without a name", vec![2]),
        ("REGISTER with name_len 0", register(b"", b"")),
        ("REGISTER with a NUL in the name", register(b"al\0ce", b"")),
        ("REGISTER with 255-byte name", register(&[b'a'; 255], b"")),
        (
            "REGISTER name shorter than its length",
            vec![2, 5, b'a', b'b'],
        ),
        ("REGISTER without a token length", vec![2, 1, b'a']),
        (
            "REGISTER token shorter than its length",
            vec![2, 1, b'a', 4, b'x'],
        ),
        (
            "REGISTER with a 129-byte token",
            register(b"alice", &[b't'; 129]),
        ),
        (
            "REGISTER with a non-ASCII token",
            register(b"alice", "tök".as_bytes()),
        ),
        ("REGISTER with a trailing byte", {
            let mut auth = register(b"alice", b"tok");
            auth.push(0);
            auth
        }),
    ];
    for (context, auth) in cases {
        let (client, first) = RawClient::connect(&auth, Answers::default());
        let first = first.map(|m| vec![m]).unwrap_or_default();
        let (code, fatal, message) = only_error(&first, context);
        assert_eq!(
            (code, fatal),
            (ErrorCode::PROTOCOL, true),
            "{context}: {message}"
        );
        assert!(client.closed, "{context}");
        assert!(
            !client
                .effects
                .iter()
                .any(|e| matches!(e, ServerEffect::Authenticate { .. })),
            "{context}: reached the driver"
        );
    }
}

/// Row 10 (`BAD_NAME`, not fatal): every invalid name in UPLOAD and RESTORE (16 in the
/// outside attack closed the connection) is refused on its own; the connection goes on.
#[test]
fn invalid_names_in_upload_and_restore_are_a_non_fatal_bad_name() {
    let names: [&[u8]; 11] = [
        b"..",
        b".",
        b"a/b",
        b"/etc/passwd",
        b"../up",
        b"a\\b",
        b"C:notes.txt",
        b"a\0b",
        b"\0",
        b"",
        &[b'n'; 255],
    ];
    for name in names {
        for (what, message) in [
            ("UPLOAD", upload(4, 0, name)),
            ("RESTORE", restore(0, name)),
        ] {
            let context = format!("{what} {:?}", String::from_utf8_lossy(name));
            let mut client = RawClient::logged_in(Answers::default());
            client.send(&message);
            let (code, fatal, text) = only_error(&client.recv_all(), &context);
            assert_eq!(
                (code, fatal),
                (ErrorCode::BAD_NAME, false),
                "{context}: {text}"
            );
            assert!(text.contains("file name"), "{context}: {text}");
            client.assert_still_usable(&context);
            assert!(
                client.effects.iter().all(|e| matches!(
                    e,
                    ServerEffect::Authenticate { .. } | ServerEffect::ListVersions { .. }
                )),
                "{context}: reached storage: {:?}",
                client.effects
            );
        }
    }
}

/// Rows 2–5, 12 and 14 when the driver refuses the handshake: a fatal `ERROR` with that
/// code, then the close.
#[test]
fn handshake_refusals_are_fatal_errors_with_their_code() {
    for code in [
        ErrorCode::UNKNOWN_CLIENT,
        ErrorCode::NAME_TAKEN,
        ErrorCode::ENROLLMENT_REQUIRED,
        ErrorCode::ENROLLMENT_INVALID,
        ErrorCode::RATE_LIMITED,
        ErrorCode::INTERNAL,
    ] {
        let answers = Answers {
            auth: Some(code),
            ..Answers::default()
        };
        let (client, first) = RawClient::connect(&register(b"alice", b""), answers);
        let first = first.map(|m| vec![m]).unwrap_or_default();
        assert_eq!(
            code_and_fatality(&first, &code.to_string()),
            (code, true),
            "{code}"
        );
        assert!(client.closed, "{code}");
    }
}

fn content() -> Vec<u8> {
    (0..3000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn data(bytes: &[u8]) -> Vec<u8> {
    let mut message = vec![0x02];
    message.extend_from_slice(bytes);
    message
}

fn upload_end(sha256: [u8; 32]) -> Vec<u8> {
    let mut message = vec![0x03];
    message.extend_from_slice(&sha256);
    message
}

/// Uploads `content()` with `sha256` in UPLOAD_END; returns what the server sent after
/// UPLOAD_READY.
fn upload_content(client: &mut RawClient, sha256: [u8; 32]) -> Vec<ServerMessage> {
    let content = content();
    client.send(&upload(content.len() as u64, 0, b"a.txt"));
    assert_eq!(
        client.recv_all(),
        [ServerMessage::UploadReady { offset: 0 }]
    );
    client.send(&data(&content));
    client.send(&upload_end(sha256));
    client.recv_all()
}

/// Rows 6, 8 (commit), 9, 11 and 7, 13 (restore): the operation fails with its code, not
/// fatal, and the connection goes on.
#[test]
fn operation_refusals_are_non_fatal_and_the_connection_goes_on() {
    // 6 HASH_MISMATCH
    let mut client = RawClient::logged_in(Answers::default());
    let answer = upload_content(&mut client, [0; 32]);
    assert_eq!(
        code_and_fatality(&answer, "hash"),
        (ErrorCode::HASH_MISMATCH, false)
    );
    assert!(client.effects.contains(&ServerEffect::DiscardUpload));
    client.assert_still_usable("HASH_MISMATCH");

    // 8 STORAGE when the commit fails
    let mut client = RawClient::logged_in(Answers {
        commit_fails: true,
        ..Answers::default()
    });
    let answer = upload_content(&mut client, Sha256::digest(content()).into());
    assert_eq!(
        code_and_fatality(&answer, "commit"),
        (ErrorCode::STORAGE, false)
    );
    client.assert_still_usable("STORAGE on commit");

    // 9 TOO_LARGE
    let mut client = RawClient::logged_in(Answers::default());
    client.send(&upload(MAX_FILE_LEN + 1, 0, b"big.bin"));
    assert_eq!(
        code_and_fatality(&client.recv_all(), "too large"),
        (ErrorCode::TOO_LARGE, false)
    );
    client.assert_still_usable("TOO_LARGE");

    // 11 BUSY (the driver's refusal to open the upload)
    let mut client = RawClient::logged_in(Answers {
        open_upload: Some(ErrorCode::BUSY),
        ..Answers::default()
    });
    client.send(&upload(3, 0, b"a.txt"));
    assert_eq!(
        code_and_fatality(&client.recv_all(), "busy"),
        (ErrorCode::BUSY, false)
    );
    client.assert_still_usable("BUSY");

    // 7 NOT_FOUND
    let mut client = RawClient::logged_in(Answers::default());
    client.send(&restore(0, b"missing.txt"));
    assert_eq!(
        code_and_fatality(&client.recv_all(), "not found"),
        (ErrorCode::NOT_FOUND, false)
    );
    client.assert_still_usable("NOT_FOUND");

    // 13 CORRUPT: the stored bytes no longer match the recorded SHA-256.
    let stored = content();
    let record = VersionRecord {
        name: FileName::validate(NameField::new(Bytes::from_static(b"a.txt")).unwrap()).unwrap(),
        version: 1,
        size: stored.len() as u64,
        created_unix_secs: 1,
        cksum: 0,
        sha256: [0xAB; 32],
    };
    let mut client = RawClient::logged_in(Answers {
        version: Some((record.clone(), stored)),
        ..Answers::default()
    });
    client.send(&restore(0, b"a.txt"));
    let answer = client.recv_all();
    assert_eq!(answer.first(), Some(&ServerMessage::RestoreBegin(record)));
    assert!(
        matches!(
            answer.last(),
            Some(ServerMessage::Error {
                code: ErrorCode::CORRUPT,
                fatal: false,
                ..
            })
        ),
        "{answer:?}"
    );
    client.assert_still_usable("CORRUPT");
}

/// Row 8 while the client streams (fatal `STORAGE`), and row 14 when the driver hands the
/// session an impossible state (fatal `INTERNAL`, which used to close without a word).
#[test]
fn storage_failures_mid_upload_and_internal_failures_are_fatal_errors() {
    let mut client = RawClient::logged_in(Answers {
        write_fails: true,
        ..Answers::default()
    });
    client.send(&upload(3, 0, b"a.txt"));
    assert_eq!(
        client.recv_all(),
        [ServerMessage::UploadReady { offset: 0 }]
    );
    client.send(&data(b"abc"));
    assert_eq!(
        code_and_fatality(&client.recv_all(), "write"),
        (ErrorCode::STORAGE, true)
    );
    assert!(client.closed);

    let mut client = RawClient::logged_in(Answers {
        impossible_resume: true,
        ..Answers::default()
    });
    client.send(&upload(3, 0, b"a.txt"));
    let (code, fatal, message) = only_error(&client.recv_all(), "internal");
    assert_eq!((code, fatal), (ErrorCode::INTERNAL, true), "{message}");
    assert!(
        !message.contains("digest"),
        "internal details leaked: {message}"
    );
    assert!(client.closed);
}

/// The exception to "an ERROR before the close": bytes that are not a valid frame, or a
/// frame that fails its tag, may be damage on the way; the server closes without a reply
/// and the client reconnects and resumes (a fatal ERROR would stop its retries).
#[test]
fn broken_frames_after_the_handshake_close_without_a_reply() {
    let mut client = RawClient::logged_in(Answers::default());
    client.feed(&[4, 0x09, 1, 0, 0]);
    assert_eq!(client.recv_all(), []);
    assert!(client.closed);

    let mut client = RawClient::logged_in(Answers::default());
    let mut junk = vec![0u8; 40];
    ChaCha20Rng::seed_from_u64(3).fill_bytes(&mut junk);
    client.feed(&encode_frame(kind::TRANSPORT, &junk));
    assert_eq!(client.recv_all(), []);
    assert!(client.closed);
}

/// snow's primitives with randomness from a seed (snow's own RNG needs the OS).
struct SeededResolver(u64);

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::seed_from_u64(self.0))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}
