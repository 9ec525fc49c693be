//! Several servers, one service (issue 16): three real `cyberbackup-server` processes share
//! one PostgreSQL catalog, one S3 bucket (moto_server) and one v4 server key, behind one
//! address (a round-robin TCP proxy standing in for HAProxy). Fifty real clients back up
//! through that address while one server is killed (SIGKILL) in the middle of uploads and
//! started again. Then: every client has a snapshot, each restores byte for byte through a
//! server other than the one it may have started on, `check --read-data` passes for every
//! repository, every backup the kill interrupted was finished through another server (by
//! the client's next run: the packs already stored are skipped), and each server's admin API
//! shows the whole service's accounts. Skips unless PostgreSQL and moto_server are installed
//! (failures under `CYBERBACKUP_REQUIRE_POSTGRES=1` / `CYBERBACKUP_REQUIRE_S3=1`, as in CI).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

#[path = "../../cyberbackup-server/tests/postgres_server/mod.rs"]
mod postgres_server;
#[path = "../../cyberbackup-server/tests/round_robin/mod.rs"]
mod round_robin;
#[path = "../../cyberbackup-server/tests/s3_server/mod.rs"]
mod s3_server;
mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use round_robin::RoundRobin;
use support::{client_binary, machine_command, output_text, same_contents, write_pattern};

const SERVERS: usize = 3;
const CLIENTS: usize = 50;
/// Clients backing up at once.
const PARALLEL: usize = 8;
/// Backups that finish before the kill.
const DONE_BEFORE_KILL: usize = 12;
/// Runs of `backup` a client gets before the test gives up on it.
const ATTEMPTS: usize = 6;
/// Failure guard for a server's start-up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The server binary, built beside the client's by `cargo test --workspace`.
fn server_binary() -> PathBuf {
    let path = client_binary().with_file_name("cyberbackup-server");
    assert!(
        path.is_file(),
        "{} is missing: run the suite with `cargo test --workspace` (it builds the server binary too)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One server of the service: its configuration file, data directory and process.
struct ServerProcess {
    port: u16,
    admin_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    fn new(root: &Path, index: usize, catalog: &str, key: &Path, s3: &s3_server::S3Server) -> Self {
        let dir = root.join(format!("server-{index}"));
        fs::create_dir_all(&dir).unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let settings = s3.settings("service");
        let config = format!(
            r#"listen = "127.0.0.1"
port = {port}
data_dir = "{data}"
catalog = "{catalog}"
identity_key_file = "{key}"
registrations_per_minute = 0
min_free_disk_mb = 0
shutdown_grace_secs = 2
admin_listen = "127.0.0.1:{admin_port}"

[storage]
backend = "s3"
bucket = "{bucket}"
endpoint = "{endpoint}"
region = "us-east-1"
prefix = "service"
access_key_id = "{access}"
secret_access_key = "{secret}"
allow_http = true
max_retries = 2
"#,
            data = dir.join("data").display(),
            key = key.display(),
            bucket = settings.bucket,
            endpoint = settings.endpoint.unwrap(),
            access = s3_server::ACCESS_KEY,
            secret = s3_server::SECRET_KEY,
        );
        fs::write(dir.join("server.toml"), config).unwrap();
        let mut server = Self {
            port,
            admin_port,
            dir,
            child: None,
        };
        server.start();
        server
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Starts the process and waits until it accepts connections.
    fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let child = Command::new(server_binary())
            .arg("--config")
            .arg(self.dir.join("server.toml"))
            .env_remove("CYBERBACKUP_CATALOG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(self.address()).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "server {} exited at start-up ({status}):\n{}",
                    self.port,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "server {} did not start within {START_TIMEOUT:?}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no grace, no flush.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// `GET path` on the admin listener: the body.
    fn admin_get(&self, path: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin_port)).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        response.split_once("\r\n\r\n").unwrap().1.to_owned()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The client binary of machine `index` (a directory of its own) against `server`.
fn client(root: &Path, index: usize, server: SocketAddr, args: &[&str]) -> Output {
    let dir = root.join(format!("client-{index}"));
    machine_command(&dir)
        .args(args)
        .args(["--server", &server.to_string()])
        .args(["--name", &format!("client-{index}")])
        .args(["--v4-identity", "identity-v4.json"])
        .output()
        .unwrap()
}

/// Client `index`'s tree: a few MiB of its own bytes (one pack upload) and two small files.
fn make_tree(root: &Path, index: usize) -> PathBuf {
    let source = root.join(format!("client-{index}")).join("src");
    fs::create_dir_all(source.join("notes")).unwrap();
    write_pattern(&source.join("big.bin"), 3 << 20, 1000 + index as u64);
    fs::write(source.join("notes/a.txt"), format!("client {index}\n")).unwrap();
    fs::write(source.join("notes/b.txt"), "shared text\n".repeat(100)).unwrap();
    source
}

/// What happened to one client's backups.
#[derive(Debug, Default, Clone)]
struct Outcome {
    /// Failed runs before the one that succeeded, with their output.
    failures: Vec<String>,
    done: bool,
}

#[test]
fn fifty_clients_back_up_through_three_servers_while_one_is_killed_and_restarted() {
    let Some(pg) = postgres_server::PgServer::start_or_skip() else {
        return;
    };
    let Some(s3) = s3_server::S3Server::start_or_skip() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let catalog = pg.database().to_string();
    assert!(catalog.starts_with("postgres://"), "{catalog}");
    // Every server reads the same key file: the service has one v4 key (docs/deployment.md).
    let key = root.path().join("server-key-v4.json");
    // The first server creates the key and migrates the catalog; the others find both.
    let mut servers = vec![ServerProcess::new(root.path(), 0, &catalog, &key, &s3)];
    for index in 1..SERVERS {
        servers.push(ServerProcess::new(root.path(), index, &catalog, &key, &s3));
    }
    let proxy = RoundRobin::start(servers.iter().map(ServerProcess::address).collect()).unwrap();
    let sources: Vec<PathBuf> = (0..CLIENTS).map(|i| make_tree(root.path(), i)).collect();

    let outcomes: Arc<Mutex<Vec<Outcome>>> =
        Arc::new(Mutex::new(vec![Outcome::default(); CLIENTS]));
    let next = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let (root, outcomes, next, finished) = (
                root.path().to_path_buf(),
                Arc::clone(&outcomes),
                Arc::clone(&next),
                Arc::clone(&finished),
            );
            let address = proxy.address;
            std::thread::spawn(move || {
                loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    if index >= CLIENTS {
                        return;
                    }
                    let mut outcome = Outcome::default();
                    for _ in 0..ATTEMPTS {
                        let out = client(&root, index, address, &["backup", "--quiet", "src"]);
                        if out.status.code() == Some(0) {
                            outcome.done = true;
                            break;
                        }
                        outcome.failures.push(output_text(&out));
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    outcomes.lock().unwrap()[index] = outcome;
                    finished.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // The kill: once some backups are done, and while server 1 holds at least two of them.
    let victim = 1;
    let deadline = Instant::now() + Duration::from_secs(300);
    while finished.load(Ordering::SeqCst) < DONE_BEFORE_KILL || proxy.open_on(victim) < 2 {
        assert!(
            Instant::now() < deadline && finished.load(Ordering::SeqCst) < CLIENTS,
            "never saw two backups on server {victim} at once (finished: {})",
            finished.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let cut = proxy.open_on(victim);
    servers[victim].kill();
    std::thread::sleep(Duration::from_secs(1));
    servers[victim].start();
    for worker in workers {
        worker.join().unwrap();
    }

    let outcomes = outcomes.lock().unwrap().clone();
    let interrupted: Vec<usize> = (0..CLIENTS)
        .filter(|&i| !outcomes[i].failures.is_empty())
        .collect();
    for (index, outcome) in outcomes.iter().enumerate() {
        assert!(
            outcome.done,
            "client {index} never finished a backup:\n{}\n--- server {victim} ---\n{}",
            outcome.failures.join("\n"),
            servers[victim].log()
        );
    }
    eprintln!(
        "killed server {victim} with {cut} backups on it: {} clients interrupted ({interrupted:?})",
        interrupted.len()
    );
    assert!(
        !interrupted.is_empty(),
        "the kill (with {cut} backups on server {victim}) interrupted no backup"
    );

    // Every client's latest snapshot restores exactly through server 2, and every one of its
    // snapshots checks out through server 0.
    for (index, source) in sources.iter().enumerate() {
        let listed = client(
            root.path(),
            index,
            servers[2].address(),
            &["snapshots", "--json"],
        );
        assert_eq!(listed.status.code(), Some(0), "{}", output_text(&listed));
        let snapshots: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        let count = snapshots.as_array().unwrap().len();
        // An interrupted run may have committed before its answer was lost: one more.
        assert!(
            count == 1 || (count == 2 && interrupted.contains(&index)),
            "client {index}: {snapshots}"
        );
        let target = root.path().join(format!("client-{index}")).join("restored");
        let restore = client(
            root.path(),
            index,
            servers[2].address(),
            &["restore", "latest", "--target", target.to_str().unwrap()],
        );
        assert_eq!(restore.status.code(), Some(0), "{}", output_text(&restore));
        let restored = target.join(source.canonicalize().unwrap().strip_prefix("/").unwrap());
        for file in ["big.bin", "notes/a.txt", "notes/b.txt"] {
            assert!(
                same_contents(&source.join(file), &restored.join(file)),
                "client {index}: {file} differs after the restore"
            );
        }
        let check = client(
            root.path(),
            index,
            servers[0].address(),
            &["check", "--read-data"],
        );
        assert_eq!(check.status.code(), Some(0), "{}", output_text(&check));
    }

    // An interrupted client's next backup sends nothing but what changed: its packs are all
    // stored, whichever server took them.
    let again = client(
        root.path(),
        interrupted[0],
        proxy.address,
        &["backup", "--json", "src"],
    );
    assert_eq!(again.status.code(), Some(0), "{}", output_text(&again));
    let summary = String::from_utf8_lossy(&again.stdout)
        .lines()
        .rev()
        .find(|line| line.contains("\"summary\""))
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .expect("no summary line");
    assert!(
        summary["bytes_added"].as_u64().unwrap() < 64 << 10,
        "an unchanged tree sent data again: {summary}"
    );

    // Each server's admin API shows the whole service: all fifty accounts, each with its
    // snapshots, whichever server took them.
    for server in &servers {
        let accounts: serde_json::Value =
            serde_json::from_str(&server.admin_get("/api/v1/accounts")).unwrap();
        let with_snapshots = accounts["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["snapshots"].as_u64().unwrap() >= 1)
            .count();
        assert_eq!(with_snapshots, CLIENTS, "{accounts}");
    }
}
