//! `ClientSession`: the client's side of one v3 connection.
//!
//! It registers (1025 + 1026) or reconnects (1027), then backs up the queued files one by
//! one: each is read, cksummed and encrypted in a single pass through bounded
//! [`ClientEffect::ReadFile`] requests and sent as numbered 1028 packets. It sends what the
//! strictest servers accept (Part I of the v3 spec) and tolerates the deviations of real
//! servers: 1600 without a declared payload, bytes after 1604, a 1604 after 1030.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use rand_core::CryptoRngCore;

use super::{CloseReason, IdleTimer, Output, SessionError, Timer};
use crate::crypto::{AesKey, CbcEncryptor, Cksum, ClientKeyPair, cbc_ciphertext_len};
use crate::identity::Identity;
use crate::limits::{
    AES_BLOCK_LEN, DEFAULT_IDLE_TIMEOUT, DEFAULT_PACKET_CONTENT_LEN, DEFAULT_READ_CHUNK_LEN,
    FILE_META_LEN_U32, MAX_FILE_SENDS, MAX_PACKETS, MAX_REQUEST_ATTEMPTS, MAX_V3_FILE_LEN,
    NAME_FIELD_LEN,
};
use crate::names::{ClientId, NameField};
use crate::v3::codec::ResponseDecoder;
use crate::v3::frame::{FileMeta, Request, RequestCode, Response};

/// How a file's ciphertext is cut into 1028 packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketScheme {
    /// One CBC stream over the whole file, sliced into packets; every packet carries the
    /// total sizes. What most real clients send and every stream server accepts.
    Sliced,
    /// Every packet encrypted on its own, with its own sizes (shlomi-style servers).
    PerPacket,
}

/// Settings of a client session (plain data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Ciphertext bytes per 1028 packet (raised when a file would need > 65 535 packets).
    pub packet_content_len: u32,
    /// Plaintext bytes asked for per [`ClientEffect::ReadFile`].
    pub read_chunk_len: usize,
    /// Scheme of the first send of each file.
    pub scheme: PacketScheme,
    /// Send every file as one packet, whatever its size.
    pub single_packet: bool,
    /// After a CRC mismatch on a multi-packet file, resend it with per-packet encryption.
    pub per_packet_fallback: bool,
    /// How long to wait for a response before giving up on the connection.
    pub response_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            packet_content_len: DEFAULT_PACKET_CONTENT_LEN,
            read_chunk_len: DEFAULT_READ_CHUNK_LEN,
            scheme: PacketScheme::Sliced,
            single_packet: false,
            per_packet_fallback: true,
            response_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// A file queued for backup, identified by the driver-chosen [`FileId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// The name sent to the server (a base name).
    pub name: NameField,
    /// The file's length in bytes, as the driver read it when opening the file.
    pub len: u64,
}

/// A file handle chosen by the session, used in effects and events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId(pub u64);

/// Work the driver carries out for a client session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEffect {
    /// Persist the new identity (me.info) now that the server registered us. Answer with
    /// [`ClientSession::handle_identity_saved`].
    SaveIdentity(Box<Identity>),
    /// Read up to `max` bytes of `file` at `offset`. Answer with
    /// [`ClientSession::handle_file_data`] (an empty answer means end of file).
    ReadFile {
        /// The file.
        file: FileId,
        /// Byte offset to read from.
        offset: u64,
        /// Most bytes wanted.
        max: usize,
    },
    /// The session is done with `file`; the driver may close it. Needs no answer.
    CloseFile {
        /// The file.
        file: FileId,
    },
}

/// Why a file could not be backed up.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileFailure {
    /// The server's checksum never matched ours; 1031 was sent.
    CrcMismatch {
        /// Sends made.
        attempts: u8,
    },
    /// The local file could not be read or changed while being read.
    Local {
        /// What went wrong.
        reason: String,
    },
    /// The file is too large for v3.
    TooLarge {
        /// Its length.
        len: u64,
    },
}

/// What a file transfer is doing, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferPhase {
    /// Reading, encrypting and sending.
    Sending,
    /// Waiting for the server's checksum.
    Verifying,
}

/// Something that happened in a client session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server registered us.
    Registered {
        /// Our new id.
        client_id: ClientId,
    },
    /// The server accepted our reconnect.
    Reconnected {
        /// Our id.
        client_id: ClientId,
    },
    /// The server does not know us (1606); registering anew.
    ReconnectRefused,
    /// The session key arrived; files can be sent.
    KeyExchanged,
    /// The server answered 1607 to a request; it is retried.
    ServerError {
        /// The request that failed.
        request: u16,
        /// Attempts made so far.
        attempt: u8,
    },
    /// Progress of the current file.
    Progress {
        /// The file.
        file: FileId,
        /// Plaintext bytes sent in the current attempt.
        sent: u64,
        /// File length.
        total: u64,
        /// Phase.
        phase: TransferPhase,
    },
    /// The server refused a multi-packet send of the file with 1607 (a server that cuts or
    /// mis-joins packets fails its padding or size check); the next send is one packet.
    ResendingAsOnePacket {
        /// The file.
        file: FileId,
        /// 1607 answers to this file so far.
        attempt: u8,
    },
    /// The server's checksum did not match; the file is sent again (or given up).
    CrcMismatch {
        /// The file.
        file: FileId,
        /// Sends so far.
        attempt: u8,
        /// Our cksum.
        ours: u32,
        /// The server's cksum.
        theirs: u32,
        /// Whether the next send uses per-packet encryption.
        switched_to_per_packet: bool,
    },
    /// The file is stored and verified.
    FileVerified {
        /// The file.
        file: FileId,
        /// Its cksum.
        cksum: u32,
        /// Sends needed.
        attempts: u8,
    },
    /// The file could not be backed up; the session goes on with the next one.
    FileFailed {
        /// The file.
        file: FileId,
        /// Why.
        failure: FileFailure,
    },
}

/// Output of a client session.
pub type ClientOutput = Output<ClientEffect, ClientEvent, CloseReason>;

/// How a new client gets its key pair.
#[derive(Debug)]
enum Credentials {
    Registered(Identity),
    New {
        name: NameField,
        key: Option<ClientKeyPair>,
    },
}

#[derive(Debug)]
struct QueuedFile {
    id: FileId,
    spec: FileSpec,
}

/// Layout of one send of a file.
#[derive(Clone, Copy, Debug)]
struct Plan {
    scheme: PacketScheme,
    total_packets: u16,
    /// Sliced: ciphertext per packet. Per-packet: plaintext per packet.
    per_packet: u64,
    ciphertext_len: u64,
}

#[derive(Debug)]
struct Upload {
    file: QueuedFile,
    plan: Plan,
    sends: u8,
    errors: u8,
    cksum: Cksum,
    encryptor: Option<CbcEncryptor>,
    /// Plaintext bytes read in this send.
    read: u64,
    /// Packet being sent (1-based) and its content bytes still to send.
    packet: u16,
    packet_left: u64,
    /// Plaintext bytes of the current per-packet message still to read.
    packet_plain_left: u64,
}

#[derive(Debug)]
enum State {
    AwaitRegistered { attempt: u8 },
    SavingIdentity,
    AwaitKey { attempt: u8, reconnect: bool },
    Ready,
    Reading,
    AwaitFileReceived,
    AwaitAck { code: RequestCode, attempt: u8 },
    Done,
}

/// The client side of one v3 connection. See the module docs.
#[derive(Debug)]
pub struct ClientSession<R> {
    config: Arc<ClientConfig>,
    rng: R,
    credentials: Credentials,
    session_key: Option<AesKey>,
    decoder: ResponseDecoder,
    outputs: VecDeque<ClientOutput>,
    queue: VecDeque<QueuedFile>,
    upload: Option<Upload>,
    state: State,
    next_file: u64,
    close_when_idle: bool,
    /// Bytes that may still be skipped as junk after a 1604.
    junk_allowance: usize,
    timer: IdleTimer,
    failed: Option<SessionError>,
}

impl<R: CryptoRngCore> ClientSession<R> {
    /// A session for a client already registered: it starts with 1027.
    pub fn reconnect(config: Arc<ClientConfig>, identity: Identity, rng: R, now: Instant) -> Self {
        let mut session =
            Self::with_credentials(config, Credentials::Registered(identity), rng, now);
        session.send_reconnect(1);
        session
    }

    /// A session for a new client: it registers `name` with 1025, then generates its key
    /// pair (or uses `key`, e.g. one generated ahead of time) and sends it with 1026.
    pub fn register(
        config: Arc<ClientConfig>,
        name: NameField,
        key: Option<ClientKeyPair>,
        rng: R,
        now: Instant,
    ) -> Self {
        let mut session = Self::with_credentials(config, Credentials::New { name, key }, rng, now);
        session.send_register(1);
        session
    }

    fn with_credentials(
        config: Arc<ClientConfig>,
        credentials: Credentials,
        rng: R,
        now: Instant,
    ) -> Self {
        let timer = IdleTimer::new(config.response_timeout, now);
        Self {
            config,
            rng,
            credentials,
            session_key: None,
            decoder: ResponseDecoder::new(),
            outputs: VecDeque::new(),
            queue: VecDeque::new(),
            upload: None,
            state: State::Ready,
            next_file: 0,
            close_when_idle: false,
            junk_allowance: 0,
            timer,
            failed: None,
        }
    }

    /// Queues a file for backup. Files are sent in order once the key exchange is done.
    pub fn backup(&mut self, spec: FileSpec) -> FileId {
        let id = FileId(self.next_file);
        self.next_file += 1;
        self.queue.push_back(QueuedFile { id, spec });
        if matches!(self.state, State::Ready) && self.session_key.is_some() {
            self.start_next_file();
        }
        id
    }

    /// Feeds received bytes. Decoding stops while an effect needs its answer (for example
    /// [`ClientEffect::SaveIdentity`]); call again with the rest of `buf` after answering.
    ///
    /// # Errors
    /// The fatal [`SessionError`]; a `Close` is queued.
    pub fn handle_bytes(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), SessionError> {
        self.check_alive()?;
        while self.failed.is_none() && self.is_awaiting_response() {
            let response = match self.decoder.decode(buf) {
                Ok(Some((_, response))) => response,
                Ok(None) => break,
                Err(_) if self.junk_allowance > 0 && !buf.is_empty() => {
                    // Still inside the junk a server wrote after its 1604: skip a byte.
                    buf.advance(1);
                    self.junk_allowance -= 1;
                    self.decoder = ResponseDecoder::new();
                    continue;
                }
                Err(err) => return Err(self.fail(err.into())),
            };
            self.timer.reset(now);
            self.junk_allowance = 0;
            let acknowledged = matches!(response, Response::Acknowledged { .. })
                && matches!(self.state, State::AwaitAck { .. });
            self.on_response(response);
            if acknowledged {
                // 1604 ends a file: H3's server writes the 255-byte name field after it
                // although 1604 declares 16 bytes. Skip it now or, if it arrives later,
                // when it fails to parse as a response.
                let junk = buf.len().min(NAME_FIELD_LEN);
                buf.advance(junk);
                self.junk_allowance = NAME_FIELD_LEN - junk;
                self.decoder = ResponseDecoder::new();
            }
        }
        if matches!(self.state, State::Ready) && self.session_key.is_some() {
            self.start_next_file();
        }
        self.check_alive()
    }

    /// Answers [`ClientEffect::SaveIdentity`]: `Err` carries why saving failed.
    ///
    /// # Errors
    /// `ApiMisuse` when no identity was being saved; a save failure is fatal.
    pub fn handle_identity_saved(
        &mut self,
        now: Instant,
        result: Result<(), String>,
    ) -> Result<(), SessionError> {
        self.check_alive()?;
        if !matches!(self.state, State::SavingIdentity) {
            return Err(SessionError::ApiMisuse("handle_identity_saved out of turn"));
        }
        if let Err(reason) = result {
            return Err(self.fail(SessionError::Storage { reason }));
        }
        self.timer.reset(now);
        self.send_public_key(1);
        Ok(())
    }

    /// Answers [`ClientEffect::ReadFile`] with the bytes read (empty at end of file).
    ///
    /// # Errors
    /// `ApiMisuse` when no read was pending.
    pub fn handle_file_data(
        &mut self,
        now: Instant,
        file: FileId,
        data: Bytes,
    ) -> Result<(), SessionError> {
        self.check_alive()?;
        if !matches!(self.state, State::Reading)
            || self.upload.as_ref().is_none_or(|u| u.file.id != file)
        {
            return Err(SessionError::ApiMisuse("handle_file_data out of turn"));
        }
        self.timer.reset(now);
        self.on_file_data(data);
        Ok(())
    }

    /// Answers [`ClientEffect::ReadFile`] with a read error: the file fails, the session
    /// goes on with the next one.
    ///
    /// # Errors
    /// `ApiMisuse` when no read was pending.
    pub fn handle_file_error(
        &mut self,
        _now: Instant,
        file: FileId,
        reason: String,
    ) -> Result<(), SessionError> {
        self.check_alive()?;
        if !matches!(self.state, State::Reading)
            || self.upload.as_ref().is_none_or(|u| u.file.id != file)
        {
            return Err(SessionError::ApiMisuse("handle_file_error out of turn"));
        }
        // The server already got part of the file: the connection cannot carry on cleanly.
        self.file_failed(FileFailure::Local {
            reason: reason.clone(),
        });
        Err(self.fail(SessionError::LocalFile { reason }))
    }

    /// The server closed the connection.
    pub fn handle_eof(&mut self, _now: Instant) {
        if self.failed.is_some() {
            return;
        }
        if matches!(self.state, State::Done) {
            return;
        }
        self.fail(SessionError::ConnectionClosed);
    }

    /// Time passed: past the response deadline the session fails.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.failed.is_none() && self.timer.expired(now) {
            self.fail(SessionError::IdleTimeout);
        }
    }

    /// The next output, in order.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    /// The next deadline and its reason.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        self.timer.poll()
    }

    /// Whether the session waits for a response from the server.
    #[must_use]
    pub fn is_awaiting_response(&self) -> bool {
        matches!(
            self.state,
            State::AwaitRegistered { .. }
                | State::AwaitKey { .. }
                | State::AwaitFileReceived
                | State::AwaitAck { .. }
        )
    }

    /// Whether every queued file was handled and the session finished.
    #[must_use]
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Ends the session once the queue is empty (call after queueing every file).
    pub fn finish_when_idle(&mut self) {
        self.close_when_idle = true;
        if matches!(self.state, State::Ready) && self.session_key.is_some() {
            self.start_next_file();
        }
    }

    fn check_alive(&self) -> Result<(), SessionError> {
        match &self.failed {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    fn client_id(&self) -> ClientId {
        match &self.credentials {
            Credentials::Registered(identity) => identity.client_id(),
            Credentials::New { .. } => ClientId::ZERO,
        }
    }

    fn name(&self) -> NameField {
        match &self.credentials {
            Credentials::Registered(identity) => identity.name().clone(),
            Credentials::New { name, .. } => name.clone(),
        }
    }

    fn send_register(&mut self, attempt: u8) {
        let name = self.name();
        self.send(ClientId::ZERO, &Request::Register { name });
        self.state = State::AwaitRegistered { attempt };
    }

    fn send_reconnect(&mut self, attempt: u8) {
        let name = self.name();
        self.send(self.client_id(), &Request::Reconnect { name });
        self.state = State::AwaitKey {
            attempt,
            reconnect: true,
        };
    }

    fn send_public_key(&mut self, attempt: u8) {
        let Credentials::Registered(identity) = &self.credentials else {
            self.fail(SessionError::ApiMisuse("public key before registration"));
            return;
        };
        let der = match identity.key().public_key().to_spki_der() {
            Ok(der) => der,
            Err(err) => {
                self.fail(err.into());
                return;
            }
        };
        let request = Request::PublicKey {
            name: identity.name().clone(),
            public_key: Bytes::from(der),
        };
        self.send(identity.client_id(), &request);
        self.state = State::AwaitKey {
            attempt,
            reconnect: false,
        };
    }

    fn send(&mut self, client_id: ClientId, request: &Request) {
        let mut out = BytesMut::new();
        request.encode(client_id, &mut out);
        self.outputs.push_back(Output::Transmit(out.freeze()));
    }

    fn on_response(&mut self, response: Response) {
        let state = std::mem::replace(&mut self.state, State::Ready);
        match (state, response) {
            (State::AwaitRegistered { .. }, Response::Registered { client_id }) => {
                self.on_registered(client_id);
            }
            (State::AwaitRegistered { .. }, Response::RegistrationFailed) => {
                let name = self.name().to_string_lossy();
                self.fail(SessionError::NameTaken { name });
            }
            (State::AwaitRegistered { attempt }, Response::ServerError) => {
                self.retry(RequestCode::REGISTER, attempt, Self::send_register);
            }
            (
                State::AwaitKey { reconnect, .. },
                Response::PublicKeyAccepted { encrypted_key, .. }
                | Response::ReconnectAccepted { encrypted_key, .. },
            ) => self.on_session_key(&encrypted_key, reconnect),
            (
                State::AwaitKey {
                    reconnect: true, ..
                },
                Response::ReconnectRefused { .. },
            ) => {
                self.event(ClientEvent::ReconnectRefused);
                let name = self.name();
                // Register anew with the same name; me.info is replaced only once the
                // server registered us.
                self.credentials = Credentials::New { name, key: None };
                self.send_register(1);
            }
            (
                State::AwaitKey {
                    attempt,
                    reconnect: true,
                },
                Response::ServerError,
            ) => self.retry(RequestCode::RECONNECT, attempt, Self::send_reconnect),
            (
                State::AwaitKey {
                    attempt,
                    reconnect: false,
                },
                Response::ServerError,
            ) => self.retry_or(
                RequestCode::PUBLIC_KEY,
                attempt,
                Self::send_public_key,
                |attempts| SessionError::PublicKeyRefused { attempts },
            ),
            (State::AwaitFileReceived, Response::FileReceived { cksum, .. }) => {
                self.on_file_received(cksum);
            }
            (State::AwaitFileReceived, Response::Acknowledged { .. }) => {
                // A 1604 answering our 1030 (Tom's and elies' servers): skip it.
                self.state = State::AwaitFileReceived;
            }
            (State::AwaitFileReceived, Response::ServerError) => self.on_file_error(),
            (State::AwaitAck { code, .. }, Response::Acknowledged { .. }) => self.on_ack(code),
            (State::AwaitAck { code, attempt }, Response::ServerError) => {
                self.retry(code, attempt, |session, next| {
                    session.send_verdict(code, next);
                });
            }
            (state, response) => {
                let expected = expected_response(&state);
                self.fail(SessionError::UnexpectedResponse {
                    code: response.code().0,
                    expected,
                });
            }
        }
    }

    fn retry(&mut self, request: RequestCode, attempt: u8, resend: impl FnOnce(&mut Self, u8)) {
        self.retry_or(request, attempt, resend, |attempts| {
            SessionError::ServerKeptFailing {
                request: request.0,
                attempts,
            }
        });
    }

    /// After a 1607: resends, or fails with `give_up(attempts)` after the last attempt.
    fn retry_or(
        &mut self,
        request: RequestCode,
        attempt: u8,
        resend: impl FnOnce(&mut Self, u8),
        give_up: impl FnOnce(u8) -> SessionError,
    ) {
        self.event(ClientEvent::ServerError {
            request: request.0,
            attempt,
        });
        if attempt >= MAX_REQUEST_ATTEMPTS {
            self.fail(give_up(attempt));
        } else {
            resend(self, attempt + 1);
        }
    }

    fn on_registered(&mut self, client_id: ClientId) {
        let Credentials::New { name, key } = &mut self.credentials else {
            self.fail(SessionError::ApiMisuse("registered twice"));
            return;
        };
        let name = name.clone();
        let key = match key.take() {
            Some(key) => key,
            None => match ClientKeyPair::generate(&mut self.rng) {
                Ok(key) => key,
                Err(err) => {
                    self.fail(err.into());
                    return;
                }
            },
        };
        let identity = Identity::new(name, client_id, key);
        self.credentials = Credentials::Registered(identity.clone());
        self.event(ClientEvent::Registered { client_id });
        self.outputs
            .push_back(Output::Effect(ClientEffect::SaveIdentity(Box::new(
                identity,
            ))));
        self.state = State::SavingIdentity;
    }

    fn on_session_key(&mut self, encrypted_key: &[u8], reconnect: bool) {
        let Credentials::Registered(identity) = &self.credentials else {
            self.fail(SessionError::ApiMisuse("session key before registration"));
            return;
        };
        let client_id = identity.client_id();
        match identity
            .key()
            .unwrap_session_key(&mut self.rng, encrypted_key)
        {
            Ok(key) => self.session_key = Some(key),
            Err(err) => {
                self.fail(err.into());
                return;
            }
        }
        if reconnect {
            self.event(ClientEvent::Reconnected { client_id });
        }
        self.event(ClientEvent::KeyExchanged);
        self.state = State::Ready;
    }

    fn start_next_file(&mut self) {
        let Some(file) = self.queue.pop_front() else {
            if self.close_when_idle {
                self.state = State::Done;
                self.timer.disarm();
                self.outputs.push_back(Output::Close(CloseReason::Done));
            } else {
                self.timer.disarm();
            }
            return;
        };
        if file.spec.len > MAX_V3_FILE_LEN {
            let len = file.spec.len;
            self.close_file(file.id);
            self.event(ClientEvent::FileFailed {
                file: file.id,
                failure: FileFailure::TooLarge { len },
            });
            return self.start_next_file();
        }
        let plan = self.plan(file.spec.len, self.config.scheme, self.config.single_packet);
        self.upload = Some(Upload {
            file,
            plan,
            sends: 0,
            errors: 0,
            cksum: Cksum::new(),
            encryptor: None,
            read: 0,
            packet: 0,
            packet_left: 0,
            packet_plain_left: 0,
        });
        self.start_send();
    }

    fn plan(&self, len: u64, scheme: PacketScheme, single_packet: bool) -> Plan {
        let ciphertext_len = cbc_ciphertext_len(len);
        let block = AES_BLOCK_LEN as u64;
        let max_packets = u64::from(MAX_PACKETS);
        // A packet's payload (metadata + content) must fit the header's u32 payload size.
        let largest = (u64::from(u32::MAX - FILE_META_LEN_U32)) / block * block;
        let wanted = u64::from(self.config.packet_content_len)
            .max(block)
            .min(largest);
        match scheme {
            PacketScheme::Sliced => {
                let per_packet = if single_packet {
                    ciphertext_len
                } else {
                    wanted.max(ciphertext_len.div_ceil(max_packets))
                }
                .min(largest);
                Plan {
                    scheme,
                    total_packets: packets(ciphertext_len, per_packet),
                    per_packet,
                    ciphertext_len,
                }
            }
            PacketScheme::PerPacket => {
                // Plaintext per packet: the largest multiple of 16 whose ciphertext fits.
                let plain = (wanted - block) / block * block;
                let plain = plain
                    .max(block)
                    .max(len.div_ceil(max_packets).div_ceil(block) * block);
                Plan {
                    scheme,
                    total_packets: packets(len, plain).max(1),
                    per_packet: plain,
                    ciphertext_len,
                }
            }
        }
    }

    fn start_send(&mut self) {
        let Some(upload) = self.upload.as_mut() else {
            return;
        };
        upload.sends += 1;
        upload.cksum = Cksum::new();
        upload.read = 0;
        upload.packet = 0;
        upload.packet_left = 0;
        upload.packet_plain_left = 0;
        upload.encryptor = match upload.plan.scheme {
            PacketScheme::Sliced => self.session_key.as_ref().map(CbcEncryptor::new),
            PacketScheme::PerPacket => None,
        };
        let mut out = BytesMut::new();
        self.open_packet(&mut out);
        self.transmit(out);
        self.request_read();
    }

    /// Starts the next packet: writes its header and metadata to `out`.
    fn open_packet(&mut self, out: &mut BytesMut) {
        let client_id = self.client_id();
        let key = self.session_key.clone();
        let Some(upload) = self.upload.as_mut() else {
            return;
        };
        upload.packet += 1;
        let plan = upload.plan;
        let len = upload.file.spec.len;
        let index = u64::from(upload.packet - 1);
        let (content_len, content_size, orig_file_size) = match plan.scheme {
            PacketScheme::Sliced => {
                let start = index * plan.per_packet;
                let content = plan
                    .per_packet
                    .min(plan.ciphertext_len - start.min(plan.ciphertext_len));
                (content, plan.ciphertext_len, len)
            }
            PacketScheme::PerPacket => {
                let start = index * plan.per_packet;
                let plain = plan.per_packet.min(len - start.min(len));
                upload.packet_plain_left = plain;
                upload.encryptor = key.as_ref().map(CbcEncryptor::new);
                let cipher = cbc_ciphertext_len(plain);
                (cipher, cipher, plain)
            }
        };
        upload.packet_left = content_len;
        let meta = FileMeta {
            content_size: u32::try_from(content_size).unwrap_or(u32::MAX),
            orig_file_size: u32::try_from(orig_file_size).unwrap_or(u32::MAX),
            packet_number: upload.packet,
            total_packets: plan.total_packets,
            file_name: upload.file.spec.name.clone(),
        };
        meta.encode_frame_head(
            client_id,
            u32::try_from(content_len).unwrap_or(u32::MAX),
            out,
        );
    }

    fn request_read(&mut self) {
        let Some(upload) = self.upload.as_ref() else {
            return;
        };
        let remaining = upload.file.spec.len - upload.read.min(upload.file.spec.len);
        let mut max = self.config.read_chunk_len.max(1);
        if upload.plan.scheme == PacketScheme::PerPacket {
            max = max.min(
                usize::try_from(upload.packet_plain_left)
                    .unwrap_or(usize::MAX)
                    .max(1),
            );
        }
        let max = max.min(usize::try_from(remaining).unwrap_or(usize::MAX).max(1));
        let effect = ClientEffect::ReadFile {
            file: upload.file.id,
            offset: upload.read,
            max,
        };
        self.outputs.push_back(Output::Effect(effect));
        self.state = State::Reading;
    }

    fn on_file_data(&mut self, data: Bytes) {
        let Some(upload) = self.upload.as_mut() else {
            return;
        };
        let expected = upload.file.spec.len;
        let read = upload.read + data.len() as u64;
        if read > expected || (data.is_empty() && read < expected) {
            let name = upload.file.spec.name.to_string_lossy();
            let error = SessionError::FileChanged {
                name,
                expected,
                actual: read,
            };
            self.file_failed(FileFailure::Local {
                reason: error.to_string(),
            });
            self.fail(error);
            return;
        }
        upload.read = read;
        upload.cksum.update(&data);
        let finishing = match upload.plan.scheme {
            PacketScheme::Sliced => read == expected,
            PacketScheme::PerPacket => {
                upload.packet_plain_left -= data.len() as u64;
                upload.packet_plain_left == 0
            }
        };
        // Encrypt in place when the driver handed over the only reference (no copy).
        let owned = data
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        let mut pieces = Vec::with_capacity(3);
        if let Some(encryptor) = upload.encryptor.as_mut() {
            let (head, body) = encryptor.update_in_place(owned);
            pieces.extend(head.map(BytesMut::freeze));
            pieces.push(body.freeze());
        }
        if finishing && let Some(encryptor) = upload.encryptor.take() {
            let mut last = BytesMut::with_capacity(AES_BLOCK_LEN);
            encryptor.finish(&mut last);
            pieces.push(last.freeze());
        }
        let progress = ClientEvent::Progress {
            file: upload.file.id,
            sent: read,
            total: expected,
            phase: TransferPhase::Sending,
        };
        for piece in pieces {
            self.packetize(piece);
        }
        self.event(progress);
        let Some(upload) = self.upload.as_ref() else {
            return;
        };
        let all_sent = upload.packet >= upload.plan.total_packets && upload.packet_left == 0;
        if all_sent && upload.read == expected {
            self.state = State::AwaitFileReceived;
            let progress = ClientEvent::Progress {
                file: upload.file.id,
                sent: expected,
                total: expected,
                phase: TransferPhase::Verifying,
            };
            self.event(progress);
        } else {
            self.request_read();
        }
    }

    /// Cuts ciphertext into the current packet, opening the next ones as they fill.
    fn packetize(&mut self, mut cipher: Bytes) {
        let mut out = BytesMut::new();
        loop {
            let Some(upload) = self.upload.as_mut() else {
                return;
            };
            if upload.packet_left == 0 && upload.packet < upload.plan.total_packets {
                let next_has_data = !cipher.is_empty()
                    || (upload.plan.scheme == PacketScheme::PerPacket
                        && upload.read < upload.file.spec.len);
                if !next_has_data {
                    break;
                }
                self.transmit(std::mem::take(&mut out));
                self.open_packet(&mut out);
                continue;
            }
            if cipher.is_empty() {
                break;
            }
            let take = usize::try_from(upload.packet_left)
                .unwrap_or(usize::MAX)
                .min(cipher.len());
            upload.packet_left -= take as u64;
            self.transmit(std::mem::take(&mut out));
            self.outputs
                .push_back(Output::Transmit(cipher.split_to(take)));
        }
        self.transmit(out);
    }

    fn transmit(&mut self, out: BytesMut) {
        if !out.is_empty() {
            self.outputs.push_back(Output::Transmit(out.freeze()));
        }
    }

    fn on_file_received(&mut self, theirs: u32) {
        let Some(upload) = self.upload.as_mut() else {
            return;
        };
        let ours = upload.cksum.clone().finalize();
        let file = upload.file.id;
        if ours == theirs {
            self.send_verdict(RequestCode::CRC_OK, 1);
            return;
        }
        let attempt = upload.sends;
        if attempt >= MAX_FILE_SENDS {
            self.event(ClientEvent::CrcMismatch {
                file,
                attempt,
                ours,
                theirs,
                switched_to_per_packet: false,
            });
            self.send_verdict(RequestCode::CRC_ABORT, 1);
            return;
        }
        let switch = self.config.per_packet_fallback
            && upload.plan.scheme == PacketScheme::Sliced
            && upload.plan.total_packets > 1;
        self.event(ClientEvent::CrcMismatch {
            file,
            attempt,
            ours,
            theirs,
            switched_to_per_packet: switch,
        });
        if switch {
            let len = self.upload.as_ref().map_or(0, |u| u.file.spec.len);
            let plan = self.plan(len, PacketScheme::PerPacket, false);
            if let Some(upload) = self.upload.as_mut() {
                upload.plan = plan;
            }
        }
        self.send_verdict(RequestCode::CRC_RETRY, 1);
        // 1030 gets no reply: resend at once.
        self.start_send();
    }

    fn on_file_error(&mut self) {
        let Some(upload) = self.upload.as_mut() else {
            return;
        };
        upload.errors += 1;
        let attempt = upload.errors;
        upload.sends = upload.sends.saturating_sub(1);
        let (file, len, multi_packet) = (
            upload.file.id,
            upload.file.spec.len,
            upload.plan.total_packets > 1,
        );
        self.event(ClientEvent::ServerError {
            request: RequestCode::SEND_FILE.0,
            attempt,
        });
        if attempt >= MAX_REQUEST_ATTEMPTS {
            self.fail(SessionError::ServerKeptFailing {
                request: RequestCode::SEND_FILE.0,
                attempts: attempt,
            });
            return;
        }
        // A server that refuses a file sent in packets (its padding or size check fails on
        // how it joins them; urihor's server cuts the last packet) may take it whole: as
        // after a checksum mismatch, the resend changes scheme.
        let whole = self.plan(len, PacketScheme::Sliced, true);
        if multi_packet && whole.total_packets == 1 {
            if let Some(upload) = self.upload.as_mut() {
                upload.plan = whole;
            }
            self.event(ClientEvent::ResendingAsOnePacket { file, attempt });
        }
        self.start_send();
    }

    fn send_verdict(&mut self, code: RequestCode, attempt: u8) {
        let Some(upload) = self.upload.as_ref() else {
            return;
        };
        let file_name = upload.file.spec.name.clone();
        let request = match code {
            RequestCode::CRC_OK => Request::CrcOk { file_name },
            RequestCode::CRC_RETRY => Request::CrcRetry { file_name },
            _ => Request::CrcAbort { file_name },
        };
        self.send(self.client_id(), &request);
        if code != RequestCode::CRC_RETRY {
            self.state = State::AwaitAck { code, attempt };
        }
    }

    fn on_ack(&mut self, code: RequestCode) {
        let Some(upload) = self.upload.take() else {
            return;
        };
        let file = upload.file.id;
        self.close_file(file);
        if code == RequestCode::CRC_OK {
            self.event(ClientEvent::FileVerified {
                file,
                cksum: upload.cksum.finalize(),
                attempts: upload.sends,
            });
        } else {
            self.event(ClientEvent::FileFailed {
                file,
                failure: FileFailure::CrcMismatch {
                    attempts: upload.sends,
                },
            });
        }
        self.state = State::Ready;
    }

    fn file_failed(&mut self, failure: FileFailure) {
        if let Some(upload) = self.upload.take() {
            self.close_file(upload.file.id);
            self.event(ClientEvent::FileFailed {
                file: upload.file.id,
                failure,
            });
        }
    }

    fn close_file(&mut self, file: FileId) {
        self.outputs
            .push_back(Output::Effect(ClientEffect::CloseFile { file }));
    }

    fn event(&mut self, event: ClientEvent) {
        self.outputs.push_back(Output::Event(event));
    }

    fn fail(&mut self, error: SessionError) -> SessionError {
        if let Some(existing) = &self.failed {
            return existing.clone();
        }
        self.timer.disarm();
        self.outputs
            .push_back(Output::Close(CloseReason::Error(error.clone())));
        self.failed = Some(error.clone());
        error
    }
}

fn packets(len: u64, per_packet: u64) -> u16 {
    u16::try_from(len.div_ceil(per_packet.max(1)).max(1)).unwrap_or(MAX_PACKETS)
}

fn expected_response(state: &State) -> &'static str {
    match state {
        State::AwaitRegistered { .. } => "1600 (registered)",
        State::AwaitKey {
            reconnect: true, ..
        } => "1605 or 1606 (reconnect)",
        State::AwaitKey { .. } => "1602 (public key accepted)",
        State::AwaitFileReceived => "1603 (file received)",
        State::AwaitAck { .. } => "1604 (acknowledged)",
        State::SavingIdentity | State::Ready | State::Reading | State::Done => "nothing",
    }
}
