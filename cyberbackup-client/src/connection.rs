//! The driver: one tokio `TcpStream` ⇄ one `ClientSession`. It writes transmits, performs
//! effects (bounded file reads at an offset, saving the identity, closing files) and hands
//! every session event to its caller, one [`Note`] at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cyberbackup_core::identity::Identity;
use cyberbackup_core::names::NameField;
use cyberbackup_core::session::Output;
use cyberbackup_core::v3::{
    ClientConfig, ClientEffect, ClientEvent, ClientSession, CloseReason, FileId, FileSpec,
    SessionError, TransferPhase,
};
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;

use crate::error::ClientError;
use crate::identity::IdentityFile;
use crate::source::SourceFile;

/// Socket write buffer: coalesces headers with content without holding much.
const WRITE_BUFFER_LEN: usize = 64 * 1024;
/// Socket read buffer reserve per read.
const READ_RESERVE_LEN: usize = 8 * 1024;

/// What the session reported, in order.
#[derive(Debug)]
pub(crate) enum Note {
    /// A session event.
    Event(ClientEvent),
    /// The identity file was (re)written with this identity.
    IdentitySaved(Identity),
    /// The session finished and the connection is closed.
    Closed,
}

/// An open file being backed up on this connection.
#[derive(Debug)]
struct OpenFile {
    file: SourceFile,
    name: String,
}

/// One connection to the server, driving one session.
#[derive(Debug)]
pub(crate) struct Connection {
    server: String,
    io: BufWriter<TcpStream>,
    session: ClientSession<OsRng>,
    read_buf: BytesMut,
    feed_pending: bool,
    files: BTreeMap<FileId, OpenFile>,
    doing: String,
    response_timeout: Duration,
}

impl Connection {
    /// Connects (TCP_NODELAY) and starts a session: reconnect with `identity`, or register
    /// `name` (with a key pair generated off the runtime).
    pub(crate) async fn open(
        server: &str,
        config: Arc<ClientConfig>,
        identity: Option<Identity>,
        name: &NameField,
        connect_timeout: Duration,
    ) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect {
            server: server.to_owned(),
            source,
        };
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(server))
            .await
            .map_err(|_| {
                connect_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", connect_timeout.as_secs()),
                ))
            })?
            .map_err(connect_error)?;
        stream.set_nodelay(true).map_err(connect_error)?;
        let now = tokio::time::Instant::now().into_std();
        let response_timeout = config.response_timeout;
        let (session, doing) = match identity {
            Some(identity) => (
                ClientSession::reconnect(config, identity, OsRng, now),
                "reconnecting",
            ),
            None => {
                let key = generate_key().await?;
                (
                    ClientSession::register(config, name.clone(), Some(key), OsRng, now),
                    "registering",
                )
            }
        };
        Ok(Self {
            server: server.to_owned(),
            io: BufWriter::with_capacity(WRITE_BUFFER_LEN, stream),
            session,
            read_buf: BytesMut::new(),
            feed_pending: false,
            files: BTreeMap::new(),
            doing: doing.to_owned(),
            response_timeout,
        })
    }

    /// Queues an opened file; the session sends it after the ones queued before.
    pub(crate) fn queue(&mut self, file: SourceFile, name: NameField, len: u64) -> FileId {
        let display = name.to_string_lossy();
        let id = self.session.backup(FileSpec { name, len });
        self.files.insert(
            id,
            OpenFile {
                file,
                name: display,
            },
        );
        id
    }

    /// Asks the session to end once every queued file is handled.
    pub(crate) fn finish(&mut self) {
        self.session.finish_when_idle();
    }

    /// Drives the session until it reports something.
    ///
    /// # Errors
    /// The connection or session failed; the connection is unusable afterwards.
    pub(crate) async fn next_note(
        &mut self,
        identity_file: &IdentityFile,
        read_chunk_len: usize,
    ) -> Result<Note, ClientError> {
        loop {
            while let Some(output) = self.session.poll_output() {
                match output {
                    Output::Transmit(bytes) => {
                        let written =
                            tokio::time::timeout(self.response_timeout, self.io.write_all(&bytes))
                                .await;
                        self.written(written)?;
                    }
                    Output::Effect(effect) => {
                        if let Some(note) =
                            self.perform(effect, identity_file, read_chunk_len).await?
                        {
                            return Ok(note);
                        }
                    }
                    Output::Event(event) => {
                        self.track(&event);
                        return Ok(Note::Event(event));
                    }
                    Output::Close(CloseReason::Done) => {
                        self.flush().await?;
                        // The server may already have closed (shlomi's does after 1604).
                        let _ignored =
                            tokio::time::timeout(self.response_timeout, self.io.shutdown()).await;
                        return Ok(Note::Closed);
                    }
                    Output::Close(CloseReason::Error(error)) => {
                        let _ignored = self.flush().await;
                        return Err(self.session_error(error));
                    }
                    Output::Close(_) => {
                        return Err(self.session_error(SessionError::ConnectionClosed));
                    }
                }
            }
            let now = tokio::time::Instant::now().into_std();
            if self.feed_pending && !self.read_buf.is_empty() {
                // Bytes that arrived while an effect was pending.
                self.feed_pending = false;
                let _queued_as_close = self.session.handle_bytes(now, &mut self.read_buf);
                continue;
            }
            self.feed_pending = false;
            self.flush().await?;
            let deadline = self
                .session
                .poll_timeout()
                .map(|(at, _)| tokio::time::Instant::from_std(at));
            self.read_buf.reserve(READ_RESERVE_LEN);
            tokio::select! {
                read = self.io.get_mut().read_buf(&mut self.read_buf) => {
                    let now = tokio::time::Instant::now().into_std();
                    match read {
                        Ok(0) => self.session.handle_eof(now),
                        Ok(_) => {
                            // An error is queued as `Close(Error)` and surfaces above.
                            let _queued_as_close = self.session.handle_bytes(now, &mut self.read_buf);
                        }
                        Err(source) => return Err(self.network_error(source)),
                    }
                }
                () = sleep_until(deadline) => {
                    self.session.handle_timeout(tokio::time::Instant::now().into_std());
                }
            }
        }
    }

    async fn perform(
        &mut self,
        effect: ClientEffect,
        identity_file: &IdentityFile,
        read_chunk_len: usize,
    ) -> Result<Option<Note>, ClientError> {
        match effect {
            ClientEffect::SaveIdentity(identity) => {
                let file = identity_file.clone();
                let to_save = (*identity).clone();
                let saved = tokio::task::spawn_blocking(move || file.save(&to_save))
                    .await
                    .unwrap_or_else(|join| {
                        Err(ClientError::IdentitySave {
                            path: identity_file.path().to_path_buf(),
                            source: std::io::Error::other(join.to_string()),
                        })
                    });
                let now = tokio::time::Instant::now().into_std();
                let answer = match &saved {
                    Ok(()) => Ok(()),
                    Err(err) => Err(err.to_string()),
                };
                let _queued_as_close = self.session.handle_identity_saved(now, answer);
                self.feed_pending = true;
                saved?;
                Ok(Some(Note::IdentitySaved(*identity)))
            }
            ClientEffect::ReadFile { file, offset, max } => {
                let max = max.clamp(1, read_chunk_len.max(1));
                let read = self.read_file(file, offset, max).await;
                let now = tokio::time::Instant::now().into_std();
                let answer = match read {
                    Ok(data) => self.session.handle_file_data(now, file, data),
                    Err(reason) => self.session.handle_file_error(now, file, reason),
                };
                // A local read failure is reported as `FileFailed` then `Close(Error)`.
                if let Err(SessionError::ApiMisuse(what)) = answer {
                    return Err(self.session_error(SessionError::ApiMisuse(what)));
                }
                self.feed_pending = true;
                Ok(None)
            }
            ClientEffect::CloseFile { file } => {
                self.files.remove(&file);
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Reads up to `max` bytes at `offset`: a bounded buffer, never the whole file.
    async fn read_file(&mut self, file: FileId, offset: u64, max: usize) -> Result<Bytes, String> {
        let Some(open) = self.files.get_mut(&file) else {
            return Err("the file is not open".to_owned());
        };
        open.file
            .read_at(offset, max)
            .await
            .map_err(|err| format!("cannot read {}: {err}", open.name))
    }

    fn track(&mut self, event: &ClientEvent) {
        let name = |files: &BTreeMap<FileId, OpenFile>, id: &FileId| {
            files
                .get(id)
                .map_or_else(|| "a file".to_owned(), |f| f.name.clone())
        };
        self.doing = match event {
            ClientEvent::KeyExchanged => "idle".to_owned(),
            ClientEvent::ReconnectRefused => "registering".to_owned(),
            ClientEvent::Registered { .. } => "exchanging keys".to_owned(),
            ClientEvent::Progress {
                file,
                phase: TransferPhase::Sending,
                ..
            } => format!("sending {}", name(&self.files, file)),
            ClientEvent::Progress {
                file,
                phase: TransferPhase::Verifying,
                ..
            } => format!(
                "waiting for the server to verify {}",
                name(&self.files, file)
            ),
            ClientEvent::FileVerified { .. } | ClientEvent::FileFailed { .. } => "idle".to_owned(),
            _ => return,
        };
    }

    /// Flushes the write buffer within the response timeout.
    async fn flush(&mut self) -> Result<(), ClientError> {
        let flushed = tokio::time::timeout(self.response_timeout, self.io.flush()).await;
        self.written(flushed)
    }

    /// The outcome of a write bounded by the response timeout: a server that stops reading
    /// fails the connection with the same error as one that stops answering.
    fn written(
        &self,
        result: Result<std::io::Result<()>, tokio::time::error::Elapsed>,
    ) -> Result<(), ClientError> {
        match result {
            Ok(written) => written.map_err(|source| self.network_error(source)),
            Err(_) => Err(self.timeout_error()),
        }
    }

    fn timeout_error(&self) -> ClientError {
        ClientError::Timeout {
            server: self.server.clone(),
            seconds: self.response_timeout.as_secs(),
            during: self.doing.clone(),
        }
    }

    fn network_error(&self, source: std::io::Error) -> ClientError {
        use std::io::ErrorKind;
        if matches!(
            source.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
        ) {
            return ClientError::ConnectionClosed {
                server: self.server.clone(),
                during: format!("{} ({source})", self.doing),
            };
        }
        ClientError::Network {
            server: self.server.clone(),
            source,
        }
    }

    fn session_error(&self, error: SessionError) -> ClientError {
        let server = self.server.clone();
        let during = self.doing.clone();
        match error {
            SessionError::ConnectionClosed => ClientError::ConnectionClosed { server, during },
            SessionError::IdleTimeout => self.timeout_error(),
            SessionError::NameTaken { name } => ClientError::NameTaken { name },
            SessionError::PublicKeyRefused { attempts } => {
                ClientError::PublicKeyRefused { server, attempts }
            }
            SessionError::ServerKeptFailing { request, attempts } => {
                ClientError::ServerKeptFailing { request, attempts }
            }
            // A local file failed mid-send: the file is reported failed, the connection
            // cannot carry on cleanly, the next session continues with the other files.
            SessionError::FileChanged { .. } | SessionError::LocalFile { .. } => {
                ClientError::LocalFileAborted {
                    reason: error.to_string(),
                }
            }
            error => ClientError::Protocol { server, error },
        }
    }
}

async fn generate_key() -> Result<cyberbackup_core::crypto::ClientKeyPair, ClientError> {
    let generated = tokio::task::spawn_blocking(|| {
        cyberbackup_core::crypto::ClientKeyPair::generate(&mut OsRng)
    })
    .await;
    let reason = match generated {
        Ok(Ok(key)) => return Ok(key),
        Ok(Err(err)) => err.to_string(),
        Err(join) => join.to_string(),
    };
    Err(ClientError::Usage {
        message: format!("cannot generate an RSA key pair: {reason}"),
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
