//! `ServerSession`: the server's side of one v3 connection.
//!
//! It decodes requests, decides every reply, and asks the driver to carry out catalog and
//! storage work as [`ServerEffect`]s. It never acknowledges a file (1603) before the driver
//! reported the file durable, nor verifies it (1604) before the driver committed it.
//!
//! ## Multi-packet files
//! The scheme is decided from packet 1 alone, so nothing is buffered (with `C` =
//! `content_size`, `O` = `orig_file_size`, `L` = content bytes in the frame, `T` = total):
//! - `T = 1`: one CBC message; `C < L` means urihor-style zero padding: only `C` bytes count.
//! - `T > 1`, `C = L` and `C = cbc_len(O)`: per-packet encryption (shlomi): every packet is a
//!   CBC message of its own whose plaintext is `O` bytes of that packet.
//! - `T > 1`, `C = L` otherwise: one CBC stream sliced into packets, `content_size` per packet
//!   (Tom); `O` is the total plaintext.
//! - `T > 1`, `C > L`: one sliced CBC stream, `content_size` is the total ciphertext (H3,
//!   itay, urihor); bytes past `C` (zero padding) are ignored.
//!
//! Empty packets are skipped; a surplus packet `T + 1` after the last is discarded.
//!
//! Two deviations of real clients are accepted without weakening any check (see
//! [`ClientQuirk`]): packet numbers that wrap at 16 bits (a total-size sender whose
//! `content_size` needs more than 65 535 packets of the first packet's length), and a
//! 16-byte zero block before the content (`C` is the ciphertext of `O + 16` bytes and the
//! first 16 decrypted bytes are zero).
//!
//! ## Failed files
//! A file that fails gets one 1607; the rest of its packets (any packet but a packet 1, until
//! the next request or packet 1) is dropped silently, and their count reported once
//! ([`ServerEvent::PacketsDropped`]). A file that fails to decrypt (bad PKCS#7 padding, or
//! ciphertext not a multiple of 16 bytes) also closes the connection
//! ([`ServerEvent::DecryptFailed`]): v3 cannot authenticate a file, and an attacker who holds a
//! session key wrapped for someone else's id would otherwise try random ciphertexts until the
//! padding happens to be valid.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand_core::CryptoRngCore;

use super::{CloseReason, IdleTimer, Output, PeerMisbehaved, SessionError, Timer};
use crate::crypto::{AesKey, CbcDecryptor, Cksum, CryptoError, PublicKey, cbc_ciphertext_len};
use crate::limits::{CLIENT_ID_LEN, DEFAULT_IDLE_TIMEOUT, MAX_NAME_TEXT_LEN, MAX_V3_FILE_LEN};
use crate::names::{ClientId, FileName, NameField};
use crate::v3::codec::{Inbound, RequestDecoder};
use crate::v3::frame::{FileMeta, Request, RequestCode, Response};

/// Settings of a server session (plain data, shared between connections).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Silence after which the connection is dropped and an unfinished file discarded.
    pub idle_timeout: Duration,
    /// Largest plaintext file accepted, in bytes.
    pub max_file_len: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_file_len: MAX_V3_FILE_LEN,
        }
    }
}

/// A server-side transfer handle, unique within one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransferId(pub u64);

/// A client as the catalog knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredClient {
    /// The client's id.
    pub client_id: ClientId,
    /// The registered name's bytes.
    pub name: Bytes,
    /// The stored public key (SPKI DER), if the client ever sent one.
    pub public_key: Option<Bytes>,
}

/// The catalog's answer to [`ServerEffect::RegisterClient`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationOutcome {
    /// The client was stored under the proposed id.
    Registered,
    /// The name is already registered.
    NameTaken,
    /// The catalog failed.
    Failed(StorageFailure),
}

/// A storage or catalog failure, as the driver reports it to the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageFailure {
    /// What failed, for logs (never shown to the peer).
    pub reason: String,
}

/// Work the driver carries out for a server session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEffect {
    /// Store a new client. Answer with [`ServerSession::handle_registration`].
    RegisterClient {
        /// The id the session drew for it.
        client_id: ClientId,
        /// The requested name.
        name: NameField,
    },
    /// Look up a client by id. Answer with [`ServerSession::handle_client_lookup`].
    LookupClient {
        /// The id from the request header.
        client_id: ClientId,
    },
    /// Store the client's public key. Answer with [`ServerSession::handle_storage`].
    StorePublicKey {
        /// The client's id.
        client_id: ClientId,
        /// SubjectPublicKeyInfo DER.
        public_key: Bytes,
    },
    /// Start a file: create its temporary file. Answer with `handle_storage`.
    BeginFile {
        /// The transfer.
        transfer: TransferId,
        /// The owner.
        client_id: ClientId,
        /// The validated file name.
        file_name: FileName,
    },
    /// Append decrypted bytes to the transfer's temporary file. Answer with `handle_storage`.
    AppendFile {
        /// The transfer.
        transfer: TransferId,
        /// Plaintext to append.
        data: Bytes,
    },
    /// Make the temporary file durable (fsync) and record its checksum; the session sends
    /// 1603 after the answer. Answer with `handle_storage`.
    FinishFile {
        /// The transfer.
        transfer: TransferId,
        /// Plaintext bytes written.
        plaintext_len: u64,
        /// Ciphertext bytes received.
        ciphertext_len: u64,
        /// POSIX cksum of the plaintext.
        cksum: u32,
    },
    /// The client confirmed the checksum: make the file the current verified version
    /// (atomic rename). The session sends 1604 after the answer. Answer with `handle_storage`.
    CommitFile {
        /// The transfer.
        transfer: TransferId,
    },
    /// Discard the transfer's temporary file and catalog row. Needs no answer.
    AbortFile {
        /// The transfer.
        transfer: TransferId,
    },
}

impl ServerEffect {
    /// Whether the session waits for the driver's answer to this effect.
    #[must_use]
    pub fn needs_answer(&self) -> bool {
        !matches!(self, Self::AbortFile { .. })
    }
}

/// Something that happened in a server session, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A client registered.
    Registered {
        /// Its new id.
        client_id: ClientId,
    },
    /// A client reconnected.
    Reconnected {
        /// Its id.
        client_id: ClientId,
    },
    /// A reconnect was refused (1606).
    ReconnectRefused {
        /// The id from the header.
        client_id: ClientId,
    },
    /// A session key was sent (1602 or 1605).
    KeyExchanged {
        /// The client's id.
        client_id: ClientId,
    },
    /// A file was received and its checksum sent (1603).
    FileReceived {
        /// The transfer.
        transfer: TransferId,
        /// Plaintext length.
        len: u64,
        /// Its cksum.
        cksum: u32,
    },
    /// The client confirmed the checksum and the file was committed.
    FileVerified {
        /// The transfer.
        transfer: TransferId,
    },
    /// A transfer was discarded (CRC retry/abort, error, timeout or disconnect).
    FileDiscarded {
        /// The transfer.
        transfer: TransferId,
        /// The file.
        file_name: FileName,
        /// Plaintext bytes received (and stored in its temp file) before it was discarded.
        received: u64,
        /// Why.
        reason: DiscardReason,
    },
    /// A client broke the v3 spec in a way the server tolerates; the file is kept.
    NonConformingClient {
        /// The transfer.
        transfer: TransferId,
        /// What it did.
        quirk: ClientQuirk,
    },
    /// A registration (1025) was refused with 1601: the name is taken.
    RegistrationRefused {
        /// The name asked for.
        name: NameField,
    },
    /// A request was refused with 1607.
    RequestFailed {
        /// Why.
        error: SessionError,
    },
    /// A file failed to decrypt; the session answered 1607 and closes the connection.
    DecryptFailed {
        /// The client the file was sent as.
        client_id: ClientId,
    },
    /// The packets of a failed file that arrived after its 1607 were dropped without a reply.
    PacketsDropped {
        /// How many.
        packets: u64,
    },
}

/// Output of a server session.
pub type ServerOutput = Output<ServerEffect, ServerEvent, CloseReason>;

/// Why a transfer was discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscardReason {
    /// The client asked to send it again (1030).
    ClientRetry,
    /// The client gave up after checksum mismatches (1031).
    ClientGaveUp,
    /// A new file started before this one was verified.
    NewFile,
    /// A request arrived in the middle of the file.
    Interrupted,
    /// The file was refused (the 1607 that follows says why).
    Refused,
    /// The connection ended (closed, timed out, failed or shut down) first.
    ConnectionEnded,
}

impl std::fmt::Display for DiscardReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ClientRetry => "the client sends it again (1030)",
            Self::ClientGaveUp => "the client gave up after checksum mismatches (1031)",
            Self::NewFile => "a new file started before this one was verified",
            Self::Interrupted => "a request arrived in the middle of the file",
            Self::Refused => "the file was refused with 1607",
            Self::ConnectionEnded => "the connection ended first",
        })
    }
}

/// A deviation from the v3 spec that the server accepts (`docs/protocol.md` §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientQuirk {
    /// `packet_number` and `total_packets` wrapped at 65 536; `content_size` gave the true
    /// number of packets.
    WrappedPacketNumbers {
        /// Packets the file really had.
        packets: u32,
    },
    /// The content began with a 16-byte zero block (a misplaced IV); it was stripped.
    ZeroBlockPrefix,
}

impl std::fmt::Display for ClientQuirk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WrappedPacketNumbers { packets } => write!(
                f,
                "packet numbers wrapped at 16 bits ({packets} packets; the spec allows 65535)"
            ),
            Self::ZeroBlockPrefix => f.write_str(
                "the content began with a 16-byte zero block (a misplaced IV); it was stripped",
            ),
        }
    }
}

/// Bytes of the zero block some clients put before the content.
const ZERO_PREFIX_LEN: usize = 16;

/// The client identified on this connection.
#[derive(Debug)]
struct Peer {
    client_id: ClientId,
    name: NameField,
    session_key: Option<AesKey>,
}

/// How the packets of the current file are encrypted and sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    /// One CBC stream sliced into packets; `total_ciphertext` is `Some` when `content_size`
    /// carries the total (bytes past it are padding).
    Sliced { total_ciphertext: Option<u32> },
    /// Every packet its own CBC message of `orig_file_size` plaintext bytes.
    PerPacket,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Packets are arriving.
    Receiving,
    /// 1603 was sent; waiting for 1029/1030/1031.
    AwaitVerdict,
}

/// One file being received.
#[derive(Debug)]
struct Transfer {
    id: TransferId,
    client_id: ClientId,
    file_name: FileName,
    first: FileMeta,
    scheme: Scheme,
    phase: Phase,
    key: AesKey,
    /// Metadata of the packet being received.
    packet: FileMeta,
    /// Content bytes of this packet still to be used (the rest is padding).
    packet_budget: u64,
    decryptor: Option<CbcDecryptor>,
    cksum: Cksum,
    plaintext_len: u64,
    ciphertext_len: u64,
    /// Plaintext bytes of the current per-packet message.
    packet_plaintext_len: u64,
    /// Largest plaintext the server accepts for one file.
    max_len: u64,
    /// Packets the file has: `total_packets`, or more when the numbering wraps.
    packets: u32,
    /// Number of the current packet, counted without wrapping (1-based).
    index: u32,
    /// The content starts with a zero block to strip (`content_size` says so).
    zero_prefix: bool,
    /// Bytes of that zero block not yet stripped.
    prefix_left: usize,
}

impl Transfer {
    fn begin(
        id: TransferId,
        client_id: ClientId,
        key: AesKey,
        file_name: FileName,
        meta: FileMeta,
        content_len: u32,
        max_len: u64,
    ) -> Result<Self, PeerMisbehaved> {
        let (c, o, l) = (meta.content_size, meta.orig_file_size, content_len);
        let wrapped = wrapped_packet_count(c, l, meta.total_packets);
        let scheme = match meta.total_packets {
            _ if wrapped.is_some() => Scheme::Sliced {
                total_ciphertext: Some(c),
            },
            0 => {
                return Err(PeerMisbehaved::BadPacketNumber {
                    got: 1,
                    expected: 1,
                    total: 0,
                });
            }
            1 if c <= l => Scheme::Sliced {
                total_ciphertext: Some(c),
            },
            1 => {
                return Err(PeerMisbehaved::ContentSizeMismatch {
                    got: u64::from(l),
                    announced: u64::from(c),
                });
            }
            _ if c == l && u64::from(c) == cbc_ciphertext_len(u64::from(o)) => Scheme::PerPacket,
            _ if c == l => Scheme::Sliced {
                total_ciphertext: None,
            },
            _ if c > l => Scheme::Sliced {
                total_ciphertext: Some(c),
            },
            _ => {
                return Err(PeerMisbehaved::ContentSizeMismatch {
                    got: u64::from(l),
                    announced: u64::from(c),
                });
            }
        };
        // A total-size sender whose content_size is the ciphertext of 16 more bytes than the
        // file: the only valid reading is a zero block before the content.
        let prefix_left = match scheme {
            Scheme::Sliced {
                total_ciphertext: Some(total),
            } if u64::from(total) == cbc_ciphertext_len(u64::from(o)) + ZERO_PREFIX_LEN as u64 => {
                ZERO_PREFIX_LEN
            }
            _ => 0,
        };
        let mut transfer = Self {
            id,
            client_id,
            file_name,
            first: meta.clone(),
            scheme,
            phase: Phase::Receiving,
            decryptor: None,
            key,
            packet: meta.clone(),
            packet_budget: 0,
            cksum: Cksum::new(),
            plaintext_len: 0,
            ciphertext_len: 0,
            packet_plaintext_len: 0,
            max_len,
            packets: wrapped.unwrap_or(u32::from(meta.total_packets)),
            index: 1,
            zero_prefix: prefix_left > 0,
            prefix_left,
        };
        if let Scheme::Sliced { .. } = scheme {
            transfer.decryptor = Some(CbcDecryptor::new(&transfer.key));
        }
        transfer.start_packet(meta, content_len);
        Ok(transfer)
    }

    /// The wire number of the next packet (modulo 65 536 when the numbering wraps), if the
    /// file has one more.
    fn next_packet_number(&self) -> Option<u16> {
        let next = self
            .index
            .checked_add(1)
            .filter(|&next| next <= self.packets)?;
        Some(wire_number(next))
    }

    /// Whether the file's numbering wraps at 16 bits.
    fn wraps(&self) -> bool {
        self.packets > u32::from(u16::MAX)
    }

    /// Checks a later packet's metadata against the first and starts it.
    fn next_packet(&mut self, meta: FileMeta, content_len: u32) -> Result<(), PeerMisbehaved> {
        if self.next_packet_number() != Some(meta.packet_number) {
            return Err(PeerMisbehaved::BadPacketNumber {
                got: meta.packet_number,
                expected: wire_number(self.index.saturating_add(1)),
                total: self.first.total_packets,
            });
        }
        let changed = |field| PeerMisbehaved::MetadataChanged {
            packet: meta.packet_number,
            field,
        };
        if meta.total_packets != self.first.total_packets {
            return Err(changed("total_packets"));
        }
        if meta.file_name.as_bytes() != self.first.file_name.as_bytes() {
            return Err(changed("file_name"));
        }
        let consistent = match self.scheme {
            Scheme::Sliced {
                total_ciphertext: Some(total),
            } => meta.content_size == total && meta.orig_file_size == self.first.orig_file_size,
            Scheme::Sliced {
                total_ciphertext: None,
            } => {
                meta.content_size == content_len && meta.orig_file_size == self.first.orig_file_size
            }
            Scheme::PerPacket => {
                content_len == 0
                    || (meta.content_size == content_len
                        && u64::from(content_len)
                            == cbc_ciphertext_len(u64::from(meta.orig_file_size)))
            }
        };
        if !consistent {
            return Err(changed("content_size/orig_file_size"));
        }
        self.index += 1;
        self.start_packet(meta, content_len);
        Ok(())
    }

    fn start_packet(&mut self, meta: FileMeta, content_len: u32) {
        self.packet_budget = match self.scheme {
            Scheme::Sliced {
                total_ciphertext: Some(total),
            } => u64::from(content_len).min(u64::from(total).saturating_sub(self.ciphertext_len)),
            _ => u64::from(content_len),
        };
        if self.scheme == Scheme::PerPacket && content_len > 0 {
            self.decryptor = Some(CbcDecryptor::new(&self.key));
            self.packet_plaintext_len = 0;
        }
        self.packet = meta;
    }

    fn is_last_packet(&self) -> bool {
        self.index >= self.packets
    }

    /// Whether `packet_number` is the surplus packet after the last (shlomi).
    fn is_surplus(&self, packet_number: u16) -> bool {
        let surplus = if self.wraps() {
            wire_number(self.packets.saturating_add(1))
        } else {
            self.first.total_packets.saturating_add(1)
        };
        packet_number == surplus
    }

    /// Removes the expected zero block from the front of `plain`; a non-zero byte in it is
    /// a length mismatch (the file is 16 bytes longer than announced).
    fn strip_prefix(&mut self, mut plain: Bytes) -> Result<Bytes, PeerMisbehaved> {
        if self.prefix_left == 0 {
            return Ok(plain);
        }
        let take = self.prefix_left.min(plain.len());
        let block = plain.split_to(take);
        if block.iter().any(|&b| b != 0) {
            return Err(PeerMisbehaved::PlaintextSizeMismatch {
                got: u64::from(self.first.orig_file_size) + ZERO_PREFIX_LEN as u64,
                announced: u64::from(self.first.orig_file_size),
            });
        }
        self.prefix_left -= take;
        Ok(plain)
    }

    /// The deviations this file showed, once received.
    fn quirks(&self) -> impl Iterator<Item = ClientQuirk> {
        let wrapped = self.wraps().then_some(ClientQuirk::WrappedPacketNumbers {
            packets: self.packets,
        });
        let prefixed = self.zero_prefix.then_some(ClientQuirk::ZeroBlockPrefix);
        wrapped.into_iter().chain(prefixed)
    }

    /// Decrypts the usable part of a content piece; bytes past the budget are padding.
    fn decrypt(&mut self, piece: &[u8]) -> Result<Bytes, PeerMisbehaved> {
        let take = usize::try_from(self.packet_budget)
            .unwrap_or(usize::MAX)
            .min(piece.len());
        self.packet_budget -= take as u64;
        let mut plain = BytesMut::with_capacity(take + 16);
        if let (Some(decryptor), Some(used)) = (self.decryptor.as_mut(), piece.get(..take)) {
            decryptor.update(used, &mut plain);
            self.ciphertext_len += take as u64;
        }
        let plain = self.strip_prefix(plain.freeze())?;
        self.account(&plain)?;
        Ok(plain)
    }

    /// Ends the current packet: returns the plaintext the held-back block releases.
    fn end_packet(&mut self) -> Result<Bytes, SessionError> {
        let mut plain = BytesMut::new();
        let finish_now = self.scheme == Scheme::PerPacket || self.is_last_packet();
        let mut finished = false;
        if finish_now && let Some(decryptor) = self.decryptor.take() {
            decryptor.finish(&mut plain)?;
            finished = true;
        }
        let plain = self.strip_prefix(plain.freeze())?;
        self.account(&plain)?;
        if self.scheme == Scheme::PerPacket
            && finished
            && self.packet_plaintext_len != u64::from(self.packet.orig_file_size)
        {
            return Err(PeerMisbehaved::PlaintextSizeMismatch {
                got: self.packet_plaintext_len,
                announced: u64::from(self.packet.orig_file_size),
            }
            .into());
        }
        if self.is_last_packet() {
            self.check_totals()?;
        }
        Ok(plain)
    }

    fn check_totals(&self) -> Result<(), PeerMisbehaved> {
        if let Scheme::Sliced {
            total_ciphertext: Some(total),
        } = self.scheme
            && self.ciphertext_len != u64::from(total)
        {
            return Err(PeerMisbehaved::ContentSizeMismatch {
                got: self.ciphertext_len,
                announced: u64::from(total),
            });
        }
        if let Scheme::Sliced { .. } = self.scheme
            && (self.plaintext_len != u64::from(self.first.orig_file_size) || self.prefix_left > 0)
        {
            return Err(PeerMisbehaved::PlaintextSizeMismatch {
                got: self.plaintext_len,
                announced: u64::from(self.first.orig_file_size),
            });
        }
        Ok(())
    }

    /// Counts decrypted bytes, refusing a file as soon as it grows past what its metadata
    /// announced or past the server's limit (not only at the last packet).
    fn account(&mut self, plain: &[u8]) -> Result<(), PeerMisbehaved> {
        self.cksum.update(plain);
        self.plaintext_len += plain.len() as u64;
        self.packet_plaintext_len += plain.len() as u64;
        if self.plaintext_len > self.max_len {
            return Err(PeerMisbehaved::FileTooLarge {
                len: self.plaintext_len,
                max: self.max_len,
            });
        }
        let (got, announced) = match self.scheme {
            Scheme::Sliced { .. } => (self.plaintext_len, self.first.orig_file_size),
            Scheme::PerPacket => (self.packet_plaintext_len, self.packet.orig_file_size),
        };
        if got > u64::from(announced) {
            return Err(PeerMisbehaved::PlaintextSizeMismatch {
                got,
                announced: u64::from(announced),
            });
        }
        Ok(())
    }
}

/// What the session waits for the driver to answer, and what to do then.
#[derive(Debug)]
enum Pending {
    Register {
        client_id: ClientId,
        name: NameField,
    },
    RegisterForKey {
        client_id: ClientId,
        name: NameField,
        key: PublicKey,
        der: Bytes,
    },
    LookupForReconnect {
        client_id: ClientId,
        name: NameField,
    },
    LookupForKey {
        client_id: ClientId,
        name: NameField,
        key: PublicKey,
        der: Bytes,
    },
    StoreKey {
        client_id: ClientId,
        name: NameField,
        key: PublicKey,
    },
    Storage(StorageStep),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StorageStep {
    Begin,
    Append,
    AppendThenFinish,
    Finish,
    Commit,
}

/// What to do with the content of the 1028 frame being decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrameContent {
    /// Decrypt and store it.
    Use,
    /// Drop it (a failed file's rest, or a surplus packet).
    Skip,
}

/// The server side of one v3 connection. See the module docs.
#[derive(Debug)]
pub struct ServerSession<R> {
    config: Arc<ServerConfig>,
    rng: R,
    decoder: RequestDecoder,
    outputs: VecDeque<ServerOutput>,
    peer: Option<Peer>,
    /// The id and name of a refused reconnect: a following 1026 registers them (urihor, itay).
    refused: Option<(ClientId, NameField)>,
    transfer: Option<Transfer>,
    pending: Option<Pending>,
    frame_content: FrameContent,
    /// After a failed file: packets of its rest dropped so far (`None`: not dropping).
    dropping: Option<u64>,
    next_transfer: u64,
    idle: IdleTimer,
    failed: Option<SessionError>,
}

impl<R: CryptoRngCore> ServerSession<R> {
    /// A session for a new connection.
    pub fn new(config: Arc<ServerConfig>, rng: R, now: Instant) -> Self {
        let idle = IdleTimer::new(config.idle_timeout, now);
        Self {
            config,
            rng,
            decoder: RequestDecoder::new(),
            outputs: VecDeque::new(),
            peer: None,
            refused: None,
            transfer: None,
            pending: None,
            frame_content: FrameContent::Use,
            dropping: None,
            next_transfer: 0,
            idle,
            failed: None,
        }
    }

    /// Feeds received bytes. Consumes items from the front of `buf` until it needs an
    /// effect answered or more bytes; call again (with the rest) after answering.
    ///
    /// # Errors
    /// The fatal [`SessionError`]; the reply and a `Close` are queued before it returns.
    pub fn handle_bytes(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), SessionError> {
        self.check_alive()?;
        if !buf.is_empty() {
            self.idle.reset(now);
        }
        while self.pending.is_none() && self.failed.is_none() {
            match self.decoder.decode(buf) {
                Ok(Some(item)) => self.process(item),
                Ok(None) => break,
                Err(err) => return Err(self.fail(err.into())),
            }
        }
        self.check_alive()
    }

    /// Feeds one decoded item (for drivers running their own [`RequestDecoder`], e.g. over a
    /// `Framed` socket). Only while no effect is pending.
    ///
    /// # Errors
    /// `ApiMisuse` while an effect is pending; otherwise as [`handle_bytes`](Self::handle_bytes).
    pub fn handle_inbound(&mut self, now: Instant, item: Inbound) -> Result<(), SessionError> {
        self.check_alive()?;
        if self.pending.is_some() {
            return Err(SessionError::ApiMisuse(
                "handle_inbound while an effect is pending",
            ));
        }
        self.idle.reset(now);
        self.process(item);
        self.check_alive()
    }

    /// Answers [`ServerEffect::RegisterClient`].
    ///
    /// # Errors
    /// `ApiMisuse` if no registration was pending.
    pub fn handle_registration(
        &mut self,
        now: Instant,
        outcome: RegistrationOutcome,
    ) -> Result<(), SessionError> {
        self.check_alive()?;
        // Time spent on our own effects is not the peer's idleness.
        self.idle.reset(now);
        match self.pending.take() {
            Some(Pending::Register { client_id, name }) => match outcome {
                RegistrationOutcome::Registered => {
                    self.respond(Response::Registered { client_id });
                    self.event(ServerEvent::Registered { client_id });
                    self.peer = Some(Peer {
                        client_id,
                        name,
                        session_key: None,
                    });
                }
                RegistrationOutcome::NameTaken => {
                    self.respond(Response::RegistrationFailed);
                    self.event(ServerEvent::RegistrationRefused { name });
                }
                RegistrationOutcome::Failed(failure) => self.refuse(storage_error(failure)),
            },
            Some(Pending::RegisterForKey {
                client_id,
                name,
                key,
                der,
            }) => match outcome {
                RegistrationOutcome::Registered => {
                    self.event(ServerEvent::Registered { client_id });
                    self.store_key(client_id, name, key, der);
                }
                RegistrationOutcome::NameTaken => {
                    self.refuse(PeerMisbehaved::UnknownClientForKey.into());
                }
                RegistrationOutcome::Failed(failure) => self.refuse(storage_error(failure)),
            },
            other => return self.misuse(other, "handle_registration without RegisterClient"),
        }
        Ok(())
    }

    /// Answers [`ServerEffect::LookupClient`].
    ///
    /// # Errors
    /// `ApiMisuse` if no lookup was pending.
    pub fn handle_client_lookup(
        &mut self,
        now: Instant,
        found: Option<StoredClient>,
    ) -> Result<(), SessionError> {
        self.check_alive()?;
        // Time spent on our own effects is not the peer's idleness.
        self.idle.reset(now);
        match self.pending.take() {
            Some(Pending::LookupForReconnect { client_id, name }) => {
                self.finish_reconnect(client_id, name, found);
            }
            Some(Pending::LookupForKey {
                client_id,
                name,
                key,
                der,
            }) => {
                if found.is_some_and(|stored| is_same_client(&stored, client_id, &name)) {
                    self.store_key(client_id, name, key, der);
                } else {
                    self.refuse(PeerMisbehaved::UnknownClientForKey.into());
                }
            }
            other => return self.misuse(other, "handle_client_lookup without LookupClient"),
        }
        Ok(())
    }

    /// Answers the storage effects: `StorePublicKey`, `BeginFile`, `AppendFile`,
    /// `FinishFile` and `CommitFile`.
    ///
    /// # Errors
    /// `ApiMisuse` if no storage effect was pending.
    pub fn handle_storage(
        &mut self,
        now: Instant,
        result: Result<(), StorageFailure>,
    ) -> Result<(), SessionError> {
        self.check_alive()?;
        // Time spent on our own effects is not the peer's idleness.
        self.idle.reset(now);
        match self.pending.take() {
            Some(Pending::StoreKey {
                client_id,
                name,
                key,
            }) => match result {
                Ok(()) => self.send_session_key(client_id, name, &key, false),
                Err(failure) => self.refuse(storage_error(failure)),
            },
            Some(Pending::Storage(step)) => match result {
                Ok(()) => self.storage_done(step),
                Err(failure) => self.transfer_failed(storage_error(failure)),
            },
            other => return self.misuse(other, "handle_storage without a storage effect"),
        }
        Ok(())
    }

    /// The peer closed its side: an unfinished or unverified file is discarded.
    pub fn handle_eof(&mut self, _now: Instant) {
        self.close(CloseReason::PeerClosed, SessionError::ConnectionClosed);
    }

    /// Time passed: past the idle deadline the connection is dropped and its file discarded.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.idle.expired(now) {
            self.close(CloseReason::IdleTimeout, SessionError::IdleTimeout);
        }
    }

    /// The next output, in order.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.outputs.pop_front()
    }

    /// The next deadline and its reason.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        self.idle.poll()
    }

    /// Whether the session waits for an effect's answer.
    #[must_use]
    pub fn is_waiting_for_effect(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether a file is being received or awaits its verdict.
    #[must_use]
    pub fn has_open_transfer(&self) -> bool {
        self.transfer.is_some()
    }

    /// Whether the session ended (closed or failed).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.failed.is_some()
    }

    /// The client identified on this connection, if any.
    #[must_use]
    pub fn client_id(&self) -> Option<ClientId> {
        self.peer.as_ref().map(|peer| peer.client_id)
    }

    /// Installs a known session key, as if 1026/1027 had happened. For replaying recorded
    /// sessions in tests and fuzzing the file path; real drivers never call it.
    #[doc(hidden)]
    pub fn inject_session_key(&mut self, client_id: ClientId, name: NameField, key: AesKey) {
        self.peer = Some(Peer {
            client_id,
            name,
            session_key: Some(key),
        });
    }

    fn check_alive(&self) -> Result<(), SessionError> {
        match &self.failed {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    fn process(&mut self, item: Inbound) {
        match item {
            Inbound::Request { header, request } => {
                self.stop_dropping();
                self.on_request(header.client_id, request);
            }
            Inbound::FileHeader {
                meta, content_len, ..
            } => self.on_file_header(meta, content_len),
            Inbound::FileContent(piece) => self.on_content(&piece),
            Inbound::FileEnd => self.on_packet_end(),
        }
    }

    fn on_request(&mut self, header_id: ClientId, request: Request) {
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| t.phase == Phase::Receiving)
        {
            // A request in the middle of a file ends the file: its rest will not come.
            self.abort_transfer(DiscardReason::Interrupted);
        }
        match request {
            Request::Register { name } => self.on_register(name),
            Request::PublicKey { name, public_key } => {
                self.on_public_key(header_id, name, &public_key);
            }
            Request::Reconnect { name } => {
                self.pending = Some(Pending::LookupForReconnect {
                    client_id: header_id,
                    name,
                });
                self.effect(ServerEffect::LookupClient {
                    client_id: header_id,
                });
            }
            Request::CrcOk { .. } => self.on_verdict(RequestCode::CRC_OK),
            Request::CrcRetry { .. } => self.on_verdict(RequestCode::CRC_RETRY),
            Request::CrcAbort { .. } => self.on_verdict(RequestCode::CRC_ABORT),
        }
    }

    fn on_register(&mut self, name: NameField) {
        if name.as_bytes().is_empty()
            || name.as_bytes().len() > MAX_NAME_TEXT_LEN
            || name.has_bytes_after_nul()
        {
            return self.refuse(PeerMisbehaved::InvalidClientName.into());
        }
        let client_id = self.new_client_id();
        self.pending = Some(Pending::Register {
            client_id,
            name: name.clone(),
        });
        self.effect(ServerEffect::RegisterClient { client_id, name });
    }

    fn on_public_key(&mut self, header_id: ClientId, name: NameField, field: &[u8]) {
        let parsed = PublicKey::from_spki_field(field)
            .and_then(|key| key.to_spki_der().map(|der| (key, Bytes::from(der))));
        let (key, der) = match parsed {
            Ok(parsed) => parsed,
            Err(err) => return self.refuse(err.into()),
        };
        if let Some(peer) = &self.peer
            && peer.client_id == header_id
            && peer.name.as_bytes() == name.as_bytes()
        {
            return self.store_key(header_id, name, key, der);
        }
        if let Some((refused_id, refused_name)) = &self.refused
            && *refused_id == header_id
            && refused_name.as_bytes() == name.as_bytes()
        {
            self.pending = Some(Pending::RegisterForKey {
                client_id: header_id,
                name: name.clone(),
                key,
                der,
            });
            return self.effect(ServerEffect::RegisterClient {
                client_id: header_id,
                name,
            });
        }
        self.pending = Some(Pending::LookupForKey {
            client_id: header_id,
            name,
            key,
            der,
        });
        self.effect(ServerEffect::LookupClient {
            client_id: header_id,
        });
    }

    fn store_key(&mut self, client_id: ClientId, name: NameField, key: PublicKey, der: Bytes) {
        self.pending = Some(Pending::StoreKey {
            client_id,
            name,
            key,
        });
        self.effect(ServerEffect::StorePublicKey {
            client_id,
            public_key: der,
        });
    }

    fn finish_reconnect(
        &mut self,
        client_id: ClientId,
        name: NameField,
        found: Option<StoredClient>,
    ) {
        let key = found
            .filter(|stored| is_same_client(stored, client_id, &name))
            .and_then(|stored| stored.public_key)
            .and_then(|der| PublicKey::from_spki_field(&der).ok());
        match key {
            Some(key) => {
                self.event(ServerEvent::Reconnected { client_id });
                self.send_session_key(client_id, name, &key, true);
            }
            None => {
                self.refused = Some((client_id, name));
                self.respond(Response::ReconnectRefused { client_id });
                self.event(ServerEvent::ReconnectRefused { client_id });
            }
        }
    }

    fn send_session_key(
        &mut self,
        client_id: ClientId,
        name: NameField,
        key: &PublicKey,
        reconnect: bool,
    ) {
        let session_key = AesKey::generate(&mut self.rng);
        let encrypted_key = match key.wrap_session_key(&mut self.rng, &session_key) {
            Ok(wrapped) => Bytes::from(wrapped),
            Err(err) => return self.refuse(err.into()),
        };
        self.respond(if reconnect {
            Response::ReconnectAccepted {
                client_id,
                encrypted_key,
            }
        } else {
            Response::PublicKeyAccepted {
                client_id,
                encrypted_key,
            }
        });
        self.event(ServerEvent::KeyExchanged { client_id });
        self.refused = None;
        self.peer = Some(Peer {
            client_id,
            name,
            session_key: Some(session_key),
        });
    }

    fn on_verdict(&mut self, code: RequestCode) {
        let awaiting = self
            .transfer
            .as_ref()
            .is_some_and(|t| t.phase == Phase::AwaitVerdict);
        match (code, awaiting) {
            (RequestCode::CRC_OK, true) => self.storage_effect(StorageStep::Commit),
            (RequestCode::CRC_ABORT, true) => {
                self.abort_transfer(DiscardReason::ClientGaveUp);
                self.acknowledge();
            }
            // 1030 gets no reply: the file comes again.
            (RequestCode::CRC_RETRY, _) => self.abort_transfer(DiscardReason::ClientRetry),
            (code, _) => self.refuse(PeerMisbehaved::VerdictWithoutFile { code: code.0 }.into()),
        }
    }

    fn on_file_header(&mut self, meta: FileMeta, content_len: u32) {
        self.frame_content = FrameContent::Skip;
        let surplus = self
            .transfer
            .as_ref()
            .is_some_and(|t| t.phase == Phase::AwaitVerdict && t.is_surplus(meta.packet_number));
        if surplus {
            return;
        }
        if meta.packet_number != 1
            && let Some(dropped) = self.dropping.as_mut()
        {
            *dropped += 1;
            return;
        }
        self.stop_dropping();
        // A wrapped numbering reaches 1 again: that is the file's next packet, not a new file.
        let continues = self.transfer.as_ref().is_some_and(|t| {
            t.phase == Phase::Receiving && t.next_packet_number() == Some(meta.packet_number)
        });
        let result = if meta.packet_number == 1 && !continues {
            self.begin_transfer(meta, content_len)
        } else {
            match self
                .transfer
                .as_mut()
                .filter(|t| t.phase == Phase::Receiving)
            {
                Some(transfer) => transfer
                    .next_packet(meta, content_len)
                    .map_err(SessionError::from),
                None => Err(PeerMisbehaved::BadPacketNumber {
                    got: meta.packet_number,
                    expected: 1,
                    total: meta.total_packets,
                }
                .into()),
            }
        };
        match result {
            Ok(()) => self.frame_content = FrameContent::Use,
            Err(err) => self.transfer_failed(err),
        }
    }

    fn begin_transfer(&mut self, meta: FileMeta, content_len: u32) -> Result<(), SessionError> {
        if self.transfer.is_some() {
            // A new file while one awaits its verdict: the unverified one is discarded.
            self.abort_transfer(DiscardReason::NewFile);
        }
        let Some((client_id, key)) = self
            .peer
            .as_ref()
            .and_then(|peer| Some((peer.client_id, peer.session_key.clone()?)))
        else {
            return Err(PeerMisbehaved::FileBeforeKeyExchange.into());
        };
        let file_name =
            FileName::validate(meta.file_name.clone()).map_err(PeerMisbehaved::InvalidFileName)?;
        let announced = u64::from(meta.orig_file_size);
        if announced > self.config.max_file_len {
            return Err(PeerMisbehaved::FileTooLarge {
                len: announced,
                max: self.config.max_file_len,
            }
            .into());
        }
        let id = TransferId(self.next_transfer);
        self.next_transfer += 1;
        let transfer = Transfer::begin(
            id,
            client_id,
            key,
            file_name.clone(),
            meta,
            content_len,
            self.config.max_file_len,
        )?;
        self.transfer = Some(transfer);
        self.storage_effect_with(
            StorageStep::Begin,
            ServerEffect::BeginFile {
                transfer: id,
                client_id,
                file_name,
            },
        );
        Ok(())
    }

    fn on_content(&mut self, piece: &[u8]) {
        if self.frame_content == FrameContent::Skip {
            return;
        }
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        let plain = match transfer.decrypt(piece) {
            Ok(plain) => plain,
            Err(err) => return self.transfer_failed(err.into()),
        };
        if !plain.is_empty() {
            let effect = ServerEffect::AppendFile {
                transfer: transfer.id,
                data: plain,
            };
            self.storage_effect_with(StorageStep::Append, effect);
        }
    }

    fn on_packet_end(&mut self) {
        if self.frame_content == FrameContent::Skip {
            return;
        }
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        let last = transfer.is_last_packet();
        let id = transfer.id;
        match transfer.end_packet() {
            Ok(tail) if !tail.is_empty() => {
                let step = if last {
                    StorageStep::AppendThenFinish
                } else {
                    StorageStep::Append
                };
                self.storage_effect_with(
                    step,
                    ServerEffect::AppendFile {
                        transfer: id,
                        data: tail,
                    },
                );
            }
            Ok(_) if last => self.storage_effect(StorageStep::Finish),
            Ok(_) => {}
            Err(err) => self.transfer_failed(err),
        }
    }

    fn storage_done(&mut self, step: StorageStep) {
        match step {
            StorageStep::Begin | StorageStep::Append => {}
            StorageStep::AppendThenFinish => self.storage_effect(StorageStep::Finish),
            StorageStep::Finish => {
                let Some(transfer) = self.transfer.as_mut() else {
                    return;
                };
                transfer.phase = Phase::AwaitVerdict;
                let cksum = transfer.cksum.clone().finalize();
                let response = Response::FileReceived {
                    client_id: transfer.client_id,
                    content_size: u32::try_from(transfer.ciphertext_len).unwrap_or(u32::MAX),
                    file_name: transfer.file_name.field().clone(),
                    cksum,
                };
                let event = ServerEvent::FileReceived {
                    transfer: transfer.id,
                    len: transfer.plaintext_len,
                    cksum,
                };
                let quirks: Vec<ServerEvent> = transfer
                    .quirks()
                    .map(|quirk| ServerEvent::NonConformingClient {
                        transfer: transfer.id,
                        quirk,
                    })
                    .collect();
                self.respond(response);
                for quirk in quirks {
                    self.event(quirk);
                }
                self.event(event);
            }
            StorageStep::Commit => {
                if let Some(transfer) = self.transfer.take() {
                    self.event(ServerEvent::FileVerified {
                        transfer: transfer.id,
                    });
                }
                self.acknowledge();
            }
        }
    }

    fn storage_effect(&mut self, step: StorageStep) {
        let Some(transfer) = self.transfer.as_ref() else {
            return;
        };
        let effect = match step {
            StorageStep::Commit => ServerEffect::CommitFile {
                transfer: transfer.id,
            },
            _ => ServerEffect::FinishFile {
                transfer: transfer.id,
                plaintext_len: transfer.plaintext_len,
                ciphertext_len: transfer.ciphertext_len,
                cksum: transfer.cksum.clone().finalize(),
            },
        };
        self.storage_effect_with(step, effect);
    }

    fn storage_effect_with(&mut self, step: StorageStep, effect: ServerEffect) {
        self.pending = Some(Pending::Storage(step));
        self.effect(effect);
    }

    /// A file failed (bad data or storage): discard it, answer 1607 once and drop the rest of
    /// its packets silently; keep the connection, unless the file failed to decrypt.
    fn transfer_failed(&mut self, error: SessionError) {
        self.frame_content = FrameContent::Skip;
        // Its remaining packets, and the surplus packet total+1 that shlomi-style clients
        // send after the last: one request, one response.
        self.dropping = Some(0);
        if let SessionError::Crypto(CryptoError::BadPadding | CryptoError::NotBlockAligned { .. }) =
            error
        {
            if let Some(client_id) = self.client_id() {
                self.event(ServerEvent::DecryptFailed { client_id });
            }
            self.fail(error);
            return;
        }
        self.abort_transfer(DiscardReason::Refused);
        self.refuse(error);
    }

    /// Ends dropping a failed file's packets, reporting how many were dropped.
    fn stop_dropping(&mut self) {
        if let Some(packets) = self.dropping.take()
            && packets > 0
        {
            self.event(ServerEvent::PacketsDropped { packets });
        }
    }

    fn abort_transfer(&mut self, reason: DiscardReason) {
        if let Some(transfer) = self.transfer.take() {
            self.effect(ServerEffect::AbortFile {
                transfer: transfer.id,
            });
            self.event(ServerEvent::FileDiscarded {
                transfer: transfer.id,
                file_name: transfer.file_name,
                received: transfer.plaintext_len,
                reason,
            });
        }
    }

    fn acknowledge(&mut self) {
        let client_id = self.client_id().unwrap_or_default();
        self.respond(Response::Acknowledged { client_id });
    }

    /// Refuses one request with 1607; the connection stays usable.
    fn refuse(&mut self, error: SessionError) {
        self.respond(Response::ServerError);
        self.event(ServerEvent::RequestFailed { error });
    }

    /// Fails the session: 1607 if the error calls for it, then close.
    fn fail(&mut self, error: SessionError) -> SessionError {
        self.pending = None;
        self.abort_transfer(DiscardReason::ConnectionEnded);
        if let Some(code) = error.response()
            && code == crate::v3::frame::ResponseCode::SERVER_ERROR
        {
            self.respond(Response::ServerError);
        }
        self.idle.disarm();
        self.outputs
            .push_back(Output::Close(CloseReason::Error(error.clone())));
        self.failed = Some(error.clone());
        error
    }

    fn close(&mut self, reason: CloseReason, error: SessionError) {
        if self.failed.is_some() {
            return;
        }
        self.stop_dropping();
        self.pending = None;
        self.abort_transfer(DiscardReason::ConnectionEnded);
        self.idle.disarm();
        self.outputs.push_back(Output::Close(reason));
        self.failed = Some(error);
    }

    fn misuse(&mut self, pending: Option<Pending>, what: &'static str) -> Result<(), SessionError> {
        self.pending = pending;
        Err(SessionError::ApiMisuse(what))
    }

    fn new_client_id(&mut self) -> ClientId {
        let mut id = [0u8; CLIENT_ID_LEN];
        self.rng.fill_bytes(&mut id);
        // Shape it as a random (version 4, RFC 4122 variant) UUID, as most real servers do.
        id[6] = (id[6] & 0x0f) | 0x40;
        id[8] = (id[8] & 0x3f) | 0x80;
        ClientId(id)
    }

    fn respond(&mut self, response: Response) {
        self.outputs
            .push_back(Output::Transmit(response.to_bytes()));
    }

    fn effect(&mut self, effect: ServerEffect) {
        self.outputs.push_back(Output::Effect(effect));
    }

    fn event(&mut self, event: ServerEvent) {
        self.outputs.push_back(Output::Event(event));
    }
}

/// A packet number as it travels: modulo 65 536.
fn wire_number(index: u32) -> u16 {
    u16::try_from(index % 65_536).unwrap_or_default()
}

/// The true number of packets of a total-size sender (`content_size` = total ciphertext
/// `c` > this packet's `l` bytes) whose numbering wrapped at 16 bits: more than 65 535, of
/// `l` bytes each but the last (or with H3's empty last packet), and congruent to the
/// announced `total` modulo 65 536. `None` when the numbering did not wrap.
fn wrapped_packet_count(c: u32, l: u32, total: u16) -> Option<u32> {
    if l == 0 || c <= l {
        return None;
    }
    [c.div_ceil(l), c / l + 1]
        .into_iter()
        .find(|&n| n > u32::from(u16::MAX) && n % 65_536 == u32::from(total))
}

fn is_same_client(stored: &StoredClient, client_id: ClientId, name: &NameField) -> bool {
    stored.client_id == client_id && stored.name.as_ref() == name.as_bytes()
}

fn storage_error(failure: StorageFailure) -> SessionError {
    SessionError::Storage {
        reason: failure.reason,
    }
}
