//! Typed v3 frames: codes, headers, name fields and the payload of every request and response.

mod code;
mod header;
mod name;
mod payload;

pub use code::{RequestCode, ResponseCode};
pub use header::{ClientId, RequestHeader, ResponseHeader};
pub use name::{FileName, InvalidFileName, NameField, NameTooLong};
pub use payload::{FileMeta, Request, Response};
