//! A minimal tokio driver of `ClientSession` for the many-clients scenario: it registers
//! with a key pair generated before the clock starts (the client library always generates
//! its own), backs up one file and closes. Same loop as the client library's connection:
//! write transmits, answer effects at once, re-feed buffered bytes, then read or time out.

use std::io::SeekFrom;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use cyberbackup_core::crypto::ClientKeyPair;
use cyberbackup_core::frame::NameField;
use cyberbackup_core::session::{
    ClientConfig, ClientEffect, ClientEvent, ClientSession, CloseReason, FileSpec, Output,
};
use rand_core::OsRng;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;

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
    stream.set_nodelay(true)?;
    let mut io = BufWriter::with_capacity(64 * 1024, stream);
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().await?.len();
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let now = tokio::time::Instant::now().into_std();
    let mut session = ClientSession::register(
        config,
        NameField::new(name.as_bytes().to_vec()).map_err(|e| anyhow!("bad client name: {e}"))?,
        Some(key),
        OsRng,
        now,
    );
    session.backup(FileSpec {
        name: NameField::new(file_name.into_bytes()).map_err(|e| anyhow!("bad file name: {e}"))?,
        len,
    });
    session.finish_when_idle();

    let mut buf = BytesMut::new();
    let mut refeed = false;
    let mut keyed_at = None;
    let mut verified_at = None;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(bytes) => io.write_all(&bytes).await?,
                Output::Effect(ClientEffect::SaveIdentity(_)) => {
                    // Nothing to persist in a benchmark; the session only needs the answer.
                    let now = tokio::time::Instant::now().into_std();
                    let _queued_as_close = session.handle_identity_saved(now, Ok(()));
                    refeed = true;
                }
                Output::Effect(ClientEffect::ReadFile {
                    file: id,
                    offset,
                    max,
                }) => {
                    file.seek(SeekFrom::Start(offset)).await?;
                    let mut data = BytesMut::with_capacity(max);
                    while data.len() < max {
                        let want = u64::try_from(max - data.len()).unwrap_or(u64::MAX);
                        if (&mut file).take(want).read_buf(&mut data).await? == 0 {
                            break;
                        }
                    }
                    let now = tokio::time::Instant::now().into_std();
                    let _queued_as_close = session.handle_file_data(now, id, data.freeze());
                    refeed = true;
                }
                Output::Effect(_) => {}
                Output::Event(ClientEvent::KeyExchanged) => keyed_at = Some(Instant::now()),
                Output::Event(ClientEvent::FileVerified { .. }) => {
                    verified_at = Some(Instant::now());
                }
                Output::Event(ClientEvent::FileFailed { failure, .. }) => {
                    bail!("the file failed: {failure:?}");
                }
                Output::Event(_) => {}
                Output::Close(CloseReason::Done) => {
                    io.flush().await?;
                    let _peer_may_have_closed = io.shutdown().await;
                    let (Some(keyed), Some(verified)) = (keyed_at, verified_at) else {
                        bail!("the session ended before the file was verified");
                    };
                    return Ok(Timing {
                        total: verified - start,
                        file: verified - keyed,
                    });
                }
                Output::Close(reason) => bail!("the session ended: {reason:?}"),
            }
        }
        let now = tokio::time::Instant::now().into_std();
        if refeed && !buf.is_empty() {
            refeed = false;
            let _queued_as_close = session.handle_bytes(now, &mut buf);
            continue;
        }
        refeed = false;
        io.flush().await?;
        let deadline = session
            .poll_timeout()
            .map(|(at, _)| tokio::time::Instant::from_std(at));
        buf.reserve(8 * 1024);
        tokio::select! {
            read = io.get_mut().read_buf(&mut buf) => {
                let now = tokio::time::Instant::now().into_std();
                if read? == 0 {
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
