//! Arbitrary bytes as a repository config, unverified and verified.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::fuzzing::repo_config(data));
