//! The client side of a v4 connection: handshake with server-key pinning, then a queue of
//! operations (upload, list, restore, repository requests) run one at a time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand_core::CryptoRngCore;

use super::codec::{Frame, FrameDecoder, Side};
use super::noise::{Fingerprint, PublicKey, StaticKeypair, handshake};
use super::repository::{
    GetTarget, MAX_HAVE_BATCH, PutTarget, RepoPruneReport, RepoReply, RepoRequest, RepoUsage,
    SnapshotEntry,
};
use super::wire::{
    ClientAuth, ClientMessage, ErrorCode, HELLO_HEADER_LEN, MAX_DATA_LEN, MAX_FRAME_LEN,
    ServerHello, ServerMessage, VersionRecord, hello_header,
};
use super::{CloseReason, ContentDigest, IdleTimer, Output, V4Error};
use crate::names::{ClientId, FileName, NameField};
use crate::repo::{BlobId, SnapshotId};
use crate::session::Timer;

/// Default largest `ReadFile`.
pub const DEFAULT_READ_CHUNK_LEN: usize = 1024 * 1024;

/// Settings of a v4 client session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Silence from the server while a reply is awaited that fails the session.
    pub response_timeout: Duration,
    /// Largest `ReadFile` (≥ 1).
    pub read_chunk_len: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            response_timeout: Duration::from_secs(60),
            read_chunk_len: DEFAULT_READ_CHUNK_LEN,
        }
    }
}

/// Identifies one queued operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u32);

/// A file to upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadSpec {
    /// Name on the server.
    pub name: FileName,
    /// Size in bytes, as the driver saw it before starting.
    pub size: u64,
    /// Discard any partial upload on the server and start at 0.
    pub restart: bool,
}

/// A repository operation (`docs/protocol-v4.md` §9a), queued with
/// [`ClientSession::repository`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoCall {
    /// Read the config and key objects.
    Open,
    /// Create the repository.
    Create {
        /// Encoded config object.
        config: Bytes,
        /// Encoded first key object.
        key: Bytes,
    },
    /// Add a key object.
    AddKey {
        /// Encoded key object.
        key: Bytes,
    },
    /// Which of these blobs the server stores (1 ..= [`MAX_HAVE_BATCH`] IDs).
    Have(Vec<BlobId>),
    /// Store a pack or a snapshot object (storing a snapshot commits it).
    Put {
        /// What is stored.
        target: PutTarget,
        /// Its bytes (at least one).
        object: Bytes,
    },
    /// Read a blob or snapshot object.
    Get(GetTarget),
    /// List the snapshots.
    Snapshots,
    /// Delete a snapshot.
    Forget(SnapshotId),
    /// One page of the IDs of blobs in packs the server found damaged: those greater than
    /// `after` (`None`: from the start).
    Damaged {
        /// The last ID of the previous page.
        after: Option<BlobId>,
    },
    /// The stored bytes and quotas.
    Usage,
    /// Remove a key object (its encoding as `Open` returned it).
    RemoveKey {
        /// Encoded key object.
        key: Bytes,
    },
    /// Prune the repository now (the server's keyless garbage collection).
    Prune,
}

/// The result of a [`RepoCall`], in [`ClientEvent::RepoDone`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepoResult {
    /// `Open`: the config (`None`: no repository yet) and key objects.
    State {
        /// Encoded config object.
        config: Option<Bytes>,
        /// Encoded key objects.
        keys: Vec<Bytes>,
    },
    /// `Create`, `AddKey`, `RemoveKey`, `Forget`: done.
    Done,
    /// `Have`: one answer per ID, in order.
    Have(Vec<bool>),
    /// `Put`: durably stored (a snapshot: committed).
    Stored,
    /// `Get`: the object's bytes, unverified (the caller opens them with its keys).
    Object(Bytes),
    /// `Snapshots`: the listing.
    Snapshots(Vec<SnapshotEntry>),
    /// `Damaged`: one page (strictly increasing IDs, all after the call's `after`) and
    /// whether more follow.
    Damaged {
        /// The page.
        ids: Vec<BlobId>,
        /// Ask again with the page's last ID for more.
        more: bool,
    },
    /// `Usage`: stored bytes and quotas.
    Usage(RepoUsage),
    /// `Prune`: what the prune did.
    Pruned(RepoPruneReport),
}

/// Largest object a `GET` may return: a bound on what a server can make the client hold.
pub const MAX_GET_OBJECT_LEN: u64 = 1 << 30;

/// Repository `GET`s a session keeps in flight: while one is answered, the next queued
/// `GET`s (up to this many in all) are already sent, so the server never waits for the
/// client between objects. The server answers requests in order (docs/protocol-v4.md).
pub const MAX_GETS_IN_FLIGHT: usize = 8;

/// Work the driver carries out for a v4 client session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEffect {
    /// First contact without a pin: save this server key (trust on first use), then answer
    /// [`ClientSession::handle_server_key_trusted`].
    TrustServerKey {
        /// The server's static key.
        key: PublicKey,
    },
    /// Read at most `max` bytes of the upload's source at `offset`; answer
    /// [`ClientSession::handle_file_data`] (empty = end of file) or
    /// [`ClientSession::handle_file_error`].
    ReadFile {
        /// The upload.
        op: OpId,
        /// Offset in the file.
        offset: u64,
        /// At most this many bytes.
        max: usize,
    },
    /// A restore starts: create a temp file for it. Answer [`ClientSession::handle_restore_io`].
    BeginRestore {
        /// The restore.
        op: OpId,
        /// What arrives.
        record: VersionRecord,
    },
    /// Append restored content. Answer [`ClientSession::handle_restore_io`].
    WriteRestore {
        /// The restore.
        op: OpId,
        /// Content, in order.
        data: Bytes,
    },
    /// Size and SHA-256 matched: make the restored file visible. Answer
    /// [`ClientSession::handle_restore_io`].
    FinishRestore {
        /// The restore.
        op: OpId,
    },
    /// The restore failed: delete the temp file. No answer.
    AbortRestore {
        /// The restore.
        op: OpId,
    },
}

impl ClientEffect {
    /// Whether the session waits for the driver's answer.
    #[must_use]
    pub fn needs_answer(&self) -> bool {
        !matches!(self, Self::AbortRestore { .. })
    }
}

/// Why one operation failed while the connection goes on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpFailure {
    /// The server refused it.
    #[error("the server refused: {message} [{code}]")]
    Refused {
        /// Error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The restored content does not match the server's record.
    #[error(
        "the restored content does not match the recorded {what}; nothing was written to the output"
    )]
    RestoreMismatch {
        /// `size` or `SHA-256`.
        what: &'static str,
    },
    /// Writing the restored file failed.
    #[error("cannot write the restored file: {reason}")]
    LocalWrite {
        /// What failed.
        reason: String,
    },
}

/// Something that happened in a v4 client session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The handshake completed.
    Authenticated {
        /// Our id.
        client_id: ClientId,
        /// Our registered name.
        name: NameField,
        /// Whether this connection registered us.
        registered: bool,
        /// The server's key.
        server_key: PublicKey,
    },
    /// An upload started; `offset` > 0 means it resumed.
    UploadStarted {
        /// The upload.
        op: OpId,
        /// Resume offset.
        offset: u64,
        /// File size.
        size: u64,
    },
    /// Bytes of an upload sent or of a restore received.
    Progress {
        /// The operation.
        op: OpId,
        /// Bytes done (including a resumed prefix).
        done: u64,
        /// Total bytes.
        total: u64,
    },
    /// The server verified and committed an upload.
    UploadCommitted {
        /// The upload.
        op: OpId,
        /// The version it became.
        version: u32,
        /// Size.
        size: u64,
        /// POSIX cksum.
        cksum: u32,
        /// SHA-256.
        sha256: [u8; 32],
        /// Where the upload started (0 unless resumed).
        resumed_from: u64,
    },
    /// The listing of our files.
    Listed {
        /// The list operation.
        op: OpId,
        /// Every version, ordered by name then version.
        entries: Vec<VersionRecord>,
    },
    /// A restore was verified and made visible.
    Restored {
        /// The restore.
        op: OpId,
        /// What was restored.
        record: VersionRecord,
    },
    /// A repository operation completed.
    RepoDone {
        /// The operation.
        op: OpId,
        /// Its result.
        result: RepoResult,
    },
    /// An operation failed; the connection goes on.
    OpFailed {
        /// The operation.
        op: OpId,
        /// Why.
        failure: OpFailure,
        /// For uploads: where it had started (0 unless resumed).
        resumed_from: u64,
    },
}

/// Output of a v4 client session.
pub type ClientOutput = Output<ClientEffect, ClientEvent>;

#[derive(Debug, Clone)]
enum Op {
    Upload(UploadSpec),
    List,
    Restore { name: FileName, version: u32 },
    Repo(RepoCall),
}

/// What a repository operation waits for next.
#[derive(Debug)]
enum RepoWait {
    State,
    Ok,
    Have(usize),
    PutReady(Bytes),
    PutDone,
    Object,
    ObjectData { data: BytesMut, size: u64 },
    Snapshots(Vec<SnapshotEntry>),
    Damaged(Option<BlobId>),
    Usage,
    Prune,
}

#[derive(Debug)]
enum Phase {
    /// Handshake: waiting for message 2.
    AwaitMsg2,
    /// TOFU: waiting for the driver to save the server key.
    TrustingKey,
    /// Waiting for WELCOME.
    AwaitWelcome,
    /// Between operations.
    Ready,
    AwaitUploadReady(OpId, UploadSpec),
    /// Re-reading the resumed prefix (hash only) or sending.
    Uploading(OpId, Box<UploadRun>),
    AwaitUploadDone(OpId, Box<UploadRun>),
    Listing(OpId, Vec<VersionRecord>),
    AwaitRestoreBegin(OpId),
    Restoring(OpId, Box<RestoreRun>),
    Repo(OpId, RepoWait),
    Done,
}

#[derive(Debug)]
struct UploadRun {
    spec: UploadSpec,
    resumed_from: u64,
    /// Next offset to read.
    pos: u64,
    digest: ContentDigest,
    reading: bool,
    sha256: Option<[u8; 32]>,
}

#[derive(Debug)]
struct RestoreRun {
    record: VersionRecord,
    received: u64,
    digest: ContentDigest,
    /// Waiting for the answer to Begin/Write/Finish.
    io_pending: bool,
    finishing: bool,
}

enum Noise {
    Handshake(Box<snow::HandshakeState>),
    Transport(Box<snow::TransportState>),
    None,
}

impl std::fmt::Debug for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Handshake(_) => "Handshake",
            Self::Transport(_) => "Transport",
            Self::None => "None",
        })
    }
}

/// The client end of one v4 connection.
#[derive(Debug)]
pub struct ClientSession {
    config: Arc<ClientConfig>,
    pin: Option<Fingerprint>,
    auth: ClientAuth,
    noise: Noise,
    server_key: Option<PublicKey>,
    decoder: FrameDecoder,
    phase: Phase,
    queue: VecDeque<(OpId, Op)>,
    /// `GET`s sent while an earlier `GET` is answered, in order; they run next, each
    /// waiting for its `OBJECT` ([`MAX_GETS_IN_FLIGHT`]).
    sent_ahead: VecDeque<OpId>,
    next_op: u32,
    finish_when_idle: bool,
    timer: IdleTimer,
    /// The latest time a caller passed in (commands take none).
    now: Instant,
    out: VecDeque<ClientOutput>,
    /// The part of a `PUT`'s object not yet sent: sealed into `DATA` frames (then `PUT_END`)
    /// one at a time as the driver takes the output, so a 16 MiB pack is never queued as
    /// frames whole. Any other message first sends the rest, keeping the stream in order.
    put_rest: Option<Bytes>,
    failed: Option<V4Error>,
    closed: bool,
}

impl ClientSession {
    /// Starts a connection: queues the hello. `pin` is the server fingerprint to require
    /// (`None` = trust on first use, through [`ClientEffect::TrustServerKey`]); `auth` says
    /// whether to log in or register. The RNG is used once, for the ephemeral key.
    ///
    /// # Errors
    /// [`V4Error::Handshake`] if Noise cannot be set up (not expected).
    pub fn new(
        config: Arc<ClientConfig>,
        keys: &StaticKeypair,
        pin: Option<Fingerprint>,
        auth: ClientAuth,
        rng: &mut impl CryptoRngCore,
        now: Instant,
    ) -> Result<Self, V4Error> {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let mut hs = handshake(keys, true, seed).map_err(|e| V4Error::handshake("setup", &e))?;
        let mut msg1 = [0u8; 64];
        let len = hs
            .write_message(&[], &mut msg1)
            .map_err(|e| V4Error::handshake("message 1", &e))?;
        let mut hello = BytesMut::with_capacity(HELLO_HEADER_LEN + len);
        hello.extend_from_slice(&hello_header());
        hello.extend_from_slice(msg1.get(..len).unwrap_or_default());
        let mut out = VecDeque::new();
        out.push_back(Output::Transmit(hello.freeze()));
        Ok(Self {
            timer: IdleTimer::new(config.response_timeout, now),
            now,
            config,
            pin,
            auth,
            noise: Noise::Handshake(Box::new(hs)),
            server_key: None,
            decoder: FrameDecoder::new(Side::FromServer),
            phase: Phase::AwaitMsg2,
            queue: VecDeque::new(),
            sent_ahead: VecDeque::new(),
            next_op: 0,
            finish_when_idle: false,
            out,
            put_rest: None,
            failed: None,
            closed: false,
        })
    }

    /// Queues an upload.
    pub fn upload(&mut self, spec: UploadSpec) -> OpId {
        self.enqueue(Op::Upload(spec))
    }

    /// Queues a listing of our files and versions.
    pub fn list(&mut self) -> OpId {
        self.enqueue(Op::List)
    }

    /// Queues a restore of `name` (`version` `None` = newest).
    pub fn restore(&mut self, name: FileName, version: Option<u32>) -> OpId {
        self.enqueue(Op::Restore {
            name,
            version: version.unwrap_or(0),
        })
    }

    /// Queues a repository operation; its result arrives as [`ClientEvent::RepoDone`] (or
    /// [`ClientEvent::OpFailed`] when the server refuses it).
    pub fn repository(&mut self, call: RepoCall) -> OpId {
        self.enqueue(Op::Repo(call))
    }

    /// Sends `BYE` and closes (`Close(Done)`) once every queued operation finished.
    pub fn finish_when_idle(&mut self) {
        self.finish_when_idle = true;
        if matches!(self.phase, Phase::Ready) {
            let result = self.start_next();
            let _ = self.fail_on(result);
        }
    }

    /// Consumes complete frames from `buf` until an effect needs an answer or more bytes
    /// are needed.
    ///
    /// # Errors
    /// The fatal [`V4Error`]; also queued as `Close(Error)`.
    pub fn handle_bytes(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), V4Error> {
        self.check_failed()?;
        self.now = now;
        let result = self.send_put_rest().and_then(|()| self.consume(now, buf));
        self.fail_on(result)
    }

    /// The connection broke (the driver's write failed, or the server closed) while frames
    /// may wait in `buf` undecoded, because an effect was pending: reads them only to find
    /// the fatal `ERROR` the server sent before it closed, which then becomes the session's
    /// error (its reason, such as a full disk). Any other frame is skipped: the connection
    /// is over. Call [`handle_eof`](Self::handle_eof) after it.
    pub fn handle_last_bytes(&mut self, now: Instant, buf: &mut BytesMut) {
        self.now = now;
        while !self.closed {
            let Ok(Some(Frame::Transport(ciphertext))) = self.decoder.decode(buf) else {
                return;
            };
            let Noise::Transport(transport) = &mut self.noise else {
                return;
            };
            let Ok(plaintext) = super::open(transport, &ciphertext) else {
                return;
            };
            if let Ok(ServerMessage::Error {
                code,
                fatal: true,
                message,
            }) = ServerMessage::decode(plaintext)
            {
                let _ = self.fail_on(Err(V4Error::Refused { code, message }));
            }
        }
    }

    /// The server closed the connection.
    pub fn handle_eof(&mut self, now: Instant) {
        self.now = now;
        if self.closed {
            return;
        }
        if matches!(self.phase, Phase::Done) {
            self.close(CloseReason::Done);
        } else {
            let _ = self.fail_on(Err(V4Error::ConnectionClosed));
        }
    }

    /// Checks the response deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if !self.closed && self.timer.expired(now) {
            let _ = self.fail_on(Err(V4Error::IdleTimeout));
        }
    }

    /// Answers [`ClientEffect::TrustServerKey`].
    ///
    /// # Errors
    /// [`V4Error::ApiMisuse`] when not pending; [`V4Error::Local`] when the save failed.
    pub fn handle_server_key_trusted(
        &mut self,
        now: Instant,
        outcome: Result<(), String>,
    ) -> Result<(), V4Error> {
        self.check_failed()?;
        if !matches!(self.phase, Phase::TrustingKey) {
            return Err(V4Error::ApiMisuse("no server key awaits trust"));
        }
        self.now = now;
        self.timer.reset(now);
        let result = match outcome {
            Ok(()) => self.send_msg3(),
            Err(reason) => Err(V4Error::Local {
                reason: format!("cannot save the server fingerprint: {reason}"),
            }),
        };
        self.fail_on(result)
    }

    /// Answers [`ClientEffect::ReadFile`] (empty `data` = end of file).
    ///
    /// # Errors
    /// [`V4Error::ApiMisuse`] when not pending; [`V4Error::FileChanged`] when the file is
    /// shorter or longer than announced.
    pub fn handle_file_data(&mut self, now: Instant, op: OpId, data: Bytes) -> Result<(), V4Error> {
        self.check_failed()?;
        let Phase::Uploading(current, run) = &mut self.phase else {
            return Err(V4Error::ApiMisuse("no file read is pending"));
        };
        if *current != op || !run.reading {
            return Err(V4Error::ApiMisuse(
                "no file read is pending for this upload",
            ));
        }
        run.reading = false;
        self.now = now;
        self.timer.reset(now);
        let result = self.file_data(data);
        self.fail_on(result)
    }

    /// Answers [`ClientEffect::ReadFile`] with a read error: fatal (the server holds part of
    /// the file, which stays resumable).
    ///
    /// # Errors
    /// [`V4Error::Local`].
    pub fn handle_file_error(
        &mut self,
        _now: Instant,
        op: OpId,
        reason: String,
    ) -> Result<(), V4Error> {
        self.check_failed()?;
        let Phase::Uploading(current, run) = &self.phase else {
            return Err(V4Error::ApiMisuse("no file read is pending"));
        };
        if *current != op || !run.reading {
            return Err(V4Error::ApiMisuse(
                "no file read is pending for this upload",
            ));
        }
        self.fail_on(Err(V4Error::Local {
            reason: format!("cannot read the file to upload: {reason}"),
        }))
    }

    /// Answers [`ClientEffect::BeginRestore`], [`ClientEffect::WriteRestore`] and
    /// [`ClientEffect::FinishRestore`].
    ///
    /// # Errors
    /// [`V4Error::ApiMisuse`] when not pending. A failed write ends the connection (the
    /// server is streaming); the restore's temp file must be removed by the driver.
    pub fn handle_restore_io(
        &mut self,
        now: Instant,
        op: OpId,
        outcome: Result<(), String>,
    ) -> Result<(), V4Error> {
        self.check_failed()?;
        let Phase::Restoring(current, run) = &mut self.phase else {
            return Err(V4Error::ApiMisuse("no restore write is pending"));
        };
        if *current != op || !run.io_pending {
            return Err(V4Error::ApiMisuse(
                "no restore write is pending for this op",
            ));
        }
        run.io_pending = false;
        self.now = now;
        self.timer.reset(now);
        let finishing = run.finishing;
        let result = match outcome {
            Ok(()) if finishing => {
                let Phase::Restoring(op, run) = std::mem::replace(&mut self.phase, Phase::Ready)
                else {
                    return Err(V4Error::ApiMisuse("no restore"));
                };
                self.out.push_back(Output::Event(ClientEvent::Restored {
                    op,
                    record: run.record,
                }));
                self.start_next()
            }
            Ok(()) => Ok(()),
            Err(reason) if finishing => {
                self.phase = Phase::Ready;
                self.out.push_back(Output::Event(ClientEvent::OpFailed {
                    op,
                    failure: OpFailure::LocalWrite { reason },
                    resumed_from: 0,
                }));
                self.start_next()
            }
            Err(reason) => {
                self.out
                    .push_back(Output::Effect(ClientEffect::AbortRestore { op }));
                Err(V4Error::Local {
                    reason: format!("cannot write the restored file: {reason}"),
                })
            }
        };
        self.fail_on(result)
    }

    /// Next output, in order.
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        if self.out.is_empty() {
            let result = self.send_put_piece();
            let _ = self.fail_on(result);
        }
        self.out.pop_front()
    }

    /// Seals the next `DATA` frame of the object being put, or `PUT_END` after the last.
    fn send_put_piece(&mut self) -> Result<(), V4Error> {
        let Some(mut rest) = self.put_rest.take() else {
            return Ok(());
        };
        if rest.is_empty() {
            return self.seal_out(&ClientMessage::Repo(RepoRequest::PutEnd));
        }
        let piece = rest.split_to(rest.len().min(MAX_DATA_LEN));
        self.put_rest = Some(rest);
        self.seal_out(&ClientMessage::Data(piece))
    }

    /// The response deadline, if one is armed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        if self.closed {
            return None;
        }
        self.timer.poll()
    }

    /// Whether the session closed.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The server's static key, once the handshake got it.
    #[must_use]
    pub fn server_key(&self) -> Option<PublicKey> {
        self.server_key
    }

    fn enqueue(&mut self, op: Op) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        self.queue.push_back((id, op));
        let result = if matches!(self.phase, Phase::Ready) {
            self.start_next()
        } else {
            self.send_gets_ahead()
        };
        let _ = self.fail_on(result);
        id
    }

    /// While a `GET` is the current operation, sends the `GET`s at the front of the queue
    /// ahead, up to [`MAX_GETS_IN_FLIGHT`] in flight (the order of operations is kept:
    /// only the queue's front is ever taken).
    fn send_gets_ahead(&mut self) -> Result<(), V4Error> {
        if !matches!(
            self.phase,
            Phase::Repo(_, RepoWait::Object | RepoWait::ObjectData { .. })
        ) {
            return Ok(());
        }
        while self.sent_ahead.len() + 1 < MAX_GETS_IN_FLIGHT {
            let Some((op, Op::Repo(RepoCall::Get(target)))) = self.queue.front() else {
                break;
            };
            let (op, target) = (*op, *target);
            self.queue.pop_front();
            self.send(&ClientMessage::Repo(RepoRequest::Get { target }))?;
            self.sent_ahead.push_back(op);
        }
        Ok(())
    }

    fn check_failed(&self) -> Result<(), V4Error> {
        match &self.failed {
            Some(err) => Err(err.clone()),
            None if self.closed => Err(V4Error::ConnectionClosed),
            None => Ok(()),
        }
    }

    fn fail_on(&mut self, result: Result<(), V4Error>) -> Result<(), V4Error> {
        if let Err(err) = &result
            && self.failed.is_none()
            && !matches!(err, V4Error::ApiMisuse(_))
        {
            if let Phase::Restoring(op, _) = self.phase {
                self.out
                    .push_back(Output::Effect(ClientEffect::AbortRestore { op }));
            }
            self.failed = Some(err.clone());
            self.close(CloseReason::Error(err.clone()));
        }
        result
    }

    fn close(&mut self, reason: CloseReason) {
        self.closed = true;
        self.put_rest = None;
        self.phase = Phase::Done;
        self.timer.disarm();
        self.out.push_back(Output::Close(reason));
    }

    fn awaiting_effect(&self) -> bool {
        match &self.phase {
            Phase::TrustingKey => true,
            Phase::Uploading(_, run) => run.reading,
            Phase::Restoring(_, run) => run.io_pending,
            _ => false,
        }
    }

    fn consume(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), V4Error> {
        while !self.closed && !self.awaiting_effect() {
            let Some(frame) = self.decoder.decode(buf)? else {
                return Ok(());
            };
            self.now = now;
            self.timer.reset(now);
            self.on_frame(frame)?;
        }
        Ok(())
    }

    fn on_frame(&mut self, frame: Frame) -> Result<(), V4Error> {
        match frame {
            Frame::Notice(text) => {
                Err(V4Error::Notice(String::from_utf8_lossy(&text).into_owned()))
            }
            Frame::Handshake(msg2) => {
                let (Phase::AwaitMsg2, Noise::Handshake(hs)) = (&self.phase, &mut self.noise)
                else {
                    return Err(V4Error::Protocol("unexpected handshake frame".into()));
                };
                let mut payload = vec![0u8; msg2.len()];
                let len = hs
                    .read_message(&msg2, &mut payload)
                    .map_err(|e| V4Error::handshake("message 2", &e))?;
                let _hello = ServerHello::decode(payload.get(..len).unwrap_or_default())?;
                let key = hs
                    .get_remote_static()
                    .and_then(PublicKey::from_slice)
                    .ok_or_else(|| V4Error::Protocol("no server static key".into()))?;
                self.server_key = Some(key);
                match self.pin {
                    Some(expected) if expected != key.fingerprint() => {
                        Err(V4Error::ServerKeyChanged {
                            expected,
                            found: key.fingerprint(),
                        })
                    }
                    Some(_) => self.send_msg3(),
                    None => {
                        self.phase = Phase::TrustingKey;
                        self.out
                            .push_back(Output::Effect(ClientEffect::TrustServerKey { key }));
                        Ok(())
                    }
                }
            }
            Frame::Transport(ciphertext) => {
                let Noise::Transport(transport) = &mut self.noise else {
                    return Err(V4Error::Protocol(
                        "transport frame before the handshake completed".into(),
                    ));
                };
                let plaintext = super::open(transport, &ciphertext)?;
                let message = ServerMessage::decode(plaintext)?;
                self.on_message(message)
            }
            Frame::Hello(_) => Err(V4Error::Protocol("unexpected hello".into())),
        }
    }

    fn send_msg3(&mut self) -> Result<(), V4Error> {
        let Noise::Handshake(hs) = std::mem::replace(&mut self.noise, Noise::None) else {
            return Err(V4Error::ApiMisuse("handshake already finished"));
        };
        let mut hs = hs;
        let mut payload = Vec::with_capacity(300);
        self.auth.encode(&mut payload);
        let mut msg3 = vec![0u8; MAX_FRAME_LEN];
        let len = hs
            .write_message(&payload, &mut msg3)
            .map_err(|e| V4Error::handshake("message 3", &e))?;
        self.out
            .push_back(Output::Transmit(super::wire::encode_frame(
                super::wire::kind::HANDSHAKE,
                msg3.get(..len).unwrap_or_default(),
            )));
        let transport = hs
            .into_transport_mode()
            .map_err(|e| V4Error::handshake("split", &e))?;
        self.noise = Noise::Transport(Box::new(transport));
        self.phase = Phase::AwaitWelcome;
        Ok(())
    }

    fn on_message(&mut self, message: ServerMessage) -> Result<(), V4Error> {
        if let ServerMessage::Error {
            code,
            fatal: true,
            message,
        } = message
        {
            return Err(V4Error::Refused { code, message });
        }
        match (std::mem::replace(&mut self.phase, Phase::Done), message) {
            (
                Phase::AwaitWelcome,
                ServerMessage::Welcome {
                    client_id,
                    registered,
                    name,
                },
            ) => {
                let server_key = self.server_key.ok_or(V4Error::ApiMisuse("no server key"))?;
                self.out
                    .push_back(Output::Event(ClientEvent::Authenticated {
                        client_id,
                        name,
                        registered,
                        server_key,
                    }));
                self.phase = Phase::Ready;
                self.start_next()
            }
            (Phase::AwaitUploadReady(op, spec), ServerMessage::UploadReady { offset }) => {
                if offset > spec.size {
                    return Err(V4Error::Protocol(format!(
                        "resume offset {offset} beyond the file size {}",
                        spec.size
                    )));
                }
                self.out
                    .push_back(Output::Event(ClientEvent::UploadStarted {
                        op,
                        offset,
                        size: spec.size,
                    }));
                let run = UploadRun {
                    spec,
                    resumed_from: offset,
                    pos: 0,
                    digest: ContentDigest::new(),
                    reading: false,
                    sha256: None,
                };
                self.phase = Phase::Uploading(op, Box::new(run));
                self.next_read()
            }
            (
                Phase::AwaitUploadDone(op, run),
                ServerMessage::UploadDone {
                    version,
                    size,
                    cksum,
                    sha256,
                },
            ) => {
                if Some(sha256) != run.sha256 || size != run.spec.size {
                    return Err(V4Error::Protocol(
                        "UPLOAD_DONE reports another size or SHA-256 than sent".into(),
                    ));
                }
                self.out
                    .push_back(Output::Event(ClientEvent::UploadCommitted {
                        op,
                        version,
                        size,
                        cksum,
                        sha256,
                        resumed_from: run.resumed_from,
                    }));
                self.phase = Phase::Ready;
                self.start_next()
            }
            (Phase::Listing(op, mut entries), ServerMessage::ListEntry(record)) => {
                entries.push(record);
                self.phase = Phase::Listing(op, entries);
                Ok(())
            }
            (Phase::Listing(op, entries), ServerMessage::ListEnd { count }) => {
                if usize::try_from(count).ok() != Some(entries.len()) {
                    return Err(V4Error::Protocol(format!(
                        "LIST_END counts {count} entries, {} arrived",
                        entries.len()
                    )));
                }
                self.out
                    .push_back(Output::Event(ClientEvent::Listed { op, entries }));
                self.phase = Phase::Ready;
                self.start_next()
            }
            (Phase::AwaitRestoreBegin(op), ServerMessage::RestoreBegin(record)) => {
                self.out
                    .push_back(Output::Effect(ClientEffect::BeginRestore {
                        op,
                        record: record.clone(),
                    }));
                self.phase = Phase::Restoring(
                    op,
                    Box::new(RestoreRun {
                        record,
                        received: 0,
                        digest: ContentDigest::new(),
                        io_pending: true,
                        finishing: false,
                    }),
                );
                Ok(())
            }
            (Phase::Restoring(op, mut run), ServerMessage::Data(data)) => {
                let len = data.len() as u64;
                if run.received + len > run.record.size {
                    self.phase = Phase::Restoring(op, run);
                    return Err(V4Error::Protocol(
                        "restore DATA beyond the recorded size".into(),
                    ));
                }
                run.received += len;
                run.digest.update(&data);
                run.io_pending = true;
                self.out.push_back(Output::Event(ClientEvent::Progress {
                    op,
                    done: run.received,
                    total: run.record.size,
                }));
                self.out
                    .push_back(Output::Effect(ClientEffect::WriteRestore { op, data }));
                self.phase = Phase::Restoring(op, run);
                Ok(())
            }
            (Phase::Restoring(op, mut run), ServerMessage::RestoreEnd) => {
                let (sha256, _) = run.digest.clone().finalize();
                let mismatch = if run.received != run.record.size {
                    Some("size")
                } else if sha256 != run.record.sha256 {
                    Some("SHA-256")
                } else {
                    None
                };
                if let Some(what) = mismatch {
                    self.out
                        .push_back(Output::Effect(ClientEffect::AbortRestore { op }));
                    self.out.push_back(Output::Event(ClientEvent::OpFailed {
                        op,
                        failure: OpFailure::RestoreMismatch { what },
                        resumed_from: 0,
                    }));
                    self.phase = Phase::Ready;
                    return self.start_next();
                }
                run.io_pending = true;
                run.finishing = true;
                self.out
                    .push_back(Output::Effect(ClientEffect::FinishRestore { op }));
                self.phase = Phase::Restoring(op, run);
                Ok(())
            }
            (Phase::Repo(op, wait), message) => self.on_repo_message(op, wait, message),
            (phase, ServerMessage::Error { code, message, .. }) => {
                let (op, resumed_from) = match &phase {
                    Phase::AwaitUploadReady(op, _) | Phase::AwaitRestoreBegin(op) => (*op, 0),
                    Phase::AwaitUploadDone(op, run) => (*op, run.resumed_from),
                    Phase::Listing(op, _) => (*op, 0),
                    Phase::Restoring(op, _) => {
                        self.out
                            .push_back(Output::Effect(ClientEffect::AbortRestore { op: *op }));
                        (*op, 0)
                    }
                    _ => {
                        self.phase = phase;
                        return Err(V4Error::Protocol(format!(
                            "unexpected non-fatal error {code}: {message}"
                        )));
                    }
                };
                self.out.push_back(Output::Event(ClientEvent::OpFailed {
                    op,
                    failure: OpFailure::Refused { code, message },
                    resumed_from,
                }));
                self.phase = Phase::Ready;
                self.start_next()
            }
            (phase, other) => {
                self.phase = phase;
                Err(V4Error::Protocol(format!(
                    "unexpected {} from the server",
                    other.label()
                )))
            }
        }
    }

    fn start_next(&mut self) -> Result<(), V4Error> {
        if !matches!(self.phase, Phase::Ready) {
            return Ok(());
        }
        if let Some(op) = self.sent_ahead.pop_front() {
            // Its request is on the way already.
            self.timer.reset(self.now);
            self.phase = Phase::Repo(op, RepoWait::Object);
            return self.send_gets_ahead();
        }
        let Some((op, next)) = self.queue.pop_front() else {
            if self.finish_when_idle {
                self.send(&ClientMessage::Bye)?;
                self.phase = Phase::Done;
                self.close(CloseReason::Done);
            } else {
                self.timer.disarm();
            }
            return Ok(());
        };
        self.timer.reset(self.now);
        match next {
            Op::Upload(spec) => {
                self.send(&ClientMessage::Upload {
                    name: spec.name.clone(),
                    size: spec.size,
                    restart: spec.restart,
                })?;
                self.phase = Phase::AwaitUploadReady(op, spec);
            }
            Op::List => {
                self.send(&ClientMessage::List)?;
                self.phase = Phase::Listing(op, Vec::new());
            }
            Op::Restore { name, version } => {
                self.send(&ClientMessage::Restore { name, version })?;
                self.phase = Phase::AwaitRestoreBegin(op);
            }
            Op::Repo(call) => self.start_repo(op, call)?,
        }
        Ok(())
    }

    fn start_repo(&mut self, op: OpId, call: RepoCall) -> Result<(), V4Error> {
        let (request, wait) = match call {
            RepoCall::Open => (RepoRequest::Open, RepoWait::State),
            RepoCall::Create { config, key } => (RepoRequest::Create { config, key }, RepoWait::Ok),
            RepoCall::AddKey { key } => (RepoRequest::AddKey { key }, RepoWait::Ok),
            RepoCall::Have(ids) => {
                if ids.is_empty() || ids.len() > MAX_HAVE_BATCH {
                    return Err(V4Error::ApiMisuse("HAVE takes 1 to MAX_HAVE_BATCH ids"));
                }
                let count = ids.len();
                (RepoRequest::Have { ids }, RepoWait::Have(count))
            }
            RepoCall::Put { target, object } => {
                if object.is_empty() {
                    return Err(V4Error::ApiMisuse("an object to put has at least one byte"));
                }
                let size = object.len() as u64;
                (
                    RepoRequest::Put { target, size },
                    RepoWait::PutReady(object),
                )
            }
            RepoCall::Get(target) => (RepoRequest::Get { target }, RepoWait::Object),
            RepoCall::Snapshots => (RepoRequest::Snapshots, RepoWait::Snapshots(Vec::new())),
            RepoCall::Forget(id) => (RepoRequest::Forget { id }, RepoWait::Ok),
            RepoCall::Damaged { after } => {
                (RepoRequest::Damaged { after }, RepoWait::Damaged(after))
            }
            RepoCall::Usage => (RepoRequest::Usage, RepoWait::Usage),
            RepoCall::RemoveKey { key } => (RepoRequest::RemoveKey { key }, RepoWait::Ok),
            RepoCall::Prune => (RepoRequest::Prune, RepoWait::Prune),
        };
        self.send(&ClientMessage::Repo(request))?;
        self.phase = Phase::Repo(op, wait);
        self.send_gets_ahead()
    }

    /// A server message while a repository operation waits.
    fn on_repo_message(
        &mut self,
        op: OpId,
        wait: RepoWait,
        message: ServerMessage,
    ) -> Result<(), V4Error> {
        let result = match (wait, message) {
            (RepoWait::State, ServerMessage::Repo(RepoReply::State { config, keys })) => {
                RepoResult::State { config, keys }
            }
            (RepoWait::Ok, ServerMessage::Repo(RepoReply::Ok)) => RepoResult::Done,
            (RepoWait::Have(count), ServerMessage::Repo(RepoReply::HaveResult { stored }))
                if stored.len() == count =>
            {
                RepoResult::Have(stored)
            }
            (RepoWait::PutReady(object), ServerMessage::Repo(RepoReply::PutReady)) => {
                self.put_rest = Some(object);
                self.phase = Phase::Repo(op, RepoWait::PutDone);
                return Ok(());
            }
            (
                RepoWait::PutReady(_) | RepoWait::PutDone,
                ServerMessage::Repo(RepoReply::PutDone),
            ) => RepoResult::Stored,
            (RepoWait::Object, ServerMessage::Repo(RepoReply::Object { size })) => {
                if size > MAX_GET_OBJECT_LEN {
                    return Err(V4Error::Protocol(format!(
                        "the server announced a {size}-byte object; at most {MAX_GET_OBJECT_LEN} are accepted"
                    )));
                }
                let data = BytesMut::new();
                self.phase = Phase::Repo(op, RepoWait::ObjectData { data, size });
                return Ok(());
            }
            (RepoWait::ObjectData { mut data, size }, ServerMessage::Data(piece)) => {
                if data.len() as u64 + piece.len() as u64 > size {
                    return Err(V4Error::Protocol(
                        "object DATA beyond the announced size".into(),
                    ));
                }
                data.extend_from_slice(&piece);
                self.phase = Phase::Repo(op, RepoWait::ObjectData { data, size });
                return Ok(());
            }
            (RepoWait::ObjectData { data, size }, ServerMessage::Repo(RepoReply::ObjectEnd)) => {
                if data.len() as u64 != size {
                    return Err(V4Error::Protocol(format!(
                        "OBJECT_END after {} of {size} announced bytes",
                        data.len()
                    )));
                }
                RepoResult::Object(data.freeze())
            }
            (
                RepoWait::Snapshots(mut entries),
                ServerMessage::Repo(RepoReply::SnapshotEntry(entry)),
            ) => {
                entries.push(entry);
                self.phase = Phase::Repo(op, RepoWait::Snapshots(entries));
                return Ok(());
            }
            (
                RepoWait::Snapshots(entries),
                ServerMessage::Repo(RepoReply::SnapshotsEnd { count }),
            ) => {
                if usize::try_from(count).ok() != Some(entries.len()) {
                    return Err(V4Error::Protocol(format!(
                        "SNAPSHOTS_END counts {count} entries, {} arrived",
                        entries.len()
                    )));
                }
                RepoResult::Snapshots(entries)
            }
            (RepoWait::Damaged(after), ServerMessage::Repo(RepoReply::Damaged { ids, more })) => {
                let first = ids.first().map(BlobId::as_bytes);
                if let (Some(after), Some(first)) = (after, first) {
                    if first <= after.as_bytes() {
                        return Err(V4Error::Protocol(
                            "DAMAGED_RESULT repeats IDs the previous page had".into(),
                        ));
                    }
                }
                if more && ids.is_empty() {
                    return Err(V4Error::Protocol(
                        "DAMAGED_RESULT announces more IDs after an empty page".into(),
                    ));
                }
                RepoResult::Damaged { ids, more }
            }
            (RepoWait::Usage, ServerMessage::Repo(RepoReply::Usage(usage))) => {
                RepoResult::Usage(usage)
            }
            (RepoWait::Prune, ServerMessage::Repo(RepoReply::Pruned(report))) => {
                RepoResult::Pruned(report)
            }
            (
                RepoWait::State
                | RepoWait::Ok
                | RepoWait::Have(_)
                | RepoWait::PutReady(_)
                | RepoWait::PutDone
                | RepoWait::Object
                | RepoWait::Snapshots(_)
                | RepoWait::Damaged(_)
                | RepoWait::Usage
                | RepoWait::Prune,
                ServerMessage::Error { code, message, .. },
            ) => {
                self.out.push_back(Output::Event(ClientEvent::OpFailed {
                    op,
                    failure: OpFailure::Refused { code, message },
                    resumed_from: 0,
                }));
                self.phase = Phase::Ready;
                return self.start_next();
            }
            (_, other) => {
                return Err(V4Error::Protocol(format!(
                    "unexpected {} from the server during a repository operation",
                    other.label()
                )));
            }
        };
        self.out
            .push_back(Output::Event(ClientEvent::RepoDone { op, result }));
        self.phase = Phase::Ready;
        self.start_next()
    }

    fn next_read(&mut self) -> Result<(), V4Error> {
        let chunk = self.config.read_chunk_len.max(1) as u64;
        let Phase::Uploading(op, run) = &mut self.phase else {
            return Ok(());
        };
        let op = *op;
        let limit = if run.pos < run.resumed_from {
            run.resumed_from
        } else {
            run.spec.size
        };
        if run.pos < limit {
            let max = usize::try_from((limit - run.pos).min(chunk)).unwrap_or(usize::MAX);
            run.reading = true;
            let offset = run.pos;
            self.out
                .push_back(Output::Effect(ClientEffect::ReadFile { op, offset, max }));
            return Ok(());
        }
        let (sha256, _) = run.digest.clone().finalize();
        run.sha256 = Some(sha256);
        self.send(&ClientMessage::UploadEnd { sha256 })?;
        let Phase::Uploading(op, run) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return Ok(());
        };
        self.phase = Phase::AwaitUploadDone(op, run);
        Ok(())
    }

    fn file_data(&mut self, data: Bytes) -> Result<(), V4Error> {
        let Phase::Uploading(op, run) = &mut self.phase else {
            return Ok(());
        };
        let op = *op;
        let limit = if run.pos < run.resumed_from {
            run.resumed_from
        } else {
            run.spec.size
        };
        let len = data.len() as u64;
        if data.is_empty() || run.pos + len > limit {
            return Err(V4Error::FileChanged {
                name: run.spec.name.to_string_lossy(),
                expected: run.spec.size,
            });
        }
        run.digest.update(&data);
        let sending = run.pos >= run.resumed_from;
        run.pos += len;
        let (done, total) = (run.pos, run.spec.size);
        if sending {
            let mut rest = data;
            while !rest.is_empty() {
                let piece = rest.split_to(rest.len().min(MAX_DATA_LEN));
                self.send(&ClientMessage::Data(piece))?;
            }
            self.out
                .push_back(Output::Event(ClientEvent::Progress { op, done, total }));
        }
        self.next_read()
    }

    /// Seals and queues `message`, after the rest of an object being put.
    fn send(&mut self, message: &ClientMessage) -> Result<(), V4Error> {
        self.send_put_rest()?;
        self.seal_out(message)
    }

    /// Queues the rest of an object being put: before a message is sent, and before the
    /// server's next frames are read (its answer comes after the whole object).
    fn send_put_rest(&mut self) -> Result<(), V4Error> {
        while self.put_rest.is_some() {
            self.send_put_piece()?;
        }
        Ok(())
    }

    /// Seals `message` into a frame at the back of the output (no ordering check).
    fn seal_out(&mut self, message: &ClientMessage) -> Result<(), V4Error> {
        let Noise::Transport(transport) = &mut self.noise else {
            return Err(V4Error::ApiMisuse("no transport keys yet"));
        };
        let mut plaintext = Vec::with_capacity(match message {
            ClientMessage::Data(data) => data.len() + 1,
            _ => 300,
        });
        message.encode(&mut plaintext);
        let frame = super::seal(transport, &plaintext)?;
        self.out.push_back(Output::Transmit(frame));
        Ok(())
    }
}
