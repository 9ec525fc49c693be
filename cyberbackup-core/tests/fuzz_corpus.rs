#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Replays the committed fuzz corpus and seeds (`fuzz/corpus/<target>/`,
//! `fuzz/seeds/<target>/`, crash reproducers included) through the same
//! `cyberbackup_core::fuzzing` entry points the fuzz targets call, on stable Rust, as part
//! of `cargo test`. A missing or empty directory fails the test, so it cannot pass by
//! replaying nothing.

use std::path::{Path, PathBuf};

use cyberbackup_core::fuzzing;
use cyberbackup_core::v4::fuzzing as fuzzing_v4;

#[test]
fn decode_frame_corpus_replays() {
    replay("decode_frame", fuzzing::decode_frames);
}

#[test]
fn server_session_corpus_replays() {
    replay("server_session", fuzzing::server_session);
}

#[test]
fn server_session_keyed_corpus_replays() {
    replay("server_session_keyed", fuzzing::server_session_with_key);
}

#[test]
fn decode_v4_corpus_replays() {
    replay("decode_v4", fuzzing_v4::decode_v4);
}

#[test]
fn handshake_v4_corpus_replays() {
    replay("handshake_v4", fuzzing_v4::handshake_v4);
}

fn replay(target: &str, entry: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for kind in ["corpus", "seeds"] {
        let dir = fuzz.join(kind).join(target);
        let files = files_in(&dir);
        assert!(
            !files.is_empty(),
            "{} has no inputs: the replay would test nothing",
            dir.display()
        );
        for file in files {
            let data = std::fs::read(&file).unwrap();
            // A panic names the input that caused it.
            let outcome = std::panic::catch_unwind(|| entry(&data));
            assert!(outcome.is_ok(), "{target} panicked on {}", file.display());
        }
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}
