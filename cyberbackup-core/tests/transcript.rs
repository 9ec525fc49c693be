//! The recorded real sessions replayed through our state machines:
//! - through `ServerSession`: the client's recorded bytes in, our replies out, with the
//!   recorded AES key injected for the file part; the stored file must equal the recorded
//!   plaintext and our 1603 must carry the recorded cksum;
//! - through `ClientSession`: the recorded server bytes in; our client must send the
//!   recorded client bytes (byte for byte where the real client spoke the form we send)
//!   and end with the file verified.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use common::{aes_key, json, read};
use cyberbackup_core::crypto::ClientKeyPair;
use cyberbackup_core::fuzzing::CountingRng;
use cyberbackup_core::identity::Identity;
use cyberbackup_core::names::{ClientId, NameField};
use cyberbackup_core::testing::{ClientRun, MemStore, ServerRun, drive_client, drive_server};
use cyberbackup_core::v3::codec::ResponseDecoder;
use cyberbackup_core::v3::frame::Response;
use cyberbackup_core::v3::{
    ClientConfig, ClientEvent, ClientSession, FileId, FileSpec, PacketScheme, ServerConfig,
    ServerEvent, ServerSession,
};

struct Recorded {
    folder: &'static str,
    client_id: ClientId,
    name: &'static [u8],
    file_name: &'static [u8],
    /// Byte offset in c2s.bin where the first 1028 frame starts.
    file_offset: usize,
    reconnect: bool,
}

const RECORDED: [Recorded; 5] = [
    Recorded {
        folder: "session-h3client-shlomiserver",
        client_id: ClientId(hex_literal(b"b970ce91684844c3bb373106f34220e9")),
        name: b"dave",
        file_name: b"small.txt",
        file_offset: 716,
        reconnect: false,
    },
    Recorded {
        folder: "session-shlomiclient-h3server",
        client_id: ClientId(hex_literal(b"a22afe34127c2411eb156fa3df046f19")),
        name: b"carol",
        file_name: b"small.txt",
        file_offset: 716,
        reconnect: false,
    },
    Recorded {
        folder: "session-urihorclient-urihorserver",
        client_id: ClientId(hex_literal(b"73aaa9600ff14bdfb6ddc68bb93caeee")),
        name: b"ivan",
        file_name: b"small.txt",
        file_offset: 716,
        reconnect: false,
    },
    Recorded {
        folder: "multipacket-perpacket-shlomi",
        client_id: ClientId(hex_literal(b"32b4045a72264f4fa0c0aa25e05e664a")),
        name: b"alice",
        file_name: b"mid9000.bin",
        file_offset: 278,
        reconnect: true,
    },
    Recorded {
        folder: "multipacket-sliced-h3",
        client_id: ClientId(hex_literal(b"03765b45d5a2260830d08d5896aff6a7")),
        name: b"bob",
        file_name: b"mid9000.bin",
        file_offset: 278,
        reconnect: true,
    },
];

const fn hex_literal(text: &[u8; 32]) -> [u8; 16] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            _ => c - b'a' + 10,
        }
    }
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = (nibble(text[2 * i]) << 4) | nibble(text[2 * i + 1]);
        i += 1;
    }
    out
}

fn recorded_cksum(folder: &str) -> u32 {
    u32::try_from(
        json(&format!("{folder}/session.json"))["cksum"]
            .as_u64()
            .unwrap(),
    )
    .unwrap()
}

fn client_key(folder: &str) -> ClientKeyPair {
    ClientKeyPair::from_pkcs8_der(&read(&format!("{folder}/client_private_key.der"))).unwrap()
}

fn responses(bytes: &[u8]) -> Vec<Response> {
    let mut buf = BytesMut::from(bytes);
    let mut decoder = ResponseDecoder::new();
    let mut out = Vec::new();
    while let Ok(Some((_, response))) = decoder.decode(&mut buf) {
        out.push(response);
    }
    out
}

#[test]
fn server_session_replays_every_recorded_client() {
    let now = Instant::now();
    for rec in &RECORDED {
        let c2s = read(&format!("{}/c2s.bin", rec.folder));
        let key = client_key(rec.folder);
        let mut store = MemStore::default();
        let public_key = rec
            .reconnect
            .then(|| Bytes::from(key.public_key().to_spki_der().unwrap()));
        store.add_client(rec.client_id, rec.name, public_key);
        let mut session =
            ServerSession::new(Arc::new(ServerConfig::default()), CountingRng(7), now);
        let mut run = ServerRun::default();

        // Registration or reconnect, exactly as recorded.
        let mut input = BytesMut::from(&c2s[..rec.file_offset]);
        if !rec.reconnect {
            // 1025 registers a new name (ours) under a fresh id; the recorded client id was
            // pre-registered in the store, so the recorded 1026 (which carries it) is accepted.
            store.clients.clear();
            let mut register = input.split_to(278);
            drive_server(&mut session, &mut store, now, &mut register, &mut run);
            let first = responses(&run.sent);
            assert!(
                matches!(first.as_slice(), [Response::Registered { .. }]),
                "{}: {first:?}",
                rec.folder
            );
            store.clients.clear();
            store.add_client(rec.client_id, rec.name, None);
        }
        drive_server(&mut session, &mut store, now, &mut input, &mut run);
        let replies = responses(&run.sent);
        let encrypted_key = match replies.last() {
            Some(Response::PublicKeyAccepted {
                client_id,
                encrypted_key,
            })
            | Some(Response::ReconnectAccepted {
                client_id,
                encrypted_key,
            }) => {
                assert_eq!(*client_id, rec.client_id, "{}", rec.folder);
                encrypted_key.clone()
            }
            other => panic!("{}: expected 1602/1605, got {other:?}", rec.folder),
        };
        // Our server's session key is unwrapped by the real client's private key.
        key.unwrap_session_key(&mut CountingRng(1), &encrypted_key)
            .unwrap();
        if !rec.reconnect {
            let stored = store.clients.get(&rec.client_id).unwrap();
            assert_eq!(
                stored.public_key.as_deref(),
                Some(&read(&format!("{}/client_public_key.der", rec.folder))[..])
            );
        }

        // The recorded file was encrypted under the recorded key: inject it and replay.
        session.inject_session_key(
            rec.client_id,
            NameField::new(rec.name).unwrap(),
            aes_key(rec.folder),
        );
        let before = run.sent.len();
        let mut rest = BytesMut::from(&c2s[rec.file_offset..]);
        drive_server(&mut session, &mut store, now, &mut rest, &mut run);
        let replies = responses(&run.sent[before..]);
        let cksum = recorded_cksum(rec.folder);
        match replies.as_slice() {
            [
                Response::FileReceived {
                    cksum: got,
                    file_name,
                    ..
                },
                Response::Acknowledged { client_id },
            ] => {
                assert_eq!(*got, cksum, "{}", rec.folder);
                assert_eq!(file_name.as_bytes(), rec.file_name);
                assert_eq!(*client_id, rec.client_id);
            }
            other => panic!("{}: expected 1603 then 1604, got {other:?}", rec.folder),
        }
        let stored = store
            .committed
            .get(&(rec.client_id, rec.file_name.to_vec()))
            .unwrap_or_else(|| panic!("{}: file not committed", rec.folder));
        assert_eq!(
            stored,
            &read(&format!("{}/plaintext.bin", rec.folder)),
            "{}",
            rec.folder
        );
        assert!(
            run.events
                .iter()
                .any(|e| matches!(e, ServerEvent::FileVerified { .. }))
        );
        assert!(run.closed.is_none(), "{}: {:?}", rec.folder, run.closed);
    }
}

/// Feeds the recorded server bytes to a client one response at a time (as they would
/// arrive), running the client between them.
fn replay_client(
    rec: &Recorded,
    mut session: ClientSession<CountingRng>,
    file: FileId,
    now: Instant,
) -> ClientRun {
    let s2c = read(&format!("{}/s2c.bin", rec.folder));
    let plaintext = read(&format!("{}/plaintext.bin", rec.folder));
    let files = BTreeMap::from([(file, plaintext)]);
    let mut run = ClientRun::default();
    let mut input = BytesMut::new();
    let mut fed = 0;
    drive_client(&mut session, &files, now, &mut run);
    for message in response_offsets(rec.folder)
        .into_iter()
        .skip(1)
        .chain([s2c.len()])
    {
        input.extend_from_slice(&s2c[fed..message]);
        fed = message;
        session.handle_bytes(now, &mut input).unwrap();
        drive_client(&mut session, &files, now, &mut run);
    }
    assert!(session.is_done(), "{}: session not done", rec.folder);
    run
}

fn response_offsets(folder: &str) -> Vec<usize> {
    let meta = json(&format!("{folder}/session.json"));
    let messages = meta
        .get("messages")
        .or_else(|| meta.get("responses"))
        .unwrap()
        .as_array()
        .unwrap();
    let mut offsets: Vec<usize> = messages
        .iter()
        .filter(|m| m["dir"] == "s2c")
        .map(|m| m["offset"].as_u64().unwrap() as usize)
        .collect();
    offsets.sort_unstable();
    offsets
}

fn client_config(scheme: PacketScheme, packet: u32) -> Arc<ClientConfig> {
    Arc::new(ClientConfig {
        scheme,
        packet_content_len: packet,
        ..ClientConfig::default()
    })
}

fn start(
    rec: &Recorded,
    config: Arc<ClientConfig>,
    now: Instant,
) -> (ClientSession<CountingRng>, FileId) {
    let name = NameField::new(rec.name).unwrap();
    let mut session = if rec.reconnect {
        let text = String::from_utf8(read(&format!("{}/me.info", rec.folder))).unwrap();
        let identity = Identity::parse_me_info(&text).unwrap();
        assert_eq!(identity.client_id(), rec.client_id);
        ClientSession::reconnect(config, identity, CountingRng(3), now)
    } else {
        ClientSession::register(
            config,
            name,
            Some(client_key(rec.folder)),
            CountingRng(3),
            now,
        )
    };
    let len = read(&format!("{}/plaintext.bin", rec.folder)).len() as u64;
    let file = session.backup(FileSpec {
        name: NameField::new(rec.file_name).unwrap(),
        len,
    });
    session.finish_when_idle();
    (session, file)
}

fn assert_verified(rec: &Recorded, run: &ClientRun, file: FileId) {
    let cksum = recorded_cksum(rec.folder);
    assert!(
        run.events.contains(&ClientEvent::FileVerified {
            file,
            cksum,
            attempts: 1
        }),
        "{}: {:?}",
        rec.folder,
        run.events
    );
}

#[test]
fn client_session_reproduces_the_sliced_h3_client_byte_for_byte() {
    let rec = &RECORDED[4];
    let now = Instant::now();
    let (session, file) = start(rec, client_config(PacketScheme::Sliced, 1024), now);
    let run = replay_client(rec, session, file, now);
    assert_eq!(run.sent, read(&format!("{}/c2s.bin", rec.folder)));
    assert_verified(rec, &run, file);
}

#[test]
fn client_session_reproduces_the_per_packet_shlomi_client_byte_for_byte() {
    let rec = &RECORDED[3];
    let now = Instant::now();
    let (session, file) = start(rec, client_config(PacketScheme::PerPacket, 4016), now);
    let run = replay_client(rec, session, file, now);
    assert_eq!(run.sent, read(&format!("{}/c2s.bin", rec.folder)));
    assert_verified(rec, &run, file);
}

#[test]
fn client_session_reproduces_the_shlomi_registration_byte_for_byte() {
    // The H3 server behind this capture writes 255 undeclared bytes after 1604.
    let rec = &RECORDED[1];
    let now = Instant::now();
    let (session, file) = start(rec, Arc::new(ClientConfig::default()), now);
    let run = replay_client(rec, session, file, now);
    assert_eq!(run.sent, read(&format!("{}/c2s.bin", rec.folder)));
    assert_eq!(run.saved.len(), 1);
    assert_eq!(run.saved[0].client_id(), rec.client_id);
    assert_verified(rec, &run, file);
}

#[test]
fn client_session_matches_the_h3_registration_except_its_ascii_zero_id() {
    let rec = &RECORDED[0];
    let now = Instant::now();
    let (session, file) = start(rec, Arc::new(ClientConfig::default()), now);
    let run = replay_client(rec, session, file, now);
    let mut expected = read(&format!("{}/c2s.bin", rec.folder));
    // H3's client fills the 1025 client id with ASCII '0'; we send zero bytes (Part I).
    assert_eq!(&expected[..16], &[0x30; 16]);
    expected[..16].fill(0);
    assert_eq!(run.sent, expected);
    assert_verified(rec, &run, file);
}

#[test]
fn client_session_accepts_the_urihor_server_and_its_undeclared_1600_payload() {
    let rec = &RECORDED[2];
    let now = Instant::now();
    let (session, file) = start(rec, Arc::new(ClientConfig::default()), now);
    let run = replay_client(rec, session, file, now);
    assert_eq!(run.saved[0].client_id(), rec.client_id);
    // The 1026 we send carries the id from the undeclared 1600 bytes and the real key.
    let c2s = read(&format!("{}/c2s.bin", rec.folder));
    assert_eq!(&run.sent[..716], &c2s[..716]);
    assert_verified(rec, &run, file);
}
