//! Arbitrary bytes fed to a v4 server session (fixed key, deterministic RNG) whose effects
//! all succeed; the seed is a recorded honest session, so mutations start past the
//! handshake.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::v4::fuzzing::handshake_v4(data));
