//! Typed v3 frames: codes, headers, name fields and the payload of every request and response.

mod code;
mod header;
mod payload;

pub use code::{RequestCode, ResponseCode};
pub use header::{RequestHeader, ResponseHeader};
pub use payload::{FileMeta, Request, Response};
