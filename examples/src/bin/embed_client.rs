//! Embeds the `cyberbackup-client` library: backs up one file to a v3 server.
//!
//! ```text
//! cargo run -p cyberbackup-examples --bin embed_client -- 127.0.0.1:1256 alice notes.txt [me.info]
//! ```
//!
//! The identity is read from (and on the first run written to) the given file, `me.info`
//! in the working directory by default. Progress events arrive through a closure.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::{Context, bail};
use cyberbackup_client::{Client, ClientOptions, IdentityFile, ProgressEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, name, file, rest @ ..] = args.as_slice() else {
        bail!("usage: embed_client HOST:PORT NAME FILE [IDENTITY_FILE]");
    };
    let identity = IdentityFile::new(rest.first().map_or("me.info", String::as_str));
    let options = ClientOptions::new(server.as_str(), name.as_str(), identity);

    let mut progress = |event: &ProgressEvent| match event {
        ProgressEvent::Transfer(p) => eprint!(
            "\r{}: {}/{} bytes ({:?})   ",
            p.name, p.sent, p.total, p.phase
        ),
        other => {
            if let Some(line) = other.describe() {
                eprintln!("\n{line}");
            }
        }
    };
    let mut client = Client::connect(options, &mut progress)
        .await
        .context("connecting")?;
    let report = client.backup_file(file.as_str(), &mut progress).await?;
    client.close(&mut progress).await?;

    match &report.failure {
        None => println!(
            "{} stored as {:?}, cksum {}, {} send(s)",
            report.path.display(),
            report.stored_name,
            report.cksum.unwrap_or_default(),
            report.attempts
        ),
        Some(failure) => bail!("{failure}"),
    }
    Ok(())
}
