//! Request and response codes as open newtypes: unknown values stay representable so the
//! decoder can report them instead of panicking.

use std::fmt;

/// A v3 request code (client to server). Values are fixed by the protocol: do not modify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct RequestCode(pub u16);

impl RequestCode {
    /// 1025: register a new client name.
    pub const REGISTER: Self = Self(1025);
    /// 1026: send the client's RSA public key.
    pub const PUBLIC_KEY: Self = Self(1026);
    /// 1027: reconnect with a stored client id and name.
    pub const RECONNECT: Self = Self(1027);
    /// 1028: send (one packet of) a file.
    pub const SEND_FILE: Self = Self(1028);
    /// 1029: the server's checksum matched.
    pub const CRC_OK: Self = Self(1029);
    /// 1030: the checksum did not match; the file will be sent again.
    pub const CRC_RETRY: Self = Self(1030);
    /// 1031: the checksum did not match for the last time; giving up.
    pub const CRC_ABORT: Self = Self(1031);

    /// Every request code v3 defines.
    pub const ALL: [Self; 7] = [
        Self::REGISTER,
        Self::PUBLIC_KEY,
        Self::RECONNECT,
        Self::SEND_FILE,
        Self::CRC_OK,
        Self::CRC_RETRY,
        Self::CRC_ABORT,
    ];

    /// Whether v3 defines this code.
    #[must_use]
    pub fn is_known(self) -> bool {
        Self::ALL.contains(&self)
    }
}

impl fmt::Display for RequestCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A v3 response code (server to client). Values are fixed by the protocol: do not modify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ResponseCode(pub u16);

impl ResponseCode {
    /// 1600: registration succeeded; carries the new client id.
    pub const REGISTERED: Self = Self(1600);
    /// 1601: registration failed (the name is taken).
    pub const REGISTRATION_FAILED: Self = Self(1601);
    /// 1602: public key received; carries the encrypted AES key.
    pub const PUBLIC_KEY_ACCEPTED: Self = Self(1602);
    /// 1603: file received; carries the checksum of the plaintext.
    pub const FILE_RECEIVED: Self = Self(1603);
    /// 1604: message received, thanks (answers 1029 and 1031).
    pub const ACKNOWLEDGED: Self = Self(1604);
    /// 1605: reconnect accepted; carries a new encrypted AES key.
    pub const RECONNECT_ACCEPTED: Self = Self(1605);
    /// 1606: reconnect refused; the client must register anew.
    pub const RECONNECT_REFUSED: Self = Self(1606);
    /// 1607: general server error.
    pub const SERVER_ERROR: Self = Self(1607);

    /// Every response code v3 defines.
    pub const ALL: [Self; 8] = [
        Self::REGISTERED,
        Self::REGISTRATION_FAILED,
        Self::PUBLIC_KEY_ACCEPTED,
        Self::FILE_RECEIVED,
        Self::ACKNOWLEDGED,
        Self::RECONNECT_ACCEPTED,
        Self::RECONNECT_REFUSED,
        Self::SERVER_ERROR,
    ];

    /// Whether v3 defines this code.
    #[must_use]
    pub fn is_known(self) -> bool {
        Self::ALL.contains(&self)
    }
}

impl fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
