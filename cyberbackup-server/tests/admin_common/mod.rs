//! Shared by the admin HTTP tests and the browser tests: a real server with its admin
//! listener on 127.0.0.1 (port 0), real backups through the client library, and a minimal
//! HTTP/1.1 client over a raw socket.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod cdp;
pub mod ui;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use cyberbackup_client::{Client, ClientOptions, IdentityFile, NoProgress, RetryPolicy};
use cyberbackup_server::http::AdminClock;
use cyberbackup_server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A running server with its admin listener.
pub struct Running {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: ServerConfig,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub fn config_for(data: &Path) -> ServerConfig {
    ServerConfig {
        listen: Ipv4Addr::LOCALHOST.into(),
        port: 0,
        data_dir: data.to_path_buf(),
        idle_timeout_secs: 10,
        shutdown_grace_secs: 2,
        registrations_per_minute: 0,
        min_free_disk_mb: 1,
        ..ServerConfig::default()
    }
}

pub async fn start(config: ServerConfig) -> Running {
    start_with_clock(config, AdminClock::default()).await
}

/// The system clock moved forward by a number of seconds the test sets, for the
/// dashboard's [`AdminClock`]: a test ages backups without waiting.
#[derive(Clone, Default)]
pub struct ShiftedClock(Arc<AtomicU64>);

impl ShiftedClock {
    /// From now on the clock runs `ahead` in front of the system clock.
    pub fn set_ahead(&self, ahead: Duration) {
        self.0.store(ahead.as_secs(), Ordering::SeqCst);
    }

    pub fn admin_clock(&self) -> AdminClock {
        let ahead = Arc::clone(&self.0);
        AdminClock::new(move || {
            SystemTime::now() + Duration::from_secs(ahead.load(Ordering::SeqCst))
        })
    }
}

/// [`start`] with the dashboard reading `clock`.
pub async fn start_with_clock(config: ServerConfig, clock: AdminClock) -> Running {
    let server = Server::bind(config.clone()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let mut admin = server
        .bind_admin(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    admin.set_clock(clock);
    let admin_addr = admin.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let serve_admin = tokio::spawn({
        let token = shutdown.clone();
        async move { admin.serve(token).await.unwrap() }
    });
    let serve = tokio::spawn({
        let token = shutdown.clone();
        async move { server.serve(token).await.unwrap() }
    });
    Running {
        addr,
        admin: admin_addr,
        config,
        shutdown,
        tasks: vec![serve_admin, serve],
    }
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
    }
}

/// Backs `files` up as client `name` with the client library; returns the file paths.
pub async fn backup(
    server: SocketAddr,
    dir: &Path,
    name: &str,
    files: &[(&str, &[u8])],
) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = files
        .iter()
        .map(|(file, content)| {
            let path = dir.join(file);
            std::fs::write(&path, content).unwrap();
            path
        })
        .collect();
    let mut options = ClientOptions::new(
        server.to_string(),
        name,
        IdentityFile::new(dir.join(format!("{name}.me.info"))),
    );
    options.retry = RetryPolicy::with_retries(0);
    let mut client = Client::new(options).unwrap();
    let report = client.backup(&paths, &mut NoProgress).await.unwrap();
    client.close(&mut NoProgress).await.unwrap();
    assert!(report.all_verified(), "{report:?}");
    paths
}

/// Backs the directory `tree` up as one snapshot of account `name` (protocol v4, the
/// client library's snapshot engine; the repository is created on the first run), with the
/// identity file `identity` (its device key beside it).
pub async fn snapshot_backup(server: SocketAddr, identity: &Path, name: &str, tree: &Path) {
    use cyberbackup_client::snapshot::{BackupOptions, KeyOptions, NoObserver, Repository};
    let mut options =
        cyberbackup_client::v4::V4Options::new(server.to_string(), identity.to_path_buf());
    options.name = Some(name.into());
    let client = cyberbackup_client::v4::V4Client::connect(&options)
        .await
        .unwrap();
    let mut repo = Repository::open(client, &KeyOptions::new(identity))
        .await
        .unwrap();
    let backup = BackupOptions {
        paths: vec![tree.to_path_buf()],
        ..BackupOptions::default()
    };
    repo.backup(&backup, &mut NoObserver).await.unwrap();
}

/// An HTTP response read to the end.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    /// The body as text (invalid UTF-8 replaced; use `bytes` for binary bodies).
    pub body: String,
    /// The body exactly as received (de-chunked).
    pub bytes: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }
}

/// `GET path` with optional extra header lines, `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str, extra_headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", path, extra_headers, &[]).await
}

/// `POST path` with the JSON body `{}` (what the API's actions take).
pub async fn post_empty_json(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        b"{}",
    )
    .await
}

/// Any request with a body (`Content-Length` is added), `Connection: close`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !extra_headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (key, value) in extra_headers {
        request.push_str(&format!("{key}: {value}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("no status");
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
        bytes: body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&data[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
