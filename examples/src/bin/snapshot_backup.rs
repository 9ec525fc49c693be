//! Embeds the snapshot engine: connects over v4, opens (or creates) the client's repository,
//! backs up a directory as a snapshot, lists the snapshots and restores the newest into a
//! directory, verified. What `cyberbackup-client backup` / `snapshots` / `restore` do,
//! through the library API.
//!
//! ```text
//! CYBERBACKUP_PASSWORD='passphrase' \
//!   cargo run -p cyberbackup-examples --bin snapshot_backup -- 127.0.0.1:1256 alice ./docs /tmp/restored
//! ```
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::bail;
use cyberbackup_client::snapshot::{
    BackupOptions, KeyOptions, NoObserver, Repository, RestoreFilter,
};
use cyberbackup_client::v4::{V4Client, V4Options};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, name, source, target] = args.as_slice() else {
        bail!("usage: snapshot_backup HOST:PORT NAME DIR TARGET_DIR");
    };
    let identity = PathBuf::from(format!("{name}-v4.json"));
    let options = V4Options::new(server.as_str(), identity.clone()).with_name(name.as_str());
    let client = V4Client::connect(&options).await?;

    // The device key lives beside the identity; the passphrase wraps a second key object
    // for recovery on another machine.
    let mut keys = KeyOptions::new(&identity);
    if let Ok(passphrase) = std::env::var("CYBERBACKUP_PASSWORD") {
        keys = keys.with_passphrase(passphrase.as_bytes());
    }
    let mut repo = Repository::open(client, &keys).await?;
    if let Some(warning) = &repo.opened().warning {
        println!("warning: {warning}");
    }

    let backup = BackupOptions {
        paths: vec![PathBuf::from(source)],
        ..BackupOptions::default()
    };
    let summary = repo.backup(&backup, &mut NoObserver).await?;
    println!(
        "snapshot {}: {} new, {} changed, {} unmodified file(s), {} bytes added",
        summary.snapshot_id,
        summary.files_new,
        summary.files_changed,
        summary.files_unmodified,
        summary.bytes_added
    );

    for snapshot in repo.snapshots().await? {
        println!("{}", snapshot.table_row().join("  "));
    }

    let restored = repo
        .restore("latest", b"/", target.as_ref(), &RestoreFilter::default())
        .await?;
    println!(
        "restored {} file(s), {} bytes into {target}",
        restored.files_restored, restored.bytes_written
    );
    repo.into_remote().close().await?;
    Ok(())
}
