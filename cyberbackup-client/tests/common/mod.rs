//! Test servers: `FakeServer` drives the real `ServerSession` from cyberbackup-core over a
//! tokio TcpListener (its own runtime thread, so sync and async tests can use it);
//! `RawServer` is written by hand from raw bytes and reproduces the quirks of real servers
//! (spec section 15).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use cyberbackup_core::crypto::{AesKey, CbcDecryptor, Cksum, PublicKey};
use cyberbackup_core::names::NameField;
use cyberbackup_core::session::Output;
use cyberbackup_core::v3::codec::{Inbound, RequestDecoder};
use cyberbackup_core::v3::{
    RegistrationOutcome, ServerConfig, ServerEffect, ServerSession, StoredClient,
};
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the fake server misbehaves.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Flip the cksum in every 1603.
    pub corrupt_cksum: bool,
    /// Drop the connection when a file's first 1028 header arrives, for these (0-based,
    /// counted over the server's life) file starts.
    pub kill_at_file_start: Vec<usize>,
    /// Drop every connection at the first 1028 header.
    pub kill_every_transfer: bool,
}

/// What the fake server saw and stored.
#[derive(Debug, Default)]
pub struct Shared {
    pub clients: BTreeMap<[u8; 16], StoredClient>,
    /// Verified files by name (the last version).
    pub files: BTreeMap<String, Vec<u8>>,
    /// Request codes per connection (1028 once per packet).
    pub connections: Vec<Vec<u16>>,
    /// (packet_number, total_packets) of every 1028 frame.
    pub packets: Vec<(u16, u16)>,
    file_starts: usize,
}

pub struct FakeServer {
    pub addr: SocketAddr,
    pub shared: Arc<Mutex<Shared>>,
}

impl FakeServer {
    pub fn start(behaviour: Behaviour) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let state = Arc::clone(&shared);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let behaviour = Arc::new(behaviour);
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let state = Arc::clone(&state);
                    let behaviour = Arc::clone(&behaviour);
                    tokio::spawn(serve(stream, state, behaviour));
                }
            });
        });
        let addr = rx.recv().unwrap();
        Self { addr, shared }
    }

    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        self.shared.lock().unwrap().files.get(name).cloned()
    }

    pub fn connections(&self) -> Vec<Vec<u16>> {
        self.shared.lock().unwrap().connections.clone()
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

async fn serve(mut stream: TcpStream, shared: Arc<Mutex<Shared>>, behaviour: Arc<Behaviour>) {
    let connection = {
        let mut shared = shared.lock().unwrap();
        shared.connections.push(Vec::new());
        shared.connections.len() - 1
    };
    let mut session = ServerSession::new(Arc::new(ServerConfig::default()), OsRng, now());
    let mut buf = BytesMut::new();
    let mut log = RequestDecoder::new();
    let mut log_buf = BytesMut::new();
    let mut temp: BTreeMap<u64, (String, Vec<u8>)> = BTreeMap::new();
    loop {
        let _ = session.handle_bytes(now(), &mut buf);
        let mut answered = false;
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(bytes) => {
                    let mut bytes = bytes.to_vec();
                    if behaviour.corrupt_cksum
                        && is_response(&bytes, 1603)
                        && bytes.len() >= 7 + 279
                    {
                        for b in &mut bytes[7 + 275..7 + 279] {
                            *b ^= 0x5a;
                        }
                    }
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Output::Effect(effect) => {
                    answered |= effect.needs_answer();
                    answer(&mut session, effect, &shared, &mut temp);
                }
                Output::Event(_) => {}
                Output::Close(_) => return,
            }
        }
        if answered {
            continue;
        }
        let Ok(n) = stream.read_buf(&mut buf).await else {
            return;
        };
        if n == 0 {
            session.handle_eof(now());
            while session.poll_output().is_some() {}
            return;
        }
        // Log the requests seen, from a copy of the bytes.
        log_buf.extend_from_slice(&buf[buf.len() - n..]);
        let mut kill = false;
        while let Ok(Some(item)) = log.decode(&mut log_buf) {
            let mut shared = shared.lock().unwrap();
            match item {
                Inbound::Request { request, .. } => {
                    shared.connections[connection].push(request.code().0);
                }
                Inbound::FileHeader { meta, .. } => {
                    shared.connections[connection].push(1028);
                    shared
                        .packets
                        .push((meta.packet_number, meta.total_packets));
                    if meta.packet_number == 1 {
                        let start = shared.file_starts;
                        shared.file_starts += 1;
                        kill |= behaviour.kill_every_transfer
                            || behaviour.kill_at_file_start.contains(&start);
                    }
                }
                Inbound::FileContent(_) | Inbound::FileEnd => {}
            }
        }
        if kill {
            return;
        }
    }
}

fn is_response(bytes: &[u8], code: u16) -> bool {
    bytes.len() >= 7 && bytes[0] == 3 && u16::from_le_bytes([bytes[1], bytes[2]]) == code
}

fn answer(
    session: &mut ServerSession<OsRng>,
    effect: ServerEffect,
    shared: &Mutex<Shared>,
    temp: &mut BTreeMap<u64, (String, Vec<u8>)>,
) {
    let mut shared = shared.lock().unwrap();
    let result = match effect {
        ServerEffect::RegisterClient { client_id, name } => {
            let taken = shared
                .clients
                .values()
                .any(|c| c.name.as_ref() == name.as_bytes());
            let outcome = if taken {
                RegistrationOutcome::NameTaken
            } else {
                shared.clients.insert(
                    client_id.0,
                    StoredClient {
                        client_id,
                        name: Bytes::copy_from_slice(name.as_bytes()),
                        public_key: None,
                    },
                );
                RegistrationOutcome::Registered
            };
            session.handle_registration(now(), outcome)
        }
        ServerEffect::LookupClient { client_id } => {
            let found = shared.clients.get(&client_id.0).cloned();
            session.handle_client_lookup(now(), found)
        }
        ServerEffect::StorePublicKey {
            client_id,
            public_key,
        } => {
            if let Some(client) = shared.clients.get_mut(&client_id.0) {
                client.public_key = Some(public_key);
            }
            session.handle_storage(now(), Ok(()))
        }
        ServerEffect::BeginFile {
            transfer,
            file_name,
            ..
        } => {
            temp.insert(transfer.0, (file_name.to_string_lossy(), Vec::new()));
            session.handle_storage(now(), Ok(()))
        }
        ServerEffect::AppendFile { transfer, data } => {
            if let Some((_, bytes)) = temp.get_mut(&transfer.0) {
                bytes.extend_from_slice(&data);
            }
            session.handle_storage(now(), Ok(()))
        }
        ServerEffect::FinishFile { .. } => session.handle_storage(now(), Ok(())),
        ServerEffect::CommitFile { transfer } => {
            if let Some((name, bytes)) = temp.remove(&transfer.0) {
                shared.files.insert(name, bytes);
            }
            session.handle_storage(now(), Ok(()))
        }
        ServerEffect::AbortFile { transfer } => {
            temp.remove(&transfer.0);
            Ok(())
        }
        other => panic!("unexpected effect {other:?}"),
    };
    drop(result);
}

/// Quirks of real servers (spec section 15) for the hand-written server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quirks {
    /// 1600 with payload_size 0, then the 16 id bytes (urihor).
    pub zero_len_1600: bool,
    /// 255 undeclared bytes after 1604 (H3).
    pub junk_after_1604: bool,
    /// A 1604 in answer to 1030 (Tom, elies); the first cksum is wrong to provoke 1030.
    pub ack_after_1030: bool,
    /// Close the socket right after 1604 (shlomi).
    pub close_after_1604: bool,
    /// Answer the first 1025 with 1607.
    pub error_first_register: bool,
    /// Answer every 1026 with 1607 (a server that does not accept our key).
    pub refuse_public_key: bool,
    /// Cut the last packet of a multi-packet file 16 bytes short (urihor's server truncates
    /// it): its padding check fails, answered 1607.
    pub truncate_last_packet: bool,
}

/// What the raw server saw.
#[derive(Debug, Default)]
pub struct RawLog {
    pub requests: Vec<u16>,
    /// total_packets of every 1028 frame.
    pub totals: Vec<u16>,
    pub files: BTreeMap<String, Vec<u8>>,
}

/// A hand-written server for one connection; join the handle for its log.
pub fn raw_server(quirks: Quirks) -> (String, std::thread::JoinHandle<RawLog>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut log = RawLog::default();
        let id = [0x42u8; 16];
        let mut key: Option<AesKey> = None;
        let mut cipher = Vec::new();
        let mut plain_sent: Option<(String, Vec<u8>)> = None;
        let mut registers = 0;
        let mut mismatched = false;
        loop {
            let mut header = [0u8; 23];
            if stream.read_exact(&mut header).is_err() {
                return log;
            }
            let code = u16::from_le_bytes([header[17], header[18]]);
            let len = u32::from_le_bytes([header[19], header[20], header[21], header[22]]) as usize;
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).unwrap();
            log.requests.push(code);
            match code {
                1025 => {
                    registers += 1;
                    if quirks.error_first_register && registers == 1 {
                        respond(&mut stream, 1607, &[], None);
                    } else if quirks.zero_len_1600 {
                        respond(&mut stream, 1600, &id, Some(0));
                    } else {
                        respond(&mut stream, 1600, &id, None);
                    }
                }
                1026 if quirks.refuse_public_key => respond(&mut stream, 1607, &[], None),
                1026 => {
                    let public = PublicKey::from_spki_field(&payload[255..]).unwrap();
                    let aes = AesKey::generate(&mut OsRng);
                    let wrapped = public.wrap_session_key(&mut OsRng, &aes).unwrap();
                    key = Some(aes);
                    let mut body = id.to_vec();
                    body.extend_from_slice(&wrapped);
                    respond(&mut stream, 1602, &body, None);
                }
                1027 => respond(&mut stream, 1606, &id, None),
                1028 => {
                    let packet = u16::from_le_bytes([payload[8], payload[9]]);
                    let total = u16::from_le_bytes([payload[10], payload[11]]);
                    log.totals.push(total);
                    cipher.extend_from_slice(&payload[267..]);
                    if quirks.truncate_last_packet && total > 1 && packet == total {
                        // What cutting the last packet short comes to: a padding error.
                        cipher.clear();
                        respond(&mut stream, 1607, &[], None);
                        continue;
                    }
                    if packet == total {
                        let mut decryptor = CbcDecryptor::new(key.as_ref().unwrap());
                        let mut plain = BytesMut::new();
                        decryptor.update(&cipher, &mut plain);
                        cipher.clear();
                        decryptor.finish(&mut plain).unwrap();
                        let name = NameField::decode(&payload[12..267]);
                        let mut cksum = Cksum::of(&plain);
                        if quirks.ack_after_1030 && !mismatched {
                            mismatched = true;
                            cksum ^= 1;
                        }
                        let mut body = id.to_vec();
                        body.extend_from_slice(&(plain.len() as u32).to_le_bytes());
                        body.extend_from_slice(&payload[12..267]);
                        body.extend_from_slice(&cksum.to_le_bytes());
                        respond(&mut stream, 1603, &body, None);
                        plain_sent = Some((name.to_string_lossy(), plain.to_vec()));
                    }
                }
                1029 | 1031 => {
                    if code == 1029
                        && let Some((name, bytes)) = plain_sent.take()
                    {
                        log.files.insert(name, bytes);
                    }
                    respond(&mut stream, 1604, &id, None);
                    if quirks.junk_after_1604 {
                        stream.write_all(&payload).unwrap();
                    }
                    if quirks.close_after_1604 {
                        return log;
                    }
                }
                1030 => {
                    if quirks.ack_after_1030 {
                        respond(&mut stream, 1604, &id, None);
                    }
                }
                other => panic!("unexpected request {other}"),
            }
        }
    });
    (addr, handle)
}

fn respond(stream: &mut std::net::TcpStream, code: u16, body: &[u8], declared: Option<u32>) {
    let mut frame = vec![3u8];
    frame.extend_from_slice(&code.to_le_bytes());
    let len = declared.unwrap_or(body.len() as u32);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(body);
    stream.write_all(&frame).unwrap();
}

/// Deterministic test content.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}
