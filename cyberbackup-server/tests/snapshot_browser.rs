//! Browser test in headless Chromium of the client UI's snapshots view, against a real
//! server: the timeline lists two snapshots; the folder browser opens a folder three levels
//! deep, pages a folder of 152 entries 100 at a time and goes back by its breadcrumbs; a
//! search finds a file by part of its name; the changes since the previous snapshot are
//! listed; a folder is restored to a path with progress, and downloaded as a `.tar` and as
//! a `.zip`, and a file as itself — each compared byte for byte with the original.
//!
//! Then the zero-knowledge check of the session: neither the server's logs nor any answer
//! of its admin API (JSON, CSV, metrics) contains a file name or the content of the tree.
//!
//! Skipped without Chromium unless `CYBERBACKUP_REQUIRE_BROWSER=1`; with
//! `CYBERBACKUP_UPDATE_SCREENSHOTS=1` the screenshot is written to `docs/images/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod admin_common;

use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use admin_common::cdp::{Browser, chromium_or_skip, screenshot_dir, wait_for_download};
use admin_common::ui::{RunningUi, ui_options};
use admin_common::{config_for, get, snapshot_backup, start};
use cyberbackup_client::v4::DEFAULT_IDENTITY_FILE;
use cyberbackup_core::testing::LogWriter;
use serde_json::Value;

/// Names and content in the tree; none may reach the server in the clear.
const REPORT: &str = "quarterly-report-zqx.txt";
const NOTES: &str = "notes-zqx.md";
const FOLDER: &str = "alpha-zqx";
const CONTENT: &str = "SECRET-CONTENT-ZQX ";

/// The server's log lines (its `cyberbackup_server` target only; the client's own logs may
/// name the user's files).
fn server_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || LogWriter(logs)),
            )
            .with(
                tracing_subscriber::filter::Targets::new()
                    .with_target("cyberbackup_server", tracing::Level::TRACE),
            )
            .init();
        logs
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_view_browses_searches_diffs_restores_and_downloads() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let logs = server_logs();
    let dir = tempfile::tempdir().unwrap();
    let server = start(config_for(&dir.path().join("data"))).await;
    let tree = dir.path().join("tree");
    let deep = tree.join(FOLDER).join("beta").join("gamma");
    std::fs::create_dir_all(&deep).unwrap();
    let report = CONTENT.repeat(20_000).into_bytes();
    std::fs::write(deep.join(REPORT), &report).unwrap();
    std::fs::write(tree.join(FOLDER).join(NOTES), CONTENT).unwrap();
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
    std::fs::write(tree.join(FOLDER).join(NOTES), CONTENT.repeat(3)).unwrap();
    std::fs::write(tree.join("added.txt"), CONTENT).unwrap();
    snapshot_backup(
        server.addr,
        &dir.path().join(DEFAULT_IDENTITY_FILE),
        "ui-test",
        &tree,
    )
    .await;

    let ui = RunningUi::start(ui_options(dir.path(), server.addr, "ui-test")).await;
    let ui_url = ui.url();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let target = dir.path().join("restored");
    // The folders from `/` down to the tree (a snapshot keeps absolute paths).
    let tree_components: Vec<String> = tree
        .canonicalize()
        .unwrap()
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();

    let session = {
        let (downloads, target) = (downloads.clone(), target.clone());
        let report_len = report.len();
        tokio::task::spawn_blocking(move || {
            browse_session(
                &chromium,
                &ui_url,
                &tree_components,
                &downloads,
                &target,
                report_len,
            )
        })
    };
    let (errors, png, tar, zip, downloaded) = session.await.unwrap();

    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    // Restored to a path: the folder's content lands in the target.
    assert_eq!(
        std::fs::read(target.join("beta/gamma").join(REPORT)).unwrap(),
        report
    );
    assert_eq!(
        std::fs::read(target.join(NOTES)).unwrap(),
        CONTENT.repeat(3).into_bytes()
    );
    // The folder as a tar, and the file as itself.
    let extracted = dir.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    let untar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&extracted)
        .status()
        .unwrap();
    assert!(untar.success(), "tar could not read the download");
    let in_tar = extracted.join(FOLDER);
    assert_eq!(
        std::fs::read(in_tar.join("beta/gamma").join(REPORT)).unwrap(),
        report
    );
    assert_eq!(
        std::fs::read(in_tar.join(NOTES)).unwrap(),
        CONTENT.repeat(3).into_bytes()
    );
    // The folder as a zip: exactly its two files, byte for byte.
    let unzipped = dir.path().join("unzipped");
    let unzip = std::process::Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&zip)
        .arg(&unzipped)
        .status()
        .unwrap();
    assert!(
        unzip.success(),
        "Python's zipfile could not read the download"
    );
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(&unzipped).sort_by_file_name() {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let name = entry.path().strip_prefix(&unzipped).unwrap().to_owned();
            files.push((name, std::fs::read(entry.path()).unwrap()));
        }
    }
    let expected = vec![
        (
            Path::new(FOLDER).join("beta/gamma").join(REPORT),
            report.clone(),
        ),
        (
            Path::new(FOLDER).join(NOTES),
            CONTENT.repeat(3).into_bytes(),
        ),
    ];
    assert!(
        files == expected,
        "the zip holds {:?}",
        files.iter().map(|(name, _)| name).collect::<Vec<_>>()
    );
    assert!(downloaded == report, "the downloaded file differs");

    // Zero knowledge: after the session, the server's logs and every admin answer are free
    // of the tree's names and content.
    let mut answers = Vec::new();
    for path in [
        "/api/v1/overview",
        "/api/v1/transfers",
        "/api/v1/throughput",
        "/api/v1/clients",
        "/api/v1/devices",
        "/api/v1/files",
        "/api/v1/files.csv",
        "/api/v1/maintenance",
        "/api/v1/repositories",
        "/api/v1/scrub",
        "/metrics",
    ] {
        let answer = get(server.admin, path, &[]).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        answers.push((path.to_owned(), answer.bytes));
    }
    let repositories: Value = serde_json::from_slice(&answers[8].1).unwrap();
    assert!(
        repositories.to_string().contains("ui-test"),
        "the repositories answer does not list the account: {repositories}"
    );
    let logged = logs.lock().unwrap().clone();
    assert!(
        String::from_utf8_lossy(&logged).contains("ui-test"),
        "the server logged nothing about the session, so the log check would prove nothing"
    );
    answers.push(("the server's logs".to_owned(), logged));
    for (source, bytes) in &answers {
        for marker in [REPORT, NOTES, FOLDER, "gamma", CONTENT.trim()] {
            assert!(
                !bytes
                    .windows(marker.len())
                    .any(|window| window == marker.as_bytes()),
                "{source} contains {marker:?}"
            );
        }
    }

    let screenshots = screenshot_dir(dir.path());
    std::fs::create_dir_all(&screenshots).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "the screenshot looks empty"
    );
    std::fs::write(screenshots.join("client-snapshots.png"), png).unwrap();
    ui.shutdown().await;
    server.stop().await;
}

/// The browser's part: returns the page's errors, a screenshot, the downloaded tar's and
/// zip's paths and the downloaded file's bytes.
fn browse_session(
    chromium: &Path,
    ui_url: &str,
    tree_components: &[String],
    downloads: &Path,
    target: &Path,
    report_len: usize,
) -> (Vec<String>, Vec<u8>, PathBuf, PathBuf, Vec<u8>) {
    let wait = Duration::from_secs(45);
    let mut browser = Browser::launch(chromium);
    browser.allow_downloads_to(downloads);
    browser.navigate(ui_url);
    browser.wait_for(
        "document.getElementById('conn').textContent === 'live'",
        wait,
    );

    // The timeline: two snapshots, newest first; browse the newest.
    browser.wait_for_or(
        "document.querySelectorAll('#timeline tbody tr[data-id]').length === 2",
        wait,
        "document.getElementById('snapshots-status').textContent",
    );
    browser
        .eval("document.querySelector('#timeline tbody tr[data-id] button.browse').click(), true");

    // Down to the tree, one folder at a time, then three levels below it.
    let open = |browser: &mut Browser, name: &str| {
        let row = format!("document.querySelector('#entries tbody tr[data-name={name:?}]')");
        browser.wait_for_or(
            &format!("{row} !== null && {row}.dataset.kind === 'dir'"),
            wait,
            "document.getElementById('browse-status').textContent",
        );
        browser.eval(&format!("{row}.querySelector('button.open').click(), true"));
    };
    for name in tree_components {
        open(&mut browser, name);
    }
    // The tree's own folder: 152 entries, shown 100 at a time.
    let page_text = "document.getElementById('entries-page').textContent";
    browser.wait_for_or(&format!("{page_text} === '1–100 of 152'"), wait, page_text);
    assert_eq!(
        browser.eval("document.querySelectorAll('#entries tbody tr').length"),
        Value::from(100)
    );
    browser.eval("document.getElementById('entries-next').click(), true");
    browser.wait_for_or(
        &format!("{page_text} === '101–152 of 152' && document.querySelectorAll('#entries tbody tr').length === 52"),
        wait,
        page_text,
    );
    browser.eval("document.getElementById('entries-prev').click(), true");
    for name in [FOLDER, "beta", "gamma"] {
        open(&mut browser, name);
    }
    let report_row = format!("document.querySelector('#entries tbody tr[data-name={REPORT:?}]')");
    browser.wait_for(&format!("{report_row} !== null"), wait);

    // Back up to the tree by the breadcrumbs.
    let tree_name = tree_components.last().unwrap();
    browser.eval(&format!(
        "[...document.querySelectorAll('#crumbs button')].find(b => b.textContent === {tree_name:?}).click(), true"
    ));
    browser.wait_for_or(&format!("{page_text} === '1–100 of 152'"), wait, page_text);

    // Search by part of the name, ignoring case.
    browser.eval(
        "(() => { document.getElementById('search-text').value = 'QUARTERLY';
                  document.getElementById('snap-search').requestSubmit(); return true; })()",
    );
    browser.wait_for_or(
        &format!(
            "document.querySelectorAll('#entries tbody tr').length === 1 && {report_row} !== null
             && document.getElementById('browse-status').textContent.startsWith('1 match')"
        ),
        wait,
        "document.getElementById('browse-status').textContent",
    );

    // The changes since the previous snapshot.
    browser.eval("document.getElementById('diff-show').click(), true");
    browser.wait_for_or(
        "document.querySelector('#changes tbody tr[data-kind=added]')?.textContent.includes('added.txt')
         && [...document.querySelectorAll('#changes tbody tr[data-kind=modified]')]
              .some(tr => tr.textContent.includes('notes-zqx.md'))",
        wait,
        "document.getElementById('browse-status').textContent",
    );

    // Restore the folder to a path, with progress, then download it as a tar and a zip.
    browser.eval("document.getElementById('back-to-folder').click(), true");
    open(&mut browser, FOLDER);
    browser.wait_for(
        &format!("document.getElementById('restore-what').textContent.endsWith('/{FOLDER}')"),
        wait,
    );
    browser.eval(&format!(
        "(() => {{ document.getElementById('restore-target').value = {:?};
                   document.getElementById('restore-to').requestSubmit(); return true; }})()",
        target.display().to_string()
    ));
    browser.wait_for_or(
        "document.getElementById('snap-restore-text').dataset.state === 'succeeded'
         && document.getElementById('snap-restore-percent').textContent === '100%'",
        wait,
        "document.getElementById('snap-restore-text').textContent",
    );
    let png = browser.screenshot_page(1800);
    browser.eval("document.getElementById('download-selected').click(), true");
    let tar = downloads.join(format!("{FOLDER}.tar"));
    wait_for_download(&tar, report_len);
    browser.eval("document.getElementById('download-zip').click(), true");
    let zip = downloads.join(format!("{FOLDER}.zip"));
    wait_for_download(&zip, report_len);

    // A single file downloads as itself.
    for name in ["beta", "gamma"] {
        open(&mut browser, name);
    }
    browser.wait_for(&format!("{report_row} !== null"), wait);
    browser.eval(&format!(
        "{report_row}.querySelector('button.pick-entry').click(), true"
    ));
    browser.eval("document.getElementById('download-selected').click(), true");
    let downloaded = wait_for_download(&downloads.join(REPORT), report_len);
    assert_eq!(
        browser.eval("getComputedStyle(document.getElementById('download-zip')).display"),
        Value::from("none"),
        "a file is offered as itself only"
    );
    (browser.errors.clone(), png, tar, zip, downloaded)
}
