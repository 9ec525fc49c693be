//! The reference server (`cyberbackup_server::Server`) in-process on 127.0.0.1, port 0,
//! with a real SQLite catalog and real storage in a temp directory, on its own runtime
//! thread so synchronous tests (child processes, ptys) can use it too; and streaming helpers
//! for big generated files (never held in memory whole).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use cyberbackup_server::catalog::v4::SetRoleOutcome;
use cyberbackup_server::catalog::{Catalog, CatalogLocation, DeviceRole};
use cyberbackup_server::faults::{FaultInjector, Faults};
use cyberbackup_server::{Server, ServerConfig};
use tokio_util::sync::CancellationToken;

/// A change to the test server's configuration, applied before it starts.
type Adjust = Box<dyn FnOnce(&mut ServerConfig) + Send>;

/// A running reference server; stopped (gracefully) on drop.
pub struct RealServer {
    pub addr: SocketAddr,
    /// The admin listener (dashboard, API, `/ready`, `/metrics`) when started with one.
    pub admin: Option<SocketAddr>,
    /// `<data>/defensive.db` and `<data>/files/`.
    pub data: tempfile::TempDir,
    /// Where its catalog is (the SQLite file in `data` unless configured otherwise).
    pub catalog: CatalogLocation,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RealServer {
    pub fn start() -> Self {
        Self::start_with_faults(Faults::none())
    }

    pub fn start_with_injector(injector: Arc<dyn FaultInjector>) -> Self {
        Self::start_with_faults(Faults::new(injector))
    }

    fn start_with_faults(faults: Faults) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), faults, None)
    }

    /// A server whose configuration `adjust` changes, with its admin listener on a free
    /// loopback port ([`Self::admin`]).
    pub fn start_configured(adjust: impl FnOnce(&mut ServerConfig) + Send + 'static) -> Self {
        Self::start_in(
            tempfile::tempdir().unwrap(),
            Faults::none(),
            Some(Box::new(adjust)),
        )
    }

    /// A server on `data` (a directory an earlier server used: a restart), on a new port.
    pub fn restart_in(data: tempfile::TempDir) -> Self {
        Self::start_in(data, Faults::none(), None)
    }

    /// [`Self::restart_in`] with a configuration `adjust` changes (and an admin listener).
    pub fn restart_configured(
        data: tempfile::TempDir,
        adjust: impl FnOnce(&mut ServerConfig) + Send + 'static,
    ) -> Self {
        Self::start_in(data, Faults::none(), Some(Box::new(adjust)))
    }

    /// Stops the server and hands back its data directory (for [`Self::restart_in`]).
    pub fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the server thread panicked");
        }
        let placeholder = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.data, placeholder)
    }

    fn start_in(data: tempfile::TempDir, faults: Faults, adjust: Option<Adjust>) -> Self {
        let mut config = ServerConfig {
            listen: Ipv4Addr::LOCALHOST.into(),
            port: 0,
            data_dir: data.path().join("data"),
            idle_timeout_secs: 60,
            shutdown_grace_secs: 5,
            // Every test client comes from 127.0.0.1: the per-address limit would refuse most.
            registrations_per_minute: 0,
            // Test data directories live on whatever disk /tmp is.
            min_free_disk_mb: 0,
            ..ServerConfig::default()
        };
        let with_admin = adjust.is_some();
        if let Some(adjust) = adjust {
            adjust(&mut config);
        }
        let catalog = config.catalog_location();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let server = Server::bind_with_faults(config, faults).await.unwrap();
                let admin = if with_admin {
                    let admin = server
                        .bind_admin(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                        .await
                        .unwrap();
                    let address = admin.local_addr().unwrap();
                    tokio::spawn(admin.serve(token.clone()));
                    Some(address)
                } else {
                    None
                };
                tx.send((server.local_addr().unwrap(), admin)).unwrap();
                server.serve(token).await.unwrap();
            });
        });
        let (addr, admin) = rx.recv().expect("the server failed to start");
        Self {
            addr,
            admin,
            data,
            catalog,
            shutdown,
            thread: Some(thread),
        }
    }

    /// `GET path` on the admin listener: the status code and the body.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let admin = self.admin.expect("started without an admin listener");
        let mut stream = std::net::TcpStream::connect(admin).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// `host:port` for `--server`.
    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    /// Where the server stores `name` for the client `client_id_hex`.
    pub fn stored(&self, client_id_hex: &str, name: &str) -> PathBuf {
        self.data
            .path()
            .join("data")
            .join("files")
            .join(client_id_hex)
            .join(name)
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            // A panic in the server thread shows up here (unless we are already panicking).
            if thread.join().is_err() && !std::thread::panicking() {
                panic!("the server thread panicked");
            }
        }
    }
}

/// Writes `len` bytes of a seeded pseudo-random pattern to `path`, 1 MiB at a time.
pub fn write_pattern(path: &Path, len: u64, seed: u64) {
    let mut out = BufWriter::new(File::create(path).unwrap());
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            // xorshift64*: fast and not compressible, so the transfer is realistic.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap();
        out.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

/// Whether two files have the same bytes, compared 1 MiB at a time.
pub fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut a, mut b) = (File::open(a).unwrap(), File::open(b).unwrap());
    if a.metadata().unwrap().len() != b.metadata().unwrap().len() {
        return false;
    }
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut a, &mut x);
        let m = read_full(&mut b, &mut y);
        if n != m || x[..n] != y[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

/// The POSIX cksum of a file, streamed.
pub fn cksum_of(path: &Path) -> u32 {
    let mut file = File::open(path).unwrap();
    let mut cksum = cyberbackup_core::crypto::Cksum::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = read_full(&mut file, &mut buf);
        if n == 0 {
            return cksum.finalize();
        }
        cksum.update(&buf[..n]);
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).unwrap();
        if n == 0 {
            break;
        }
        filled += n;
    }
    filled
}

/// The real client binary.
pub fn client_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cyberbackup-client"))
}

/// The client binary run in `dir` as a machine of its own: `HOME` and the config there, no
/// `CYBERBACKUP_*` settings from the environment.
pub fn machine_command(dir: &Path) -> Command {
    let mut command = Command::new(client_binary());
    command
        .current_dir(dir)
        .env_remove("CYBERBACKUP_SERVER")
        .env_remove("CYBERBACKUP_NAME")
        .env_remove("CYBERBACKUP_PASSWORD")
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"));
    command
}

/// [`machine_command`] with `args`, then `--server` and `--v4-identity NAME-v4.json`.
pub fn client_command(dir: &Path, server: &RealServer, name: &str, args: &[&str]) -> Command {
    let mut command = machine_command(dir);
    command
        .args(args)
        .args(["--server", &server.server()])
        .args(["--v4-identity", &format!("{name}-v4.json")]);
    command
}

/// A finished command's status and output, for an assertion message.
pub fn output_text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every regular file under `root`, recursively (symbolic links are not followed).
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                found.push(path);
            }
        }
    }
    found
}

/// Runs `work` on the server's catalog (a second connection to it, as the operator's
/// `cyberbackup-server` commands open it).
fn with_catalog<T>(server: &RealServer, work: impl AsyncFnOnce(&Catalog) -> T) -> T {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let catalog = Catalog::open_at(server.catalog.clone()).await.unwrap();
        let out = work(&catalog).await;
        catalog.close().await.unwrap();
        out
    })
}

/// Gives every device of client `name` the role `role`, as
/// `cyberbackup-server devices set-role NAME ROLE` does; applies to open connections too.
pub fn set_role_of(server: &RealServer, name: &[u8], role: DeviceRole) {
    let outcome = with_catalog(server, async |catalog| {
        catalog
            .set_device_role(name.to_vec(), None, role)
            .await
            .unwrap()
    });
    assert!(
        matches!(outcome, SetRoleOutcome::Set(n) if n >= 1),
        "{outcome:?}"
    );
}

/// A single-use token enrolling a new device of the existing client `name`, as
/// `cyberbackup-server enroll --client NAME` issues it.
pub fn enroll_device_of(server: &RealServer, name: &[u8]) -> String {
    with_catalog(server, async |catalog| {
        let owner = catalog
            .list_devices()
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.client_name == name)
            .unwrap()
            .client_id;
        let ttl = std::time::Duration::from_secs(600);
        let (token, _) = cyberbackup_server::v4::enroll(catalog, ttl, Some(owner))
            .await
            .unwrap();
        token
    })
}

/// `check --read-data` of `name`'s repository, which must pass.
pub fn check_read_data(dir: &Path, server: &RealServer, name: &str) {
    let check = client_command(dir, server, name, &["check", "--read-data"])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", output_text(&check));
}

/// `restore latest` of `name`'s repository into `<dir>/restored`, which must succeed;
/// returns where `source` (a directory given to `backup`) was restored (restic's layout:
/// its absolute path below the target).
pub fn restore_latest(dir: &Path, server: &RealServer, name: &str, source: &Path) -> PathBuf {
    let target = dir.join("restored");
    let restore = client_command(
        dir,
        server,
        name,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(restore.status.code(), Some(0), "{}", output_text(&restore));
    target.join(source.canonicalize().unwrap().strip_prefix("/").unwrap())
}
