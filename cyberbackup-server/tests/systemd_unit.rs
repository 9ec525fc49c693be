//! The systemd unit in `packaging/systemd/` cannot rot silently: its `ExecStart` and
//! `ExecStartPre` command lines are run against the built server binary (with `--check`, and
//! the unit's paths swapped for temporary ones), its descriptor limit must cover what the
//! default `max_connections` needs, the data directory it passes must be writable under
//! `ProtectSystem=strict`, and the hardening keys named in docs/deployment.md must be there.
//! Where `systemd-analyze` exists, `systemd-analyze verify` must accept the unit too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const UNIT: &str = include_str!("../../packaging/systemd/cyberbackup-server.service");

/// The `[Service]` keys, each with every value it is given (in order).
fn service_keys() -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_service = false;
    for line in UNIT.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').expect("a key=value line");
        keys.entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    keys
}

fn one<'a>(keys: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match keys.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("the unit must set {key} exactly once, found {other:?}"),
    }
}

/// The value that follows `flag` on a command line.
fn flag_value<'a>(argv: &'a [&'a str], flag: &str) -> &'a str {
    let at = argv
        .iter()
        .position(|a| *a == flag)
        .unwrap_or_else(|| panic!("{flag} missing from {argv:?}"));
    argv.get(at + 1)
        .unwrap_or_else(|| panic!("{flag} has no value"))
}

/// Runs `command_line` (a unit's `Exec*` value) with the built binary, the unit's config
/// and data paths replaced by `config` and `data`, and `--check` appended unless present.
fn run_with_check(command_line: &str, config: &Path, data: &Path) -> std::process::Output {
    let argv: Vec<&str> = command_line.split_whitespace().collect();
    assert!(
        argv[0].ends_with("/cyberbackup-server"),
        "the unit must run the cyberbackup-server binary, runs {}",
        argv[0]
    );
    let unit_config = flag_value(&argv, "--config");
    let unit_data = flag_value(&argv, "--data-dir");
    let mut args: Vec<String> = argv[1..]
        .iter()
        .map(|a| match *a {
            a if a == unit_config => config.display().to_string(),
            a if a == unit_data => data.display().to_string(),
            a => a.to_owned(),
        })
        .collect();
    if !args.iter().any(|a| a == "--check") {
        args.push("--check".into());
    }
    Command::new(env!("CARGO_BIN_EXE_cyberbackup-server"))
        .args(&args)
        .env_remove("CYBERBACKUP_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn exec_lines_run_against_the_built_binary() {
    let keys = service_keys();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    // Free ports, so the check's bind test passes on a busy machine.
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    std::fs::write(
        &config,
        format!(
            "port = {}\nadmin_listen = \"127.0.0.1:{}\"\nmin_free_disk_mb = 1\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");

    for key in ["ExecStartPre", "ExecStart"] {
        let output = run_with_check(one(&keys, key), &config, &data);
        assert!(
            output.status.success(),
            "{key} with --check failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn data_directory_is_the_writable_state_directory() {
    let keys = service_keys();
    let argv: Vec<&str> = one(&keys, "ExecStart").split_whitespace().collect();
    let data = flag_value(&argv, "--data-dir");

    assert_eq!(one(&keys, "ProtectSystem"), "strict");
    assert_eq!(one(&keys, "ReadWritePaths"), data);
    assert_eq!(
        format!("/var/lib/{}", one(&keys, "StateDirectory")),
        data,
        "StateDirectory= must create the data directory for the dynamic user"
    );
}

#[test]
fn descriptor_limit_covers_the_default_connection_limit() {
    let keys = service_keys();
    let limit: u64 = one(&keys, "LimitNOFILE").parse().unwrap();
    let defaults = cyberbackup_server::ServerConfig::default();

    assert!(
        limit >= cyberbackup_server::fd_limit::needed(defaults.max_connections),
        "LimitNOFILE={limit} is below what max_connections = {} needs",
        defaults.max_connections
    );
}

#[test]
fn hardening_options_are_set() {
    let keys = service_keys();
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("UMask", "0077"),
        ("DynamicUser", "yes"),
    ] {
        assert_eq!(one(&keys, key), value, "{key}");
    }
    assert_eq!(
        keys.get("SystemCallFilter").and_then(|v| v.first()),
        Some(&"@system-service".to_owned())
    );
}

/// `systemd-analyze verify` on a copy whose binary is the built one (it checks that the
/// executable exists). Skipped where systemd-analyze is not installed.
#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: systemd-analyze not found");
        return;
    };
    assert!(probe.status.success());
    let dir = tempfile::tempdir().unwrap();
    let unit = UNIT.replace(
        "/usr/local/bin/cyberbackup-server",
        env!("CARGO_BIN_EXE_cyberbackup-server"),
    );
    let path: PathBuf = dir.path().join("cyberbackup-server.service");
    std::fs::write(&path, unit).unwrap();

    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    let own: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cyberbackup-server.service"))
        .collect();
    assert!(
        output.status.success() && own.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        output.status
    );
}
