//! Plaintext server messages (`u16` LE length-prefixed) to a v4 client session that logged
//! in through a real in-memory handshake and awaits one repository call (chosen by the
//! first byte). Mutations reach the client's reply decoder and its checks of each reply.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::v4::fuzzing::repo_replies_v4(data));
