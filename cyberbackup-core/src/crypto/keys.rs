//! Session key type: zeroized on drop, never printed, compared in constant time.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::limits::AES_KEY_LEN;

/// A 32-byte AES-256 session key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AesKey([u8; AES_KEY_LEN]);

impl AesKey {
    /// Wraps raw key bytes.
    #[must_use]
    pub fn from_bytes(bytes: [u8; AES_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh key from the caller's RNG.
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut bytes = [0u8; AES_KEY_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The raw key bytes (for the cipher and for RSA wrapping only).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; AES_KEY_LEN] {
        &self.0
    }
}

impl PartialEq for AesKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for AesKey {}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_key_bytes() {
        let key = AesKey::from_bytes([0xab; AES_KEY_LEN]);
        let shown = format!("{key:?}");
        assert_eq!(shown, "AesKey(..)");
    }
}
