//! A real PostgreSQL server for the catalog tests: `initdb` and `postgres` from the
//! installed binaries (Debian: `apt-get install postgresql`), on a free 127.0.0.1 port with
//! its own temp directory, stopped when dropped. Each [`PgServer::database`] is a new empty
//! database, so tests sharing a server stay apart.
//!
//! PostgreSQL refuses to run as root: as root, both run as the `postgres` user (the Debian
//! package creates it; `nobody` otherwise) through `setpriv`, which changes the user and
//! execs, so the child is the server itself and stopping it needs no other process.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cyberbackup_server::catalog::CatalogLocation;

/// The command that installs the server CI uses.
pub const INSTALL: &str = "apt-get install postgresql";
/// Failure guard for the server's start-up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The superuser `initdb` creates (trust authentication on loopback only).
const USER: &str = "cb";

/// A running PostgreSQL server.
pub struct PgServer {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl PgServer {
    /// Starts the installed server, or returns `None` (after printing a one-line skip
    /// message) when none is installed. With `CYBERBACKUP_REQUIRE_POSTGRES=1` a missing
    /// server is a test failure instead.
    pub fn start_or_skip() -> Option<Self> {
        let bin = bin_or_skip()?;
        Some(Self::start(&bin, tempfile::tempdir().unwrap(), &[]))
    }

    /// [`Self::start_or_skip`] with TLS on: a certificate for `127.0.0.1` and `localhost`
    /// signed by a test CA made here with `openssl`; returns the CA's PEM file too.
    pub fn start_tls_or_skip() -> Option<(Self, PathBuf)> {
        let bin = bin_or_skip()?;
        let dir = tempfile::tempdir().unwrap();
        let owner = run_as();
        let ca = make_certificates(dir.path(), &owner);
        let cert = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        let options = [
            "-c".to_owned(),
            "ssl=on".to_owned(),
            "-c".to_owned(),
            format!("ssl_cert_file={}", cert("server.pem")),
            "-c".to_owned(),
            format!("ssl_key_file={}", cert("server.key")),
        ];
        Some((Self::start(&bin, dir, &options), ca))
    }

    fn start(bin: &Path, dir: tempfile::TempDir, options: &[String]) -> Self {
        let data = dir.path().join("data");
        let owner = run_as();
        if let Some(user) = &owner {
            chown(dir.path(), user);
        }
        let init = as_user(&owner, &bin.join("initdb"))
            .args(["-D", data.to_str().unwrap(), "-A", "trust", "-U", USER])
            .args(["-E", "UTF8", "--no-sync", "--no-instructions"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        if let Some(user) = &owner {
            chown(&dir.path().join("server.log"), user);
        }
        let child = as_user(&owner, &bin.join("postgres"))
            .args(["-D", data.to_str().unwrap(), "-p", &port.to_string()])
            .args(["-k", dir.path().to_str().unwrap()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=200"])
            .args(options)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Self { port, child, dir };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if admin(&self.url("postgres"), "SELECT 1").is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start within {START_TIMEOUT:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's data directory (its tables and WAL).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The URL of database `name` (which may not exist).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// A new empty database, as a catalog location.
    pub fn database(&self) -> CatalogLocation {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("catalog_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        admin(&self.url("postgres"), &format!("CREATE DATABASE {name}")).unwrap();
        CatalogLocation::parse(&self.url(&name)).unwrap()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown (ends the sessions, then exits).
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The PostgreSQL binaries, or `None` after a one-line skip message (a failure under
/// `CYBERBACKUP_REQUIRE_POSTGRES=1`).
fn bin_or_skip() -> Option<PathBuf> {
    let Some(bin) = find() else {
        assert!(
            std::env::var_os("CYBERBACKUP_REQUIRE_POSTGRES").is_none(),
            "CYBERBACKUP_REQUIRE_POSTGRES is set but PostgreSQL is not installed — {INSTALL}"
        );
        eprintln!("SKIPPED: PostgreSQL is not installed (initdb, postgres) — {INSTALL}");
        return None;
    };
    Some(bin)
}

/// A CA and a server certificate for `127.0.0.1` / `localhost` signed by it, in `dir`
/// (`ca.pem`, `server.pem`, `server.key`, the key owned by `owner` and 0600 as PostgreSQL
/// demands); returns the CA's file.
fn make_certificates(dir: &Path, owner: &Option<String>) -> PathBuf {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the TLS test needs the openssl command (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca: Vec<&str> = [
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem"],
    ]
    .concat();
    openssl(&[&ca[..], &["-days", "2", "-subj", "/CN=cyberbackup test CA"]].concat());
    let csr: Vec<&str> = [
        &["req"][..],
        &ec,
        &["-keyout", "server.key", "-out", "server.csr"],
    ]
    .concat();
    openssl(&[&csr[..], &["-subj", "/CN=localhost"]].concat());
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    if let Some(user) = owner {
        chown(&key, user);
        chown(&dir.join("server.pem"), user);
    }
    dir.join("ca.pem")
}

/// Runs `sql` on the database at `url`, on a thread of its own: the blocking client runs a
/// runtime of its own, which cannot start inside the test's.
fn admin(url: &str, sql: &str) -> Result<(), postgres::Error> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
        client.batch_execute(&sql)
    })
    .join()
    .unwrap()
}

/// The directory with `initdb` and `postgres`: on `PATH`, else Debian's
/// `/usr/lib/postgresql/<version>/bin` (the newest).
fn find() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
    });
    if on_path.is_some() {
        return on_path;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

/// The user to run PostgreSQL as when this process is root.
fn run_as() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let exists = |user: &str| {
        Command::new("id")
            .arg(user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    Some(
        if exists("postgres") {
            "postgres"
        } else {
            "nobody"
        }
        .to_owned(),
    )
}

fn as_user(user: &Option<String>, program: &Path) -> Command {
    match user {
        None => Command::new(program),
        Some(user) => {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={user}"))
                .arg(format!("--regid={}", group_of(user)))
                .arg("--clear-groups")
                .arg(program);
            command
        }
    }
}

fn group_of(user: &str) -> String {
    let out = Command::new("id").args(["-gn", user]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn chown(path: &Path, user: &str) {
    let status = Command::new("chown")
        .arg(format!("{user}:{}", group_of(user)))
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "chown {user} {}", path.display());
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
