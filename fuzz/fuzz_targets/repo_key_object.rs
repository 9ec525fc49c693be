//! Arbitrary bytes as a key object, unwrapped with the fuzz device key.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cyberbackup_core::fuzzing::repo_key_object(data));
