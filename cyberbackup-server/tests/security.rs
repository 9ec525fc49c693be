//! Security checks: v3 impersonation through 1026 cannot replace a victim's verified file;
//! keys never appear in the server's logs (the binary at `RUST_LOG=trace`, stderr captured);
//! the server refuses a world-writable storage directory. Runtime: about 3 s in debug.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use cyberbackup_core::crypto::ClientKeyPair;
use cyberbackup_core::v3::frame::RequestCode;
use rand_core::OsRng;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_with_the_attackers_own_key_cannot_replace_a_verified_file() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("data")).await;
    let victim_keys = keys();
    let mut victim = Raw::keyed(srv.addr, b"victim", &victim_keys).await;
    victim
        .upload_verified(b"thesis.pdf", b"the only copy")
        .await;
    let victim_id = victim.id;
    drop(victim);

    // The attacker knows the id and the name and sends its own key with 1026.
    let attacker_keys = ClientKeyPair::generate(&mut OsRng).unwrap();
    let mut attacker = Raw::connect(srv.addr).await;
    attacker.id = victim_id;
    let reply = attacker.send_key(b"victim", &attacker_keys).await;
    assert_eq!(
        reply.code, SERVER_ERROR,
        "1026 for a keyed client is refused"
    );
    assert!(attacker.key.is_none());
    // Without a session key its file is refused too.
    attacker
        .send(&file_frame(
            victim_id,
            16,
            4,
            1,
            1,
            b"thesis.pdf",
            &[0u8; 16],
        ))
        .await;
    assert_eq!(attacker.reply().await.unwrap().code, SERVER_ERROR);
    attacker.verdict(RequestCode::CRC_OK, b"thesis.pdf").await;
    assert_eq!(attacker.reply().await.unwrap().code, SERVER_ERROR);

    // The victim still reconnects with its own key and its file is untouched.
    let mut back = Raw::connect(srv.addr).await;
    assert_eq!(
        back.reconnect(victim_id, b"victim", &victim_keys)
            .await
            .code,
        RECONNECTED
    );
    assert_eq!(
        std::fs::read(srv.stored_path(victim_id, "thesis.pdf")).unwrap(),
        b"the only copy"
    );
    // Re-sending the same key (a client retrying its 1026) stays harmless.
    assert_eq!(
        back.send_key(b"victim", &victim_keys).await.code,
        KEY_ACCEPTED
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_appear_in_trace_logs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_cyberbackup-server"))
        .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .args(["--registrations-per-minute", "0", "--min-free-disk-mb", "1"])
        .env("CYBERBACKUP_ADMIN_ENABLED", "false")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut ready = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "server did not start");

    // A full session: register, key exchange, two files, reconnect with a new AES key.
    let keys = keys();
    let mut raw = Raw::keyed(addr, b"secretive", &keys).await;
    raw.upload_verified(b"a.txt", &pattern(70_000, 1)).await;
    let first_aes = raw.aes().as_bytes().to_vec();
    let id = raw.id;
    drop(raw);
    let mut again = Raw::connect(addr).await;
    assert_eq!(
        again.reconnect(id, b"secretive", &keys).await.code,
        RECONNECTED
    );
    again.upload_verified(b"b.txt", b"second").await;
    let second_aes = again.aes().as_bytes().to_vec();
    drop(again);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "no trace output captured"
    );
    assert!(log.contains(&id.to_hex()), "the session is not in the log");

    let private = keys.to_pkcs8_der().unwrap().to_vec();
    let public = keys.public_key().to_spki_der().unwrap();
    let mut secrets: Vec<(&str, Vec<u8>)> = vec![
        ("AES key of 1602", first_aes),
        ("AES key of 1605", second_aes),
    ];
    // Any 24-byte window of the key DERs (a partial dump is a leak too).
    for (label, der) in [("private key", &private), ("public key", &public)] {
        for start in (0..der.len().saturating_sub(24)).step_by(24) {
            secrets.push((label, der[start..start + 24].to_vec()));
        }
    }
    for (label, bytes) in &secrets {
        let forms = [
            hex::encode(bytes),
            hex::encode_upper(bytes),
            base64(bytes),
            format!("{bytes:?}"),
        ];
        for form in forms {
            // Base64 of a window depends on alignment: strip the padding and the last char.
            let needle = form.trim_end_matches('=');
            let needle = &needle[..needle.len().saturating_sub(1)];
            assert!(
                !log.contains(needle),
                "{label} found in the log as {needle}"
            );
        }
    }
}

#[test]
fn a_world_writable_storage_directory_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_cyberbackup-server"))
        .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .env("CYBERBACKUP_ADMIN_ENABLED", "false")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(74), "{stderr}");
    assert!(stderr.contains("world-writable"), "{stderr}");
    assert!(
        stderr.contains("chmod o-w"),
        "the message says how to fix it: {stderr}"
    );
    assert!(!data.join("defensive.db").exists(), "nothing created in it");
}

/// Standard Base64 with padding (RFC 4648), enough for the log check.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
