//! Arbitrary bytes as a reference chunk.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::fuzzing::repo_ref_chunk(data));
