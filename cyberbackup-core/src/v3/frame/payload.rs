//! Typed payloads of every v3 request and response, with strict encoding and tolerant
//! decoding of the fixed parts. File content (1028) is streamed separately.

use bytes::{Buf, BufMut, Bytes};

use super::{RequestCode, RequestHeader, ResponseCode, ResponseHeader};
use crate::limits::{
    CLIENT_ID_LEN, FILE_META_LEN, FILE_META_LEN_U32, FILE_RECEIVED_LEN, NAME_FIELD_LEN,
    PROTOCOL_VERSION_V3,
};
use crate::names::{ClientId, NameField};
use crate::v3::codec::DecodeError;

/// A request other than 1028 (whose content is streamed), with its decoded payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// 1025: register `name`.
    Register {
        /// The client's name.
        name: NameField,
    },
    /// 1026: the client's public key (160-byte SPKI DER; tolerantly, with trailing bytes).
    PublicKey {
        /// The client's name.
        name: NameField,
        /// The raw public-key field.
        public_key: Bytes,
    },
    /// 1027: reconnect as `name` with the header's client id.
    Reconnect {
        /// The client's name.
        name: NameField,
    },
    /// 1029: checksum matched.
    CrcOk {
        /// The file concerned.
        file_name: NameField,
    },
    /// 1030: checksum mismatch, the file comes again.
    CrcRetry {
        /// The file concerned.
        file_name: NameField,
    },
    /// 1031: checksum mismatch for the last time.
    CrcAbort {
        /// The file concerned.
        file_name: NameField,
    },
}

impl Request {
    /// The request's code.
    #[must_use]
    pub fn code(&self) -> RequestCode {
        match self {
            Self::Register { .. } => RequestCode::REGISTER,
            Self::PublicKey { .. } => RequestCode::PUBLIC_KEY,
            Self::Reconnect { .. } => RequestCode::RECONNECT,
            Self::CrcOk { .. } => RequestCode::CRC_OK,
            Self::CrcRetry { .. } => RequestCode::CRC_RETRY,
            Self::CrcAbort { .. } => RequestCode::CRC_ABORT,
        }
    }

    /// Decodes the payload of a non-file request whose length the decoder already checked.
    ///
    /// # Errors
    /// [`DecodeError::UnknownRequestCode`] for 1028 or an unknown code,
    /// [`DecodeError::PayloadTooShort`] when the payload is shorter than the fixed part.
    pub fn decode(code: RequestCode, payload: &[u8]) -> Result<Self, DecodeError> {
        let Some(name_field) = payload.get(..NAME_FIELD_LEN) else {
            return Err(DecodeError::PayloadTooShort {
                code: code.0,
                len: payload.len(),
                min: NAME_FIELD_LEN,
            });
        };
        let name = NameField::decode(name_field);
        let request = match code {
            RequestCode::REGISTER => Self::Register { name },
            RequestCode::RECONNECT => Self::Reconnect { name },
            RequestCode::CRC_OK => Self::CrcOk { file_name: name },
            RequestCode::CRC_RETRY => Self::CrcRetry { file_name: name },
            RequestCode::CRC_ABORT => Self::CrcAbort { file_name: name },
            RequestCode::PUBLIC_KEY => Self::PublicKey {
                name,
                public_key: Bytes::copy_from_slice(payload.get(NAME_FIELD_LEN..).unwrap_or(&[])),
            },
            other => return Err(DecodeError::UnknownRequestCode { code: other.0 }),
        };
        Ok(request)
    }

    /// Appends the whole frame (23-byte header + payload) to `dst`.
    pub fn encode(&self, client_id: ClientId, dst: &mut impl BufMut) {
        let (name, key) = match self {
            Self::PublicKey { name, public_key } => (name, &public_key[..]),
            Self::Register { name }
            | Self::Reconnect { name }
            | Self::CrcOk { file_name: name }
            | Self::CrcRetry { file_name: name }
            | Self::CrcAbort { file_name: name } => (name, &[][..]),
        };
        let payload_len = NAME_FIELD_LEN + key.len();
        RequestHeader {
            client_id,
            version: PROTOCOL_VERSION_V3,
            code: self.code(),
            payload_len: u32::try_from(payload_len).unwrap_or(u32::MAX),
        }
        .encode(dst);
        name.encode(dst);
        dst.put_slice(key);
    }
}

/// The fixed 267-byte metadata at the start of every 1028 payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Ciphertext size: the whole file's (most clients) or this packet's (some clients).
    pub content_size: u32,
    /// Plaintext size: the whole file's (most clients) or this packet's (shlomi-style).
    pub orig_file_size: u32,
    /// 1-based packet number.
    pub packet_number: u16,
    /// Number of packets of the file.
    pub total_packets: u16,
    /// The file's name.
    pub file_name: NameField,
}

impl FileMeta {
    /// Reads the metadata from exactly [`FILE_META_LEN`] bytes.
    #[must_use]
    pub fn decode(bytes: &[u8; FILE_META_LEN]) -> Self {
        let mut buf = &bytes[..];
        let content_size = buf.get_u32_le();
        let orig_file_size = buf.get_u32_le();
        let packet_number = buf.get_u16_le();
        let total_packets = buf.get_u16_le();
        Self {
            content_size,
            orig_file_size,
            packet_number,
            total_packets,
            file_name: NameField::decode(buf),
        }
    }

    /// Appends the header of a 1028 frame carrying `content_len` content bytes, then this
    /// metadata. The content itself follows separately.
    pub fn encode_frame_head(&self, client_id: ClientId, content_len: u32, dst: &mut impl BufMut) {
        RequestHeader {
            client_id,
            version: PROTOCOL_VERSION_V3,
            code: RequestCode::SEND_FILE,
            payload_len: content_len.saturating_add(FILE_META_LEN_U32),
        }
        .encode(dst);
        dst.put_u32_le(self.content_size);
        dst.put_u32_le(self.orig_file_size);
        dst.put_u16_le(self.packet_number);
        dst.put_u16_le(self.total_packets);
        self.file_name.encode(dst);
    }
}

/// A decoded v3 response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// 1600: registered with this id.
    Registered {
        /// The new client id.
        client_id: ClientId,
    },
    /// 1601: registration failed (name taken).
    RegistrationFailed,
    /// 1602: the public key was accepted; the AES key follows, RSA-OAEP encrypted.
    PublicKeyAccepted {
        /// The client's id.
        client_id: ClientId,
        /// RSA-OAEP(SHA-1) ciphertext of the 32-byte AES key.
        encrypted_key: Bytes,
    },
    /// 1603: the file was received; `cksum` is the plaintext's POSIX cksum.
    FileReceived {
        /// The client's id.
        client_id: ClientId,
        /// Ciphertext length the server received (unreliable across servers).
        content_size: u32,
        /// The file name (unreliable across servers).
        file_name: NameField,
        /// POSIX cksum of the decrypted file.
        cksum: u32,
    },
    /// 1604: acknowledged.
    Acknowledged {
        /// The client's id.
        client_id: ClientId,
    },
    /// 1605: reconnected; a new AES key follows, RSA-OAEP encrypted.
    ReconnectAccepted {
        /// The client's id.
        client_id: ClientId,
        /// RSA-OAEP(SHA-1) ciphertext of the 32-byte AES key.
        encrypted_key: Bytes,
    },
    /// 1606: reconnect refused; register anew.
    ReconnectRefused {
        /// The id from the request header (or, urihor-style, a new one).
        client_id: ClientId,
    },
    /// 1607: general server error.
    ServerError,
}

impl Response {
    /// The response's code.
    #[must_use]
    pub fn code(&self) -> ResponseCode {
        match self {
            Self::Registered { .. } => ResponseCode::REGISTERED,
            Self::RegistrationFailed => ResponseCode::REGISTRATION_FAILED,
            Self::PublicKeyAccepted { .. } => ResponseCode::PUBLIC_KEY_ACCEPTED,
            Self::FileReceived { .. } => ResponseCode::FILE_RECEIVED,
            Self::Acknowledged { .. } => ResponseCode::ACKNOWLEDGED,
            Self::ReconnectAccepted { .. } => ResponseCode::RECONNECT_ACCEPTED,
            Self::ReconnectRefused { .. } => ResponseCode::RECONNECT_REFUSED,
            Self::ServerError => ResponseCode::SERVER_ERROR,
        }
    }

    /// Decodes a response payload (the decoder already applied the per-code size rules).
    ///
    /// # Errors
    /// [`DecodeError::UnknownResponseCode`] or [`DecodeError::PayloadTooShort`].
    pub fn decode(code: ResponseCode, payload: &[u8]) -> Result<Self, DecodeError> {
        let too_short = |min: usize| DecodeError::PayloadTooShort {
            code: code.0,
            len: payload.len(),
            min,
        };
        let client_id = || -> Result<ClientId, DecodeError> {
            let id = payload
                .get(..CLIENT_ID_LEN)
                .ok_or_else(|| too_short(CLIENT_ID_LEN))?;
            let mut raw = [0u8; CLIENT_ID_LEN];
            raw.copy_from_slice(id);
            Ok(ClientId(raw))
        };
        let key_after_id = || Bytes::copy_from_slice(payload.get(CLIENT_ID_LEN..).unwrap_or(&[]));
        let response = match code {
            ResponseCode::REGISTERED => Self::Registered {
                client_id: client_id()?,
            },
            ResponseCode::REGISTRATION_FAILED => Self::RegistrationFailed,
            ResponseCode::PUBLIC_KEY_ACCEPTED => Self::PublicKeyAccepted {
                client_id: client_id()?,
                encrypted_key: key_after_id(),
            },
            ResponseCode::FILE_RECEIVED => {
                let Some(fixed) = payload.get(..FILE_RECEIVED_LEN) else {
                    return Err(too_short(FILE_RECEIVED_LEN));
                };
                let mut buf = fixed.get(CLIENT_ID_LEN..).unwrap_or(&[]);
                let content_size = buf.get_u32_le();
                let file_name = NameField::decode(buf.get(..NAME_FIELD_LEN).unwrap_or(&[]));
                buf.advance(NAME_FIELD_LEN);
                let cksum = buf.get_u32_le();
                Self::FileReceived {
                    client_id: client_id()?,
                    content_size,
                    file_name,
                    cksum,
                }
            }
            ResponseCode::ACKNOWLEDGED => Self::Acknowledged {
                client_id: client_id()?,
            },
            ResponseCode::RECONNECT_ACCEPTED => Self::ReconnectAccepted {
                client_id: client_id()?,
                encrypted_key: key_after_id(),
            },
            ResponseCode::RECONNECT_REFUSED => Self::ReconnectRefused {
                client_id: client_id()?,
            },
            ResponseCode::SERVER_ERROR => Self::ServerError,
            other => return Err(DecodeError::UnknownResponseCode { code: other.0 }),
        };
        Ok(response)
    }

    /// Appends the whole frame (7-byte header + payload) to `dst`.
    pub fn encode(&self, dst: &mut impl BufMut) {
        let mut payload = Vec::new();
        match self {
            Self::Registered { client_id }
            | Self::Acknowledged { client_id }
            | Self::ReconnectRefused { client_id } => payload.put_slice(&client_id.0),
            Self::PublicKeyAccepted {
                client_id,
                encrypted_key,
            }
            | Self::ReconnectAccepted {
                client_id,
                encrypted_key,
            } => {
                payload.put_slice(&client_id.0);
                payload.put_slice(encrypted_key);
            }
            Self::FileReceived {
                client_id,
                content_size,
                file_name,
                cksum,
            } => {
                payload.put_slice(&client_id.0);
                payload.put_u32_le(*content_size);
                file_name.encode(&mut payload);
                payload.put_u32_le(*cksum);
            }
            Self::RegistrationFailed | Self::ServerError => {}
        }
        ResponseHeader {
            version: PROTOCOL_VERSION_V3,
            code: self.code(),
            payload_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        }
        .encode(dst);
        dst.put_slice(&payload);
    }

    /// The frame as bytes.
    #[must_use]
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::new();
        self.encode(&mut out);
        Bytes::from(out)
    }
}
