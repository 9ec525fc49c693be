//! `tokio_util::codec` adapters, so a `Framed` socket can carry v3 frames. Only the codec
//! traits are used: the core does not depend on tokio's runtime.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{DecodeError, Inbound, RequestDecoder, ResponseDecoder};
use crate::names::ClientId;
use crate::v3::frame::{Request, Response, ResponseHeader};

/// Error of the tokio adapters: a decode error or an I/O error of the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The peer sent bytes that are not a valid frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The transport failed.
    #[error("transport error: {0}")]
    Io(#[from] io::Error),
}

/// Server-side codec: decodes requests (file content streamed), encodes responses.
#[derive(Debug, Default)]
pub struct ServerCodec {
    decoder: RequestDecoder,
}

impl Decoder for ServerCodec {
    type Item = Inbound;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        Ok(self.decoder.decode(src)?)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, CodecError> {
        if let Some(item) = self.decoder.decode(src)? {
            return Ok(Some(item));
        }
        self.decoder.decode_eof(src)?;
        Ok(None)
    }
}

impl Encoder<Response> for ServerCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Response, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode(dst);
        Ok(())
    }
}

/// Client-side codec: decodes responses, encodes requests or passes pre-encoded bytes
/// (file frames produced by [`ClientSession`](crate::v3::ClientSession)).
#[derive(Debug, Default)]
pub struct ClientCodec {
    decoder: ResponseDecoder,
}

impl Decoder for ClientCodec {
    type Item = (ResponseHeader, Response);
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        Ok(self.decoder.decode(src)?)
    }
}

impl Encoder<(ClientId, Request)> for ClientCodec {
    type Error = CodecError;

    fn encode(&mut self, item: (ClientId, Request), dst: &mut BytesMut) -> Result<(), CodecError> {
        let (client_id, request) = item;
        request.encode(client_id, dst);
        Ok(())
    }
}

impl Encoder<Bytes> for ClientCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}
