//! The server on a PostgreSQL catalog (`catalog = "postgres://…"`, issue 16), end to end:
//! the real client binary backs a tree up, backs it up again unchanged, restores it exactly,
//! checks every blob, forgets a snapshot, and uses the single-file v4 mode; the catalog's rows
//! are in the PostgreSQL database (none in the data directory), and neither the database's
//! files nor its WAL hold a byte of the content or a file name; the database password is
//! shown nowhere (`/diagnostics`, the data directory). Also: the v3 flat store on it, a
//! single node's SQLite catalog copied into it (`catalog copy`), `--check` listing pending
//! migrations without applying them, and an unreachable database failing the start with the
//! fix. Several servers on one catalog are `tests/service.rs`. Skips when PostgreSQL is not installed, unless
//! `CYBERBACKUP_REQUIRE_POSTGRES=1` (CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../cyberbackup-server/tests/postgres_server/mod.rs"]
mod postgres_server;
mod support;

use std::fs;
use std::path::Path;

use cyberbackup_server::catalog::{CatalogLocation, DeviceRole};
use support::{
    RealServer, check_read_data, client_command, files_under, output_text, restore_latest,
    same_contents, set_role_of, write_pattern,
};

const CONTENT_MARKER: &str = "PG-CONTENT-MARKER-5b0e11";
const NAME_MARKER: &str = "PG-NAME-MARKER-c41d07.txt";
const PASSWORD: &str = "pg-password-9e1f";

fn run(dir: &Path, server: &RealServer, args: &[&str]) -> std::process::Output {
    let out = client_command(dir, server, "alice", args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {}",
        output_text(&out)
    );
    out
}

/// The JSON summary line of a `backup --json`.
fn summary(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|line| line.contains("\"summary\""))
        .unwrap_or_else(|| panic!("no summary line in {text}"));
    serde_json::from_str(line).unwrap()
}

/// A server configuration on loopback (any free port), its data directory under `root`, its
/// catalog at `catalog`.
fn config_on(root: &Path, catalog: CatalogLocation) -> cyberbackup_server::ServerConfig {
    cyberbackup_server::ServerConfig {
        listen: std::net::Ipv4Addr::LOCALHOST.into(),
        port: 0,
        data_dir: root.join("data"),
        catalog: Some(catalog),
        min_free_disk_mb: 0,
        ..cyberbackup_server::ServerConfig::default()
    }
}

/// Alice's snapshot listing, which must hold two, and where `source` was restored from the
/// latest, whose `big.bin` must be the original's.
fn two_snapshots_restored(
    dir: &Path,
    server: &RealServer,
    source: &Path,
) -> (serde_json::Value, std::path::PathBuf) {
    let listed = run(dir, server, &["snapshots", "--json"]);
    let snapshots: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(snapshots.as_array().unwrap().len(), 2, "{snapshots}");
    let restored = restore_latest(dir, server, "alice", source);
    assert!(same_contents(
        &source.join("big.bin"),
        &restored.join("big.bin")
    ));
    (snapshots, restored)
}

/// Rows of `table` in the database at `location`.
fn rows(location: &CatalogLocation, table: &str) -> i64 {
    let url = location.to_string();
    let sql = format!("SELECT COUNT(*) FROM {table}");
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client.query_one(&sql, &[]).unwrap().get(0)
    })
    .join()
    .unwrap()
}

#[test]
fn snapshots_on_a_postgres_catalog_back_up_restore_forget_and_leave_no_plaintext_in_the_database() {
    let Some(pg) = postgres_server::PgServer::start_or_skip() else {
        return;
    };
    // With a password (the test server trusts loopback, so any password logs in): it must
    // show nowhere.
    let location = CatalogLocation::parse(&pg.database().to_string().replacen(
        "postgres://cb@",
        &format!("postgres://cb:{PASSWORD}@"),
        1,
    ))
    .unwrap();
    let catalog = location.clone();
    let server = RealServer::start_configured(move |config| config.catalog = Some(catalog));
    let (status, diagnostics) = server.admin_get("/diagnostics");
    assert_eq!(status, 200, "{diagnostics}");
    assert!(
        diagnostics.contains("\"engine\":\"PostgreSQL\""),
        "{diagnostics}"
    );
    assert!(!diagnostics.contains(PASSWORD), "{diagnostics}");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    fs::create_dir_all(source.join("nested")).unwrap();
    fs::write(
        source.join("nested").join(NAME_MARKER),
        format!("{CONTENT_MARKER}\n").repeat(2048),
    )
    .unwrap();
    write_pattern(&source.join("big.bin"), 6 << 20, 3);

    let first = summary(&run(
        dir.path(),
        &server,
        &["backup", "src", "--name", "alice", "--json"],
    ));
    assert_eq!(first["files_new"], 2, "{first}");
    let second = summary(&run(dir.path(), &server, &["backup", "src", "--json"]));
    assert_eq!(second["files_unmodified"], 2, "{second}");
    // Nothing read; at most the tree of the folder above `src` changed (the client's files
    // beside it are new), never file data.
    assert_eq!(second["bytes_read"], 0, "{second}");
    assert!(second["bytes_added"].as_u64().unwrap() < 4096, "{second}");

    let (snapshots, restored) = two_snapshots_restored(dir.path(), &server, &source);
    assert!(same_contents(
        &source.join("nested").join(NAME_MARKER),
        &restored.join("nested").join(NAME_MARKER)
    ));
    check_read_data(dir.path(), &server, "alice");

    // The catalog is in the database: its rows are there, no catalog file is on disk.
    assert_eq!(rows(&location, "repo_snapshots"), 2);
    assert!(rows(&location, "repo_blobs") > 2);
    assert!(rows(&location, "v4_devices") == 1);
    let data = server.data.path().join("data");
    assert!(
        !data.join("defensive.db").exists(),
        "a SQLite catalog was created too"
    );

    set_role_of(&server, b"alice", DeviceRole::Manage);
    let oldest = snapshots[0]["id"].as_str().unwrap().to_owned();
    run(dir.path(), &server, &["forget", &oldest]);
    assert_eq!(rows(&location, "repo_snapshots"), 1);

    // The single-file v4 mode keeps its rows (files, uploads) in the same database.
    run(
        dir.path(),
        &server,
        &[
            "upload",
            "--name",
            "alice",
            source.join("big.bin").to_str().unwrap(),
        ],
    );
    assert_eq!(rows(&location, "files"), 1);
    // And so does the legacy v3 protocol's flat store (another client, bob).
    let path = source.join("big.bin");
    let v3 = client_command(
        dir.path(),
        &server,
        "bob",
        &[
            "upload",
            "--protocol",
            "v3",
            "--name",
            "bob",
            path.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(v3.status.code(), Some(0), "{}", output_text(&v3));
    assert_eq!(rows(&location, "files"), 2);
    assert_eq!(
        rows(&location, "clients"),
        2,
        "the v4 and the v3 registration"
    );

    // The server's own data directory (kept) and the database's files and WAL.
    let kept = server.stop();
    let on_disk = files_under(kept.path());
    assert!(!on_disk.is_empty());
    for file in files_under(&pg.data_dir()).into_iter().chain(on_disk) {
        let bytes = fs::read(&file).unwrap();
        for marker in [CONTENT_MARKER, NAME_MARKER, PASSWORD] {
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{} holds {marker:?}",
                file.display()
            );
        }
    }
}

#[test]
fn a_server_pointed_at_an_unreachable_postgres_fails_to_start_with_the_fix() {
    // Nothing listens on port 9 of loopback (discard, not running).
    let location = CatalogLocation::parse("postgres://cb:s3cret@127.0.0.1:9/catalog").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_on(dir.path(), location);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Err(err) = runtime.block_on(cyberbackup_server::Server::bind(config)) else {
        panic!("the server started without its catalog");
    };
    let message = err.to_string();
    assert!(
        message.contains("cannot connect to the catalog database")
            && message.contains("PostgreSQL server is running"),
        "{message}"
    );
    assert!(
        !message.contains("s3cret"),
        "the password is shown: {message}"
    );
}

#[test]
fn a_single_nodes_catalog_copied_into_postgres_serves_the_same_snapshots_and_files() {
    let Some(pg) = postgres_server::PgServer::start_or_skip() else {
        return;
    };
    let server = RealServer::start();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("src");
    fs::create_dir_all(&source).unwrap();
    write_pattern(&source.join("big.bin"), 3 << 20, 5);
    fs::write(source.join("small.txt"), b"small\n").unwrap();
    run(dir.path(), &server, &["backup", "src", "--name", "alice"]);
    run(dir.path(), &server, &["backup", "src"]);
    let small = source.join("small.txt");
    run(
        dir.path(),
        &server,
        &["upload", "--name", "alice", small.to_str().unwrap()],
    );
    let data = server.stop();

    let sqlite = data.path().join("data").join("defensive.db");
    let target = pg.database();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let copy = |to: CatalogLocation| {
        runtime.block_on(cyberbackup_server::catalog::copy::copy(
            CatalogLocation::Sqlite(sqlite.clone()),
            to,
        ))
    };
    let report = copy(target.clone()).unwrap();
    let copied = |table: &str| {
        report
            .tables
            .iter()
            .find(|(name, _)| *name == table)
            .map(|(_, rows)| *rows)
    };
    assert_eq!(copied("clients"), Some(1), "{report}");
    assert_eq!(copied("repo_snapshots"), Some(2), "{report}");
    assert_eq!(copied("files"), Some(1), "{report}");
    // A second copy into the same (no longer empty) database is refused.
    let again = copy(target.clone()).unwrap_err().to_string();
    assert!(again.contains("already holds 1 client"), "{again}");

    // The SQLite file moves aside: the restarted server can only be using PostgreSQL.
    fs::rename(&sqlite, sqlite.with_extension("db.old")).unwrap();
    let catalog = target.clone();
    let server = RealServer::restart_configured(data, move |config| config.catalog = Some(catalog));
    two_snapshots_restored(dir.path(), &server, &source);
    let files = run(dir.path(), &server, &["files"]);
    assert!(
        String::from_utf8_lossy(&files.stdout).contains("small.txt"),
        "{}",
        output_text(&files)
    );
    // A new backup after the move: new rows get new ids after the copied ones.
    fs::write(source.join("new.txt"), b"new\n").unwrap();
    run(dir.path(), &server, &["backup", "src"]);
    run(
        dir.path(),
        &server,
        &["upload", "--name", "alice", small.to_str().unwrap()],
    );
    assert_eq!(rows(&target, "repo_snapshots"), 3);
    assert_eq!(rows(&target, "files"), 2);
    check_read_data(dir.path(), &server, "alice");
}

#[test]
fn check_lists_the_pending_migrations_of_a_postgres_catalog_without_applying_them() {
    let Some(pg) = postgres_server::PgServer::start_or_skip() else {
        return;
    };
    let location = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let config = |catalog: CatalogLocation| config_on(dir.path(), catalog);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let catalog_line = |catalog: CatalogLocation| {
        let report = runtime.block_on(cyberbackup_server::check::run_checks(&config(catalog)));
        report
            .items
            .into_iter()
            .find(|item| item.name == "catalog")
            .unwrap()
            .outcome
    };
    let latest = cyberbackup_server::catalog::latest_schema_version();

    let empty = catalog_line(location.clone()).unwrap();
    assert!(
        empty.contains(&format!("schema version 0 of {latest}"))
            && empty.contains(&format!("{latest} pending migration(s)")),
        "{empty}"
    );
    // Listed, not applied: the check again finds the same.
    assert_eq!(catalog_line(location.clone()).unwrap(), empty);

    let catalog = location.clone();
    drop(RealServer::start_configured(move |c| {
        c.catalog = Some(catalog)
    }));
    let current = catalog_line(location).unwrap();
    assert!(
        current.contains(&format!("schema version {latest} (current)")),
        "{current}"
    );

    let unreachable = CatalogLocation::parse("postgres://cb@127.0.0.1:9/catalog").unwrap();
    let refused = catalog_line(unreachable).unwrap_err();
    assert!(
        refused.contains("cannot connect to the catalog database"),
        "{refused}"
    );
}
