//! Arbitrary bytes as a client-to-server and as a server-to-client stream.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::fuzzing::decode_frames(data));
