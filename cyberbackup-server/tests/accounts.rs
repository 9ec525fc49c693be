//! The accounts API over real HTTP after real backups (the client library's snapshot engine
//! and its single-file mode), with the dashboard's clock injected so the tests move time
//! instead of waiting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use admin_common::{ShiftedClock, backup, config_for, get, snapshot_backup, start_with_clock};

/// Names the backed-up tree holds; the server must never show any of them.
const NAMES: [&str; 3] = [
    "quarterly-report-7f3a.txt",
    "copy-of-report-7f3a.txt",
    "secret-dir-91c2",
];

/// A tree of 700,000 bytes of content whose two big files are equal (so deduplication and
/// compression must show).
fn make_tree(root: &Path) -> u64 {
    let sub = root.join(NAMES[2]);
    std::fs::create_dir_all(&sub).unwrap();
    let report: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join(NAMES[0]), &report).unwrap();
    std::fs::write(sub.join(NAMES[1]), &report).unwrap();
    std::fs::write(sub.join("small.bin"), vec![7u8; 100_000]).unwrap();
    700_000
}

fn account<'a>(answer: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    answer["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no account {name} in {answer:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_age_with_the_injected_clock_and_show_envelope_data_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ShiftedClock::default();
    let mut config = config_for(&dir.path().join("data"));
    config.quota_soft_bytes = 10 << 20;
    let server = start_with_clock(config, clock.admin_clock()).await;
    let tree = dir.path().join("tree");
    let content = make_tree(&tree);
    snapshot_backup(server.addr, dir.path(), "alice", &tree).await;
    snapshot_backup(server.addr, dir.path(), "alice", &tree).await;
    backup(
        server.addr,
        dir.path(),
        "bob",
        &[("bob-notes.txt", b"single file")],
    )
    .await;

    let fresh = get(server.admin, "/api/v1/accounts", &[]).await;
    clock.set_ahead(Duration::from_secs(26 * 3600 + 60));
    let warned = get(server.admin, "/api/v1/accounts", &[]).await.json();
    clock.set_ahead(Duration::from_secs(72 * 3600 + 60));
    let alerted = get(server.admin, "/api/v1/accounts", &[]).await.json();
    let snapshots = get(server.admin, "/api/v1/accounts/alice/snapshots", &[]).await;
    let unknown = get(server.admin, "/api/v1/accounts/nobody/snapshots", &[]).await;

    assert_eq!(fresh.status, 200, "{}", fresh.body);
    let fresh_json = fresh.json();
    assert_eq!(fresh_json["warn_after_secs"], 26 * 3600);
    assert_eq!(fresh_json["alert_after_secs"], 72 * 3600);
    let alice = account(&fresh_json, "alice");
    assert_eq!(alice["status"], "ok", "{alice:#}");
    assert_eq!(alice["snapshots"], 2);
    assert!(alice["age_secs"].as_u64().unwrap() < 120, "{alice:#}");
    let last = humantime::parse_rfc3339(alice["last_backup_at"].as_str().unwrap()).unwrap();
    assert!(SystemTime::now().duration_since(last).unwrap() < Duration::from_secs(120));
    assert_eq!(alice["devices"].as_array().unwrap().len(), 1, "{alice:#}");
    assert_eq!(alice["devices"][0]["role"], "append-only");
    assert_eq!(alice["snapshot_content_bytes"], 2 * content);
    let stored = alice["stored_bytes"].as_u64().unwrap();
    assert!(stored > 0 && stored < content, "{alice:#}");
    let ratio = alice["dedup_compression_ratio"].as_f64().unwrap();
    assert!(
        (ratio - (2 * content) as f64 / stored as f64).abs() < 1e-9 && ratio > 2.0,
        "{alice:#}"
    );
    assert_eq!(alice["soft_quota_bytes"], 10 << 20);
    assert!(alice["hard_quota_bytes"].is_null());
    let used = alice["quota_used_percent"].as_f64().unwrap();
    assert!((used - stored as f64 * 100.0 / f64::from(10 << 20)).abs() < 1e-9);
    let bob = account(&fresh_json, "bob");
    assert_eq!(
        (&bob["status"], &bob["snapshots"], &bob["single_files"]),
        (&"ok".into(), &0.into(), &1.into()),
        "{bob:#}"
    );
    assert_eq!(bob["single_file_bytes"], 11);
    assert!(bob["dedup_compression_ratio"].is_null());

    assert_eq!(account(&warned, "alice")["status"], "warn");
    assert_eq!(account(&warned, "bob")["status"], "warn");
    assert!(account(&warned, "alice")["age_secs"].as_u64().unwrap() >= 26 * 3600 + 60);
    assert_eq!(account(&alerted, "alice")["status"], "alert");

    assert_eq!(snapshots.status, 200, "{}", snapshots.body);
    let listed = snapshots.json();
    assert_eq!(listed["account"], "alice");
    assert!(
        listed["note"].as_str().unwrap().contains("never the names"),
        "{listed:#}"
    );
    let rows = listed["snapshots"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["content_bytes"], content, "{row:#}");
        assert!(row["blobs"].as_u64().unwrap() >= 3, "{row:#}");
        assert!(row["object_bytes"].as_u64().unwrap() > 0, "{row:#}");
        assert_eq!(row["group"], rows[0]["group"], "one source, one group");
    }
    assert!(rows[0]["stored_at"].as_str() >= rows[1]["stored_at"].as_str());
    for body in [&fresh.body, &snapshots.body] {
        for name in NAMES {
            assert!(
                !body.contains(name),
                "the server showed the name {name}: {body}"
            );
        }
    }
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.json()["error"]
            .as_str()
            .unwrap()
            .contains("/api/v1/accounts")
    );
    server.stop().await;
}
