//! The 23-byte request header and the 7-byte response header. All integers are little-endian.

use std::fmt;

use bytes::{Buf, BufMut};

use super::{RequestCode, ResponseCode};
use crate::limits::{CLIENT_ID_LEN, REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN};

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

/// The 23-byte header in front of every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RequestHeader {
    /// Client id (ignored by servers in 1025).
    pub client_id: ClientId,
    /// Protocol version byte.
    pub version: u8,
    /// Request code.
    pub code: RequestCode,
    /// Number of payload bytes that follow.
    pub payload_len: u32,
}

impl RequestHeader {
    /// Reads a header from exactly [`REQUEST_HEADER_LEN`] bytes.
    #[must_use]
    pub fn decode(bytes: &[u8; REQUEST_HEADER_LEN]) -> Self {
        let mut buf = &bytes[..];
        let mut client_id = [0u8; CLIENT_ID_LEN];
        buf.copy_to_slice(&mut client_id);
        let version = buf.get_u8();
        let code = RequestCode(buf.get_u16_le());
        let payload_len = buf.get_u32_le();
        Self {
            client_id: ClientId(client_id),
            version,
            code,
            payload_len,
        }
    }

    /// Appends the 23 header bytes to `dst`.
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_slice(&self.client_id.0);
        dst.put_u8(self.version);
        dst.put_u16_le(self.code.0);
        dst.put_u32_le(self.payload_len);
    }
}

/// The 7-byte header in front of every response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ResponseHeader {
    /// Protocol version byte.
    pub version: u8,
    /// Response code.
    pub code: ResponseCode,
    /// Number of payload bytes the header declares.
    pub payload_len: u32,
}

impl ResponseHeader {
    /// Reads a header from exactly [`RESPONSE_HEADER_LEN`] bytes.
    #[must_use]
    pub fn decode(bytes: &[u8; RESPONSE_HEADER_LEN]) -> Self {
        let mut buf = &bytes[..];
        let version = buf.get_u8();
        let code = ResponseCode(buf.get_u16_le());
        let payload_len = buf.get_u32_le();
        Self {
            version,
            code,
            payload_len,
        }
    }

    /// Appends the 7 header bytes to `dst`.
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u8(self.version);
        dst.put_u16_le(self.code.0);
        dst.put_u32_le(self.payload_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_matches_the_annotated_capture() {
        let wire: [u8; 23] = [
            0xb9, 0x70, 0xce, 0x91, 0x68, 0x48, 0x44, 0xc3, 0xbb, 0x37, 0x31, 0x06, 0xf3, 0x42,
            0x20, 0xe9, 0x03, 0x04, 0x04, 0x5b, 0x01, 0x00, 0x00,
        ];
        let header = RequestHeader::decode(&wire);
        assert_eq!(header.code, RequestCode::SEND_FILE);
        assert_eq!(header.payload_len, 347);
        assert_eq!(
            header.client_id.to_hex(),
            "b970ce91684844c3bb373106f34220e9"
        );
        let mut out = Vec::new();
        header.encode(&mut out);
        assert_eq!(out, wire);
    }

    #[test]
    fn client_id_hex_is_case_insensitive() {
        let upper = ClientId::from_hex("32B4045A00000000000000000000ABCD");
        let lower = ClientId::from_hex("32b4045a00000000000000000000abcd");
        assert!(upper.is_some());
        assert_eq!(upper, lower);
        assert_eq!(ClientId::from_hex("32b4"), None);
        assert_eq!(ClientId::from_hex(&"g".repeat(32)), None);
    }
}
