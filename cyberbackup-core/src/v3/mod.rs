//! Protocol v3, the legacy CyberBackup 3.0 wire protocol: its frames and codecs, and the
//! transfer state machines for both ends of a connection.

pub mod codec;
pub mod frame;

mod client;
mod error;
mod server;

use crate::session::{IdleTimer, Output, Timer};

pub use client::{
    ClientConfig, ClientEffect, ClientEvent, ClientOutput, ClientSession, FileFailure, FileId,
    FileSpec, PacketScheme, TransferPhase,
};
pub use error::{PeerMisbehaved, SessionError};
pub use server::{
    ClientQuirk, DiscardReason, RegistrationOutcome, ServerConfig, ServerEffect, ServerEvent,
    ServerOutput, ServerSession, StorageFailure, StoredClient, TransferId,
};

/// Why a session asks to close the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The session finished its work.
    Done,
    /// The peer closed its side.
    PeerClosed,
    /// The peer was silent longer than the idle timeout.
    IdleTimeout,
    /// A fatal error; the reply (if any) was queued before this.
    Error(SessionError),
}
