//! Arbitrary bytes as a tree's plaintext; what decodes must re-encode to the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::fuzzing::repo_tree(data));
