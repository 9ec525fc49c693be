//! Arbitrary bytes as a sealed blob (first 32 bytes: the expected ID) and as a compressed payload.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::fuzzing::repo_sealed_blob(data));
