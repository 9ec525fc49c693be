//! The client UI's background work on snapshots ends when nobody needs it: a folder
//! download the browser abandons ends its export task (which closes its connection to the
//! server rather than running on, or waiting forever for a reader), and a restore still
//! running when the UI stops is stopped with it. An unknown archive format is refused with
//! a sentence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use admin_common::ui::{RunningUi, ui_options};
use admin_common::{Running, config_for, get, request, snapshot_backup, start};
use cyberbackup_client::v4::DEFAULT_IDENTITY_FILE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Files of [`FILE_BYTES`] in the backed-up tree.
const FILES: usize = 16;
/// 16 × 1 MiB that does not compress: far more than the pipe and socket buffers hold.
const FILE_BYTES: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_folder_download_ends_its_export_and_closes_its_server_connection() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(dir.path()).await;
    let browsing = setup.connections_after_browsing().await;

    let refused = get(
        setup.ui.addr,
        &format!(
            "/api/snapshots/{}/download?path={}&format=rar",
            setup.id, setup.folder
        ),
        &[],
    )
    .await;
    let mut stream = TcpStream::connect(setup.ui.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /api/snapshots/{}/download?path={}&format=zip HTTP/1.1\r\n\
                 Host: {}\r\nConnection: close\r\n\r\n",
                setup.id, setup.folder, setup.ui.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut first = vec![0; 64 * 1024];
    stream.read_exact(&mut first).await.unwrap();
    let exporting = setup.connections().await;
    drop(stream);
    let after = setup.connections_falling_to(browsing).await;

    assert_eq!(browsing, 1, "the UI's browsing connection");
    assert_eq!(refused.status, 400);
    assert!(
        refused.body.contains("choose format=tar or format=zip"),
        "{}",
        refused.body
    );
    assert!(first.starts_with(b"HTTP/1.1 200"), "not a download");
    assert_eq!(exporting, browsing + 1, "the export has its own connection");
    assert_eq!(
        after, browsing,
        "the export's server connection is still open 10 s after the download was dropped"
    );
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_running_when_the_ui_stops_is_stopped_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(dir.path()).await;
    setup.connections_after_browsing().await;
    let target = dir.path().join("restored");

    let started = request(
        setup.ui.addr,
        "POST",
        &format!("/api/snapshots/{}/restore", setup.id),
        &[
            ("X-CyberBackup-UI", "1"),
            ("Content-Type", "application/json"),
        ],
        serde_json::json!({ "path": setup.folder, "target": target })
            .to_string()
            .as_bytes(),
    )
    .await;
    setup.ui.shutdown().await;
    let after = Setup::connections_of(setup.server.admin, 0).await;
    // Were the restore still running, it would finish well within this.
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert_eq!(started.status, 200, "{}", started.body);
    assert_eq!(
        after, 0,
        "a connection is still open 10 s after the UI stopped"
    );
    let restored = restored_files(&target);
    assert!(
        restored < FILES,
        "the restore ran on after the UI stopped ({restored} of {FILES} files written)"
    );
    setup.server.stop().await;
}

/// A real server holding one snapshot of a tree of [`FILES`] files, and a client UI for it.
struct Setup {
    server: Running,
    ui: RunningUi,
    /// The snapshot's ID.
    id: String,
    /// The tree's path, as the UI's `path` parameter.
    folder: String,
}

impl Setup {
    async fn new(dir: &Path) -> Self {
        // Longer than the test: an idle connection is not what the server closes here.
        let config = cyberbackup_server::ServerConfig {
            idle_timeout_secs: 300,
            ..config_for(&dir.join("data"))
        };
        let server = start(config).await;
        let tree = dir.join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for i in 0..FILES {
            let bytes: Vec<u8> = (0..FILE_BYTES)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()[0]
                })
                .collect();
            std::fs::write(tree.join(format!("big{i:02}")), bytes).unwrap();
        }
        snapshot_backup(
            server.addr,
            &dir.join(DEFAULT_IDENTITY_FILE),
            "ui-test",
            &tree,
        )
        .await;
        let ui = RunningUi::start(ui_options(dir, server.addr, "ui-test")).await;
        let listed = get(ui.addr, "/api/snapshots", &[]).await.json();
        let id = listed["snapshots"][0]["id"].as_str().unwrap().to_owned();
        let folder = hex::encode(tree.as_os_str().as_encoded_bytes());
        Self {
            server,
            ui,
            id,
            folder,
        }
    }

    /// The server's open backup connections.
    async fn connections(&self) -> u64 {
        Self::connections_of(self.server.admin, u64::MAX).await
    }

    /// The UI's browsing connection stays open after the listing; the backup's closes in
    /// its own time: the count once it is down to one (or after 10 s).
    async fn connections_after_browsing(&self) -> u64 {
        self.connections_falling_to(1).await
    }

    /// The count once it is down to `goal`, or after 10 s.
    async fn connections_falling_to(&self, goal: u64) -> u64 {
        Self::connections_of(self.server.admin, goal).await
    }

    /// As [`Self::connections_falling_to`], by the admin address (`u64::MAX`: at once).
    async fn connections_of(admin: SocketAddr, goal: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = get(admin, "/api/v1/overview", &[]).await.json()["connections"]
                .as_u64()
                .unwrap();
            if goal == u64::MAX || now <= goal || Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.ui.shutdown().await;
        self.server.stop().await;
    }
}

/// Regular files written under `target` so far (temporary ones included).
fn restored_files(target: &Path) -> usize {
    walkdir::WalkDir::new(target)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_file())
        .count()
}
