//! Streaming decoders and encoders of v3 frames over `bytes` buffers.
//!
//! [`RequestDecoder`] (server side) yields the fixed part of each request whole and the
//! content of 1028 frames as bounded [`Inbound::FileContent`] pieces; [`ResponseDecoder`]
//! (client side) yields whole responses. Both check the announced payload size against the
//! per-code limits in [`limits`](crate::limits) before waiting for the payload.

mod decoder;
mod error;
#[cfg(feature = "tokio-codec")]
pub mod tokio_codec;

pub use decoder::{Inbound, RequestDecoder, ResponseDecoder, request_payload_bounds};
pub use error::DecodeError;
