//! A real S3 server process for the backend tests: moto's `moto_server` (`pip install
//! 'moto[server]'`), a stand-alone S3 implementation speaking HTTP on a port. Each
//! [`S3Server`] runs on a free 127.0.0.1 port with its own temp directory and bucket, and is
//! killed when dropped.
//!
//! The full-scale alternative is Garage, too slow to build for CI here (~13 min); to run the
//! suite against it, see docs/architecture.md ("Storage backends").
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cyberbackup_server::backend::config::{S3Settings, StorageSecret};
use cyberbackup_server::backend::s3::S3Config;
use zeroize::Zeroizing;

/// The command that installs the server CI uses.
pub const INSTALL: &str = "pip install 'moto[server]'";
pub const ACCESS_KEY: &str = "cyberbackup-test";
pub const SECRET_KEY: &str = "cyberbackup-test-secret";
pub const BUCKET: &str = "cyberbackup-test";
/// Failure guard for the server's start-up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running S3 server with one empty bucket.
pub struct S3Server {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts the installed server, or returns `None` (after printing a one-line skip
    /// message) when none is installed. With `CYBERBACKUP_REQUIRE_S3=1` a missing server
    /// is a test failure instead.
    pub fn start_or_skip() -> Option<Self> {
        let Some(program) = find() else {
            assert!(
                std::env::var_os("CYBERBACKUP_REQUIRE_S3").is_none(),
                "CYBERBACKUP_REQUIRE_S3 is set but no S3 server is installed — {INSTALL}"
            );
            eprintln!("SKIPPED: no S3 server installed (moto_server) — {INSTALL}");
            return None;
        };
        Some(Self::start(&program))
    }

    fn start(program: &PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut command = Command::new(program);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program:?}: {e}"));
        let mut server = Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            child,
            _dir: dir,
        };
        server.wait_ready();
        server.create_bucket();
        server
    }

    /// An [`S3Config`] for this server's bucket, with fast retries for tests.
    pub fn config(&self, prefix: Option<&str>) -> S3Config {
        let mut config = S3Config::new(BUCKET);
        config.endpoint = Some(format!("http://{}", self.addr));
        config.region = Some("us-east-1".into());
        config.prefix = prefix.map(str::to_owned);
        config.access_key_id = Some(ACCESS_KEY.into());
        config.secret_access_key = Some(Zeroizing::new(SECRET_KEY.into()));
        config.allow_http = true;
        config.max_retries = 2;
        config.initial_backoff = Duration::from_millis(10);
        config.retry_timeout = Duration::from_secs(10);
        config.request_timeout = Duration::from_secs(30);
        config
    }

    /// The `[storage]` settings of a server whose repository lives in this bucket under
    /// `prefix`.
    pub fn settings(&self, prefix: &str) -> S3Settings {
        S3Settings {
            bucket: BUCKET.into(),
            endpoint: Some(format!("http://{}", self.addr)),
            region: Some("us-east-1".into()),
            prefix: Some(prefix.into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(StorageSecret::new(SECRET_KEY)),
            allow_http: true,
            part_len_bytes: None,
            max_retries: Some(2),
            request_timeout_secs: Some(30),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("server.log")).unwrap_or_default()
    }

    /// Connects until the server accepts (bounded by [`START_TIMEOUT`]); fails with the
    /// server's log if it exits first.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the S3 server exited ({status}) before it listened:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the S3 server did not listen within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// moto accepts any credentials; a bucket is one unsigned `PUT /bucket`. A server that
    /// listens but is still starting can reset the connection (seen once in ten suite runs
    /// on a loaded machine): the request is retried until [`START_TIMEOUT`].
    fn create_bucket(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let reply = loop {
            match self.put_bucket() {
                Ok(reply) => break reply,
                Err(err) => assert!(
                    Instant::now() < deadline,
                    "create bucket: {err}\n{}",
                    self.log()
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
    }

    fn put_bucket(&self) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(self.addr)?;
        write!(
            stream,
            "PUT /{BUCKET} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server` on PATH (pip's scripts directory), if installed.
fn find() -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("moto_server"))
        .find(|path| path.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
