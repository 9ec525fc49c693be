//! Arbitrary bytes as a snapshot object (envelope, sealed body) and as a decrypted body.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::fuzzing::repo_snapshot(data));
