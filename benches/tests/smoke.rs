#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Runs the harness in `--smoke` mode (64 MiB file over v3 and v4, 50 clients, 200 files, 20,000 catalog
//! rows) against freshly built server and client binaries, so the harness cannot rot. It
//! judges no timing: only that every scenario ran, reported its figures and had no failure.
//! Takes about 1–2 minutes in a debug build, most of it building the two binaries.

use std::process::Command;

#[test]
fn smoke_mode_runs_every_scenario_without_failures() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("report.json");

    let output = Command::new(env!("CARGO_BIN_EXE_cyberbackup-bench"))
        .arg("--smoke")
        .arg("--json")
        .arg(&json_path)
        .arg("--work-dir")
        .arg(dir.path())
        .output()
        .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "harness failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let sections = report["sections"].as_array().unwrap();
    let section = |name: &str| {
        sections
            .iter()
            .find(|s| s["scenario"] == name)
            .unwrap_or_else(|| panic!("no {name} section in {report}"))
    };
    for name in ["single-file", "many-clients", "many-files", "catalog"] {
        assert_eq!(section(name)["failures"], serde_json::json!([]), "{name}");
    }

    let single = &section("single-file")["data"];
    assert!(single["cbc_encrypt_mb_per_s"].as_f64().unwrap() > 0.0);
    assert!(single["gcm_seal_mb_per_s"].as_f64().unwrap() > 0.0);
    let uploads = single["uploads"].as_array().unwrap();
    let protocols: Vec<&str> = uploads
        .iter()
        .map(|u| u["protocol"].as_str().unwrap())
        .collect();
    assert_eq!(protocols, ["v3", "v4"]);
    for upload in uploads {
        assert_eq!(upload["bytes"], 64 * 1024 * 1024);
        assert!(upload["mb_per_s"].as_f64().unwrap() > 0.0);
        assert!(upload["server"]["hwm_kib"].as_u64().unwrap() > 0);
        assert!(upload["client"]["hwm_kib"].as_u64().unwrap() > 0);
        assert!(upload["client"]["cpu_secs"].as_f64().unwrap() > 0.0);
    }
    assert!(!single["series"].as_array().unwrap().is_empty());

    let clients = &section("many-clients")["data"];
    assert_eq!(clients["clients"], 50);
    assert_eq!(clients["failures"], 0);
    assert!(clients["server"]["fds"].as_u64().unwrap() > 0);
    assert!(clients["latency_total_ms"]["p99"].as_f64().unwrap() > 0.0);

    let files = &section("many-files")["data"];
    assert_eq!(files["files"], 200);
    assert_eq!(files["failures"], 0);

    let catalog = &section("catalog")["data"];
    assert_eq!(catalog["rows"], 20_000);
    for query in catalog["queries"].as_array().unwrap() {
        assert!(query["median_ms"].as_f64().unwrap() > 0.0, "{query}");
    }

    // Every target got a verdict.
    let verdicts: Vec<&serde_json::Value> = sections
        .iter()
        .flat_map(|s| s["targets"].as_array().unwrap())
        .map(|t| &t["verdict"])
        .collect();
    assert!(verdicts.len() >= 8);
    assert!(
        verdicts
            .iter()
            .all(|v| ["PASS", "FALL SHORT", "NOT RUN"].contains(&v.as_str().unwrap()))
    );
}
