//! Arbitrary bytes fed to a `ServerSession` (first byte = read size), effects answered.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::fuzzing::server_session(data));
