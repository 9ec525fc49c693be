//! Key management and the client-requested prune, through the real client binary against the
//! in-process server over real sockets: `key passwd` replaces the passphrase (the old one
//! stops working), `key remove` takes a lost device's key object away, `forget --prune` has
//! the server reclaim space, an append-only device is refused every delete path, and the
//! server's whole data directory (catalog included) holds no key, passphrase, file name or
//! content, so that without a passphrase or device key nothing opens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use cyberbackup_core::repo::{DeviceKey, KeyObject};
use cyberbackup_server::catalog::{Catalog, DeviceRole};
use support::{
    RealServer, client_command, enroll_device_of, files_under, output_text as text, set_role_of,
    write_pattern,
};

const CONTENT_MARKER: &str = "PLAINTEXT-MARKER-keys-5e1f";
const NAME_MARKER: &str = "name-marker-keys-7a0c";
const OLD_PASSPHRASE: &str = "old passphrase 6b1d correct horse";
const NEW_PASSPHRASE: &str = "new passphrase 93aa battery staple";

fn run(dir: &Path, server: &RealServer, args: &[&str]) -> Output {
    client_command(dir, server, "alice", args).output().unwrap()
}

fn ok(dir: &Path, server: &RealServer, args: &[&str]) -> Output {
    let output = run(dir, server, args);
    assert_eq!(output.status.code(), Some(0), "{args:?}: {}", text(&output));
    output
}

fn refused(dir: &Path, server: &RealServer, args: &[&str], why: &str) -> Output {
    let output = run(dir, server, args);
    assert_ne!(output.status.code(), Some(0), "{args:?}: {}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(why),
        "{args:?} should say {why:?}: {}",
        text(&output)
    );
    output
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{}", text(output)))
}

fn file_with(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `recover` as alice with the passphrase in `passphrase_file` and an enrollment `token`.
fn recover_args<'a>(passphrase_file: &'a str, token: &'a str) -> [&'a str; 7] {
    [
        "recover",
        "--name",
        "alice",
        "--password-file",
        passphrase_file,
        "--enroll-token",
        token,
    ]
}

/// `key passwd` from the passphrase in `old` to the one in `new` (file paths).
fn passwd_args<'a>(old: &'a str, new: &'a str) -> [&'a str; 6] {
    [
        "key",
        "passwd",
        "--password-file",
        old,
        "--new-password-file",
        new,
    ]
}

/// `key list --json` of the machine in `dir`.
fn keys(dir: &Path, server: &RealServer) -> Vec<serde_json::Value> {
    json(&ok(dir, server, &["key", "list", "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

/// A laptop with one snapshot of a small tree, made with `OLD_PASSPHRASE`.
fn laptop_with_a_snapshot(server: &RealServer) -> (tempfile::TempDir, String) {
    let laptop = tempfile::tempdir().unwrap();
    let old = file_with(laptop.path(), "old-passphrase", OLD_PASSPHRASE);
    let src = laptop.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join(NAME_MARKER), format!("{CONTENT_MARKER}\n")).unwrap();
    ok(
        laptop.path(),
        server,
        &["backup", "src", "--name", "alice", "--password-file", &old],
    );
    (laptop, old)
}

#[test]
fn key_passwd_replaces_the_passphrase_and_key_remove_locks_out_a_lost_device() {
    let server = RealServer::start();
    let (laptop, old) = laptop_with_a_snapshot(&server);
    let new = file_with(laptop.path(), "new-passphrase", NEW_PASSPHRASE);
    set_role_of(&server, b"alice", DeviceRole::Manage);

    // A second machine joins with the old passphrase.
    let desktop = tempfile::tempdir().unwrap();
    let token = enroll_device_of(&server, b"alice");
    ok(desktop.path(), &server, &recover_args(&old, &token));
    let listed = keys(laptop.path(), &server);
    let kinds: Vec<&str> = listed.iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["device", "passphrase", "device"], "{listed:?}");
    assert_eq!(
        listed[0]["current"], true,
        "the laptop opened with its device key"
    );

    let changed = ok(laptop.path(), &server, &passwd_args(&old, &new));
    assert!(
        String::from_utf8_lossy(&changed.stdout).contains("no longer opens"),
        "{}",
        text(&changed)
    );
    let listed = keys(laptop.path(), &server);
    let kinds: Vec<&str> = listed.iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["device", "device", "passphrase"], "{listed:?}");

    // On a third machine the old passphrase opens nothing, the new one opens everything.
    let third = tempfile::tempdir().unwrap();
    let token = enroll_device_of(&server, b"alice");
    let recover = |passphrase: &str| run(third.path(), &server, &recover_args(passphrase, &token));
    let with_old = recover(&old);
    assert_ne!(with_old.status.code(), Some(0), "{}", text(&with_old));
    assert!(
        String::from_utf8_lossy(&with_old.stderr).contains("wrong passphrase"),
        "{}",
        text(&with_old)
    );
    ok(third.path(), &server, &recover_args(&new, &token));
    let restored = third.path().join("restored");
    ok(
        third.path(),
        &server,
        &["restore", "latest", "--target", restored.to_str().unwrap()],
    );
    let found = files_under(&restored);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        fs::read_to_string(&found[0]).unwrap(),
        format!("{CONTENT_MARKER}\n")
    );

    // The desktop is lost: the laptop removes its key object; the desktop's device key
    // opens nothing any more.
    let listed = keys(laptop.path(), &server);
    let desktop_key = listed[1]["id"].as_str().unwrap().to_owned();
    let removed = ok(
        laptop.path(),
        &server,
        &["key", "remove", &desktop_key[..6]],
    );
    assert!(
        String::from_utf8_lossy(&removed.stdout).contains(&desktop_key),
        "{}",
        text(&removed)
    );
    refused(
        desktop.path(),
        &server,
        &["snapshots"],
        "opens no key object",
    );
    assert_eq!(keys(laptop.path(), &server).len(), 3);

    // What `key remove` will not do: the key that opened this session, an unknown ID.
    let own = listed[0]["id"].as_str().unwrap();
    refused(
        laptop.path(),
        &server,
        &["key", "remove", own],
        "opened the repository",
    );
    refused(
        laptop.path(),
        &server,
        &["key", "remove", "zz"],
        "no key object has the ID",
    );
}

#[test]
fn an_append_only_device_is_refused_every_delete_path() {
    let server = RealServer::start();
    let (laptop, old) = laptop_with_a_snapshot(&server);
    let dir = laptop.path();
    let new = file_with(dir, "new-passphrase", NEW_PASSPHRASE);
    let before = keys(dir, &server);
    let passphrase_key = before.iter().find(|k| k["kind"] == "passphrase").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    refused(dir, &server, &["forget", "latest"], "append-only");
    refused(
        dir,
        &server,
        &["forget", "--keep-last", "1", "--prune"],
        "append-only",
    );
    refused(
        dir,
        &server,
        &["key", "remove", &passphrase_key],
        "append-only",
    );
    // `key passwd` adds the new passphrase (adding is allowed) but cannot remove the old.
    let passwd = refused(
        dir,
        &server,
        &passwd_args(&old, &new),
        "the old one still opens the repository",
    );
    assert!(
        String::from_utf8_lossy(&passwd.stderr).contains(&passphrase_key),
        "names the key object to remove: {}",
        text(&passwd)
    );

    let snapshots = json(&ok(dir, &server, &["snapshots", "--json"]));
    assert_eq!(snapshots.as_array().unwrap().len(), 1, "{snapshots}");
    let after = keys(dir, &server);
    assert_eq!(
        after.len(),
        before.len() + 1,
        "only the new passphrase was added"
    );
    assert!(after.iter().any(|k| k["id"] == passphrase_key.as_str()));
}

#[test]
fn forget_prune_has_the_server_reclaim_the_space_of_forgotten_snapshots() {
    // No grace period: nothing else runs meanwhile.
    let server = RealServer::start_configured(|config| {
        config.prune_interval_secs = 0;
        config.prune_grace_secs = 0;
        config.default_device_role = DeviceRole::Manage;
    });
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("kept.txt"), "kept in every snapshot\n").unwrap();
    let mut ids = Vec::new();
    for seed in 1..=3 {
        write_pattern(&src.join("changing.bin"), 4 << 20, seed);
        let out = ok(
            dir.path(),
            &server,
            &["backup", "src", "--name", "alice", "--json"],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        ids.push(summary["snapshot_id"].as_str().unwrap().to_owned());
    }

    let stored = || -> u64 {
        files_under(&server.data.path().join("data/repository"))
            .iter()
            .map(|path| fs::metadata(path).unwrap().len())
            .sum()
    };
    let before = stored();
    // Packs must be older than the grace period (zero, counted in whole seconds).
    std::thread::sleep(Duration::from_millis(1100));

    let first = json(&ok(
        dir.path(),
        &server,
        &["forget", &ids[0], "--prune", "--json"],
    ));
    assert!(first["prune"]["condemned"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["prune"]["snapshots"], 2, "{first}");
    assert_eq!(first["prune"]["grace_secs"], 0, "{first}");
    // What that prune condemned is past the (zero) grace period a second later.
    std::thread::sleep(Duration::from_millis(1100));
    let second = ok(dir.path(), &server, &["forget", &ids[1], "--prune"]);
    let report = String::from_utf8_lossy(&second.stdout);
    assert!(
        report.contains("space given back") && !report.contains("deleted 0 blobs"),
        "{}",
        text(&second)
    );
    std::thread::sleep(Duration::from_millis(1100));
    let third = json(&ok(
        dir.path(),
        &server,
        &["forget", "--keep-last", "1", "--prune", "--json"],
    ));
    assert!(third["forget"].is_array(), "{third}");
    assert_eq!(third["prune"]["snapshots"], 1, "{third}");
    // Two of the three 4 MiB versions of changing.bin are gone from the server's disk.
    let after = stored();
    assert!(
        after + (6 << 20) < before,
        "{before} bytes stored before, {after} after: {third}"
    );

    ok(dir.path(), &server, &["check", "--read-data"]);
    let restored = dir.path().join("restored");
    ok(
        dir.path(),
        &server,
        &["restore", &ids[2], "--target", restored.to_str().unwrap()],
    );
    let src = src.canonicalize().unwrap();
    let back = restored.join(src.strip_prefix("/").unwrap());
    assert!(support::same_contents(
        &src.join("changing.bin"),
        &back.join("changing.bin")
    ));
}

#[test]
fn the_servers_data_directory_and_catalog_open_nothing_without_a_passphrase_or_device_key() {
    let server = RealServer::start();
    let (laptop, _old) = laptop_with_a_snapshot(&server);
    let device_key = fs::read_to_string(laptop.path().join("cyberbackup-device.key")).unwrap();
    let device_key = device_key.trim().to_owned();
    let raw_device_key = hex::decode(&device_key).unwrap();
    let identity = fs::read(laptop.path().join("alice-v4.json")).unwrap();
    assert!(!identity.is_empty());

    // Everything the server has on disk: catalog (with its WAL), packs, snapshots, staging.
    let files = files_under(server.data.path());
    assert!(files.len() > 3, "{files:?}");
    for path in &files {
        let bytes = fs::read(path).unwrap();
        for needle in [
            CONTENT_MARKER.as_bytes(),
            NAME_MARKER.as_bytes(),
            OLD_PASSPHRASE.as_bytes(),
            device_key.as_bytes(),
            &raw_device_key,
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds a secret or plaintext ({} bytes of it)",
                path.display(),
                needle.len()
            );
        }
        assert!(!path.to_string_lossy().contains(NAME_MARKER));
    }

    // The key objects the catalog holds open with neither a guessed passphrase nor another
    // device's key; only the laptop's own secrets open them.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let objects = runtime.block_on(async {
        let catalog = Catalog::open(server.data.path().join("data/defensive.db"))
            .await
            .unwrap();
        let clients = catalog.repository_clients().await.unwrap();
        assert_eq!(clients.len(), 1);
        let record = catalog.repository(clients[0]).await.unwrap().unwrap();
        catalog.close().await.unwrap();
        record.keys
    });
    assert_eq!(objects.len(), 2, "a device and a passphrase key object");
    let stranger = DeviceKey::from_bytes([0x5a; 32]);
    let mut opened_by_owner = 0;
    for bytes in &objects {
        let object = KeyObject::decode(bytes).unwrap();
        for guess in [
            b"".as_slice(),
            b"password",
            b"alice",
            NEW_PASSPHRASE.as_bytes(),
        ] {
            assert!(object.unwrap_with_passphrase(guess).is_err());
        }
        assert!(object.unwrap_with_device_key(&stranger).is_err());
        let own = DeviceKey::from_bytes(raw_device_key.clone().try_into().unwrap());
        if object.unwrap_with_device_key(&own).is_ok()
            || object
                .unwrap_with_passphrase(OLD_PASSPHRASE.as_bytes())
                .is_ok()
        {
            opened_by_owner += 1;
        }
    }
    assert_eq!(opened_by_owner, 2, "the owner's secrets open both");

    // A machine enrolled for alice, with neither secret, lists and restores nothing.
    let thief = tempfile::tempdir().unwrap();
    let token = enroll_device_of(&server, b"alice");
    let guess = file_with(thief.path(), "guess", "password");
    refused(
        thief.path(),
        &server,
        &recover_args(&guess, &token),
        "wrong passphrase",
    );
    refused(thief.path(), &server, &["snapshots"], "opens no key object");
}
