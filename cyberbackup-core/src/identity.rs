//! A v3 client identity and its `me.info` text form (pure: the client crate does the file IO).
//!
//! `me.info`: line 1 the name, line 2 the client id as 32 hex digits (read in either case,
//! written lowercase), lines 3.. the Base64 of the PKCS#8 private key (read as one line or
//! wrapped, written wrapped at 72 columns with `\n` after each line, as Crypto++ does).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::crypto::{ClientKeyPair, CryptoError};
use crate::names::{ClientId, NameField};

/// Column at which the Base64 key is wrapped, as Crypto++'s `Base64Encoder` does.
const BASE64_WRAP_COLUMNS: usize = 72;

/// A registered v3 client: name, server-assigned id, and RSA key pair.
#[derive(Clone)]
pub struct Identity {
    name: NameField,
    client_id: ClientId,
    key: ClientKeyPair,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Identities are equal when they name the same registration (name and id); the key is
/// not compared.
impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.client_id == other.client_id && self.name == other.name
    }
}

impl Eq for Identity {}

/// Why a `me.info` text could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A required line is missing.
    #[error("me.info has no line {line} ({what}); expected name, client id, then the key")]
    MissingLine {
        /// 1-based line number.
        line: usize,
        /// What the line should hold.
        what: &'static str,
    },
    /// The name line is empty, too long or contains a NUL.
    #[error("me.info line 1: the name must be 1 to 254 bytes without NUL")]
    BadName,
    /// The id line is not 32 hex digits.
    #[error("me.info line 2: {found:?} is not a client id (32 hexadecimal digits)")]
    BadClientId {
        /// The text found.
        found: String,
    },
    /// The key lines are not Base64.
    #[error("me.info lines 3+: the private key is not valid Base64")]
    BadBase64,
    /// The key is not a usable RSA key.
    #[error("me.info lines 3+: {0}")]
    Key(#[from] CryptoError),
}

impl Identity {
    /// Assembles an identity.
    #[must_use]
    pub fn new(name: NameField, client_id: ClientId, key: ClientKeyPair) -> Self {
        Self {
            name,
            client_id,
            key,
        }
    }

    /// The client's name.
    #[must_use]
    pub fn name(&self) -> &NameField {
        &self.name
    }

    /// The server-assigned id.
    #[must_use]
    pub fn client_id(&self) -> ClientId {
        self.client_id
    }

    /// The RSA key pair.
    #[must_use]
    pub fn key(&self) -> &ClientKeyPair {
        &self.key
    }

    /// Reads a `me.info` text.
    ///
    /// # Errors
    /// An [`IdentityError`] naming the line at fault.
    pub fn parse_me_info(text: &str) -> Result<Self, IdentityError> {
        let mut lines = text.lines();
        let name_line = lines.next().ok_or(IdentityError::MissingLine {
            line: 1,
            what: "name",
        })?;
        let name = NameField::new(name_line.trim_end_matches('\r').as_bytes().to_vec())
            .map_err(|_| IdentityError::BadName)?;
        let id_line = lines.next().ok_or(IdentityError::MissingLine {
            line: 2,
            what: "client id",
        })?;
        let id_text = id_line.trim();
        let client_id = ClientId::from_hex(id_text).ok_or_else(|| IdentityError::BadClientId {
            found: id_text.to_owned(),
        })?;
        let key_text: Zeroizing<String> = Zeroizing::new(
            lines
                .flat_map(str::chars)
                .filter(|c| !c.is_whitespace())
                .collect(),
        );
        if key_text.is_empty() {
            return Err(IdentityError::MissingLine {
                line: 3,
                what: "Base64 private key",
            });
        }
        let der = Zeroizing::new(
            STANDARD
                .decode(key_text.as_bytes())
                .map_err(|_| IdentityError::BadBase64)?,
        );
        let key = ClientKeyPair::from_pkcs8_der(&der)?;
        Ok(Self::new(name, client_id, key))
    }

    /// The `me.info` text: name, lowercase id, 72-column Base64 of the PKCS#8 key.
    ///
    /// # Errors
    /// [`IdentityError::Key`] if the key cannot be encoded.
    pub fn to_me_info(&self) -> Result<Zeroizing<String>, IdentityError> {
        let der = self.key.to_pkcs8_der()?;
        let encoded = Zeroizing::new(STANDARD.encode(der.as_slice()));
        let mut text = Zeroizing::new(String::with_capacity(encoded.len() + 64));
        text.push_str(&self.name.to_string_lossy());
        text.push('\n');
        text.push_str(&self.client_id.to_hex());
        text.push('\n');
        for line in encoded.as_bytes().chunks(BASE64_WRAP_COLUMNS) {
            text.push_str(&String::from_utf8_lossy(line));
            text.push('\n');
        }
        Ok(text)
    }
}
