#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `Cksum` agrees with the system `cksum` command (POSIX CRC-32 + length) on generated files
//! of several sizes, including the empty file, single bytes and sizes around buffer edges.

use std::io::{ErrorKind, Write};
use std::path::Path;
use std::process::Command;

use cyberbackup_core::crypto::Cksum;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

const SIZES: [usize; 14] = [
    0,
    1,
    2,
    15,
    16,
    17,
    255,
    256,
    4095,
    4096,
    65_536,
    70_000,
    1 << 20,
    (1 << 20) + 3,
];

#[test]
fn cksum_matches_the_system_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0x00c6_c5c0);
    let mut cases: Vec<(String, Vec<u8>)> = SIZES
        .iter()
        .map(|&len| {
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            (format!("random-{len}"), data)
        })
        .collect();
    cases.push(("zeros-256".into(), vec![0; 256]));
    cases.push(("ones-4097".into(), vec![0xff; 4097]));
    // 256 and 65 536 bytes make the length suffix two and three bytes long; 1 << 24 four.
    cases.push(("zeros-16MiB".into(), vec![0; 1 << 24]));

    for (name, data) in &cases {
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(data)
            .unwrap();
        let Some((system_crc, system_len)) = system_cksum(&path) else {
            return;
        };
        assert_eq!(system_len, data.len() as u64, "{name}: length");
        assert_eq!(Cksum::of(data), system_crc, "{name}: one-shot");
        let mut streamed = Cksum::new();
        for piece in data.chunks(4093) {
            streamed.update(piece);
        }
        assert_eq!(streamed.finalize(), system_crc, "{name}: streamed");
    }
}

/// Runs `cksum FILE` and parses `CRC LEN NAME`. `None` (after a message) when the command
/// is not installed, so the test is skipped rather than failed on exotic systems.
#[allow(clippy::print_stderr)]
fn system_cksum(path: &Path) -> Option<(u32, u64)> {
    let output = match Command::new("cksum").arg(path).env("LC_ALL", "C").output() {
        Ok(output) => output,
        Err(err) if err.kind() == ErrorKind::NotFound => {
            eprintln!("SKIPPED: the `cksum` command is not installed");
            return None;
        }
        Err(err) => panic!("cannot run cksum: {err}"),
    };
    assert!(output.status.success(), "cksum failed: {output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let mut fields = text.split_whitespace();
    let crc = fields.next().unwrap().parse().unwrap();
    let len = fields.next().unwrap().parse().unwrap();
    Some((crc, len))
}
