//! A minimal tokio driver of `ClientSession` for the many-clients and soak scenarios: it
//! registers (with a key pair generated before the clock starts; the client library always
//! generates its own) or reconnects, backs up one file and closes, or drops the connection
//! mid-upload on purpose (soak). Same loop as the client library's connection:
//! write transmits, answer effects at once, re-feed buffered bytes, then read or time out.

use std::io::SeekFrom;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use cyberbackup_core::crypto::ClientKeyPair;
use cyberbackup_core::identity::Identity;
use cyberbackup_core::names::NameField;
use cyberbackup_core::session::Output;
use cyberbackup_core::v3::{
    ClientConfig, ClientEffect, ClientEvent, ClientSession, CloseReason, FileSpec,
};
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;

use crate::data;

/// Timings of one client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// Connect to 1604 (registration, key exchange and the file).
    pub(crate) total: Duration,
    /// Key exchange done to 1604 (the file alone).
    pub(crate) file: Duration,
}

/// Connects to `server`, registers `name` with `key`, backs up `path` and closes cleanly.
///
/// # Errors
/// Any network, protocol or file error, or a file the server did not verify.
pub(crate) async fn register_and_backup(
    server: SocketAddr,
    name: &str,
    key: ClientKeyPair,
    path: &Path,
    config: Arc<ClientConfig>,
) -> anyhow::Result<Timing> {
    let start = Instant::now();
    let stream = TcpStream::connect(server)
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().await?.len();
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let now = tokio::time::Instant::now().into_std();
    let session = ClientSession::register(
        config,
        NameField::new(name.as_bytes().to_vec()).map_err(|e| anyhow!("bad client name: {e}"))?,
        Some(key),
        OsRng,
        now,
    );
    let outcome = drive(session, stream, &file_name, len, Source::File(file), None).await?;
    let (Some(keyed), Some(verified)) = (outcome.keyed_at, outcome.verified_at) else {
        bail!("the session ended before the file was verified");
    };
    Ok(Timing {
        total: verified - start,
        file: verified - keyed,
    })
}

/// Where a backed-up file's bytes come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// A real file.
    File(tokio::fs::File),
    /// Pseudo-random bytes made on demand (nothing held in memory): each read at `offset`
    /// is [`data::Noise`] seeded with `seed` and `offset`, so a read is repeatable.
    Noise {
        /// Seed of this file's content.
        seed: u64,
    },
}

impl Source {
    async fn read(&mut self, offset: u64, max: usize) -> std::io::Result<bytes::Bytes> {
        match self {
            Self::File(file) => {
                file.seek(SeekFrom::Start(offset)).await?;
                let mut data = BytesMut::with_capacity(max);
                while data.len() < max {
                    let want = u64::try_from(max - data.len()).unwrap_or(u64::MAX);
                    if (&mut *file).take(want).read_buf(&mut data).await? == 0 {
                        break;
                    }
                }
                Ok(data.freeze())
            }
            Self::Noise { seed } => {
                let mut data = vec![0u8; max];
                data::Noise::new(*seed ^ offset.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                    .fill(&mut data);
                Ok(data.into())
            }
        }
    }
}

/// Why a session driven by [`drive`] did not verify its file, by kind (for counting).
#[derive(Debug)]
pub(crate) struct Failure {
    /// A short, fixed label of the kind of failure.
    pub(crate) kind: &'static str,
    /// What happened.
    pub(crate) detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    fn new(kind: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            kind,
            detail: detail.to_string(),
        }
    }
}

/// How a session driven by [`drive`] ended without a failure.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// When the keys were exchanged.
    pub(crate) keyed_at: Option<Instant>,
    /// When the server verified the file (1604).
    pub(crate) verified_at: Option<Instant>,
    /// The identity the server gave us, when the session registered.
    pub(crate) identity: Option<Identity>,
    /// The connection was dropped on purpose after `cut_after` bytes (by design, not a
    /// failure).
    pub(crate) cut: bool,
}

/// Drives `session` over `stream`: queues one file (`file_name`, `len` bytes from `source`),
/// then closes when idle. With `cut_after`, drops the connection once that many bytes have
/// been sent (a disconnect in the middle of an upload) and returns with `cut` set.
///
/// # Errors
/// A [`Failure`] naming the kind of network, protocol or file error, or a file the server
/// did not verify.
pub(crate) async fn drive(
    mut session: ClientSession<OsRng>,
    stream: TcpStream,
    file_name: &str,
    len: u64,
    mut source: Source,
    cut_after: Option<u64>,
) -> Result<Outcome, Failure> {
    let io_err = |e: std::io::Error| Failure::new("network error", e);
    stream.set_nodelay(true).map_err(io_err)?;
    let mut io = BufWriter::with_capacity(64 * 1024, stream);
    session.backup(FileSpec {
        name: NameField::new(file_name.as_bytes().to_vec())
            .map_err(|e| Failure::new("bad file name", e))?,
        len,
    });
    session.finish_when_idle();

    let mut outcome = Outcome::default();
    let mut sent: u64 = 0;
    let mut buf = BytesMut::new();
    let mut refeed = false;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(bytes) => {
                    if let Some(cut) = cut_after {
                        let room = usize::try_from(cut.saturating_sub(sent)).unwrap_or(usize::MAX);
                        if bytes.len() >= room {
                            io.write_all(&bytes[..room]).await.map_err(io_err)?;
                            io.flush().await.map_err(io_err)?;
                            // Dropping the stream closes the socket mid-frame.
                            drop(io);
                            outcome.cut = true;
                            return Ok(outcome);
                        }
                    }
                    sent += bytes.len() as u64;
                    io.write_all(&bytes).await.map_err(io_err)?;
                }
                Output::Effect(ClientEffect::SaveIdentity(identity)) => {
                    // Nothing to persist in a benchmark; the caller keeps it in memory.
                    outcome.identity = Some(*identity);
                    let now = tokio::time::Instant::now().into_std();
                    let _queued_as_close = session.handle_identity_saved(now, Ok(()));
                    refeed = true;
                }
                Output::Effect(ClientEffect::ReadFile {
                    file: id,
                    offset,
                    max,
                }) => {
                    let data = source
                        .read(offset, max)
                        .await
                        .map_err(|e| Failure::new("local read error", e))?;
                    let now = tokio::time::Instant::now().into_std();
                    let _queued_as_close = session.handle_file_data(now, id, data);
                    refeed = true;
                }
                Output::Effect(_) => {}
                Output::Event(ClientEvent::KeyExchanged) => outcome.keyed_at = Some(Instant::now()),
                Output::Event(ClientEvent::FileVerified { .. }) => {
                    outcome.verified_at = Some(Instant::now());
                }
                Output::Event(ClientEvent::FileFailed { failure, .. }) => {
                    return Err(Failure::new("file failed", format!("{failure:?}")));
                }
                Output::Event(_) => {}
                Output::Close(CloseReason::Done) => {
                    io.flush().await.map_err(io_err)?;
                    let _peer_may_have_closed = io.shutdown().await;
                    if outcome.verified_at.is_none() {
                        return Err(Failure::new(
                            "ended unverified",
                            "the session ended before the file was verified",
                        ));
                    }
                    return Ok(outcome);
                }
                Output::Close(CloseReason::PeerClosed) => {
                    return Err(Failure::new(
                        "server closed",
                        "the server closed the connection",
                    ));
                }
                Output::Close(CloseReason::IdleTimeout) => {
                    return Err(Failure::new(
                        "idle timeout",
                        "the server was silent too long",
                    ));
                }
                Output::Close(reason) => {
                    return Err(Failure::new("session error", format!("{reason:?}")));
                }
            }
        }
        let now = tokio::time::Instant::now().into_std();
        if refeed && !buf.is_empty() {
            refeed = false;
            let _queued_as_close = session.handle_bytes(now, &mut buf);
            continue;
        }
        refeed = false;
        io.flush().await.map_err(io_err)?;
        let deadline = session
            .poll_timeout()
            .map(|(at, _)| tokio::time::Instant::from_std(at));
        buf.reserve(8 * 1024);
        tokio::select! {
            read = io.get_mut().read_buf(&mut buf) => {
                let now = tokio::time::Instant::now().into_std();
                if read.map_err(io_err)? == 0 {
                    session.handle_eof(now);
                } else {
                    let _queued_as_close = session.handle_bytes(now, &mut buf);
                }
            }
            () = sleep_until(deadline) => {
                session.handle_timeout(tokio::time::Instant::now().into_std());
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
