//! The accounts API and the per-account metrics over real HTTP after real backups (the
//! client library's snapshot engine and its single-file mode, protocol v4), with the
//! dashboard's clock injected so the tests move time instead of waiting; and the example
//! Prometheus rules in docs/ name only metrics the server exports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use admin_common::{
    ShiftedClock, backup, config_for, get, post_empty_json, snapshot_backup, start,
    start_with_clock,
};

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
    snapshot_backup(
        server.addr,
        &dir.path().join("alice-v4.json"),
        "alice",
        &tree,
    )
    .await;
    snapshot_backup(
        server.addr,
        &dir.path().join("alice-v4.json"),
        "alice",
        &tree,
    )
    .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_real_backup_and_the_alert_rules_name_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&dir.path().join("data"));
    config.quota_hard_bytes = 50 << 20;
    let server = start(config).await;
    let tree = dir.path().join("tree");
    make_tree(&tree);
    snapshot_backup(
        server.addr,
        &dir.path().join("alice-v4.json"),
        "alice",
        &tree,
    )
    .await;
    let pruned = post_empty_json(server.admin, "/api/v1/prune").await;
    assert_eq!(pruned.status, 200, "{}", pruned.body);
    let accounts = get(server.admin, "/api/v1/accounts", &[]).await.json();

    let scraped = get(server.admin, "/metrics", &[]).await;

    assert_eq!(scraped.status, 200);
    let lines = scraped.body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{}", scraped.body));
        match sample.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name} is {other:?}"),
        }
    };
    let alice = account(&accounts, "alice");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = value(
        "cyberbackup_account_last_backup_timestamp_seconds",
        &[("account", "alice")],
    );
    assert!(
        now - last < 120.0 && last <= now,
        "last backup at {last}, now {now}"
    );
    assert_eq!(
        value("cyberbackup_account_stored_bytes", &[("account", "alice")]),
        alice["stored_bytes"].as_f64().unwrap()
    );
    assert_eq!(
        value("cyberbackup_account_snapshots", &[("account", "alice")]),
        1.0
    );
    assert_eq!(
        value(
            "cyberbackup_account_quota_bytes",
            &[("account", "alice"), ("kind", "hard")]
        ),
        f64::from(50 << 20)
    );
    assert_eq!(
        value(
            "cyberbackup_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(value("cyberbackup_prune_runs_total", &[]), 1.0);
    assert_eq!(
        value("cyberbackup_prune_freed_bytes_total", &[]),
        pruned.json()["totals"]["bytes_freed"].as_f64().unwrap()
    );
    assert_eq!(value("cyberbackup_scrub_corrupt_objects", &[]), 0.0);
    assert!(value("process_resident_memory_bytes", &[]) > f64::from(1 << 20));
    assert!(value("process_open_fds", &[]) >= 3.0);
    assert!(value("process_max_fds", &[]) >= value("process_open_fds", &[]));
    assert!(value("process_cpu_seconds_total", &[]) >= 0.0);
    let started = value("process_start_time_seconds", &[]);
    assert!(
        started <= now + 1.0 && started > now - 3600.0,
        "started {started}"
    );

    let exported: BTreeSet<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    let named = alert_rule_metrics();
    assert!(
        named.contains("cyberbackup_account_last_backup_timestamp_seconds")
            && named.contains("cyberbackup_scrub_corrupt_objects"),
        "{named:?}"
    );
    let missing: Vec<&String> = named
        .iter()
        .filter(|m| !exported.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/prometheus-alerts.yml names metrics the server does not export: {missing:?}"
    );
    server.stop().await;
}

/// Every metric name (`cyberbackup_*`, `process_*`) in an `expr:` of the example rules.
fn alert_rule_metrics() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/prometheus-alerts.yml"),
    )
    .unwrap();
    let mut names = BTreeSet::new();
    for line in rules.lines() {
        let Some(expr) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("cyberbackup_") || word.starts_with("process_") {
                names.insert(word.to_owned());
            }
        }
    }
    names
}
