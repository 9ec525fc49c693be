//! Arbitrary bytes as a whole pack and as a bare pack header (repository format).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::fuzzing::repo_pack_header(data));
