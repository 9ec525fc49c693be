//! [`V4Client`]: one TCP connection driving a v4 `ClientSession` (the canonical loop:
//! drain outputs in order, perform effects, re-feed after an answer, then read).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cyberbackup_core::names::{ClientId, FileName, NameField};
use cyberbackup_core::v4::client::{
    ClientConfig, ClientEffect, ClientEvent, ClientSession, OpId, RepoCall, RepoResult, UploadSpec,
};
use cyberbackup_core::v4::noise::Fingerprint;
use cyberbackup_core::v4::wire::{ClientAuth, VersionRecord};
use cyberbackup_core::v4::{CloseReason, Output, V4Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{V4ClientError, V4Identity, V4Options};
use crate::source::SourceFile;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 256 * 1024;
/// How long a client whose write failed waits for the rest of what the server sent.
const LAST_WORDS_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// A committed upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOutcome {
    /// Name on the server.
    pub name: String,
    /// The version it became.
    pub version: u32,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
    /// POSIX cksum (the v3 checksum).
    pub cksum: u32,
    /// Offset the upload resumed from (0 when it started fresh).
    pub resumed_from: u64,
}

struct RestoreTarget {
    output: PathBuf,
    temp: PathBuf,
    file: Option<tokio::fs::File>,
}

/// A connected, authenticated v4 client.
pub struct V4Client {
    server: String,
    stream: TcpStream,
    session: ClientSession,
    buf: BytesMut,
    identity: V4Identity,
    identity_path: PathBuf,
    registered: bool,
    sources: HashMap<OpId, (SourceFile, PathBuf)>,
    restores: HashMap<OpId, RestoreTarget>,
    trusted_on_first_use: Option<Fingerprint>,
    closed: Option<CloseReason>,
    /// Operations that finished while another one was awaited (pipelined `GET`s answered in
    /// one read); [`Self::run_op`] takes its operation from here first.
    finished: VecDeque<ClientEvent>,
    /// Deadline of one write (the response timeout): a server that stops reading fails the
    /// connection as one that stops answering does.
    write_timeout: std::time::Duration,
}

impl std::fmt::Debug for V4Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4Client")
            .field("server", &self.server)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl V4Client {
    /// Connects and authenticates. Without an identity file, a new key pair is generated and
    /// saved first (mode 0600), then registered under `options.name`; an identity that was
    /// never registered (its name was taken) is registered under `options.name`. The server key is
    /// pinned: the identity's fingerprint, else `options.server_fingerprint`, else trusted
    /// on first use and saved.
    ///
    /// # Errors
    /// [`V4ClientError::Usage`] (no name for a new identity, conflicting fingerprints),
    /// identity, network and session errors ([`V4Error::ServerKeyChanged`] names both keys).
    pub async fn connect(options: &V4Options) -> Result<Self, V4ClientError> {
        let path = options.identity.clone();
        let mut identity = match V4Identity::load(&path)? {
            Some(identity) => identity,
            None => {
                let Some(name) = options.name.clone() else {
                    return Err(V4ClientError::Usage {
                        message: format!(
                            "no v4 identity at {}: give --name NAME to register a new one",
                            path.display()
                        ),
                    });
                };
                check_name(&name)?;
                V4Identity::generate(name, options.server_fingerprint).create(&path)?
            }
        };
        if let Some(name) = options.name.as_ref().filter(|name| **name != identity.name)
            && identity.client_id.is_none()
        {
            check_name(name)?;
            identity.name.clone_from(name);
            identity.save(&path)?;
        }
        let pin = match (identity.server_fingerprint, options.server_fingerprint) {
            (Some(saved), Some(given)) if saved != given => {
                return Err(V4ClientError::Session(V4Error::ServerKeyChanged {
                    expected: saved,
                    found: given,
                }));
            }
            (saved, given) => saved.or(given),
        };
        if identity.server_fingerprint.is_none() && pin.is_some() {
            identity.server_fingerprint = pin;
            identity.save(&path)?;
        }
        let auth = if identity.client_id.is_some() {
            ClientAuth::Login
        } else {
            ClientAuth::Register {
                name: NameField::new(Bytes::from(identity.name.clone().into_bytes())).map_err(
                    |e| V4ClientError::Usage {
                        message: e.to_string(),
                    },
                )?,
                token: options.enroll_token.clone().unwrap_or_default(),
            }
        };
        let stream = TcpStream::connect(&options.server)
            .await
            .map_err(|source| V4ClientError::Network {
                server: options.server.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let config = Arc::new(ClientConfig {
            response_timeout: options.response_timeout,
            read_chunk_len: options.read_chunk_len.max(1),
        });
        let session = ClientSession::new(
            config,
            &identity.keys,
            pin,
            auth,
            &mut rand_core::OsRng,
            Instant::now(),
        )?;
        let mut client = Self {
            server: options.server.clone(),
            stream,
            session,
            buf: BytesMut::with_capacity(READ_CHUNK),
            identity,
            identity_path: path,
            registered: false,
            sources: HashMap::new(),
            restores: HashMap::new(),
            trusted_on_first_use: None,
            closed: None,
            finished: VecDeque::new(),
            write_timeout: options.response_timeout,
        };
        client
            .run_until(
                |e| matches!(e, ClientEvent::Authenticated { .. }),
                &mut |_| {},
            )
            .await?;
        Ok(client)
    }

    /// Our client id.
    #[must_use]
    pub fn client_id(&self) -> Option<ClientId> {
        self.identity.client_id.map(ClientId)
    }

    /// Our registered name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// Whether this connection registered the identity.
    #[must_use]
    pub fn registered(&self) -> bool {
        self.registered
    }

    /// The pinned server fingerprint.
    #[must_use]
    pub fn server_fingerprint(&self) -> Option<Fingerprint> {
        self.identity.server_fingerprint
    }

    /// The server key fingerprint this connection trusted on first use (and saved in the
    /// identity), when there was no pin yet; `None` when the key was already pinned.
    #[must_use]
    pub fn trusted_on_first_use(&self) -> Option<Fingerprint> {
        self.trusted_on_first_use
    }

    /// The identity file in use.
    #[must_use]
    pub fn identity_path(&self) -> &Path {
        &self.identity_path
    }

    /// Uploads `path` as `name` (default: its file name), resuming a partial upload of the
    /// same name and size.
    ///
    /// # Errors
    /// [`V4ClientError::Failed`] when the server refused (the connection goes on), else a
    /// fatal error.
    pub async fn upload(
        &mut self,
        path: &Path,
        name: Option<&str>,
    ) -> Result<UploadOutcome, V4ClientError> {
        self.upload_with(path, name, false).await
    }

    /// Like [`upload`](Self::upload); `restart` discards any partial upload first.
    ///
    /// # Errors
    /// As [`upload`](Self::upload).
    pub async fn upload_with(
        &mut self,
        path: &Path,
        name: Option<&str>,
        restart: bool,
    ) -> Result<UploadOutcome, V4ClientError> {
        self.upload_observed(path, name, restart, |_| {}).await
    }

    /// Like [`upload_with`](Self::upload_with), calling `observe` with every session event
    /// of the connection while it runs ([`ClientEvent::UploadStarted`] with the resume
    /// offset, [`ClientEvent::Progress`] after each piece is written to the socket), for
    /// progress displays.
    ///
    /// # Errors
    /// As [`upload`](Self::upload).
    pub async fn upload_observed(
        &mut self,
        path: &Path,
        name: Option<&str>,
        restart: bool,
        mut observe: impl FnMut(&ClientEvent),
    ) -> Result<UploadOutcome, V4ClientError> {
        let local = |what, source| V4ClientError::Local {
            what,
            path: path.to_path_buf(),
            source,
        };
        let remote = match name {
            Some(name) => name.to_owned(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| V4ClientError::Usage {
                    message: format!("{} has no file name", path.display()),
                })?,
        };
        let file_name = file_name(&remote)?;
        let file = SourceFile::open(path)
            .await
            .map_err(|e| local("cannot open", e))?;
        let size = file.len();
        let op = self.session.upload(UploadSpec {
            name: file_name,
            size,
            restart,
        });
        self.sources.insert(op, (file, path.to_path_buf()));
        let result = self.run_op(op, &mut observe).await;
        self.sources.remove(&op);
        match result? {
            ClientEvent::UploadCommitted {
                version,
                size,
                cksum,
                sha256,
                resumed_from,
                ..
            } => Ok(UploadOutcome {
                name: remote,
                version,
                size,
                sha256,
                cksum,
                resumed_from,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Lists our files and their versions.
    ///
    /// # Errors
    /// [`V4ClientError::Failed`] or a fatal error.
    pub async fn list(&mut self) -> Result<Vec<VersionRecord>, V4ClientError> {
        let op = self.session.list();
        match self.run_op(op, &mut |_| {}).await? {
            ClientEvent::Listed { entries, .. } => Ok(entries),
            other => Err(unexpected(&other)),
        }
    }

    /// Downloads version `version` (newest when `None`) of `name` into `output`: written to a
    /// temp file beside it, checked (size and SHA-256), then renamed; on any failure the temp
    /// file is deleted and `output` is untouched.
    ///
    /// # Errors
    /// [`V4ClientError::Failed`] (not found, mismatch, local write) or a fatal error.
    pub async fn restore(
        &mut self,
        name: &str,
        version: Option<u32>,
        output: &Path,
    ) -> Result<VersionRecord, V4ClientError> {
        let op = self.session.restore(file_name(name)?, version);
        let mut temp_name = output.file_name().unwrap_or_default().to_os_string();
        temp_name.push(format!(".cb-restore-{}", std::process::id()));
        self.restores.insert(
            op,
            RestoreTarget {
                output: output.to_path_buf(),
                temp: output.with_file_name(temp_name),
                file: None,
            },
        );
        let result = self.run_op(op, &mut |_| {}).await;
        if let Some(target) = self.restores.remove(&op) {
            drop(target.file);
            let _ = tokio::fs::remove_file(&target.temp).await;
        }
        match result? {
            ClientEvent::Restored { record, .. } => Ok(record),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs one repository operation (`docs/protocol-v4.md` §9a) and returns its result.
    ///
    /// # Errors
    /// [`V4ClientError::Failed`] when the server refuses it, or a fatal error.
    pub async fn repository(&mut self, call: RepoCall) -> Result<RepoResult, V4ClientError> {
        let op = self.session.repository(call);
        match self.run_op(op, &mut |_| {}).await? {
            ClientEvent::RepoDone { result, .. } => Ok(result),
            other => Err(unexpected(&other)),
        }
    }

    /// Runs `calls` queued together, so that `GET`s among them stay in flight together
    /// (the session sends up to `MAX_GETS_IN_FLIGHT` ahead); one result per call, in order.
    /// A refused call is its own `Err`; the others still run.
    ///
    /// # Errors
    /// A fatal error of the connection.
    pub async fn repository_all(
        &mut self,
        calls: Vec<RepoCall>,
    ) -> Result<Vec<Result<RepoResult, V4ClientError>>, V4ClientError> {
        let ops: Vec<OpId> = calls
            .into_iter()
            .map(|call| self.session.repository(call))
            .collect();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            match self.run_op(op, &mut |_| {}).await {
                Ok(ClientEvent::RepoDone { result, .. }) => results.push(Ok(result)),
                Ok(other) => return Err(unexpected(&other)),
                Err(refused @ V4ClientError::Failed(_)) => results.push(Err(refused)),
                Err(fatal) => return Err(fatal),
            }
        }
        Ok(results)
    }

    /// Says goodbye and closes the connection.
    ///
    /// # Errors
    /// A fatal error that happened while closing.
    pub async fn close(mut self) -> Result<(), V4ClientError> {
        self.session.finish_when_idle();
        let result = self.run_until(|_| false, &mut |_| {}).await;
        let _ = self.stream.shutdown().await;
        match result {
            Err(V4ClientError::Session(V4Error::ConnectionClosed)) | Ok(_) => Ok(()),
            Err(err) => Err(err),
        }
    }

    async fn run_op<F: FnMut(&ClientEvent)>(
        &mut self,
        op: OpId,
        observe: &mut F,
    ) -> Result<ClientEvent, V4ClientError> {
        let early = self
            .finished
            .iter()
            .position(|event| finished_op(event) == Some(op));
        let event = match early {
            Some(at) => self.finished.remove(at),
            None => {
                self.run_until(|event| finished_op(event) == Some(op), observe)
                    .await?
            }
        };
        match event {
            Some(ClientEvent::OpFailed { failure, .. }) => Err(V4ClientError::Failed(failure)),
            Some(event) => Ok(event),
            None => Err(V4ClientError::Session(V4Error::ConnectionClosed)),
        }
    }

    /// After a failed write: feeds the session whatever the server sent before it closed
    /// (at most [`LAST_WORDS_WAIT`] of waiting), so a fatal `ERROR` it sent is reported
    /// instead of a bare "connection closed".
    async fn read_last_words(&mut self) {
        let deadline = tokio::time::Instant::now() + LAST_WORDS_WAIT;
        loop {
            self.buf.reserve(READ_CHUNK);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        self.session
            .handle_last_bytes(Instant::now(), &mut self.buf);
    }

    /// Drives the session until an event matches `done` (returned), or the session closes
    /// (`Ok(None)` after `Done`, else the error). Every other event goes to `observe` (and
    /// is then dropped: nothing accumulates over a long connection).
    async fn run_until<F: FnMut(&ClientEvent)>(
        &mut self,
        done: impl Fn(&ClientEvent) -> bool,
        observe: &mut F,
    ) -> Result<Option<ClientEvent>, V4ClientError> {
        loop {
            let mut answered = false;
            let mut found = None;
            while let Some(output) = self.session.poll_output() {
                match output {
                    Output::Transmit(bytes) => {
                        let written =
                            tokio::time::timeout(self.write_timeout, self.stream.write_all(&bytes))
                                .await;
                        match written {
                            Ok(Ok(())) => {}
                            // The server may have closed after a fatal ERROR (its disk is
                            // full, say): read what it sent before reporting the broken
                            // connection, so the user sees its reason.
                            Ok(Err(_)) => {
                                self.read_last_words().await;
                                self.session.handle_eof(Instant::now());
                            }
                            Err(_) => {
                                self.closed.get_or_insert(CloseReason::IdleTimeout);
                                break;
                            }
                        }
                    }
                    Output::Effect(effect) => {
                        answered |= effect.needs_answer();
                        let _ = self.perform(effect).await;
                    }
                    Output::Event(event) => {
                        self.observe(&event)?;
                        if found.is_none() && done(&event) {
                            found = Some(event);
                        } else if finished_op(&event).is_some() {
                            self.finished.push_back(event);
                        } else {
                            observe(&event);
                        }
                    }
                    Output::Close(reason) => self.closed = Some(reason),
                }
            }
            if found.is_some() {
                return Ok(found);
            }
            if let Some(reason) = &self.closed {
                return match reason {
                    CloseReason::Done => Ok(None),
                    CloseReason::Error(err) => Err(V4ClientError::Session(err.clone())),
                    CloseReason::PeerClosed => Err(V4Error::ConnectionClosed.into()),
                    _ => Err(V4Error::IdleTimeout.into()),
                };
            }
            if answered {
                let _ = self.session.handle_bytes(Instant::now(), &mut self.buf);
                continue;
            }
            let deadline = self
                .session
                .poll_timeout()
                .map(|(at, _)| tokio::time::Instant::from_std(at));
            self.buf.reserve(READ_CHUNK);
            tokio::select! {
                read = self.stream.read_buf(&mut self.buf) => match read {
                    Ok(0) | Err(_) => self.session.handle_eof(Instant::now()),
                    Ok(_) => {
                        let _ = self.session.handle_bytes(Instant::now(), &mut self.buf);
                    }
                },
                () = sleep_until(deadline) => self.session.handle_timeout(Instant::now()),
            }
        }
    }

    fn observe(&mut self, event: &ClientEvent) -> Result<(), V4ClientError> {
        if let ClientEvent::Authenticated {
            client_id,
            name,
            registered,
            ..
        } = event
        {
            self.registered = *registered;
            let name = name.to_string_lossy();
            if self.identity.client_id != Some(client_id.0) || self.identity.name != name {
                self.identity.client_id = Some(client_id.0);
                self.identity.name = name;
                self.identity.save(&self.identity_path)?;
            }
        }
        Ok(())
    }

    async fn perform(&mut self, effect: ClientEffect) -> Result<(), V4Error> {
        let now = Instant::now;
        match effect {
            ClientEffect::TrustServerKey { key } => {
                self.identity.server_fingerprint = Some(key.fingerprint());
                self.trusted_on_first_use = Some(key.fingerprint());
                let saved = self
                    .identity
                    .save(&self.identity_path)
                    .map_err(|e| e.to_string());
                self.session.handle_server_key_trusted(now(), saved)
            }
            ClientEffect::ReadFile { op, offset, max } => {
                let Some((file, path)) = self.sources.get_mut(&op) else {
                    return self
                        .session
                        .handle_file_error(now(), op, "no such upload".into());
                };
                match file.read_at(offset, max).await {
                    Ok(data) => self.session.handle_file_data(now(), op, data),
                    Err(err) => {
                        let reason = format!("{}: {err}", path.display());
                        self.session.handle_file_error(now(), op, reason)
                    }
                }
            }
            ClientEffect::BeginRestore { op, .. } => {
                let result = match self.restores.get_mut(&op) {
                    Some(target) => match create_private(&target.temp).await {
                        Ok(file) => {
                            target.file = Some(file);
                            Ok(())
                        }
                        Err(err) => Err(format!("{}: {err}", target.temp.display())),
                    },
                    None => Err("no such restore".into()),
                };
                self.session.handle_restore_io(now(), op, result)
            }
            ClientEffect::WriteRestore { op, data } => {
                let result = match self.restores.get_mut(&op).and_then(|t| t.file.as_mut()) {
                    Some(file) => file.write_all(&data).await.map_err(|e| e.to_string()),
                    None => Err("no such restore".into()),
                };
                self.session.handle_restore_io(now(), op, result)
            }
            ClientEffect::FinishRestore { op } => {
                let result = match self.restores.get_mut(&op) {
                    Some(target) => finish_restore(target)
                        .await
                        .map_err(|e| format!("{}: {e}", target.output.display())),
                    None => Err("no such restore".into()),
                };
                self.session.handle_restore_io(now(), op, result)
            }
            ClientEffect::AbortRestore { op } => {
                if let Some(target) = self.restores.get_mut(&op) {
                    drop(target.file.take());
                    let _ = tokio::fs::remove_file(&target.temp).await;
                }
                Ok(())
            }
            _ => Err(V4Error::ApiMisuse("unsupported effect")),
        }
    }
}

async fn create_private(path: &Path) -> std::io::Result<tokio::fs::File> {
    let _ = tokio::fs::remove_file(path).await;
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
}

async fn finish_restore(target: &mut RestoreTarget) -> std::io::Result<()> {
    if let Some(mut file) = target.file.take() {
        file.flush().await?;
        file.sync_all().await?;
    }
    tokio::fs::rename(&target.temp, &target.output).await
}

fn file_name(name: &str) -> Result<FileName, V4ClientError> {
    let field = NameField::new(Bytes::from(name.as_bytes().to_vec())).map_err(|e| {
        V4ClientError::Usage {
            message: format!("file name {name:?}: {e}"),
        }
    })?;
    FileName::validate(field).map_err(|e| V4ClientError::Usage {
        message: format!("file name {name:?}: {e}"),
    })
}

fn check_name(name: &str) -> Result<(), V4ClientError> {
    if name.is_empty() || name.len() > 254 || name.contains('\0') {
        return Err(V4ClientError::Usage {
            message: format!("--name {name:?}: a client name is 1 to 254 bytes without NUL"),
        });
    }
    Ok(())
}

/// The operation an event finishes, if it finishes one.
fn finished_op(event: &ClientEvent) -> Option<OpId> {
    match event {
        ClientEvent::UploadCommitted { op, .. }
        | ClientEvent::Listed { op, .. }
        | ClientEvent::Restored { op, .. }
        | ClientEvent::RepoDone { op, .. }
        | ClientEvent::OpFailed { op, .. } => Some(*op),
        _ => None,
    }
}

fn unexpected(event: &ClientEvent) -> V4ClientError {
    V4ClientError::Session(V4Error::Protocol(format!("unexpected event {event:?}")))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
