//! Splits a byte stream into v4 frames. Buffers at most one frame (≤ 65 539 bytes): the
//! header is checked before any payload byte is awaited.

use bytes::{Buf, Bytes, BytesMut};

use super::wire::{
    FRAME_HEADER_LEN, HELLO_HEADER_LEN, HELLO_PAYLOAD_LEN, PROTOCOL_VERSION_V4, TAG_LEN, WireError,
    check_hello_header, kind,
};

/// One frame off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The client's hello: Noise message 1.
    Hello(Bytes),
    /// Noise handshake message 2 or 3.
    Handshake(Bytes),
    /// Noise transport message (ciphertext and tag).
    Transport(Bytes),
    /// Unauthenticated server notice.
    Notice(Bytes),
}

/// Which side's frames a decoder reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Reads what a client sends: a hello first, then handshake and transport frames.
    FromClient,
    /// Reads what a server sends: handshake, transport and notice frames.
    FromServer,
}

/// Streaming frame decoder. After an error it stays failed and returns the same error.
#[derive(Debug)]
pub struct FrameDecoder {
    side: Side,
    hello_done: bool,
    failed: Option<WireError>,
}

impl FrameDecoder {
    /// A decoder for frames coming from `side`'s peer.
    #[must_use]
    pub fn new(side: Side) -> Self {
        Self {
            side,
            hello_done: side == Side::FromServer,
            failed: None,
        }
    }

    /// Takes one complete frame off `buf`, or `None` if more bytes are needed.
    ///
    /// # Errors
    /// A [`WireError`] for a malformed header; the decoder stays failed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.decode_inner(buf);
        if let Err(err) = &result {
            self.failed = Some(err.clone());
        }
        result
    }

    /// Reports a stream that ended with `buf` still holding part of a frame.
    ///
    /// # Errors
    /// [`WireError::Truncated`] when `buf` is not empty.
    pub fn decode_eof(&self, buf: &BytesMut) -> Result<(), WireError> {
        if buf.is_empty() {
            return Ok(());
        }
        let needed = if self.hello_done {
            match buf.get(2..4) {
                Some(len) => FRAME_HEADER_LEN + usize::from(u16::from_le_bytes([len[0], len[1]])),
                None => FRAME_HEADER_LEN,
            }
        } else {
            HELLO_HEADER_LEN + HELLO_PAYLOAD_LEN
        };
        Err(WireError::Truncated {
            missing: needed.saturating_sub(buf.len()).max(1),
        })
    }

    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if !self.hello_done {
            let Some(header) = buf.get(..HELLO_HEADER_LEN) else {
                return Ok(None);
            };
            let mut fixed = [0u8; HELLO_HEADER_LEN];
            fixed.copy_from_slice(header);
            check_hello_header(&fixed)?;
            if buf.len() < HELLO_HEADER_LEN + HELLO_PAYLOAD_LEN {
                return Ok(None);
            }
            buf.advance(HELLO_HEADER_LEN);
            self.hello_done = true;
            return Ok(Some(Frame::Hello(buf.split_to(HELLO_PAYLOAD_LEN).freeze())));
        }
        let Some(&version) = buf.first() else {
            return Ok(None);
        };
        if version != PROTOCOL_VERSION_V4 {
            if self.side == Side::FromServer && version == 3 {
                return Err(WireError::PeerSpeaksV3);
            }
            return Err(WireError::BadVersion { found: version });
        }
        let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let frame_kind = header[1];
        let len = usize::from(u16::from_le_bytes([header[2], header[3]]));
        let known = match self.side {
            Side::FromClient => matches!(frame_kind, kind::HANDSHAKE | kind::TRANSPORT),
            Side::FromServer => {
                matches!(frame_kind, kind::HANDSHAKE | kind::TRANSPORT | kind::NOTICE)
            }
        };
        if !known {
            return Err(WireError::UnknownKind { kind: frame_kind });
        }
        let min = if frame_kind == kind::TRANSPORT {
            TAG_LEN + 1
        } else {
            1
        };
        if len < min {
            return Err(WireError::FrameTooShort { len });
        }
        if buf.len() < FRAME_HEADER_LEN + len {
            buf.reserve(FRAME_HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_LEN);
        let payload = buf.split_to(len).freeze();
        Ok(Some(match frame_kind {
            kind::HANDSHAKE => Frame::Handshake(payload),
            kind::TRANSPORT => Frame::Transport(payload),
            _ => Frame::Notice(payload),
        }))
    }
}
