//! Restoring the server's catalog from a `catalog backup` older than the repository: the
//! real client binary backs up twice around a catalog backup taken while the server runs;
//! the server is stopped, the older catalog put back, and the server started again. Start-up
//! recovery indexes the newer packs from their headers and records the newer snapshot again
//! after checking it like a commit, so both snapshots are listed and restore byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;

use support::{
    RealServer, check_read_data, client_command, output_text as text, restore_latest, write_pattern,
};

fn snapshot_count(dir: &std::path::Path, server: &RealServer) -> usize {
    let listed = client_command(dir, server, "carol", &["snapshots", "--json"])
        .output()
        .unwrap();
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed));
    let snapshots: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    snapshots.as_array().unwrap().len()
}

#[test]
fn a_catalog_restored_from_an_older_backup_keeps_the_snapshots_committed_after_it() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    fs::create_dir_all(&source).unwrap();
    write_pattern(&source.join("first.bin"), 3 << 20, 1);
    let backup = |args: &[&str]| {
        let output = client_command(dir.path(), &server, "carol", args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    };
    backup(&["backup", "src", "--name", "carol"]);

    let catalog = server.data.path().join("data").join("defensive.db");
    let saved = dir.path().join("catalog-backup.db");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(cyberbackup_server::catalog::backup::backup(
            catalog.clone(),
            saved.clone(),
        ))
        .unwrap();

    write_pattern(&source.join("second.bin"), 3 << 20, 2);
    backup(&["backup", "src"]);
    assert_eq!(snapshot_count(dir.path(), &server), 2);
    let data = server.stop();

    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", catalog.display());
        let _ = fs::remove_file(path);
    }
    fs::copy(&saved, &catalog).unwrap();
    let server = RealServer::restart_in(data);

    assert_eq!(snapshot_count(dir.path(), &server), 2);
    check_read_data(dir.path(), &server, "carol");
    let restored = restore_latest(dir.path(), &server, "carol", &source);
    for name in ["first.bin", "second.bin"] {
        assert_eq!(
            fs::read(restored.join(name)).unwrap(),
            fs::read(source.join(name)).unwrap(),
            "{name}"
        );
    }
}
