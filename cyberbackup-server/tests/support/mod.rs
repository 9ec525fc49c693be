//! Shared helpers of the reliability suite: an in-process server on 127.0.0.1, a raw v3
//! client that builds every frame by hand, so each real client's byte layout can be
//! reproduced exactly, and what the `kill -9` tests (crash.rs, prune_crash.rs) share: a
//! seeded SplitMix64, a free port, waiting for a child server to listen, a busy wait.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use cyberbackup_core::crypto::{AesKey, CbcEncryptor, ClientKeyPair};
use cyberbackup_core::names::{ClientId, NameField};
use cyberbackup_core::v3::frame::{FileMeta, Request, RequestCode, RequestHeader};
use cyberbackup_server::faults::Faults;
use cyberbackup_server::{Server, ServerConfig};
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub const REGISTERED: u16 = 1600;
pub const NAME_TAKEN: u16 = 1601;
pub const KEY_ACCEPTED: u16 = 1602;
pub const FILE_RECEIVED: u16 = 1603;
pub const ACK: u16 = 1604;
pub const RECONNECTED: u16 = 1605;
pub const RECONNECT_REFUSED: u16 = 1606;
pub const SERVER_ERROR: u16 = 1607;

/// How long a test waits for one response before calling it "no reply".
pub const REPLY_WAIT: Duration = Duration::from_secs(10);

pub struct Running {
    pub addr: SocketAddr,
    pub data: PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub fn test_config(data: &Path) -> ServerConfig {
    ServerConfig {
        listen: Ipv4Addr::LOCALHOST.into(),
        port: 0,
        data_dir: data.to_path_buf(),
        idle_timeout_secs: 10,
        shutdown_grace_secs: 5,
        registrations_per_minute: 0,
        // Every test client comes from 127.0.0.1: the per-address cap would refuse floods
        // that tests of other limits need (tests/hostile_load.rs tests the cap itself).
        max_connections_per_address: 1024,
        ..ServerConfig::default()
    }
}

pub async fn start(data: &Path) -> Running {
    start_with(test_config(data), Faults::none()).await
}

pub async fn start_with(config: ServerConfig, faults: Faults) -> Running {
    let data = config.data_dir.clone();
    let server = Server::bind_with_faults(config, faults).await.unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { server.serve(token).await.unwrap() });
    Running {
        addr,
        data,
        shutdown,
        task,
    }
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }

    /// `files/<client-hex>/<name>` under the data directory.
    pub fn stored_path(&self, client: ClientId, mapped: &str) -> PathBuf {
        self.data.join("files").join(client.to_hex()).join(mapped)
    }
}

/// A response: code and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub payload: Vec<u8>,
}

/// One request frame, as bytes.
pub fn request(id: ClientId, req: &Request) -> Vec<u8> {
    let mut out = BytesMut::new();
    req.encode(id, &mut out);
    out.to_vec()
}

pub fn name(text: &[u8]) -> NameField {
    NameField::new(text.to_vec()).unwrap()
}

/// A raw header with any version, code and payload size.
pub fn header(id: ClientId, version: u8, code: u16, payload_len: u32) -> Vec<u8> {
    let mut out = BytesMut::new();
    RequestHeader {
        client_id: id,
        version,
        code: RequestCode(code),
        payload_len,
    }
    .encode(&mut out);
    out.to_vec()
}

/// A 255-byte name field with exactly these bytes, NUL-filled (may hold NULs or no NUL).
pub fn raw_name_field(bytes: &[u8]) -> Vec<u8> {
    let mut field = bytes.to_vec();
    field.resize(255, 0);
    field
}

/// A 1028 frame with raw metadata fields and content.
pub fn file_frame(
    id: ClientId,
    content_size: u32,
    orig_size: u32,
    packet: u16,
    total: u16,
    file_name: &[u8],
    content: &[u8],
) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut meta_name = raw_name_field(file_name);
    meta_name.truncate(255);
    out.extend_from_slice(&header(id, 3, 1028, 267 + content.len() as u32));
    out.extend_from_slice(&content_size.to_le_bytes());
    out.extend_from_slice(&orig_size.to_le_bytes());
    out.extend_from_slice(&packet.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&meta_name);
    out.extend_from_slice(content);
    out.to_vec()
}

/// The same through the core's encoder (checks that both agree).
pub fn file_frame_core(id: ClientId, meta: &FileMeta, content: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    meta.encode_frame_head(id, content.len() as u32, &mut out);
    out.extend_from_slice(content);
    out.to_vec()
}

/// AES-256-CBC, zero IV, PKCS#7 of `plain` as one message.
pub fn encrypt(key: &AesKey, plain: &[u8]) -> Vec<u8> {
    let mut enc = CbcEncryptor::new(key);
    let mut out = BytesMut::new();
    enc.update(plain, &mut out);
    enc.finish(&mut out);
    out.to_vec()
}

pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

pub fn cksum(data: &[u8]) -> u32 {
    cyberbackup_core::crypto::Cksum::of(data)
}

/// A raw v3 connection.
pub struct Raw {
    pub stream: TcpStream,
    pub id: ClientId,
    pub key: Option<AesKey>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            id: ClientId::ZERO,
            key: None,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends, ignoring a reset (the server may already have closed).
    pub async fn send_lossy(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// The next response; `None` on EOF, reset or after `wait` without a whole response.
    pub async fn reply_within(&mut self, wait: Duration) -> Option<Reply> {
        let read = async {
            let mut head = [0u8; 7];
            self.stream.read_exact(&mut head).await.ok()?;
            let code = u16::from_le_bytes([head[1], head[2]]);
            let len = u32::from_le_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; len.min(4096)];
            self.stream.read_exact(&mut payload).await.ok()?;
            Some(Reply { code, payload })
        };
        tokio::time::timeout(wait, read).await.ok().flatten()
    }

    pub async fn reply(&mut self) -> Option<Reply> {
        self.reply_within(REPLY_WAIT).await
    }

    pub async fn expect(&mut self, code: u16) -> Reply {
        let reply = self.reply().await;
        assert_eq!(reply.as_ref().map(|r| r.code), Some(code), "{reply:?}");
        reply.unwrap()
    }

    /// True when the server closed the connection (EOF or reset) within `wait`, without
    /// sending anything more.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(wait, self.stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// True when nothing arrives and the connection stays open for `wait`.
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(wait, self.stream.read(&mut byte))
            .await
            .is_err()
    }

    /// 1025 with this header id; on 1600 remembers the assigned id.
    pub async fn register(&mut self, header_id: ClientId, client: &[u8]) -> Reply {
        let frame = request(header_id, &Request::Register { name: name(client) });
        self.send(&frame).await;
        let reply = self.reply().await.unwrap();
        if reply.code == REGISTERED {
            self.id = ClientId(reply.payload[..16].try_into().unwrap());
        }
        reply
    }

    /// 1026 with the key pair's SPKI; on 1602 unwraps and remembers the AES key.
    pub async fn send_key(&mut self, client: &[u8], keys: &ClientKeyPair) -> Reply {
        let spki = keys.public_key().to_spki_der().unwrap();
        self.send_key_field(client, &spki, keys).await
    }

    pub async fn send_key_field(
        &mut self,
        client: &[u8],
        field: &[u8],
        keys: &ClientKeyPair,
    ) -> Reply {
        let frame = request(
            self.id,
            &Request::PublicKey {
                name: name(client),
                public_key: field.to_vec().into(),
            },
        );
        self.send(&frame).await;
        let reply = self.reply().await.unwrap();
        if reply.code == KEY_ACCEPTED {
            self.key = Some(
                keys.unwrap_session_key(&mut OsRng, &reply.payload[16..])
                    .unwrap(),
            );
        }
        reply
    }

    /// 1027; on 1605 unwraps and remembers the AES key.
    pub async fn reconnect(&mut self, id: ClientId, client: &[u8], keys: &ClientKeyPair) -> Reply {
        self.id = id;
        let frame = request(id, &Request::Reconnect { name: name(client) });
        self.send(&frame).await;
        let reply = self.reply().await.unwrap();
        if reply.code == RECONNECTED {
            self.key = Some(
                keys.unwrap_session_key(&mut OsRng, &reply.payload[16..])
                    .unwrap(),
            );
        }
        reply
    }

    /// Register + key exchange in one go.
    pub async fn keyed(addr: SocketAddr, client: &[u8], keys: &ClientKeyPair) -> Self {
        let mut raw = Self::connect(addr).await;
        assert_eq!(raw.register(ClientId::ZERO, client).await.code, REGISTERED);
        assert_eq!(raw.send_key(client, keys).await.code, KEY_ACCEPTED);
        raw
    }

    pub fn aes(&self) -> &AesKey {
        self.key.as_ref().unwrap()
    }

    /// A verdict request (1029/1030/1031) for `file`.
    pub async fn verdict(&mut self, code: RequestCode, file: &[u8]) {
        let field = name(file);
        let req = match code {
            RequestCode::CRC_OK => Request::CrcOk { file_name: field },
            RequestCode::CRC_RETRY => Request::CrcRetry { file_name: field },
            _ => Request::CrcAbort { file_name: field },
        };
        let frame = request(self.id, &req);
        self.send(&frame).await;
    }

    /// Sends `file` in the client's default form (one sliced stream, total sizes,
    /// `packet_len` ciphertext bytes per packet), then reads 1603.
    pub async fn upload(&mut self, file: &[u8], plain: &[u8], packet_len: usize) -> Reply {
        let cipher = encrypt(self.aes(), plain);
        let chunks: Vec<&[u8]> = cipher.chunks(packet_len).collect();
        let total = chunks.len() as u16;
        for (i, chunk) in chunks.iter().enumerate() {
            let frame = file_frame(
                self.id,
                cipher.len() as u32,
                plain.len() as u32,
                i as u16 + 1,
                total,
                file,
                chunk,
            );
            self.send(&frame).await;
        }
        self.reply().await.unwrap()
    }

    /// Upload + 1029 + 1604; asserts the cksum.
    pub async fn upload_verified(&mut self, file: &[u8], plain: &[u8]) {
        let reply = self.upload(file, plain, 64 * 1024).await;
        assert_eq!(reply.code, FILE_RECEIVED, "{reply:?}");
        assert_eq!(cksum_of(&reply), cksum(plain));
        self.verdict(RequestCode::CRC_OK, file).await;
        self.expect(ACK).await;
    }
}

/// The cksum field of a 1603 payload.
pub fn cksum_of(reply: &Reply) -> u32 {
    u32::from_le_bytes(reply.payload[275..279].try_into().unwrap())
}

/// The content_size field of a 1603 payload.
pub fn content_size_of(reply: &Reply) -> u32 {
    u32::from_le_bytes(reply.payload[16..20].try_into().unwrap())
}

/// Every file under `files/`, as paths relative to the data dir, sorted.
pub fn all_files(data: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let root = data.join("files");
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(
                    path.strip_prefix(&root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    found.sort();
    found
}

/// Temp files anywhere under `files/`.
pub fn partials(data: &Path) -> Vec<String> {
    all_files(data)
        .into_iter()
        .filter(|p| {
            p.rsplit('/')
                .next()
                .unwrap_or("")
                .starts_with(".cb-partial")
        })
        .collect()
}

/// A shared RSA-1024 key pair (generation is not what these tests measure).
pub fn keys() -> ClientKeyPair {
    static KEYS: std::sync::OnceLock<ClientKeyPair> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| ClientKeyPair::generate(&mut OsRng).unwrap())
        .clone()
}

/// Forwards one connection to `target`, closing both sides once `budget` client bytes
/// were forwarded: an upload cut at a chosen byte.
pub async fn cutting_proxy(target: SocketAddr, budget: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut server = TcpStream::connect(target).await.unwrap();
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let upstream = async {
            let mut left = budget;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n.min(left),
                };
                if sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                left -= n;
            }
        };
        let downstream = async {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
        };
        tokio::select! {
            () = upstream => {}
            () = downstream => {}
        }
    });
    addr
}

/// SplitMix64: tiny, seeded, reproducible.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A seed from the environment variable `var` (decimal or `0x` hex), else `default`.
pub fn seed_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| {
            let s = s.trim();
            s.strip_prefix("0x")
                .map_or_else(|| s.parse().ok(), |hex| u64::from_str_radix(hex, 16).ok())
        })
        .unwrap_or(default)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until a server started as `child` accepts connections on `addr` (panics if it
/// exits or does not listen within 20 s).
pub async fn wait_ready(addr: SocketAddr, child: &mut Child) {
    for _ in 0..400 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "server exited during start-up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not start listening on {addr}");
}

/// Busy-waits (timer resolution is too coarse for sub-millisecond aims).
pub fn spin(wait: Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < wait {
        std::hint::spin_loop();
    }
}

/// Forwards every connection to `target`, the client's bytes at about `bytes_per_sec`: a
/// slow uplink, so an upload is still running when a test wants to interrupt it. Both
/// sides close when either does. The counter is the client bytes forwarded so far.
pub async fn throttled_proxy(
    target: SocketAddr,
    bytes_per_sec: u64,
) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let forwarded = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&forwarded);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let upstream = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        counter.fetch_add(n as u64, Ordering::SeqCst);
                        let pause = Duration::from_secs_f64(n as f64 / bytes_per_sec as f64);
                        tokio::time::sleep(pause).await;
                    }
                };
                let downstream = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::select! {
                    () = upstream => {}
                    () = downstream => {}
                }
            });
        }
    });
    (addr, forwarded)
}
