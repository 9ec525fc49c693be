//! Shared helpers of the reliability suite: an in-process server on 127.0.0.1, a raw v3
//! client that builds every frame by hand, so each real client's byte layout can be
//! reproduced exactly, and what the `kill -9` tests (crash.rs, prune_crash.rs) share: a
//! seeded SplitMix64, a free port, waiting for a child server to listen, a busy wait. For
//! the repository tests: an honest snapshot client ([`RepoClient`], the client library), a
//! v4 client written from the spec on raw Noise ([`RawV4`]) that sends any message, and
//! readers of the repository's files on disk.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;
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

// ---------------------------------------------------------------------------------------
// v4 repository clients (repository_hostile.rs, repository_corruption.rs, prune_crash.rs)
// ---------------------------------------------------------------------------------------

/// An honest snapshot client: the client library (backup, forget, restore, check) with one
/// identity and device key, a connection per operation.
#[derive(Clone)]
pub struct RepoClient {
    pub options: cyberbackup_client::v4::V4Options,
    pub keys: cyberbackup_client::snapshot::KeyOptions,
    /// The host name its snapshots record.
    pub host: Vec<u8>,
}

impl RepoClient {
    /// A client named `name` whose identity lives in `dir/<name>/`.
    pub fn new(dir: &Path, addr: SocketAddr, name: &str, host: &[u8]) -> Self {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let identity = home.join(format!("{name}-v4.json"));
        let mut options =
            cyberbackup_client::v4::V4Options::new(addr.to_string(), identity.clone())
                .with_name(name);
        options.response_timeout = Duration::from_secs(30);
        Self {
            options,
            keys: cyberbackup_client::snapshot::KeyOptions::new(&identity),
            host: host.to_vec(),
        }
    }

    /// The same client reaching the server through `addr` (a proxy).
    pub fn through(&self, addr: SocketAddr) -> Self {
        let mut other = self.clone();
        other.options.server = addr.to_string();
        other
    }

    /// A v4 connection of this client (registers it on first use).
    pub async fn connect(
        &self,
    ) -> Result<cyberbackup_client::v4::V4Client, cyberbackup_client::v4::V4ClientError> {
        cyberbackup_client::v4::V4Client::connect(&self.options).await
    }

    /// Connects and opens (or, on first use, creates) the repository.
    pub async fn try_open(
        &self,
    ) -> Result<
        cyberbackup_client::snapshot::Repository<cyberbackup_client::v4::V4Client>,
        cyberbackup_client::v4::V4ClientError,
    > {
        let client = self.connect().await?;
        cyberbackup_client::snapshot::Repository::open(client, &self.keys).await
    }

    /// [`Self::try_open`], panicking on failure.
    pub async fn open(
        &self,
    ) -> cyberbackup_client::snapshot::Repository<cyberbackup_client::v4::V4Client> {
        self.try_open().await.unwrap()
    }

    /// Backs up `path` as a snapshot tagged `tag`; its ID.
    pub async fn backup(
        &self,
        path: PathBuf,
        tag: &str,
    ) -> Result<String, cyberbackup_client::v4::V4ClientError> {
        let mut repo = self.try_open().await?;
        let options = cyberbackup_client::snapshot::BackupOptions {
            paths: vec![path],
            tags: vec![tag.to_owned()],
            host: Some(self.host.clone()),
            ..cyberbackup_client::snapshot::BackupOptions::default()
        };
        let summary = repo
            .backup(&options, &mut cyberbackup_client::snapshot::NoObserver)
            .await?;
        let _ = repo.into_remote().close().await;
        Ok(summary.snapshot_id)
    }

    /// [`Self::backup`] on a task of its own.
    pub fn spawn_backup(
        &self,
        path: PathBuf,
        tag: String,
    ) -> tokio::task::JoinHandle<Result<String, cyberbackup_client::v4::V4ClientError>> {
        let this = self.clone();
        tokio::spawn(async move { this.backup(path, &tag).await })
    }

    /// Forgets snapshot `id` (the device needs the `manage` role, e.g. `default_device_role`).
    pub async fn forget(&self, id: &str) -> Result<(), cyberbackup_client::v4::V4ClientError> {
        let mut repo = self.try_open().await?;
        repo.forget(id).await?;
        let _ = repo.into_remote().close().await;
        Ok(())
    }

    /// Restores snapshot `id` whole into a new temp directory and returns the files found
    /// under `source` (the backed-up directory, absolute) there.
    pub async fn restore_tree(
        &self,
        id: &str,
        source: &Path,
    ) -> Result<BTreeMap<String, Vec<u8>>, cyberbackup_client::v4::V4ClientError> {
        let mut repo = self.try_open().await?;
        let target = tempfile::tempdir().unwrap();
        repo.restore(
            id,
            b"/",
            target.path(),
            &cyberbackup_client::snapshot::RestoreFilter::default(),
        )
        .await?;
        repo.into_remote().close().await?;
        let relative = source.strip_prefix("/").unwrap_or(source);
        Ok(read_tree(&target.path().join(relative)))
    }

    /// `check --read-data`: every snapshot, every blob read and verified.
    pub async fn check_read_data(
        &self,
    ) -> Result<cyberbackup_client::snapshot::CheckReport, cyberbackup_client::v4::V4ClientError>
    {
        let mut repo = self.try_open().await?;
        let report = repo
            .check(cyberbackup_client::snapshot::ReadData::All)
            .await?;
        repo.into_remote().close().await?;
        Ok(report)
    }
}

/// Every regular file under `root`, relative, sorted.
pub fn files_below(root: &Path) -> Vec<String> {
    let mut files: Vec<String> = walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(root).unwrap().display().to_string())
        .collect();
    files.sort();
    files
}

/// Every file under `root`: relative path → content.
pub fn read_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    files_below(root)
        .into_iter()
        .map(|f| {
            let content = std::fs::read(root.join(&f)).unwrap();
            (f, content)
        })
        .collect()
}

/// What differs between two trees, for a failure message.
pub fn tree_diff(
    expected: &BTreeMap<String, Vec<u8>>,
    actual: &BTreeMap<String, Vec<u8>>,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (name, content) in expected {
        match actual.get(name) {
            None => {
                let _ = write!(out, "missing {name}; ");
            }
            Some(other) if other != content => {
                let _ = write!(
                    out,
                    "{name} differs ({} vs {} bytes); ",
                    content.len(),
                    other.len()
                );
            }
            Some(_) => {}
        }
    }
    for name in actual.keys().filter(|n| !expected.contains_key(*n)) {
        let _ = write!(out, "unexpected {name}; ");
    }
    out
}

/// The packs of `client` in the local repository backend under `data`: ID and bytes.
pub fn stored_packs(
    data: &Path,
    client: ClientId,
) -> Vec<(cyberbackup_core::repo::PackId, Vec<u8>)> {
    let root = data.join("repository").join(client.to_hex()).join("packs");
    files_below(&root)
        .into_iter()
        .map(|f| {
            let path = root.join(&f);
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let id: [u8; 32] = hex::decode(name).unwrap().try_into().unwrap();
            (
                cyberbackup_core::repo::PackId(id),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect()
}

/// The staging files (objects being received) under `data`.
pub fn staging_files(data: &Path) -> Vec<String> {
    files_below(&data.join("repo-staging"))
}

/// A v4 client written from the spec (`snow` directly, raw plaintext messages) over a real
/// socket, so it can send what the real client never sends: any type byte, any body.
pub struct RawV4 {
    stream: TcpStream,
    transport: snow::TransportState,
    decoder: cyberbackup_core::v4::codec::FrameDecoder,
    buf: BytesMut,
    /// The id the server's `WELCOME` gave.
    pub client_id: ClientId,
}

/// snow's primitives with the operating system's randomness (for the ephemeral key).
struct OsResolver;

struct OsRandom;

impl snow::types::Random for OsRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        rand_core::RngCore::fill_bytes(&mut OsRng, dest);
        Ok(())
    }
}

impl snow::resolvers::CryptoResolver for OsResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        Some(Box::new(OsRandom))
    }

    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        snow::resolvers::DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(
        &self,
        choice: &snow::params::HashChoice,
    ) -> Option<Box<dyn snow::types::Hash>> {
        snow::resolvers::DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(
        &self,
        choice: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        snow::resolvers::DefaultResolver.resolve_cipher(choice)
    }
}

impl RawV4 {
    /// Registers the static key `private` under `name` (or logs in with it when `name` is
    /// `None`) and waits for `WELCOME`.
    pub async fn connect(addr: SocketAddr, private: [u8; 32], name: Option<&str>) -> Self {
        use cyberbackup_core::v4::codec::{Frame, FrameDecoder, Side};
        use cyberbackup_core::v4::wire::{
            ClientAuth, ServerMessage, encode_frame, hello_header, kind,
        };
        let params: snow::params::NoiseParams =
            cyberbackup_core::v4::noise::NOISE_PARAMS.parse().unwrap();
        let prologue = cyberbackup_core::v4::noise::prologue();
        let mut hs = snow::Builder::with_resolver(params, Box::new(OsResolver))
            .local_private_key(&private)
            .unwrap()
            .prologue(&prologue)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut msg = vec![0u8; 65_535];
        let len = hs.write_message(&[], &mut msg).unwrap();
        let mut hello = hello_header().to_vec();
        hello.extend_from_slice(&msg[..len]);
        stream.write_all(&hello).await.unwrap();
        let mut this_decoder = FrameDecoder::new(Side::FromServer);
        let mut buf = BytesMut::new();
        let Some(Frame::Handshake(msg2)) =
            read_frame(&mut stream, &mut this_decoder, &mut buf).await
        else {
            panic!("no Noise message 2");
        };
        let mut payload = vec![0u8; msg2.len()];
        hs.read_message(&msg2, &mut payload).unwrap();
        let auth = match name {
            Some(name) => ClientAuth::Register {
                name: NameField::new(name.as_bytes().to_vec()).unwrap(),
                token: String::new(),
            },
            None => ClientAuth::Login,
        };
        let mut plain = BytesMut::new();
        auth.encode(&mut plain);
        let len = hs.write_message(&plain, &mut msg).unwrap();
        stream
            .write_all(&encode_frame(kind::HANDSHAKE, &msg[..len]))
            .await
            .unwrap();
        let mut raw = Self {
            stream,
            transport: hs.into_transport_mode().unwrap(),
            decoder: this_decoder,
            buf,
            client_id: ClientId::ZERO,
        };
        match raw.recv().await {
            Some(ServerMessage::Welcome { client_id, .. }) => raw.client_id = client_id,
            other => panic!("no WELCOME: {other:?}"),
        }
        raw
    }

    /// Seals `plaintext` (type byte and body) as one transport frame and sends it; false
    /// when the server already closed.
    pub async fn send(&mut self, plaintext: &[u8]) -> bool {
        use cyberbackup_core::v4::wire::{encode_frame, kind};
        let mut ciphertext = vec![0u8; plaintext.len() + 16];
        let len = self
            .transport
            .write_message(plaintext, &mut ciphertext)
            .unwrap();
        self.stream
            .write_all(&encode_frame(kind::TRANSPORT, &ciphertext[..len]))
            .await
            .is_ok()
    }

    /// Sends a well-formed repository request.
    pub async fn send_repo(
        &mut self,
        request: &cyberbackup_core::v4::repository::RepoRequest,
    ) -> bool {
        let mut plain = BytesMut::new();
        request.encode(&mut plain);
        self.send(&plain).await
    }

    /// The next message; `None` when the connection ended (or nothing came in
    /// [`REPLY_WAIT`]).
    pub async fn recv(&mut self) -> Option<cyberbackup_core::v4::wire::ServerMessage> {
        use cyberbackup_core::v4::codec::Frame;
        let frame = tokio::time::timeout(
            REPLY_WAIT,
            read_frame(&mut self.stream, &mut self.decoder, &mut self.buf),
        )
        .await
        .ok()??;
        let Frame::Transport(ciphertext) = frame else {
            panic!("expected a transport frame, got {frame:?}");
        };
        let mut plaintext = vec![0u8; ciphertext.len()];
        let len = self
            .transport
            .read_message(&ciphertext, &mut plaintext)
            .unwrap();
        plaintext.truncate(len);
        Some(cyberbackup_core::v4::wire::ServerMessage::decode(plaintext.into()).unwrap())
    }

    /// True when the server closes the connection within [`REPLY_WAIT`] without sending
    /// another message.
    pub async fn closed(&mut self) -> bool {
        let read = read_frame(&mut self.stream, &mut self.decoder, &mut self.buf);
        matches!(tokio::time::timeout(REPLY_WAIT, read).await, Ok(None))
    }
}

/// Reads until `decoder` yields a frame; `None` on EOF, a reset or a malformed frame.
async fn read_frame(
    stream: &mut TcpStream,
    decoder: &mut cyberbackup_core::v4::codec::FrameDecoder,
    buf: &mut BytesMut,
) -> Option<cyberbackup_core::v4::codec::Frame> {
    loop {
        if let Some(frame) = decoder.decode(buf).ok()? {
            return Some(frame);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}
