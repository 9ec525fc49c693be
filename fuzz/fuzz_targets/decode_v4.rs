//! Arbitrary bytes as v4 frames from either side, and as every v4 message and handshake
//! payload.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::v4::fuzzing::decode_v4(data));
