//! RSA-1024 as v3 uses it: client key pairs with e = 17 (what Crypto++ makes), the 160-byte
//! X.509 SubjectPublicKeyInfo on the wire, PKCS#8 private keys, and RSA-OAEP with SHA-1 and
//! MGF1-SHA-1 to carry the 32-byte AES key.

use std::fmt;

use rand_core::CryptoRngCore;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Oaep, RsaPrivateKey, RsaPublicKey};
use zeroize::Zeroizing;

use super::{AesKey, CryptoError};
use crate::limits::{AES_KEY_LEN, RSA_MODULUS_BITS};

/// Public exponent of the keys Crypto++ generates by default (and we generate).
const PUBLIC_EXPONENT: u32 = 17;

/// A client's RSA-1024 key pair. The private key is zeroized on drop (by the `rsa` crate).
#[derive(Clone)]
pub struct ClientKeyPair {
    private: RsaPrivateKey,
}

impl fmt::Debug for ClientKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKeyPair(..)")
    }
}

impl ClientKeyPair {
    /// Generates a 1024-bit key with e = 17 from the caller's RNG.
    ///
    /// # Errors
    /// [`CryptoError::Rsa`] if generation fails.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Result<Self, CryptoError> {
        let private =
            RsaPrivateKey::new_with_exp(rng, RSA_MODULUS_BITS, &BigUint::from(PUBLIC_EXPONENT))
                .map_err(|err| CryptoError::Rsa {
                    reason: err.to_string(),
                })?;
        Ok(Self { private })
    }

    /// Reads a PKCS#8 PrivateKeyInfo DER (as Crypto++ `Save()` writes it).
    ///
    /// # Errors
    /// [`CryptoError::InvalidPrivateKey`] or [`CryptoError::WrongKeySize`].
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        let private =
            RsaPrivateKey::from_pkcs8_der(der).map_err(|err| CryptoError::InvalidPrivateKey {
                reason: err.to_string(),
            })?;
        check_modulus_bits(private.n().bits())?;
        Ok(Self { private })
    }

    /// The PKCS#8 PrivateKeyInfo DER, in a buffer zeroized on drop.
    ///
    /// # Errors
    /// [`CryptoError::Rsa`] if encoding fails.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let doc = self
            .private
            .to_pkcs8_der()
            .map_err(|err| CryptoError::Rsa {
                reason: err.to_string(),
            })?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// The public half.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.private.to_public_key(),
        }
    }

    /// Decrypts the session key the server sent in 1602/1605 (RSA-OAEP, SHA-1, MGF1-SHA-1),
    /// with RSA blinding from the caller's RNG.
    ///
    /// # Errors
    /// [`CryptoError::KeyUnwrapFailed`] or [`CryptoError::WrongSessionKeyLen`].
    pub fn unwrap_session_key(
        &self,
        rng: &mut impl CryptoRngCore,
        ciphertext: &[u8],
    ) -> Result<AesKey, CryptoError> {
        let plain = Zeroizing::new(
            self.private
                .decrypt_blinded(rng, Oaep::new::<sha1::Sha1>(), ciphertext)
                .map_err(|_| CryptoError::KeyUnwrapFailed)?,
        );
        let bytes: [u8; AES_KEY_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::WrongSessionKeyLen { len: plain.len() })?;
        Ok(AesKey::from_bytes(bytes))
    }
}

/// A client's RSA public key as received in 1026.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: RsaPublicKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} bits)", self.key.n().bits())
    }
}

impl PublicKey {
    /// Reads the public-key field of 1026 tolerantly: one SubjectPublicKeyInfo DER element,
    /// ignoring bytes after it (Tom's client sends 160 + 2), any exponent, 1024-bit modulus.
    ///
    /// # Errors
    /// [`CryptoError::InvalidPublicKey`] or [`CryptoError::WrongKeySize`].
    pub fn from_spki_field(field: &[u8]) -> Result<Self, CryptoError> {
        let element = first_der_element(field).ok_or_else(|| CryptoError::InvalidPublicKey {
            reason: "not a DER SEQUENCE".to_owned(),
        })?;
        let key = RsaPublicKey::from_public_key_der(element).map_err(|err| {
            CryptoError::InvalidPublicKey {
                reason: err.to_string(),
            }
        })?;
        check_modulus_bits(key.n().bits())?;
        Ok(Self { key })
    }

    /// The X.509 SubjectPublicKeyInfo DER (160 bytes for a 1024-bit key with e = 17).
    ///
    /// # Errors
    /// [`CryptoError::Rsa`] if encoding fails.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, CryptoError> {
        let doc = self
            .key
            .to_public_key_der()
            .map_err(|err| CryptoError::Rsa {
                reason: err.to_string(),
            })?;
        Ok(doc.as_bytes().to_vec())
    }

    /// Encrypts a session key for this client (RSA-OAEP, SHA-1, MGF1-SHA-1).
    ///
    /// # Errors
    /// [`CryptoError::Rsa`] if encryption fails.
    pub fn wrap_session_key(
        &self,
        rng: &mut impl CryptoRngCore,
        key: &AesKey,
    ) -> Result<Vec<u8>, CryptoError> {
        self.key
            .encrypt(rng, Oaep::new::<sha1::Sha1>(), key.as_bytes())
            .map_err(|err| CryptoError::Rsa {
                reason: err.to_string(),
            })
    }
}

fn check_modulus_bits(bits: usize) -> Result<(), CryptoError> {
    if bits != RSA_MODULUS_BITS {
        return Err(CryptoError::WrongKeySize { bits });
    }
    Ok(())
}

/// The first DER element of `bytes` (a SEQUENCE), without what follows it.
fn first_der_element(bytes: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = bytes.split_first()?;
    if tag != 0x30 {
        return None;
    }
    let (&first_len, rest) = rest.split_first()?;
    let (content_len, header_len) = if first_len < 0x80 {
        (usize::from(first_len), 2)
    } else {
        let count = usize::from(first_len & 0x7f);
        if count == 0 || count > 2 {
            return None;
        }
        let len_bytes = rest.get(..count)?;
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, 2 + count)
    };
    bytes.get(..header_len + content_len)
}
