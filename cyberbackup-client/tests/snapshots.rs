//! Snapshots end to end: the real `cyberbackup-client` binary against the reference server
//! (in-process, real sockets, real SQLite, the local repository backend). A tree with
//! everything a tree can hold is backed up and restored exactly (`diff -r` and metadata);
//! an unchanged second backup stores only metadata, a changed file about one chunk, a 1 MiB
//! append about 1 MiB; two
//! clients' repositories are isolated; the server's disk holds no plaintext byte and no file
//! name, nor its log; a pack damaged on the server's disk is reported by `check --read-data` and by
//! `restore`, which writes nothing wrong; a backup killed midway leaves no snapshot and the
//! next one reuses what was stored; so does one whose server stops in the middle and restarts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cyberbackup_core::testing::LogWriter;
use cyberbackup_server::catalog::DeviceRole;
use cyberbackup_server::config::RetentionConfig;
use support::{
    RealServer, client_command, enroll_device_of, files_under, output_text as text, set_role_of,
    write_pattern,
};

/// Everything the in-process server logs, at every level (installed once per test binary).
fn server_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let writer = move || LogWriter(logs);
        tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
            .with_writer(writer)
            .with_ansi(false)
            .init();
        logs
    })
}

const MIB: u64 = 1024 * 1024;
/// Marker strings written into the backed-up files; the server's disk must never hold them.
const CONTENT_MARKER: &str = "PLAINTEXT-MARKER-7f3a9c";
const NAME_MARKER: &str = "secret-name-marker-42";

fn run(dir: &Path, server: &RealServer, name: &str, args: &[&str]) -> Output {
    client_command(dir, server, name, args).output().unwrap()
}

fn backup(dir: &Path, server: &RealServer, name: &str, paths: &[&str]) -> serde_json::Value {
    let mut args = vec!["backup"];
    args.extend_from_slice(paths);
    args.extend(["--name", name, "--json"]);
    let output = run(dir, server, name, &args);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    summary(&output)
}

/// The last JSON line of a `--json` run (the summary).
fn summary(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.contains("\"summary\""))
        .unwrap_or_else(|| panic!("no summary line in {}", text(output)));
    serde_json::from_str(line).unwrap()
}

/// Bytes the server keeps in its repository store (packs and snapshots).
fn repository_bytes(server: &RealServer) -> u64 {
    stored_objects(server)
        .iter()
        .map(|path| fs::metadata(path).unwrap().len())
        .sum()
}

/// The objects of the server's repository: its files but the backend's temp files
/// (`.put-*`, `.upload-*`), which hold uploads not finished yet, or abandoned ones kept for
/// a resume until maintenance removes them.
fn stored_objects(server: &RealServer) -> Vec<PathBuf> {
    files_under(&server.data.path().join("data").join("repository"))
        .into_iter()
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| !name.as_bytes().starts_with(b"."))
        })
        .collect()
}

fn packs(server: &RealServer) -> Vec<PathBuf> {
    stored_objects(server)
        .into_iter()
        .filter(|path| path.components().any(|c| c.as_os_str() == "packs"))
        .collect()
}

/// The `snapshots --json` array of `name`'s repository.
fn snapshots_of(dir: &Path, server: &RealServer, name: &str) -> serde_json::Value {
    let listed = run(dir, server, name, &["snapshots", "--json"]);
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed));
    serde_json::from_slice(&listed.stdout).unwrap()
}

/// Registers alice with a small first snapshot, then starts a backup of a 96 MiB file (seeded
/// with `seed`) and returns it once two of its packs are stored (complete objects, not
/// uploads in progress), still running.
fn backup_of_96_mib_stored_in_part(dir: &Path, server: &RealServer, seed: u64) -> Child {
    fs::create_dir_all(dir.join("small")).unwrap();
    fs::write(dir.join("small/a.txt"), b"small\n").unwrap();
    backup(dir, server, "alice", &["small"]);
    fs::create_dir_all(dir.join("src")).unwrap();
    write_pattern(&dir.join("src/huge.bin"), 96 * MIB, seed);
    let packs_before = packs(server).len();
    let mut child = client_command(dir, server, "alice", &["backup", "src", "--name", "alice"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while packs(server).len() < packs_before + 2 {
        assert!(Instant::now() < deadline, "no pack stored in time");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended too early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn set_mtime(path: &Path, secs: i64) {
    let status = Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{secs}"))
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A tree with what real trees hold: duplicate base names in different folders, deep
/// nesting, symlinks (to files, dirs, dangling), empty folders, hard links, names with a
/// newline, a backslash, invalid UTF-8 and 255 bytes, modes and old times.
fn odd_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    for dir in ["a", "b", "c/d/e/f/g/h/i/j"] {
        fs::create_dir_all(root.join(dir)).unwrap();
        fs::write(
            root.join(dir).join("copyright"),
            format!("{CONTENT_MARKER} copyright of {dir}\n"),
        )
        .unwrap();
    }
    fs::create_dir_all(root.join("empty/nested-empty")).unwrap();
    fs::write(
        root.join(format!("{NAME_MARKER}.txt")),
        format!("{CONTENT_MARKER} named file\n"),
    )
    .unwrap();
    fs::write(root.join("line\nbreak"), b"newline in the name\n").unwrap();
    fs::write(root.join("back\\slash"), b"backslash in the name\n").unwrap();
    let invalid = OsStr::from_bytes(b"latin1-\xe9t\xe9");
    fs::write(root.join(invalid), b"invalid utf-8 name\n").unwrap();
    let long = "x".repeat(255);
    fs::write(root.join(&long), b"255-byte name\n").unwrap();
    write_pattern(&root.join("big.bin"), 3 * MIB + 12345, 1);
    fs::write(root.join("original"), b"hard-linked content\n").unwrap();
    fs::hard_link(root.join("original"), root.join("b/hard-link")).unwrap();
    symlink("original", root.join("link-to-file")).unwrap();
    symlink("c/d", root.join("link-to-dir")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    let private = root.join("a/private");
    fs::write(&private, b"mode 0600\n").unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    let script = root.join("a/script.sh");
    fs::write(&script, b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(root.join("c/d"), fs::Permissions::from_mode(0o711)).unwrap();
    for (i, path) in files_under(root).iter().enumerate() {
        set_mtime(path, 1_500_000_000 + i as i64 * 1000);
    }
    set_mtime(&root.join("link-to-file"), 1_400_000_000);
    set_mtime(&root.join("empty"), 1_300_000_000);
}

/// `diff -r --no-dereference` (the system's, an oracle independent of our code) and the
/// metadata the diff does not see: modes, mtimes, symlink targets, hard links.
fn assert_same_tree(source: &Path, restored: &Path) {
    let diff = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(source)
        .arg(restored)
        .output()
        .unwrap();
    assert!(diff.status.success(), "diff -r: {}", text(&diff));
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let (a, b) = (source.join(&relative), restored.join(&relative));
        let (ma, mb) = (
            fs::symlink_metadata(&a).unwrap(),
            fs::symlink_metadata(&b).unwrap(),
        );
        assert_eq!(ma.mode(), mb.mode(), "mode of {relative:?}");
        if !ma.is_dir() {
            assert_eq!(ma.mtime(), mb.mtime(), "mtime of {relative:?}");
            assert_eq!(ma.mtime_nsec(), mb.mtime_nsec(), "mtime ns of {relative:?}");
        }
        if ma.file_type().is_symlink() {
            assert_eq!(fs::read_link(&a).unwrap(), fs::read_link(&b).unwrap());
        }
        if ma.is_dir() {
            assert_eq!(ma.mtime(), mb.mtime(), "mtime of the folder {relative:?}");
            for entry in fs::read_dir(&a).unwrap() {
                stack.push(relative.join(entry.unwrap().file_name()));
            }
        }
    }
}

/// The hard link of [`odd_tree`] was restored as a link, not a copy.
fn assert_hard_link_kept(restored: &Path) {
    let original = fs::metadata(restored.join("original")).unwrap();
    let link = fs::metadata(restored.join("b/hard-link")).unwrap();
    assert_eq!(
        original.ino(),
        link.ino(),
        "the hard link was restored as a copy"
    );
}

#[test]
fn a_tree_with_everything_in_it_is_restored_exactly_and_the_server_sees_no_plaintext() {
    let logs = server_logs();
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    odd_tree(&source);
    let first = backup(dir.path(), &server, "alice", &["src"]);
    let id = first["snapshot_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 64, "{first}");

    let snapshots = snapshots_of(dir.path(), &server, "alice");
    assert_eq!(snapshots.as_array().unwrap().len(), 1, "{snapshots}");
    assert_eq!(snapshots[0]["id"], id);

    let target = dir.path().join("restored");
    let restored = run(
        dir.path(),
        &server,
        "alice",
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_eq!(restored.status.code(), Some(0), "{}", text(&restored));
    // As restic: a snapshot holds the absolute paths given to `backup`, and a restore
    // recreates them below the target.
    let source = source.canonicalize().unwrap();
    let restored_source = target.join(source.strip_prefix("/").unwrap());
    assert_same_tree(&source, &restored_source);
    assert_hard_link_kept(&restored_source);

    let listed_dir = source.join("c/d");
    let ls = run(
        dir.path(),
        &server,
        "alice",
        &["ls", &id[..8], listed_dir.to_str().unwrap()],
    );
    assert_eq!(ls.status.code(), Some(0), "{}", text(&ls));
    let below = source.join("c/d/e").to_string_lossy().into_owned();
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains(&below),
        "{}",
        text(&ls)
    );

    let dumped = source.join("a/copyright");
    let dump = run(
        dir.path(),
        &server,
        "alice",
        &["dump", "latest", dumped.to_str().unwrap()],
    );
    assert_eq!(dump.status.code(), Some(0), "{}", text(&dump));
    assert_eq!(dump.stdout, fs::read(source.join("a/copyright")).unwrap());
    // A folder as a zip (`--archive zip`), read back by Python's zipfile: the file is there
    // with its bytes; an unknown format is refused with the choices.
    let folder = source.join("a");
    let zip = run(
        dir.path(),
        &server,
        "alice",
        &[
            "dump",
            "latest",
            folder.to_str().unwrap(),
            "--archive",
            "zip",
        ],
    );
    assert_eq!(zip.status.code(), Some(0), "{}", text(&zip));
    let zip_path = dir.path().join("a.zip");
    fs::write(&zip_path, &zip.stdout).unwrap();
    let read_back = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; sys.stdout.buffer.write(z.read('a/copyright'))",
        ])
        .arg(&zip_path)
        .output()
        .unwrap();
    assert!(read_back.status.success(), "{}", text(&read_back));
    assert_eq!(
        read_back.stdout,
        fs::read(source.join("a/copyright")).unwrap()
    );
    let rar = run(
        dir.path(),
        &server,
        "alice",
        &[
            "dump",
            "latest",
            folder.to_str().unwrap(),
            "--archive",
            "rar",
        ],
    );
    assert_eq!(rar.status.code(), Some(2), "{}", text(&rar));
    assert!(
        String::from_utf8_lossy(&rar.stderr).contains("give tar or zip"),
        "{}",
        text(&rar)
    );

    let check = run(dir.path(), &server, "alice", &["check", "--read-data"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));

    // Zero knowledge: no content marker and no file name anywhere on the server's disk.
    for path in files_under(server.data.path()) {
        let bytes = fs::read(&path).unwrap();
        for marker in [
            CONTENT_MARKER,
            NAME_MARKER,
            "copyright",
            "hard-linked content",
        ] {
            assert!(
                !bytes
                    .windows(marker.len())
                    .any(|window| window == marker.as_bytes()),
                "{marker:?} found in {}",
                path.display()
            );
        }
        let name = path.to_string_lossy();
        assert!(
            !name.contains(NAME_MARKER) && !name.contains("copyright"),
            "{name}"
        );
    }
    // Nor in what the server logged, at every level (the other tests of this binary log
    // there too; none of them logs a marker either).
    let logged = logs.lock().unwrap().clone();
    assert!(
        logged.len() > 1000,
        "the server logged almost nothing: is the capture on?"
    );
    for marker in [
        CONTENT_MARKER,
        NAME_MARKER,
        "copyright",
        "hard-linked content",
    ] {
        assert!(
            !logged
                .windows(marker.len())
                .any(|window| window == marker.as_bytes()),
            "{marker:?} found in the server's log"
        );
    }
}

#[test]
fn unchanged_files_are_not_sent_again_and_a_changed_file_costs_about_one_chunk() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    fs::create_dir_all(source.join("docs")).unwrap();
    for i in 0..200 {
        fs::write(
            source.join("docs").join(format!("note-{i}.txt")),
            format!("{CONTENT_MARKER} note {i}\n").repeat(40),
        )
        .unwrap();
    }
    write_pattern(&source.join("large.bin"), 24 * MIB, 7);
    let first = backup(dir.path(), &server, "alice", &["src"]);
    let after_first = repository_bytes(&server);
    assert!(after_first > 24 * MIB, "{after_first}");

    let second = backup(dir.path(), &server, "alice", &["src"]);
    let after_second = repository_bytes(&server);
    assert_eq!(second["files_new"], 0, "{second}");
    assert_eq!(second["files_changed"], 0, "{second}");
    assert_eq!(second["files_unmodified"], 201, "{second}");
    assert_ne!(first["snapshot_id"], second["snapshot_id"]);
    assert!(
        after_second - after_first < 256 * 1024,
        "an unchanged backup stored {} bytes",
        after_second - after_first
    );

    // Change 100 bytes in the middle of the large file: about one chunk (1 MiB average,
    // 8 MiB at most) is stored again, not the file.
    let large = source.join("large.bin");
    let mut content = fs::read(&large).unwrap();
    content[12 * MIB as usize..12 * MIB as usize + 100].fill(0xAB);
    fs::write(&large, &content).unwrap();
    let third = backup(dir.path(), &server, "alice", &["src"]);
    let after_third = repository_bytes(&server);
    assert_eq!(third["files_changed"], 1, "{third}");
    assert_eq!(third["files_unmodified"], 200, "{third}");
    let added = after_third - after_second;
    assert!(
        added < 9 * MIB && added > 64 * 1024,
        "one changed chunk stored {added} bytes"
    );

    // Append 1 MiB: the new bytes and at most the old last chunk are stored again.
    let mut appended = fs::OpenOptions::new().append(true).open(&large).unwrap();
    // Incompressible (xorshift), so the bytes stored measure the append, not how well
    // zstd packs a pattern (a multiplicative pattern stored as little as 190 KB).
    let mut tail = vec![0u8; MIB as usize];
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for byte in &mut tail {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = (state >> 32) as u8;
    }
    std::io::Write::write_all(&mut appended, &tail).unwrap();
    drop(appended);
    let fourth = backup(dir.path(), &server, "alice", &["src"]);
    let added = repository_bytes(&server) - after_third;
    assert_eq!(fourth["files_changed"], 1, "{fourth}");
    assert!(
        added < MIB + 9 * MIB && added > MIB / 2,
        "a 1 MiB append stored {added} bytes"
    );
    let snapshots = snapshots_of(dir.path(), &server, "alice");
    assert_eq!(snapshots.as_array().unwrap().len(), 4);
}

#[test]
fn the_servers_scheduled_prune_gives_back_a_forgotten_snapshots_space_and_keeps_the_rest() {
    // A prune every second with no grace period: nothing else runs meanwhile, so no backup
    // is in flight to protect.
    let server = RealServer::start_configured(|config| {
        config.prune_interval_secs = 1;
        config.prune_grace_secs = 0;
        config.default_device_role = DeviceRole::Manage;
    });
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    fs::create_dir_all(&source).unwrap();
    fs::write(
        source.join("kept.txt"),
        format!("{CONTENT_MARKER} kept\n").repeat(100),
    )
    .unwrap();
    write_pattern(&source.join("replaced.bin"), 8 * MIB, 11);
    let first = backup(dir.path(), &server, "alice", &["src"]);
    write_pattern(&source.join("replaced.bin"), 8 * MIB, 12);
    let second = backup(dir.path(), &server, "alice", &["src"]);
    let before = repository_bytes(&server);
    assert!(before > 16 * MIB, "{before}");

    let first_id = first["snapshot_id"].as_str().unwrap();
    let forgot = run(dir.path(), &server, "alice", &["forget", first_id]);
    assert_eq!(forgot.status.code(), Some(0), "{}", text(&forgot));
    // The scheduled prune condemns the first snapshot's blobs on one run and deletes them
    // on the next; wait for the space to come back.
    let deadline = Instant::now() + Duration::from_secs(60);
    while repository_bytes(&server) > before - 7 * MIB {
        assert!(
            Instant::now() < deadline,
            "the prune gave nothing back: {} of {before} bytes still stored",
            repository_bytes(&server)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let checked = run(dir.path(), &server, "alice", &["check", "--read-data"]);
    assert_eq!(checked.status.code(), Some(0), "{}", text(&checked));
    let restored = dir.path().join("restored");
    let second_id = second["snapshot_id"].as_str().unwrap();
    let restore = run(
        dir.path(),
        &server,
        "alice",
        &["restore", second_id, "--target", restored.to_str().unwrap()],
    );
    assert_eq!(restore.status.code(), Some(0), "{}", text(&restore));
    let source = source.canonicalize().unwrap();
    assert_same_tree(&source, &restored.join(source.strip_prefix("/").unwrap()));
    assert_eq!(
        snapshots_of(dir.path(), &server, "alice")
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn the_servers_retention_policy_thins_history_of_an_append_only_device() {
    let server = RealServer::start_configured(|config| {
        config.prune_interval_secs = 1;
        config.retention = RetentionConfig {
            keep_last: Some(1),
            ..RetentionConfig::default()
        };
    });
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("src")).unwrap();
    fs::write(dir.path().join("src/a.txt"), "first\n").unwrap();
    backup(dir.path(), &server, "alice", &["src"]);
    fs::write(dir.path().join("src/a.txt"), "second\n").unwrap();
    let second = backup(dir.path(), &server, "alice", &["src"]);

    // The device is append-only, yet the operator's policy (keep the last one) applies.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = snapshots_of(dir.path(), &server, "alice");
        let ids: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        if ids == [second["snapshot_id"].as_str().unwrap()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the policy never applied: {ids:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_append_only_device_cannot_forget_until_the_operator_grants_manage() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("src")).unwrap();
    fs::write(
        dir.path().join("src/a.txt"),
        "history a thief must not destroy\n",
    )
    .unwrap();
    let first = backup(dir.path(), &server, "alice", &["src"]);
    let id = first["snapshot_id"].as_str().unwrap();

    let refused = run(dir.path(), &server, "alice", &["forget", id]);
    assert_ne!(refused.status.code(), Some(0), "{}", text(&refused));
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("append-only") && message.contains("set-role"),
        "{}",
        text(&refused)
    );
    assert_eq!(
        snapshots_of(dir.path(), &server, "alice")
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The operator grants the manage role; it applies at once.
    set_role_of(&server, b"alice", DeviceRole::Manage);
    let forgot = run(dir.path(), &server, "alice", &["forget", id]);
    assert_eq!(forgot.status.code(), Some(0), "{}", text(&forgot));
    assert_eq!(
        snapshots_of(dir.path(), &server, "alice")
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_new_machine_recovers_the_repository_with_an_enrollment_and_the_passphrase() {
    let server = RealServer::start();
    let laptop = tempfile::tempdir().unwrap();
    let passphrase = laptop.path().join("passphrase");
    fs::write(&passphrase, "correct horse battery staple\n").unwrap();
    let source = laptop.path().join("src");
    fs::create_dir_all(source.join("docs")).unwrap();
    fs::write(
        source.join("docs/thesis.txt"),
        format!("{CONTENT_MARKER} chapter one\n"),
    )
    .unwrap();
    write_pattern(&source.join("data.bin"), 3 * MIB, 21);
    let password = passphrase.to_str().unwrap();
    let first = run(
        laptop.path(),
        &server,
        "alice",
        &[
            "backup",
            "src",
            "--name",
            "alice",
            "--password-file",
            password,
        ],
    );
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));

    // The laptop is lost. A new machine has neither its identity nor its device key; it
    // knows the passphrase.
    let new_machine = tempfile::tempdir().unwrap();
    let recover = |dir: &Path, token: Option<&str>| {
        let mut args = vec!["recover", "--name", "alice", "--password-file", password];
        if let Some(token) = token {
            args.extend(["--enroll-token", token]);
        }
        run(dir, &server, "alice", &args)
    };
    // Without an enrollment it is a stranger: it cannot take the name.
    let stranger = recover(new_machine.path(), None);
    assert_ne!(stranger.status.code(), Some(0), "{}", text(&stranger));

    let token = enroll_device_of(&server, b"alice");
    let recovered = recover(new_machine.path(), Some(&token));
    assert_eq!(recovered.status.code(), Some(0), "{}", text(&recovered));
    // From now on its own device key opens the repository: no passphrase needed.
    let snapshots = snapshots_of(new_machine.path(), &server, "alice");
    assert_eq!(snapshots.as_array().unwrap().len(), 1, "{snapshots}");
    let target = new_machine.path().join("restored");
    let restored = run(
        new_machine.path(),
        &server,
        "alice",
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_eq!(restored.status.code(), Some(0), "{}", text(&restored));
    let source = source.canonicalize().unwrap();
    assert_same_tree(&source, &target.join(source.strip_prefix("/").unwrap()));
    // The new device is append-only like every other, and the token was single-use.
    let forget = run(new_machine.path(), &server, "alice", &["forget", "latest"]);
    assert!(
        String::from_utf8_lossy(&forget.stderr).contains("append-only"),
        "{}",
        text(&forget)
    );
    let third_machine = tempfile::tempdir().unwrap();
    let reused = recover(third_machine.path(), Some(&token));
    assert_ne!(reused.status.code(), Some(0), "{}", text(&reused));
    assert!(
        String::from_utf8_lossy(&reused.stderr).contains("token"),
        "{}",
        text(&reused)
    );
}

#[test]
fn two_clients_repositories_are_isolated() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("src")).unwrap();
    fs::write(
        dir.path().join("src/same.txt"),
        b"the same content on both\n",
    )
    .unwrap();
    let alice = backup(dir.path(), &server, "alice", &["src"]);
    let bob = backup(dir.path(), &server, "bob", &["src"]);
    assert_eq!(
        bob["files_new"], 1,
        "bob's repository does not share alice's blobs: {bob}"
    );
    let snapshots = snapshots_of(dir.path(), &server, "bob");
    assert_eq!(snapshots.as_array().unwrap().len(), 1);
    assert_ne!(snapshots[0]["id"], alice["snapshot_id"]);
    let alice_id = alice["snapshot_id"].as_str().unwrap();
    let stolen = run(dir.path(), &server, "bob", &["ls", alice_id]);
    assert_ne!(stolen.status.code(), Some(0), "{}", text(&stolen));
}

#[test]
fn a_pack_damaged_on_the_server_is_reported_and_nothing_wrong_is_restored() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("src")).unwrap();
    write_pattern(&dir.path().join("src/data.bin"), 2 * MIB, 3);
    backup(dir.path(), &server, "alice", &["src"]);
    let biggest = packs(&server)
        .into_iter()
        .max_by_key(|path| fs::metadata(path).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&biggest).unwrap();
    bytes[1000] ^= 0x40;
    fs::set_permissions(&biggest, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&biggest, &bytes).unwrap();

    let check = run(dir.path(), &server, "alice", &["check", "--read-data"]);
    assert_ne!(check.status.code(), Some(0), "{}", text(&check));
    let target = dir.path().join("restored");
    let restore = run(
        dir.path(),
        &server,
        "alice",
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_ne!(restore.status.code(), Some(0), "{}", text(&restore));
    let source = dir.path().canonicalize().unwrap().join("src/data.bin");
    assert!(
        !target.join(source.strip_prefix("/").unwrap()).exists(),
        "a file failing verification was written under its name"
    );
}

/// After a backup of the 96 MiB file was cut off with `stored_before` bytes of objects
/// stored, and the next one (summary `done`) completed: that one sent none of what was
/// stored (its packs were reused), and the repository holds the file once. An interrupted
/// pack upload (a temp file kept for a resume) is not a stored object: its blobs are sent
/// again in a new pack. The margin covers the pack and blob headers.
fn assert_nothing_stored_twice(server: &RealServer, done: &serde_json::Value, stored_before: u64) {
    let sent = done["bytes_added"].as_u64().unwrap();
    assert!(
        stored_before + sent < 96 * MIB + MIB,
        "the packs stored before the interruption were sent again: {stored_before} bytes stored, then {sent} sent"
    );
    let stored_after = repository_bytes(server);
    assert!(
        stored_after < 96 * MIB + MIB,
        "the file is stored more than once: {stored_after} bytes"
    );
}

#[test]
fn a_backup_killed_midway_leaves_no_snapshot_and_the_next_one_reuses_the_stored_packs() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut child = backup_of_96_mib_stored_in_part(dir.path(), &server, 11);
    child.kill().unwrap();
    child.wait().unwrap();
    let stored_before = repository_bytes(&server);
    let snapshots = snapshots_of(dir.path(), &server, "alice");
    assert_eq!(
        snapshots.as_array().unwrap().len(),
        1,
        "only the first: {snapshots}"
    );

    let done = backup(dir.path(), &server, "alice", &["src"]);
    assert_nothing_stored_twice(&server, &done, stored_before);
    assert_eq!(done["files_new"], 1);
    let snapshots = snapshots_of(dir.path(), &server, "alice");
    assert_eq!(snapshots.as_array().unwrap().len(), 2);
}

#[test]
fn a_server_stopped_mid_backup_loses_nothing_and_the_backup_resumes_on_its_restart() {
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut child = backup_of_96_mib_stored_in_part(dir.path(), &server, 13);
    // The server goes away in the middle of the backup (its connections are cut).
    let data = server.stop();
    let status = child.wait().unwrap();
    assert_ne!(
        status.code(),
        Some(0),
        "a backup whose server went away reported success"
    );
    let server = RealServer::restart_in(data);
    let stored_before = repository_bytes(&server);
    let snapshots = snapshots_of(dir.path(), &server, "alice");
    assert_eq!(snapshots.as_array().unwrap().len(), 1, "{snapshots}");
    let done = backup(dir.path(), &server, "alice", &["src"]);
    assert_eq!(done["files_new"], 1, "{done}");
    assert_nothing_stored_twice(&server, &done, stored_before);
    let check = run(dir.path(), &server, "alice", &["check", "--read-data"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
}
