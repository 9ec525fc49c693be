//! The client's web UI server (`cyberbackup_client::ui`) over real HTTP on 127.0.0.1, backing
//! up to a real server: the state stream, uploads staged within the limit and deleted after
//! the backup, typed paths, settings, errors as sentences, cancel, the request guard and the
//! history file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use admin_common::{Response, config_for, get, request, start};
use cyberbackup_client::IdentityFile;
use cyberbackup_client::ui::{UiOptions, UiServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UI: (&str, &str) = ("X-CyberBackup-UI", "1");
const JSON: (&str, &str) = ("Content-Type", "application/json");

struct RunningUi {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), cyberbackup_client::ClientError>>,
}

async fn start_ui(dir: &Path, server: &str, max_staging_bytes: u64) -> RunningUi {
    let mut options = UiOptions::new(
        dir.join("ui").join("ui-history.json"),
        IdentityFile::new(dir.join("me.info")),
    );
    options.listen = "127.0.0.1:0".parse().unwrap();
    options.default_server = Some(server.to_owned());
    options.default_name = Some("ui-test".into());
    options.max_staging_bytes = max_staging_bytes;
    options.retries = 0;
    let ui = UiServer::bind(options).await.unwrap();
    let addr = ui.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ui.serve(async {
        let _ = stopped.await;
    }));
    RunningUi { addr, stop, task }
}

impl RunningUi {
    async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }

    async fn post_json(&self, path: &str, body: &Value) -> Response {
        request(
            self.addr,
            "POST",
            path,
            &[UI, JSON],
            body.to_string().as_bytes(),
        )
        .await
    }

    async fn upload(&self, name: &str, content: &[u8]) -> Response {
        let boundary = "cbtestboundary";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(content);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let content_type = format!("multipart/form-data; boundary={boundary}");
        request(
            self.addr,
            "POST",
            "/api/uploads",
            &[UI, ("Content-Type", &content_type)],
            &body,
        )
        .await
    }

    async fn state(&self) -> Value {
        get(self.addr, "/api/state", &[]).await.json()
    }

    /// Polls the state until the job is no longer running.
    async fn finished_job(&self) -> Value {
        for _ in 0..300 {
            let state = self.state().await;
            if state["job"]["state"] != "running" && !state["job"].is_null() {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the backup never finished: {}", self.state().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_path_back_up_to_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config_for(&dir.path().join("data"))).await;
    let ui = start_ui(dir.path(), &server.addr.to_string(), 1 << 20).await;
    let typed = dir.path().join("typed.txt");
    std::fs::write(&typed, b"typed content").unwrap();
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("one.txt"), b"1").unwrap();
    std::fs::write(folder.join("two.txt"), b"22").unwrap();

    let first_event = read_first_sse_event(ui.addr).await;
    let uploaded = ui.upload("up.bin", &[9u8; 4096]).await;
    let staged_path = uploaded.json()["added"][0]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    let staged_before = std::path::PathBuf::from(&staged_path).exists();
    let typed_added = ui.post_json("/api/paths", &json!({ "path": typed })).await;
    let folder_added = ui.post_json("/api/paths", &json!({ "path": folder })).await;
    let before = ui.state().await;
    let started = request(ui.addr, "POST", "/api/backup", &[UI], b"").await;
    let after = ui.finished_job().await;
    let history_file: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("ui").join("ui-history.json")).unwrap(),
    )
    .unwrap();

    assert!(first_event.starts_with("event: state"), "{first_event}");
    assert!(first_event.contains("\"settings\""), "{first_event}");
    assert_eq!(uploaded.status, 200, "{}", uploaded.body);
    assert!(staged_before);
    assert_eq!(typed_added.status, 200, "{}", typed_added.body);
    assert_eq!(folder_added.json()["added"].as_array().unwrap().len(), 2);
    assert_eq!(before["items"].as_array().unwrap().len(), 4);
    assert_eq!(before["staging"]["used"], 4096);
    assert_eq!(started.status, 200, "{}", started.body);
    let job = &after["job"];
    assert_eq!(job["state"], "succeeded", "{after}");
    assert_eq!(job["overall"]["percent"], 100.0);
    assert_eq!(job["overall"]["sent"], 4096 + 13 + 1 + 2);
    assert!(
        job["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["status"] == "verified" && f["percent"] == 100.0)
    );
    assert_eq!(after["items"], json!([]));
    assert_eq!(after["staging"]["used"], 0);
    assert!(
        !std::path::PathBuf::from(&staged_path).exists(),
        "staged upload not deleted"
    );
    assert_eq!(after["history"][0]["result"], "succeeded");
    assert_eq!(after["history"][0]["verified"], 4);
    assert_eq!(
        history_file["history"][0]["file_names"],
        json!(["up.bin", "typed.txt", "one.txt", "two.txt"])
    );
    assert_eq!(history_file["settings"]["name"], "ui-test");
    ui.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_sentences_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_addr = closed.local_addr().unwrap();
    drop(closed);
    let ui = start_ui(dir.path(), &refused_addr.to_string(), 1024).await;

    let too_big = ui.upload("big.bin", &[0u8; 2048]).await;
    let missing = ui
        .post_json("/api/paths", &json!({ "path": "/no/such/file.txt" }))
        .await;
    let relative = ui
        .post_json("/api/paths", &json!({ "path": "notes.txt" }))
        .await;
    let bad_server = request(
        ui.addr,
        "PUT",
        "/api/settings",
        &[UI, JSON],
        json!({ "server": "nohost", "name": "x" })
            .to_string()
            .as_bytes(),
    )
    .await;
    let no_files = request(ui.addr, "POST", "/api/backup", &[UI], b"").await;
    let small = ui.upload("small.txt", b"hello").await;
    let no_header = request(ui.addr, "POST", "/api/backup", &[], b"").await;
    let rebinding = request(
        ui.addr,
        "GET",
        "/api/state",
        &[("Host", "evil.example:9090")],
        b"",
    )
    .await;
    let started = request(ui.addr, "POST", "/api/backup", &[UI], b"").await;
    let failed = ui.finished_job().await;

    assert_eq!(too_big.status, 413);
    assert!(too_big.body.contains("staging limit"), "{}", too_big.body);
    assert_eq!(missing.status, 400);
    assert!(
        missing.body.contains("does not exist — check the path"),
        "{}",
        missing.body
    );
    assert_eq!(relative.status, 400);
    assert!(relative.body.contains("absolute path"), "{}", relative.body);
    assert_eq!(bad_server.status, 400);
    assert!(bad_server.body.contains("HOST:PORT"), "{}", bad_server.body);
    assert_eq!(no_files.status, 400);
    assert!(
        no_files.body.contains("add files first"),
        "{}",
        no_files.body
    );
    assert_eq!(small.status, 200);
    assert_eq!(no_header.status, 403);
    assert_eq!(rebinding.status, 403);
    assert_eq!(started.status, 200);
    let message = failed["job"]["message"].as_str().unwrap();
    assert!(
        message.contains(&refused_addr.to_string()) && message.contains("is the server running"),
        "{message}"
    );
    assert_eq!(failed["job"]["state"], "failed");
    assert_eq!(failed["history"][0]["result"], "failed");
    ui.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_backup_that_hangs() {
    let dir = tempfile::tempdir().unwrap();
    // A "server" that accepts and never answers: the backup waits until cancelled.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let ui = start_ui(dir.path(), &silent_addr.to_string(), 1 << 20).await;
    ui.upload("wait.txt", b"never sent").await;

    let started = request(ui.addr, "POST", "/api/backup", &[UI], b"").await;
    let mut running = ui.state().await;
    for _ in 0..50 {
        if running["job"]["phase"]
            .as_str()
            .is_some_and(|p| p.starts_with("connecting"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        running = ui.state().await;
    }
    let second = request(ui.addr, "POST", "/api/backup", &[UI], b"").await;
    let cancelled = request(ui.addr, "POST", "/api/cancel", &[UI], b"").await;
    let after = ui.finished_job().await;
    let again = request(ui.addr, "POST", "/api/cancel", &[UI], b"").await;

    assert_eq!(started.status, 200);
    assert_eq!(running["job"]["state"], "running");
    assert_eq!(second.status, 409);
    assert_eq!(cancelled.status, 200);
    assert_eq!(after["job"]["state"], "cancelled");
    assert_eq!(after["history"][0]["result"], "cancelled");
    assert_eq!(again.status, 409);
    ui.shutdown().await;
    holder.abort();
}

/// Opens the event stream and returns its first event.
async fn read_first_sse_event(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains("\n\n")
        || !String::from_utf8_lossy(&raw).contains("event: state")
    {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "stream closed");
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let start = text.find("event: state").unwrap();
    text[start..].to_owned()
}
