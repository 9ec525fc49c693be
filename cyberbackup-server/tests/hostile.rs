//! Hostile input catalogue over real sockets: every malformed or malicious input with its
//! expected outcome, while a well-behaved client uploads at the same time. At the end nothing
//! exists under `files/` but the well-behaved uploads, the probes and the odd-but-legal names
//! under their mapped names. Runtime: about 10 s in debug (the 2 000 idle connections wait
//! for a 1 s idle timeout).
#![allow(
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use cyberbackup_core::names::ClientId;
use cyberbackup_core::v3::frame::{Request, RequestCode};
use cyberbackup_server::faults::Faults;
use support::*;
use tokio::io::AsyncWriteExt;

/// What the server must do with an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 1607, then the connection is closed (framing can no longer be trusted).
    ErrorThenClose,
    /// 1607 and the connection stays usable (checked with a probe upload when keyed).
    ErrorKeepOpen,
    /// No reply; the connection is closed (the input ended inside a frame).
    CloseSilently,
    /// Accepted: 1603 with the right cksum, then 1029 → 1604; stored under this name.
    StoredAs(&'static str),
}

#[derive(Clone, Copy)]
enum Conn {
    /// A fresh connection.
    Fresh,
    /// Registered and keyed.
    Keyed,
}

type Build = Box<dyn Fn(&Raw) -> Vec<u8>>;

struct Case {
    label: String,
    conn: Conn,
    input: Build,
    /// Half-close after sending (the input is all there is).
    eof: bool,
    expect: Expect,
}

fn case(label: impl Into<String>, conn: Conn, expect: Expect, input: Build) -> Case {
    Case {
        label: label.into(),
        conn,
        input,
        eof: false,
        expect,
    }
}

fn register_frame() -> Vec<u8> {
    request(ClientId::ZERO, &Request::Register { name: name(b"x") })
}

/// One complete single-packet file in the default form.
fn one_packet(raw: &Raw, file: &[u8], plain: &[u8]) -> Vec<u8> {
    let cipher = encrypt(raw.aes(), plain);
    file_frame(
        raw.id,
        cipher.len() as u32,
        plain.len() as u32,
        1,
        1,
        file,
        &cipher,
    )
}

/// Packet `n` of `total` of a sliced file, 16 bytes of ciphertext each.
fn packet(raw: &Raw, file: &[u8], n: u16, total: u16, orig: u32) -> Vec<u8> {
    let cipher = encrypt(raw.aes(), &vec![7u8; usize::from(total) * 16 - 1]);
    let start = usize::from(n.max(1) - 1) * 16;
    let piece = cipher.get(start..start + 16).unwrap_or(&cipher[..16]);
    file_frame(raw.id, cipher.len() as u32, orig, n, total, file, piece)
}

fn catalogue() -> Vec<Case> {
    use Conn::{Fresh, Keyed};
    use Expect::*;
    let mut cases = Vec::new();
    // Truncated header at every byte, then EOF.
    for cut in 1..23 {
        let mut c = case(
            format!("header truncated after {cut} bytes"),
            Fresh,
            CloseSilently,
            Box::new(move |_| register_frame()[..cut].to_vec()),
        );
        c.eof = true;
        cases.push(c);
    }
    // Payload cut short, then EOF.
    let mut c = case(
        "1025 payload truncated",
        Fresh,
        CloseSilently,
        Box::new(|_| register_frame()[..100].to_vec()),
    );
    c.eof = true;
    cases.push(c);
    // Payload sizes 0, just over each per-code limit, and 4 GiB.
    for code in [1025u16, 1026, 1027, 1028, 1029, 1030, 1031] {
        cases.push(case(
            format!("{code} with payload size 0"),
            Fresh,
            ErrorThenClose,
            Box::new(move |_| header(ClientId::ZERO, 3, code, 0)),
        ));
    }
    for (code, over) in [
        (1025u16, 256u32),
        (1026, 556),
        (1027, 256),
        (1029, 256),
        (1030, 256),
        (1031, 256),
    ] {
        cases.push(case(
            format!("{code} with payload {over} (one over the limit)"),
            Fresh,
            ErrorThenClose,
            Box::new(move |_| header(ClientId::ZERO, 3, code, over)),
        ));
    }
    cases.push(case(
        "1025 announcing 4 GiB",
        Fresh,
        ErrorThenClose,
        Box::new(|_| header(ClientId::ZERO, 3, 1025, u32::MAX)),
    ));
    cases.push(case(
        "1028 of 4 GiB before any key",
        Fresh,
        ErrorKeepOpen,
        Box::new(|raw| {
            file_frame(raw.id, u32::MAX - 267, 10, 1, 1, b"big", &[0u8; 16])[..23 + 267 + 16]
                .to_vec()
        }),
    ));
    // Unknown codes (a sample of the range) and wrong versions.
    for code in [0u16, 1, 1024, 1032, 1100, 1600, 1607, 4096, 65535] {
        cases.push(case(
            format!("unknown request code {code}"),
            Fresh,
            ErrorThenClose,
            Box::new(move |_| {
                let mut f = header(ClientId::ZERO, 3, code, 255);
                f.extend_from_slice(&raw_name_field(b"x"));
                f
            }),
        ));
    }
    // 4 is not here: byte 16 = 4 selects protocol v4 (docs/protocol-v4.md).
    for version in [0u8, 1, 2, 5, 24, 255] {
        cases.push(case(
            format!("version {version}"),
            Fresh,
            ErrorThenClose,
            Box::new(move |_| {
                let mut f = register_frame();
                f[16] = version;
                f
            }),
        ));
    }
    // File names that escape or are not names: 1607, nothing written, connection kept.
    for (label, bytes) in [
        ("..", &b".."[..]),
        (".", b"."),
        ("../escape", b"../escape"),
        ("a/b", b"a/b"),
        ("/etc/passwd", b"/etc/passwd"),
        ("a\\b", b"a\\b"),
        ("..\\..\\win", b"..\\..\\win"),
        ("C:evil", b"C:evil"),
        ("NUL inside", b"a\0b"),
        ("empty", b""),
    ] {
        cases.push(case(
            format!("file name {label}"),
            Keyed,
            ErrorKeepOpen,
            Box::new(move |raw| one_packet(raw, bytes, b"payload")),
        ));
    }
    cases.push(case(
        "file name of 255 bytes without NUL",
        Keyed,
        ErrorKeepOpen,
        Box::new(|raw| one_packet(raw, &[b'n'; 255], b"payload")),
    ));
    // Odd but legal names: accepted and stored under a safe mapped name.
    for (label, bytes, mapped) in [
        ("CON", &b"CON"[..], "%43ON"),
        ("con.txt", b"con.txt", "%63on.txt"),
        ("LPT1", b"LPT1", "%4CPT1"),
        ("non-ASCII", "café.txt".as_bytes(), "caf%C3%A9.txt"),
        ("hidden", b".hidden", "%2Ehidden"),
        ("a..b", b"a..b", "a..b"),
        ("control byte", b"tab\there", "tab%09here"),
    ] {
        cases.push(case(
            format!("odd name {label}"),
            Keyed,
            StoredAs(mapped),
            Box::new(move |raw| one_packet(raw, bytes, b"odd but legal")),
        ));
    }
    // Packet numbering and metadata.
    cases.push(case(
        "packet number 0",
        Keyed,
        ErrorKeepOpen,
        Box::new(|raw| packet(raw, b"p", 0, 3, 47)),
    ));
    cases.push(case(
        "total packets 0",
        Keyed,
        ErrorKeepOpen,
        Box::new(|raw| file_frame(raw.id, 16, 5, 1, 0, b"p", &[0u8; 16])),
    ));
    cases.push(case(
        "packet above total",
        Keyed,
        ErrorKeepOpen,
        Box::new(|raw| [packet(raw, b"p", 1, 2, 31), packet(raw, b"p", 3, 2, 31)].concat()),
    ));
    cases.push(case(
        "packet repeated",
        Keyed,
        ErrorKeepOpen,
        Box::new(|raw| {
            [
                packet(raw, b"p", 1, 3, 47),
                packet(raw, b"p", 2, 3, 47),
                packet(raw, b"p", 2, 3, 47),
            ]
            .concat()
        }),
    ));
    cases.push(case(
        "packets out of order",
        Keyed,
        ErrorKeepOpen,
        Box::new(|raw| [packet(raw, b"p", 1, 3, 47), packet(raw, b"p", 3, 3, 47)].concat()),
    ));
    cases.push(case(
        "orig size changes between packets",
        Keyed,
        ErrorKeepOpen,
        Box::new(|raw| [packet(raw, b"p", 1, 3, 47), packet(raw, b"p", 2, 3, 46)].concat()),
    ));
    cases.push(case(
        "file name changes between packets",
        Keyed,
        ErrorKeepOpen,
        Box::new(|raw| [packet(raw, b"p", 1, 3, 47), packet(raw, b"q", 2, 3, 47)].concat()),
    ));
    cases.push(case(
        "total changes between packets",
        Keyed,
        ErrorKeepOpen,
        Box::new(|raw| [packet(raw, b"p", 1, 3, 47), packet(raw, b"p", 2, 4, 47)].concat()),
    ));
    cases.push(case(
        "ciphertext not a multiple of 16",
        Keyed,
        ErrorKeepOpen,
        Box::new(|raw| file_frame(raw.id, 17, 5, 1, 1, b"odd", &[1u8; 17])),
    ));
    // A file that fails to decrypt closes the connection (a padding oracle otherwise).
    cases.push(case(
        "bad PKCS#7 padding",
        Keyed,
        ErrorThenClose,
        // The first block of the encryption of 16 zero bytes decrypts to zeros: pad byte 0.
        Box::new(|raw| {
            file_frame(
                raw.id,
                16,
                16,
                1,
                1,
                b"pad",
                &encrypt(raw.aes(), &[0u8; 16])[..16],
            )
        }),
    ));
    cases.push(case(
        "content larger than announced (orig size)",
        Keyed,
        ErrorKeepOpen,
        Box::new(|raw| {
            let cipher = encrypt(raw.aes(), &[9u8; 40]);
            file_frame(raw.id, cipher.len() as u32, 5, 1, 1, b"big", &cipher)
        }),
    ));
    cases.push(case(
        "content larger than content_size with several packets",
        Keyed,
        ErrorKeepOpen,
        Box::new(|raw| {
            let cipher = encrypt(raw.aes(), &[9u8; 40]);
            file_frame(raw.id, 16, 40, 1, 2, b"big", &cipher)
        }),
    ));
    cases.push(case(
        "1029 without a file",
        Keyed,
        ErrorKeepOpen,
        Box::new(|raw| {
            request(
                raw.id,
                &Request::CrcOk {
                    file_name: name(b"none"),
                },
            )
        }),
    ));
    cases
}

async fn run_case(
    srv: &Running,
    keys: &cyberbackup_core::crypto::ClientKeyPair,
    i: usize,
    case: &Case,
) -> Option<ClientId> {
    let client = format!("hostile-{i}");
    let mut raw = match case.conn {
        Conn::Fresh => Raw::connect(srv.addr).await,
        Conn::Keyed => Raw::keyed(srv.addr, client.as_bytes(), keys).await,
    };
    let input = (case.input)(&raw);
    raw.send_lossy(&input).await;
    if case.eof {
        let _ = raw.stream.shutdown().await;
    }
    let label = &case.label;
    match case.expect {
        Expect::ErrorThenClose => {
            let reply = raw.reply().await;
            assert_eq!(reply.map(|r| r.code), Some(SERVER_ERROR), "{label}");
            assert!(
                raw.closed_within(Duration::from_secs(5)).await,
                "{label}: not closed"
            );
        }
        Expect::ErrorKeepOpen => {
            let reply = raw.reply().await;
            assert_eq!(reply.map(|r| r.code), Some(SERVER_ERROR), "{label}");
            match case.conn {
                Conn::Keyed => raw.upload_verified(b"probe", b"still served").await,
                Conn::Fresh => assert!(raw.silent_for(Duration::from_millis(200)).await, "{label}"),
            }
        }
        Expect::CloseSilently => {
            assert!(
                raw.closed_within(Duration::from_secs(5)).await,
                "{label}: not closed"
            );
        }
        Expect::StoredAs(mapped) => {
            let reply = raw.expect(FILE_RECEIVED).await;
            assert_eq!(cksum_of(&reply), cksum(b"odd but legal"), "{label}");
            raw.verdict(RequestCode::CRC_OK, b"ignored").await;
            raw.expect(ACK).await;
            assert_eq!(
                std::fs::read(srv.stored_path(raw.id, mapped)).unwrap(),
                b"odd but legal",
                "{label}"
            );
        }
    }
    matches!(case.conn, Conn::Keyed).then_some(raw.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_input_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let srv = start(&data).await;
    let keys = keys();
    let good = {
        let (addr, keys) = (srv.addr, keys.clone());
        tokio::spawn(async move {
            let mut raw = Raw::keyed(addr, b"well-behaved", &keys).await;
            for round in 0..5u32 {
                raw.upload_verified(b"good.bin", &pattern(300_000, round))
                    .await;
            }
            raw.id
        })
    };

    let cases = catalogue();
    let mut expected = BTreeSet::new();
    for (i, case) in cases.iter().enumerate() {
        if let Some(id) = run_case(&srv, &keys, i, case).await {
            if case.expect == Expect::ErrorKeepOpen {
                expected.insert(format!("{}/probe", id.to_hex()));
            }
            if let Expect::StoredAs(mapped) = case.expect {
                expected.insert(format!("{}/{mapped}", id.to_hex()));
            }
        }
    }
    let good_id = good.await.unwrap();
    expected.insert(format!("{}/good.bin", good_id.to_hex()));

    // Session-level cases that need more than one request.
    let mut raw = Raw::connect(srv.addr).await;
    assert_eq!(
        raw.register(ClientId::ZERO, b"keyless").await.code,
        REGISTERED
    );
    let id = raw.id;
    raw.send(&one_packet_plain(id)).await;
    assert_eq!(
        raw.reply().await.map(|r| r.code),
        Some(SERVER_ERROR),
        "1028 before key exchange"
    );
    let mut victim = Raw::keyed(srv.addr, b"victim", &keys).await;
    victim.upload_verified(b"v.txt", b"victim data").await;
    expected.insert(format!("{}/v.txt", victim.id.to_hex()));
    let mut wrong = Raw::connect(srv.addr).await;
    assert_eq!(
        wrong
            .reconnect(victim.id, b"not-the-victim", &keys)
            .await
            .code,
        RECONNECT_REFUSED,
        "right id, wrong name"
    );
    let mut bad_key = Raw::connect(srv.addr).await;
    assert_eq!(
        bad_key.register(ClientId::ZERO, b"badkey").await.code,
        REGISTERED
    );
    assert_eq!(
        bad_key
            .send_key_field(b"badkey", &[0x30, 0x82, 0xff, 0xff, 1, 2, 3], &keys)
            .await
            .code,
        SERVER_ERROR,
        "key not DER"
    );
    let spki_512 = hex_literal_512();
    assert_eq!(
        bad_key
            .send_key_field(b"badkey", &spki_512, &keys)
            .await
            .code,
        SERVER_ERROR,
        "512-bit key"
    );
    let inputs_tried = cases.len() + 5;

    let mut found: BTreeSet<String> = all_files(&data).into_iter().collect();
    found.retain(|f| !f.ends_with("/probe") || expected.contains(f));
    // Earlier versions of the legal files are kept too (history is on: keep_versions = 10).
    found.retain(|f| {
        !expected.iter().any(|e| {
            f.strip_prefix(&format!("{e}.~"))
                .is_some_and(|v| v.ends_with('~'))
        })
    });
    assert_eq!(
        found, expected,
        "files other than the legal ones were written"
    );
    assert!(partials(&data).is_empty());
    srv.stop().await;
    eprintln!("hostile catalogue: {inputs_tried} inputs over sockets");
    assert!(inputs_tried >= 40);
}

fn one_packet_plain(id: ClientId) -> Vec<u8> {
    file_frame(id, 16, 3, 1, 1, b"nokey", &[5u8; 16])
}

/// SPKI DER of an RSA key with a 512-bit modulus (not 1024).
fn hex_literal_512() -> Vec<u8> {
    let mut modulus = vec![0xC3u8; 64];
    modulus[63] = 0xC5;
    let mut der = vec![
        0x30, 0x5c, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
        0x05, 0x00, 0x03, 0x4b, 0x00, 0x30, 0x48, 0x02, 0x41, 0x00,
    ];
    der.extend_from_slice(&modulus);
    der.extend_from_slice(&[0x02, 0x03, 0x01, 0x00, 0x01]);
    der
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_floods_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.registrations_per_minute = 3;
    let srv = start_with(config, Faults::none()).await;
    let mut codes = Vec::new();
    for i in 0..6 {
        let mut raw = Raw::connect(srv.addr).await;
        codes.push(
            raw.register(ClientId::ZERO, format!("flood-{i}").as_bytes())
                .await
                .code,
        );
    }
    assert_eq!(
        codes,
        [
            REGISTERED,
            REGISTERED,
            REGISTERED,
            SERVER_ERROR,
            SERVER_ERROR,
            SERVER_ERROR
        ]
    );
    srv.stop().await;
    let catalog = cyberbackup_server::Catalog::open(dir.path().join("data").join("defensive.db"))
        .await
        .unwrap();
    assert_eq!(catalog.list_clients().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_silent_connections_are_freed_by_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.idle_timeout_secs = 1;
    let srv = start_with(config, Faults::none()).await;
    let stats_before = nofile_soft_limit();
    // The server and the silent clients share this process: 2 descriptors per connection.
    let wanted = 2000usize.min(stats_before.saturating_sub(300) / 2);
    let mut silent = Vec::with_capacity(wanted);
    for _ in 0..wanted {
        silent.push(tokio::net::TcpStream::connect(srv.addr).await.unwrap());
    }
    // A well-behaved client finishes meanwhile (it may wait for a permit).
    let keys = keys();
    let mut good = Raw::keyed(srv.addr, b"patient", &keys).await;
    good.upload_verified(b"ok.bin", &pattern(100_000, 1)).await;
    // Every silent connection is closed by the server.
    let mut closed = 0;
    for stream in &mut silent {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::AsyncReadExt::read(stream, &mut byte),
        )
        .await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, wanted);
    eprintln!(
        "idle flood: {wanted} silent connections opened and freed (RLIMIT_NOFILE {stats_before})"
    );
    drop(silent);
    srv.stop().await;
}

fn nofile_soft_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

/// A file that decrypts to bad padding: the first block of the encryption of 16 zero bytes
/// decrypts to zeros, whose last byte is no PKCS#7 pad (what a forger's random block gives
/// 255 times in 256).
fn forged_file(raw: &Raw, file: &[u8]) -> Vec<u8> {
    file_frame(
        raw.id,
        16,
        15,
        1,
        1,
        file,
        &encrypt(raw.aes(), &[0u8; 16])[..16],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_v3_files_close_the_connection_are_budgeted_and_never_replace_the_verified_version()
{
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.v3_failed_files_per_hour = 2;
    let srv = start_with(config, Faults::none()).await;
    let keys = keys();
    let original = pattern(50_000, 7);
    let mut victim = Raw::keyed(srv.addr, b"victim", &keys).await;
    victim.upload_verified(b"report.txt", &original).await;
    let id = victim.id;
    drop(victim);

    // Two forgeries, each on a fresh connection with a fresh session key (1027).
    for attempt in 0..2 {
        let mut forger = Raw::connect(srv.addr).await;
        assert_eq!(
            forger.reconnect(id, b"victim", &keys).await.code,
            RECONNECTED
        );
        let forged = forged_file(&forger, b"report.txt");
        forger.send(&forged).await;
        assert_eq!(forger.expect(SERVER_ERROR).await.code, SERVER_ERROR);
        // The second forged file on the same connection is never read.
        let _ = forger.send_lossy(&forged).await;
        assert!(
            forger.closed_within(REPLY_WAIT).await,
            "attempt {attempt}: the connection stays open after a failed decrypt"
        );
    }
    // The budget is used up: even a well-formed file of this client id is refused now.
    let mut after = Raw::connect(srv.addr).await;
    assert_eq!(
        after.reconnect(id, b"victim", &keys).await.code,
        RECONNECTED
    );
    let refused = after
        .upload(b"report.txt", &pattern(100, 8), 64 * 1024)
        .await;
    let stored = std::fs::read(srv.stored_path(id, "report.txt")).unwrap();
    srv.stop().await;

    assert_eq!(refused.code, SERVER_ERROR, "{refused:?}");
    assert_eq!(stored, original, "the verified version is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_a_failed_file_gets_no_replies() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("data")).await;
    let mut raw = Raw::keyed(srv.addr, b"flooder", &keys()).await;
    let plain = pattern(3000, 3);
    let cipher = encrypt(raw.aes(), &plain);
    // A client whose 16-bit packet counter wrapped: total_packets 2, then packets 3 … 200
    // of the same file. Packet 2 fails (orig_file_size changes).
    let mut frames = vec![
        file_frame(raw.id, 3008, 3000, 1, 2, b"big.bin", &cipher[..1504]),
        file_frame(raw.id, 3008, 2999, 2, 2, b"big.bin", &cipher[1504..]),
    ];
    frames
        .extend((3..=200).map(|n| file_frame(raw.id, 3008, 3000, n, 2, b"big.bin", &cipher[..16])));
    raw.send(&frames.concat()).await;

    let first = raw.reply().await.unwrap();
    // The next reply belongs to the next file: nothing was sent for the 198 packets.
    let next = raw.upload(b"next.bin", &pattern(100, 4), 64 * 1024).await;
    srv.stop().await;

    assert_eq!(first.code, SERVER_ERROR);
    assert_eq!(next.code, FILE_RECEIVED, "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_v4_client_retries_with_back_off_and_registers() {
    use cyberbackup_client::retry::RetryPolicy;
    use cyberbackup_client::v4::V4Options;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.registrations_per_minute = 30;
    let srv = start_with(config, Faults::none()).await;
    // An office behind one address used up its budget (30 at once, then one per 2 s).
    for i in 0..30 {
        let mut raw = Raw::connect(srv.addr).await;
        let reply = raw
            .register(ClientId::ZERO, format!("office-{i}").as_bytes())
            .await;
        assert_eq!(reply.code, REGISTERED);
    }
    let source = dir.path().join("notes.txt");
    std::fs::write(&source, pattern(1000, 9)).unwrap();
    let options =
        V4Options::new(srv.addr.to_string(), dir.path().join("late-v4.json")).with_name("late");
    let mut progress = Retries::default();

    let report = cyberbackup_client::v4::backup(
        &options,
        &[source],
        RetryPolicy::with_retries(3),
        &mut progress,
    )
    .await;
    srv.stop().await;

    let report = report.unwrap();
    assert_eq!(report.files.len(), 1);
    assert!(!progress.0.is_empty(), "the first attempt was rate limited");
    assert!(
        progress
            .0
            .iter()
            .all(|delay| *delay >= Duration::from_secs(2)),
        "{:?}",
        progress.0
    );
}

/// The delays of the client's `Retrying` events.
#[derive(Debug, Default)]
struct Retries(Vec<Duration>);

impl cyberbackup_client::ProgressSink for Retries {
    fn on_progress(&mut self, event: &cyberbackup_client::ProgressEvent) {
        if let cyberbackup_client::ProgressEvent::Retrying { delay, .. } = event {
            self.0.push(*delay);
        }
    }
}
