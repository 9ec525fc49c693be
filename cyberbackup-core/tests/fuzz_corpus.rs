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

/// The repository targets (`fuzz/fuzz_targets/repo_*.rs`) replay their seeds
/// (`fuzz/make_repo_seeds.py`, from the repository vectors); they get a `corpus/` directory
/// with their first fuzz run.
#[test]
fn repo_targets_seeds_replay() {
    let targets: [(&str, Entry); 7] = [
        ("repo_pack_header", fuzzing::repo_pack_header),
        ("repo_sealed_blob", fuzzing::repo_sealed_blob),
        ("repo_tree", fuzzing::repo_tree),
        ("repo_snapshot", fuzzing::repo_snapshot),
        ("repo_key_object", fuzzing::repo_key_object),
        ("repo_config", fuzzing::repo_config),
        ("repo_ref_chunk", fuzzing::repo_ref_chunk),
    ];
    for (target, entry) in targets {
        replay_kinds(target, &["seeds"], entry);
    }
}

/// The v4 repository session targets (`fuzz/fuzz_targets/repo_requests_v4.rs`,
/// `repo_replies_v4.rs`) replay their seeds (written by `tests/v4_fuzz_seeds.rs`); they get
/// a `corpus/` directory with their first fuzz run.
#[test]
fn repo_v4_session_seeds_replay() {
    replay_kinds("repo_requests_v4", &["seeds"], fuzzing_v4::repo_requests_v4);
    replay_kinds("repo_replies_v4", &["seeds"], fuzzing_v4::repo_replies_v4);
}

/// A fuzz entry point.
type Entry = fn(&[u8]);

fn replay(target: &str, entry: Entry) {
    replay_kinds(target, &["corpus", "seeds"], entry);
}

fn replay_kinds(target: &str, kinds: &[&str], entry: Entry) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for kind in kinds {
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
