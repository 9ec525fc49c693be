//! A snapshot backup's pack upload is listed in `/api/v1/transfers` (and the overview) while
//! it arrives, by its pack ID and with its announced size, never with a file name, and is
//! gone once the connection drops. The client is a v4 client written from the spec
//! (`support::RawV4`), so the put can be held half-sent while the API is read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_common;
mod repo_fixture;
mod support;

use std::time::Duration;

use admin_common::{config_for, get, start};
use cyberbackup_core::repo::PackId;
use cyberbackup_core::v4::repository::{PutTarget, RepoReply, RepoRequest};
use cyberbackup_core::v4::wire::ServerMessage;
use repo_fixture::Repo;
use serde_json::Value;
use support::RawV4;

/// Polls `/api/v1/transfers` until `done` holds for its answer (at most 5 s).
async fn transfers_until(admin: std::net::SocketAddr, done: impl Fn(&Value) -> bool) -> Value {
    let mut listed = Value::Null;
    for _ in 0..200 {
        listed = get(admin, "/api/v1/transfers", &[]).await.json();
        if done(&listed) {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("/api/v1/transfers never reached the expected state: {listed:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_upload_is_listed_with_its_progress_while_it_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(config_for(&dir.path().join("data"))).await;
    let mut raw = RawV4::connect(server.addr, [0x42; 32], Some("pia")).await;
    let repo = Repo::new(7);
    raw.send_repo(&RepoRequest::Create {
        config: repo.config.clone(),
        key: repo.key.clone(),
    })
    .await;
    assert_eq!(raw.recv().await, Some(ServerMessage::Repo(RepoReply::Ok)));
    let pack = PackId([0x5a; 32]);
    raw.send_repo(&RepoRequest::Put {
        target: PutTarget::Pack(pack),
        size: 10,
    })
    .await;
    assert_eq!(
        raw.recv().await,
        Some(ServerMessage::Repo(RepoReply::PutReady))
    );
    // DATA (type 0x02) with the first 3 of the 10 bytes; the rest never comes.
    assert!(raw.send(&[0x02, b'1', b'2', b'3']).await);

    let client_id = raw.client_id.to_hex();
    let during = transfers_until(server.admin, |t| t[0]["bytes"] == 3).await;
    let overview = get(server.admin, "/api/v1/overview", &[]).await.json();
    drop(raw);
    let after = transfers_until(server.admin, |t| t.as_array().is_some_and(Vec::is_empty)).await;

    let row = &during[0];
    assert_eq!(during.as_array().unwrap().len(), 1, "{during:#}");
    assert_eq!(row["kind"], "pack", "{row:#}");
    assert_eq!(row["object_id"], pack.to_hex());
    assert_eq!(row["total_bytes"], 10);
    assert!(row["file_name"].is_null(), "{row:#}");
    assert_eq!(row["client_id"], client_id);
    assert_eq!(overview["active_transfers"][0]["object_id"], pack.to_hex());
    assert_eq!(after, Value::Array(Vec::new()));
    server.stop().await;
}
