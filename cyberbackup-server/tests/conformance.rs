//! Conformance over real sockets (issue 3, "every conforming client form"): each real v3
//! client's byte layout, built by hand, against the running server on 127.0.0.1. Every case
//! checks the 1603 cksum, then 1029 → 1604, the stored file byte for byte and its verified
//! catalog row. Runtime: about 5 s in debug.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod support;

use cyberbackup_core::crypto::cbc_ciphertext_len;
use cyberbackup_core::names::ClientId;
use cyberbackup_core::v3::frame::{FileMeta, RequestCode};
use cyberbackup_server::Catalog;
use cyberbackup_server::catalog::FileFilter;
use support::*;

/// Sends `frames`, expects 1603 with the plaintext's cksum and `content_size`, then 1029 →
/// 1604, and checks the stored file.
async fn deliver(
    srv: &Running,
    raw: &mut Raw,
    file: &str,
    plain: &[u8],
    frames: &[Vec<u8>],
    content_size: u32,
) {
    for frame in frames {
        raw.send(frame).await;
    }
    let reply = raw.expect(FILE_RECEIVED).await;
    assert_eq!(cksum_of(&reply), cksum(plain), "{file}: cksum");
    assert_eq!(
        content_size_of(&reply),
        content_size,
        "{file}: content size"
    );
    assert_eq!(&reply.payload[..16], &raw.id.0);
    raw.verdict(RequestCode::CRC_OK, file.as_bytes()).await;
    let ack = raw.expect(ACK).await;
    assert_eq!(ack.payload, raw.id.0);
    let stored = std::fs::read(srv.stored_path(raw.id, file)).unwrap();
    assert!(stored == plain, "{file}: stored bytes differ");
}

/// One CBC stream cut into `packet_len`-byte packets; `per_packet_size` puts this packet's
/// length in `content_size` (Tom), else the total (H3, itay, our client); `empty_last` adds
/// H3's empty packet when the ciphertext is an exact multiple.
fn sliced(
    raw: &Raw,
    file: &str,
    plain: &[u8],
    packet_len: usize,
    per_packet_size: bool,
    empty_last: bool,
) -> Vec<Vec<u8>> {
    let cipher = encrypt(raw.aes(), plain);
    let mut chunks: Vec<&[u8]> = cipher.chunks(packet_len).collect();
    if empty_last && cipher.len() % packet_len == 0 {
        chunks.push(&[]);
    }
    let total = chunks.len() as u16;
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let size = if per_packet_size {
                chunk.len() as u32
            } else {
                cipher.len() as u32
            };
            let meta = FileMeta {
                content_size: size,
                orig_file_size: plain.len() as u32,
                packet_number: i as u16 + 1,
                total_packets: total,
                file_name: name(file.as_bytes()),
            };
            let frame = file_frame_core(raw.id, &meta, chunk);
            // The hand-built layout and the core's encoder agree byte for byte.
            assert_eq!(
                frame,
                file_frame(
                    raw.id,
                    size,
                    plain.len() as u32,
                    i as u16 + 1,
                    total,
                    file.as_bytes(),
                    chunk
                )
            );
            frame
        })
        .collect()
}

/// shlomi: every `plain_per_packet` bytes are their own CBC message; `content_size` and
/// `orig_file_size` are this packet's; `surplus` adds the encryption of nothing as packet
/// `T + 1` when the file is an exact multiple.
fn per_packet(
    raw: &Raw,
    file: &str,
    plain: &[u8],
    plain_per_packet: usize,
    surplus: bool,
) -> Vec<Vec<u8>> {
    let pieces: Vec<&[u8]> = plain.chunks(plain_per_packet).collect();
    let total = pieces.len() as u16;
    let mut frames: Vec<Vec<u8>> = pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let cipher = encrypt(raw.aes(), piece);
            file_frame(
                raw.id,
                cipher.len() as u32,
                piece.len() as u32,
                i as u16 + 1,
                total,
                file.as_bytes(),
                &cipher,
            )
        })
        .collect();
    if surplus && plain.len() % plain_per_packet == 0 {
        let cipher = encrypt(raw.aes(), &[]);
        frames.push(file_frame(
            raw.id,
            16,
            0,
            total + 1,
            total,
            file.as_bytes(),
            &cipher,
        ));
    }
    frames
}

/// urihor: every packet's content is exactly 65 269 bytes, zero-padded;
/// `content_size` is the total ciphertext.
fn urihor(raw: &Raw, file: &str, plain: &[u8]) -> Vec<Vec<u8>> {
    const FIXED: usize = 65_269;
    let cipher = encrypt(raw.aes(), plain);
    let chunks: Vec<&[u8]> = cipher.chunks(FIXED).collect();
    let total = chunks.len() as u16;
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut padded = chunk.to_vec();
            padded.resize(FIXED, 0);
            file_frame(
                raw.id,
                cipher.len() as u32,
                plain.len() as u32,
                i as u16 + 1,
                total,
                file.as_bytes(),
                &padded,
            )
        })
        .collect()
}

fn ct(len: usize) -> u32 {
    cbc_ciphertext_len(len as u64) as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conforming_client_form_is_stored_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("data")).await;
    let keys = keys();
    let mut raw = Raw::keyed(srv.addr, b"forms", &keys).await;

    // H3: 1024-byte slices, total content_size, 9 packets.
    let p = pattern(9000, 1);
    let f = sliced(&raw, "h3.bin", &p, 1024, false, true);
    assert_eq!(f.len(), 9);
    deliver(&srv, &mut raw, "h3.bin", &p, &f, 9008).await;
    // H3 empty last packet: 2 032 B → 2 048 ciphertext, T = 3 with an empty packet 3.
    let p = pattern(2032, 2);
    let f = sliced(&raw, "h3-empty-last.bin", &p, 1024, false, true);
    assert_eq!(f.len(), 3);
    deliver(&srv, &mut raw, "h3-empty-last.bin", &p, &f, 2048).await;
    // H3 empty last packet with a ciphertext of exactly 1 024 (classified per-packet).
    let p = pattern(1008, 3);
    let f = sliced(&raw, "h3-1008.bin", &p, 1024, false, true);
    assert_eq!(f.len(), 2);
    deliver(&srv, &mut raw, "h3-1008.bin", &p, &f, 1024).await;
    // Tom: 1 MiB slices, content_size = this packet's length, orig = total.
    let p = pattern(2_500_000, 4);
    let f = sliced(&raw, "tom.bin", &p, 1 << 20, true, false);
    assert_eq!(f.len(), 3);
    deliver(&srv, &mut raw, "tom.bin", &p, &f, ct(p.len())).await;
    // Our client's default: 1 MiB slices, total sizes.
    let f = sliced(&raw, "mib.bin", &p, 1 << 20, false, false);
    deliver(&srv, &mut raw, "mib.bin", &p, &f, ct(p.len())).await;
    // shlomi: 4 000 plaintext bytes per packet, each its own CBC message.
    let p = pattern(9000, 5);
    let f = per_packet(&raw, "shlomi.bin", &p, 4000, true);
    assert_eq!(f.len(), 3);
    deliver(&srv, &mut raw, "shlomi.bin", &p, &f, 4016 + 4016 + 1008).await;
    // shlomi surplus: 8 000 B (a multiple of 4 000) → packets 1, 2 and a surplus packet 3.
    let p = pattern(8000, 6);
    let f = per_packet(&raw, "shlomi-surplus.bin", &p, 4000, true);
    assert_eq!(f.len(), 3);
    deliver(&srv, &mut raw, "shlomi-surplus.bin", &p, &f, 2 * 4016).await;
    // urihor: one packet of 65 269 zero-padded bytes.
    let p = pattern(71, 7);
    let f = urihor(&raw, "urihor-small.bin", &p);
    assert_eq!(f.len(), 1);
    deliver(&srv, &mut raw, "urihor-small.bin", &p, &f, 80).await;
    // urihor multi-packet.
    let p = pattern(100_000, 8);
    let f = urihor(&raw, "urihor-multi.bin", &p);
    assert_eq!(f.len(), 2);
    deliver(&srv, &mut raw, "urihor-multi.bin", &p, &f, 100_016).await;
    // 4 000-byte ciphertext packets, sliced, total sizes.
    let p = pattern(12_345, 9);
    let f = sliced(&raw, "4000.bin", &p, 4000, false, false);
    deliver(&srv, &mut raw, "4000.bin", &p, &f, ct(p.len())).await;
    // Empty file: one packet of 16 bytes.
    let f = sliced(&raw, "empty", &[], 1024, false, false);
    assert_eq!(f.len(), 1);
    deliver(&srv, &mut raw, "empty", &[], &f, 16).await;
    // Exact multiple of the packet size without an empty packet: 4 096 B → 4 112 ciphertext.
    let p = pattern(4096, 10);
    let f = sliced(&raw, "exact.bin", &p, 1024, false, false);
    assert_eq!(f.len(), 5);
    deliver(&srv, &mut raw, "exact.bin", &p, &f, 4112).await;
    // Ciphertext an exact multiple of 1 024 with per-packet sizes (Tom style).
    let p = pattern(4080, 11);
    let f = sliced(&raw, "tom-exact.bin", &p, 1024, true, false);
    assert_eq!(f.len(), 4);
    deliver(&srv, &mut raw, "tom-exact.bin", &p, &f, 4096).await;

    let id = raw.id;
    drop(raw);
    srv.stop().await;
    let catalog = Catalog::open(dir.path().join("data").join("defensive.db"))
        .await
        .unwrap();
    let rows = catalog
        .list_files(FileFilter {
            verified: Some(true),
            ..FileFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rows.len(), 13, "{rows:?}");
    assert!(rows.iter().all(|r| r.client_id == id.0));
    assert!(partials(&dir.path().join("data")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_ids_of_zeros_or_ascii_zeros_register() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("data")).await;
    let keys = keys();
    for (header_id, client) in [
        (ClientId::ZERO, &b"zeros"[..]),
        (ClientId([b'0'; 16]), &b"ascii-zeros"[..]),
    ] {
        let mut raw = Raw::connect(srv.addr).await;
        let reply = raw.register(header_id, client).await;
        assert_eq!(reply.code, REGISTERED);
        assert_ne!(raw.id, header_id, "the server assigns a fresh id");
        assert_eq!(raw.send_key(client, &keys).await.code, KEY_ACCEPTED);
        raw.upload_verified(b"a.txt", b"hello").await;
        assert_eq!(
            std::fs::read(srv.stored_path(raw.id, "a.txt")).unwrap(),
            b"hello"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crc_retry_then_resend_and_crc_abort() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("data")).await;
    let keys = keys();
    let mut raw = Raw::keyed(srv.addr, b"retry", &keys).await;
    let first = pattern(5000, 1);

    // 1030: no reply, the file is discarded, the resend is a new transfer.
    let reply = raw.upload(b"r.bin", &first, 1024).await;
    assert_eq!(reply.code, FILE_RECEIVED);
    raw.verdict(RequestCode::CRC_RETRY, b"r.bin").await;
    assert!(raw.silent_for(std::time::Duration::from_millis(300)).await);
    assert!(!srv.stored_path(raw.id, "r.bin").exists());
    let reply = raw.upload(b"r.bin", &first, 4000).await;
    assert_eq!(reply.code, FILE_RECEIVED);
    assert_eq!(cksum_of(&reply), cksum(&first));
    raw.verdict(RequestCode::CRC_OK, b"r.bin").await;
    raw.expect(ACK).await;
    assert_eq!(
        std::fs::read(srv.stored_path(raw.id, "r.bin")).unwrap(),
        first
    );

    // 1031: acknowledged, discarded; the verified version stays.
    let reply = raw.upload(b"r.bin", &pattern(777, 2), 1024).await;
    assert_eq!(reply.code, FILE_RECEIVED);
    raw.verdict(RequestCode::CRC_ABORT, b"r.bin").await;
    raw.expect(ACK).await;
    let reply = raw.upload(b"gone.bin", b"never kept", 1024).await;
    assert_eq!(reply.code, FILE_RECEIVED);
    raw.verdict(RequestCode::CRC_ABORT, b"gone.bin").await;
    raw.expect(ACK).await;
    assert_eq!(
        std::fs::read(srv.stored_path(raw.id, "r.bin")).unwrap(),
        first
    );
    assert!(!srv.stored_path(raw.id, "gone.bin").exists());
    assert!(partials(&srv.data).is_empty());
    drop(raw);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_before_its_key_can_register_again() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("data")).await;
    let keys = keys();
    // 1600, then the connection dies before 1026.
    let mut first = Raw::connect(srv.addr).await;
    assert_eq!(
        first.register(ClientId::ZERO, b"cutoff").await.code,
        REGISTERED
    );
    let stale_id = first.id;
    drop(first);

    // Its next run: 1027 with the saved id is refused (no key), then 1025 succeeds.
    let mut raw = Raw::connect(srv.addr).await;
    let refused = raw.reconnect(stale_id, b"cutoff", &keys).await;
    assert_eq!(refused.code, RECONNECT_REFUSED);
    let again = raw.register(ClientId::ZERO, b"cutoff").await;
    assert_eq!(
        again.code, REGISTERED,
        "keyless registration must be replaceable"
    );
    assert_ne!(raw.id, stale_id);
    assert_eq!(raw.send_key(b"cutoff", &keys).await.code, KEY_ACCEPTED);
    raw.upload_verified(b"f.txt", b"after all").await;
    let new_id = raw.id;
    drop(raw);

    // Once keyed, the name is protected again: 1025 gets 1601.
    let mut other = Raw::connect(srv.addr).await;
    assert_eq!(
        other.register(ClientId::ZERO, b"cutoff").await.code,
        NAME_TAKEN
    );
    drop(other);
    srv.stop().await;

    let catalog = Catalog::open(dir.path().join("data").join("defensive.db"))
        .await
        .unwrap();
    let clients = catalog.list_clients().await.unwrap();
    let ids: Vec<_> = clients.iter().map(|c| c.id).collect();
    assert_eq!(ids, [new_id.0], "the stale keyless row is gone");
}
