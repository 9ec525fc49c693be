//! Shared helpers for the vector-driven tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

pub(crate) fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/legacy")
}

pub(crate) fn read(path: &str) -> Vec<u8> {
    let full = dir().join(path);
    std::fs::read(&full).unwrap_or_else(|err| panic!("cannot read {}: {err}", full.display()))
}

pub(crate) fn json(path: &str) -> serde_json::Value {
    serde_json::from_slice(&read(path)).expect("vector JSON parses")
}

pub(crate) fn hex_bytes(text: &str) -> Vec<u8> {
    hex::decode(text.trim()).expect("vector hex decodes")
}

pub(crate) fn aes_key(folder: &str) -> cyberbackup_core::crypto::AesKey {
    let bytes = hex_bytes(std::str::from_utf8(&read(&format!("{folder}/aes_key.hex"))).unwrap());
    cyberbackup_core::crypto::AesKey::from_bytes(bytes.try_into().expect("32-byte key"))
}
