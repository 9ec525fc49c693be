//! Drives the sans-IO `ClientSession` over a plain blocking `std::net::TcpStream`, without
//! tokio: the same core serves any transport. Backs up one file.
//!
//! ```text
//! cargo run -p cyberbackup-examples --bin blocking_client -- 127.0.0.1:1256 alice notes.txt [me.info]
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use cyberbackup_core::identity::Identity;
use cyberbackup_core::names::NameField;
use cyberbackup_core::session::Output;
use cyberbackup_core::v3::{
    ClientConfig, ClientEffect, ClientEvent, ClientSession, CloseReason, FileSpec,
};
use rand_core::OsRng;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, name, path, rest @ ..] = args.as_slice() else {
        bail!("usage: blocking_client HOST:PORT NAME FILE [IDENTITY_FILE]");
    };
    let identity_path = Path::new(rest.first().map_or("me.info", String::as_str));
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let len = file.metadata()?.len();
    let file_name = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .context("the file has no UTF-8 name")?;

    let mut stream =
        TcpStream::connect(server.as_str()).with_context(|| format!("connecting to {server}"))?;
    stream.set_nodelay(true)?;
    let config = Arc::new(ClientConfig::default());
    let mut session = match std::fs::read_to_string(identity_path) {
        Ok(text) => ClientSession::reconnect(
            config,
            Identity::parse_me_info(&text)?,
            OsRng,
            Instant::now(),
        ),
        Err(err) if err.kind() == ErrorKind::NotFound => {
            let name = NameField::new(name.clone().into_bytes())?;
            ClientSession::register(config, name, None, OsRng, Instant::now())
        }
        Err(err) => return Err(err).context("reading the identity"),
    };
    session.backup(FileSpec {
        name: NameField::new(file_name.as_bytes().to_vec())?,
        len,
    });
    session.finish_when_idle();

    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // 1. Drain outputs, performing effects and answering them at once.
        while let Some(output) = session.poll_output() {
            match output {
                Output::Transmit(bytes) => stream.write_all(&bytes)?,
                Output::Effect(ClientEffect::SaveIdentity(identity)) => {
                    // A real client writes atomically with mode 0600 (see cyberbackup-client).
                    let result =
                        identity
                            .to_me_info()
                            .map_err(|e| e.to_string())
                            .and_then(|text| {
                                std::fs::write(identity_path, text.as_bytes())
                                    .map_err(|e| e.to_string())
                            });
                    session.handle_identity_saved(Instant::now(), result)?;
                }
                Output::Effect(ClientEffect::ReadFile {
                    file: fid,
                    offset,
                    max,
                }) => {
                    file.seek(SeekFrom::Start(offset))?;
                    let mut data = vec![0u8; max];
                    let n = file.read(&mut data)?;
                    data.truncate(n);
                    // Errors are queued as `Close(Error)` and handled below.
                    let _ = session.handle_file_data(Instant::now(), fid, Bytes::from(data));
                }
                Output::Effect(_) => {}
                Output::Event(ClientEvent::FileVerified {
                    cksum, attempts, ..
                }) => {
                    println!("{file_name}: verified, cksum {cksum}, {attempts} send(s)");
                }
                Output::Event(ClientEvent::FileFailed { failure, .. }) => {
                    println!("{file_name}: FAILED: {failure:?}");
                }
                Output::Event(event) => eprintln!("{event:?}"),
                Output::Close(CloseReason::Done) => return Ok(()),
                Output::Close(reason) => bail!("session ended: {reason:?}"),
            }
        }
        // 2. Wait for bytes or the session's deadline.
        let timeout = session.poll_timeout().map(|(at, _)| {
            at.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        stream.set_read_timeout(timeout)?;
        match stream.read(&mut chunk) {
            Ok(0) => session.handle_eof(Instant::now()),
            Ok(n) => {
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                let _ = session.handle_bytes(Instant::now(), &mut buf);
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                session.handle_timeout(Instant::now());
            }
            Err(err) => return Err(err).context("reading from the server"),
        }
    }
}
