//! What a new operator meets, with the real binary as a child process: `--check` (it checks
//! the admin listener too and changes nothing on disk) and the log of a running server
//! (no colour codes off a terminal, one summary line per connection, `client=` once per line,
//! a user's typo not listed as a server warning), the `devices` commands, `catalog backup`
//! beside a running server, and `storage copy` into a real S3 server process.
//!
//! Runtime: a few seconds in a debug build.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_common;
mod s3_server;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use admin_common::{backup, get};
use cyberbackup_client::v4::{V4Client, V4Options};
use cyberbackup_core::v4::wire::ErrorCode;
use cyberbackup_server::catalog::v4::V4RegisterOutcome;
use cyberbackup_server::catalog::{Catalog, DeviceRole};

/// Longest wait for the server to start (a failure guard, not a synchronisation).
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn check_changes_nothing_on_disk_and_checks_the_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_addr();

    let fresh = check(dir.path(), admin);
    let taken = TcpListener::bind(admin).unwrap();
    let busy = check(dir.path(), admin);
    drop(taken);

    assert_eq!(fresh.status.code(), Some(0), "{}", text(&fresh));
    let created: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(created.is_empty(), "--check created {created:?}");
    let report = String::from_utf8_lossy(&fresh.stdout);
    assert!(
        report.contains(&format!("ok    admin      {admin}")),
        "{report}"
    );
    assert_eq!(busy.status.code(), Some(1), "{}", text(&busy));
    let report = String::from_utf8_lossy(&busy.stdout);
    assert!(report.contains("FAIL  admin"), "{report}");
    assert!(report.contains("admin_listen"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_plain_text_with_one_summary_line_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = (free_addr(), free_addr());
    let (mut child, lines) = start_server(dir.path(), addr, admin);
    let mut log = wait_for(&lines, "admin dashboard listening");

    backup(
        addr,
        dir.path(),
        "olive",
        &[("a.txt", b"first file"), ("b.txt", &[9u8; 3000])],
    )
    .await;
    let source = dir.path().join("c.bin");
    std::fs::write(&source, [4u8; 5000]).unwrap();
    let options = V4Options::new(addr.to_string(), dir.path().join("v4.json")).with_name("pat");
    let mut client = V4Client::connect(&options).await.unwrap();
    client.upload(&source, None).await.unwrap();
    let typo = client
        .restore("c.bni", None, &dir.path().join("out"))
        .await
        .unwrap_err();
    client.close().await.unwrap();
    let events = get(admin, "/api/v1/events", &[]).await.json();
    stop(&mut child);
    log.extend(lines.iter());

    assert_eq!(typo.code(), Some(ErrorCode::NOT_FOUND), "{typo:?}");
    let all = log.join("\n");
    assert!(!all.contains('\x1b'), "colour codes in a piped log:\n{all}");
    let summaries = |protocol: &str| -> (u64, u64, usize) {
        let mut totals = (0, 0, 0);
        for line in log.iter().filter(|l| {
            l.contains("connection closed") && l.contains(&format!("protocol={protocol}"))
        }) {
            assert!(line.contains("duration_ms="), "{line}");
            totals.0 += field(line, "files");
            totals.1 += field(line, "bytes");
            totals.2 += 1;
        }
        totals
    };
    let (v3_files, v3_bytes, v3_lines) = summaries("3");
    let (v4_files, v4_bytes, v4_lines) = summaries("4");
    assert_eq!((v3_files, v3_bytes), (2, 10 + 3000), "{all}");
    assert!(v3_lines >= 1, "{all}");
    assert_eq!((v4_files, v4_bytes, v4_lines), (1, 5000, 1), "{all}");
    assert!(
        !all.contains("verified and committed"),
        "per-file lines at INFO:\n{all}"
    );
    for line in &log {
        assert!(
            line.matches("client=").count() <= 1,
            "client= twice: {line}"
        );
    }
    let refused = log
        .iter()
        .find(|l| l.contains("v4 request refused"))
        .unwrap_or_else(|| panic!("the refusal is not logged:\n{all}"));
    assert!(refused.contains(" INFO "), "{refused}");
    assert!(
        !events.to_string().contains("v4 request refused"),
        "a user's typo is listed as a server warning: {events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_listed_with_their_roles_and_the_operator_sets_them() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(dir.path().join("data/defensive.db"))
        .await
        .unwrap();
    let registered = catalog
        .register_v4_client(
            [0xA1; 16],
            b"alice".to_vec(),
            [7; 32],
            None,
            DeviceRole::AppendOnly,
        )
        .await
        .unwrap();
    assert_eq!(registered, V4RegisterOutcome::Registered);
    catalog.close().await.unwrap();
    let devices = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cyberbackup-server"));
        command
            .arg("devices")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env_remove("CYBERBACKUP_CONFIG");
        command.output().unwrap()
    };
    let role_of_alice = |output: &Output| -> String {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let line = stdout
            .lines()
            .find(|line| line.contains("alice"))
            .unwrap_or_else(|| panic!("alice not listed: {}", text(output)))
            .to_owned();
        ["append-only", "manage"]
            .into_iter()
            .find(|role| line.contains(role))
            .unwrap_or_else(|| panic!("no role in {line:?}"))
            .to_owned()
    };

    let listed = devices(&["list"]);
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed));
    assert_eq!(role_of_alice(&listed), "append-only");
    let set = devices(&["set-role", "alice", "manage"]);
    assert_eq!(set.status.code(), Some(0), "{}", text(&set));
    assert_eq!(role_of_alice(&devices(&["list"])), "manage");

    let unknown = devices(&["set-role", "mallory", "manage"]);
    assert_ne!(unknown.status.code(), Some(0), "{}", text(&unknown));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no device is registered as \"mallory\""),
        "{}",
        text(&unknown)
    );
    let bad_role = devices(&["set-role", "alice", "owner"]);
    assert_eq!(bad_role.status.code(), Some(2), "{}", text(&bad_role));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_backup_copies_a_running_servers_catalog_privately_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = (free_addr(), free_addr());
    let (mut child, lines) = start_server(dir.path(), addr, admin);
    wait_for(&lines, "admin dashboard listening");
    let files = tempfile::tempdir().unwrap();
    backup(addr, files.path(), "alice", &[("report.txt", b"quarterly")]).await;
    let target = dir.path().join("catalog-copy.db");
    let run_backup = || {
        server_command(dir.path(), free_addr(), free_addr())
            .args(["catalog", "backup"])
            .arg(&target)
            .output()
            .unwrap()
    };

    let first = run_backup();
    let second = run_backup();
    stop(&mut child);

    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("catalog backed up to"),
        "{}",
        text(&first)
    );
    let mode = std::fs::metadata(&target).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let copy = Catalog::open(&target).await.unwrap();
    let clients = copy.list_clients().await.unwrap();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].name, b"alice");
    assert_ne!(second.status.code(), Some(0), "{}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("never overwritten"),
        "{}",
        text(&second)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_copy_moves_the_repository_objects_into_a_bucket_and_refuses_a_bad_target() {
    use cyberbackup_server::backend::local::{LocalBackend, LocalConfig};
    use cyberbackup_server::backend::s3::S3Backend;
    use cyberbackup_server::backend::{Backend, ContentHash, ObjectKey, PutBody};
    use futures_util::TryStreamExt;

    let Some(s3) = s3_server::S3Server::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    cyberbackup_server::storage::Storage::open(&data).unwrap();
    let local = LocalBackend::open(LocalConfig::new(data.join("repository"))).unwrap();
    let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 253) as u8).collect();
    let objects = [
        ("aa/packs/01/0102", bytes::Bytes::from(big)),
        (
            "aa/snapshots/0304",
            bytes::Bytes::from_static(b"sealed snapshot"),
        ),
    ];
    for (key, bytes) in &objects {
        let key = ObjectKey::new(*key).unwrap();
        local
            .put(&key, PutBody::Bytes(bytes.clone()), ContentHash::of(bytes))
            .await
            .unwrap();
    }
    let write_config = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let s3_target = write_config(
        "target.toml",
        &format!(
            "[storage]\nbackend = \"s3\"\nbucket = \"{}\"\nendpoint = \"http://{}\"\nregion = \"us-east-1\"\nprefix = \"moved\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\nallow_http = true\n",
            s3_server::BUCKET,
            s3.addr,
            s3_server::ACCESS_KEY,
            s3_server::SECRET_KEY
        ),
    );
    let no_storage = write_config("empty.toml", "port = 4000\n");
    let same = write_config("same.toml", "[storage]\nbackend = \"local\"\n");
    let copy = |target: &Path| {
        server_command(dir.path(), free_addr(), free_addr())
            .args(["storage", "copy", "--to-config"])
            .arg(target)
            .output()
            .unwrap()
    };

    let copied = copy(&s3_target);
    let rerun = copy(&s3_target);
    let missing = copy(&no_storage);
    let itself = copy(&same);

    assert_eq!(copied.status.code(), Some(0), "{}", text(&copied));
    assert!(
        String::from_utf8_lossy(&copied.stdout).contains("copied 2 objects"),
        "{}",
        text(&copied)
    );
    assert!(
        !text(&copied).contains(s3_server::SECRET_KEY),
        "{}",
        text(&copied)
    );
    let bucket = S3Backend::new(&s3.config(Some("moved"))).unwrap();
    let listed: Vec<_> = bucket.list(None).try_collect().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for (key, bytes) in &objects {
        let stored = bucket
            .get(&ObjectKey::new(*key).unwrap(), None)
            .await
            .unwrap();
        assert_eq!(&stored, bytes, "{key}");
    }
    assert_eq!(rerun.status.code(), Some(0), "{}", text(&rerun));
    assert!(
        String::from_utf8_lossy(&rerun.stdout)
            .contains("copied 0 objects (0 bytes), 2 already there"),
        "{}",
        text(&rerun)
    );
    assert_ne!(missing.status.code(), Some(0), "{}", text(&missing));
    assert!(
        text(&missing).contains("has no [storage] table"),
        "{}",
        text(&missing)
    );
    assert_ne!(itself.status.code(), Some(0), "{}", text(&itself));
    assert!(
        text(&itself).contains("this server's storage already"),
        "{}",
        text(&itself)
    );

    // `--check` asks the configured store for its first object, and names a wrong bucket.
    let wrong_bucket = write_config(
        "wrong.toml",
        &std::fs::read_to_string(&s3_target)
            .unwrap()
            .replace(s3_server::BUCKET, "no-such-bucket"),
    );
    let check_with = |config: &Path| {
        server_command(dir.path(), free_addr(), free_addr())
            .arg("--config")
            .arg(config)
            .arg("--check")
            .output()
            .unwrap()
    };
    let reachable = check_with(&s3_target);
    let unreachable = check_with(&wrong_bucket);
    assert_eq!(reachable.status.code(), Some(0), "{}", text(&reachable));
    assert!(
        String::from_utf8_lossy(&reachable.stdout).contains("ok    storage    s3 "),
        "{}",
        text(&reachable)
    );
    assert_eq!(unreachable.status.code(), Some(1), "{}", text(&unreachable));
    let report = String::from_utf8_lossy(&unreachable.stdout);
    assert!(
        report.contains("FAIL  storage    s3 no-such-bucket") && report.contains("bucket exists"),
        "{}",
        text(&unreachable)
    );
}

/// Issue 12 item 16: colour codes in the log only on a terminal, and never with `NO_COLOR`
/// set — the server's stderr on a real pseudo-terminal.
#[test]
fn the_log_is_coloured_on_a_terminal_unless_no_color_is_set() {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    use std::io::Read;

    for (no_color, coloured) in [(None, true), (Some("1"), false)] {
        let dir = tempfile::tempdir().unwrap();
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let slave_path = ptsname(&master, Vec::new()).unwrap();
        let slave = rustix::fs::open(
            slave_path.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let mut command = server_command(dir.path(), free_addr(), free_addr());
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(slave));
        let mut child = command.spawn().unwrap();
        drop(command);
        let (send, received) = mpsc::channel();
        let mut master = std::fs::File::from(master);
        std::thread::spawn(move || {
            let mut piece = [0u8; 4096];
            while let Ok(n) = master.read(&mut piece) {
                if n == 0 || send.send(piece[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        while !String::from_utf8_lossy(&log).contains("listening") {
            let piece = received.recv_timeout(START_TIMEOUT).unwrap_or_else(|e| {
                panic!("no start-up line: {e}: {}", String::from_utf8_lossy(&log))
            });
            log.extend(piece);
        }
        // The colour of the start-up lines is what is checked, not the shutdown.
        child.kill().unwrap();
        child.wait().unwrap();

        let text = String::from_utf8_lossy(&log);
        assert_eq!(
            text.contains("\x1b["),
            coloured,
            "NO_COLOR={no_color:?}:\n{text}"
        );
    }
}

/// `cyberbackup-server --check` with a data directory and port in `dir`.
fn check(dir: &Path, admin: SocketAddr) -> Output {
    server_command(dir, free_addr(), admin)
        .arg("--check")
        .output()
        .unwrap()
}

fn server_command(dir: &Path, addr: SocketAddr, admin: SocketAddr) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cyberbackup-server"));
    command
        .current_dir(dir)
        .args(["--listen", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--registrations-per-minute", "0", "--min-free-disk-mb", "1"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("CYBERBACKUP_CONFIG");
    command
}

/// Starts `run` with stderr on a pipe; its lines arrive on the returned channel.
fn start_server(
    dir: &Path,
    addr: SocketAddr,
    admin: SocketAddr,
) -> (Child, mpsc::Receiver<String>) {
    let mut child = server_command(dir, addr, admin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

/// Waits for a log line containing `marker`; returns the lines up to it.
fn wait_for(lines: &mpsc::Receiver<String>, marker: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = lines
            .recv_timeout(START_TIMEOUT)
            .unwrap_or_else(|e| panic!("no {marker:?} in the server log {seen:#?}: {e}"));
        let found = line.contains(marker);
        seen.push(line);
        if found {
            return seen;
        }
    }
}

/// SIGTERM, then waits for the graceful exit.
fn stop(child: &mut Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The number after ` name=` in a log line.
fn field(line: &str, name: &str) -> u64 {
    let marker = format!("{name}=");
    let at = line
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name}= in {line}"));
    line[at + marker.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
