//! The server side of a v4 connection.
//!
//! One operation at a time. While an effect awaits its answer, or while a restore streams,
//! the session decodes nothing more: the bytes stay in the driver's buffer and are fed again
//! after the answer (the v3 driver loop, `docs/architecture.md`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand_core::CryptoRngCore;

use super::codec::{Frame, FrameDecoder, Side};
use super::noise::{PublicKey, StaticKeypair, handshake};
use super::repository::{
    MAX_DAMAGED_BATCH, PutTarget, RepoPruneReport, RepoReply, RepoRequest, RepoUsage, SnapshotEntry,
};
use super::wire::{
    ClientAuth, ClientMessage, ErrorCode, MAX_DATA_LEN, MAX_FRAME_LEN, ServerHello, ServerMessage,
    VersionRecord, encode_frame, kind,
};
use super::{CloseReason, ContentDigest, IdleTimer, Output, Refusal, StorageFailure, V4Error};
use crate::names::{ClientId, FileName, NameField};
use crate::repo::BlobId;
use crate::session::Timer;

/// Default bytes between durable checkpoints: 8 MiB.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 8 * 1024 * 1024;
/// Default largest restore read.
pub const DEFAULT_RESTORE_READ_LEN: usize = 256 * 1024;

/// Settings of a v4 server session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Silence from the client (no complete frame) that closes the connection.
    pub idle_timeout: Duration,
    /// Bytes between durable checkpoints of an upload (≥ 1).
    pub checkpoint_interval: u64,
    /// Largest accepted file.
    pub max_file_len: u64,
    /// Registration needs an enrollment token (announced in the ServerHello).
    pub enrollment_required: bool,
    /// Largest `ReadVersion` asked of the driver.
    pub restore_read_len: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            max_file_len: 4 * 1024 * 1024 * 1024,
            enrollment_required: false,
            restore_read_len: DEFAULT_RESTORE_READ_LEN,
        }
    }
}

/// Work the driver carries out for a v4 server session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEffect {
    /// Decide whether this static key may log in or register.
    /// Answer: [`ServerSession::handle_auth`].
    Authenticate {
        /// The client's authenticated static key.
        client_key: PublicKey,
        /// What it asked for.
        request: ClientAuth,
    },
    /// Open (or resume) an upload. Answer: [`ServerSession::handle_upload_opened`].
    OpenUpload {
        /// The authenticated client.
        client_id: ClientId,
        /// File name.
        name: FileName,
        /// Announced plaintext size.
        size: u64,
        /// Discard any partial upload first.
        restart: bool,
    },
    /// Append to the open upload. Answer: [`ServerSession::handle_storage`].
    WriteUpload {
        /// Authenticated plaintext, in order.
        data: Bytes,
    },
    /// Make everything up to `offset` durable and record it. Answer:
    /// [`ServerSession::handle_storage`].
    Checkpoint {
        /// Bytes written so far (a multiple of the checkpoint interval).
        offset: u64,
    },
    /// The hash matched: make the file durable and commit it as a new version.
    /// Answer: [`ServerSession::handle_committed`].
    FinishUpload {
        /// Plaintext size.
        size: u64,
        /// SHA-256, checked against the client's.
        sha256: [u8; 32],
        /// POSIX cksum.
        cksum: u32,
    },
    /// Delete the open upload (hash mismatch). No answer.
    DiscardUpload,
    /// List the client's verified versions. Answer: [`ServerSession::handle_listing`].
    ListVersions {
        /// The authenticated client.
        client_id: ClientId,
    },
    /// Find a version of the client's file. Answer: [`ServerSession::handle_version_opened`].
    OpenVersion {
        /// The authenticated client.
        client_id: ClientId,
        /// File name.
        name: FileName,
        /// Version, `None` for the newest.
        version: Option<u32>,
    },
    /// Read from the opened version. Answer: [`ServerSession::handle_version_data`].
    ReadVersion {
        /// Offset in the file.
        offset: u64,
        /// At most this many bytes.
        max: usize,
    },
    /// Close the opened version. No answer.
    CloseVersion,
    /// A repository request (`docs/protocol-v4.md` §9a) other than the bytes of a `PUT`.
    /// Answer: [`ServerSession::handle_repository`] with the [`RepoAnswer`] that fits the
    /// request (`Put` → `PutReady` or `Stored`, `Get` → `Object`, …).
    Repository {
        /// The authenticated client: every request is confined to its repository.
        client_id: ClientId,
        /// What it asked.
        request: RepoRequest,
    },
    /// Append to the object being put. Answer: [`ServerSession::handle_storage`].
    WritePut {
        /// Authenticated bytes of the object, in order.
        data: Bytes,
    },
    /// Every byte of the object arrived: verify it (hash, structure, and for a snapshot the
    /// presence of everything it references), make it durable and visible. Answer:
    /// [`ServerSession::handle_repository`] with [`RepoAnswer::Stored`] or a refusal.
    FinishPut,
    /// The object being put is abandoned (refused, connection closed or failed): delete
    /// what was staged. No answer.
    AbortPut,
}

impl ServerEffect {
    /// Whether the session waits for the driver's answer to this effect.
    #[must_use]
    pub fn needs_answer(&self) -> bool {
        !matches!(
            self,
            Self::DiscardUpload | Self::CloseVersion | Self::AbortPut
        )
    }
}

/// The driver's decision on [`ServerEffect::Authenticate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthDecision {
    /// The key is (now) registered.
    Accepted {
        /// Its client id.
        client_id: ClientId,
        /// Its registered name.
        name: NameField,
        /// Whether this handshake registered it.
        registered: bool,
    },
    /// Refused: sent as a fatal `ERROR`.
    Refused(Refusal),
}

/// Where an upload starts: the durable offset and the digest of the bytes before it.
#[derive(Clone, Debug)]
pub struct ResumePoint {
    /// Durable offset (0 for a new upload).
    pub offset: u64,
    /// SHA-256 and cksum of `[0, offset)` as stored.
    pub digest: ContentDigest,
}

impl ResumePoint {
    /// A new upload from offset 0.
    #[must_use]
    pub fn start() -> Self {
        Self {
            offset: 0,
            digest: ContentDigest::new(),
        }
    }
}

/// The driver's answer to a [`ServerEffect::Repository`] or [`ServerEffect::FinishPut`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoAnswer {
    /// `Open`: the config (`None`: no repository) and every key object.
    State {
        /// Encoded config object.
        config: Option<Bytes>,
        /// Encoded key objects.
        keys: Vec<Bytes>,
    },
    /// `Create`, `AddKey`, `RemoveKey`, `Forget`: done.
    Done,
    /// `Have`: one answer per asked ID, in order.
    Have(Vec<bool>),
    /// `Put`: staged; the client may send the bytes.
    PutReady,
    /// `Put` of an object already stored, or `FinishPut`: durable and visible.
    Stored,
    /// `Get`: the whole object.
    Object(Bytes),
    /// `Snapshots`: every committed snapshot.
    Snapshots(Vec<SnapshotEntry>),
    /// `Damaged`: one page of damaged blob IDs (strictly increasing, all greater than the
    /// request's `after`, at most [`MAX_DAMAGED_BATCH`]) and whether more follow.
    Damaged {
        /// The page.
        ids: Vec<BlobId>,
        /// More damaged blobs follow this page.
        more: bool,
    },
    /// `Usage`: stored bytes and quotas.
    Usage(RepoUsage),
    /// `Prune`: what the prune did.
    Pruned(RepoPruneReport),
}

/// Something that happened in a v4 server session, for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// The handshake completed and the client was accepted.
    Authenticated {
        /// Its id.
        client_id: ClientId,
        /// Whether it registered now.
        registered: bool,
    },
    /// An upload started or resumed.
    UploadOpened {
        /// File name.
        name: FileName,
        /// Resume offset.
        offset: u64,
        /// Announced size.
        size: u64,
    },
    /// An upload was verified and committed.
    UploadCommitted {
        /// File name.
        name: FileName,
        /// Version.
        version: u32,
        /// Size.
        size: u64,
    },
    /// An upload's hash did not match; it was discarded.
    UploadRejected {
        /// File name.
        name: FileName,
    },
    /// A restore completed.
    Restored {
        /// File name.
        name: FileName,
        /// Version.
        version: u32,
    },
    /// A repository object was stored (a snapshot object: committed).
    ObjectStored {
        /// What was stored.
        target: PutTarget,
        /// Its size in bytes.
        size: u64,
    },
    /// An operation was refused with a non-fatal error.
    Refused {
        /// The error sent.
        code: ErrorCode,
        /// Its text.
        message: String,
    },
}

/// Output of a v4 server session.
pub type ServerOutput = Output<ServerEffect, ServerEvent>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Auth,
    OpenUpload,
    Write,
    Checkpoint,
    Finish,
    Listing,
    OpenVersion,
    ReadVersion,
    Repo(RepoOp),
    PutWrite,
}

/// The repository request awaiting its answer, to check that the answer fits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RepoOp {
    Open,
    Done,
    Have(usize),
    Put,
    Finish,
    Get,
    Snapshots,
    Damaged,
    Usage,
    Prune,
}

#[derive(Debug)]
struct Put {
    target: PutTarget,
    size: u64,
    received: u64,
    /// `PUT_READY` was sent: `DATA` and `PUT_END` may follow.
    ready: bool,
}

#[derive(Debug)]
struct Upload {
    name: FileName,
    size: u64,
    received: u64,
    digest: ContentDigest,
    /// Received but not yet handed to the driver (split at a checkpoint boundary).
    rest: Option<Bytes>,
    /// The last write ended on a checkpoint boundary: checkpoint before anything else.
    checkpoint_due: bool,
    /// The client's hash, once `UPLOAD_END` arrived and all data is written.
    end: Option<[u8; 32]>,
}

#[derive(Debug)]
struct Restore {
    record: VersionRecord,
    offset: u64,
    digest: ContentDigest,
}

enum Stage {
    AwaitHello,
    AwaitMsg3(Box<snow::HandshakeState>),
    Transport(Box<snow::TransportState>),
    Closed,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AwaitHello => "AwaitHello",
            Self::AwaitMsg3(_) => "AwaitMsg3",
            Self::Transport(_) => "Transport",
            Self::Closed => "Closed",
        })
    }
}

/// The server end of one v4 connection.
#[derive(Debug)]
pub struct ServerSession<R> {
    config: Arc<ServerConfig>,
    keys: StaticKeypair,
    rng: R,
    decoder: FrameDecoder,
    stage: Stage,
    client: Option<ClientId>,
    pending: Option<Pending>,
    upload: Option<Upload>,
    restore: Option<Restore>,
    put: Option<Put>,
    idle: IdleTimer,
    out: VecDeque<ServerOutput>,
    failed: Option<V4Error>,
    /// A fatal `ERROR` was sent (the connection closes after it).
    fatal_error_sent: bool,
    /// The frame decoder failed: the byte stream is unusable.
    stream_broken: bool,
}

impl<R: CryptoRngCore> ServerSession<R> {
    /// A session for a connection whose client will speak first (the hello).
    pub fn new(config: Arc<ServerConfig>, keys: StaticKeypair, rng: R, now: Instant) -> Self {
        let idle = IdleTimer::new(config.idle_timeout, now);
        Self {
            config,
            keys,
            rng,
            decoder: FrameDecoder::new(Side::FromClient),
            stage: Stage::AwaitHello,
            client: None,
            pending: None,
            upload: None,
            restore: None,
            put: None,
            idle,
            out: VecDeque::new(),
            failed: None,
            fatal_error_sent: false,
            stream_broken: false,
        }
    }

    /// Consumes complete frames from `buf` until an effect needs an answer, a restore
    /// streams, or more bytes are needed.
    ///
    /// # Errors
    /// The fatal [`V4Error`]; it is also queued as `Close(Error)`.
    pub fn handle_bytes(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), V4Error> {
        self.check_failed()?;
        let result = self.consume(now, buf);
        self.fail_on(result)
    }

    /// The peer closed its side. An open upload stays resumable (nothing is discarded).
    pub fn handle_eof(&mut self, _now: Instant) {
        if self.is_closed() {
            return;
        }
        self.close(CloseReason::PeerClosed);
    }

    /// Checks the idle deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.is_closed() && self.idle.expired(now) {
            self.close(CloseReason::IdleTimeout);
        }
    }

    /// Answers [`ServerEffect::Authenticate`].
    ///
    /// # Errors
    /// [`V4Error::ApiMisuse`] when no authentication is pending; a refusal closes the
    /// session (and is returned as [`V4Error::Refused`]).
    pub fn handle_auth(&mut self, now: Instant, decision: AuthDecision) -> Result<(), V4Error> {
        self.answer(now, Pending::Auth)?;
        let result = match decision {
            AuthDecision::Accepted {
                client_id,
                name,
                registered,
            } => {
                self.client = Some(client_id);
                self.out
                    .push_back(Output::Event(ServerEvent::Authenticated {
                        client_id,
                        registered,
                    }));
                self.send(&ServerMessage::Welcome {
                    client_id,
                    registered,
                    name,
                })
            }
            AuthDecision::Refused(refusal) => {
                let result = self.send(&ServerMessage::Error {
                    code: refusal.code,
                    fatal: true,
                    message: refusal.message.clone(),
                });
                result.and(Err(V4Error::Refused {
                    code: refusal.code,
                    message: refusal.message,
                }))
            }
        };
        self.fail_on(result)
    }

    /// Answers [`ServerEffect::OpenUpload`].
    ///
    /// # Errors
    /// [`V4Error::ApiMisuse`] when not pending, or a fatal error.
    pub fn handle_upload_opened(
        &mut self,
        now: Instant,
        outcome: Result<ResumePoint, Refusal>,
    ) -> Result<(), V4Error> {
        self.answer(now, Pending::OpenUpload)?;
        let result = self.upload_opened(outcome);
        self.fail_on(result)
    }

    /// Answers [`ServerEffect::WriteUpload`] and [`ServerEffect::Checkpoint`]. A failure ends
    /// the connection (the client is streaming); the durable part stays resumable.
    ///
    /// # Errors
    /// [`V4Error::ApiMisuse`] when not pending, or [`V4Error::Storage`].
    pub fn handle_storage(
        &mut self,
        now: Instant,
        outcome: Result<(), StorageFailure>,
    ) -> Result<(), V4Error> {
        match self.pending {
            Some(Pending::Write) => self.answer(now, Pending::Write)?,
            Some(Pending::PutWrite) => self.answer(now, Pending::PutWrite)?,
            _ => self.answer(now, Pending::Checkpoint)?,
        }
        let result = match outcome {
            Ok(()) if self.put.is_some() => Ok(()),
            Ok(()) => self.pump_upload(),
            Err(failure) => {
                let message = if failure.is_full() {
                    "server storage is full: ask the server's operator to free disk space, then retry (the upload resumes from the last checkpoint)"
                } else {
                    "the server could not store the upload; retry later (it resumes from the last checkpoint)"
                };
                let _ = self.send(&ServerMessage::Error {
                    code: ErrorCode::STORAGE,
                    fatal: true,
                    message: message.into(),
                });
                Err(V4Error::Storage {
                    reason: failure.reason,
                })
            }
        };
        self.fail_on(result)
    }

    /// Answers [`ServerEffect::FinishUpload`] with the committed version number.
    ///
    /// # Errors
    /// [`V4Error::ApiMisuse`] when not pending, or a fatal error.
    pub fn handle_committed(
        &mut self,
        now: Instant,
        outcome: Result<u32, StorageFailure>,
    ) -> Result<(), V4Error> {
        self.answer(now, Pending::Finish)?;
        let Some(upload) = self.upload.take() else {
            return self.fail_on(Err(V4Error::ApiMisuse("no upload to commit")));
        };
        let result = match outcome {
            Ok(version) => {
                let (sha256, cksum) = upload.digest.finalize();
                self.out
                    .push_back(Output::Event(ServerEvent::UploadCommitted {
                        name: upload.name,
                        version,
                        size: upload.size,
                    }));
                self.send(&ServerMessage::UploadDone {
                    version,
                    size: upload.size,
                    cksum,
                    sha256,
                })
            }
            Err(failure) => self.refuse(Refusal::new(
                ErrorCode::STORAGE,
                format!(
                    "the server could not commit the file ({}); upload it again",
                    failure.reason
                ),
            )),
        };
        self.fail_on(result)
    }

    /// Answers [`ServerEffect::ListVersions`].
    ///
    /// # Errors
    /// [`V4Error::ApiMisuse`] when not pending, or a fatal error.
    pub fn handle_listing(
        &mut self,
        now: Instant,
        outcome: Result<Vec<VersionRecord>, StorageFailure>,
    ) -> Result<(), V4Error> {
        self.answer(now, Pending::Listing)?;
        let result = match outcome {
            Ok(records) => self.send_listing(records),
            Err(failure) => self.refuse(Refusal::new(
                ErrorCode::STORAGE,
                format!("the server could not list your files ({})", failure.reason),
            )),
        };
        self.fail_on(result)
    }

    /// Answers [`ServerEffect::OpenVersion`].
    ///
    /// # Errors
    /// [`V4Error::ApiMisuse`] when not pending, or a fatal error.
    pub fn handle_version_opened(
        &mut self,
        now: Instant,
        outcome: Result<Option<VersionRecord>, Refusal>,
    ) -> Result<(), V4Error> {
        self.answer(now, Pending::OpenVersion)?;
        let result = match outcome {
            Ok(Some(record)) => {
                let result = self.send(&ServerMessage::RestoreBegin(record.clone()));
                self.restore = Some(Restore {
                    record,
                    offset: 0,
                    digest: ContentDigest::new(),
                });
                result.and_then(|()| self.pump_restore())
            }
            Ok(None) => self.refuse(Refusal::new(
                ErrorCode::NOT_FOUND,
                "no such file or version; list your files to see the names and versions stored",
            )),
            Err(refusal) => self.refuse(refusal),
        };
        self.fail_on(result)
    }

    /// Answers [`ServerEffect::ReadVersion`] (an empty `Ok` = end of file).
    ///
    /// # Errors
    /// [`V4Error::ApiMisuse`] when not pending, or a fatal error.
    pub fn handle_version_data(
        &mut self,
        now: Instant,
        outcome: Result<Bytes, StorageFailure>,
    ) -> Result<(), V4Error> {
        self.answer(now, Pending::ReadVersion)?;
        let result = self.version_data(outcome);
        self.fail_on(result)
    }

    /// Answers [`ServerEffect::Repository`] and [`ServerEffect::FinishPut`]. A refusal is
    /// sent as a non-fatal `ERROR`; the connection goes on.
    ///
    /// # Errors
    /// [`V4Error::ApiMisuse`] when not pending, or a fatal error (also when the answer does
    /// not fit the request).
    pub fn handle_repository(
        &mut self,
        now: Instant,
        outcome: Result<RepoAnswer, Refusal>,
    ) -> Result<(), V4Error> {
        let Some(Pending::Repo(op)) = self.pending else {
            return Err(V4Error::ApiMisuse(
                "answered a repository effect that is not pending",
            ));
        };
        self.answer(now, Pending::Repo(op))?;
        let result = self.repository_answered(op, outcome);
        self.fail_on(result)
    }

    /// Next output, in order.
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.out.pop_front()
    }

    /// The next deadline, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        if self.is_closed() {
            return None;
        }
        self.idle.poll()
    }

    /// Whether the session closed (a `Close` was queued).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        matches!(self.stage, Stage::Closed)
    }

    /// Whether an effect awaits its answer.
    #[must_use]
    pub fn is_waiting_for_effect(&self) -> bool {
        self.pending.is_some()
    }

    /// Whether an upload is open (received data not yet committed).
    #[must_use]
    pub fn has_open_upload(&self) -> bool {
        self.upload.is_some() || self.put.is_some()
    }

    /// The authenticated client, once accepted.
    #[must_use]
    pub fn client_id(&self) -> Option<ClientId> {
        self.client
    }

    fn check_failed(&self) -> Result<(), V4Error> {
        match &self.failed {
            Some(err) => Err(err.clone()),
            None if self.is_closed() => Err(V4Error::ConnectionClosed),
            None => Ok(()),
        }
    }

    fn fail_on(&mut self, result: Result<(), V4Error>) -> Result<(), V4Error> {
        if let Err(err) = &result
            && self.failed.is_none()
            && !matches!(err, V4Error::ApiMisuse(_))
        {
            // A frame the codec refuses or that fails its tag may be damage on the way (the
            // client reconnects and resumes): the connection ends without a reply, as before.
            if !self.fatal_error_sent && !self.stream_broken && !matches!(err, V4Error::Decrypt) {
                // Every fatal error is answered before closing once transport keys exist
                // (`docs/protocol-v4.md` §5.3); before that nothing can be sealed.
                let code = match err {
                    V4Error::Storage { .. } | V4Error::Local { .. } => ErrorCode::INTERNAL,
                    _ => ErrorCode::PROTOCOL,
                };
                let _ = self.send(&ServerMessage::Error {
                    code,
                    fatal: true,
                    message: fatal_message(code, err),
                });
            }
            self.failed = Some(err.clone());
            self.close(CloseReason::Error(err.clone()));
        }
        result
    }

    fn close(&mut self, reason: CloseReason) {
        if self.restore.take().is_some() {
            self.out
                .push_back(Output::Effect(ServerEffect::CloseVersion));
        }
        if self.put.take().is_some() {
            self.out.push_back(Output::Effect(ServerEffect::AbortPut));
        }
        self.stage = Stage::Closed;
        self.pending = None;
        self.idle.disarm();
        self.out.push_back(Output::Close(reason));
    }

    fn answer(&mut self, now: Instant, expected: Pending) -> Result<(), V4Error> {
        if self.failed.is_some() || self.is_closed() {
            return Err(V4Error::ApiMisuse("the session is closed"));
        }
        if self.pending != Some(expected) {
            return Err(V4Error::ApiMisuse("answered an effect that is not pending"));
        }
        self.pending = None;
        self.idle.reset(now);
        Ok(())
    }

    fn effect(&mut self, effect: ServerEffect, pending: Option<Pending>) {
        self.pending = pending;
        self.out.push_back(Output::Effect(effect));
    }

    fn consume(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), V4Error> {
        while self.pending.is_none() && self.restore.is_none() && !self.is_closed() {
            let frame = match self.decoder.decode(buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(err) => {
                    self.stream_broken = true;
                    return Err(err.into());
                }
            };
            self.idle.reset(now);
            self.on_frame(frame)?;
        }
        Ok(())
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), V4Error> {
        match (std::mem::replace(&mut self.stage, Stage::Closed), frame) {
            (Stage::AwaitHello, Frame::Hello(msg1)) => {
                let mut seed = [0u8; 32];
                self.rng.fill_bytes(&mut seed);
                let mut hs = handshake(&self.keys, false, seed)
                    .map_err(|e| V4Error::handshake("setup", &e))?;
                let mut payload = [0u8; 64];
                let len = hs
                    .read_message(&msg1, &mut payload)
                    .map_err(|e| V4Error::handshake("message 1", &e))?;
                if len != 0 {
                    return Err(V4Error::Protocol(
                        "message 1 must have an empty payload".into(),
                    ));
                }
                let mut hello = Vec::with_capacity(ServerHello::LEN);
                ServerHello {
                    enrollment_required: self.config.enrollment_required,
                    checkpoint_interval: self.config.checkpoint_interval,
                }
                .encode(&mut hello);
                let mut msg2 = vec![0u8; MAX_FRAME_LEN];
                let len = hs
                    .write_message(&hello, &mut msg2)
                    .map_err(|e| V4Error::handshake("message 2", &e))?;
                self.out.push_back(Output::Transmit(encode_frame(
                    kind::HANDSHAKE,
                    msg2.get(..len).unwrap_or_default(),
                )));
                self.stage = Stage::AwaitMsg3(Box::new(hs));
                Ok(())
            }
            (Stage::AwaitMsg3(mut hs), Frame::Handshake(msg3)) => {
                let mut payload = vec![0u8; msg3.len()];
                let len = hs
                    .read_message(&msg3, &mut payload)
                    .map_err(|e| V4Error::handshake("message 3", &e))?;
                let client_key = hs
                    .get_remote_static()
                    .and_then(PublicKey::from_slice)
                    .ok_or_else(|| V4Error::Protocol("no client static key".into()))?;
                let transport = hs
                    .into_transport_mode()
                    .map_err(|e| V4Error::handshake("split", &e))?;
                // Transport keys first: a malformed ClientAuth is answered with an ERROR.
                self.stage = Stage::Transport(Box::new(transport));
                let request = ClientAuth::decode(payload.get(..len).unwrap_or_default())?;
                self.effect(
                    ServerEffect::Authenticate {
                        client_key,
                        request,
                    },
                    Some(Pending::Auth),
                );
                Ok(())
            }
            (Stage::Transport(mut transport), Frame::Transport(ciphertext)) => {
                let plaintext = super::open(&mut transport, &ciphertext);
                self.stage = Stage::Transport(transport);
                match ClientMessage::decode(plaintext?) {
                    Ok(message) => self.on_message(message),
                    Err(err) if err.is_bad_file_name() && self.upload.is_none() => {
                        self.refuse(Refusal::new(
                            ErrorCode::BAD_NAME,
                            format!(
                                "{err}: a file name is 1 to 254 bytes without '/', '\\' or NUL, not '.' or '..', and does not start with a drive letter"
                            ),
                        ))
                    }
                    Err(err) => Err(err.into()),
                }
            }
            (stage, frame) => {
                // Keep the transport keys, so the violation is answered with an ERROR.
                if matches!(stage, Stage::Transport(_)) {
                    self.stage = stage;
                }
                Err(V4Error::Protocol(format!(
                    "unexpected {} frame at this point of the session",
                    frame_name(&frame)
                )))
            }
        }
    }

    fn on_message(&mut self, message: ClientMessage) -> Result<(), V4Error> {
        let Some(client_id) = self.client else {
            return Err(V4Error::Protocol("request before authentication".into()));
        };
        if self.put.is_some() {
            return self.on_put_message(message);
        }
        if let Some(upload) = &mut self.upload {
            return match message {
                ClientMessage::Data(data) => {
                    let len = data.len() as u64;
                    if upload.received + len > upload.size {
                        return self.violation("DATA beyond the announced file size");
                    }
                    upload.rest = Some(data);
                    self.pump_upload()
                }
                ClientMessage::UploadEnd { sha256 } => {
                    if upload.received != upload.size {
                        return self.violation("UPLOAD_END before all announced bytes");
                    }
                    upload.end = Some(sha256);
                    self.pump_upload()
                }
                other => self.violation(&format!("{} in the middle of an upload", other.label())),
            };
        }
        match message {
            ClientMessage::Upload {
                name,
                size,
                restart,
            } => {
                if size > self.config.max_file_len {
                    return self.refuse(Refusal::new(
                        ErrorCode::TOO_LARGE,
                        format!(
                            "the file is {size} bytes; this server accepts at most {}",
                            self.config.max_file_len
                        ),
                    ));
                }
                self.upload = Some(Upload {
                    name: name.clone(),
                    size,
                    received: 0,
                    digest: ContentDigest::new(),
                    rest: None,
                    checkpoint_due: false,
                    end: None,
                });
                self.effect(
                    ServerEffect::OpenUpload {
                        client_id,
                        name,
                        size,
                        restart,
                    },
                    Some(Pending::OpenUpload),
                );
                Ok(())
            }
            ClientMessage::List => {
                self.effect(
                    ServerEffect::ListVersions { client_id },
                    Some(Pending::Listing),
                );
                Ok(())
            }
            ClientMessage::Restore { name, version } => {
                self.effect(
                    ServerEffect::OpenVersion {
                        client_id,
                        name,
                        version: (version != 0).then_some(version),
                    },
                    Some(Pending::OpenVersion),
                );
                Ok(())
            }
            ClientMessage::Bye => {
                self.close(CloseReason::Done);
                Ok(())
            }
            ClientMessage::Repo(request) => self.on_repo_request(client_id, request),
            other => self.violation(&format!("{} without an open upload", other.label())),
        }
    }

    fn upload_opened(&mut self, outcome: Result<ResumePoint, Refusal>) -> Result<(), V4Error> {
        let point = match outcome {
            Ok(point) => point,
            Err(refusal) => {
                self.upload = None;
                return self.refuse(refusal);
            }
        };
        let Some(upload) = &mut self.upload else {
            return Err(V4Error::ApiMisuse("no upload is being opened"));
        };
        if point.offset > upload.size || point.digest.len() != point.offset {
            return Err(V4Error::Storage {
                reason: format!(
                    "resume point {} (digest over {} bytes) is impossible for a {}-byte file",
                    point.offset,
                    point.digest.len(),
                    upload.size
                ),
            });
        }
        upload.received = point.offset;
        upload.digest = point.digest;
        let event = ServerEvent::UploadOpened {
            name: upload.name.clone(),
            offset: point.offset,
            size: upload.size,
        };
        self.out.push_back(Output::Event(event));
        self.send(&ServerMessage::UploadReady {
            offset: point.offset,
        })
    }

    /// Hands buffered data to the driver piece by piece, checkpointing at every interval
    /// boundary, then finishes once `UPLOAD_END` arrived and everything is written.
    fn pump_upload(&mut self) -> Result<(), V4Error> {
        let interval = self.config.checkpoint_interval.max(1);
        let Some(upload) = &mut self.upload else {
            return Ok(());
        };
        if upload.checkpoint_due {
            upload.checkpoint_due = false;
            let offset = upload.received;
            self.effect(
                ServerEffect::Checkpoint { offset },
                Some(Pending::Checkpoint),
            );
            return Ok(());
        }
        if let Some(data) = upload.rest.take() {
            let next_boundary = (upload.received / interval + 1).saturating_mul(interval);
            let room = next_boundary - upload.received;
            let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
            let piece = data.slice(..take);
            if take < data.len() {
                upload.rest = Some(data.slice(take..));
            }
            upload.digest.update(&piece);
            upload.received += take as u64;
            upload.checkpoint_due =
                upload.received % interval == 0 && upload.received < upload.size;
            self.effect(
                ServerEffect::WriteUpload { data: piece },
                Some(Pending::Write),
            );
            return Ok(());
        }
        if let Some(claimed) = upload.end.take() {
            let (sha256, cksum) = upload.digest.clone().finalize();
            if claimed != sha256 {
                let name = upload.name.clone();
                self.upload = None;
                self.out
                    .push_back(Output::Effect(ServerEffect::DiscardUpload));
                self.out
                    .push_back(Output::Event(ServerEvent::UploadRejected { name }));
                return self.refuse(Refusal::new(
                    ErrorCode::HASH_MISMATCH,
                    "the uploaded content does not match its SHA-256 (the file changed, or the resumed part differs); the partial upload was discarded, upload it again",
                ));
            }
            let size = upload.size;
            self.effect(
                ServerEffect::FinishUpload {
                    size,
                    sha256,
                    cksum,
                },
                Some(Pending::Finish),
            );
        }
        Ok(())
    }

    fn on_repo_request(
        &mut self,
        client_id: ClientId,
        request: RepoRequest,
    ) -> Result<(), V4Error> {
        let op = match &request {
            RepoRequest::Open => RepoOp::Open,
            RepoRequest::Create { .. }
            | RepoRequest::AddKey { .. }
            | RepoRequest::RemoveKey { .. }
            | RepoRequest::Forget { .. } => RepoOp::Done,
            RepoRequest::Have { ids } => RepoOp::Have(ids.len()),
            RepoRequest::Put { target, size } => {
                if *size > self.config.max_file_len {
                    return self.refuse(Refusal::new(
                        ErrorCode::TOO_LARGE,
                        format!(
                            "the object is {size} bytes; this server accepts at most {} (use a smaller pack size)",
                            self.config.max_file_len
                        ),
                    ));
                }
                self.put = Some(Put {
                    target: *target,
                    size: *size,
                    received: 0,
                    ready: false,
                });
                RepoOp::Put
            }
            RepoRequest::Get { .. } => RepoOp::Get,
            RepoRequest::Snapshots => RepoOp::Snapshots,
            RepoRequest::Damaged { .. } => RepoOp::Damaged,
            RepoRequest::Usage => RepoOp::Usage,
            RepoRequest::Prune => RepoOp::Prune,
            RepoRequest::PutEnd => return self.violation("PUT_END without an open PUT"),
        };
        self.effect(
            ServerEffect::Repository { client_id, request },
            Some(Pending::Repo(op)),
        );
        Ok(())
    }

    /// `DATA` and `PUT_END` of the object being put; anything else is a violation.
    fn on_put_message(&mut self, message: ClientMessage) -> Result<(), V4Error> {
        let Some(put) = &mut self.put else {
            return Err(V4Error::ApiMisuse("no put is open"));
        };
        if !put.ready {
            return self.violation(&format!("{} before PUT_READY", message.label()));
        }
        match message {
            ClientMessage::Data(data) => {
                let len = data.len() as u64;
                if put.received + len > put.size {
                    return self.violation("DATA beyond the announced object size");
                }
                put.received += len;
                self.effect(ServerEffect::WritePut { data }, Some(Pending::PutWrite));
                Ok(())
            }
            ClientMessage::Repo(RepoRequest::PutEnd) => {
                if put.received != put.size {
                    return self.violation("PUT_END before all announced bytes");
                }
                self.effect(ServerEffect::FinishPut, Some(Pending::Repo(RepoOp::Finish)));
                Ok(())
            }
            other => self.violation(&format!("{} in the middle of a PUT", other.label())),
        }
    }

    fn repository_answered(
        &mut self,
        op: RepoOp,
        outcome: Result<RepoAnswer, Refusal>,
    ) -> Result<(), V4Error> {
        let answer = match outcome {
            Ok(answer) => answer,
            Err(refusal) => {
                // A refused PUT stages nothing; a refused finish leaves a staged object.
                if self.put.take().is_some() && op == RepoOp::Finish {
                    self.out.push_back(Output::Effect(ServerEffect::AbortPut));
                }
                return self.refuse(refusal);
            }
        };
        match (op, answer) {
            (RepoOp::Open, RepoAnswer::State { config, keys }) => {
                self.send(&ServerMessage::Repo(RepoReply::State { config, keys }))
            }
            (RepoOp::Done, RepoAnswer::Done) => self.send(&ServerMessage::Repo(RepoReply::Ok)),
            (RepoOp::Have(count), RepoAnswer::Have(stored)) if stored.len() == count => {
                self.send(&ServerMessage::Repo(RepoReply::HaveResult { stored }))
            }
            (RepoOp::Put, RepoAnswer::PutReady) => {
                if let Some(put) = &mut self.put {
                    put.ready = true;
                }
                self.send(&ServerMessage::Repo(RepoReply::PutReady))
            }
            (RepoOp::Put | RepoOp::Finish, RepoAnswer::Stored) => {
                let Some(put) = self.put.take() else {
                    return Err(V4Error::ApiMisuse("no put is open"));
                };
                self.out.push_back(Output::Event(ServerEvent::ObjectStored {
                    target: put.target,
                    size: put.size,
                }));
                self.send(&ServerMessage::Repo(RepoReply::PutDone))
            }
            (RepoOp::Get, RepoAnswer::Object(object)) => {
                self.send(&ServerMessage::Repo(RepoReply::Object {
                    size: object.len() as u64,
                }))?;
                let mut rest = object;
                while !rest.is_empty() {
                    let piece = rest.split_to(rest.len().min(MAX_DATA_LEN));
                    self.send(&ServerMessage::Data(piece))?;
                }
                self.send(&ServerMessage::Repo(RepoReply::ObjectEnd))
            }
            (RepoOp::Snapshots, RepoAnswer::Snapshots(entries)) => {
                let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
                for entry in entries {
                    self.send(&ServerMessage::Repo(RepoReply::SnapshotEntry(entry)))?;
                }
                self.send(&ServerMessage::Repo(RepoReply::SnapshotsEnd { count }))
            }
            (RepoOp::Damaged, RepoAnswer::Damaged { ids, more })
                if ids.len() <= MAX_DAMAGED_BATCH =>
            {
                self.send(&ServerMessage::Repo(RepoReply::Damaged { ids, more }))
            }
            (RepoOp::Usage, RepoAnswer::Usage(usage)) => {
                self.send(&ServerMessage::Repo(RepoReply::Usage(usage)))
            }
            (RepoOp::Prune, RepoAnswer::Pruned(report)) => {
                self.send(&ServerMessage::Repo(RepoReply::Pruned(report)))
            }
            (op, answer) => Err(V4Error::Storage {
                reason: format!("the driver answered {op:?} with {answer:?}"),
            }),
        }
    }

    fn send_listing(&mut self, records: Vec<VersionRecord>) -> Result<(), V4Error> {
        let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
        for record in records {
            self.send(&ServerMessage::ListEntry(record))?;
        }
        self.send(&ServerMessage::ListEnd { count })
    }

    fn pump_restore(&mut self) -> Result<(), V4Error> {
        let Some(restore) = &self.restore else {
            return Ok(());
        };
        if restore.offset < restore.record.size {
            let left = restore.record.size - restore.offset;
            let max = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(self.config.restore_read_len.max(1));
            let offset = restore.offset;
            self.effect(
                ServerEffect::ReadVersion { offset, max },
                Some(Pending::ReadVersion),
            );
            return Ok(());
        }
        let Some(restore) = self.restore.take() else {
            return Ok(());
        };
        self.out
            .push_back(Output::Effect(ServerEffect::CloseVersion));
        let (sha256, _) = restore.digest.finalize();
        if sha256 != restore.record.sha256 {
            return self.refuse(Refusal::new(
                ErrorCode::CORRUPT,
                "the stored version no longer matches its recorded SHA-256; tell the server operator",
            ));
        }
        self.out.push_back(Output::Event(ServerEvent::Restored {
            name: restore.record.name.clone(),
            version: restore.record.version,
        }));
        self.send(&ServerMessage::RestoreEnd)
    }

    fn version_data(&mut self, outcome: Result<Bytes, StorageFailure>) -> Result<(), V4Error> {
        let Some(restore) = &mut self.restore else {
            return Err(V4Error::ApiMisuse("no version is open"));
        };
        let left = restore.record.size - restore.offset;
        let data = match outcome {
            Ok(data) if !data.is_empty() && data.len() as u64 <= left => data,
            Ok(data) => {
                let reason = if data.is_empty() {
                    "the stored version is shorter than recorded".to_owned()
                } else {
                    "the driver returned more bytes than asked".to_owned()
                };
                return self.abort_restore(&reason);
            }
            Err(failure) => return self.abort_restore(&failure.reason),
        };
        restore.digest.update(&data);
        restore.offset += data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(MAX_DATA_LEN));
            self.send(&ServerMessage::Data(piece))?;
        }
        self.pump_restore()
    }

    fn abort_restore(&mut self, reason: &str) -> Result<(), V4Error> {
        self.restore = None;
        self.out
            .push_back(Output::Effect(ServerEffect::CloseVersion));
        self.refuse(Refusal::new(
            ErrorCode::STORAGE,
            format!(
                "the server could not read the stored version ({reason}); tell the server operator"
            ),
        ))
    }

    fn refuse(&mut self, refusal: Refusal) -> Result<(), V4Error> {
        self.out.push_back(Output::Event(ServerEvent::Refused {
            code: refusal.code,
            message: refusal.message.clone(),
        }));
        self.send(&ServerMessage::Error {
            code: refusal.code,
            fatal: false,
            message: refusal.message,
        })
    }

    fn violation(&mut self, what: &str) -> Result<(), V4Error> {
        Err(V4Error::Protocol(what.to_owned()))
    }

    fn send(&mut self, message: &ServerMessage) -> Result<(), V4Error> {
        let Stage::Transport(transport) = &mut self.stage else {
            return Err(V4Error::ApiMisuse("no transport keys yet"));
        };
        let mut plaintext = Vec::with_capacity(64);
        message.encode(&mut plaintext);
        let frame = super::seal(transport, &plaintext)?;
        self.out.push_back(Output::Transmit(frame));
        if let ServerMessage::Error { fatal: true, .. } = message {
            self.fatal_error_sent = true;
        }
        Ok(())
    }
}

/// The text of the fatal `ERROR` that answers `err`.
fn fatal_message(code: ErrorCode, err: &V4Error) -> String {
    match code {
        ErrorCode::INTERNAL => {
            "the server failed; see its log (the upload stays resumable)".to_owned()
        }
        _ => err.to_string(),
    }
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "hello",
        Frame::Handshake(_) => "handshake",
        Frame::Transport(_) => "transport",
        Frame::Notice(_) => "notice",
    }
}
