//! Plaintext repository requests (any message, `u16` LE length-prefixed) from a client that
//! logged in to a v4 server session through a real in-memory handshake; every effect
//! succeeds. Mutations reach the server's request decoder and repository state machine,
//! not the AEAD.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::v4::fuzzing::repo_requests_v4(data));
