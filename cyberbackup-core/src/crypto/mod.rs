//! The v3 crypto: POSIX cksum, AES-256-CBC with a zero IV and PKCS#7, RSA-1024 with
//! RSA-OAEP(SHA-1) transport of the session key, and the key types that zeroize on drop.

mod cbc;
mod cksum;
mod keys;
mod rsa;

pub use self::cbc::{CbcDecryptor, CbcEncryptor, cbc_ciphertext_len};
pub use self::cksum::Cksum;
pub use self::keys::AesKey;
pub use self::rsa::{ClientKeyPair, PublicKey};

/// Why a cryptographic operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The decrypted data does not end in valid PKCS#7 padding.
    #[error("bad PKCS#7 padding after decryption (wrong key, or corrupted ciphertext)")]
    BadPadding,
    /// Ciphertext length is not a multiple of the AES block size.
    #[error("ciphertext of {len} bytes is not a multiple of 16 bytes")]
    NotBlockAligned {
        /// The ciphertext length.
        len: u64,
    },
    /// The public key field is not an X.509 SubjectPublicKeyInfo for RSA.
    #[error("the public key is not a valid RSA SubjectPublicKeyInfo DER: {reason}")]
    InvalidPublicKey {
        /// What the parser reported.
        reason: String,
    },
    /// The RSA key has the wrong size.
    #[error("the RSA key has {bits} bits; v3 uses 1024-bit keys")]
    WrongKeySize {
        /// The modulus size found.
        bits: usize,
    },
    /// The private key is not a valid PKCS#8 RSA key.
    #[error("the private key is not a valid PKCS#8 RSA key: {reason}")]
    InvalidPrivateKey {
        /// What the parser reported.
        reason: String,
    },
    /// RSA-OAEP(SHA-1) decryption of the session key failed.
    #[error("cannot decrypt the session key with RSA-OAEP(SHA-1): the key does not match")]
    KeyUnwrapFailed,
    /// The decrypted session key is not 32 bytes long.
    #[error("the session key is {len} bytes; v3 uses 32-byte AES-256 keys")]
    WrongSessionKeyLen {
        /// Length of the decrypted key.
        len: usize,
    },
    /// RSA key generation or encryption failed.
    #[error("RSA operation failed: {reason}")]
    Rsa {
        /// What the rsa crate reported.
        reason: String,
    },
}
