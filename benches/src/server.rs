//! The real `cyberbackup-server` binary as a child process in a temporary directory, with a
//! generated configuration file, and the location (and build) of the binaries under test.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long the server may take to accept its first connection.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the server and client binaries are.
#[derive(Clone, Debug)]
pub(crate) struct Binaries {
    /// `cyberbackup-server`.
    pub(crate) server: PathBuf,
    /// `cyberbackup-client`.
    pub(crate) client: PathBuf,
}

impl Binaries {
    /// The binaries in `dir` (e.g. `target/release`); both must exist.
    ///
    /// # Errors
    /// A binary is missing.
    pub(crate) fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        // Children run in other working directories: make the paths absolute.
        let dir = std::path::absolute(dir)
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let found = Self {
            server: dir.join("cyberbackup-server"),
            client: dir.join("cyberbackup-client"),
        };
        for bin in [&found.server, &found.client] {
            if !bin.is_file() {
                bail!(
                    "{} does not exist — build it with `cargo build --release -p cyberbackup-server -p cyberbackup-client`, or drop --no-build",
                    bin.display()
                );
            }
        }
        Ok(found)
    }

    /// Builds the server and client with the profile this harness was built with (release
    /// unless the harness is a debug build), then finds them beside the harness.
    ///
    /// # Errors
    /// Cargo is missing or the build fails.
    pub(crate) fn build() -> anyhow::Result<Self> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(&cargo);
        command.args([
            "build",
            "--locked",
            "-p",
            "cyberbackup-server",
            "-p",
            "cyberbackup-client",
        ]);
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        command.current_dir(workspace_root());
        let status = command.status().with_context(|| {
            format!("cannot run {} (is cargo on PATH?)", cargo.to_string_lossy())
        })?;
        if !status.success() {
            bail!(
                "building cyberbackup-server and cyberbackup-client failed ({status}); see cargo's output above"
            );
        }
        Self::in_dir(&profile_dir()?)
    }
}

/// The workspace root (the parent of `benches/`).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The directory holding this executable: `target/<profile>/` for `cargo run`, one level
/// up from `deps/` for test binaries.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the harness executable")?;
    let mut dir = exe
        .parent()
        .context("the harness executable has no parent directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Settings written into the generated configuration.
#[derive(Clone, Debug)]
pub(crate) struct ServerSettings {
    /// `registrations_per_minute` (0 disables the limit).
    pub(crate) registrations_per_minute: u32,
    /// `max_connections`.
    pub(crate) max_connections: u32,
    /// `max_file_size`.
    pub(crate) max_file_size: u64,
    /// More TOML, appended as written (top-level keys first, then any tables).
    pub(crate) extra: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            registrations_per_minute: 30,
            max_connections: 1024,
            max_file_size: 4 * 1024 * 1024 * 1024,
            extra: String::new(),
        }
    }
}

/// A running server process.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl ServerProcess {
    /// Writes `<dir>/cyberbackup-server.toml` (127.0.0.1, a free port, data in
    /// `<dir>/data`), starts `bin` in `dir` with its log in `<dir>/server.log`, and waits
    /// until it accepts connections.
    ///
    /// # Errors
    /// No free port, the binary does not start, or it does not listen in time.
    pub(crate) fn start(bin: &Path, dir: &Path, settings: &ServerSettings) -> anyhow::Result<Self> {
        // The CLI refuses port 0, so pick a free port ourselves. Another process could take
        // it before the server binds; then the start fails with the server's own message.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|probe| probe.local_addr())
            .context("cannot find a free port on 127.0.0.1")?
            .port();
        let data_dir = dir.join("data");
        let config = format!(
            "listen = \"127.0.0.1\"\nport = {port}\ndata_dir = {data_dir:?}\n\
             max_connections = {}\nregistrations_per_minute = {}\nmax_file_size = {}\n\
             min_free_disk_mb = 100\n\
             # every benchmark client comes from 127.0.0.1: no per-address cap\n\
             max_connections_per_address = {}\n\
             # the admin dashboard's fixed port would clash between runs; not measured here\n\
             admin_enabled = false\n{}",
            settings.max_connections,
            settings.registrations_per_minute,
            settings.max_file_size,
            settings.max_connections,
            settings.extra,
        );
        let config_path = dir.join("cyberbackup-server.toml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let log_path = dir.join("server.log");
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut command = Command::new(bin);
        command
            .arg("--config")
            .arg(&config_path)
            .arg("run")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot duplicate the log handle")?)
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CYBERBACKUP_") {
                command.env_remove(key);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir: dir.to_path_buf(),
        };
        server.wait_listening()?;
        Ok(server)
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("cannot poll the server")? {
                bail!(
                    "the server exited at start-up ({status}); its log says:\n{}",
                    self.log_tail()
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the server did not listen on {} within {} s; its log says:\n{}",
                    self.addr,
                    START_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its data directory (`defensive.db` and `files/`).
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The last lines of its log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops it with SIGTERM (graceful shutdown), killing it if it does not exit in time.
    ///
    /// # Errors
    /// The server could not be signalled or waited for.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .context("the server's pid is out of range")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("cannot send SIGTERM to the server")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().context("cannot kill the server")?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // After an error path: never leave a server running.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ignored = self.child.kill();
            let _ignored = self.child.wait();
        }
    }
}

/// Raises this process's soft descriptor limit to the hard limit (children inherit it):
/// 1,000 concurrent clients need more than the common default of 1,024.
pub(crate) fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _best_effort = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}
