//! Whole conversations between `ClientSession` and `ServerSession` in memory, plus the
//! server's answers to bad input. Each test fails if the behaviour it names breaks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use cyberbackup_core::crypto::{AesKey, CbcEncryptor, ClientKeyPair};
use cyberbackup_core::fuzzing::CountingRng;
use cyberbackup_core::names::{ClientId, NameField};
use cyberbackup_core::testing::{MemStore, ServerRun, drive_server, run_pair};
use cyberbackup_core::v3::codec::ResponseDecoder;
use cyberbackup_core::v3::frame::{FileMeta, RequestHeader, Response};
use cyberbackup_core::v3::{
    ClientConfig, ClientEvent, ClientQuirk, ClientSession, CloseReason, FileFailure, FileId,
    FileSpec, PacketScheme, ServerConfig, ServerEvent, ServerSession,
};

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn key() -> ClientKeyPair {
    ClientKeyPair::generate(&mut CountingRng(99)).unwrap()
}

fn server(now: Instant) -> ServerSession<CountingRng> {
    ServerSession::new(Arc::new(ServerConfig::default()), CountingRng(5), now)
}

/// Registers `name`, backs up `sizes`, returns the client run, server run and store.
fn back_up(config: ClientConfig, sizes: &[usize]) -> (Vec<ClientEvent>, MemStore, Vec<Vec<u8>>) {
    let now = Instant::now();
    let mut client = ClientSession::register(
        Arc::new(config),
        NameField::new(&b"alice"[..]).unwrap(),
        Some(key()),
        CountingRng(1),
        now,
    );
    let mut files = BTreeMap::new();
    let mut contents = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let data = pattern(size, i as u32);
        let name = format!("file-{i}.bin");
        let id = client.backup(FileSpec {
            name: NameField::new(name.into_bytes()).unwrap(),
            len: size as u64,
        });
        files.insert(id, data.clone());
        contents.push(data);
    }
    client.finish_when_idle();
    let mut srv = server(now);
    let mut store = MemStore::default();
    let (client_run, server_run) = run_pair(&mut client, &mut srv, &mut store, &files, now);
    assert_eq!(
        client_run.closed,
        Some(CloseReason::Done),
        "{:?}",
        client_run.events
    );
    assert!(server_run.closed.is_none());
    (client_run.events, store, contents)
}

fn assert_all_stored(store: &MemStore, contents: &[Vec<u8>]) {
    assert_eq!(store.committed.len(), contents.len());
    for (i, data) in contents.iter().enumerate() {
        let stored = store
            .committed
            .iter()
            .find(|((_, name), _)| *name == format!("file-{i}.bin").into_bytes())
            .map(|(_, data)| data)
            .unwrap_or_else(|| panic!("file-{i} missing"));
        assert_eq!(stored, data, "file-{i}");
    }
}

const SIZES: [usize; 8] = [0, 1, 15, 16, 17, 4000, 9000, 65_536 + 1];

#[test]
fn sliced_multi_packet_files_of_every_size_round_trip() {
    for packet in [16, 1024, 4000, 65_269] {
        let config = ClientConfig {
            packet_content_len: packet,
            read_chunk_len: 777,
            ..ClientConfig::default()
        };
        let (events, store, contents) = back_up(config, &SIZES);
        assert_all_stored(&store, &contents);
        let verified = events
            .iter()
            .filter(|e| matches!(e, ClientEvent::FileVerified { attempts: 1, .. }))
            .count();
        assert_eq!(verified, SIZES.len(), "packet {packet}");
    }
}

#[test]
fn per_packet_and_single_packet_modes_round_trip() {
    let per_packet = ClientConfig {
        scheme: PacketScheme::PerPacket,
        packet_content_len: 4016,
        ..ClientConfig::default()
    };
    let (_, store, contents) = back_up(per_packet, &SIZES);
    assert_all_stored(&store, &contents);
    let single = ClientConfig {
        single_packet: true,
        packet_content_len: 16,
        ..ClientConfig::default()
    };
    let (_, store, contents) = back_up(single, &SIZES);
    assert_all_stored(&store, &contents);
}

#[test]
fn packet_size_grows_when_a_file_would_need_more_than_65535_packets() {
    let config = ClientConfig {
        packet_content_len: 16,
        read_chunk_len: 65_536,
        ..ClientConfig::default()
    };
    let (_, store, contents) = back_up(config, &[65_535 * 16 + 100]);
    assert_all_stored(&store, &contents);
}

/// Runs client and server with a hook that may alter server-to-client bytes.
fn run_tampered(
    config: ClientConfig,
    size: usize,
    tamper: impl Fn(&mut Vec<u8>),
) -> (Vec<ClientEvent>, MemStore, ServerRun, Option<CloseReason>) {
    let now = Instant::now();
    let mut client = ClientSession::register(
        Arc::new(config),
        NameField::new(&b"bob"[..]).unwrap(),
        Some(key()),
        CountingRng(1),
        now,
    );
    let id = client.backup(FileSpec {
        name: NameField::new(&b"data.bin"[..]).unwrap(),
        len: size as u64,
    });
    client.finish_when_idle();
    let files = BTreeMap::from([(id, pattern(size, 3))]);
    let mut srv = server(now);
    let mut store = MemStore::default();
    let mut server_run = ServerRun::default();
    let mut client_run = cyberbackup_core::testing::ClientRun::default();
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    let (mut c_fed, mut s_fed) = (0, 0);
    for _ in 0..10_000 {
        cyberbackup_core::testing::drive_client(&mut client, &files, now, &mut client_run);
        to_server.extend_from_slice(&client_run.sent[c_fed..]);
        c_fed = client_run.sent.len();
        drive_server(&mut srv, &mut store, now, &mut to_server, &mut server_run);
        let mut fresh = server_run.sent[s_fed..].to_vec();
        s_fed = server_run.sent.len();
        tamper(&mut fresh);
        to_client.extend_from_slice(&fresh);
        let _ = client.handle_bytes(now, &mut to_client);
        if client_run.closed.is_some() || client.is_done() {
            cyberbackup_core::testing::drive_client(&mut client, &files, now, &mut client_run);
            break;
        }
    }
    (client_run.events, store, server_run, client_run.closed)
}

/// Flips the cksum of every 1603 in a chunk of server bytes.
fn corrupt_cksums(bytes: &mut [u8]) {
    let mut at = 0;
    while at + 7 <= bytes.len() {
        let code = u16::from_le_bytes([bytes[at + 1], bytes[at + 2]]);
        let len = u32::from_le_bytes(bytes[at + 3..at + 7].try_into().unwrap()) as usize;
        if code == 1603 {
            bytes[at + 7 + 275] ^= 0xff;
        }
        at += 7 + len;
    }
}

#[test]
fn crc_mismatch_resends_three_times_then_aborts_and_nothing_is_committed() {
    let config = ClientConfig {
        packet_content_len: 1024,
        ..ClientConfig::default()
    };
    let (events, store, server_run, closed) = run_tampered(config, 5000, |b| corrupt_cksums(b));
    let mismatches: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::CrcMismatch {
                attempt,
                switched_to_per_packet,
                ..
            } => Some((*attempt, *switched_to_per_packet)),
            _ => None,
        })
        .collect();
    // The first resend switches to per-packet encryption (shlomi-style servers).
    assert_eq!(mismatches, [(1, true), (2, false), (3, false), (4, false)]);
    assert!(events.contains(&ClientEvent::FileFailed {
        file: FileId(0),
        failure: FileFailure::CrcMismatch { attempts: 4 },
    }));
    assert_eq!(closed, Some(CloseReason::Done));
    assert!(store.committed.is_empty());
    assert!(store.partial.is_empty() && store.received.is_empty());
    assert_eq!(store.aborted.len(), 4);
    // 1603 four times, then one 1604 for the 1031; nothing answered the 1030s.
    let codes = response_codes(&server_run.sent);
    assert_eq!(codes.iter().filter(|&&c| c == 1603).count(), 4);
    assert_eq!(codes.last(), Some(&1604));
    assert_eq!(codes.iter().filter(|&&c| c == 1604).count(), 1);
}

#[test]
fn a_stray_1604_after_1030_is_skipped() {
    // Tom's and elies' servers answer 1030 with 1604: inject one after the first 1603.
    let config = ClientConfig::default();
    let injected = std::cell::Cell::new(false);
    let (events, _, _, closed) = run_tampered(config, 100, |bytes| {
        let codes = response_codes(bytes);
        if codes.first() == Some(&1603) && !injected.get() {
            injected.set(true);
            corrupt_cksums(bytes);
            bytes.extend_from_slice(
                &Response::Acknowledged {
                    client_id: ClientId::ZERO,
                }
                .to_bytes(),
            );
        }
    });
    assert!(injected.get());
    assert_eq!(closed, Some(CloseReason::Done));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::FileVerified { attempts: 2, .. })),
        "{events:?}"
    );
}

fn response_codes(bytes: &[u8]) -> Vec<u16> {
    let mut buf = BytesMut::from(bytes);
    let mut decoder = ResponseDecoder::new();
    let mut codes = Vec::new();
    while let Ok(Some((_, response))) = decoder.decode(&mut buf) {
        codes.push(response.code().0);
    }
    codes
}

#[test]
fn reconnect_refused_registers_anew_and_saves_the_new_identity() {
    let now = Instant::now();
    let stale = cyberbackup_core::identity::Identity::new(
        NameField::new(&b"carol"[..]).unwrap(),
        ClientId([7; 16]),
        key(),
    );
    let mut client = ClientSession::reconnect(
        Arc::new(ClientConfig::default()),
        stale,
        CountingRng(2),
        now,
    );
    let id = client.backup(FileSpec {
        name: NameField::new(&b"a.txt"[..]).unwrap(),
        len: 3,
    });
    client.finish_when_idle();
    let files = BTreeMap::from([(id, b"abc".to_vec())]);
    let mut srv = server(now);
    let mut store = MemStore::default();
    let (client_run, _) = run_pair(&mut client, &mut srv, &mut store, &files, now);
    assert!(client_run.events.contains(&ClientEvent::ReconnectRefused));
    assert_eq!(client_run.saved.len(), 1);
    assert_ne!(client_run.saved[0].client_id(), ClientId([7; 16]));
    assert_eq!(store.committed.len(), 1);
}

// ---- the server against hand-made bad input ----

struct Raw {
    session: ServerSession<CountingRng>,
    store: MemStore,
    run: ServerRun,
    now: Instant,
}

impl Raw {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            session: server(now),
            store: MemStore::default(),
            run: ServerRun::default(),
            now,
        }
    }

    /// A connection with an established session key for client 1..1 named "eve".
    fn keyed() -> (Self, AesKey) {
        let mut raw = Self::new();
        let id = ClientId([1; 16]);
        let key = AesKey::from_bytes([9; 32]);
        raw.store.add_client(id, b"eve", None);
        raw.session
            .inject_session_key(id, NameField::new(&b"eve"[..]).unwrap(), key.clone());
        (raw, key)
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<u16> {
        let before = self.run.sent.len();
        let mut buf = BytesMut::from(bytes);
        drive_server(
            &mut self.session,
            &mut self.store,
            self.now,
            &mut buf,
            &mut self.run,
        );
        response_codes(&self.run.sent[before..])
    }
}

fn request(code: u16, version: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    RequestHeader {
        client_id: ClientId([1; 16]),
        version,
        code: cyberbackup_core::v3::frame::RequestCode(code),
        payload_len: payload.len() as u32,
    }
    .encode(&mut out);
    out.extend_from_slice(payload);
    out
}

fn name_field(name: &[u8]) -> Vec<u8> {
    let mut field = name.to_vec();
    field.resize(255, 0);
    field
}

fn encrypt(key: &AesKey, plain: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut enc = CbcEncryptor::new(key);
    enc.update(plain, &mut out);
    enc.finish(&mut out);
    out.to_vec()
}

fn file_frame(
    name: &[u8],
    content_size: u32,
    orig: u32,
    packet: u16,
    total: u16,
    content: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let meta = FileMeta {
        content_size,
        orig_file_size: orig,
        packet_number: packet,
        total_packets: total,
        file_name: NameField::decode(&name_field(name)),
    };
    meta.encode_frame_head(ClientId([1; 16]), content.len() as u32, &mut out);
    out.put_slice(content);
    out
}

#[test]
fn file_before_key_exchange_gets_1607_and_the_connection_survives() {
    let mut raw = Raw::new();
    let codes = raw.feed(&file_frame(b"a.txt", 16, 1, 1, 1, &[0; 16]));
    assert_eq!(codes, [1607]);
    assert!(raw.store.partial.is_empty() && raw.store.committed.is_empty());
    let codes = raw.feed(&request(1025, 3, &name_field(b"zed")));
    assert_eq!(codes, [1600]);
}

#[test]
fn wrong_version_unknown_code_and_oversized_payload_get_1607_and_close() {
    for bytes in [
        request(1025, 4, &name_field(b"a")),
        request(1099, 3, &[]),
        {
            let mut header = request(1025, 3, &[]);
            header[19..23].copy_from_slice(&100_000u32.to_le_bytes());
            header
        },
    ] {
        let mut raw = Raw::new();
        let codes = raw.feed(&bytes);
        assert_eq!(codes, [1607]);
        assert!(matches!(raw.run.closed, Some(CloseReason::Error(_))));
    }
}

#[test]
fn escaping_file_names_are_refused_before_anything_is_written() {
    for name in [&b"../evil"[..], b"/etc/passwd", b"a\\b", b"..", b""] {
        let (mut raw, key) = Raw::keyed();
        let cipher = encrypt(&key, b"x");
        let codes = raw.feed(&file_frame(name, 16, 1, 1, 1, &cipher));
        assert_eq!(codes, [1607], "{name:?}");
        assert!(raw.store.partial.is_empty() && raw.store.committed.is_empty());
        assert!(
            !raw.run
                .events
                .iter()
                .any(|e| matches!(e, ServerEvent::FileReceived { .. }))
        );
    }
}

#[test]
fn bad_padding_or_misaligned_content_fails_the_file_and_closes_the_connection() {
    let (mut padding, key) = Raw::keyed();
    let mut cipher = encrypt(&key, b"twenty bytes of text");
    cipher[15] ^= 1;
    let (mut misaligned, _) = Raw::keyed();
    let good = encrypt(&key, b"ok");

    let padding_codes = padding.feed(
        &[
            file_frame(b"a", 32, 20, 1, 1, &cipher),
            file_frame(b"a", 16, 2, 1, 1, &good),
        ]
        .concat(),
    );
    let misaligned_codes = misaligned.feed(&file_frame(b"a", 15, 14, 1, 1, &[0; 15]));

    // One 1607, then nothing more is read: the next file gets no reply.
    assert_eq!(padding_codes, [1607]);
    assert_eq!(misaligned_codes, [1607]);
    for raw in [&padding, &misaligned] {
        assert!(matches!(raw.run.closed, Some(CloseReason::Error(_))));
        assert!(raw.store.partial.is_empty() && raw.store.committed.is_empty());
        assert_eq!(raw.store.aborted.len(), 1);
        assert!(
            raw.run
                .events
                .iter()
                .any(|e| matches!(e, ServerEvent::DecryptFailed { .. })),
            "{:?}",
            raw.run.events
        );
    }
}

#[test]
fn packet_numbers_out_of_order_and_changing_metadata_are_refused() {
    let plain = pattern(3000, 1);
    type Build = Box<dyn Fn(&[u8]) -> Vec<u8>>;
    let cases: [(&str, Build); 4] = [
        (
            "packet 0",
            Box::new(|c| file_frame(b"f", 3008, 3000, 0, 3, &c[..1024])),
        ),
        (
            "packet above total",
            Box::new(|c| {
                [
                    file_frame(b"f", 3008, 3000, 1, 3, &c[..1024]),
                    file_frame(b"f", 3008, 3000, 4, 3, &c[1024..2048]),
                ]
                .concat()
            }),
        ),
        (
            "repeated packet",
            Box::new(|c| {
                [
                    file_frame(b"f", 3008, 3000, 1, 3, &c[..1024]),
                    file_frame(b"f", 3008, 3000, 1, 3, &c[..1024]),
                    file_frame(b"f", 3008, 3000, 3, 3, &c[1024..2048]),
                ]
                .concat()
            }),
        ),
        (
            "size changes",
            Box::new(|c| {
                [
                    file_frame(b"f", 3008, 3000, 1, 3, &c[..1024]),
                    file_frame(b"f", 3008, 2999, 2, 3, &c[1024..2048]),
                ]
                .concat()
            }),
        ),
    ];
    for (what, build) in cases {
        let (mut raw, key) = Raw::keyed();
        let cipher = encrypt(&key, &plain);
        let codes = raw.feed(&build(&cipher));
        assert_eq!(codes.last(), Some(&1607), "{what}: {codes:?}");
        assert!(!codes.contains(&1603), "{what}");
        assert!(
            raw.store.committed.is_empty() && raw.store.partial.is_empty(),
            "{what}"
        );
    }
}

#[test]
fn urihor_zero_padding_empty_last_packet_and_surplus_packet_are_tolerated() {
    let (mut raw, key) = Raw::keyed();
    // urihor: one packet of 65 269 bytes, content_size = 80 (the rest zero padding).
    let plain = pattern(71, 2);
    let mut content = encrypt(&key, &plain);
    content.resize(65_269, 0);
    assert_eq!(
        raw.feed(&file_frame(b"u.txt", 80, 71, 1, 1, &content)),
        [1603]
    );
    assert_eq!(raw.feed(&request(1029, 3, &name_field(b"u.txt"))), [1604]);
    // H3: ciphertext an exact multiple of 1024 → an empty last packet.
    let plain = pattern(1008, 3);
    let cipher = encrypt(&key, &plain);
    assert_eq!(cipher.len(), 1024);
    let frames = [
        file_frame(b"h.bin", 1024, 1008, 1, 2, &cipher),
        file_frame(b"h.bin", 1024, 1008, 2, 2, &[]),
    ]
    .concat();
    assert_eq!(raw.feed(&frames), [1603]);
    assert_eq!(raw.feed(&request(1029, 3, &name_field(b"h.bin"))), [1604]);
    // shlomi: per-packet file of 8000 bytes followed by a surplus packet 3 (empty input).
    let plain = pattern(8000, 4);
    let frames = [
        file_frame(b"s.bin", 4016, 4000, 1, 2, &encrypt(&key, &plain[..4000])),
        file_frame(b"s.bin", 4016, 4000, 2, 2, &encrypt(&key, &plain[4000..])),
        file_frame(b"s.bin", 16, 0, 3, 2, &encrypt(&key, &[])),
    ]
    .concat();
    assert_eq!(raw.feed(&frames), [1603]);
    assert_eq!(raw.feed(&request(1029, 3, &name_field(b"s.bin"))), [1604]);
    let stored: Vec<_> = raw.store.committed.values().collect();
    assert_eq!(stored.len(), 3);
    assert!(raw.store.committed.values().any(|v| *v == plain));
}

/// `len` bytes of `cipher` cut into `packet`-byte slices, numbered as a 16-bit client does
/// (modulo 65 536, `total` too), each announcing the total sizes (H3's form).
fn wrapped_frames(name: &[u8], cipher: &[u8], orig: u32, packet: usize) -> Vec<u8> {
    let packets = cipher.len().div_ceil(packet);
    let mut out = Vec::with_capacity(cipher.len() + packets * 300);
    for (index, slice) in cipher.chunks(packet).enumerate() {
        out.extend_from_slice(&file_frame(
            name,
            cipher.len() as u32,
            orig,
            ((index + 1) % 65_536) as u16,
            (packets % 65_536) as u16,
            slice,
        ));
    }
    out
}

#[test]
fn packet_numbers_wrapping_at_16_bits_are_accepted_when_content_size_gives_the_count() {
    // 65 538 packets of 16 bytes: numbered 1 … 65 535, 0, 1, 2 with total_packets = 2.
    let plain = pattern(65_538 * 16 - 16, 6);
    let (mut raw, key) = Raw::keyed();
    let cipher = encrypt(&key, &plain);
    assert_eq!(cipher.len(), 65_538 * 16);
    let codes = raw.feed(&wrapped_frames(b"w.bin", &cipher, plain.len() as u32, 16));
    assert_eq!(codes, [1603]);
    assert_eq!(raw.feed(&request(1029, 3, &name_field(b"w.bin"))), [1604]);
    assert!(raw.store.committed.values().any(|v| *v == plain));
    assert!(raw.run.events.contains(&ServerEvent::NonConformingClient {
        transfer: cyberbackup_core::v3::TransferId(0),
        quirk: ClientQuirk::WrappedPacketNumbers { packets: 65_538 },
    }));
}

#[test]
fn a_wrapped_numbering_that_is_not_exact_is_still_refused() {
    let plain = pattern(65_538 * 16 - 16, 7);
    type Mangle = fn(&mut Vec<Vec<u8>>);
    let cases: [(&str, Mangle); 3] = [
        // total_packets 3 (mod 65 536) does not match the 65 538 packets content_size gives.
        ("wrong total", |frames| {
            for frame in frames.iter_mut() {
                frame[23 + 10..23 + 12].copy_from_slice(&3u16.to_le_bytes());
            }
        }),
        // Packet "0" (65 536) left out: 65 535 is followed by 1.
        ("skips 0", |frames| {
            frames.remove(65_535);
        }),
        // The last packet never comes.
        ("short", |frames| {
            frames.pop();
        }),
    ];
    for (what, mangle) in cases {
        let (mut raw, key) = Raw::keyed();
        let cipher = encrypt(&key, &plain);
        let mut frames: Vec<Vec<u8>> = cipher
            .chunks(16)
            .enumerate()
            .map(|(index, slice)| {
                file_frame(
                    b"w.bin",
                    cipher.len() as u32,
                    plain.len() as u32,
                    ((index + 1) % 65_536) as u16,
                    2,
                    slice,
                )
            })
            .collect();
        mangle(&mut frames);
        let codes = raw.feed(&frames.concat());
        assert!(!codes.contains(&1603), "{what}: {codes:?}");
        assert!(raw.store.committed.is_empty(), "{what}");
    }
}

/// `16 zero bytes ‖ plain`, encrypted: what a client that misplaces its zero IV sends.
fn zero_prefixed(key: &AesKey, plain: &[u8], block: u8) -> Vec<u8> {
    let mut prefixed = vec![block; 16];
    prefixed.extend_from_slice(plain);
    encrypt(key, &prefixed)
}

#[test]
fn a_zero_block_before_the_content_is_stripped_when_content_size_says_so() {
    let (mut raw, key) = Raw::keyed();
    // One packet: content_size is the ciphertext of orig_file_size + 16 bytes.
    let plain = pattern(1000, 8);
    let content = zero_prefixed(&key, &plain, 0);
    assert_eq!(content.len(), 1024);
    assert_eq!(
        raw.feed(&file_frame(b"z.txt", 1024, 1000, 1, 1, &content)),
        [1603]
    );
    let sent = &raw.run.sent;
    let cksum = u32::from_le_bytes(sent[sent.len() - 4..].try_into().unwrap());
    assert_eq!(cksum, cyberbackup_core::crypto::Cksum::of(&plain));
    assert_eq!(raw.feed(&request(1029, 3, &name_field(b"z.txt"))), [1604]);
    assert!(raw.store.committed.values().any(|v| *v == plain));
    assert!(raw.run.events.iter().any(|e| matches!(
        e,
        ServerEvent::NonConformingClient {
            quirk: ClientQuirk::ZeroBlockPrefix,
            ..
        }
    )));

    // Several packets of a total-size sender (H3's form): 3 000 bytes, 3 024 of ciphertext.
    let plain = pattern(3000, 9);
    let cipher = zero_prefixed(&key, &plain, 0);
    let frames: Vec<u8> = cipher
        .chunks(1024)
        .enumerate()
        .flat_map(|(i, slice)| file_frame(b"m.bin", 3024, 3000, i as u16 + 1, 3, slice))
        .collect();
    assert_eq!(raw.feed(&frames), [1603]);
    assert_eq!(raw.feed(&request(1029, 3, &name_field(b"m.bin"))), [1604]);
    assert!(raw.store.committed.values().any(|v| *v == plain));
}

#[test]
fn every_other_length_mismatch_is_still_refused() {
    let plain = pattern(1000, 10);
    /// The content and its content_size.
    type Build = fn(&AesKey, &[u8]) -> (Vec<u8>, u32);
    let cases: [(&str, Build); 3] = [
        // 16 extra bytes that are not zero.
        ("non-zero block", |key, plain| {
            (zero_prefixed(key, plain, 1), 1024)
        }),
        // 32 extra zero bytes.
        ("two blocks", |key, plain| {
            let mut prefixed = vec![0; 32];
            prefixed.extend_from_slice(plain);
            (encrypt(key, &prefixed), 1040)
        }),
        // 16 extra bytes at the end instead of the start.
        ("block at the end", |key, plain| {
            let mut longer = plain.to_vec();
            longer.extend_from_slice(&[0; 16]);
            (encrypt(key, &longer), 1024)
        }),
    ];
    for (what, build) in cases {
        let (mut raw, key) = Raw::keyed();
        let (content, content_size) = build(&key, &plain);
        let codes = raw.feed(&file_frame(b"z.txt", content_size, 1000, 1, 1, &content));
        assert_eq!(codes, [1607], "{what}");
        assert!(raw.store.committed.is_empty(), "{what}");
    }
}

#[test]
fn reconnect_with_a_wrong_name_or_unknown_id_gets_1606() {
    let mut raw = Raw::new();
    let pk = bytes::Bytes::from(key().public_key().to_spki_der().unwrap());
    raw.store.add_client(ClientId([1; 16]), b"eve", Some(pk));
    assert_eq!(raw.feed(&request(1027, 3, &name_field(b"mallory"))), [1606]);
    let mut other = request(1027, 3, &name_field(b"eve"));
    other[..16].copy_from_slice(&[2; 16]);
    assert_eq!(raw.feed(&other), [1606]);
    assert_eq!(raw.feed(&request(1027, 3, &name_field(b"eve"))), [1605]);
}

#[test]
fn a_bad_public_key_gets_1607() {
    let mut raw = Raw::new();
    assert_eq!(raw.feed(&request(1025, 3, &name_field(b"kim"))), [1600]);
    let id = raw.session.client_id().unwrap();
    let mut bytes = request(1026, 3, &[name_field(b"kim"), vec![0x30; 160]].concat());
    bytes[..16].copy_from_slice(&id.0);
    assert_eq!(raw.feed(&bytes), [1607]);
}

#[test]
fn duplicate_name_gets_1601() {
    let mut raw = Raw::new();
    assert_eq!(raw.feed(&request(1025, 3, &name_field(b"sam"))), [1600]);
    assert_eq!(raw.feed(&request(1025, 3, &name_field(b"sam"))), [1601]);
}

#[test]
fn a_client_that_stops_mid_file_loses_the_partial_on_timeout_and_on_eof() {
    let (mut raw, key) = Raw::keyed();
    let cipher = encrypt(&key, &pattern(5000, 1));
    let frame = file_frame(b"slow", 5008, 5000, 1, 1, &cipher);
    assert_eq!(raw.feed(&frame[..2000]), Vec::<u16>::new());
    assert_eq!(raw.store.partial.len(), 1);
    let (deadline, _) = raw.session.poll_timeout().unwrap();
    raw.session
        .handle_timeout(deadline - Duration::from_millis(1));
    assert!(!raw.session.is_closed());
    raw.session.handle_timeout(deadline);
    let mut buf = BytesMut::new();
    drive_server(
        &mut raw.session,
        &mut raw.store,
        raw.now,
        &mut buf,
        &mut raw.run,
    );
    assert_eq!(raw.run.closed, Some(CloseReason::IdleTimeout));
    assert!(raw.store.partial.is_empty());

    let (mut raw, key) = Raw::keyed();
    let cipher = encrypt(&key, &pattern(5000, 1));
    raw.feed(&file_frame(b"cut", 5008, 5000, 1, 1, &cipher)[..3000]);
    raw.session.handle_eof(raw.now);
    let mut buf = BytesMut::new();
    drive_server(
        &mut raw.session,
        &mut raw.store,
        raw.now,
        &mut buf,
        &mut raw.run,
    );
    assert!(raw.store.partial.is_empty() && raw.store.committed.is_empty());
}

#[test]
fn verdict_without_a_file_is_an_error_but_1030_is_silent() {
    let (mut raw, _) = Raw::keyed();
    assert_eq!(
        raw.feed(&request(1030, 3, &name_field(b"x"))),
        Vec::<u16>::new()
    );
    assert_eq!(raw.feed(&request(1029, 3, &name_field(b"x"))), [1607]);
}

#[test]
fn a_surplus_packet_after_a_failed_file_gets_no_second_reply() {
    let (mut raw, key) = Raw::keyed();
    let plain = pattern(8000, 4);
    let second = encrypt(&key, &plain[4000..]);
    let frames = [
        file_frame(b"s.bin", 4016, 4000, 1, 2, &encrypt(&key, &plain[..4000])),
        // orig_file_size changes in packet 2: the file fails.
        file_frame(b"s.bin", 4016, 3999, 2, 2, &second),
        file_frame(b"s.bin", 16, 0, 3, 2, &encrypt(&key, &[])),
    ]
    .concat();
    assert_eq!(raw.feed(&frames), [1607]);
    // The connection is in step: the resend is accepted.
    let frames = [
        file_frame(b"s.bin", 4016, 4000, 1, 2, &encrypt(&key, &plain[..4000])),
        file_frame(b"s.bin", 4016, 4000, 2, 2, &encrypt(&key, &plain[4000..])),
    ]
    .concat();
    assert_eq!(raw.feed(&frames), [1603]);
}

#[test]
fn the_rest_of_a_failed_file_is_dropped_silently_however_many_packets_follow() {
    let (mut raw, key) = Raw::keyed();
    let plain = pattern(1000, 5);
    let cipher = encrypt(&key, &plain);
    // total_packets 3 (as a 16-bit counter wraps), then packets 4 … 40 of the same file.
    // orig_file_size says 999: the file fails in packet 3, when the 1000th byte decrypts.
    let mut frames = vec![
        file_frame(b"w.bin", 1008, 999, 1, 3, &cipher[..336]),
        file_frame(b"w.bin", 1008, 999, 2, 3, &cipher[336..672]),
        file_frame(b"w.bin", 1008, 999, 3, 3, &cipher[672..]),
    ];
    frames.extend((4..=40).map(|n| file_frame(b"w.bin", 1008, 999, n, 3, &cipher[..16])));

    let codes = raw.feed(&frames.concat());
    let after = raw.feed(&file_frame(b"ok.bin", 16, 2, 1, 1, &encrypt(&key, b"ok")));
    let dropped: Vec<u64> = raw
        .run
        .events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::PacketsDropped { packets } => Some(*packets),
            _ => None,
        })
        .collect();

    // One 1607, nothing for the 37 packets after it.
    assert_eq!(codes, [1607]);
    assert_eq!(after, [1603]);
    assert_eq!(dropped, [37], "counted once, when the next file starts");
}

#[test]
fn a_registration_name_without_nul_is_refused() {
    let mut raw = Raw::new();
    assert_eq!(raw.feed(&request(1025, 3, &[b'n'; 255])), [1607]);
    assert_eq!(
        raw.feed(&request(1025, 3, &name_field(&[b'n'; 254]))),
        [1600]
    );
}

#[test]
fn a_file_growing_past_the_server_limit_is_refused_while_streaming() {
    let now = Instant::now();
    let config = ServerConfig {
        max_file_len: 10_000,
        ..ServerConfig::default()
    };
    let mut raw = Raw::new();
    raw.session = ServerSession::new(Arc::new(config), CountingRng(5), now);
    let key = AesKey::from_bytes([9; 32]);
    raw.session.inject_session_key(
        ClientId([1; 16]),
        NameField::new(&b"eve"[..]).unwrap(),
        key.clone(),
    );
    // Per-packet packets each announce 4000 bytes, but there are 5 of them (20 000 bytes).
    let plain = pattern(20_000, 5);
    let frames: Vec<u8> = (0..5)
        .flat_map(|i| {
            let part = &plain[i * 4000..(i + 1) * 4000];
            file_frame(b"big", 4016, 4000, i as u16 + 1, 5, &encrypt(&key, part))
        })
        .collect();
    assert_eq!(raw.feed(&frames), [1607]);
    assert!(raw.store.partial.is_empty() && raw.store.committed.is_empty());
    let written: usize = raw.store.aborted.len();
    assert_eq!(written, 1);
}

#[test]
fn junk_after_1604_arriving_in_a_later_read_is_skipped() {
    // H3's server writes the 255-byte name field after 1604; here it arrives separately,
    // before the 1603 of the next file.
    let config = ClientConfig::default();
    let now = Instant::now();
    let mut client = ClientSession::register(
        Arc::new(config),
        NameField::new(&b"h3"[..]).unwrap(),
        Some(key()),
        CountingRng(1),
        now,
    );
    let mut files = BTreeMap::new();
    for (i, size) in [100usize, 200].into_iter().enumerate() {
        let id = client.backup(FileSpec {
            name: NameField::new(format!("f{i}").into_bytes()).unwrap(),
            len: size as u64,
        });
        files.insert(id, pattern(size, i as u32));
    }
    client.finish_when_idle();
    let mut srv = server(now);
    let mut store = MemStore::default();
    let mut server_run = ServerRun::default();
    let mut client_run = cyberbackup_core::testing::ClientRun::default();
    let (mut to_server, mut c_fed, mut s_fed) = (BytesMut::new(), 0, 0);
    let (mut junk_sent, mut junk_delivered) = (false, false);
    for _ in 0..100 {
        cyberbackup_core::testing::drive_client(&mut client, &files, now, &mut client_run);
        to_server.extend_from_slice(&client_run.sent[c_fed..]);
        c_fed = client_run.sent.len();
        drive_server(&mut srv, &mut store, now, &mut to_server, &mut server_run);
        let fresh = server_run.sent[s_fed..].to_vec();
        s_fed = server_run.sent.len();
        if fresh.is_empty() {
            break;
        }
        let codes = response_codes(&fresh);
        // The junk follows the 1604 but only arrives with the next chunk (the 1603 of the
        // next file), after the client already sent that file.
        let mut input = BytesMut::new();
        if junk_sent && !junk_delivered {
            input.extend_from_slice(&name_field(b"f0"));
            junk_delivered = true;
        }
        input.extend_from_slice(&fresh);
        client.handle_bytes(now, &mut input).unwrap();
        junk_sent |= codes.contains(&1604);
    }
    assert!(junk_delivered);
    assert_eq!(store.committed.len(), 2, "{:?}", client_run.events);
}
