//! The client's web UI server (`cyberbackup_client::ui`) over real HTTP on 127.0.0.1, backing
//! up to a real server: the state stream, uploads staged within the limit and deleted after
//! the backup, typed paths, settings, errors as sentences, cancel, the request guard and the
//! history file; over protocol v4 (the default) the list of versions and restores streamed as
//! one-time downloads; v3 selectable for legacy servers.
//!
//! Runtime: under 1 s of test time in a debug build (every test starts its own server).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use admin_common::ui::{RunningUi, ui_options};
use admin_common::{Response, config_for, get, request, snapshot_backup, start};
use cyberbackup_client::v4::DEFAULT_IDENTITY_FILE;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UI: (&str, &str) = ("X-CyberBackup-UI", "1");
const JSON: (&str, &str) = ("Content-Type", "application/json");

async fn start_ui(dir: &Path, server: &str, max_staging_bytes: u64) -> RunningUi {
    let mut options = ui_options(dir, server.parse().unwrap(), "ui-test");
    options.max_staging_bytes = max_staging_bytes;
    options.retries = 0;
    RunningUi::start(options).await
}

impl RunningUi {
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

    async fn put_settings(&self, body: &Value) -> Response {
        request(
            self.addr,
            "PUT",
            "/api/settings",
            &[UI, JSON],
            body.to_string().as_bytes(),
        )
        .await
    }

    /// Adds `path`, starts a backup and returns the state once it finished.
    async fn back_up(&self, path: &Path) -> Value {
        let added = self.post_json("/api/paths", &json!({ "path": path })).await;
        assert_eq!(added.status, 200, "{}", added.body);
        let started = request(self.addr, "POST", "/api/backup", &[UI], b"").await;
        assert_eq!(started.status, 200, "{}", started.body);
        let job_id = started.json()["job"].clone();
        for _ in 0..300 {
            let state = self.state().await;
            if state["job"]["id"] == job_id && state["job"]["state"] != "running" {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the backup never finished: {}", self.state().await);
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

/// Deterministic bytes that differ per `seed` (not all one value, so a shifted or truncated
/// restore cannot match).
fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_backups_are_listed_and_each_version_restores_as_a_download() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(cyberbackup_server::ServerConfig {
        keep_versions: 5,
        ..config_for(&dir.path().join("data"))
    })
    .await;
    let ui = start_ui(dir.path(), &server.addr.to_string(), 1 << 20).await;
    let source = dir.path().join("notes.txt");
    let first = content(300_000, 1);
    let second = content(70_001, 2);

    let empty = get(ui.addr, "/api/versions", &[]).await;
    std::fs::write(&source, &first).unwrap();
    let backed_up_1 = ui.back_up(&source).await;
    std::fs::write(&source, &second).unwrap();
    let backed_up_2 = ui.back_up(&source).await;
    let listed = get(ui.addr, "/api/versions", &[]).await;
    let prepared_1 = ui
        .post_json(
            "/api/restores",
            &json!({ "name": "notes.txt", "version": 1 }),
        )
        .await;
    let url_1 = prepared_1.json()["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no download URL: {}", prepared_1.body))
        .to_owned();
    let download_1 = get(ui.addr, &url_1, &[]).await;
    let again_1 = get(ui.addr, &url_1, &[]).await;
    let prepared_newest = ui
        .post_json("/api/restores", &json!({ "name": "notes.txt" }))
        .await;
    let download_newest = get(
        ui.addr,
        prepared_newest.json()["url"].as_str().unwrap(),
        &[],
    )
    .await;
    let unknown = ui
        .post_json("/api/restores", &json!({ "name": "missing.txt" }))
        .await;
    let no_such_version = ui
        .post_json(
            "/api/restores",
            &json!({ "name": "notes.txt", "version": 9 }),
        )
        .await;
    let restore_dir = std::fs::read_dir(dir.path().join("ui")).unwrap().count();

    assert_eq!(empty.status, 200, "{}", empty.body);
    assert_eq!(empty.json()["versions"], json!([]));
    assert!(
        empty.json()["note"]
            .as_str()
            .unwrap()
            .contains("back up a file first"),
        "{}",
        empty.body
    );
    for (state, version) in [(&backed_up_1, 1), (&backed_up_2, 2)] {
        assert_eq!(state["job"]["state"], "succeeded", "{state}");
        assert_eq!(state["job"]["protocol"], "v4");
        assert_eq!(state["job"]["files"][0]["version"], version);
        assert_eq!(state["history"][0]["protocol"], "v4");
    }
    assert!(dir.path().join("cyberbackup-v4.json").exists());
    assert!(!dir.path().join("me.info").exists(), "v3 identity created");
    assert_eq!(listed.status, 200, "{}", listed.body);
    let versions = listed.json()["versions"].clone();
    assert_eq!(versions.as_array().unwrap().len(), 2, "{versions}");
    assert_eq!(versions[0]["name"], "notes.txt");
    assert_eq!(versions[0]["version"], 2);
    assert_eq!(versions[0]["size"], second.len());
    assert_eq!(versions[0]["sha256"], sha256_hex(&second));
    assert_eq!(versions[1]["version"], 1);
    assert_eq!(versions[1]["size"], first.len());
    assert_eq!(versions[1]["sha256"], sha256_hex(&first));
    assert!(
        versions[1]["stored"].as_str().unwrap().ends_with('Z'),
        "{versions}"
    );
    assert_eq!(prepared_1.status, 200, "{}", prepared_1.body);
    assert_eq!(prepared_1.json()["verified"], true);
    assert_eq!(download_1.status, 200);
    assert_eq!(download_1.bytes.len(), first.len());
    assert!(download_1.bytes == first, "version 1 restored wrong bytes");
    assert_eq!(
        download_1.header("content-disposition").as_deref(),
        Some("attachment; filename=\"notes.txt\"; filename*=UTF-8''notes.txt")
    );
    assert_eq!(
        download_1.header("x-content-sha256"),
        Some(sha256_hex(&first))
    );
    assert_eq!(again_1.status, 404);
    assert!(
        again_1.body.contains("already downloaded"),
        "{}",
        again_1.body
    );
    assert_eq!(prepared_newest.json()["version"], 2);
    assert!(
        download_newest.bytes == second,
        "newest restored wrong bytes"
    );
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let unknown_message = unknown.json()["error"].as_str().unwrap().to_owned();
    assert!(
        unknown_message.contains("no such file or version")
            && unknown_message.contains("press Refresh")
            && !unknown_message.contains("`list`"),
        "{unknown_message}"
    );
    assert_eq!(no_such_version.status, 404, "{}", no_such_version.body);
    assert_eq!(restore_dir, 1, "only the history file beside the UI store");
    ui.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_stays_selectable_and_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config_for(&dir.path().join("data"))).await;
    let ui = start_ui(dir.path(), &server.addr.to_string(), 1 << 20).await;
    let server_addr = server.addr.to_string();
    let source = dir.path().join("legacy.txt");
    std::fs::write(&source, content(5_000, 3)).unwrap();

    let bad_fingerprint = ui
        .put_settings(
            &json!({ "server": server_addr, "name": "ui-test", "server_fingerprint": "abc" }),
        )
        .await;
    let to_v3 = ui
        .put_settings(&json!({
            "server": server_addr, "name": "ui-test", "protocol": "v3",
            "enroll_token": "secret-enroll-token",
        }))
        .await;
    let state_v3 = ui.state().await;
    let raw_state = get(ui.addr, "/api/state", &[]).await;
    let backed_up = ui.back_up(&source).await;
    let identities_after_v3 = (
        dir.path().join("me.info").exists(),
        dir.path().join("cyberbackup-v4.json").exists(),
    );
    let listed_v3 = get(ui.addr, "/api/versions", &[]).await;
    let restore_v3 = ui
        .post_json("/api/restores", &json!({ "name": "legacy.txt" }))
        .await;
    let to_v4 = ui
        .put_settings(&json!({ "server": server_addr, "name": "ui-v4", "protocol": "v4", "enroll_token": "" }))
        .await;
    let backed_up_v4 = ui.back_up(&source).await;
    let back_to_v3 = ui
        .put_settings(&json!({ "server": server_addr, "name": "ui-test", "protocol": "v3" }))
        .await;
    ui.post_json("/api/paths", &json!({ "path": source })).await;
    let refused_v3 = request(ui.addr, "POST", "/api/backup", &[UI], b"").await;
    let history_file: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("ui").join("ui-history.json")).unwrap(),
    )
    .unwrap();

    assert_eq!(bad_fingerprint.status, 400);
    assert!(
        bad_fingerprint.body.contains("sha256:")
            && bad_fingerprint
                .body
                .contains("cyberbackup-server fingerprint"),
        "{}",
        bad_fingerprint.body
    );
    assert_eq!(to_v3.status, 200, "{}", to_v3.body);
    assert_eq!(state_v3["settings"]["protocol"], "v3");
    assert_eq!(state_v3["settings"]["enroll_token_set"], true);
    assert!(
        !raw_state.body.contains("secret-enroll-token"),
        "the enrollment token reached the page"
    );
    assert_eq!(backed_up["job"]["state"], "succeeded", "{backed_up}");
    assert_eq!(backed_up["job"]["protocol"], "v3");
    assert_eq!(backed_up["history"][0]["protocol"], "v3");
    assert_eq!(identities_after_v3, (true, false), "(me.info, v4 identity)");
    assert_eq!(listed_v3.status, 200);
    assert_eq!(listed_v3.json()["versions"], json!([]));
    assert!(
        listed_v3.json()["note"]
            .as_str()
            .unwrap()
            .contains("choose protocol v4"),
        "{}",
        listed_v3.body
    );
    assert_eq!(restore_v3.status, 409);
    assert!(
        restore_v3.body.contains("protocol v4"),
        "{}",
        restore_v3.body
    );
    assert_eq!(to_v4.status, 200);
    assert_eq!(backed_up_v4["job"]["state"], "succeeded", "{backed_up_v4}");
    assert_eq!(backed_up_v4["job"]["protocol"], "v4");
    assert_eq!(back_to_v3.status, 200);
    assert_eq!(refused_v3.status, 409);
    assert!(
        refused_v3.body.contains("never fall back to v3")
            && refused_v3.body.contains("choose protocol v4"),
        "{}",
        refused_v3.body
    );
    assert_eq!(history_file["settings"]["protocol"], "v3");
    assert!(history_file["settings"].get("enroll_token").is_none());
    ui.shutdown().await;
    server.stop().await;
}

/// Every answer of the UI, pages and API alike, refuses framing by another site and MIME
/// sniffing (the same headers as the server's dashboard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_refuses_framing_and_sniffing() {
    let dir = tempfile::tempdir().unwrap();
    let ui = start_ui(dir.path(), "127.0.0.1:9", 1024).await;

    let page = get(ui.addr, "/", &[]).await;
    let script = get(ui.addr, "/assets/ui.js", &[]).await;
    let state = get(ui.addr, "/api/state", &[]).await;
    let refused = get(ui.addr, "/api/state", &[("Host", "evil.example:9090")]).await;

    assert_eq!(page.status, 200);
    assert_eq!(refused.status, 403);
    for response in [&page, &script, &state, &refused] {
        for (name, value) in [
            ("x-frame-options", "DENY"),
            ("content-security-policy", "frame-ancestors 'none'"),
            ("x-content-type-options", "nosniff"),
        ] {
            assert_eq!(
                response.header(name).as_deref(),
                Some(value),
                "{}",
                response.head
            );
        }
    }
    ui.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_browse_search_diff_restore_and_download_as_tar() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config_for(&dir.path().join("data"))).await;
    let ui = start_ui(dir.path(), &server.addr.to_string(), 1 << 20).await;
    let tree = dir.path().join("tree");
    let deep = tree.join("a").join("b").join("c");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("report-2026.txt"), vec![b'r'; 300_000]).unwrap();
    std::fs::write(tree.join("a").join("notes.md"), b"first").unwrap();
    for i in 0..150 {
        std::fs::write(tree.join(format!("f{i:03}")), vec![b'x'; i]).unwrap();
    }
    snapshot_backup(
        server.addr,
        &dir.path().join(DEFAULT_IDENTITY_FILE),
        "ui-test",
        &tree,
    )
    .await;
    std::fs::write(tree.join("a").join("notes.md"), b"second, longer").unwrap();
    std::fs::write(tree.join("added.txt"), b"new").unwrap();
    snapshot_backup(
        server.addr,
        &dir.path().join(DEFAULT_IDENTITY_FILE),
        "ui-test",
        &tree,
    )
    .await;
    let hex_of = |path: &Path| hex::encode(path.as_os_str().as_encoded_bytes());

    let listed = get(ui.addr, "/api/snapshots", &[]).await.json();
    let newest = listed["snapshots"][0]["id"].as_str().unwrap().to_owned();
    let deep_dir = get(
        ui.addr,
        &format!("/api/snapshots/{newest}/dir?path={}", hex_of(&deep)),
        &[],
    )
    .await
    .json();
    let root_page = get(
        ui.addr,
        &format!(
            "/api/snapshots/{newest}/dir?path={}&offset=100&limit=40&sort=size&order=desc",
            hex_of(&tree)
        ),
        &[],
    )
    .await
    .json();
    let found = get(
        ui.addr,
        &format!("/api/snapshots/{newest}/search?q=REPORT"),
        &[],
    )
    .await
    .json();
    let changes = get(ui.addr, &format!("/api/snapshots/{newest}/diff"), &[])
        .await
        .json();
    let missing = get(
        ui.addr,
        &format!(
            "/api/snapshots/{newest}/dir?path={}",
            hex_of(&tree.join("nope"))
        ),
        &[],
    )
    .await;
    let tar = get(
        ui.addr,
        &format!(
            "/api/snapshots/{newest}/download?path={}",
            hex_of(&tree.join("a"))
        ),
        &[],
    )
    .await;
    let target = dir.path().join("restored");
    let started = ui
        .post_json(
            &format!("/api/snapshots/{newest}/restore"),
            &json!({ "path": hex_of(&tree.join("a")), "target": target }),
        )
        .await;
    let mut restore = Value::Null;
    for _ in 0..300 {
        restore = ui.state().await["snapshot_restore"].clone();
        if restore["state"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(listed["snapshots"][0]["files"], 153);
    assert_eq!(
        deep_dir["entries"][0]["name"], "report-2026.txt",
        "{deep_dir}"
    );
    assert_eq!(deep_dir["entries"][0]["size"], 300_000);
    assert_eq!(root_page["total"], 152, "{root_page}");
    let sizes: Vec<u64> = root_page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes.len(), 40);
    assert_eq!(sizes.first(), Some(&49), "{root_page}");
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
    assert_eq!(found["hits"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(
        found["hits"][0]["path"],
        deep.join("report-2026.txt").display().to_string()
    );
    assert_eq!(changes["added"], 1, "{changes}");
    assert_eq!(changes["modified"], 1, "{changes}");
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(tar.status, 200, "{}", tar.head);
    let extracted = dir.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    std::fs::write(dir.path().join("a.tar"), &tar.bytes).unwrap();
    let untar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(dir.path().join("a.tar"))
        .arg("-C")
        .arg(&extracted)
        .status()
        .unwrap();
    assert!(untar.success());
    assert_eq!(
        std::fs::read(extracted.join("a/b/c/report-2026.txt")).unwrap(),
        vec![b'r'; 300_000]
    );
    assert_eq!(
        std::fs::read(extracted.join("a/notes.md")).unwrap(),
        b"second, longer"
    );
    assert_eq!(started.status, 200, "{}", started.body);
    assert_eq!(restore["state"], "succeeded", "{restore}");
    assert_eq!(restore["bytes_written"], 300_000 + 14);
    assert_eq!(restore["bytes_total"], 300_000 + 14);
    assert_eq!(
        std::fs::read(target.join("b/c/report-2026.txt")).unwrap(),
        vec![b'r'; 300_000]
    );
    ui.shutdown().await;
    server.stop().await;
}

/// A repository created with the device key only is flagged in the timeline until a
/// passphrase is set from the page; then the passphrase alone opens it (as on another
/// machine), and changing it needs the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_passphrase_is_set_from_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config_for(&dir.path().join("data"))).await;
    let ui = start_ui(dir.path(), &server.addr.to_string(), 1 << 20).await;
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a.txt"), b"alpha").unwrap();
    let identity = dir.path().join(DEFAULT_IDENTITY_FILE);
    snapshot_backup(server.addr, &identity, "ui-test", &tree).await;

    let listed = get(ui.addr, "/api/snapshots", &[]).await.json();
    let warning = listed["warning"].as_str().unwrap_or_default();
    assert!(warning.contains("passphrase"), "{listed}");
    let empty = ui
        .post_json("/api/repository/key", &json!({ "new": "" }))
        .await;
    assert_eq!(empty.status, 400, "{}", empty.body);
    let set = ui
        .post_json(
            "/api/repository/key",
            &json!({ "new": "correct horse battery" }),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert!(
        set.json()["message"]
            .as_str()
            .unwrap()
            .contains("first passphrase")
    );
    let listed = get(ui.addr, "/api/snapshots", &[]).await.json();
    assert!(listed["warning"].is_null(), "{listed}");

    // The passphrase alone opens the repository: a machine without this device key.
    let other_device = dir.path().join("other-machine").join("device.key");
    std::fs::create_dir_all(other_device.parent().unwrap()).unwrap();
    let mut keys = cyberbackup_client::snapshot::KeyOptions::new(&identity);
    keys.device_key = other_device;
    let keys = keys.with_passphrase(b"correct horse battery");
    let client = cyberbackup_client::v4::V4Client::connect(
        &cyberbackup_client::v4::V4Options::new(server.addr.to_string(), identity.clone()),
    )
    .await
    .unwrap();
    let repo = cyberbackup_client::snapshot::Repository::open(client, &keys)
        .await
        .unwrap();
    assert_eq!(
        repo.opened().opened_by,
        cyberbackup_client::snapshot::OpenedBy::Recovered
    );
    repo.into_remote().close().await.unwrap();

    // Changing it needs the current one.
    let change = ui
        .post_json("/api/repository/key", &json!({ "new": "another one" }))
        .await;
    assert_eq!(change.status, 400, "{}", change.body);
    assert!(
        change.body.contains("current passphrase"),
        "{}",
        change.body
    );
    ui.shutdown().await;
    server.stop().await;
}
