//! The Noise parts: parameters, static keys and fingerprints, and the resolver through which
//! `snow` gets its randomness from the session's RNG (never from the OS), so a seeded RNG
//! gives reproducible handshakes in tests.

use std::fmt;
use std::str::FromStr;

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::{Zeroize, Zeroizing};

use super::wire::{HELLO_HEADER_LEN, hello_header};

/// The Noise protocol name. Do not modify.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_AESGCM_SHA256";
/// First part of the prologue. Do not modify.
pub const PROLOGUE_LABEL: &[u8] = b"CyberBackup v4 Noise_XX_25519_AESGCM_SHA256\n";
/// Length of X25519 keys.
pub const KEY_LEN: usize = 32;

/// The prologue both sides mix in: the label and the hello's magic, version and code.
#[must_use]
pub fn prologue() -> Vec<u8> {
    let header = hello_header();
    let mut prologue = PROLOGUE_LABEL.to_vec();
    prologue.extend_from_slice(header.get(..HELLO_HEADER_LEN - 4).unwrap_or(&header));
    prologue
}

/// A static X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// The key's fingerprint (SHA-256 of the 32 bytes).
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(Sha256::digest(self.0).into())
    }

    /// Reads a key from a slice of exactly 32 bytes.
    #[must_use]
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// SHA-256 of a static public key, shown as `sha256:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A fingerprint that is not `sha256:` followed by 64 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid fingerprint {text:?}: expected \"sha256:\" followed by 64 hex digits")]
pub struct BadFingerprint {
    /// The text given.
    pub text: String,
}

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadFingerprint { text: s.to_owned() };
        let digits = s.trim().strip_prefix("sha256:").ok_or_else(bad)?;
        Ok(Self(decode_hex::<32>(digits).ok_or_else(bad)?))
    }
}

/// A static X25519 key pair. The private half is zeroized on drop and never printed.
#[derive(Clone)]
pub struct StaticKeypair {
    private: Zeroizing<[u8; KEY_LEN]>,
    public: PublicKey,
}

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// A private key that is not 32 bytes (or 64 hex digits).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid X25519 private key: expected 32 bytes (64 hex digits)")]
pub struct BadPrivateKey;

impl StaticKeypair {
    /// A new key pair from 32 bytes of `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut private = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(private.as_mut());
        Self::from_private(*private)
    }

    /// The key pair of a private key (X25519 clamps it when used).
    #[must_use]
    pub fn from_private(private: [u8; KEY_LEN]) -> Self {
        let private = Zeroizing::new(private);
        let public = x25519_public(&private);
        Self { private, public }
    }

    /// Parses 64 hex digits.
    ///
    /// # Errors
    /// [`BadPrivateKey`].
    pub fn from_private_hex(text: &str) -> Result<Self, BadPrivateKey> {
        let mut bytes = decode_hex::<KEY_LEN>(text.trim()).ok_or(BadPrivateKey)?;
        let pair = Self::from_private(bytes);
        bytes.zeroize();
        Ok(pair)
    }

    /// The private key as 64 lowercase hex digits, in a zeroizing buffer.
    #[must_use]
    pub fn private_hex(&self) -> Zeroizing<String> {
        // `hex::encode` reserves the exact length first (its iterator has an exact size), so
        // the one buffer moved into `Zeroizing` is the only copy.
        Zeroizing::new(hex::encode(self.private.as_slice()))
    }

    /// The public key.
    #[must_use]
    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn private_bytes(&self) -> &[u8; KEY_LEN] {
        &self.private
    }
}

fn x25519_public(private: &[u8; KEY_LEN]) -> PublicKey {
    let mut public = [0u8; KEY_LEN];
    if let Some(mut dh) = DefaultResolver.resolve_dh(&DHChoice::Curve25519) {
        dh.set(private);
        if let Some(key) = dh.pubkey().get(..KEY_LEN) {
            public.copy_from_slice(key);
        }
    }
    PublicKey(public)
}

/// Lowercase hex of `bytes` (the `hex` crate).
#[must_use]
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Parses exactly `2 * N` hex digits (either case).
#[must_use]
pub fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Builds a handshake state whose only randomness is `seed` (drawn from the session RNG).
pub(crate) fn handshake(
    keys: &StaticKeypair,
    initiator: bool,
    seed: [u8; 32],
) -> Result<snow::HandshakeState, snow::Error> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse()?;
    let prologue = prologue();
    let builder = snow::Builder::with_resolver(params, Box::new(SeededResolver { seed }))
        .local_private_key(keys.private_bytes())?
        .prologue(&prologue)?;
    if initiator {
        builder.build_initiator()
    } else {
        builder.build_responder()
    }
}

/// Delegates the primitives to snow's resolvers (ring for the AEAD, the default one for the
/// rest); randomness comes from a seed.
struct SeededResolver {
    seed: [u8; 32],
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeedRandom {
            bytes: Zeroizing::new(self.seed),
            used: 0,
        }))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    /// ring's AEAD: the same AES-256-GCM, several times faster than the default resolver's.
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        RingResolver
            .resolve_cipher(choice)
            .or_else(|| DefaultResolver.resolve_cipher(choice))
    }
}

/// Hands out the seed once: exactly the 32 bytes of one ephemeral key. A second request
/// fails instead of repeating randomness.
struct SeedRandom {
    bytes: Zeroizing<[u8; 32]>,
    used: usize,
}

impl Random for SeedRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        let end = self.used.saturating_add(dest.len());
        let Some(source) = self.bytes.get(self.used..end) else {
            return Err(snow::Error::Rng);
        };
        dest.copy_from_slice(source);
        self.used = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn aes_gcm(resolver: &dyn CryptoResolver) -> Box<dyn Cipher> {
        let mut cipher = resolver.resolve_cipher(&CipherChoice::AESGCM).unwrap();
        cipher.set(&[0x42; 32]);
        cipher
    }

    /// The transport's cipher (ring) and snow's default one (RustCrypto `aes-gcm`) are the same
    /// AES-256-GCM with the same nonce layout: each opens what the other sealed, byte for byte,
    /// so a peer built on another Noise library interoperates.
    #[test]
    fn ring_and_default_aes_gcm_are_interchangeable() {
        let ring = aes_gcm(&SeededResolver { seed: [0; 32] });
        let default = aes_gcm(&DefaultResolver);
        for (nonce, len) in [
            (0u64, 0usize),
            (1, 1),
            (7, 16),
            (1 << 40, 1000),
            (u64::MAX - 1, 65_519),
        ] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let ad = nonce.to_le_bytes();
            let mut by_ring = vec![0u8; len + 16];
            let mut by_default = vec![0u8; len + 16];
            assert_eq!(ring.encrypt(nonce, &ad, &plaintext, &mut by_ring), len + 16);
            assert_eq!(
                default.encrypt(nonce, &ad, &plaintext, &mut by_default),
                len + 16
            );
            assert_eq!(by_ring, by_default, "nonce {nonce}, {len} bytes");

            let mut opened = vec![0u8; len];
            assert_eq!(
                default.decrypt(nonce, &ad, &by_ring, &mut opened).unwrap(),
                len
            );
            assert_eq!(opened, plaintext);
            by_ring[len / 2] ^= 1;
            assert!(ring.decrypt(nonce, &ad, &by_ring, &mut opened).is_err());
        }
    }
}
