//! Incremental decoders. Each call consumes what it can from the front of a `BytesMut` and
//! yields at most one item; bytes of an unfinished fixed part stay in the buffer.

use bytes::{Buf, Bytes, BytesMut};

use super::DecodeError;
use crate::limits::{
    CLIENT_ID_LEN, FILE_META_LEN, FILE_META_LEN_U32, FILE_RECEIVED_LEN, MAX_CONTENT_PIECE,
    MAX_ENCRYPTED_KEY_LEN, MAX_FILE_FRAME_PAYLOAD, MAX_PUBLIC_KEY_FIELD_LEN, NAME_FIELD_LEN,
    PROTOCOL_VERSION_V3, REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN,
};
use crate::v3::frame::{
    FileMeta, Request, RequestCode, RequestHeader, Response, ResponseCode, ResponseHeader,
};

/// One decoded unit of the client-to-server stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A complete request other than 1028.
    Request {
        /// The request's header.
        header: RequestHeader,
        /// The decoded payload.
        request: Request,
    },
    /// The start of a 1028 frame: header and metadata; `content_len` content bytes follow.
    FileHeader {
        /// The frame's header.
        header: RequestHeader,
        /// The 267-byte metadata.
        meta: FileMeta,
        /// Number of content bytes in this frame.
        content_len: u32,
    },
    /// A piece of 1028 content, at most [`MAX_CONTENT_PIECE`] bytes.
    FileContent(Bytes),
    /// The end of the current 1028 frame.
    FileEnd,
}

/// Smallest and largest payload accepted for a request code, or `None` for an unknown code.
#[must_use]
pub fn request_payload_bounds(code: RequestCode) -> Option<(usize, u64)> {
    let name_only = (NAME_FIELD_LEN, NAME_FIELD_LEN as u64);
    match code {
        RequestCode::REGISTER
        | RequestCode::RECONNECT
        | RequestCode::CRC_OK
        | RequestCode::CRC_RETRY
        | RequestCode::CRC_ABORT => Some(name_only),
        RequestCode::PUBLIC_KEY => Some((
            NAME_FIELD_LEN + 1,
            (NAME_FIELD_LEN + MAX_PUBLIC_KEY_FIELD_LEN) as u64,
        )),
        RequestCode::SEND_FILE => Some((FILE_META_LEN, u64::from(MAX_FILE_FRAME_PAYLOAD))),
        _ => None,
    }
}

#[derive(Clone, Debug)]
enum RequestState {
    Header,
    Payload(RequestHeader),
    FileMeta(RequestHeader),
    Content { remaining: u64 },
    ContentDone,
    Failed(DecodeError),
}

/// Decoder of the client-to-server byte stream. Memory is bounded: it never asks for more
/// than one fixed part (at most a few hundred bytes) to be buffered, and yields content as
/// zero-copy pieces split off the input.
#[derive(Clone, Debug)]
pub struct RequestDecoder {
    state: RequestState,
}

impl Default for RequestDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestDecoder {
    /// A decoder at the start of a stream.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: RequestState::Header,
        }
    }

    /// Whether the decoder is between frames (a clean place for the stream to end).
    #[must_use]
    pub fn is_at_frame_boundary(&self) -> bool {
        matches!(self.state, RequestState::Header)
    }

    /// Decodes the next item from the front of `src`, or `Ok(None)` if more bytes are needed.
    /// After an error the decoder stays failed and returns the same error.
    ///
    /// # Errors
    /// A [`DecodeError`] for a wrong version, an unknown code or a payload size outside the
    /// code's bounds; the error is reported as soon as the header is complete.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, DecodeError> {
        let result = self.step(src);
        if let Err(err) = &result {
            self.state = RequestState::Failed(err.clone());
        }
        result
    }

    /// Reports whether the stream may end here.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] when the stream ended inside a frame.
    pub fn decode_eof(&mut self, src: &BytesMut) -> Result<(), DecodeError> {
        let missing = match &self.state {
            RequestState::Header if src.is_empty() => return Ok(()),
            RequestState::Header => (REQUEST_HEADER_LEN - src.len().min(REQUEST_HEADER_LEN)) as u64,
            RequestState::Payload(header) => {
                u64::from(header.payload_len).saturating_sub(src.len() as u64)
            }
            RequestState::FileMeta(header) => {
                u64::from(header.payload_len).saturating_sub(src.len() as u64)
            }
            RequestState::Content { remaining } => remaining.saturating_sub(src.len() as u64),
            RequestState::ContentDone => return Ok(()),
            RequestState::Failed(err) => return Err(err.clone()),
        };
        let err = DecodeError::Truncated {
            missing: missing.max(1),
        };
        self.state = RequestState::Failed(err.clone());
        Err(err)
    }

    fn step(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, DecodeError> {
        loop {
            match &mut self.state {
                RequestState::Failed(err) => return Err(err.clone()),
                RequestState::Header => {
                    let Some(raw) = src.get(..REQUEST_HEADER_LEN) else {
                        return Ok(None);
                    };
                    let mut fixed = [0u8; REQUEST_HEADER_LEN];
                    fixed.copy_from_slice(raw);
                    let header = RequestHeader::decode(&fixed);
                    check_request_header(&header)?;
                    src.advance(REQUEST_HEADER_LEN);
                    self.state = if header.code == RequestCode::SEND_FILE {
                        RequestState::FileMeta(header)
                    } else {
                        RequestState::Payload(header)
                    };
                }
                RequestState::Payload(header) => {
                    let header = *header;
                    let len = header.payload_len as usize;
                    let Some(payload) = src.get(..len) else {
                        return Ok(None);
                    };
                    let request = Request::decode(header.code, payload)?;
                    src.advance(len);
                    self.state = RequestState::Header;
                    return Ok(Some(Inbound::Request { header, request }));
                }
                RequestState::FileMeta(header) => {
                    let header = *header;
                    let Some(raw) = src.get(..FILE_META_LEN) else {
                        return Ok(None);
                    };
                    let mut fixed = [0u8; FILE_META_LEN];
                    fixed.copy_from_slice(raw);
                    src.advance(FILE_META_LEN);
                    let meta = FileMeta::decode(&fixed);
                    let content_len = header.payload_len - FILE_META_LEN_U32;
                    self.state = RequestState::Content {
                        remaining: u64::from(content_len),
                    };
                    return Ok(Some(Inbound::FileHeader {
                        header,
                        meta,
                        content_len,
                    }));
                }
                RequestState::Content { remaining } => {
                    if *remaining == 0 {
                        self.state = RequestState::ContentDone;
                        continue;
                    }
                    if src.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(src.len())
                        .min(MAX_CONTENT_PIECE);
                    *remaining -= take as u64;
                    return Ok(Some(Inbound::FileContent(src.split_to(take).freeze())));
                }
                RequestState::ContentDone => {
                    self.state = RequestState::Header;
                    return Ok(Some(Inbound::FileEnd));
                }
            }
        }
    }
}

fn check_request_header(header: &RequestHeader) -> Result<(), DecodeError> {
    if header.version != PROTOCOL_VERSION_V3 {
        return Err(DecodeError::UnsupportedVersion {
            version: header.version,
        });
    }
    let Some((min, max)) = request_payload_bounds(header.code) else {
        return Err(DecodeError::UnknownRequestCode {
            code: header.code.0,
        });
    };
    let len = header.payload_len;
    if u64::from(len) > max {
        return Err(DecodeError::PayloadTooLarge {
            code: header.code.0,
            len: u64::from(len),
            max,
        });
    }
    if (len as usize) < min {
        return Err(DecodeError::PayloadTooShort {
            code: header.code.0,
            len: len as usize,
            min,
        });
    }
    Ok(())
}

/// Payload bounds of a response code and the length to read when the header declares less
/// (urihor's server sends 1600 and 1606 with payload size 0 followed by the 16-byte id).
fn response_payload_rule(code: ResponseCode) -> Option<ResponseRule> {
    let id_only = ResponseRule {
        min_read: CLIENT_ID_LEN,
        max: CLIENT_ID_LEN,
    };
    let rule = match code {
        ResponseCode::REGISTERED | ResponseCode::RECONNECT_REFUSED => id_only,
        ResponseCode::ACKNOWLEDGED => ResponseRule {
            min_read: 0,
            max: CLIENT_ID_LEN,
        },
        ResponseCode::REGISTRATION_FAILED | ResponseCode::SERVER_ERROR => ResponseRule {
            min_read: 0,
            max: CLIENT_ID_LEN,
        },
        ResponseCode::PUBLIC_KEY_ACCEPTED | ResponseCode::RECONNECT_ACCEPTED => ResponseRule {
            min_read: 0,
            max: CLIENT_ID_LEN + MAX_ENCRYPTED_KEY_LEN,
        },
        ResponseCode::FILE_RECEIVED => ResponseRule {
            min_read: 0,
            max: FILE_RECEIVED_LEN,
        },
        _ => return None,
    };
    Some(rule)
}

#[derive(Clone, Copy, Debug)]
struct ResponseRule {
    /// Bytes read even when the header declares fewer.
    min_read: usize,
    /// Largest declared payload accepted.
    max: usize,
}

#[derive(Clone, Debug)]
enum ResponseState {
    Header,
    Payload { header: ResponseHeader, len: usize },
    Failed(DecodeError),
}

/// Decoder of the server-to-client byte stream, tolerant of the deviations real servers
/// show (see `docs/protocol.md`).
#[derive(Clone, Debug)]
pub struct ResponseDecoder {
    state: ResponseState,
}

impl Default for ResponseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseDecoder {
    /// A decoder at the start of a stream.
    #[must_use]
    pub fn new() -> Self {
        Self {
            state: ResponseState::Header,
        }
    }

    /// Decodes the next response from the front of `src`, or `Ok(None)` if more bytes are
    /// needed. After an error the decoder stays failed.
    ///
    /// # Errors
    /// A [`DecodeError`] for a wrong version, an unknown code or a size outside the bounds.
    pub fn decode(
        &mut self,
        src: &mut BytesMut,
    ) -> Result<Option<(ResponseHeader, Response)>, DecodeError> {
        let result = self.step(src);
        if let Err(err) = &result {
            self.state = ResponseState::Failed(err.clone());
        }
        result
    }

    fn step(
        &mut self,
        src: &mut BytesMut,
    ) -> Result<Option<(ResponseHeader, Response)>, DecodeError> {
        loop {
            match &self.state {
                ResponseState::Failed(err) => return Err(err.clone()),
                ResponseState::Header => {
                    let Some(raw) = src.get(..RESPONSE_HEADER_LEN) else {
                        return Ok(None);
                    };
                    let mut fixed = [0u8; RESPONSE_HEADER_LEN];
                    fixed.copy_from_slice(raw);
                    let header = ResponseHeader::decode(&fixed);
                    if header.version != PROTOCOL_VERSION_V3 {
                        return Err(DecodeError::UnsupportedVersion {
                            version: header.version,
                        });
                    }
                    let Some(rule) = response_payload_rule(header.code) else {
                        return Err(DecodeError::UnknownResponseCode {
                            code: header.code.0,
                        });
                    };
                    let declared = header.payload_len as usize;
                    if header.payload_len as u64 > rule.max as u64 {
                        return Err(DecodeError::PayloadTooLarge {
                            code: header.code.0,
                            len: u64::from(header.payload_len),
                            max: rule.max as u64,
                        });
                    }
                    src.advance(RESPONSE_HEADER_LEN);
                    self.state = ResponseState::Payload {
                        header,
                        len: declared.max(rule.min_read),
                    };
                }
                ResponseState::Payload { header, len } => {
                    let (header, len) = (*header, *len);
                    let Some(payload) = src.get(..len) else {
                        return Ok(None);
                    };
                    let response = Response::decode(header.code, payload)?;
                    src.advance(len);
                    self.state = ResponseState::Header;
                    return Ok(Some((header, response)));
                }
            }
        }
    }
}
