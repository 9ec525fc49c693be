#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `cyberbackup-client` binary over protocol v4 (its default): `backup` registers and
//! uploads, `list` shows versions, `restore` writes a verified copy, `--protocol v3` is
//! refused for a v4 identity, and a wrong `--server-fingerprint` fails with both
//! fingerprints. The server is the core's v4 `ServerSession` over a real 127.0.0.1 socket
//! with the in-memory store (the real server is covered by cyberbackup-server's v4_e2e).
//! Runs in about 2 s.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use assert_cmd::Command;
use bytes::BytesMut;
use cyberbackup_core::v4::Output;
use cyberbackup_core::v4::noise::StaticKeypair;
use cyberbackup_core::v4::server::{ServerConfig, ServerSession};
use cyberbackup_core::v4::testing::MemStore;
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SERVER_KEY: [u8; 32] = [0x31; 32];

/// Serves v4 connections one at a time with one shared in-memory store.
fn start_server() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let store = Arc::new(Mutex::new(MemStore::default()));
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut session = ServerSession::new(
                    Arc::new(ServerConfig::default()),
                    StaticKeypair::from_private(SERVER_KEY),
                    OsRng,
                    Instant::now(),
                );
                let mut buf = BytesMut::new();
                'conn: loop {
                    loop {
                        let mut answered = false;
                        while let Some(out) = session.poll_output() {
                            match out {
                                Output::Transmit(bytes) => {
                                    if stream.write_all(&bytes).await.is_err() {
                                        break 'conn;
                                    }
                                }
                                Output::Effect(effect) => {
                                    answered |= effect.needs_answer();
                                    let mut store = store.lock().unwrap();
                                    let _ = store.perform(&mut session, effect, Instant::now());
                                }
                                Output::Event(_) => {}
                                Output::Close(_) => break 'conn,
                            }
                        }
                        if !answered {
                            break;
                        }
                        let _ = session.handle_bytes(Instant::now(), &mut buf);
                    }
                    match stream.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => session.handle_eof(Instant::now()),
                        Ok(_) => {
                            let _ = session.handle_bytes(Instant::now(), &mut buf);
                        }
                    }
                }
                store.lock().unwrap().end_connection();
            }
        });
    });
    rx.recv().unwrap()
}

fn client(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("cyberbackup-client").unwrap();
    cmd.current_dir(dir)
        .env_remove("CYBERBACKUP_SERVER")
        .env_remove("CYBERBACKUP_NAME")
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("config"));
    cmd
}

#[test]
fn backup_list_and_restore_over_v4_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let addr = start_server().to_string();
    let file = dir.path().join("report.txt");
    let identity = dir.path().join("id-v4.json");
    let id = identity.to_str().unwrap();

    std::fs::write(&file, b"first version").unwrap();
    let first = client(dir.path())
        .args([
            "backup",
            file.to_str().unwrap(),
            "--server",
            &addr,
            "--name",
            "alice",
        ])
        .args(["--v4-identity", id])
        .output()
        .unwrap();
    std::fs::write(&file, b"second, longer version").unwrap();
    let second = client(dir.path())
        .args([
            "backup",
            file.to_str().unwrap(),
            "--server",
            &addr,
            "--name",
            "alice",
        ])
        .args(["--v4-identity", id])
        .output()
        .unwrap();
    let list = client(dir.path())
        .args(["list", "--server", &addr, "--v4-identity", id, "--json"])
        .output()
        .unwrap();
    let out = dir.path().join("old.txt");
    let restore = client(dir.path())
        .args(["restore", "report.txt", "--version", "1", "--server", &addr])
        .args(["--v4-identity", id, "--output", out.to_str().unwrap()])
        .output()
        .unwrap();
    let missing = client(dir.path())
        .args([
            "restore",
            "nope.txt",
            "--server",
            &addr,
            "--v4-identity",
            id,
        ])
        .output()
        .unwrap();

    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("version 1"));
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("version 2"));
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let versions: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"first version");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such file"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&identity).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn v3_is_refused_for_a_v4_identity_and_a_wrong_pin_names_both_keys() {
    let dir = tempfile::tempdir().unwrap();
    let addr = start_server().to_string();
    let file = dir.path().join("a.txt");
    std::fs::write(&file, b"x").unwrap();
    let identity = dir.path().join("id-v4.json");
    let id = identity.to_str().unwrap();
    let ok = client(dir.path())
        .args([
            "backup",
            file.to_str().unwrap(),
            "--server",
            &addr,
            "--name",
            "bob",
        ])
        .args(["--v4-identity", id])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let v3 = client(dir.path())
        .args([
            "backup",
            file.to_str().unwrap(),
            "--server",
            &addr,
            "--name",
            "bob",
        ])
        .args(["--v4-identity", id, "--protocol", "v3"])
        .output()
        .unwrap();
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let pinned = client(dir.path())
        .args(["list", "--server", &addr, "--server-fingerprint", &wrong])
        .args([
            "--v4-identity",
            dir.path().join("other.json").to_str().unwrap(),
        ])
        .args(["--name", "carol"])
        .output()
        .unwrap();

    assert_eq!(v3.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&v3.stderr).contains("never fall back to v3"),
        "{}",
        String::from_utf8_lossy(&v3.stderr)
    );
    let real = StaticKeypair::from_private(SERVER_KEY)
        .public()
        .fingerprint();
    let stderr = String::from_utf8_lossy(&pinned.stderr);
    assert_eq!(pinned.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&wrong) && stderr.contains(&real.to_string()),
        "{stderr}"
    );
}
