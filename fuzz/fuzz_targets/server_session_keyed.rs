//! `ServerSession` with an established session key fed arbitrary bytes: reaches decryption,
//! the multi-packet scheme rules and the storage effects.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::fuzzing::server_session_with_key(data));
