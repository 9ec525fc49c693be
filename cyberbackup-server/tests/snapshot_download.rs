//! A folder download from the client UI that the browser abandons: once the HTTP
//! connection is gone, the export task behind it stops and closes its connection to the
//! server (rather than running on, or waiting forever for a reader), and an unknown
//! archive format is refused with a sentence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_common;

use std::time::{Duration, Instant};

use admin_common::{config_for, get, snapshot_backup, start};
use cyberbackup_client::IdentityFile;
use cyberbackup_client::ui::{UiOptions, UiServer};
use cyberbackup_client::v4::DEFAULT_IDENTITY_FILE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_folder_download_ends_its_export_and_closes_its_server_connection() {
    let dir = tempfile::tempdir().unwrap();
    // Longer than the test: an idle connection is not what the server closes here.
    let config = cyberbackup_server::ServerConfig {
        idle_timeout_secs: 300,
        ..config_for(&dir.path().join("data"))
    };
    let server = start(config).await;
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    // 16 MiB that does not compress: far more than the pipe and socket buffers hold.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..4 {
        let bytes: Vec<u8> = (0..4 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        std::fs::write(tree.join(format!("big{i}")), bytes).unwrap();
    }
    snapshot_backup(
        server.addr,
        &dir.path().join(DEFAULT_IDENTITY_FILE),
        "ui-test",
        &tree,
    )
    .await;
    let mut options = UiOptions::new(
        dir.path().join("ui").join("ui-history.json"),
        IdentityFile::new(dir.path().join("me.info")),
    );
    options.listen = "127.0.0.1:0".parse().unwrap();
    options.default_server = Some(server.addr.to_string());
    options.default_name = Some("ui-test".into());
    let ui = UiServer::bind(options).await.unwrap();
    let ui_addr = ui.local_addr().unwrap();
    let (stop_ui, stopped) = tokio::sync::oneshot::channel::<()>();
    let ui_task = tokio::spawn(ui.serve(async {
        let _ = stopped.await;
    }));
    let listed = get(ui_addr, "/api/snapshots", &[]).await.json();
    let id = listed["snapshots"][0]["id"].as_str().unwrap().to_owned();
    let folder = hex::encode(tree.as_os_str().as_encoded_bytes());
    let connections = || async {
        get(server.admin, "/api/v1/overview", &[]).await.json()["connections"]
            .as_u64()
            .unwrap()
    };
    // The UI's browsing connection stays open; the backup's closes in its own time.
    let deadline = Instant::now() + Duration::from_secs(10);
    while connections().await != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let browsing = connections().await;

    let refused = get(
        ui_addr,
        &format!("/api/snapshots/{id}/download?path={folder}&format=rar"),
        &[],
    )
    .await;
    let mut stream = TcpStream::connect(ui_addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /api/snapshots/{id}/download?path={folder}&format=zip HTTP/1.1\r\n\
                 Host: {ui_addr}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut first = vec![0; 64 * 1024];
    stream.read_exact(&mut first).await.unwrap();
    let exporting = connections().await;
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = exporting;
    while after > browsing && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = connections().await;
    }

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
    let _ = stop_ui.send(());
    ui_task.await.unwrap().unwrap();
    server.stop().await;
}
