//! Crash consistency: the server binary runs as a child process while several clients
//! upload; the test `kill -9`s it at seeded random moments, restarts it and checks:
//! every file acknowledged with 1604 exists with its recorded SHA-256 and content; no temp
//! file or unfinished row survives the restart's recovery (a planted stray temp file is
//! removed too); `PRAGMA integrity_check` passes; a verified version is only ever replaced
//! by a version the client confirmed with 1029.
//!
//! `CRASH_SEED` (default 0x5EED) makes a run reproducible; `CRASH_ITERATIONS` (default 30)
//! runs longer. Runtime: about 30–60 s in debug for 30 iterations.
#![allow(
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cyberbackup_core::crypto::ClientKeyPair;
use cyberbackup_core::names::ClientId;
use cyberbackup_server::Catalog;
use cyberbackup_server::catalog::{FileFilter, FileState};
use sha2::{Digest, Sha256};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 4;
const NAMES: [&str; 3] = ["a.bin", "b.txt", "CON"];

/// What the clients know about one (client, file name).
#[derive(Debug, Default, Clone)]
struct Known {
    /// SHA-256 of the last version acknowledged with 1604.
    acked: Option<[u8; 32]>,
    /// Versions confirmed with 1029 whose 1604 was not seen (the crash came first).
    pending: Vec<[u8; 32]>,
}

type Model = Arc<Mutex<BTreeMap<(usize, &'static str), Known>>>;

struct Identity {
    name: String,
    id: ClientId,
    keys: ClientKeyPair,
}

fn spawn_server(data: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cyberbackup-server"))
        .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(data)
        .args(["--registrations-per-minute", "0", "--min-free-disk-mb", "1"])
        // The model keeps one version per name.
        .args(["--keep-versions", "1"])
        .env("CYBERBACKUP_ADMIN_ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn read_reply(stream: &mut TcpStream) -> Option<Reply> {
    let read = async {
        let mut head = [0u8; 7];
        stream.read_exact(&mut head).await.ok()?;
        let code = u16::from_le_bytes([head[1], head[2]]);
        let len = u32::from_le_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0u8; len.min(4096)];
        stream.read_exact(&mut payload).await.ok()?;
        Some(Reply { code, payload })
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}

/// One client's session: reconnect, then upload random versions until the server dies.
async fn client_session(
    addr: SocketAddr,
    who: usize,
    ident: Arc<Identity>,
    seed: u64,
    model: Model,
    verdict_sent: Arc<tokio::sync::Notify>,
) {
    let mut rng = SplitMix64(seed);
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return;
    };
    let hello = request(
        ident.id,
        &cyberbackup_core::v3::frame::Request::Reconnect {
            name: name(ident.name.as_bytes()),
        },
    );
    if stream.write_all(&hello).await.is_err() {
        return;
    }
    let Some(reply) = read_reply(&mut stream).await else {
        return;
    };
    assert_eq!(reply.code, RECONNECTED, "reconnect refused after a crash");
    let key = ident
        .keys
        .unwrap_session_key(&mut rand_core::OsRng, &reply.payload[16..])
        .unwrap();
    loop {
        let file = NAMES[rng.below(NAMES.len() as u64) as usize];
        let len = match rng.below(4) {
            0 => rng.below(64) as usize,
            1 => rng.below(4096) as usize,
            _ => rng.below(300_000) as usize,
        };
        let plain = pattern(len, rng.next() as u32);
        let sha: [u8; 32] = Sha256::digest(&plain).into();
        let cipher = encrypt(&key, &plain);
        let packet = [1024usize, 4096, 65_536][rng.below(3) as usize];
        let chunks: Vec<&[u8]> = cipher.chunks(packet).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let frame = file_frame(
                ident.id,
                cipher.len() as u32,
                plain.len() as u32,
                i as u16 + 1,
                chunks.len() as u16,
                file.as_bytes(),
                chunk,
            );
            if stream.write_all(&frame).await.is_err() {
                return;
            }
        }
        let Some(received) = read_reply(&mut stream).await else {
            return;
        };
        assert_eq!(received.code, FILE_RECEIVED);
        assert_eq!(cksum_of(&received), cksum(&plain));
        let verdict = request(
            ident.id,
            &cyberbackup_core::v3::frame::Request::CrcOk {
                file_name: name(file.as_bytes()),
            },
        );
        model
            .lock()
            .unwrap()
            .entry((who, file))
            .or_default()
            .pending
            .push(sha);
        if stream.write_all(&verdict).await.is_err() {
            return;
        }
        verdict_sent.notify_one();
        let Some(ack) = read_reply(&mut stream).await else {
            return;
        };
        assert_eq!(ack.code, ACK);
        let mut model = model.lock().unwrap();
        let known = model.entry((who, file)).or_default();
        known.acked = Some(sha);
        known.pending.clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_never_loses_or_corrupts_a_verified_file() {
    let seed = seed_from_env("CRASH_SEED", 0x5EED);
    let iterations: usize = std::env::var("CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    eprintln!("crash test: CRASH_SEED={seed:#x} CRASH_ITERATIONS={iterations}");
    let mut rng = SplitMix64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Register the clients once, on a server that is not killed.
    let mut child = spawn_server(&data, port);
    wait_ready(addr, &mut child).await;
    let keys = keys();
    let mut idents = Vec::new();
    for i in 0..CLIENTS {
        let client = format!("crash-{i}");
        let raw = Raw::keyed(addr, client.as_bytes(), &keys).await;
        idents.push(Arc::new(Identity {
            name: client,
            id: raw.id,
            keys: keys.clone(),
        }));
    }
    let model: Model = Arc::default();
    let mut stats = Stats::default();

    for iteration in 0..iterations {
        let verdict_sent = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for (who, ident) in idents.iter().enumerate() {
            tasks.push(tokio::spawn(client_session(
                addr,
                who,
                Arc::clone(ident),
                rng.next(),
                Arc::clone(&model),
                Arc::clone(&verdict_sent),
            )));
        }
        if iteration % 2 == 0 {
            // Any moment: mid-file, between files, during start-up of the sessions.
            tokio::time::sleep(Duration::from_millis(20 + rng.below(700))).await;
        } else {
            // Aim at the commit: a few hundred microseconds to a few milliseconds after
            // the n-th 1029 left a client, while the server renames and records.
            for _ in 0..=rng.below(6) {
                let _ = tokio::time::timeout(Duration::from_secs(5), verdict_sent.notified()).await;
            }
            spin(Duration::from_micros(rng.below(4000)));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("client did not notice the crash")
                .unwrap();
        }
        // A stray temp file, as a crash in the middle of creating one would leave.
        let stray_dir = data.join("files").join(idents[0].id.to_hex());
        std::fs::create_dir_all(&stray_dir).unwrap();
        std::fs::write(stray_dir.join(".cb-partial-stray-from-test"), b"x").unwrap();

        child = spawn_server(&data, port);
        wait_ready(addr, &mut child).await;
        check(&data, &idents, &model, &mut stats)
            .await
            .unwrap_or_else(|e| panic!("iteration {iteration}, CRASH_SEED={seed:#x}: {e}"));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "crash test: {iterations} kill -9 survived; {} acknowledged versions checked, {} \
         unacknowledged commits finished, {} rolled back",
        stats.checked, stats.pending_finished, stats.pending_rolled_back
    );
    assert!(stats.checked > 0, "no upload was ever acknowledged");
}

#[derive(Debug, Default)]
struct Stats {
    checked: usize,
    pending_finished: usize,
    pending_rolled_back: usize,
}

async fn check(
    data: &Path,
    idents: &[Arc<Identity>],
    model: &Model,
    stats: &mut Stats,
) -> Result<(), String> {
    let leftovers = partials(data);
    if !leftovers.is_empty() {
        return Err(format!("temp files survived recovery: {leftovers:?}"));
    }
    let catalog = Catalog::open(data.join("defensive.db"))
        .await
        .map_err(|e| e.to_string())?;
    if !catalog.integrity_check().await.map_err(|e| e.to_string())? {
        return Err("PRAGMA integrity_check failed".into());
    }
    let rows = catalog
        .list_files(FileFilter {
            limit: 10_000,
            ..FileFilter::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    if let Some(row) = rows.iter().find(|r| r.state != FileState::Verified) {
        return Err(format!("unfinished row survived recovery: {row:?}"));
    }
    let mut model = model.lock().unwrap();
    for (who, ident) in idents.iter().enumerate() {
        for file in NAMES {
            let known = model.entry((who, file)).or_default();
            let current: Vec<_> = rows
                .iter()
                .filter(|r| r.client_id == ident.id.0 && r.file_name == file.as_bytes())
                .collect();
            let allowed: Vec<[u8; 32]> =
                known.acked.iter().chain(&known.pending).copied().collect();
            match current.as_slice() {
                [] if allowed.is_empty() => continue,
                [] if known.acked.is_none() => {
                    stats.pending_rolled_back += known.pending.len();
                    known.pending.clear();
                    continue;
                }
                [] => return Err(format!("acknowledged {file} of client {who} is gone")),
                [row] => {
                    let sha: [u8; 32] = row
                        .sha256
                        .as_deref()
                        .and_then(|s| s.try_into().ok())
                        .ok_or("verified row without SHA-256")?;
                    if !allowed.contains(&sha) {
                        return Err(format!(
                            "{file} of client {who}: verified content was never confirmed by the client"
                        ));
                    }
                    let path: PathBuf = data.join("files").join(&row.path_name);
                    let content =
                        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    if <[u8; 32]>::from(Sha256::digest(&content)) != sha {
                        return Err(format!(
                            "{}: content does not match the catalog SHA-256",
                            path.display()
                        ));
                    }
                    if known.acked == Some(sha) {
                        stats.checked += 1;
                        stats.pending_rolled_back += known.pending.len();
                    } else {
                        stats.pending_finished += 1;
                    }
                    known.acked = Some(sha);
                    known.pending.clear();
                }
                many => return Err(format!("{} verified rows for {file}", many.len())),
            }
        }
    }
    Ok(())
}
