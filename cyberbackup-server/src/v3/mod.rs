//! Protocol v3, the legacy protocol (`docs/protocol.md`): the connection driver and the
//! effects it performs on the shared catalog and storage. The legacy flat per-file store is
//! all a v3 client can use.

mod driver;
mod effects;

pub(crate) use driver::serve;
