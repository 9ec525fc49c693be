#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Runs the harness in `--smoke` mode (64 MiB file over v3 and v4, 50 clients, 200 files, 20,000 catalog
//! rows, a 2,000-file snapshot browsed in the client UI, `compare` on four trees of a few MiB
//! with every installed tool) against freshly built server and client binaries, so the
//! harness cannot rot. It judges no timing: only that every scenario ran, reported its figures and had no failure, and that every
//! installed tool of `compare` ran every step and restored a verified tree.
//! Takes about 1–2 minutes in a debug build, most of it building the two binaries.

use std::process::{Command, Stdio};

/// Whether `program arg` runs (how the harness decides a peer tool is installed).
fn installed(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn smoke_mode_runs_every_scenario_without_failures() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("report.json");
    let charts = dir.path().join("charts");

    let output = Command::new(env!("CARGO_BIN_EXE_cyberbackup-bench"))
        .arg("--smoke")
        .arg("--json")
        .arg(&json_path)
        .arg("--work-dir")
        .arg(dir.path())
        .arg("--chart-dir")
        .arg(&charts)
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
    for name in [
        "single-file",
        "many-clients",
        "many-files",
        "catalog",
        "browse",
        "compare",
    ] {
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

    let browse = &section("browse")["data"];
    assert_eq!(browse["files"], 2000);
    let requests = browse["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 8, "{browse}");
    for request in requests {
        assert!(request["median_ms"].as_f64().unwrap() > 0.0, "{request}");
    }

    let compare = &section("compare")["data"];
    let mut expected_tools = vec!["cyberbackup"];
    for (tool, arg) in [
        ("restic", "version"),
        ("borg", "--version"),
        ("rustic", "--version"),
    ] {
        if installed(tool, arg) {
            expected_tools.push(tool);
        }
    }
    if !installed("rustic", "--version") {
        let notes = report["notes"].as_array().unwrap();
        assert!(
            notes.contains(&serde_json::json!(
                "rustic: skipped (not installed; cargo install rustic-rs --locked)"
            )),
            "{notes:?}"
        );
    }
    let datasets = compare["datasets"].as_array().unwrap();
    let names: Vec<&str> = datasets
        .iter()
        .map(|d| d["dataset"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["source", "mixed", "tiny", "big"]);
    for dataset in datasets {
        let name = dataset["dataset"].as_str().unwrap();
        assert!(dataset["files"].as_u64().unwrap() > 0, "{name}");
        let tools: Vec<&str> = dataset["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tool"].as_str().unwrap())
            .collect();
        assert_eq!(tools, expected_tools, "{name}");
        for tool in dataset["tools"].as_array().unwrap() {
            let what = format!("{name} {}", tool["tool"]);
            assert_eq!(tool["verified"], true, "{what}");
            let runs = tool["runs"].as_array().unwrap();
            assert_eq!(runs.len(), 1, "{what}");
            assert!(runs[0]["restored_files"].as_u64().unwrap() > 0, "{what}");
            assert!(tool["repo_bytes"].as_u64().unwrap() > 0, "{what}");
            let steps = tool["steps"].as_object().unwrap();
            let mut step_names: Vec<&str> = steps.keys().map(String::as_str).collect();
            step_names.sort_unstable();
            assert_eq!(
                step_names,
                [
                    "first",
                    "init",
                    "modified",
                    "restore",
                    "restore_one",
                    "unchanged"
                ],
                "{what}"
            );
        }
        let ours = &dataset["tools"][0]["steps"];
        for step in ["first", "restore"] {
            assert!(
                ours[step]["socket_bytes"].as_u64().unwrap() > 0,
                "{name} {step}"
            );
            assert!(
                ours[step]["server_rss_kib"].as_u64().unwrap() > 0,
                "{name} {step}"
            );
        }
        assert!(
            charts.join(format!("bench-compare-{name}.png")).is_file(),
            "{name}"
        );
    }
    assert_eq!(compare["extras"]["scaling"].as_array().unwrap().len(), 2);
    assert_eq!(compare["extras"]["memory"].as_array().unwrap().len(), 2);

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
