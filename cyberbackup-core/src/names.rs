//! Names and identifiers every protocol shares: the client id, and 255-byte name fields
//! (NUL-terminated, zero-padded; decoding is tolerant — text up to the first NUL, or the
//! whole field when there is none — and encoding is strict) with the one file-name validator.

use std::fmt;

use bytes::{BufMut, Bytes};

use crate::limits::{CLIENT_ID_LEN, MAX_NAME_TEXT_LEN, NAME_FIELD_LEN};

/// A client id: 16 raw bytes assigned by the server at registration.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ClientId(pub [u8; CLIENT_ID_LEN]);

impl ClientId {
    /// The all-zero id our client sends in 1025.
    pub const ZERO: Self = Self([0; CLIENT_ID_LEN]);

    /// Parses 32 hexadecimal digits in either case (me.info writers differ).
    ///
    /// # Errors
    /// Returns `None` when the text is not exactly 32 hex digits.
    #[must_use]
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut id = [0u8; CLIENT_ID_LEN];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(Self(id))
    }

    /// Lowercase hexadecimal form, as written to me.info.
    #[must_use]
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({self})")
    }
}

/// The text of a 255-byte name field, as decoded from or encoded to the wire.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NameField {
    text: Bytes,
    bytes_after_nul: bool,
}

/// A name that does not fit a 255-byte field with its terminating NUL, or contains a NUL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "name of {len} bytes cannot be sent: names must be 1 to {MAX_NAME_TEXT_LEN} bytes without NUL"
)]
pub struct NameTooLong {
    /// Length of the rejected name in bytes.
    pub len: usize,
}

impl NameField {
    /// A name to send. Strict: 1 to 254 bytes (room for the NUL), no NUL inside.
    ///
    /// # Errors
    /// [`NameTooLong`] when the text is empty, longer than 254 bytes or contains a NUL.
    pub fn new(text: impl Into<Bytes>) -> Result<Self, NameTooLong> {
        let text = text.into();
        if text.is_empty() || text.len() > MAX_NAME_TEXT_LEN || text.contains(&0) {
            return Err(NameTooLong { len: text.len() });
        }
        Ok(Self {
            text,
            bytes_after_nul: false,
        })
    }

    /// Reads a field tolerantly: the text ends at the first NUL or at the end of the field.
    /// `field` is normally [`NAME_FIELD_LEN`] bytes long.
    #[must_use]
    pub fn decode(field: &[u8]) -> Self {
        let (text, rest) = match field.iter().position(|&b| b == 0) {
            Some(nul) => field.split_at(nul),
            None => (field, &[][..]),
        };
        Self {
            text: Bytes::copy_from_slice(text),
            bytes_after_nul: rest.iter().any(|&b| b != 0),
        }
    }

    /// Appends the 255-byte field: the text, then zeros. Text longer than 254 bytes (only
    /// possible for a decoded field without NUL) is cut so the field stays NUL-terminated.
    pub fn encode(&self, dst: &mut impl BufMut) {
        let text = self.text.get(..MAX_NAME_TEXT_LEN).unwrap_or(&self.text);
        dst.put_slice(text);
        dst.put_bytes(0, NAME_FIELD_LEN - text.len());
    }

    /// The name's bytes (without NUL and padding).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }

    /// Whether non-zero bytes followed the first NUL (an embedded NUL in the name).
    #[must_use]
    pub fn has_bytes_after_nul(&self) -> bool {
        self.bytes_after_nul
    }

    /// The name for display: invalid UTF-8 is replaced.
    #[must_use]
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }
}

impl fmt::Debug for NameField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NameField({:?})", self.to_string_lossy())
    }
}

/// A file name that passed the one validator: it names a file, not a path.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FileName(NameField);

/// Why a file name from the wire was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidFileName {
    /// The name is empty.
    #[error("the file name is empty")]
    Empty,
    /// The name contains `/` or `\`, so it would be a path.
    #[error("the file name contains a path separator ('/' or '\\')")]
    PathSeparator,
    /// The name is `.` or `..`.
    #[error("the file name is '.' or '..'")]
    DotName,
    /// The name starts with a drive letter such as `C:`.
    #[error("the file name is an absolute Windows path (drive letter)")]
    DriveLetter,
    /// Non-zero bytes follow a NUL inside the field.
    #[error("the file name contains a NUL byte")]
    EmbeddedNul,
    /// The name fills the whole field with no NUL terminator left.
    #[error("the file name fills the 255-byte field without a terminating NUL")]
    Unterminated,
}

impl FileName {
    /// Validates a decoded name field as a file name: non-empty, no path separators,
    /// not `.`/`..`, no drive letter, no embedded NUL. Odd but harmless names (spaces,
    /// non-ASCII bytes, device names such as `CON`) pass; storage maps them to safe names.
    ///
    /// # Errors
    /// The [`InvalidFileName`] reason.
    pub fn validate(field: NameField) -> Result<Self, InvalidFileName> {
        let text = field.as_bytes();
        if text.is_empty() {
            return Err(InvalidFileName::Empty);
        }
        if field.has_bytes_after_nul() {
            return Err(InvalidFileName::EmbeddedNul);
        }
        if text.len() > MAX_NAME_TEXT_LEN {
            return Err(InvalidFileName::Unterminated);
        }
        if text.iter().any(|&b| b == b'/' || b == b'\\') {
            return Err(InvalidFileName::PathSeparator);
        }
        if text == b"." || text == b".." {
            return Err(InvalidFileName::DotName);
        }
        if let [letter, b':', ..] = text
            && letter.is_ascii_alphabetic()
        {
            return Err(InvalidFileName::DriveLetter);
        }
        Ok(Self(field))
    }

    /// The validated name's bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The name as a wire field.
    #[must_use]
    pub fn field(&self) -> &NameField {
        &self.0
    }

    /// The name for display: invalid UTF-8 is replaced.
    #[must_use]
    pub fn to_string_lossy(&self) -> String {
        self.0.to_string_lossy()
    }
}

impl fmt::Debug for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileName({:?})", self.to_string_lossy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(text: &[u8]) -> Vec<u8> {
        let mut field = text.to_vec();
        field.resize(NAME_FIELD_LEN, 0);
        field
    }

    #[test]
    fn decode_stops_at_first_nul_and_encode_zero_fills() {
        let name = NameField::decode(&field(b"small.txt"));
        assert_eq!(name.as_bytes(), b"small.txt");
        let mut out = Vec::new();
        name.encode(&mut out);
        assert_eq!(out, field(b"small.txt"));
    }

    #[test]
    fn decode_without_nul_keeps_the_whole_field() {
        let raw = vec![b'a'; NAME_FIELD_LEN];
        let name = NameField::decode(&raw);
        assert_eq!(name.as_bytes().len(), NAME_FIELD_LEN);
        assert_eq!(FileName::validate(name), Err(InvalidFileName::Unterminated));
    }

    #[test]
    fn strict_constructor_rejects_what_cannot_be_sent() {
        assert!(NameField::new(&b""[..]).is_err());
        assert!(NameField::new(vec![b'a'; 255]).is_err());
        assert!(NameField::new(&b"a\0b"[..]).is_err());
        assert!(NameField::new(vec![b'a'; 254]).is_ok());
    }

    #[test]
    fn file_name_validator_rejects_escapes_and_keeps_odd_names() {
        let check = |raw: &[u8]| FileName::validate(NameField::decode(&field(raw))).map(|_| ());
        assert_eq!(check(b""), Err(InvalidFileName::Empty));
        assert_eq!(check(b"../etc"), Err(InvalidFileName::PathSeparator));
        assert_eq!(check(b"a\\b"), Err(InvalidFileName::PathSeparator));
        assert_eq!(check(b"/etc/passwd"), Err(InvalidFileName::PathSeparator));
        assert_eq!(check(b".."), Err(InvalidFileName::DotName));
        assert_eq!(check(b"."), Err(InvalidFileName::DotName));
        assert_eq!(check(b"C:evil"), Err(InvalidFileName::DriveLetter));
        assert_eq!(check(b"a\0b"), Err(InvalidFileName::EmbeddedNul));
        assert_eq!(check(b"my file.txt"), Ok(()));
        assert_eq!(check("caf\u{e9}.txt".as_bytes()), Ok(()));
        assert_eq!(check(b"CON"), Ok(()));
        assert_eq!(check(b"a..b"), Ok(()));
    }
}
