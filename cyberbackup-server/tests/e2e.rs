//! End-to-end over real sockets on 127.0.0.1 with real SQLite files and storage in temp
//! directories: the reference server against a minimal tokio driver of `ClientSession`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use cyberbackup_core::crypto::ClientKeyPair;
use cyberbackup_core::identity::Identity;
use cyberbackup_core::names::NameField;
use cyberbackup_core::session::Output;
use cyberbackup_core::v3::{
    ClientConfig, ClientEffect, ClientEvent, ClientSession, FileId, FileSpec,
};
use cyberbackup_server::catalog::FileFilter;
use cyberbackup_server::{Catalog, Server, ServerConfig};
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(data: &Path) -> Running {
    // Generous: these tests check behaviour, and a loaded CI machine must not fail them.
    start_with_idle(data, 60).await
}

async fn start_with_idle(data: &Path, idle_timeout_secs: u64) -> Running {
    let config = ServerConfig {
        listen: Ipv4Addr::LOCALHOST.into(),
        port: 0,
        data_dir: data.to_path_buf(),
        idle_timeout_secs,
        shutdown_grace_secs: 5,
        // Every test client comes from 127.0.0.1: the per-address limit would refuse most.
        registrations_per_minute: 0,
        ..ServerConfig::default()
    };
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { server.serve(token).await.unwrap() });
    Running {
        addr,
        shutdown,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Drives a client session over a socket; returns events and the identity it saved.
async fn run_client(
    addr: SocketAddr,
    mut session: ClientSession<OsRng>,
    files: &BTreeMap<FileId, Vec<u8>>,
) -> (Vec<ClientEvent>, Option<Identity>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut events = Vec::new();
    let mut saved = None;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(bytes) => stream.write_all(&bytes).await.unwrap(),
                Output::Effect(ClientEffect::SaveIdentity(identity)) => {
                    saved = Some(*identity);
                    session.handle_identity_saved(now(), Ok(())).unwrap();
                }
                Output::Effect(ClientEffect::ReadFile { file, offset, max }) => {
                    let data = &files[&file];
                    let start = offset as usize;
                    let end = (start + max).min(data.len());
                    let piece = Bytes::copy_from_slice(&data[start..end]);
                    session.handle_file_data(now(), file, piece).unwrap();
                }
                Output::Effect(_) => {}
                Output::Event(event) => events.push(event),
                Output::Close(_) => return (events, saved),
            }
        }
        buf.reserve(64 * 1024);
        let read = stream.read_buf(&mut buf).await.unwrap();
        if read == 0 {
            session.handle_eof(now());
        } else {
            let _ = session.handle_bytes(now(), &mut buf);
        }
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

fn queue(
    session: &mut ClientSession<OsRng>,
    files: &[(&str, Vec<u8>)],
) -> BTreeMap<FileId, Vec<u8>> {
    let mut map = BTreeMap::new();
    for (name, data) in files {
        let id = session.backup(FileSpec {
            name: NameField::new(name.as_bytes().to_vec()).unwrap(),
            len: data.len() as u64,
        });
        map.insert(id, data.clone());
    }
    session.finish_when_idle();
    map
}

fn verified(events: &[ClientEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, ClientEvent::FileVerified { .. }))
        .count()
}

fn stored(data: &Path, identity: &Identity, name: &str) -> Vec<u8> {
    let path = data
        .join("files")
        .join(identity.client_id().to_hex())
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn leftovers(data: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in std::fs::read_dir(data.join("files")).unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let name = file.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with(".cb-partial") {
                found.push(name);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_upload_restart_reconnect_and_upload_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data).await;
    let config = Arc::new(ClientConfig {
        packet_content_len: 4096,
        ..ClientConfig::default()
    });
    let mut session = ClientSession::register(
        Arc::clone(&config),
        NameField::new(&b"alice"[..]).unwrap(),
        None,
        OsRng,
        now(),
    );
    let small = pattern(71, 1);
    let multi = pattern(100_000, 2);
    let files = queue(
        &mut session,
        &[
            ("small.txt", small.clone()),
            ("multi.bin", multi.clone()),
            ("empty", Vec::new()),
        ],
    );
    let (events, identity) = run_client(server.addr, session, &files).await;
    assert_eq!(verified(&events), 3, "{events:?}");
    let identity = identity.unwrap();
    assert_eq!(stored(&data, &identity, "small.txt"), small);
    assert_eq!(stored(&data, &identity, "multi.bin"), multi);
    assert_eq!(stored(&data, &identity, "empty"), Vec::<u8>::new());
    server.stop().await;

    // A restarted server knows the client: 1027 works, and a new version replaces the old.
    let server = start(&data).await;
    let mut session = ClientSession::reconnect(config, identity.clone(), OsRng, now());
    let newer = pattern(5000, 3);
    let files = queue(&mut session, &[("small.txt", newer.clone())]);
    let (events, saved) = run_client(server.addr, session, &files).await;
    assert!(saved.is_none(), "reconnect must not re-register");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::Reconnected { .. }))
    );
    assert_eq!(verified(&events), 1);
    assert_eq!(stored(&data, &identity, "small.txt"), newer);
    server.stop().await;

    let catalog = Catalog::open(data.join("defensive.db")).await.unwrap();
    let rows = catalog.list_files(FileFilter::default()).await.unwrap();
    let verified_rows = rows.iter().filter(|r| r.verified).count();
    // small.txt's first version stays as history beside the new one (keep_versions = 10).
    assert_eq!(verified_rows, 4, "{rows:?}");
    assert!(catalog.integrity_check().await.unwrap());
    assert!(leftovers(&data).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_upload_one_mebibyte_each() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data).await;
    let config = Arc::new(ClientConfig::default());
    // One pre-generated key for all (RSA key generation is not what this test measures).
    let key = ClientKeyPair::generate(&mut OsRng).unwrap();
    let keys = vec![key; 200];
    let mut tasks = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        let config = Arc::clone(&config);
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let name = format!("client-{i}");
            let mut session = ClientSession::register(
                config,
                NameField::new(name.into_bytes()).unwrap(),
                Some(key),
                OsRng,
                now(),
            );
            let content = pattern(1024 * 1024, i as u32);
            let files = queue(&mut session, &[("blob.bin", content.clone())]);
            let (events, identity) = run_client(addr, session, &files).await;
            (events, identity.unwrap(), content)
        }));
    }
    for task in tasks {
        let (events, identity, content) = task.await.unwrap();
        assert_eq!(verified(&events), 1, "{events:?}");
        assert_eq!(stored(&data, &identity, "blob.bin"), content);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_mid_file_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_with_idle(&data, 2).await;
    let config = Arc::new(ClientConfig::default());
    let mut session = ClientSession::register(
        Arc::clone(&config),
        NameField::new(&b"quitter"[..]).unwrap(),
        None,
        OsRng,
        now(),
    );
    let _ = queue(&mut session, &[]);
    let (_, identity) = run_client(server.addr, session, &BTreeMap::new()).await;
    let identity = identity.unwrap();
    // Reconnect, send the start of a file, then go silent (the idle timeout is 2 s).
    let mut session = ClientSession::reconnect(config, identity.clone(), OsRng, now());
    let files = queue(&mut session, &[("half.bin", pattern(3_000_000, 9))]);
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut sent = 0usize;
    let mut buf = BytesMut::new();
    'outer: loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(bytes) => {
                    stream.write_all(&bytes).await.unwrap();
                    sent += bytes.len();
                    if sent > 1_000_000 {
                        break 'outer;
                    }
                }
                Output::Effect(ClientEffect::ReadFile { file, offset, max }) => {
                    let data = &files[&file];
                    let end = (offset as usize + max).min(data.len());
                    let piece = Bytes::copy_from_slice(&data[offset as usize..end]);
                    session.handle_file_data(now(), file, piece).unwrap();
                }
                _ => {}
            }
        }
        stream.read_buf(&mut buf).await.unwrap();
        session.handle_bytes(now(), &mut buf).unwrap();
    }
    // The server drops the silent connection after its idle timeout.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut rest),
    )
    .await;
    assert!(closed.is_ok(), "server did not drop the idle connection");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(leftovers(&data).is_empty(), "{:?}", leftovers(&data));
    let client_dir = data.join("files").join(identity.client_id().to_hex());
    assert!(!client_dir.join("half.bin").exists());
    server.stop().await;
    let catalog = Catalog::open(data.join("defensive.db")).await.unwrap();
    let rows = catalog.list_files(FileFilter::default()).await.unwrap();
    assert!(rows.iter().all(|r| !r.verified), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_1607_and_close_while_a_good_client_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&data).await;
    let good = {
        let addr = server.addr;
        tokio::spawn(async move {
            let mut session = ClientSession::register(
                Arc::new(ClientConfig::default()),
                NameField::new(&b"good"[..]).unwrap(),
                None,
                OsRng,
                now(),
            );
            let files = queue(&mut session, &[("ok.bin", pattern(200_000, 4))]);
            run_client(addr, session, &files).await
        })
    };
    let mut bad = TcpStream::connect(server.addr).await.unwrap();
    let mut header = vec![0u8; 16];
    header.extend_from_slice(&[9, 0x01, 0x04, 0xff, 0, 0, 0]);
    bad.write_all(&header).await.unwrap();
    let mut reply = Vec::new();
    bad.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, [3, 0x47, 0x06, 0, 0, 0, 0], "1607 then close");
    let (events, _) = good.await.unwrap();
    assert_eq!(verified(&events), 1);
    server.stop().await;
}
